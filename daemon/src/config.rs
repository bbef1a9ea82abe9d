//! The daemon's configuration: a TOML file (`/etc/eddy/eddyd.toml`), `${ENV}` expanded in every
//! string value (for secrets), with command-line flags overriding it. Owns parsing, defaults and
//! validation of the file; starts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// Expands `${NAME}` from the environment (`$${` is a literal `${`). An unset variable is an error
/// naming it, never an empty secret.
pub fn expand_env(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t.find('}').ok_or_else(|| format!("'${{' without a closing '}}' in '{s}'"))?;
            let name = &t[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("'${{{name}}}' is not an environment variable name"));
            }
            out.push_str(&std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `[hub]`: the fleet's hub, where `hub` sinks send their rows (docs/hub.md). The hub knows this
/// gateway by its certificate's CN.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// `host:port` of each hub (or of a load balancer in front of them); tried in turn when one
    /// fails.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The CA that signed the hubs' certificates.
    pub ca_file: Option<PathBuf>,
    /// This gateway's certificate (CN = its gateway id) and key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name to expect in the hub's certificate (default: the endpoint's host).
    pub server_name: Option<String>,
    /// How long one push may take before it counts as failed (default 30 s).
    pub request_timeout_ms: Option<u64>,
    #[serde(default)]
    pub backup: BackupSection,
    #[serde(default)]
    pub fleet: FleetSection,
}

/// `[hub.fleet]`: follow a group's desired state at the hub (docs/hub.md).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// The group this gateway belongs to; its pipelines are deployed here as the hub's desired
    /// state for the group changes. Needs a state dir.
    pub group: Option<String>,
}

/// `[hub.backup]`: checkpoint backups to the hub (docs/hub.md).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Back up pipelines' checkpoints (needs a state dir). Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Back up every this many checkpoints (default 1; the last before a stop always).
    pub every_checkpoints: Option<u64>,
    /// Upload rate bound in bytes per second (default 4 MiB/s).
    pub max_bytes_per_s: Option<u64>,
    /// How long a stopping eddyd waits for the last backups (default 5000).
    pub drain_timeout_ms: Option<u64>,
}

/// `[mqtt]`: defaults for every MQTT source and sink (their `WITH` options win).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttDefaults {
    pub url: Option<String>,
    /// `3.1.1` (default) or `5`.
    pub protocol: Option<String>,
    pub username: Option<String>,
    pub password: Option<crate::secret::Secret>,
    /// Client ids default to `<prefix>-<pipeline>-<source or sink>-<state>` (prefix default
    /// `eddy`; without `-<state>` for a pipeline without durable state, or state begun before
    /// ids carried it).
    pub client_id_prefix: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub qos: Option<u8>,
    pub keep_alive: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub queue_messages: Option<usize>,
    pub queue_bytes: Option<usize>,
    pub outbox_bytes: Option<usize>,
    pub outbox_full: Option<String>,
}

impl MqttDefaults {
    /// The default for a connector option, as text.
    pub fn get(&self, key: &str) -> Option<String> {
        match key {
            "url" => self.url.clone(),
            "protocol" => self.protocol.clone(),
            "username" => self.username.clone(),
            "password" => self.password.as_ref().map(|p| p.expose().to_string()),
            "ca_file" => self.ca_file.clone(),
            "cert_file" => self.cert_file.clone(),
            "key_file" => self.key_file.clone(),
            "qos" => self.qos.map(|q| q.to_string()),
            "keep_alive" => self.keep_alive.clone(),
            "max_message_bytes" => self.max_message_bytes.map(|v| v.to_string()),
            "outbox_full" => self.outbox_full.clone(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// `false` stores state unencrypted (must be said explicitly).
    pub enabled: Option<bool>,
    pub key_file: Option<PathBuf>,
    /// systemd credential name (default `eddy-state-key`).
    pub key_credential: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_open_windows: Option<usize>,
    pub max_groups: Option<usize>,
    pub batch_rows: Option<usize>,
    pub max_staged_bytes: Option<usize>,
    /// Steps a pipeline may have sent to its shards and not seen done (default 4).
    pub shard_queue: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WalSection {
    pub commit_delay_us: Option<u64>,
    pub commit_bytes: Option<usize>,
    pub segment_bytes: Option<u64>,
    pub max_record_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port` for /metrics, /healthz and /readyz (keep it on loopback or a management net).
    pub listen: Option<String>,
}

/// `[api]`: the management API (docs/management.md).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// `false` turns the API off.
    pub enabled: Option<bool>,
    /// The Unix socket (default `$RUNTIME_DIRECTORY/control.sock`, else `/run/eddy/control.sock`);
    /// created mode 0660, callers known by their uid.
    pub socket: Option<PathBuf>,
    /// `host:port` for TCP. Mutual TLS is required: `tls_cert`, `tls_key` and `client_ca`.
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA whose certificates clients must present; their principal is `cert:<SAN or CN>`.
    pub client_ca: Option<PathBuf>,
    /// Allow TCP without TLS, only on a loopback address (principal `tcp:<address>`).
    pub allow_plaintext_loopback: Option<bool>,
    /// Connections served at once (default 64); more wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// Requests a pipeline runtime may have queued from the API (default 16); more are refused
    /// with `UNAVAILABLE`, never queued without bound.
    pub max_pending_commands: Option<usize>,
    /// Size at which the audit log starts a new file (default 64 MiB; one previous file kept).
    pub audit_max_bytes: Option<u64>,
    /// Bytes of current rows each materialized view keeps for `eddyctl query` (default 4 MiB;
    /// 0 keeps none). A view over it answers with an error until it fits again.
    pub query_view_bytes: Option<u64>,
    /// Rows one query returns at most (default 10000).
    pub query_max_rows: Option<usize>,
    /// Bytes one query's answer (and what it holds while evaluating) may take (default 16 MiB).
    pub query_max_bytes: Option<u64>,
}

/// Defaults of `[api]`'s query settings.
pub const QUERY_VIEW_BYTES: u64 = 4 << 20;
pub const QUERY_MAX_ROWS: usize = 10_000;
pub const QUERY_MAX_BYTES: u64 = 16 << 20;

impl ApiSection {
    /// Bytes each view keeps for queries (0 when the API is off: nobody could ask).
    pub fn view_bytes(&self) -> usize {
        if self.enabled == Some(false) {
            return 0;
        }
        usize::try_from(self.query_view_bytes.unwrap_or(QUERY_VIEW_BYTES)).unwrap_or(usize::MAX)
    }
}

/// `[[access.grant]]`: who may do what over the API.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    #[serde(default)]
    pub grant: Vec<Grant>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `user:NAME`, `uid:N`, `cert:NAME`, `tcp:ADDRESS`; `*` matches any run of characters.
    pub principals: Vec<String>,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Pipeline name patterns the role applies to (default: all).
    #[serde(default)]
    pub pipelines: Vec<String>,
}

/// `[kafka]`: defaults for every Kafka source and sink, by option name as in `WITH`
/// (`"bootstrap.servers" = "…"`, `"properties.sasl.password" = "${KAFKA_PASSWORD}"`); their
/// `WITH` options win. Values never show in `Debug` (they may hold credentials).
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct KafkaDefaults(pub BTreeMap<String, toml::Value>);

impl KafkaDefaults {
    /// The default for a connector option, as text.
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    }

    /// The `properties.*` defaults: (librdkafka property, value).
    pub fn properties(&self) -> impl Iterator<Item = (&str, String)> {
        self.0.keys().filter_map(|k| Some((k.strip_prefix("properties.")?, self.get(k)?)))
    }
}

/// Shown by `GetConfig` with every credential replaced by `<set>`.
impl serde::Serialize for KafkaDefaults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            if crate::secret::is_secret_key(k) {
                m.serialize_entry(k, crate::secret::MASK)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl std::fmt::Debug for KafkaDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys().map(|k| format!("{k} = <set>"))).finish()
    }
}

/// The sections a fleet's config fragment may set (docs/hub.md, "Config fragments"): what
/// pipelines are planned and run with. The rest (state dir, key, API, access, hub, metrics,
/// cores) stays the gateway's own: a fragment must never cut a gateway off from its state or
/// from its fleet.
pub const FLEET_SECTIONS: [&str; 5] = ["mqtt", "kafka", "limits", "checkpoint", "wal"];

/// Largest fragment taken (the hub refuses larger ones too).
pub const MAX_FRAGMENT_BYTES: usize = 64 << 10;

/// A config fragment from the fleet's desired state, kept in `<state dir>/fleet/config.toml`
/// and laid over the config file. `Debug` shows its sections only: values may hold credentials.
#[derive(Clone, Default, PartialEq)]
pub struct FleetFragment {
    text: String,
    sections: toml::Table,
}

impl std::fmt::Debug for FleetFragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.sections.keys()).finish()
    }
}

impl FleetFragment {
    /// Checks `text`: TOML of tables named in [`FLEET_SECTIONS`] (their keys are checked when
    /// laid over a config). Empty text is no fragment.
    pub fn parse(text: &str) -> Result<FleetFragment> {
        if text.len() > MAX_FRAGMENT_BYTES {
            bail!("a config fragment is at most {MAX_FRAGMENT_BYTES} bytes ({} given)", text.len());
        }
        let sections: toml::Table = toml::from_str(text).map_err(|e| anyhow!("config fragment: {e}"))?;
        for (k, v) in &sections {
            if !FLEET_SECTIONS.contains(&k.as_str()) {
                bail!(
                    "config fragment: [{k}] cannot be set by the fleet (only {}); it stays in the gateway's own config",
                    FLEET_SECTIONS.map(|s| format!("[{s}]")).join(", ")
                );
            }
            if !v.is_table() {
                bail!("config fragment: {k} must be a table ([{k}])");
            }
        }
        Ok(FleetFragment { text: text.to_string(), sections })
    }

    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where the fleet agent keeps the fragment it applied.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("fleet").join("config.toml")
    }

    /// The fragment kept in `state_dir`, or none.
    pub fn load(state_dir: &Path) -> Result<FleetFragment> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(t) => Self::parse(&t).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FleetFragment::default()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Sets each of the fragment's keys in `file`'s section of the same name.
    fn lay_over(&self, file: &mut toml::Table) {
        for (name, keys) in &self.sections {
            let Some(keys) = keys.as_table() else { continue };
            let section = file.entry(name.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section.as_table_mut() {
                Some(t) => t.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone()))),
                // The file's own `name` is not a table: the fragment's replaces it, and the
                // result is checked like any config.
                None => *section = toml::Value::Table(keys.clone()),
            }
        }
    }
}

/// What a pipeline is planned and run with besides its SQL: a reload restarts a running
/// pipeline whose settings changed (an edited config file or a new fleet fragment).
#[derive(Clone, PartialEq)]
pub struct PipelineSettings {
    limits: Limits,
    checkpoint: Checkpoint,
    wal: WalSection,
    mqtt: MqttDefaults,
    kafka: KafkaDefaults,
    hub: HubSection,
    shards: Option<usize>,
    decode_threads: Option<usize>,
    cores: Option<Vec<usize>>,
}

/// The config file, as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub state_dir: Option<PathBuf>,
    /// Every `*.sql` file here is a pipeline, named after the file.
    pub pipelines_dir: Option<PathBuf>,
    /// Pipeline files besides (or instead of) the directory.
    #[serde(default)]
    pub pipelines: Vec<PathBuf>,
    /// The pipelines named on the command line (`--pipeline`, also in `pipelines`): each must
    /// start, or eddyd exits. One from the config or deployed that does not start is held.
    #[serde(skip)]
    pub required_pipelines: Vec<PathBuf>,
    /// CPU cores for pipeline workers (default: every core the process may use).
    pub cores: Option<Vec<usize>>,
    /// Shard threads per pipeline, each holding the keyed state of the keys that hash to it
    /// (default: one per core; a pipeline with durable state keeps the count it was written with).
    pub shards: Option<usize>,
    /// Threads that decode each file source's lines (default 1: the pipeline's own thread).
    pub decode_threads: Option<usize>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub encryption: Encryption,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub wal: WalSection,
    #[serde(default)]
    pub mqtt: MqttDefaults,
    #[serde(default)]
    pub kafka: KafkaDefaults,
    #[serde(default)]
    pub hub: HubSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub access: AccessSection,
}

fn expand_all(v: &mut toml::Value, path: &str) -> Result<()> {
    match v {
        toml::Value::String(s) => *s = expand_env(s).map_err(|e| anyhow!("{path}: {e}"))?,
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_all(x, &format!("{path}[{i}]"))?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                expand_all(x, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") })?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl ConfigFile {
    /// Reads and checks the file; relative paths in it resolve against its directory.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        Self::load_with(Some(path), &FleetFragment::default())
    }

    #[cfg(test)]
    fn parse(text: &str, base: &Path) -> Result<ConfigFile> {
        Self::parse_with(text, base, &FleetFragment::default())
    }

    /// Reads the file (when there is one) with a fleet config fragment laid over it.
    pub fn load_with(path: Option<&Path>, fragment: &FleetFragment) -> Result<ConfigFile> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
                Self::parse_with(&text, p.parent().unwrap_or(Path::new(".")), fragment)
                    .with_context(|| format!("config {}", p.display()))
            }
            None => Self::parse_with("", Path::new("."), fragment),
        }
    }

    /// Parses `text` with `fragment`'s keys replacing the file's, section by section; the result
    /// is checked as a whole, as a file would be.
    pub fn parse_with(text: &str, base: &Path, fragment: &FleetFragment) -> Result<ConfigFile> {
        let mut v: toml::Value = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if let toml::Value::Table(file) = &mut v {
            fragment.lay_over(file);
        }
        expand_all(&mut v, "")?;
        let mut c = ConfigFile::deserialize(v).map_err(|e| anyhow!("{e}"))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        c.state_dir.as_mut().map(abs);
        c.pipelines_dir.as_mut().map(abs);
        c.pipelines.iter_mut().for_each(abs);
        c.encryption.key_file.as_mut().map(abs);
        for p in [&mut c.api.socket, &mut c.api.tls_cert, &mut c.api.tls_key, &mut c.api.client_ca] {
            p.as_mut().map(abs);
        }
        for p in [&mut c.hub.ca_file, &mut c.hub.cert_file, &mut c.hub.key_file] {
            p.as_mut().map(abs);
        }
        for g in &c.access.grant {
            crate::api::access::Role::parse(&g.role)?;
            if g.principals.is_empty() {
                bail!("access.grant: a grant of role {} names no principals", g.role);
            }
        }
        crate::connectors::mqtt::check_defaults(&c.mqtt)?;
        crate::connectors::kafka::check_defaults(&c.kafka)?;
        if let Some(cores) = &c.cores {
            if cores.is_empty() {
                bail!("cores: an empty list leaves no core for the pipelines");
            }
        }
        let most = eddy_engine::connector::MAX_DECODE_THREADS;
        if c.decode_threads.is_some_and(|n| !(1..=most).contains(&n)) {
            bail!("decode_threads must be between 1 and {most}");
        }
        Ok(c)
    }

    pub fn pipeline_settings(&self) -> PipelineSettings {
        PipelineSettings {
            limits: self.limits.clone(),
            checkpoint: self.checkpoint.clone(),
            wal: self.wal.clone(),
            mqtt: self.mqtt.clone(),
            kafka: self.kafka.clone(),
            hub: self.hub.clone(),
            shards: self.shards,
            decode_threads: self.decode_threads,
            cores: self.cores.clone(),
        }
    }

    /// The pipeline files: the explicit ones, then `*.sql` in `pipelines_dir` (sorted), by name.
    pub fn pipeline_files(&self) -> Result<BTreeMap<String, PathBuf>> {
        let mut files: Vec<PathBuf> = self.pipelines.clone();
        if let Some(dir) = &self.pipelines_dir {
            let rd = std::fs::read_dir(dir).with_context(|| format!("pipelines_dir {}", dir.display()))?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect();
            found.sort();
            files.extend(found);
        }
        let mut out = BTreeMap::new();
        for f in files {
            let name = pipeline_name(&f);
            if let Some(prev) = out.insert(name.clone(), f.clone()) {
                bail!("two pipelines are named '{name}' ({} and {}); each needs a file name of its own (it names its state)", prev.display(), f.display());
            }
        }
        Ok(out)
    }
}

/// A pipeline's name: its file name without `.sql`.
pub fn pipeline_name(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        std::env::set_var("EDDY_TEST_SECRET", "s3cret");
        assert_eq!(expand_env("a-${EDDY_TEST_SECRET}-b").unwrap(), "a-s3cret-b");
        assert_eq!(expand_env("$${literal} $5").unwrap(), "${literal} $5");
        assert!(expand_env("${EDDY_TEST_UNSET_VARIABLE}").unwrap_err().contains("EDDY_TEST_UNSET_VARIABLE"));
        assert!(expand_env("${oops").is_err());
    }

    #[test]
    fn parses_a_full_file_and_rejects_unknown_keys() {
        std::env::set_var("EDDY_TEST_PW", "pw");
        let c = ConfigFile::parse(
            r#"
state_dir = "state"
pipelines_dir = "/etc/eddy/pipelines"
cores = [0, 1]
[encryption]
key_file = "k"
[mqtt]
url = "mqtt://localhost:1883"
password = "${EDDY_TEST_PW}"
[metrics]
listen = "127.0.0.1:9187"
"#,
            Path::new("/etc/eddy"),
        )
        .unwrap();
        assert_eq!(c.state_dir.unwrap(), PathBuf::from("/etc/eddy/state"));
        assert_eq!(c.mqtt.password.as_ref().map(|p| p.expose()), Some("pw"));
        assert_eq!(c.cores, Some(vec![0, 1]));
        let e = ConfigFile::parse("[mqtt]\nurll = 'x'\n", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
        let e = ConfigFile::parse("[mqtt]\npassword = '${EDDY_TEST_NOPE}'\n", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("mqtt.password") && e.contains("EDDY_TEST_NOPE"), "{e}");
    }

    #[test]
    fn connector_defaults_are_checked_at_load_as_their_sql_options_are() {
        let err = |text: &str| format!("{:#}", ConfigFile::parse(text, Path::new(".")).unwrap_err());
        let e = err("[mqtt]\nqos = 3\n");
        assert!(e.contains("[mqtt]") && e.contains("option 'qos' must be one of 0, 1, 2, not '3'"), "{e}");
        let e = err("[mqtt]\nprotocol = '6'\n");
        assert!(e.contains("option 'protocol' must be one of 3.1.1, 5, not '6'"), "{e}");
        let e = err("[mqtt]\noutbox_full = 'drop'\n");
        assert!(e.contains("option 'outbox_full'") && e.contains("not 'drop'"), "{e}");
        let e = err("[mqtt]\nkeep_alive = 'soon'\n");
        assert!(e.contains("option 'keep_alive'"), "{e}");
        let e = err("[kafka]\n'startup.mode' = 'first'\n");
        assert!(e.contains("[kafka]") && e.contains("option 'startup.mode'") && e.contains("not 'first'"), "{e}");
        let e = err("[kafka]\ndelivery = 'twice'\n");
        assert!(e.contains("option 'delivery'") && e.contains("not 'twice'"), "{e}");
        let e = err("[kafka]\n'group.idd' = 'g'\n");
        assert!(e.contains("unknown option 'group.idd'"), "{e}");
        // Values are checked after `${ENV}` expansion.
        std::env::set_var("EDDY_TEST_LEVEL", "read_uncommitted");
        let ok = "[mqtt]\nqos = 2\nprotocol = '5'\noutbox_full = 'drop-oldest'\n\
                  [kafka]\n'isolation.level' = '${EDDY_TEST_LEVEL}'\npartitioner = 'murmur2'\n";
        ConfigFile::parse(ok, Path::new(".")).unwrap();
        std::env::set_var("EDDY_TEST_LEVEL", "dirty");
        let e = err(ok);
        assert!(e.contains("option 'isolation.level'") && e.contains("not 'dirty'"), "{e}");
    }

    #[test]
    fn the_packaged_config_parses() {
        let c = ConfigFile::parse(include_str!("../../packaging/eddyd.toml"), Path::new("/etc/eddy")).unwrap();
        assert_eq!(c.state_dir.unwrap(), PathBuf::from("/var/lib/eddy"));
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(c.mqtt.outbox_full.as_deref(), Some("block"));
    }

    #[test]
    fn a_fleet_fragment_sets_its_keys_over_the_files_and_nothing_else() {
        let file =
            "state_dir = '/var/lib/eddy'\n[mqtt]\nurl = 'mqtt://a:1883'\nqos = 1\n[checkpoint]\ninterval_ms = 1000\n";
        let base = ConfigFile::parse(file, Path::new("/etc/eddy")).unwrap();
        std::env::set_var("EDDY_TEST_FLEET_PW", "pw2");
        let f = FleetFragment::parse(
            "[mqtt]\nurl = 'mqtt://b:1883'\npassword = '${EDDY_TEST_FLEET_PW}'\n[limits]\nbatch_rows = 64\n",
        )
        .unwrap();
        let c = ConfigFile::parse_with(file, Path::new("/etc/eddy"), &f).unwrap();
        assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://b:1883"));
        assert_eq!(c.mqtt.qos, Some(1), "a key the fragment does not set stays the file's");
        assert_eq!(c.mqtt.password.as_ref().map(|p| p.expose()), Some("pw2"));
        assert_eq!((c.limits.batch_rows, c.checkpoint.interval_ms), (Some(64), Some(1000)));
        assert_eq!(c.state_dir, base.state_dir);
        assert!(c.pipeline_settings() != base.pipeline_settings());
        assert!(
            ConfigFile::parse_with(file, Path::new("/etc/eddy"), &FleetFragment::default())
                .unwrap()
                .pipeline_settings()
                == base.pipeline_settings()
        );
        // Values never reach logs through Debug.
        assert!(!format!("{f:?}").contains("pw") && format!("{f:?}").contains("mqtt"));

        // What stays the gateway's own, non-tables, bad TOML, too much.
        for (text, want) in [
            ("state_dir = '/tmp'\n", "[state_dir] cannot be set by the fleet"),
            ("[api]\nsocket = 'x'\n", "[api] cannot be set by the fleet"),
            ("[hub]\nendpoints = []\n", "[hub] cannot be set by the fleet"),
            ("mqtt = 3\n", "mqtt must be a table"),
            ("[mqtt\n", "config fragment"),
        ] {
            let e = format!("{:#}", FleetFragment::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let big = format!("[mqtt]\nurl = '{}'\n", "x".repeat(MAX_FRAGMENT_BYTES));
        assert!(FleetFragment::parse(&big).is_err());
        // Keys are checked as a file's are, once laid over one.
        let typo = FleetFragment::parse("[checkpoint]\ninterval_msec = 5\n").unwrap();
        let e = ConfigFile::parse_with(file, Path::new("."), &typo).unwrap_err().to_string();
        assert!(e.contains("interval_msec"), "{e}");
        assert!(FleetFragment::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_kept_fragment_is_read_back_from_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FleetFragment::load(dir.path()).unwrap().is_empty());
        std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
        std::fs::write(FleetFragment::path(dir.path()), "[wal]\ncommit_bytes = 4096\n").unwrap();
        let f = FleetFragment::load(dir.path()).unwrap();
        assert_eq!(ConfigFile::load_with(None, &f).unwrap().wal.commit_bytes, Some(4096));
        std::fs::write(FleetFragment::path(dir.path()), "[access]\n").unwrap();
        let e = format!("{:#}", FleetFragment::load(dir.path()).unwrap_err());
        assert!(e.contains("config.toml") && e.contains("[access]"), "{e}");
    }
}

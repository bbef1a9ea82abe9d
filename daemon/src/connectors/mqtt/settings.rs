//! MQTT connection settings: a source's or sink's `WITH (...)` options over the `[mqtt]` defaults
//! of the config file, checked once at plan time, and turned into rumqttc options. Owns option
//! parsing and `${ENV}` expansion of option values; never connects.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{QoS, TlsConfiguration, Transport};

use crate::config::{expand_env, MqttDefaults};
use crate::connectors::{state_tag, STATE_TAG_LEN};
use crate::secret::{redact_url, Secret};
use eddy_engine::connector::{OpenedState, Options, Role};
use eddy_engine::EngineError;

eddy_engine::connector::connector_options! {
    /// Options every MQTT source and sink takes: the broker connection (each also under
    /// `[mqtt]` in the config).
    pub struct ConnectionOptions {
        url: String = "url",
        qos: QosLevel = "qos",
        client_id: String = "client_id",
        username: String = "username",
        password: Secret = "password",
        protocol: Protocol = "protocol",
        keep_alive: Duration = "keep_alive",
        ca_file: PathBuf = "ca_file",
        cert_file: PathBuf = "cert_file",
        key_file: PathBuf = "key_file",
        max_message_bytes: usize = "max_message_bytes",
    }
}

/// The state epoch ([`OpenedState::epoch`]) from which default client ids carry the state's tag.
const CLIENT_IDS_FOLLOW_STATE_SINCE: u32 = 1;

/// Client ids up to this length: 8 × the 23 that every MQTT 3.1.1 broker must accept (Mosquitto,
/// EMQX and HiveMQ take far longer ones).
const MAX_CLIENT_ID_LEN: usize = 23 * 8;

/// A broker connection, resolved.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    /// `client_id` is the default, to be completed by [`Connection::bind_state`].
    default_client_id: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub qos: QoS,
    pub max_message_bytes: usize,
    /// MQTT 5 (`protocol = '5'`) rather than 3.1.1.
    pub mqtt5: bool,
    /// Where to report errors: "source 'x'" / "sink 'y'".
    pub ctx: String,
}

pub(crate) fn opt_err(ctx: &str, msg: impl Into<String>) -> EngineError {
    EngineError::options(ctx, msg)
}

/// An option from the SQL, else from the config's `[mqtt]` defaults; `${ENV}` expanded.
pub(crate) fn get(ctx: &str, o: &Options, defaults: &MqttDefaults, key: &str) -> Result<Option<String>, EngineError> {
    let v = o.get(key).map(str::to_string).or_else(|| defaults.get(key));
    v.map(|v| expand_env(&v).map_err(|e| opt_err(ctx, format!("option '{key}': {e}")))).transpose()
}

eddy_engine::connector::option_enum! {
    /// The `qos` option (unset: 1).
    pub enum QosLevel {
        /// At most once.
        Zero = "0",
        /// At least once.
        One = "1",
        /// Exactly once (subscribed at 1; see the source).
        Two = "2",
    }
}

impl QosLevel {
    pub fn qos(self) -> QoS {
        match self {
            QosLevel::Zero => QoS::AtMostOnce,
            QosLevel::One => QoS::AtLeastOnce,
            QosLevel::Two => QoS::ExactlyOnce,
        }
    }
}

eddy_engine::connector::option_enum! {
    /// The `protocol` option: the MQTT version spoken (unset: 3.1.1).
    pub enum Protocol {
        V3_1_1 = "3.1.1" | "4",
        V5 = "5" | "5.0",
    }
}

/// `mqtt://host[:1883]`, `tcp://…`, `mqtts://host[:8883]`, `ssl://…`.
pub(crate) fn parse_url(ctx: &str, url: &str) -> Result<(String, u16, bool), EngineError> {
    // Errors show the URL without any credentials in it.
    let shown = redact_url(url);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| opt_err(ctx, format!("url '{shown}': expected mqtt://host:port or mqtts://host:port")))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        s => return Err(opt_err(ctx, format!("url '{shown}': unknown scheme '{s}' (use mqtt:// or mqtts://)"))),
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || hostport.contains('@') {
        return Err(opt_err(
            ctx,
            format!("url '{shown}': expected only a host and port (credentials go in 'username'/'password')"),
        ));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p.parse::<u16>().map_err(|_| opt_err(ctx, format!("url '{shown}': bad port '{p}'")))?;
            (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
        }
        _ => (hostport.to_string(), if tls { 8883 } else { 1883 }),
    };
    Ok((host, port, tls))
}

impl Connection {
    /// Resolves the connection options of `name` (a source or sink of `pipeline`).
    pub fn resolve(
        role: Role,
        pipeline: &str,
        name: &str,
        o: &Options,
        defaults: &MqttDefaults,
    ) -> Result<Connection, EngineError> {
        let ctx = format!("{role} '{name}'");
        let o = ConnectionOptions::read(&ctx, |k| get(&ctx, o, defaults, k))?;
        let url = o.url.ok_or_else(|| {
            EngineError::unconfigured(&ctx, "connector 'mqtt' needs option 'url' (or `url` under [mqtt] in the config)")
        })?;
        let (host, port, tls) = parse_url(&ctx, &url)?;
        let mqtt5 = o.protocol == Some(Protocol::V5);
        let default_client_id = o.client_id.is_none();
        let client_id = match o.client_id {
            Some(c) => c,
            None => {
                let prefix = defaults.client_id_prefix.clone().unwrap_or_else(|| "eddy".into());
                format!("{prefix}-{pipeline}-{name}")
            }
        };
        // Room for the state's tag that a default id may get.
        let tag_len = if default_client_id { 1 + STATE_TAG_LEN } else { 0 };
        if client_id.is_empty() || client_id.len() + tag_len > MAX_CLIENT_ID_LEN {
            return Err(opt_err(
                &ctx,
                format!("option 'client_id' (or the default made of client_id_prefix, pipeline and name) must be 1 to {MAX_CLIENT_ID_LEN} characters"),
            ));
        }
        let keep_alive = o.keep_alive.unwrap_or(Duration::from_secs(30)).max(Duration::from_secs(1));
        let (ca_file, cert_file, key_file) = (o.ca_file, o.cert_file, o.key_file);
        if cert_file.is_some() != key_file.is_some() {
            return Err(opt_err(&ctx, "options 'cert_file' and 'key_file' go together (TLS client authentication)"));
        }
        if !tls && (ca_file.is_some() || cert_file.is_some()) {
            return Err(opt_err(&ctx, "TLS files are given but the url is not mqtts://"));
        }
        Ok(Connection {
            host,
            port,
            tls,
            client_id,
            default_client_id,
            username: o.username,
            password: o.password,
            keep_alive,
            ca_file,
            cert_file,
            key_file,
            qos: o.qos.unwrap_or(QosLevel::One).qos(),
            max_message_bytes: o.max_message_bytes.unwrap_or(8 << 20).clamp(1024, 256 << 20),
            mqtt5,
            ctx,
        })
    }

    /// Names the connection after the durable state it serves: a default client id becomes
    /// `<prefix>-<pipeline>-<name>-<state>`. Gateways that run a fleet's pipeline on one broker
    /// then never take each other's session, while a restart, a new host name or a replacement
    /// restored from a backup keeps it. State begun before [`CLIENT_IDS_FOLLOW_STATE_SINCE`]
    /// keeps the former default, under which its broker holds its session.
    pub fn bind_state(&mut self, state: &OpenedState) {
        if self.default_client_id && state.epoch >= CLIENT_IDS_FOLLOW_STATE_SINCE {
            self.client_id = format!("{}-{}", self.client_id, state_tag(&state.identity));
            self.default_client_id = false;
        }
    }

    /// The TLS transport (`None` for plain TCP); reads the TLS files (an unreadable one is an
    /// error naming it).
    pub fn transport(&self) -> Result<Option<Transport>, EngineError> {
        if !self.tls {
            return Ok(None);
        }
        crate::connectors::install_tls_provider();
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| EngineError::io(p, e));
        Ok(Some(match &self.ca_file {
            Some(ca) => {
                let client_auth = match (&self.cert_file, &self.key_file) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    _ => None,
                };
                Transport::tls_with_config(TlsConfiguration::Simple { ca: read(ca)?, alpn: None, client_auth })
            }
            None => Transport::tls_with_config(system_roots(&self.ctx)?),
        }))
    }
}

/// TLS against the system's CA certificates (no `ca_file`).
fn system_roots(ctx: &str) -> Result<TlsConfiguration, EngineError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"] {
        if let Ok(pem) = std::fs::read(path) {
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                let _ = roots.add(cert);
            }
            break;
        }
    }
    if roots.is_empty() {
        return Err(opt_err(ctx, "mqtts:// without 'ca_file', and no system CA bundle was found; set 'ca_file'"));
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(TlsConfiguration::Rustls(std::sync::Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("x", "mqtt://localhost").unwrap(), ("localhost".into(), 1883, false));
        assert_eq!(parse_url("x", "mqtts://broker.plant:9000").unwrap(), ("broker.plant".into(), 9000, true));
        assert_eq!(parse_url("x", "tcp://[::1]:1884").unwrap(), ("::1".into(), 1884, false));
        for bad in ["localhost:1883", "http://x", "mqtt://u:p@x", "mqtt://x:99999", "mqtt://"] {
            assert!(parse_url("x", bad).is_err(), "{bad}");
        }
    }

    /// The default client id follows the state it serves, except for state begun before that
    /// (its broker keeps its session under the former id); a given id is always kept.
    #[test]
    fn default_client_ids_follow_the_state_from_epoch_one() {
        let opts = |extra: &[(&str, &str)]| Options {
            entries: [("url", "mqtt://127.0.0.1")]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string(), Default::default()))
                .collect(),
        };
        let defaults = MqttDefaults { client_id_prefix: Some("gw".into()), ..Default::default() };
        let resolve = |o: &Options| Connection::resolve(Role::Source, "p", "s", o, &defaults).unwrap();
        let state = |epoch| OpenedState { identity: [0xab; 16], from_backup: false, epoch };
        let bound = |o: &Options, epoch| {
            let mut c = resolve(o);
            c.bind_state(&state(epoch));
            c.client_id
        };
        assert_eq!(resolve(&opts(&[])).client_id, "gw-p-s", "without durable state");
        assert_eq!(bound(&opts(&[]), 1), "gw-p-s-abababababababab");
        assert_eq!(bound(&opts(&[]), 0), "gw-p-s", "state begun before epoch 1");
        assert_eq!(bound(&opts(&[("client_id", "mine")]), 1), "mine");
        // Bound twice (it is not), the tag would not be added twice.
        let mut c = resolve(&opts(&[]));
        c.bind_state(&state(1));
        c.bind_state(&state(1));
        assert_eq!(c.client_id, "gw-p-s-abababababababab");
        // The limit counts the tag a default id gets.
        let long = "x".repeat(MAX_CLIENT_ID_LEN - "gw-p-".len());
        let err = Connection::resolve(Role::Source, "p", &long, &opts(&[]), &defaults).unwrap_err().to_string();
        assert!(err.contains("1 to 184 characters"), "{err}");
        let fits = "x".repeat(MAX_CLIENT_ID_LEN - "gw-p-".len() - 1 - STATE_TAG_LEN);
        let mut c = Connection::resolve(Role::Source, "p", &fits, &opts(&[]), &defaults).unwrap();
        c.bind_state(&state(1));
        assert_eq!(c.client_id.len(), MAX_CLIENT_ID_LEN);
    }

    #[test]
    fn credentials_never_reach_errors_or_debug() {
        let e = parse_url("source 's'", "mqtt://plant:s3cret@broker:1883").unwrap_err().to_string();
        assert!(!e.contains("s3cret") && e.contains("***@broker"), "{e}");
        let o = Options {
            entries: vec![
                ("url".into(), "mqtt://127.0.0.1:1".into(), Default::default()),
                ("username".into(), "plant".into(), Default::default()),
                ("password".into(), "s3cret".into(), Default::default()),
            ],
        };
        let c = Connection::resolve(Role::Source, "p", "s", &o, &Default::default()).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("s3cret"));
    }
}

//! `eddy-hub`'s configuration file (TOML): where it listens, its TLS files, the object store and
//! its limits. Owns parsing and checking; never opens a socket or the store. Secrets come from the
//! environment or a file, and never appear in `Debug` or logs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// `host:port` to serve gRPC on (mutual TLS).
    pub listen: String,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub rows: RowsConfig,
}

/// `[rows]`: how long the gateways' rows stay in the bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RowsConfig {
    /// Days of rows kept before today (UTC), by the `date=` partition; older partitions' batches
    /// are deleted. 0 keeps rows forever.
    pub keep_days: u32,
    /// How often a serving hub sweeps for expired partitions, in seconds (the first sweep is at
    /// start). Each sweep LISTs the bucket's streams and gateways, not their kept batches.
    pub sweep_every_s: u64,
}

impl Default for RowsConfig {
    fn default() -> Self {
        RowsConfig { keep_days: 0, sweep_every_s: 3600 }
    }
}

/// `[fleet]`: desired state for groups of gateways.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// How often a gateway's watch looks for a new version of its group, in ms. Each watching
    /// gateway costs one LIST of its group's versions per period.
    pub poll_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { poll_ms: 2000 }
    }
}

/// `[backup]`: gateways' checkpoint backups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Checkpoints kept per gateway and pipeline (older ones are deleted with the blobs only
    /// they named), besides the one pinned when another state's checkpoint arrived
    /// (`checkpoints::retained`).
    pub keep: usize,
    /// A blob no kept checkpoint names is deleted only once it is this old: a checkpoint being
    /// uploaded has its blobs stored before its index names them.
    pub blob_grace_s: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { keep: 3, blob_grace_s: 3600 }
    }
}

/// `[access]`: who besides a gateway itself may read its backups and retract its rows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Certificate CNs of operators (the fleet's CA signs theirs too): they may deploy to
    /// groups, read the fleet's status, and list and fetch any gateway's checkpoints (for
    /// restoring onto a replacement with a new certificate).
    pub operators: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The hub's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs gateway certificates: only its gateways are let in, each known by its
    /// certificate's CN.
    pub client_ca: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `s3://bucket` (S3 or an S3-compatible store) or `file:///dir` (one machine only).
    pub url: String,
    /// Where every key starts (`fleet-a/`): several fleets can share a bucket.
    #[serde(default)]
    pub prefix: String,
    /// S3: the endpoint of an S3-compatible store (`http://10.0.0.5:8333`); empty for AWS.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub region: Option<String>,
    /// S3 credentials; when absent, the standard `AWS_*` environment variables.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (kept out of the config file).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow `http://` endpoints (a store on the same host or a private network).
    #[serde(default)]
    pub allow_http: bool,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest push accepted, in bytes (gateways keep their batches below it).
    pub max_push_bytes: usize,
    /// Pushes handled at once across all gateways; more wait. With max_push_bytes, this bounds
    /// the memory pushes hold (about twice their product: the rows and their Parquet).
    pub max_concurrent_pushes: usize,
    /// Rows in one push, at most.
    pub max_push_rows: u64,
    /// The largest checkpoint blob (state file) accepted, in bytes. Blobs stream through to the
    /// store in 8 MiB parts; this bounds the bucket, not the hub's memory.
    pub max_blob_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_push_bytes: 64 << 20,
            max_concurrent_pushes: 64,
            max_push_rows: 1_000_000,
            max_blob_bytes: 16 << 30,
        }
    }
}

impl HubConfig {
    pub fn load(path: &Path) -> anyhow::Result<HubConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut cfg: HubConfig = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.tls.cert, &mut cfg.tls.key, &mut cfg.tls.client_ca] {
            *p = base.join(expand_env(&*p)?);
        }
        if let Some(p) = cfg.store.secret_access_key_file.as_mut() {
            *p = base.join(expand_env(&*p)?);
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(self.store.url.starts_with("s3://") || self.store.url.starts_with("file://")) {
            bail!("store.url '{}': use s3://bucket or file:///dir", self.store.url);
        }
        if self.store.prefix.split('/').any(|s| s == "..") {
            bail!("store.prefix '{}': no '..' segments", self.store.prefix);
        }
        let l = &self.limits;
        if l.max_push_bytes < 4096 || l.max_concurrent_pushes == 0 || l.max_push_rows == 0 {
            bail!("limits: max_push_bytes is at least 4096, and every other limit at least 1");
        }
        if self.backup.keep == 0 {
            bail!("backup.keep: at least 1");
        }
        if self.rows.sweep_every_s < 60 {
            bail!("rows.sweep_every_s: at least 60");
        }
        Ok(())
    }
}

/// A file path with `${NAME}` replaced by that environment variable (systemd hands the key over
/// as a credential: `${CREDENTIALS_DIRECTORY}/hub.key`); an unset variable is an error.
fn expand_env(p: &Path) -> anyhow::Result<PathBuf> {
    let text = p.to_string_lossy();
    let mut out = String::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').ok_or_else(|| anyhow::anyhow!("{}: an unclosed ${{", p.display()))?;
        let name = &rest[at + 2..at + end];
        let v = std::env::var(name).map_err(|_| anyhow::anyhow!("{}: ${{{name}}} is not set", p.display()))?;
        out.push_str(&v);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(PathBuf::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_file_and_bad_urls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.toml");
        std::fs::write(
            &p,
            "listen = '127.0.0.1:7443'\n[tls]\ncert = 'hub.pem'\nkey = 'hub.key'\nclient_ca = 'ca.pem'\n[store]\nurl = 's3://eddy'\n",
        )
        .unwrap();
        let cfg = HubConfig::load(&p).unwrap();
        assert_eq!(cfg.tls.cert, dir.path().join("hub.pem"));
        assert_eq!(cfg.limits.max_concurrent_pushes, 64);
        assert_eq!(
            expand_env(Path::new("${HOME}/k")).unwrap(),
            PathBuf::from(format!("{}/k", std::env::var("HOME").unwrap()))
        );
        assert!(expand_env(Path::new("${EDDY_SURELY_UNSET_VAR}/k")).unwrap_err().to_string().contains("is not set"));
        assert_eq!((cfg.rows.keep_days, cfg.rows.sweep_every_s), (0, 3600), "rows are kept forever by default");
        let base = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{base}[rows]\nkeep_days = 90\n")).unwrap();
        assert_eq!(HubConfig::load(&p).unwrap().rows.keep_days, 90);
        std::fs::write(&p, format!("{base}[rows]\nkeep_days = 90\nsweep_every_s = 5\n")).unwrap();
        let e = HubConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("rows.sweep_every_s"), "{e}");
        std::fs::write(&p, &base).unwrap();
        std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("s3://eddy", "ftp://x")).unwrap();
        let e = HubConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("store.url"), "{e}");
    }
}

//! MQTT connection settings: a source's or sink's `WITH (...)` options over the `[mqtt]` defaults
//! of the config file, checked once at plan time, and turned into rumqttc options. Owns option
//! parsing and `${ENV}` expansion of option values; never connects.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{QoS, TlsConfiguration, Transport};

use crate::config::{expand_env, MqttDefaults};
use crate::secret::{redact_url, Secret};
use eddy_engine::connector::Options;
use eddy_engine::connector::Role;
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

/// A broker connection, resolved.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
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
        let client_id = match o.client_id {
            Some(c) => c,
            None => {
                let prefix = defaults.client_id_prefix.clone().unwrap_or_else(|| "eddy".into());
                format!("{prefix}-{pipeline}-{name}")
            }
        };
        if client_id.is_empty() || client_id.len() > 23 * 8 {
            return Err(opt_err(&ctx, "option 'client_id' must be 1 to 184 characters"));
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

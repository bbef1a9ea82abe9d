//! Where the daemon is, and how a channel to it is made: the Unix socket (no TLS: the kernel
//! names the caller) or TCP with mutual TLS. Owns address parsing and TLS material loading.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// Where eddyd listens by default (the systemd unit's RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/eddy/control.sock";

/// PEM files for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the daemon's certificate.
    pub ca: PathBuf,
    /// This client's certificate and key (its principal is the certificate's SAN or CN).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name to expect in the daemon's certificate (default: the host part of the address).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port` with mutual TLS.
    Tls {
        address: String,
        files: TlsFiles,
    },
    /// `host:port` without TLS: only a daemon that allows plaintext on loopback answers.
    Plain {
        address: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tls { address, .. } => write!(f, "{address} (TLS)"),
            Target::Plain { address } => write!(f, "{address} (plaintext)"),
        }
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Files(format!("cannot read the {what} {}: {e}", path.display())))
}

impl Target {
    pub(crate) async fn connect(&self, timeouts: &crate::Timeouts) -> Result<Channel, ClientError> {
        let timeout = timeouts.connect;
        // Over TCP only: a local socket's peer cannot vanish without closing it.
        let keepalive = |ep: Endpoint| {
            ep.http2_keep_alive_interval(timeouts.keepalive)
                .keep_alive_timeout(timeouts.keepalive)
                .keep_alive_while_idle(true)
                .tcp_keepalive(Some(timeouts.keepalive))
        };
        let fail = |e: &dyn std::error::Error| ClientError::Connect { target: self.to_string(), why: error_chain(e) };
        match self {
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API and unused: the connector ignores it.
                let ep = Endpoint::from_static("http://eddyd.local").connect_timeout(timeout);
                ep.connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await
                .map_err(|e| fail(&e))
            }
            Target::Plain { address } => {
                let ep = Endpoint::from_shared(format!("http://{address}")).map_err(|e| fail(&e))?;
                keepalive(ep).connect_timeout(timeout).connect().await.map_err(|e| fail(&e))
            }
            Target::Tls { address, files } => {
                let host = address.rsplit_once(':').map_or(address.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&files.ca, "CA certificate")?))
                    .identity(Identity::from_pem(
                        read(&files.cert, "client certificate")?,
                        read(&files.key, "client key")?,
                    ))
                    .domain_name(files.server_name.clone().unwrap_or_else(|| host.to_string()));
                let ep = Endpoint::from_shared(format!("https://{address}")).map_err(|e| fail(&e))?;
                let ep = keepalive(ep.tls_config(tls).map_err(|e| fail(&e))?).connect_timeout(timeout);
                ep.connect().await.map_err(|e| fail(&e))
            }
        }
    }
}

/// The error with its sources ("transport error: tls handshake eof"), as tonic nests them.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

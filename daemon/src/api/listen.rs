//! The API's listeners: the Unix socket (mode 0660, the caller named by `SO_PEERCRED`) and TCP
//! with mutual TLS (the caller named by its certificate) or, only if allowed, plaintext on
//! loopback. Owns accepting, handshakes and naming callers; never authorises anything.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use super::audit::Event;

/// Who is calling, as the transport established it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Names rules may match: `uid:1000` and `user:ops`; `cert:gw-ops.example`; `tcp:127.0.0.1`.
    pub names: Vec<String>,
    /// Where from: `unix pid 4242`, `10.0.0.7:51234`.
    pub address: String,
}

impl Peer {
    /// The name audit entries carry (the most specific one).
    pub fn principal(&self) -> &str {
        self.names.last().map_or("unknown", |s| s.as_str())
    }
}

/// One accepted connection.
pub enum Conn {
    Unix(UnixStream, Peer),
    Tls(Box<TlsStream<TcpStream>>, Peer),
    Plain(TcpStream, Peer),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Unix(_, p) | Conn::Tls(_, p) | Conn::Plain(_, p) => p.clone(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Unix($s, _) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s, _) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Conn::Plain($s, _) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A user name for a uid, from /etc/passwd (`None` if it has none).
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Binds the socket: a stale socket file from a previous run is replaced, anything else at
/// that path is refused; the file is made mode 0660 before anyone can have connected usefully.
pub fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use: another eddyd is running with this socket", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let l = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// TLS material for the TCP listener, read at start (and again on reload).
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// A rustls server config requiring a client certificate signed by `client_ca`.
pub fn server_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let read = |p: &Path, what: &str| std::fs::read(p).with_context(|| format!("api.{what} {}", p.display()));
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(&files.cert, "tls_cert")?[..])
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("api.tls_cert {}: not PEM certificates", files.cert.display()))?;
    if certs.is_empty() {
        bail!("api.tls_cert {}: no certificate in the file", files.cert.display());
    }
    let key = rustls_pemfile::private_key(&mut &read(&files.key, "tls_key")?[..])
        .with_context(|| format!("api.tls_key {}", files.key.display()))?
        .ok_or_else(|| anyhow!("api.tls_key {}: no private key in the file", files.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read(&files.client_ca, "client_ca")?[..]) {
        let c = c.with_context(|| format!("api.client_ca {}", files.client_ca.display()))?;
        roots.add(c).map_err(|e| anyhow!("api.client_ca {}: {e}", files.client_ca.display()))?;
    }
    if roots.is_empty() {
        bail!("api.client_ca {}: no certificate in the file", files.client_ca.display());
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| anyhow!("api.client_ca: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("api.tls_cert / api.tls_key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificate's names: every DNS, URI and e-mail SAN, then the CN; as `cert:<name>`.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    names.push(format!("cert:{s}"))
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(format!("cert:{s}"));
        }
    }
    // The most specific name goes last (audit entries show it): the first SAN, else the CN.
    names.reverse();
    names
}

/// A failed handshake, to be audited by the caller.
pub type Denied = Event;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on every listener and hands named connections to the server; at most
/// `max_connections` are open at once (the rest wait in the kernel backlog). Failed TLS
/// handshakes go to `denied`.
pub fn incoming(
    unix: Option<UnixListener>,
    tcp: Option<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    max_connections: usize,
    denied: mpsc::Sender<Denied>,
) -> mpsc::Receiver<std::io::Result<ConnGuarded>> {
    let (tx, rx) = mpsc::channel(16);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    if let Some(l) = unix {
        let (tx, permits) = (tx.clone(), permits.clone());
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                match l.accept().await {
                    Ok((s, _)) => {
                        let peer = unix_peer(&s);
                        if tx.send(Ok(ConnGuarded { conn: Conn::Unix(s, peer), _permit: permit })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "api: accept on the socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    if let Some((l, tls)) = tcp {
        tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (s, addr) = match l.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "api: accept on TCP failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tx, denied, acceptor) = (tx.clone(), denied.clone(), acceptor.clone());
                // Handshakes run on their own tasks: a slow client never holds up others.
                tokio::spawn(async move {
                    let conn = match acceptor {
                        None => Conn::Plain(
                            s,
                            Peer { names: vec![format!("tcp:{}", addr.ip())], address: addr.to_string() },
                        ),
                        Some(a) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, a.accept(s)).await {
                            Ok(Ok(t)) => {
                                let peer = tls_peer(&t, addr);
                                Conn::Tls(Box::new(t), peer)
                            }
                            Ok(Err(e)) => {
                                let _ = denied.try_send(handshake_denied(addr, &e.to_string()));
                                return;
                            }
                            Err(_) => {
                                let _ = denied.try_send(handshake_denied(addr, "no handshake within 10 s"));
                                return;
                            }
                        },
                    };
                    let _ = tx.send(Ok(ConnGuarded { conn, _permit: permit })).await;
                });
            }
        });
    }
    rx
}

fn handshake_denied(addr: SocketAddr, why: &str) -> Denied {
    Event {
        principal: "unknown".into(),
        peer: addr.to_string(),
        method: "tls-handshake".into(),
        pipeline: String::new(),
        outcome: format!("denied: {why}"),
    }
}

fn unix_peer(s: &UnixStream) -> Peer {
    match s.peer_cred() {
        Ok(c) => {
            let uid = c.uid();
            let mut names = vec![format!("uid:{uid}")];
            if let Some(n) = user_name(uid) {
                names.push(format!("user:{n}"));
            }
            Peer { names, address: c.pid().map_or_else(|| "unix".into(), |p| format!("unix pid {p}")) }
        }
        Err(e) => Peer { names: vec![], address: format!("unix (no credentials: {e})") },
    }
}

fn tls_peer(t: &TlsStream<TcpStream>, addr: SocketAddr) -> Peer {
    let names = t.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| cert_names(c)).unwrap_or_default();
    Peer { names, address: addr.to_string() }
}

/// A connection holding its slot under `max_connections` until it closes.
pub struct ConnGuarded {
    conn: Conn,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for ConnGuarded {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.conn.connect_info()
    }
}

impl AsyncRead for ConnGuarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnGuarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}

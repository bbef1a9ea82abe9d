//! The management API (`eddy.v1.Control`, gRPC health and reflection) on its own small tokio
//! runtime and thread. It reads what the runtime publishes (registry, catalog) and sends
//! requests over a bounded channel; it never touches a pipeline and never makes the runtime
//! wait on it. Owns listeners, authorisation and the audit log; see docs/management.md.

pub mod access;
pub mod audit;
mod listen;
mod query;
mod restore;
mod service;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::ConfigFile;
use crate::control::{Catalog, Command, FatalSlot};
use crate::metrics::Registry;
use crate::runtime::StateContext;

/// The roles `[access]` gives (the runtime installs a new one on reload).
pub fn access_policy(cfg: &ConfigFile) -> Result<access::AccessPolicy> {
    // The daemon's own uid: /proc/self belongs to it.
    let own_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").context("/proc/self")?);
    access::AccessPolicy::new(&cfg.access.grant, own_uid)
}

/// What the API shares with the runtime.
pub struct Shared {
    /// Who may do what; replaced by a reload that changed `[access]`.
    pub policy: Arc<std::sync::RwLock<access::AccessPolicy>>,
    pub registry: Arc<Registry>,
    pub catalog: Arc<Catalog>,
    /// What the fleet agent applied; its pipelines are not deployed or deleted here.
    pub fleet: Arc<crate::control::FleetView>,
    pub fatal: Arc<FatalSlot>,
    pub commands: std::sync::mpsc::SyncSender<Command>,
    pub state: Option<StateContext>,
    /// How to reach the hub (`[hub]`), or what the config lacks for it: restores come from there.
    pub hub: std::result::Result<crate::connectors::hub::HubLink, String>,
}

/// The running API; dropping it stops the server and removes the socket file.
pub struct ApiHandle {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    socket: Option<PathBuf>,
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The socket path: configured, else in systemd's RuntimeDirectory, else the packaged default.
fn socket_path(cfg: &ConfigFile) -> (PathBuf, bool) {
    if let Some(p) = &cfg.api.socket {
        return (p.clone(), true);
    }
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|d| std::env::split_paths(&d).next())
        .unwrap_or_else(|| PathBuf::from("/run/eddy"));
    (dir.join("control.sock"), false)
}

type TlsConfig = Arc<tokio_rustls::rustls::ServerConfig>;

/// The TCP listener's address and TLS (`None`: plaintext, allowed on loopback only), as the
/// config says; the TLS files are read and checked. `None` without `api.listen`.
fn tcp_settings(cfg: &ConfigFile) -> Result<Option<(std::net::SocketAddr, Option<TlsConfig>)>> {
    let api = &cfg.api;
    let Some(addr) = &api.listen else { return Ok(None) };
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| anyhow!("api.listen '{addr}': {e}"))?;
    let tls = match (&api.tls_cert, &api.tls_key, &api.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(listen::server_tls(&listen::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.clone(),
        })?),
        (None, None, None) if api.allow_plaintext_loopback == Some(true) && sa.ip().is_loopback() => None,
        (None, None, None) => bail!(
            "api.listen {addr}: TCP needs mutual TLS (api.tls_cert, api.tls_key, api.client_ca); plaintext is allowed only on a loopback address with api.allow_plaintext_loopback = true"
        ),
        _ => bail!("api.listen {addr}: set all three of api.tls_cert, api.tls_key and api.client_ca"),
    };
    Ok(Some((sa, tls)))
}

/// `eddyd check --config`: what `start` would refuse, without binding anything.
pub fn check(cfg: &ConfigFile) -> Result<String> {
    if cfg.api.enabled == Some(false) {
        return Ok("management API: off".into());
    }
    access_policy(cfg)?;
    let (socket, _) = socket_path(cfg);
    Ok(match tcp_settings(cfg)? {
        None => format!("management API: {}", socket.display()),
        Some((sa, Some(_))) => format!("management API: {} and {sa} (mutual TLS)", socket.display()),
        Some((sa, None)) => format!("management API: {} and {sa} (plaintext, loopback)", socket.display()),
    })
}

/// Binds the listeners (errors surface here, before READY) and starts the API thread.
/// `None` when nothing could be bound and nothing was asked for explicitly.
pub fn start(cfg: &ConfigFile, shared: Shared) -> Result<Option<ApiHandle>> {
    let api = &cfg.api;
    let (socket, explicit) = socket_path(cfg);
    let unix = match listen::bind_unix(&socket) {
        Ok(l) => Some(l),
        Err(e) if !explicit => {
            tracing::warn!(socket = %socket.display(), error = %format!("{e:#}"), "management API socket not available; set api.socket to choose one");
            None
        }
        Err(e) => return Err(e.context("api.socket")),
    };
    let tcp = match tcp_settings(cfg)? {
        None => None,
        Some((sa, tls)) => {
            let l = std::net::TcpListener::bind(sa).with_context(|| format!("api.listen {sa}"))?;
            l.set_nonblocking(true)?;
            Some((l, tls))
        }
    };
    if unix.is_none() && tcp.is_none() {
        return Ok(None);
    }
    let audit = match &shared.state {
        Some(s) => Some(Arc::new(Mutex::new(audit::AuditLog::open(
            s.storage.clone(),
            s.cipher.clone(),
            &s.dir.join("audit"),
            api.audit_max_bytes.unwrap_or(64 << 20),
        )?))),
        None => {
            tracing::warn!("no state dir: API calls are audited to the journal only");
            None
        }
    };
    *shared.policy.write().unwrap_or_else(|p| p.into_inner()) = access_policy(cfg)?;
    let max_connections = api.max_connections.unwrap_or(64);
    let svc = service::ControlService::new(shared, audit, query::QuerySettings::of(api));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let socket_bound = unix.as_ref().map(|_| socket.clone());
    let socket_shown = socket_bound.as_ref().map(|p| p.display().to_string());
    let tcp_shown = tcp.as_ref().and_then(|(l, t)| {
        Some(format!("{} ({})", l.local_addr().ok()?, if t.is_some() { "mutual TLS" } else { "plaintext, loopback" }))
    });
    let pipeline_cores = crate::runtime::cores(cfg)?;
    std::thread::Builder::new().name("api".into()).spawn(move || {
        keep_off(&pipeline_cores);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "management API: cannot start its runtime");
                return;
            }
        };
        rt.block_on(async move {
            if let Err(e) = service::serve(svc, unix, tcp, max_connections, rx).await {
                tracing::error!(error = %format!("{e:#}"), "management API stopped");
            }
        });
    })?;
    tracing::info!(socket = ?socket_shown, tcp = ?tcp_shown, "management API listening");
    Ok(Some(ApiHandle { shutdown: Some(tx), socket: socket_bound }))
}

/// Keeps this thread (and the threads it starts: tokio's blocking pool) off the cores pipelines
/// are pinned to, when other cores are allowed; a busy API then never takes a pipeline's core.
fn keep_off(pipeline_cores: &[usize]) {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let Ok(allowed) = sched_getaffinity(None) else { return };
    let mut set = CpuSet::new();
    let mut any = false;
    for c in (0..CpuSet::MAX_CPU).filter(|c| allowed.is_set(*c) && !pipeline_cores.contains(c)) {
        set.set(c);
        any = true;
    }
    if any {
        if let Err(e) = sched_setaffinity(None, &set) {
            tracing::warn!(error = %e, "management API: cannot keep off the pipelines' cores");
        }
    }
}

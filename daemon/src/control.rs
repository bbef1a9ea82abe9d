//! What the management API asks of the runtime, and what the runtime publishes for it to read.
//! Requests travel over a bounded channel to the supervisor thread (which alone starts and
//! stops workers); replies come back on one-shot channels. Pipeline workers never see either.
//! Owns the message types and the published view; never acts on a request itself.

use crate::config::FleetFragment;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use eddy_engine::connector::{SourceRows, TapPoint};
use eddy_engine::query::LiveView;
use eddy_engine::LiveControl;
use tokio::sync::oneshot;

/// Why a request was not carried out, in terms a gRPC status can say.
#[derive(Debug, Clone)]
pub enum CommandError {
    NotFound(String),
    Invalid(String),
    /// Refused as things stand (a file-defined pipeline, no state dir, not paused…).
    Precondition(String),
    /// The runtime failed while doing it and is stopping (fail-stop).
    Fatal(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NotFound(m) | CommandError::Invalid(m) | CommandError::Precondition(m) => f.write_str(m),
            CommandError::Fatal(m) => write!(f, "eddyd is stopping: {m}"),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOutcome {
    Created,
    /// Replaced; whether the pipeline's state carried over.
    Replaced {
        state_kept: bool,
    },
    Unchanged,
}

/// What `Validate` reports: the plan, as `eddyd check` prints it.
pub struct Validation {
    pub plan: String,
}

pub enum Command {
    Validate {
        name: String,
        sql: String,
        reply: Reply<Validation>,
    },
    Deploy {
        name: String,
        sql: String,
        reset_state: bool,
        reply: Reply<DeployOutcome>,
    },
    Pause {
        name: String,
        reply: Reply<()>,
    },
    Resume {
        name: String,
        reply: Reply<()>,
    },
    Delete {
        name: String,
        drop_state: bool,
        reply: Reply<()>,
    },
    /// Replies with the worker's control handle; the caller waits for the checkpoint itself,
    /// so the supervisor never blocks on a pipeline.
    Checkpoint {
        name: String,
        reply: Reply<Arc<LiveControl>>,
    },
    /// Replies with the problems the reload met.
    Reload {
        reply: Reply<Vec<String>>,
    },
    /// Replies with the effective config as TOML, secrets masked.
    Config {
        reply: Reply<String>,
    },
    /// Checks a fleet version before anything changes: the config fragment laid over the
    /// config, each pipeline planned with the result, and none of them a pipeline this gateway
    /// has of its own (not among `owned`, the names the fleet deployed here).
    ValidateFleet {
        config: FleetFragment,
        pipelines: Vec<(String, String)>,
        owned: Vec<String>,
        reply: Reply<()>,
    },
    /// Keeps the fleet's config fragment and reloads (pipelines whose settings change restart
    /// from their checkpoints). Replies with the reload's problems as an error, if any.
    SetFleetConfig {
        config: FleetFragment,
        reply: Reply<()>,
    },
    /// Begins a restore from the hub (`crate::restore_cmd`): the pipeline stops after a final
    /// checkpoint and is marked paused, and nothing but `EndRestore` starts it until the restore
    /// ends. Replies with the fingerprint its SQL gives state (the backup's must be the same).
    HoldForRestore {
        name: String,
        reply: Reply<Vec<u8>>,
    },
    /// Ends a restore. With `staging`, the pipeline's state is replaced by the one built there
    /// and the pipeline starts from it; without, it stays paused on its own state. Replies with
    /// what became of it.
    EndRestore {
        name: String,
        staging: Option<std::path::PathBuf>,
        reply: Reply<String>,
    },
}

impl Command {
    /// Whether carrying it out plans or starts pipelines (code and memory that a running
    /// gateway does not otherwise use: see `crate::memory`).
    pub fn plans_pipelines(&self) -> bool {
        match self {
            Command::Validate { .. }
            | Command::Deploy { .. }
            | Command::Resume { .. }
            | Command::Reload { .. }
            | Command::ValidateFleet { .. }
            | Command::SetFleetConfig { .. }
            | Command::HoldForRestore { .. }
            | Command::EndRestore { .. } => true,
            Command::Pause { .. } | Command::Delete { .. } | Command::Checkpoint { .. } | Command::Config { .. } => {
                false
            }
        }
    }

    /// Answers a request the runtime cannot take (it is stopping).
    pub fn refuse(self, why: &str) {
        let e = || CommandError::Precondition(why.to_string());
        match self {
            Command::Validate { reply, .. } => drop(reply.send(Err(e()))),
            Command::Deploy { reply, .. } => drop(reply.send(Err(e()))),
            Command::Pause { reply, .. } | Command::Resume { reply, .. } | Command::Delete { reply, .. } => {
                drop(reply.send(Err(e())))
            }
            Command::Checkpoint { reply, .. } => drop(reply.send(Err(e()))),
            Command::Reload { reply } => drop(reply.send(Err(e()))),
            Command::Config { reply } => drop(reply.send(Err(e()))),
            Command::ValidateFleet { reply, .. } | Command::SetFleetConfig { reply, .. } => drop(reply.send(Err(e()))),
            Command::HoldForRestore { reply, .. } => drop(reply.send(Err(e()))),
            Command::EndRestore { reply, .. } => drop(reply.send(Err(e()))),
        }
    }
}

/// One pipeline as the runtime last published it.
#[derive(Clone, Default)]
pub struct PipelineView {
    /// `file /etc/eddy/pipelines/x.sql` or `deployed`.
    pub origin: String,
    pub sql: Arc<str>,
    pub sql_sha256: String,
    /// As `eddyd check` prints it (empty for a pipeline paused since start).
    pub plan: String,
    pub shards: usize,
    pub sharding: String,
    pub paused: bool,
    /// Listed at start-up before it is recovered: no taps or views yet.
    pub starting: bool,
    /// Each sink's tap (empty while paused).
    pub taps: Vec<(String, Arc<TapPoint>)>,
    /// Each source's taps of accepted, late and error rows (empty while paused).
    pub source_taps: Vec<(String, SourceRows, Arc<TapPoint>)>,
    /// Materialized views' current rows, for queries (empty while paused or when none are kept).
    pub views: Vec<Arc<LiveView>>,
    /// Every name the pipeline defines and what it is (`view`, `source`, `table`, `sink`).
    pub relations: Vec<(String, &'static str)>,
}

/// What the fleet agent has done, for the API (docs/hub.md, "Fleet"): the group it follows,
/// the versions applied and refused, whether the hub answers, and the pipelines the fleet
/// deployed, each with the version that did (`fleet plant-a v4`). The API refuses local deploys
/// and deletes of those: the group's next version would undo them without a word. Taking the
/// gateway out of its group (`[hub.fleet]`) gives them back.
#[derive(Default)]
pub struct FleetView {
    inner: Mutex<FleetInfo>,
}

#[derive(Clone, Default)]
pub struct FleetInfo {
    pub group: String,
    pub applied_version: u64,
    /// A version refused after the applied one, and why (0: none).
    pub rejected_version: u64,
    pub rejected_reason: String,
    pub hub_connected: bool,
    owned: BTreeMap<String, String>,
}

impl FleetView {
    fn with<T>(&self, f: impl FnOnce(&mut FleetInfo) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn follow(&self, group: &str) {
        self.with(|i| i.group = group.to_string());
    }

    /// The fleet's pipelines here are `names`, deployed by version `version` of `group`.
    pub fn set_owned<'a>(&self, group: &str, version: u64, names: impl IntoIterator<Item = &'a str>) {
        let label = format!("fleet {group} v{version}");
        let owned = names.into_iter().map(|n| (n.to_string(), label.clone())).collect();
        self.with(|i| i.owned = owned);
    }

    /// The applied version, and one refused after it with why (0: none).
    pub fn set_versions(&self, applied: u64, rejected: u64, reason: &str) {
        self.with(|i| {
            (i.applied_version, i.rejected_version, i.rejected_reason) = (applied, rejected, reason.to_string())
        });
    }

    pub fn set_hub_connected(&self, connected: bool) {
        self.with(|i| i.hub_connected = connected);
    }

    /// `fleet <group> v<version>` when the fleet deployed `name`.
    pub fn owner(&self, name: &str) -> Option<String> {
        self.with(|i| i.owned.get(name).cloned())
    }

    /// None when this gateway follows no group.
    pub fn info(&self) -> Option<FleetInfo> {
        self.with(|i| (!i.group.is_empty()).then(|| i.clone()))
    }
}

/// The pipelines the runtime has, for readers on other threads.
#[derive(Default)]
pub struct Catalog {
    views: Mutex<BTreeMap<String, PipelineView>>,
}

impl Catalog {
    pub fn publish(&self, views: BTreeMap<String, PipelineView>) {
        *self.views.lock().unwrap_or_else(|p| p.into_inner()) = views;
    }

    pub fn snapshot(&self) -> BTreeMap<String, PipelineView> {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Bytes as lowercase hex (digests in names and messages).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a pipeline's SQL text.
pub fn sql_sha256(sql: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, sql.as_bytes()).as_ref())
}

/// A failure the API met that must stop eddyd (the audit log's fsync failed): set by the API,
/// taken by the supervisor.
#[derive(Default)]
pub struct FatalSlot(Mutex<Option<String>>);

impl FatalSlot {
    pub fn set(&self, why: String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(why);
    }

    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Valid pipeline names: they name files and directories.
pub fn check_name(name: &str) -> Result<(), CommandError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!(
            "'{name}' is not a pipeline name: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

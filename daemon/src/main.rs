//! `eddyd`: the Eddy daemon's command line. Commands: `replay` (a pipeline over bounded input),
//! `check` (validate without running), `run` (live), `demo` (a built-in pipeline over generated data).
//! This is the binary's edge: errors become one clear message on stderr and a non-zero exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use std::time::Duration;

use eddy_engine::pipeline::{DurableConfig, Mode, Pipeline, PipelineConfig};
use eddy_engine::storage::crypto::Cipher;
use eddy_engine::storage::fs::{RealFs, Storage};

const DEMO_SQL: &str = include_str!("demo.sql");

#[derive(Parser)]
#[command(name = "eddyd", version, about = "Eddy: streaming SQL for edge gateways")]
struct Cli {
    /// Log filter (also EDDY_LOG), e.g. `info` or `eddy_engine=debug`.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

/// Limits on a pipeline's state; reaching one stops the pipeline with an error, never a drop.
#[derive(clap::Args, Clone, Copy)]
struct LimitArgs {
    /// Open windows per windowed aggregation.
    #[arg(long, default_value_t = eddy_engine::ops::Limits::default().max_open_windows)]
    max_open_windows: usize,
    /// Groups (keys) per aggregation, summed over open windows; also OVER partitions and sessions.
    #[arg(long, default_value_t = eddy_engine::ops::Limits::default().max_groups)]
    max_groups: usize,
    /// Rows per batch a source hands on (a source's `batch_rows` option overrides it).
    #[arg(long, default_value_t = eddy_engine::ops::Limits::default().batch_rows)]
    batch_rows: usize,
}

impl LimitArgs {
    fn apply(self, cfg: &mut PipelineConfig) {
        cfg.limits.max_open_windows = self.max_open_windows.max(1);
        cfg.limits.max_groups = self.max_groups.max(1);
        cfg.limits.batch_rows = self.batch_rows.clamp(1, 1 << 20);
    }
}

/// Durable state: WAL, checkpoints, encryption at rest.
#[derive(clap::Args, Clone)]
struct StateArgs {
    /// Keep state here (each pipeline in a subdirectory named after its file); without it,
    /// pipelines run without durable state and file sinks are not exactly-once.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The state key file (mode 0600; `eddyd keygen` makes one). Default: the systemd credential.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Name of the systemd credential (in $CREDENTIALS_DIRECTORY) holding the key.
    #[arg(long, default_value = "eddy-state-key")]
    key_credential: String,
    /// Store state unencrypted (must be said explicitly).
    #[arg(long)]
    no_encryption: bool,
    /// Checkpoint at least this often (ms).
    #[arg(long, default_value_t = 10_000)]
    checkpoint_interval_ms: u64,
    /// Group commit: commit the WAL once its oldest pending record is this old (µs)...
    #[arg(long, default_value_t = 5_000)]
    wal_commit_delay_us: u64,
    /// ...or once this many bytes are pending.
    #[arg(long, default_value_t = 1 << 20)]
    wal_commit_bytes: usize,
    /// WAL segment size.
    #[arg(long, default_value_t = 64 << 20)]
    wal_segment_bytes: u64,
    /// Largest WAL record (one source batch).
    #[arg(long, default_value_t = 16 << 20)]
    wal_max_record_bytes: usize,
    /// Checkpoint early once sinks hold this many staged (not yet committed) bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_staged_bytes: usize,
}

impl StateArgs {
    fn cipher(&self) -> Result<Arc<Cipher>> {
        if self.no_encryption {
            if self.key_file.is_some() {
                bail!("--no-encryption and --key-file contradict each other");
            }
            return Ok(Arc::new(Cipher::plaintext()));
        }
        if let Some(k) = &self.key_file {
            return Ok(Arc::new(Cipher::from_key_file(k)?));
        }
        match Cipher::from_credential(&self.key_credential)? {
            Some(c) => Ok(Arc::new(c)),
            None => bail!(
                "state is encrypted at rest, and no key was given: pass --key-file FILE (make one with `eddyd keygen > FILE; chmod 600 FILE`), provide the systemd credential '{}', or turn encryption off explicitly with --no-encryption",
                self.key_credential
            ),
        }
    }

    fn durable_config(&self, dir: PathBuf, storage: Arc<dyn Storage>, cipher: Arc<Cipher>) -> DurableConfig {
        let mut d = DurableConfig::new(dir, storage, cipher);
        d.checkpoint_interval = Duration::from_millis(self.checkpoint_interval_ms.max(1));
        d.wal.commit_delay = Duration::from_micros(self.wal_commit_delay_us);
        d.wal.commit_bytes = self.wal_commit_bytes.max(1);
        d.wal.segment_bytes = self.wal_segment_bytes.max(1 << 16);
        d.wal.max_record_bytes = self.wal_max_record_bytes.max(1 << 10);
        d.max_staged_bytes = self.max_staged_bytes.max(1);
        d
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over bounded input: every source to its end, then every window closes.
    Replay {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Read SOURCE from this JSON-lines file instead of its connector (SOURCE=FILE).
        #[arg(long = "input", value_name = "SOURCE=FILE")]
        inputs: Vec<String>,
        /// Write SINK to this JSON-lines file instead of its connector (SINK=FILE).
        #[arg(long = "output", value_name = "SINK=FILE")]
        outputs: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Validate a pipeline file (SQL, options, plans) without reading or writing anything.
    Check {
        pipeline: PathBuf,
    },
    /// Run pipelines live until Ctrl-C / SIGTERM (or until all their sources have ended).
    Run {
        /// A pipeline file; repeat for several (each runs on its own thread).
        #[arg(long, required = true)]
        pipeline: Vec<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print a new random state key as a key-file line (`ID:HEX`); append it to rotate keys.
    Keygen {
        #[arg(long, default_value_t = 1)]
        id: u32,
    },
    /// Run the built-in demo: generated plant telemetry, live 10-second statistics. Ctrl-C stops it.
    Demo {
        /// Print the demo's SQL and exit.
        #[arg(long)]
        show_sql: bool,
    },
}

fn parse_pairs(flag: &str, items: &[String], base: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for item in items {
        let (name, file) = item.split_once('=').ok_or_else(|| anyhow!("{flag} {item}: expected NAME=FILE"))?;
        if name.is_empty() || file.is_empty() {
            bail!("{flag} {item}: expected NAME=FILE");
        }
        let path = Path::new(file);
        let path = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
        if out.insert(name.to_ascii_lowercase(), path).is_some() {
            bail!("{flag}: '{name}' given twice");
        }
    }
    Ok(out)
}

fn read_pipeline(path: &Path) -> Result<(String, PathBuf)> {
    let sql = std::fs::read_to_string(path).with_context(|| format!("cannot read pipeline {}", path.display()))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    Ok((sql, dir))
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook_registry_like::SIGINT, signal_hook_registry_like::SIGTERM] {
        signal_hook_registry_like::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Minimal SIGINT/SIGTERM handling: the handler only sets a flag the live loop polls.
mod signal_hook_registry_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;

    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    extern "C" fn on_signal(_: i32) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::SeqCst);
        }
    }

    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    }

    pub fn register(sig: i32, flag: Arc<AtomicBool>) -> anyhow::Result<()> {
        let _ = FLAG.set(flag);
        // SAFETY: the handler only does an atomic store, which is async-signal-safe.
        let prev = unsafe { signal(sig, on_signal) };
        if prev == usize::MAX {
            anyhow::bail!("cannot install a handler for signal {sig}");
        }
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("EDDY_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.command) {
        eprintln!("eddyd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Replay { pipeline, inputs, outputs, limits } => {
            let (sql, dir) = read_pipeline(&pipeline)?;
            let cwd = std::env::current_dir()?;
            let mut cfg = PipelineConfig::new(dir, Mode::Replay);
            limits.apply(&mut cfg);
            cfg.inputs = parse_pairs("--input", &inputs, &cwd)?;
            cfg.outputs = parse_pairs("--output", &outputs, &cwd)?;
            let mut p = Pipeline::plan(&sql, &cfg)?;
            p.run_to_end()?;
            for (name, s) in p.source_stats() {
                tracing::info!(source = %name, accepted = s.accepted, late = s.late, errors = s.errors, "replayed");
            }
            Ok(())
        }
        Command::Check { pipeline } => {
            let (sql, dir) = read_pipeline(&pipeline)?;
            let p = Pipeline::plan(&sql, &PipelineConfig::new(dir, Mode::Live))?;
            let s = p.summary();
            println!(
                "{}: OK — {} source(s), {} table(s), {} view(s), {} sink(s)",
                pipeline.display(),
                s.sources.len(),
                s.tables.len(),
                s.views.len(),
                s.sinks.len()
            );
            for (name, updating) in &s.sinks {
                println!("  sink {name}: {}", if *updating { "updating (upsert)" } else { "append-only" });
            }
            Ok(())
        }
        Command::Run { pipeline, limits, state } => run_live(&pipeline, limits, &state),
        Command::Keygen { id } => {
            println!("{}", eddy_engine::storage::crypto::generate_key_line(id)?);
            Ok(())
        }
        Command::Demo { show_sql } => {
            if show_sql {
                print!("{DEMO_SQL}");
                return Ok(());
            }
            let mut p = Pipeline::plan(DEMO_SQL, &PipelineConfig::new(".", Mode::Live))?;
            eprintln!("eddyd demo: 6 simulated devices at 200 readings/s; 10-second statistics per device appear as windows close. Ctrl-C stops.");
            let stop = stop_flag()?;
            p.run_live(&stop)?;
            if stop.load(Ordering::Relaxed) {
                eprintln!("eddyd demo: stopped");
            }
            Ok(())
        }
    }
}

/// Plans every pipeline (all must be valid before any starts), recovers their state, then runs each
/// on its own thread. A pipeline whose sources all end takes its final checkpoint and stops; the
/// others go on.
fn run_live(files: &[PathBuf], limits: LimitArgs, state: &StateArgs) -> Result<()> {
    let stop = stop_flag()?;
    let durable = match &state.state_dir {
        Some(dir) => {
            let storage: Arc<dyn Storage> = Arc::new(RealFs::new());
            let cipher = state.cipher()?;
            tracing::info!(wal_io = storage.backend(), encrypted = cipher.is_encrypted(), state_dir = %dir.display(), "durable state");
            Some((dir.clone(), storage, cipher))
        }
        None => {
            tracing::warn!("no --state-dir: pipelines run without durable state; a restart loses their windows and file sinks are not exactly-once");
            None
        }
    };
    let mut names = std::collections::HashSet::new();
    let mut pipelines = Vec::new();
    for file in files {
        let (sql, dir) = read_pipeline(file)?;
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into());
        if !names.insert(name.clone()) {
            bail!("two pipelines are named '{name}'; each needs a file name of its own (it names its state)");
        }
        let mut cfg = PipelineConfig::new(dir, Mode::Live);
        limits.apply(&mut cfg);
        cfg.exactly_once = durable.is_some();
        let mut p = Pipeline::plan(&sql, &cfg).with_context(|| format!("pipeline {}", file.display()))?;
        if let Some((dir, storage, cipher)) = &durable {
            p.open_durable(&sql, state.durable_config(dir.join(&name), storage.clone(), cipher.clone()))
                .with_context(|| format!("pipeline {}", file.display()))?;
        }
        pipelines.push((name, p));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = pipelines
            .into_iter()
            .map(|(name, mut p)| {
                let stop = stop.clone();
                let h = scope.spawn(move || p.run_live(&stop).with_context(|| format!("pipeline {name}")));
                h
            })
            .collect();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!("eddyd: {e:#}");
                    stop.store(true, Ordering::SeqCst);
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a pipeline thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

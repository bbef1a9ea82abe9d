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

use eddy_engine::{EngineError, Mode, Pipeline, PipelineConfig};

mod api;
mod config;
mod connectors;
mod control;
mod keys;
mod memory;
mod metrics;
mod restore_cmd;
mod runtime;
mod secret;
mod start_failure;
mod state_cmd;
mod systemd;

use config::{ConfigFile, FleetFragment};

const DEMO_SQL: &str = include_str!("demo.sql");

#[derive(Parser)]
#[command(name = "eddyd", version, about = "Eddy: streaming SQL for edge gateways")]
struct Cli {
    /// Log filter (also EDDY_LOG), e.g. `info` or `eddy_engine=debug`.
    /// (Default: the config's log_level, else `warn`.)
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Limits on a pipeline's state; reaching one stops the pipeline with an error, never a drop.
#[derive(clap::Args, Clone, Copy)]
struct LimitArgs {
    /// Open windows per windowed aggregation.
    #[arg(long, default_value_t = eddy_engine::Limits::default().max_open_windows)]
    max_open_windows: usize,
    /// Groups (keys) per aggregation, summed over open windows; also OVER partitions and sessions.
    #[arg(long, default_value_t = eddy_engine::Limits::default().max_groups)]
    max_groups: usize,
    /// Rows per batch a source hands on (a source's `batch_rows` option overrides it).
    #[arg(long, default_value_t = eddy_engine::Limits::default().batch_rows)]
    batch_rows: usize,
}

impl LimitArgs {
    fn apply(self, cfg: &mut PipelineConfig) {
        cfg.limits.max_open_windows = self.max_open_windows.max(1);
        cfg.limits.max_groups = self.max_groups.max(1);
        cfg.limits.batch_rows = self.batch_rows.clamp(1, 1 << 20);
    }
}

/// Where the state key comes from (`run`, `state check`).
#[derive(clap::Args, Clone, Default)]
struct KeyArgs {
    /// The state key file, mode 0600 (default: the systemd credential `eddy-state-key`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Name of the systemd credential (in $CREDENTIALS_DIRECTORY) holding the key.
    #[arg(long)]
    key_credential: Option<String>,
    /// The state is not encrypted (must be said explicitly).
    #[arg(long)]
    no_encryption: bool,
}

/// `eddyd run` settings; each overrides the config file's (defaults in parentheses).
#[derive(clap::Args, Clone, Default)]
struct RunArgs {
    /// The TOML config (see packaging/eddyd.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A pipeline file; repeat for several (added to the config's).
    #[arg(long)]
    pipeline: Vec<PathBuf>,
    /// Keep state here, each pipeline in a subdirectory named after its file (config: state_dir).
    /// Without one, pipelines run without durable state and sinks are not exactly-once.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Checkpoint at least this often, in ms (10000).
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Group commit: commit the WAL once its oldest pending record is this old, in µs (5000)...
    #[arg(long)]
    wal_commit_delay_us: Option<u64>,
    /// ...or once this many bytes are pending (1 MiB).
    #[arg(long)]
    wal_commit_bytes: Option<usize>,
    /// WAL segment size (64 MiB).
    #[arg(long)]
    wal_segment_bytes: Option<u64>,
    /// Largest WAL record, one source batch (16 MiB).
    #[arg(long)]
    wal_max_record_bytes: Option<usize>,
    /// Checkpoint early once sinks hold this many staged bytes (64 MiB).
    #[arg(long)]
    max_staged_bytes: Option<usize>,
    /// Open windows per windowed aggregation.
    #[arg(long)]
    max_open_windows: Option<usize>,
    /// Groups (keys) per aggregation, summed over open windows; also OVER partitions and sessions.
    #[arg(long)]
    max_groups: Option<usize>,
    /// Rows per batch a source hands on (a source's `batch_rows` option overrides it).
    #[arg(long)]
    batch_rows: Option<usize>,
    /// Cores for pipeline workers, e.g. `0,1` (all available).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Shard threads per pipeline (one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address (off).
    #[arg(long)]
    metrics_listen: Option<String>,
}

impl RunArgs {
    /// The config file (or an empty one), the fleet's config fragment kept in the state dir
    /// over it, and these flags over both.
    fn settings(&self) -> Result<ConfigFile> {
        let c = self.settings_with(&FleetFragment::default())?;
        let fragment = match &c.state_dir {
            Some(dir) => FleetFragment::load(dir)?,
            None => return Ok(c),
        };
        if fragment.is_empty() {
            return Ok(c);
        }
        self.settings_with(&fragment)
    }

    /// The config file with `fragment` laid over it, and these flags over both.
    fn settings_with(&self, fragment: &FleetFragment) -> Result<ConfigFile> {
        let mut c = ConfigFile::load_with(self.config.as_deref(), fragment)?;
        c.pipelines.extend(self.pipeline.iter().cloned());
        c.required_pipelines.clone_from(&self.pipeline);
        fn over<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        over(&mut c.state_dir, &self.state_dir);
        over(&mut c.encryption.key_file, &self.key.key_file);
        over(&mut c.encryption.key_credential, &self.key.key_credential);
        if self.key.no_encryption {
            c.encryption.enabled = Some(false);
        }
        over(&mut c.checkpoint.interval_ms, &self.checkpoint_interval_ms);
        over(&mut c.wal.commit_delay_us, &self.wal_commit_delay_us);
        over(&mut c.wal.commit_bytes, &self.wal_commit_bytes);
        over(&mut c.wal.segment_bytes, &self.wal_segment_bytes);
        over(&mut c.wal.max_record_bytes, &self.wal_max_record_bytes);
        over(&mut c.limits.max_staged_bytes, &self.max_staged_bytes);
        over(&mut c.limits.max_open_windows, &self.max_open_windows);
        over(&mut c.limits.max_groups, &self.max_groups);
        over(&mut c.limits.batch_rows, &self.batch_rows);
        over(&mut c.cores, &self.cores);
        over(&mut c.shards, &self.shards);
        over(&mut c.metrics.listen, &self.metrics_listen);
        Ok(c)
    }
}

#[derive(Subcommand)]
enum StateCmd {
    /// Read and verify every WAL segment, checkpoint and outbox under DIR (a state dir or one
    /// pipeline's), changing nothing. Exit 0: intact; 1: damage found (each named).
    Check {
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Discard one pipeline's state (it starts afresh). Prints what it discards; needs --yes.
    Reset {
        #[arg(long)]
        state_dir: PathBuf,
        /// The pipeline's name (its file name without .sql).
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        yes: bool,
    },
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
        /// Split keyed state over this many shard threads (the result is the same rows; their
        /// order within a step may differ).
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Decode each file source's lines on this many threads (the same rows in the same order
        /// reach the pipeline whatever the count).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=eddy_engine::connector::MAX_DECODE_THREADS as i64))]
        decode_threads: u16,
    },
    /// Validate a pipeline file, or a whole config (`--config`: the file, the key, every
    /// pipeline and its connectors' options), or a pipeline file with a config's defaults (both),
    /// without connecting, reading or writing anything.
    Check {
        pipeline: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run pipelines live until SIGTERM / Ctrl-C (or until all their sources have ended).
    /// SIGHUP reloads the config and the pipeline files.
    Run {
        #[command(flatten)]
        args: Box<RunArgs>,
    },
    /// Inspect or reset durable state: `state check DIR`, `state reset --state-dir DIR --pipeline P`.
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
    /// Rebuild one pipeline's state from a checkpoint backed up at the hub (a replacement
    /// device, or after `eddyd state reset` of damaged state); then `eddyd run` continues it.
    Restore {
        /// Restore from the hub named in the config's [hub] (the only source there is).
        #[arg(long, required = true)]
        from_hub: bool,
        /// The gateway whose backup to restore (its certificate's CN).
        #[arg(long)]
        gateway: String,
        /// The pipeline's name (its file name without .sql).
        #[arg(long)]
        pipeline: String,
        /// A kept checkpoint's sequence number (default: the newest).
        #[arg(long, default_value_t = 0)]
        seq: u64,
        /// The TOML config ([hub] and the state key settings).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to create the pipeline's state (config: state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print a new random state key as a key-file line (`ID:HEX`); append it to rotate keys.
    Keygen {
        /// Key id, 1 or more (0 marks unencrypted files).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        id: u32,
    },
    /// Run the built-in demo: generated plant telemetry, live 10-second statistics. Ctrl-C stops it.
    Demo {
        /// Print the demo's SQL and exit.
        #[arg(long)]
        show_sql: bool,
    },
    /// Print the man page (roff), generated from this command line's definition.
    Man,
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

/// The config `eddyd check` reads: the file, and the fleet's fragment kept in its state dir.
fn config_for_check(path: &Path) -> Result<ConfigFile> {
    let cfg = ConfigFile::load(path)?;
    if let Some(dir) = cfg.state_dir.clone() {
        let fragment = FleetFragment::load(&dir)?;
        if !fragment.is_empty() {
            println!("  with the fleet's config fragment {}", FleetFragment::path(&dir).display());
            return ConfigFile::load_with(Some(path), &fragment);
        }
    }
    Ok(cfg)
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    systemd::install_signal_handlers(false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || loop {
        if systemd::stop_requested() {
            s.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    Ok(stop)
}

/// Logs go to the journal (structured fields) when stderr is the journal, else to stderr.
fn init_logging(filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
    if systemd::stderr_is_journal() {
        if let Ok(j) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(j.with_syslog_identifier("eddyd".into())).init();
            return;
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn main() {
    let cli = Cli::parse();
    let from_config = match &cli.command {
        Command::Run { args } => args.config.as_ref().and_then(|p| ConfigFile::load(p).ok()).and_then(|c| c.log_level),
        _ => None,
    };
    let filter = std::env::var("EDDY_LOG").ok().or(cli.log.clone()).or(from_config).unwrap_or_else(|| "warn".into());
    init_logging(&filter);
    if let Err(e) = run(cli.command) {
        eprintln!("eddyd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Replay { pipeline, inputs, outputs, limits, shards, decode_threads } => {
            let (sql, dir) = read_pipeline(&pipeline)?;
            let cwd = std::env::current_dir()?;
            let mut cfg = PipelineConfig::new(dir, Mode::Replay);
            limits.apply(&mut cfg);
            cfg.shards = shards.max(1);
            cfg.decode_threads = decode_threads.into();
            cfg.inputs = parse_pairs("--input", &inputs, &cwd)?;
            cfg.outputs = parse_pairs("--output", &outputs, &cwd)?;
            // MQTT sources and sinks validate their options; replay reads them from --input files.
            let name = config::pipeline_name(&pipeline);
            cfg.connectors = Some(Arc::new(connectors::Provider::offline(&name)));
            let mut p = Pipeline::plan(&sql, &cfg)?;
            p.run_to_end()?;
            for (name, s) in p.source_stats() {
                tracing::info!(source = %name, accepted = s.accepted, late = s.late, errors = s.errors, "replayed");
            }
            Ok(())
        }
        Command::Check { pipeline: None, config: Some(config) } => {
            let cfg = config_for_check(&config)?;
            for line in runtime::check(&cfg)? {
                println!("  {line}");
            }
            println!("{}: OK", config.display());
            Ok(())
        }
        Command::Check { pipeline: None, config: None } => {
            bail!("eddyd check: give a pipeline file, --config FILE, or both (the pipeline with the config's defaults)")
        }
        Command::Check { pipeline: Some(pipeline), config } => {
            let cfg = match &config {
                Some(c) => config_for_check(c)?,
                None => ConfigFile::default(),
            };
            let name = config::pipeline_name(&pipeline);
            let p = runtime::check_pipeline(&cfg, &name, &pipeline, &Default::default()).map_err(|e| {
                // A setting the gateway's config would give: say how to check with it.
                let unconfigured =
                    e.chain().any(|c| matches!(c.downcast_ref::<EngineError>(), Some(EngineError::Unconfigured { .. })));
                let hint = config.is_none() && unconfigured;
                if hint {
                    anyhow!(
                        "{e:#}\nhint: checked without a config; `eddyd check --config FILE {}` takes the config's defaults",
                        pipeline.display()
                    )
                } else {
                    e
                }
            })?;
            let text = runtime::plan_text(p.summary());
            let mut lines = text.lines();
            println!("{}: OK — {}", pipeline.display(), lines.next().unwrap_or_default());
            for l in lines {
                println!("  {l}");
            }
            Ok(())
        }
        Command::Run { args } => {
            let cfg = args.settings()?;
            systemd::install_signal_handlers(true)?;
            let reload_args = args.clone();
            runtime::Runtime::new(
                cfg,
                Box::new(move |fragment| match fragment {
                    Some(f) => reload_args.settings_with(f),
                    None => reload_args.settings(),
                }),
            )?
            .run()
        }
        Command::State { cmd: StateCmd::Check { dir, key } } => {
            let args = RunArgs { key, ..RunArgs::default() };
            let cipher = runtime::load_cipher(&args.settings()?)?;
            let outcome = state_cmd::check(&dir, cipher)?;
            if outcome.damaged > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::State { cmd: StateCmd::Reset { state_dir, pipeline, yes } } => {
            state_cmd::reset(&state_dir, &pipeline, yes)
        }
        Command::Restore { from_hub: _, gateway, pipeline, seq, config, state_dir, key } => {
            let cfg = RunArgs { config, state_dir, key, ..RunArgs::default() }.settings()?;
            connectors::install_tls_provider();
            restore_cmd::restore(&cfg, &restore_cmd::RestoreRequest { gateway: &gateway, pipeline: &pipeline, seq })
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
            Ok(())
        }
        Command::Keygen { id } => {
            println!("{}", keys::generate_key_line(id)?);
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

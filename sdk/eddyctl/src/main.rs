//! `eddyctl`: manage an eddyd over its management API, on the local socket or over mutual TLS.
//! Human tables by default, `-o json` for scripts. This is the binary's edge: every failure is
//! one message on stderr and an exit code that says what kind of failure it was.

mod fleet;
mod profile;
mod render;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use eddy_client::{v1, Client, ClientError, Code, Timeouts};

/// Exit codes (documented in `eddyctl --help` and docs/management.md).
mod exit {
    pub const FAILED: i32 = 1;
    pub const UNREACHABLE: i32 = 3;
    pub const DENIED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const REFUSED: i32 = 6;
}

#[derive(Parser)]
#[command(
    name = "eddyctl",
    version,
    about = "Manage an eddyd: status, pipelines, deploys, checkpoints, audit",
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage, 3 eddyd unreachable, 4 permission denied, 5 not found, 6 refused (invalid SQL, or not possible as things stand)."
)]
struct Cli {
    /// The daemon's TCP address (host:port), with mutual TLS. Default: the local socket.
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_HOST")]
    host: Option<String>,
    /// The local socket.
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_SOCKET")]
    socket: Option<PathBuf>,
    /// CA certificate that signed the daemon's certificate (PEM).
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_CA")]
    ca: Option<PathBuf>,
    /// This client's certificate (PEM).
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_CERT")]
    cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_KEY")]
    key: Option<PathBuf>,
    /// The name the daemon's certificate must carry (default: the host).
    #[arg(long, global = true, help_heading = "Global options")]
    server_name: Option<String>,
    /// The fleet's hub (host:port) for `fleet` commands, with mutual TLS (--ca signs the hub's
    /// certificate; --cert must be an operator's).
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_HUB")]
    hub: Option<String>,
    /// A profile from ~/.config/eddy/eddyctl.toml.
    #[arg(long, global = true, help_heading = "Global options", env = "EDDY_PROFILE")]
    profile: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, help_heading = "Global options", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds to wait for a reply (deploys wait for the pipeline to start).
    #[arg(long, global = true, help_heading = "Global options", default_value_t = 120)]
    timeout_s: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon and every pipeline at a glance.
    Status,
    /// The pipelines, one line each.
    #[command(alias = "ls")]
    Pipelines,
    /// One pipeline: status, plan and SQL.
    Show { pipeline: String },
    /// Validate a pipeline file on the daemon (its config's defaults apply); nothing starts.
    Check {
        file: PathBuf,
        /// The name it would run under (default: the file name without .sql).
        #[arg(long)]
        name: Option<String>,
    },
    /// Create or replace a pipeline from a SQL file; waits until it runs.
    Deploy {
        file: PathBuf,
        /// Pipeline name (default: the file name without .sql).
        #[arg(long)]
        name: Option<String>,
        /// If the new query cannot continue from the running version's state, drop that state.
        #[arg(long)]
        reset_state: bool,
    },
    /// Stop a pipeline after a final checkpoint, keeping its state.
    Pause { pipeline: String },
    /// Start a paused pipeline from its checkpoint.
    Resume { pipeline: String },
    /// Remove a deployed pipeline; say what happens to its state.
    #[command(group(clap::ArgGroup::new("state").required(true).args(["keep_state", "drop_state"])))]
    Delete {
        pipeline: String,
        /// Keep the state (a later deploy of this name continues from it).
        #[arg(long)]
        keep_state: bool,
        /// Delete the state for good.
        #[arg(long)]
        drop_state: bool,
    },
    /// Take a checkpoint now and wait until it is durable.
    Checkpoint { pipeline: String },
    /// Print a sink's output live, one JSON object per line (rows as produced); with --source, a
    /// source's accepted rows; with --late or --errors, the source's late or undecodable rows.
    Tail {
        pipeline: String,
        /// The sink (or, with --source, --late or --errors, the source).
        name: String,
        /// NAME is a source: its accepted rows.
        #[arg(long)]
        source: bool,
        /// NAME is a source: its late rows.
        #[arg(long, conflicts_with = "errors")]
        late: bool,
        /// NAME is a source: its rows that could not be decoded.
        #[arg(long)]
        errors: bool,
        /// Stop after this many rows.
        #[arg(long, default_value_t = 100)]
        rows: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// A one-off SELECT over a materialized view's current rows: one row per key of an updating
    /// view, the newest window of a windowed aggregation, the newest rows of any other view.
    Query {
        /// SELECT ... FROM <view> [WHERE ...] [GROUP BY ...] [ORDER BY column] [LIMIT n].
        sql: String,
        /// The pipeline holding the view (needed only when several have a view of that name).
        #[arg(long, short = 'p')]
        pipeline: Option<String>,
        /// Rows to return at most (the daemon caps it at api.query_max_rows).
        #[arg(long, default_value_t = 1000)]
        rows: u32,
        /// Write the answer to FILE as an Arrow IPC stream ("-": standard output) instead.
        #[arg(long, value_name = "FILE")]
        arrow: Option<PathBuf>,
    },
    /// Replace a pipeline's state with a checkpoint backed up at the hub, and run it from there
    /// (the pipeline is paused meanwhile; rows pushed to the hub after the backup are retracted
    /// and computed again). Its SQL must be the one the backup was taken with.
    Restore {
        pipeline: String,
        /// The gateway whose backup to restore (the hub lets a gateway read only its own).
        #[arg(long)]
        gateway: String,
        /// The backup's checkpoint number (default: the newest the hub keeps).
        #[arg(long, default_value_t = 0)]
        checkpoint: u64,
    },
    /// Re-read the config and pipeline files (what SIGHUP does).
    Reload,
    /// The effective config, secrets masked.
    Config,
    /// The audit log, newest last, with the result of verifying its hash chain.
    Audit {
        /// Entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Who the daemon takes you for, and your role.
    Whoami,
    /// The fleet, through the hub (--hub): groups' desired pipelines and what gateways run.
    Fleet {
        #[command(subcommand)]
        cmd: fleet::FleetCmd,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

fn main() {
    // A reader that goes away (`eddyctl show x | head`) ends eddyctl quietly, as it does any
    // Unix tool, instead of a panic on the next print.
    // SAFETY: called first in main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = match e.downcast_ref::<ClientError>() {
                Some(ClientError::Connect { .. }) => exit::UNREACHABLE,
                Some(c) => match c.code() {
                    Code::PermissionDenied | Code::Unauthenticated => exit::DENIED,
                    Code::NotFound => exit::NOT_FOUND,
                    Code::InvalidArgument | Code::FailedPrecondition => exit::REFUSED,
                    Code::Unavailable => exit::UNREACHABLE,
                    _ => exit::FAILED,
                },
                None => match e.downcast_ref::<ReplyFailure>() {
                    Some(ReplyFailure::Refused(_)) => exit::REFUSED,
                    Some(ReplyFailure::NotFound(_)) => exit::NOT_FOUND,
                    None => exit::FAILED,
                },
            };
            eprintln!("eddyctl: {e:#}");
            if let Some(ClientError::Connect { target, .. }) = e.downcast_ref::<ClientError>() {
                if target.starts_with("unix:") {
                    eprintln!(
                        "eddyctl: is eddyd running with its API on that socket? ([api] socket in its config; \
                         --socket or EDDY_SOCKET name another, --host a remote one)"
                    );
                }
            }
            code
        }
    };
    std::process::exit(code);
}

/// A failure found in a reply rather than in an error status; its exit code says which.
#[derive(Debug)]
enum ReplyFailure {
    /// Validation failed, or the daemon met problems (exit code 6).
    Refused(String),
    /// Something the command names that the reply lacks (exit code 5).
    NotFound(String),
}

impl std::fmt::Display for ReplyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyFailure::Refused(m) | ReplyFailure::NotFound(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReplyFailure {}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "eddyctl", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cli))
}

fn connection(cli: &Cli) -> Result<eddy_client::Target> {
    let mut p = profile::load(cli.profile.as_deref())?;
    if cli.host.is_some() {
        p.host = cli.host.clone();
    }
    if cli.socket.is_some() {
        p.socket = cli.socket.clone();
        p.host = None;
    }
    tls_flags(&mut p, cli);
    profile::target(&p)
}

/// The TLS flags over the profile's.
fn tls_flags(p: &mut profile::Profile, cli: &Cli) {
    for (dst, src) in [(&mut p.ca, &cli.ca), (&mut p.cert, &cli.cert), (&mut p.key, &cli.key)] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    if cli.server_name.is_some() {
        p.server_name.clone_from(&cli.server_name);
    }
}

/// A query's rows as JSON values (the daemon sends each row as one JSON object).
fn query_rows(r: &v1::QueryReply) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    r.rows.iter().map(|row| serde_json::from_str(row).context("a row that is not a JSON object")).collect()
}

/// `-o json`: the reply with its rows as objects.
fn query_json(r: &v1::QueryReply) -> Result<serde_json::Value> {
    let columns: Vec<serde_json::Value> =
        r.columns.iter().map(|c| serde_json::json!({ "name": c.name, "type": c.r#type })).collect();
    Ok(serde_json::json!({
        "pipeline": r.pipeline,
        "columns": columns,
        "rows": query_rows(r)?,
        "row_count": r.row_count,
        "truncated": r.truncated,
    }))
}

/// Rows as an aligned table, columns in the answer's order, then a count line.
fn query_table(r: &v1::QueryReply) -> Result<String> {
    let header: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    let rows: Vec<Vec<String>> = query_rows(r)?
        .iter()
        .map(|row| {
            r.columns
                .iter()
                .map(|c| match row.get(&c.name) {
                    None | Some(serde_json::Value::Null) => "NULL".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                })
                .collect()
        })
        .collect();
    let took = render::duration_us(r.elapsed_us);
    let count = if r.row_count == 1 { "1 row".to_string() } else { format!("{} rows", r.row_count) };
    Ok(format!("{}\n({count}, {took})", render::table(&header, &rows)))
}

fn write_arrow(file: &Path, ipc: &[u8]) -> Result<()> {
    use std::io::Write;
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out.write_all(ipc).and_then(|()| out.flush()).context("standard output");
    }
    std::fs::write(file, ipc).with_context(|| format!("cannot write {}", file.display()))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn read_sql(file: &PathBuf, name: &Option<String>) -> Result<(String, String)> {
    let sql = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = name.clone().unwrap_or_else(|| {
        file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into())
    });
    Ok((sql, name))
}

/// `eddyctl fleet …`: talks to the hub, not to a daemon.
async fn run_fleet(cli: &Cli, cmd: &fleet::FleetCmd) -> Result<()> {
    let mut p = profile::load(cli.profile.as_deref())?;
    p.host = Some(cli.hub.clone().ok_or_else(|| anyhow::anyhow!("fleet commands need --hub HOST:PORT (or EDDY_HUB)"))?);
    p.plaintext = false;
    tls_flags(&mut p, cli);
    let target = profile::target(&p)?;
    let timeouts = Timeouts { request: Duration::from_secs(cli.timeout_s.max(1)), ..Timeouts::default() };
    let hub = eddy_client::HubClient::connect(&target, timeouts).await?;
    fleet::run(&hub, cmd, cli.output == Output::Json).await
}

async fn run_async(cli: Cli) -> Result<()> {
    if let Cmd::Fleet { cmd } = &cli.command {
        return run_fleet(&cli, cmd).await;
    }
    let target = connection(&cli)?;
    let timeouts = Timeouts { request: Duration::from_secs(cli.timeout_s.max(1)), ..Timeouts::default() };
    let c = Client::connect(&target, timeouts).await?;
    let json = cli.output == Output::Json;
    let colour = render::colour();
    match cli.command {
        Cmd::Status => {
            let s = c.status(v1::StatusRequest {}).await?;
            if json {
                return print_json(&s);
            }
            println!(
                "eddyd {} on {}, up {}, {}",
                s.version,
                s.host,
                render::duration_ms(s.uptime_ms),
                render::readiness(s.ready, s.pipelines.iter().map(|p| p.state.as_str()))
            );
            if s.state_dir.is_empty() {
                println!("state: none (pipelines run without durable state)");
            } else {
                let keys = if s.key_ids.is_empty() {
                    "NOT encrypted".to_string()
                } else {
                    format!(
                        "encrypted, key id {}",
                        s.key_ids.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
                    )
                };
                println!("state: {} ({}, {keys})", s.state_dir, render::bytes(s.state_dir_bytes));
            }
            if let Some(f) = &s.fleet {
                println!("{}", fleet::link_line(f));
            }
            println!();
            print_pipelines(&s.pipelines, colour);
            for p in &s.pipelines {
                if !p.error.is_empty() {
                    println!("\n{}: {}", p.name, p.error);
                }
            }
            for (p, source) in render::links_down(&s.pipelines) {
                println!("\n{p}: source {source} cannot reach its broker; eddyd retries (input waits at the broker)");
            }
        }
        Cmd::Pipelines => {
            let r = c.list_pipelines(v1::ListPipelinesRequest {}).await?;
            if json {
                return print_json(&r);
            }
            print_pipelines(&r.pipelines, colour);
        }
        Cmd::Show { pipeline } => {
            let d = c.get_pipeline(v1::PipelineRef { name: pipeline }).await?;
            if json {
                return print_json(&d);
            }
            show(&d, colour);
        }
        Cmd::Check { file, name } => {
            let (sql, name) = read_sql(&file, &name)?;
            let r = c.validate(v1::ValidateRequest { sql, name }).await?;
            if json {
                print_json(&r)?;
            } else if r.ok {
                println!("{}: OK — {}", file.display(), r.plan.replace('\n', "\n  "));
            }
            if !r.ok {
                return Err(ReplyFailure::Refused(format!("{}: {}", file.display(), r.error)).into());
            }
        }
        Cmd::Deploy { file, name, reset_state } => {
            let (sql, name) = read_sql(&file, &name)?;
            let progress = Progress::start(format!("deploying {name}: validating, then waiting for it to run"));
            let r = c.deploy(v1::DeployRequest { name, sql, reset_state }).await;
            progress.stop();
            let r = r?;
            if json {
                return print_json(&r);
            }
            println!("{}", r.message);
        }
        Cmd::Pause { pipeline } => action(json, c.pause(v1::PipelineRef { name: pipeline }).await?)?,
        Cmd::Resume { pipeline } => action(json, c.resume(v1::PipelineRef { name: pipeline }).await?)?,
        Cmd::Delete { pipeline, drop_state, .. } => {
            action(json, c.delete(v1::DeleteRequest { name: pipeline, drop_state }).await?)?
        }
        Cmd::Checkpoint { pipeline } => {
            let progress = Progress::start(format!("checkpointing {pipeline}"));
            let r = c.checkpoint(v1::PipelineRef { name: pipeline }).await;
            progress.stop();
            action(json, r?)?
        }
        Cmd::Tail { pipeline, name, source, late, errors, rows, seconds } => {
            use std::io::Write;
            let (sink, source, source_rows) = match (source, late, errors) {
                (_, true, _) => (String::new(), name, "late".to_string()),
                (_, _, true) => (String::new(), name, "errors".to_string()),
                (true, ..) => (String::new(), name, "accepted".to_string()),
                (false, ..) => (name, String::new(), String::new()),
            };
            let req = v1::TapRequest { pipeline, sink, max_rows: rows, max_seconds: seconds, source, source_rows };
            let mut stream = c.tap(req).await?;
            let mut dropped = 0;
            let mut out = std::io::stdout().lock();
            'events: while let Some(ev) = c.next_tap_event(&mut stream).await? {
                dropped = ev.dropped_rows;
                for r in &ev.rows {
                    // A reader that went away (`| head`) ends the tail, not an error.
                    match writeln!(out, "{r}").and_then(|()| out.flush()) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break 'events,
                        r => r?,
                    }
                }
            }
            if dropped > 0 {
                eprintln!(
                    "eddyctl: {dropped} row(s) not shown: this viewer fell behind (the pipeline never waits for it)"
                );
            }
        }
        Cmd::Query { sql, pipeline, rows, arrow } => {
            let format = if arrow.is_some() { "arrow" } else { "json" };
            let req =
                v1::QueryRequest { sql, pipeline: pipeline.unwrap_or_default(), format: format.into(), max_rows: rows };
            let r = c.query(req).await?;
            if r.truncated {
                eprintln!("eddyctl: more rows than shown (raise --rows, or narrow the query)");
            }
            match arrow {
                Some(file) => write_arrow(&file, &r.arrow_ipc)?,
                None if json => print_json(&query_json(&r)?)?,
                None => println!("{}", query_table(&r)?),
            }
        }
        Cmd::Restore { pipeline, gateway, checkpoint } => {
            let progress = Progress::start(format!("restoring {pipeline} from the hub"));
            let r = c.restore(v1::RestoreRequest { pipeline, gateway, checkpoint_seq: checkpoint }).await;
            progress.stop();
            let r = r?;
            if json {
                return print_json(&r);
            }
            for step in &r.steps {
                println!("{step}");
            }
        }
        Cmd::Reload => {
            let r = c.reload(v1::ReloadRequest {}).await?;
            if json {
                print_json(&r)?;
            } else if r.problems.is_empty() {
                println!("reloaded");
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
            }
            if !r.problems.is_empty() {
                return Err(ReplyFailure::Refused(format!("the reload met {} problem(s)", r.problems.len())).into());
            }
        }
        Cmd::Config => {
            let r = c.get_config(v1::GetConfigRequest {}).await?;
            if json {
                return print_json(&r);
            }
            print!("{}", r.toml);
        }
        Cmd::Audit { limit } => {
            let r = c.read_audit(v1::ReadAuditRequest { limit }).await?;
            if json {
                print_json(&r)?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            render::utc(e.time_ms),
                            e.principal.clone(),
                            e.peer.clone(),
                            e.method.clone(),
                            e.pipeline.clone(),
                            e.outcome.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    render::table(&["SEQ", "TIME (UTC)", "PRINCIPAL", "PEER", "METHOD", "PIPELINE", "OUTCOME"], &rows)
                );
                println!();
                if r.chain_ok {
                    println!("chain verified over all {} entries", r.total);
                } else {
                    println!("CHAIN BROKEN: {}", r.chain_error);
                }
            }
            if !r.chain_ok {
                return Err(anyhow!("the audit log failed verification: {}", r.chain_error));
            }
        }
        Cmd::Whoami => {
            let r = c.who_am_i(v1::WhoAmIRequest {}).await?;
            if json {
                return print_json(&r);
            }
            let scope = if r.pipelines.is_empty() { "all pipelines".into() } else { r.pipelines.join(", ") };
            println!("{} ({}) is {} on {scope}", r.principal, r.peer, r.role);
        }
        Cmd::Completions { .. } | Cmd::Man | Cmd::Fleet { .. } => {}
    }
    Ok(())
}

fn action(json: bool, r: v1::ActionReply) -> Result<()> {
    if json {
        print_json(&r)
    } else {
        println!("{}", r.message);
        Ok(())
    }
}

fn print_pipelines(ps: &[v1::PipelineStatus], colour: bool) {
    if ps.is_empty() {
        println!("no pipelines");
        return;
    }
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            let rows_in: u64 = p.sources.iter().map(|s| s.rows).sum();
            let rows_out: u64 = p.sinks.iter().map(|s| s.rows).sum();
            let lag = p.sources.iter().filter_map(|s| s.lag_ms).max();
            vec![
                p.name.clone(),
                render::state(&p.state, colour),
                render::count(rows_in),
                render::count(rows_out),
                lag.map_or("-".into(), |l| render::duration_ms(l.max(0) as u64)),
                if p.checkpoints == 0 && p.checkpoint_age_ms.is_none() {
                    "-".into()
                } else {
                    render::ago(p.checkpoint_age_ms)
                },
                p.shards.to_string(),
                p.origin.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["PIPELINE", "STATE", "ROWS IN", "ROWS OUT", "LAG", "CHECKPOINT", "SHARDS", "FROM"], &rows)
    );
}

fn show(d: &v1::PipelineDetail, colour: bool) {
    let Some(p) = &d.status else { return };
    println!("pipeline {}: {}  ({})", p.name, render::state(&p.state, colour), p.origin);
    if !p.error.is_empty() {
        println!("error: {}", p.error);
    }
    println!("sql sha256: {}", p.sql_sha256);
    println!(
        "checkpoint: {} ({} this run), state {}",
        render::ago(p.checkpoint_age_ms),
        p.checkpoints,
        render::bytes(p.state_bytes)
    );
    if let Some(b) = &p.backup {
        println!("backup: {}", render::backup(b));
    }
    if !d.plan.is_empty() {
        println!("plan: {}", d.plan.replace('\n', "\n  "));
    }
    if !p.sources.is_empty() {
        let rows: Vec<Vec<String>> = p
            .sources
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    render::count(s.rows),
                    render::count(s.late),
                    render::count(s.errors),
                    s.watermark_ms.map_or("-".into(), render::utc),
                    s.lag_ms.map_or("-".into(), |l| render::duration_ms(l.max(0) as u64)),
                    s.connected.map_or("-".into(), |c| if c { "up".into() } else { "DOWN".into() }),
                    s.queued.to_string(),
                    render::or_dash(&s.connected_as),
                ]
            })
            .collect();
        println!();
        println!(
            "{}",
            render::table(
                &["SOURCE", "ROWS", "LATE", "ERRORS", "WATERMARK (UTC)", "LAG", "LINK", "QUEUED", "CONNECTED AS"],
                &rows
            )
        );
    }
    if !p.sinks.is_empty() {
        let rows: Vec<Vec<String>> = p
            .sinks
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    render::count(s.rows),
                    render::count(s.retractions),
                    render::count(s.backlog_messages),
                    render::bytes(s.backlog_bytes),
                    if s.backlog_oldest_age_ms > 0 { render::duration_ms(s.backlog_oldest_age_ms) } else { "-".into() },
                    render::or_dash(&s.connected_as),
                ]
            })
            .collect();
        println!();
        println!(
            "{}",
            render::table(
                &["SINK", "ROWS", "RETRACTIONS", "BACKLOG", "BACKLOG BYTES", "OLDEST", "CONNECTED AS"],
                &rows
            )
        );
    }
    println!("\n{}", d.sql.trim_end());
}

/// A "working…" line on stderr while a long call runs (only on a terminal).
struct Progress {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Progress {
    fn start(what: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            loop {
                eprint!("\r\x1b[2K{what} … {} s", t0.elapsed().as_secs());
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        Progress { stop: Some(tx) }
    }

    fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
            eprint!("\r\x1b[2K");
        }
    }
}

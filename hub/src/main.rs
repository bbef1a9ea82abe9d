//! `eddy-hub`: the central service of an Eddy fleet (docs/hub.md). Gateways push their `hub`
//! sinks' rows to it over gRPC with mutual TLS; it stores each batch once, as a Parquet object in
//! S3-compatible object storage. Stateless: every hub behind a load balancer serves the same
//! bucket. Owns the process (config, TLS, serving, shutdown); depends on `eddy-proto`, never on
//! the engine.

mod checkpoints;
mod config;
mod fleet;
mod identity;
mod layout;
mod parquet_batch;
mod row_retention;
mod service;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use eddy_proto::v1::hub_server::HubServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Parser)]
#[command(name = "eddy-hub", version, about = "The central service of an Eddy fleet")]
struct Cli {
    /// The configuration file (docs/hub.md).
    #[arg(long, short, global = true, default_value = "/etc/eddy-hub/hub.toml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Serve gateways (the default).
    Serve,
    /// Check the configuration and the TLS files, then exit.
    Check,
    /// List the stored batches: key, gateway, rows, bytes (read from each object's footer).
    Ls {
        /// Only this stream's batches.
        #[arg(long)]
        stream: Option<String>,
        /// Only this gateway's batches.
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Delete the batches of row partitions past `[rows] keep_days` now (a serving hub does it
    /// every `[rows] sweep_every_s`), listing each partition.
    Expire {
        /// Days kept before today, instead of `[rows] keep_days`.
        #[arg(long)]
        keep_days: Option<u32>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the man page (roff).
    Man,
    /// List a gateway's kept checkpoint backups: pipeline, sequence number, times, bytes.
    Checkpoints {
        #[arg(long)]
        gateway: String,
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDDY_HUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(Cmd::Man) = cli.cmd {
        clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
        return Ok(());
    }
    let cfg = config::HubConfig::load(&cli.config)?;
    let bucket = Arc::new(store::Bucket::open(&cfg.store)?);
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            let tls = tls_config(&cfg.tls)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            rt.block_on(serve(cfg, tls, bucket))
        }
        Cmd::Check => {
            tls_config(&cfg.tls)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Cmd::Ls { stream, gateway } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let batches = rt.block_on(bucket.list_batches(stream.as_deref(), gateway.as_deref()))?;
            let w = batches.iter().map(|b| b.key.len()).max().unwrap_or(0).max(3);
            println!("{:<w$} {:>10} {:>12}", "KEY", "ROWS", "BYTES");
            let (mut rows, mut bytes) = (0u64, 0u64);
            for b in &batches {
                println!("{:<w$} {:>10} {:>12}", b.key, b.rows, b.bytes);
                rows += b.rows;
                bytes += b.bytes;
            }
            println!("{} batches, {rows} rows, {bytes} bytes", batches.len());
            Ok(())
        }
        Cmd::Man => Ok(()),
        Cmd::Expire { keep_days, dry_run } => {
            let keep_days = keep_days.unwrap_or(cfg.rows.keep_days);
            if keep_days == 0 {
                bail!("rows are kept forever ([rows] keep_days = 0); set it or pass --keep-days");
            }
            let first_kept = row_retention::first_kept_date(chrono::Utc::now().date_naive(), keep_days);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let e = rt.block_on(bucket.expire_rows(&first_kept, dry_run))?;
            for p in &e.partitions {
                println!("{p}");
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!(
                "{verb} {} batches ({} bytes) in {} partitions dated before {first_kept}",
                e.batches,
                e.bytes,
                e.partitions.len()
            );
            Ok(())
        }
        Cmd::Checkpoints { gateway, pipeline } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let list = rt.block_on(bucket.list_checkpoints(&gateway, pipeline.as_deref()))?;
            println!(
                "{:<24} {:>10} {:>24} {:>24} {:>12}  {:<8}",
                "PIPELINE", "SEQ", "CREATED", "STORED", "BYTES", "STATE"
            );
            for c in &list {
                // The state's identity, shortened: where it changes, another state began.
                let state = if c.state_id.is_empty() {
                    "-".to_string()
                } else {
                    checkpoints::hex(&c.state_id[..c.state_id.len().min(4)])
                };
                println!(
                    "{:<24} {:>10} {:>24} {:>24} {:>12}  {:<8}",
                    c.pipeline,
                    c.seq,
                    rfc3339_ms(c.created_ms),
                    rfc3339_ms(c.stored_ms),
                    c.bytes,
                    state
                );
            }
            println!("{} checkpoints", list.len());
            Ok(())
        }
    }
}

fn tls_config(t: &config::TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &PathBuf, what: &str| std::fs::read(p).with_context(|| format!("tls.{what} {}", p.display()));
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&t.cert, "cert")?, read(&t.key, "key")?))
        .client_ca_root(Certificate::from_pem(read(&t.client_ca, "client_ca")?)))
}

async fn serve(cfg: config::HubConfig, tls: ServerTlsConfig, bucket: Arc<store::Bucket>) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(&cfg.listen).await.with_context(|| format!("listen {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let max_push_bytes = cfg.limits.max_push_bytes;
    let svc = HubServer::new(service::HubService::new(
        bucket.clone(),
        cfg.limits,
        &cfg.backup,
        cfg.access.operators.clone(),
        std::time::Duration::from_millis(cfg.fleet.poll_ms.max(100)),
    ))
    .max_decoding_message_size(max_push_bytes);
    // Printed on stdout for whoever started us (tests bind port 0).
    println!("eddy-hub listening on {addr}");
    tracing::info!(%addr, store = %bucket.url, prefix = %bucket.prefix, "eddy-hub serving");
    if cfg.rows.keep_days > 0 {
        let every = std::time::Duration::from_secs(cfg.rows.sweep_every_s);
        tokio::spawn(row_retention::sweep_forever(bucket.clone(), cfg.rows.keep_days, every));
    }
    Server::builder()
        .tls_config(tls)
        .map_err(|e| anyhow!("tls: {e}"))?
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown())
        .await
        .map_err(|e| anyhow!("serve: {e}"))?;
    tracing::info!("eddy-hub stopped");
    Ok(())
}

/// SIGTERM or SIGINT: stop accepting, finish the calls in progress.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop eddy-hub with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

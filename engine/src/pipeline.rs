//! A pipeline: the statements of one SQL file planned into one dataflow graph, with its sources'
//! readers and its sinks, and the loops that run it (replay: read every source to its end, then close
//! every window; live: poll sources until stopped).
//!
//! Sources apply the spec's lateness rule row by row, in arrival order: before row i the watermark is
//! `max(accepted ts before i) - delay`, and a row below it is late. Batches never change the result.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};

use crate::connector::datagen::{Datagen, DatagenConfig};
use crate::connector::file::{FileSource, DEFAULT_MAX_LINE};
use crate::connector::nexmark::{Nexmark, NexmarkConfig, Stream as NexmarkStream};
use crate::connector::sink::{Sink, SinkMode, SinkTarget};
use crate::connector::table::{TableRuntime, TableSpec};
use crate::connector::tap::{SourceRows, SourceTaps, TapPoint};
use crate::connector::{
    self, ConnectorProvider, ConnectorSpec, FoldPosition, Poll, SinkStateDir, SourceReader, Wakeup,
};
use crate::error::{EngineError, Result, SqlPos};
use crate::format::decode::{errors_schema, DecodeColumn, RowDecoder};
use crate::format::Format;
use crate::ops::graph::{Graph, NodeId, Passthrough};
use crate::ops::lookup_join::TableHandle;
use crate::ops::{Chunk, Limits};
use crate::plan::{Planner, ShardNeed, Stream};
use crate::query::{LiveView, ResultTable, Shape};
use crate::sql::catalog::{Catalog, RelationKind};
use crate::sql::ddl::{self, ObjectKind, Options, PositionedStatement, RelationDef, SinkInput, Statement};
use crate::sql::tvf::{errors_name, late_name};
use crate::time::{MAX_TS, MIN_TS};

mod control;
mod durable;
mod shards;
pub mod splits;
pub use control::LiveControl;
use durable::LoggedSchemas;
pub use durable::{DurableConfig, DurableStats};
pub use shards::ShardThreadHook;
use shards::{Capture, Route, ShardGraph, Shards, SourceNodes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bounded input; event time goes to +inf at the end.
    Replay,
    /// Sources are polled until stopped; processing time follows the wall clock.
    Live,
}

/// How to build a pipeline.
#[derive(Clone)]
pub struct PipelineConfig {
    /// Relative paths resolve against this directory (the SQL file's).
    pub base_dir: PathBuf,
    pub mode: Mode,
    /// `--input SOURCE=FILE`: read this JSON-lines file instead of the source's connector.
    pub inputs: HashMap<String, PathBuf>,
    /// `--output SINK=FILE`: write this JSON-lines file instead of the sink's connector.
    pub outputs: HashMap<String, PathBuf>,
    pub limits: Limits,
    /// How long the live loop sleeps when no source has anything; each further idle round waits
    /// twice as long, up to `idle_sleep_max`. Sources with threads of their own (MQTT, Kafka)
    /// wake it at once; timers (checkpoints, processing time, idle timeouts, followed files) are
    /// seen at most `idle_sleep_max` late while nothing flows.
    pub idle_sleep: Duration,
    pub idle_sleep_max: Duration,
    /// File sinks stage output and publish it with checkpoints (durable pipelines).
    pub exactly_once: bool,
    /// Connectors provided from outside the engine (the daemon's MQTT).
    pub connectors: Option<Arc<dyn ConnectorProvider>>,
    /// Durable pipelines: where provided sinks keep their outboxes (one subdirectory per sink).
    pub sink_state: Option<SinkStateDir>,
    /// Worker threads that split the pipeline's keyed state by key hash (1: the pipeline's own
    /// thread does everything). A pipeline whose stateful operators are not all keyed by source
    /// columns runs on one, and says why in its [`Summary`].
    pub shards: usize,
    /// Steps sent to the shards and not yet done, at most (the bound of each shard's queue).
    pub shard_queue: usize,
    /// Called on each shard thread as it starts (the daemon pins it to a core).
    pub on_shard_thread: Option<ShardThreadHook>,
    /// Bytes of current rows kept per materialized view for on-demand queries (0: none kept).
    /// A sharded pipeline splits them evenly over its shards.
    pub view_bytes: usize,
    /// Threads that decode each file source's lines (1: the pipeline's own thread). Rows reach
    /// the lateness rule in file order whatever the count, so results do not change with it.
    pub decode_threads: usize,
}

impl std::fmt::Debug for PipelineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineConfig")
            .field("base_dir", &self.base_dir)
            .field("mode", &self.mode)
            .field("exactly_once", &self.exactly_once)
            .field("sink_state", &self.sink_state.as_ref().map(|s| &s.dir))
            .finish_non_exhaustive()
    }
}

impl PipelineConfig {
    pub fn new(base_dir: impl Into<PathBuf>, mode: Mode) -> Self {
        PipelineConfig {
            base_dir: base_dir.into(),
            mode,
            inputs: HashMap::new(),
            outputs: HashMap::new(),
            limits: Limits::default(),
            idle_sleep: Duration::from_millis(10),
            idle_sleep_max: Duration::from_millis(100),
            exactly_once: false,
            connectors: None,
            sink_state: None,
            shards: 1,
            shard_queue: 4,
            on_shard_thread: None,
            view_bytes: 0,
            decode_threads: 1,
        }
    }
}

crate::option_enum! {
    /// A source's `on_error`: whether a row that fails to decode goes to `ERRORS()` (skip) or
    /// stops the pipeline with its message (fail).
    pub(crate) enum OnError {
        Skip = "skip",
        Fail = "fail",
    }
}

enum ReaderSpec {
    File {
        path: PathBuf,
        format: Format,
        follow: bool,
        max_line: usize,
    },
    Datagen(DatagenConfig),
    Nexmark(NexmarkConfig, NexmarkStream),
    /// A provided connector: its reader is made at plan time (it connects on its first poll).
    External {
        fold: FoldPosition,
    },
}

impl ReaderSpec {
    fn fold_position(&self, acc: &mut Vec<u8>, logged: &[u8]) {
        match self {
            ReaderSpec::External { fold } => fold(acc, logged),
            _ => connector::replace_position(acc, logged),
        }
    }
}

/// Counts of one source.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceStats {
    pub accepted: u64,
    pub late: u64,
    pub errors: u64,
}

struct SourceRuntime {
    name: String,
    spec: ReaderSpec,
    reader: Option<Box<dyn SourceReader>>,
    decoder: RowDecoder,
    time_col: Option<usize>,
    delay: i64,
    /// Largest accepted event time (MIN_TS before the first row).
    max_ts: i64,
    /// Watermark raised by idleness (`watermark.idle_timeout`).
    idle_floor: i64,
    idle_timeout: Option<i64>,
    last_row: Instant,
    on_error: OnError,
    batch_rows: usize,
    main: NodeId,
    late: NodeId,
    errors: NodeId,
    ended: bool,
    stats: SourceStats,
    /// The reader's position after the last rows handed on (resumed from after a restart), with
    /// the logged positions folded in.
    position: Vec<u8>,
    /// Whether the reader can read its input again (then nothing of it goes to the WAL).
    replayable: bool,
    /// Event time per split, for a reader with splits (Kafka partitions).
    splits: splits::SplitClock,
    /// Live viewers of its accepted, late and error rows.
    taps: SourceTaps,
}

impl SourceRuntime {
    fn watermark(&self) -> i64 {
        let from_rows = if !self.splits.is_empty() {
            self.splits.watermark(self.delay, self.idle_timeout)
        } else if self.max_ts == MIN_TS {
            MIN_TS
        } else {
            self.max_ts.saturating_sub(self.delay)
        };
        from_rows.max(self.idle_floor)
    }

    /// Splits a decoded batch into accepted and late rows by the spec's rule, row by row; rows of
    /// a split are judged against the minimum over the source's splits.
    fn split_late(
        &mut self,
        batch: RecordBatch,
        split: Option<u64>,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
        let Some(tc) = self.time_col else { return Ok((Some(batch), None)) };
        let ts = batch.column(tc).as_primitive::<TimestampMillisecondType>();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut late = 0usize;
        if let Some(id) = split {
            let (idle_floor, mut max_ts) = (self.idle_floor, self.max_ts);
            let mut judge = self.splits.batch(id, self.delay, self.idle_timeout);
            for i in 0..ts.len() {
                let t = ts.value(i);
                if t < judge.watermark().max(idle_floor) {
                    keep.push(false);
                    late += 1;
                } else {
                    keep.push(true);
                    max_ts = max_ts.max(t);
                    judge.accept(t);
                }
            }
            self.max_ts = max_ts;
            self.splits.settle(self.delay, self.idle_timeout);
        } else {
            for i in 0..ts.len() {
                let t = ts.value(i);
                if t < self.watermark() {
                    keep.push(false);
                    late += 1;
                } else {
                    keep.push(true);
                    self.max_ts = self.max_ts.max(t);
                }
            }
        }
        if late == 0 {
            return Ok((Some(batch), None));
        }
        let mask = BooleanArray::from(keep);
        let late_rows = filter_record_batch(&batch, &arrow::compute::not(&mask)?)?;
        let accepted = if late == batch.num_rows() { None } else { Some(filter_record_batch(&batch, &mask)?) };
        Ok((accepted, Some(late_rows)))
    }
}

/// What a pipeline defines, for `eddyd check` and logs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub sources: Vec<String>,
    pub tables: Vec<String>,
    pub views: Vec<String>,
    /// (name, updating)
    pub sinks: Vec<(String, bool)>,
    /// Shard threads the pipeline runs on (1: unsharded).
    pub shards: usize,
    /// Why the pipeline cannot be split over shards (it then runs on one).
    pub unsharded_because: Option<String>,
    /// How each source's rows are routed when sharded ("readings by device_id").
    pub shard_keys: Vec<String>,
}

/// A source's counters and event time, for metrics.
#[derive(Debug, Clone)]
pub struct SourceObservation {
    pub name: String,
    pub stats: SourceStats,
    /// The source's watermark (`None` without event time, or before its first event time).
    pub watermark: Option<i64>,
    /// Whether its connection is up (`None`: no connection).
    pub connected: Option<bool>,
}

/// A snapshot of a running pipeline's counters, taken between steps.
#[derive(Debug, Clone)]
pub struct Observation {
    pub sources: Vec<SourceObservation>,
    /// (sink, rows, retractions)
    pub sinks: Vec<(String, u64, u64)>,
    pub state_bytes: usize,
    pub durable: Option<DurableStats>,
    pub shards: usize,
    /// Steps the shards have not finished (0..=shard_queue; at the bound the sources wait).
    pub shard_backlog: usize,
}

pub struct Pipeline {
    graph: Graph,
    sources: Vec<SourceRuntime>,
    tables: Vec<TableRuntime>,
    sinks: Vec<(String, NodeId)>,
    /// Where live viewers subscribe to each sink's output.
    taps: Vec<(String, Arc<TapPoint>)>,
    /// Materialized views whose current rows are kept for on-demand queries.
    views: Vec<Arc<LiveView>>,
    summary: Summary,
    mode: Mode,
    idle_sleep: Duration,
    idle_sleep_max: Duration,
    /// Sources with threads of their own wake an idle live loop through this.
    wakeup: Arc<Wakeup>,
    control: Arc<LiveControl>,
    started: bool,
    prepared: bool,
    /// Durable pipelines: the WAL and checkpoints.
    durable: Option<durable::Durable>,
    sharding: Sharding,
    shard_queue: usize,
    shard_hook: Option<ShardThreadHook>,
    decode_threads: usize,
}

/// Where the graph runs: on the pipeline's thread, or over shard threads (then `Pipeline::graph`
/// keeps only the sinks busy, fed with the shards' output).
enum Sharding {
    Single,
    /// Planned, threads not started yet.
    Planned(Vec<ShardGraph>, Vec<Route>),
    Running(Shards),
}

/// How a view's rows are kept for queries: by key if it updates, the newest window's rows if
/// it is windowed (by a millisecond end column), else the newest rows.
fn live_view(name: &str, stream: &Stream, max_bytes: usize, parts: usize) -> Result<LiveView> {
    let end = stream.result_window_end.filter(|&c| {
        matches!(stream.schema.field(c).data_type(), DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _))
    });
    let shape = match (stream.updating, end) {
        (true, window_end) => Shape::Keyed { key: stream.key.clone().unwrap_or_default(), window_end },
        (false, Some(end)) => Shape::LatestWindow { end },
        (false, None) => Shape::Latest,
    };
    // The bound is the view's: each part gets its share.
    let part_bytes = (max_bytes / parts).max(1);
    let tables = (0..parts)
        .map(|_| ResultTable::new(stream.schema.clone(), shape.clone(), part_bytes))
        .collect::<Result<Vec<_>>>()?;
    Ok(LiveView::new(name, tables, end.is_some()))
}

fn sql_err(pos: SqlPos, message: impl Into<String>) -> EngineError {
    EngineError::Sql { pos, message: message.into() }
}

/// Puts the statement's position on planning errors that have none, or, where DataFusion points
/// at a part of the statement (an unknown column or function), that part's line and column.
fn at(pos: SqlPos, e: EngineError) -> EngineError {
    match e {
        EngineError::DataFusion(d) => {
            let pos = match d.diagnostic().and_then(|g| g.span) {
                Some(span) if span.start.line > 0 => {
                    SqlPos { statement: pos.statement, line: span.start.line, column: span.start.column }
                }
                _ => pos,
            };
            sql_err(pos, planning_message(&d.to_string()))
        }
        EngineError::Arrow(a) => sql_err(pos, a.to_string()),
        other => other,
    }
}

/// DataFusion's message on one line, without the kind of error it starts with.
fn planning_message(text: &str) -> String {
    let text = ["Error during planning: ", "Schema error: "].iter().fold(text, |t, p| t.strip_prefix(p).unwrap_or(t));
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Drops `CREATE ... ; DROP ...` pairs, checking that nothing left depends on what is dropped.
fn resolve_drops(stmts: Vec<PositionedStatement>) -> Result<Vec<PositionedStatement>> {
    let mut out: Vec<PositionedStatement> = Vec::new();
    for s in stmts {
        if let Statement::Drop { kind, name, if_exists } = &s.statement {
            let found = out.iter().position(|p| created(&p.statement) == Some((*kind, name.as_str())));
            match found {
                Some(i) => {
                    out.remove(i);
                }
                None if *if_exists => {}
                None => return Err(sql_err(s.pos, format!("DROP {}: no {} named '{name}'", kind.sql(), kind.sql()))),
            }
            continue;
        }
        out.push(s);
    }
    Ok(out)
}

fn created(s: &Statement) -> Option<(ObjectKind, &str)> {
    match s {
        Statement::CreateSource(r) => Some((ObjectKind::Source, &r.name)),
        Statement::CreateTable(r) => Some((ObjectKind::Table, &r.name)),
        Statement::CreateView { name, .. } => Some((ObjectKind::View, name)),
        Statement::CreateSink { name, .. } => Some((ObjectKind::Sink, name)),
        Statement::Drop { .. } => None,
    }
}

/// The schema of a sink's JSON lines: the stream's columns, and `_op` for an upsert sink.
fn sink_row_schema(stream: &SchemaRef, mode: SinkMode) -> SchemaRef {
    match mode {
        SinkMode::Append => stream.clone(),
        SinkMode::Upsert => {
            let mut fields: Vec<_> = stream.fields().iter().cloned().collect();
            fields.push(Arc::new(arrow::datatypes::Field::new("_op", arrow::datatypes::DataType::Utf8, false)));
            Arc::new(arrow::datatypes::Schema::new(fields))
        }
    }
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Decoder columns and arrow schema of a source or table definition.
fn relation_columns(def: &RelationDef, pos: SqlPos) -> Result<(Vec<DecodeColumn>, Option<usize>)> {
    let mut cols = Vec::new();
    for c in &def.columns {
        let t =
            crate::types::arrow_type(&c.sql_type).map_err(|m| sql_err(c.pos, format!("column '{}': {m}", c.name)))?;
        cols.push(DecodeColumn {
            name: c.name.clone(),
            data_type: t,
            nullable: !c.not_null,
            metadata_key: c.metadata_key.clone(),
        });
    }
    for k in &def.primary_key {
        if !cols.iter().any(|c| &c.name == k) {
            return Err(sql_err(pos, format!("PRIMARY KEY column '{k}' is not a column of '{}'", def.name)));
        }
    }
    let time_col = match &def.watermark {
        None => None,
        Some(w) => {
            let i = cols
                .iter()
                .position(|c| c.name == w.column)
                .ok_or_else(|| sql_err(w.pos, format!("WATERMARK FOR '{}': no such column", w.column)))?;
            if !crate::plan::is_time_type(&cols[i].data_type) {
                return Err(sql_err(w.pos, format!("WATERMARK FOR '{}': the column must be TIMESTAMP(3)", w.column)));
            }
            Some(i)
        }
    };
    Ok((cols, time_col))
}

/// Delay of `WATERMARK FOR ts AS ts - INTERVAL 'd'` (or `AS ts`).
fn watermark_delay(def: &RelationDef) -> Result<i64> {
    use datafusion_sql::sqlparser::ast::{BinaryOperator, Expr as E};
    let Some(w) = &def.watermark else { return Ok(0) };
    let is_col = |e: &E| matches!(e, E::Identifier(i) if i.value.eq_ignore_ascii_case(&w.column));
    let bad = || {
        sql_err(w.pos, format!("WATERMARK FOR {c} AS {c} - INTERVAL '...' expected, found {}", w.expr, c = w.column))
    };
    match &w.expr {
        e if is_col(e) => Ok(0),
        E::BinaryOp { left, op: BinaryOperator::Minus, right } if is_col(left) => {
            let d = ddl::interval_literal_ms(right).map_err(|m| sql_err(w.pos, m))?;
            if d < 0 {
                return Err(sql_err(w.pos, "the watermark delay cannot be negative"));
            }
            Ok(d)
        }
        _ => Err(bad()),
    }
}

impl Pipeline {
    /// Parses and plans `sql`. Opens nothing: files are opened by [`Pipeline::start`].
    pub fn plan(sql: &str, cfg: &PipelineConfig) -> Result<Pipeline> {
        let stmts = resolve_drops(ddl::parse_pipeline(sql)?)?;
        let mut catalog = Catalog::new();
        let mut graph = Graph::default();
        let mut relations: HashMap<String, Stream> = HashMap::new();
        let mut names: HashSet<String> = HashSet::new();
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        let mut taps = Vec::new();
        let mut kept_views: Vec<(String, Stream)> = Vec::new();
        let mut tables: Vec<TableRuntime> = Vec::new();
        let mut table_handles: HashMap<String, TableHandle> = HashMap::new();
        let mut summary = Summary::default();
        let wakeup = Arc::new(Wakeup::default());
        // Shard graphs are planned in lockstep with `graph`, so node ids agree in all of them.
        let mut shard_graphs: Vec<ShardGraph> = (0..if cfg.shards > 1 { cfg.shards } else { 0 })
            .map(|_| ShardGraph { graph: Graph::default(), captured: Arc::new(Mutex::new(Vec::new())) })
            .collect();
        let mut needs: Vec<ShardNeed> = Vec::new();
        let same_node = |a: NodeId, b: NodeId| {
            if a == b {
                Ok(())
            } else {
                Err(EngineError::Internal(format!("a shard's plan differs (node {b}, not {a})")))
            }
        };
        for PositionedStatement { pos, statement } in &stmts {
            let pos = *pos;
            let needs_before = needs.len();
            let mut owner = None;
            if let Some((kind, name)) = created(statement) {
                if !names.insert(name.to_string()) {
                    return Err(sql_err(
                        pos,
                        format!("'{name}' is already defined; a {} needs a name of its own", kind.sql()),
                    ));
                }
                // Nodes planned from here on are this statement's, named in their errors.
                let this = format!("{} '{name}'", kind.sql().to_lowercase());
                graph.plan_for(&this);
                shard_graphs.iter_mut().for_each(|sg| sg.graph.plan_for(&this));
                owner = Some(this);
            }
            match statement {
                Statement::CreateSource(def) => {
                    let src = Self::plan_source(
                        def,
                        pos,
                        cfg,
                        sources.len(),
                        &mut catalog,
                        &mut graph,
                        &mut relations,
                        &wakeup,
                    )?;
                    for sg in &mut shard_graphs {
                        for n in [src.main, src.late, src.errors] {
                            same_node(n, sg.graph.add(Box::new(Passthrough(graph.name(n))), 1))?;
                        }
                    }
                    summary.sources.push(def.name.clone());
                    sources.push(src);
                }
                Statement::CreateTable(def) => {
                    let table = Self::plan_table(def, pos, cfg)?;
                    let schema =
                        table.handle.read().map_err(|_| EngineError::Internal("table lock".into()))?.batch.schema();
                    catalog.add_keyed(&def.name, RelationKind::Table, schema, table.spec.primary_key.clone());
                    table_handles.insert(def.name.clone(), table.handle.clone());
                    tables.push(table);
                    summary.tables.push(def.name.clone());
                }
                Statement::CreateView { name, query, emit } => {
                    let mut planner = Planner::new(&catalog, &mut graph, &relations, &table_handles, cfg.limits);
                    let (stream, _) = planner.plan_query(query, *emit).map_err(|e| at(pos, e))?;
                    needs.append(&mut planner.needs);
                    for sg in &mut shard_graphs {
                        let mut planner = Planner::new(&catalog, &mut sg.graph, &relations, &table_handles, cfg.limits);
                        same_node(stream.node, planner.plan_query(query, *emit).map_err(|e| at(pos, e))?.0.node)?;
                    }
                    catalog.add(name, RelationKind::View, stream.schema.clone());
                    if cfg.view_bytes > 0 && stream.pending_session.is_none() {
                        // Kept once it is known whether the pipeline runs sharded (below).
                        kept_views.push((name.clone(), stream.clone()));
                    }
                    relations.insert(name.clone(), stream);
                    summary.views.push(name.clone());
                }
                Statement::CreateSink { name, input, options } => {
                    let (stream, id, tap) = Self::plan_sink(
                        name,
                        input,
                        options,
                        pos,
                        cfg,
                        &catalog,
                        &mut graph,
                        &relations,
                        &table_handles,
                        &mut needs,
                    )?;
                    for sg in &mut shard_graphs {
                        let from = match input {
                            SinkInput::Query { query, emit } => {
                                let mut planner =
                                    Planner::new(&catalog, &mut sg.graph, &relations, &table_handles, cfg.limits);
                                planner.plan_query(query, *emit).map_err(|e| at(pos, e))?.0.node
                            }
                            SinkInput::Relation(_) => stream.node,
                        };
                        same_node(stream.node, from)?;
                        let capture = sg.graph.add(Box::new(Capture { sink: id, out: sg.captured.clone() }), 1);
                        same_node(id, capture)?;
                        sg.graph.connect(from, capture, 0);
                    }
                    summary.sinks.push((name.clone(), stream.updating));
                    sinks.push((name.clone(), id));
                    taps.push((name.clone(), tap));
                }
                Statement::Drop { .. } => {}
            }
            // Why a pipeline is not sharded names the statement of each operator it speaks of.
            if let Some(owner) = &owner {
                for need in &mut needs[needs_before..] {
                    need.op = format!("{} of {owner}", need.op);
                }
            }
        }
        for name in cfg.inputs.keys() {
            if !summary.sources.contains(name) {
                return Err(EngineError::options(
                    "--input",
                    format!("no source named '{name}' (sources: {})", summary.sources.join(", ")),
                ));
            }
        }
        for name in cfg.outputs.keys() {
            if !summary.sinks.iter().any(|(s, _)| s == name) {
                let known: Vec<&str> = summary.sinks.iter().map(|(s, _)| s.as_str()).collect();
                return Err(EngineError::options(
                    "--output",
                    format!("no sink named '{name}' (sinks: {})", known.join(", ")),
                ));
            }
        }
        summary.shards = 1;
        let routes = match shards::route_plan(&needs, &graph, &Self::source_nodes(&sources)) {
            Ok(routes) => {
                summary.shard_keys = sources
                    .iter()
                    .zip(&routes)
                    .map(|(s, r)| match r {
                        Route::Key(c) => format!("{} by {}", s.name, s.decoder.schema.field(*c).name()),
                        Route::Spread => format!("{} spread (no keyed state)", s.name),
                    })
                    .collect();
                Some(routes)
            }
            Err(why) => {
                summary.unsharded_because = Some(why);
                None
            }
        };
        let sharded = routes.is_some() && !shard_graphs.is_empty();
        // A view's rows are kept by the graphs that run it: each shard's for its keys (the
        // pipeline's own graph then keeps only the sinks busy), or the pipeline's own graph.
        let mut views = Vec::with_capacity(kept_views.len());
        for (name, stream) in &kept_views {
            let parts = if sharded { shard_graphs.len() } else { 1 };
            let view = Arc::new(live_view(name, stream, cfg.view_bytes, parts)?);
            if sharded {
                for (k, sg) in shard_graphs.iter_mut().enumerate() {
                    sg.graph.attach_view(stream.node, view.clone(), k);
                }
            } else {
                graph.attach_view(stream.node, view.clone(), 0);
            }
            views.push(view);
        }
        let sharding = match routes {
            Some(routes) if sharded => {
                summary.shards = shard_graphs.len();
                Sharding::Planned(shard_graphs, routes)
            }
            _ => Sharding::Single,
        };
        Ok(Pipeline {
            graph,
            sources,
            tables,
            sinks,
            taps,
            views,
            summary,
            mode: cfg.mode,
            idle_sleep: cfg.idle_sleep,
            idle_sleep_max: cfg.idle_sleep_max.max(cfg.idle_sleep),
            control: Arc::new(LiveControl::new(wakeup.clone())),
            wakeup,
            started: false,
            prepared: false,
            durable: None,
            sharding,
            shard_queue: cfg.shard_queue,
            shard_hook: cfg.on_shard_thread.clone(),
            decode_threads: cfg.decode_threads.clamp(1, connector::decode_pool::MAX_DECODE_THREADS),
        })
    }

    fn source_nodes(sources: &[SourceRuntime]) -> Vec<SourceNodes> {
        sources
            .iter()
            .map(|s| SourceNodes {
                name: s.name.clone(),
                nodes: [s.main, s.late, s.errors],
                schema: s.decoder.schema.clone(),
            })
            .collect()
    }

    /// Starts the shard threads of a sharded pipeline (once).
    fn ensure_shards(&mut self) -> Result<()> {
        if !matches!(self.sharding, Sharding::Planned(..)) {
            return Ok(());
        }
        if let Sharding::Planned(graphs, routes) = std::mem::replace(&mut self.sharding, Sharding::Single) {
            let shards = Shards::start(
                graphs,
                &Self::source_nodes(&self.sources),
                routes,
                self.shard_queue,
                self.shard_hook.clone(),
            )?;
            tracing::info!(shards = shards.count(), "pipeline sharded by key");
            self.sharding = Sharding::Running(shards);
        }
        Ok(())
    }

    /// Rows entering at a source's node: into the graph, or routed to their shard.
    fn flow_push(&mut self, node: NodeId, chunk: Chunk) -> Result<()> {
        self.ensure_shards()?;
        match &mut self.sharding {
            Sharding::Running(s) => s.push(node, chunk),
            _ => self.graph.push(node, 0, chunk),
        }
    }

    /// A source node's watermark: into the graph, or to every shard.
    fn flow_advance(&mut self, node: NodeId, wm: i64) -> Result<()> {
        self.ensure_shards()?;
        match &mut self.sharding {
            Sharding::Running(s) => {
                s.advance(node, wm);
                Ok(())
            }
            _ => self.graph.advance(node, 0, wm),
        }
    }

    /// Ends a step: a sharded pipeline sends it to the shards and writes finished output to its sinks.
    fn flow_step_end(&mut self) -> Result<()> {
        if let Sharding::Running(s) = &mut self.sharding {
            let g = &mut self.graph;
            s.send_step(&mut |id, chunk| g.push(id, 0, chunk))?;
        }
        Ok(())
    }

    /// Waits for the shards to finish every step sent and writes their output to the sinks.
    fn flow_drain(&mut self) -> Result<()> {
        self.flow_step_end()?;
        if let Sharding::Running(s) = &mut self.sharding {
            let g = &mut self.graph;
            s.drain(&mut |id, chunk| g.push(id, 0, chunk))?;
        }
        Ok(())
    }

    fn plan_table(def: &RelationDef, pos: SqlPos, cfg: &PipelineConfig) -> Result<TableRuntime> {
        let ctx = format!("table '{}'", def.name);
        connector::check_options(connector::Role::Table, &def.name, &def.options, None).map_err(|e| at(pos, e))?;
        let (cols, _) = relation_columns(def, pos)?;
        if def.watermark.is_some() {
            return Err(sql_err(
                pos,
                format!(
                    "table '{}': a reference TABLE has no WATERMARK (it is joined by its current contents)",
                    def.name
                ),
            ));
        }
        if let Some(c) = cols.iter().find(|c| c.metadata_key.is_some()) {
            return Err(sql_err(pos, format!("column '{}': a table file provides no metadata", c.name)));
        }
        let o = connector::table::FileTableOptions::read(&ctx, connector::sql_only(&def.options))?;
        let path = o.path.ok_or_else(|| EngineError::options(&ctx, "connector 'file' needs option 'path'"))?;
        let format = o.format.unwrap_or(Format::Csv);
        if format == Format::Raw {
            return Err(EngineError::options(ctx, "a table is read as 'csv' or 'json'"));
        }
        let primary_key: Vec<usize> =
            def.primary_key.iter().filter_map(|k| cols.iter().position(|c| &c.name == k)).collect();
        let schema: SchemaRef = Arc::new(Schema::new(
            cols.iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable && !def.primary_key.contains(&c.name)))
                .collect::<Vec<_>>(),
        ));
        let spec = TableSpec {
            name: def.name.clone(),
            path: resolve_path(&cfg.base_dir, &path),
            format,
            columns: cols
                .into_iter()
                .map(|mut c| {
                    c.nullable &= !def.primary_key.contains(&c.name);
                    c
                })
                .collect(),
            primary_key,
            max_line: o.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE),
            reload_interval: o.reload_interval.map_or(5_000, |d| d.as_millis().min(i64::MAX as u128) as i64),
        };
        Ok(TableRuntime::new(spec, schema))
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_source(
        def: &RelationDef,
        pos: SqlPos,
        cfg: &PipelineConfig,
        index: usize,
        catalog: &mut Catalog,
        graph: &mut Graph,
        relations: &mut HashMap<String, Stream>,
        wakeup: &Arc<Wakeup>,
    ) -> Result<SourceRuntime> {
        let ctx = format!("source '{}'", def.name);
        let provider = cfg.connectors.as_deref();
        let connector = connector::check_options(connector::Role::Source, &def.name, &def.options, provider)
            .map_err(|e| at(pos, e))?;
        let (cols, time_col) = relation_columns(def, pos)?;
        let builtin = matches!(connector.as_str(), "file" | "datagen" | "nexmark");
        if let Some(c) =
            cols.iter().find(|c| c.metadata_key.is_some()).filter(|_| builtin || cfg.inputs.contains_key(&def.name))
        {
            let from = if builtin { format!("connector '{connector}'") } else { "an --input file".to_string() };
            return Err(sql_err(pos, format!("column '{}': {from} provides no metadata", c.name)));
        }
        let delay = watermark_delay(def)?;
        let o = &def.options;
        let common = connector::SourceCommonOptions::read(&ctx, connector::sql_only(o))?;
        let on_error = common.on_error.unwrap_or(OnError::Skip);
        let idle_timeout = common.idle_timeout.map(|d| d.as_millis().min(i64::MAX as u128) as i64);
        let batch_rows = common.batch_rows.unwrap_or(cfg.limits.batch_rows).clamp(1, 1 << 20);
        let decoder = RowDecoder::new(cols.clone(), time_col).map_err(|m| sql_err(pos, m))?;
        let mut reader: Option<Box<dyn SourceReader>> = None;
        let spec = match cfg.inputs.get(&def.name) {
            Some(path) => {
                ReaderSpec::File { path: path.clone(), format: Format::Json, follow: false, max_line: DEFAULT_MAX_LINE }
            }
            None => match connector.as_str() {
                "file" => {
                    let f = connector::file::FileSourceOptions::read(&ctx, connector::sql_only(o))?;
                    let path =
                        f.path.ok_or_else(|| EngineError::options(&ctx, "connector 'file' needs option 'path'"))?;
                    ReaderSpec::File {
                        path: resolve_path(&cfg.base_dir, &path),
                        format: common.format.unwrap_or(Format::Json),
                        follow: f.follow.unwrap_or(false) && cfg.mode == Mode::Live,
                        max_line: f.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE),
                    }
                }
                "datagen" => {
                    let dg = DatagenConfig::from_options(&ctx, o)?;
                    if cfg.mode == Mode::Replay && dg.rows.is_none() {
                        return Err(EngineError::options(
                            ctx,
                            "replay reads bounded input: set option 'rows' on a datagen source",
                        ));
                    }
                    ReaderSpec::Datagen(dg)
                }
                "nexmark" => {
                    let (nx, stream) = NexmarkConfig::from_options(&ctx, o)?;
                    if cfg.mode == Mode::Replay && nx.events.is_none() {
                        return Err(EngineError::options(
                            ctx,
                            "replay reads bounded input: set option 'events' on a nexmark source",
                        ));
                    }
                    ReaderSpec::Nexmark(nx, stream)
                }
                _ => {
                    let p = provider
                        .ok_or_else(|| EngineError::Internal(format!("no provider for connector '{connector}'")))?;
                    if cfg.mode == Mode::Replay {
                        return Err(EngineError::options(
                            ctx,
                            format!("replay reads bounded input: give this '{connector}' source an input file with --input {}=FILE", def.name),
                        ));
                    }
                    let spec = ConnectorSpec {
                        name: &def.name,
                        connector: &connector,
                        options: o,
                        metadata_keys: decoder.metadata_keys(),
                        columns: cols.iter().map(|c| c.name.clone()).collect(),
                        schema: None,
                        state: None,
                        wakeup: Some(wakeup.clone()),
                    };
                    p.validate(connector::Role::Source, &spec).map_err(|e| at(pos, e))?;
                    reader = Some(p.open_source(&spec)?);
                    ReaderSpec::External { fold: p.fold_position(&connector) }
                }
            },
        };
        if let ReaderSpec::File { format, .. } = &spec {
            connector::check_raw_payload(&ctx, *format, cols.iter().filter(|c| c.metadata_key.is_none()).count())?;
        }
        let schema: SchemaRef = decoder.schema.clone();
        catalog.add(&def.name, RelationKind::Source, schema.clone());
        catalog.add(&late_name(&def.name), RelationKind::Late(def.name.clone()), schema.clone());
        catalog.add(&errors_name(&def.name), RelationKind::Errors(def.name.clone()), errors_schema());
        let main = graph.add(Box::new(Passthrough(format!("source {}", def.name))), 1);
        let late = graph.add(Box::new(Passthrough(format!("LATE({})", def.name))), 1);
        let errors = graph.add(Box::new(Passthrough(format!("ERRORS({})", def.name))), 1);
        // Rows and LATE rows carry every source column; ERRORS rows carry none of them.
        let carried: Vec<Vec<(usize, usize)>> = (0..schema.fields().len()).map(|c| vec![(index, c)]).collect();
        relations.insert(
            def.name.clone(),
            Stream {
                origins: carried.clone(),
                ..Stream::append_only(main, schema.clone(), time_col.map(|c| vec![(c, 0)]).unwrap_or_default())
            },
        );
        relations
            .insert(late_name(&def.name), Stream { origins: carried, ..Stream::append_only(late, schema, vec![]) });
        relations.insert(errors_name(&def.name), Stream::append_only(errors, errors_schema(), vec![]));
        Ok(SourceRuntime {
            name: def.name.clone(),
            spec,
            reader,
            decoder,
            time_col,
            delay,
            max_ts: MIN_TS,
            idle_floor: MIN_TS,
            idle_timeout,
            last_row: Instant::now(),
            on_error,
            batch_rows,
            main,
            late,
            errors,
            ended: false,
            stats: SourceStats::default(),
            position: Vec::new(),
            replayable: false,
            splits: splits::SplitClock::default(),
            taps: SourceTaps::default(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_sink(
        name: &str,
        input: &SinkInput,
        options: &Options,
        pos: SqlPos,
        cfg: &PipelineConfig,
        catalog: &Catalog,
        graph: &mut Graph,
        relations: &HashMap<String, Stream>,
        tables: &HashMap<String, TableHandle>,
        needs: &mut Vec<ShardNeed>,
    ) -> Result<(Stream, NodeId, Arc<TapPoint>)> {
        let ctx = format!("sink '{name}'");
        let provider = cfg.connectors.as_deref();
        let connector =
            connector::check_options(connector::Role::Sink, name, options, provider).map_err(|e| at(pos, e))?;
        let stream = match input {
            SinkInput::Relation(r) => match catalog.relation(r).map(|s| &s.kind) {
                Some(RelationKind::Source | RelationKind::View) => {
                    relations.get(r).cloned().ok_or_else(|| EngineError::Internal(format!("no stream for {r}")))?
                }
                Some(RelationKind::Table) => {
                    return Err(sql_err(pos, format!("'{r}' is a reference TABLE, not a stream")))
                }
                _ => return Err(sql_err(pos, format!("unknown relation '{r}'"))),
            },
            SinkInput::Query { query, emit } => {
                let mut planner = Planner::new(catalog, graph, relations, tables, cfg.limits);
                let stream = planner.plan_query(query, *emit).map_err(|e| at(pos, e))?.0;
                needs.append(&mut planner.needs);
                stream
            }
        };
        let common = connector::SinkCommonOptions::read(&ctx, connector::sql_only(options))?;
        let mode = common.kind.unwrap_or(SinkMode::Append);
        let columns: Vec<String> = stream.schema.fields().iter().map(|f| f.name().clone()).collect();
        if let Some(pk) = &common.primary_key {
            for k in pk.split(',').map(str::trim) {
                if !columns.iter().any(|c| c == k) {
                    return Err(EngineError::options(
                        ctx,
                        format!("primary_key column '{k}' is not an output column ({})", columns.join(", ")),
                    ));
                }
            }
        }
        if stream.updating && mode == SinkMode::Append {
            return Err(sql_err(
                pos,
                format!(
                    "sink '{name}': the query gives an updating result (a non-windowed GROUP BY, or EMIT ON UPDATE / EVERY), which an append-only sink cannot hold; add type = 'upsert' to the sink's options"
                ),
            ));
        }
        if mode == SinkMode::Upsert && common.primary_key.is_none() && stream.key.is_none() {
            return Err(EngineError::options(
                ctx,
                "an upsert sink needs a key: set primary_key = 'col,...' or project every GROUP BY column",
            ));
        }
        let writes = match connector.as_str() {
            "file" | "console" => connector::SinkFormat::Json,
            other => provider.map_or(connector::SinkFormat::Json, |p| p.sink_format(other)),
        };
        connector::check_sink_format(&ctx, common.format.as_deref(), &connector, writes)?;
        let mut sink = match (cfg.outputs.get(name), connector.as_str()) {
            (Some(p), _) => Sink::new(name, SinkTarget::File(p.clone()), mode, columns),
            (None, "file") => {
                let f = connector::sink::FileSinkOptions::read(&ctx, connector::sql_only(options))?;
                let path = f.path.ok_or_else(|| EngineError::options(&ctx, "connector 'file' needs option 'path'"))?;
                Sink::new(name, SinkTarget::File(resolve_path(&cfg.base_dir, &path)), mode, columns)
            }
            (None, "console") => Sink::new(name, SinkTarget::Console, mode, columns),
            (None, other) => {
                let p =
                    provider.ok_or_else(|| EngineError::Internal(format!("no provider for connector '{other}'")))?;
                let state = cfg.sink_state.as_ref().filter(|_| cfg.exactly_once);
                let spec = ConnectorSpec {
                    name,
                    connector: other,
                    options,
                    metadata_keys: Vec::new(),
                    columns: columns.clone(),
                    schema: Some(sink_row_schema(&stream.schema, mode)),
                    state: state.map(|s| SinkStateDir {
                        dir: s.dir.join(name),
                        storage: s.storage.clone(),
                        cipher: s.cipher.clone(),
                        owner: s.owner.child(name),
                    }),
                    wakeup: None,
                };
                p.validate(connector::Role::Sink, &spec).map_err(|e| at(pos, e))?;
                Sink::external(name, other, p.open_sink(&spec)?, mode, columns)
            }
        };
        if cfg.exactly_once {
            sink.set_exactly_once();
        }
        let tap = sink.tap_point();
        let id = graph.add(Box::new(sink), 1);
        graph.connect(stream.node, id, 0);
        Ok((stream, id, tap))
    }

    /// The first operator whose state is not checkpointed yet (such a pipeline cannot be durable).
    pub fn not_checkpointable(&self) -> Option<String> {
        self.graph.not_checkpointable()
    }

    /// The handle other threads use to ask this pipeline, while it runs live, for a checkpoint.
    pub fn control(&self) -> Arc<LiveControl> {
        self.control.clone()
    }

    /// Each sink's tap, for live viewers on other threads.
    pub fn taps(&self) -> Vec<(String, Arc<TapPoint>)> {
        self.taps.clone()
    }

    /// The materialized views whose current rows are kept for on-demand queries.
    pub fn views(&self) -> Vec<Arc<LiveView>> {
        self.views.clone()
    }

    /// Each source's taps of its accepted, late and error rows.
    pub fn source_taps(&self) -> Vec<(String, SourceRows, Arc<TapPoint>)> {
        let kinds = [SourceRows::Accepted, SourceRows::Late, SourceRows::Errors];
        self.sources.iter().flat_map(|s| kinds.map(|k| (s.name.clone(), k, s.taps.point(k)))).collect()
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Loads tables and opens sinks (before a durable pipeline replays its WAL).
    fn prepare(&mut self) -> Result<()> {
        if self.prepared {
            return Ok(());
        }
        for t in &mut self.tables {
            t.load()?;
        }
        self.graph.start_all()?;
        self.prepared = true;
        Ok(())
    }

    /// Opens sources and sinks.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        self.prepare()?;
        for s in &mut self.sources {
            match &s.spec {
                ReaderSpec::File { path, format, follow, max_line } => {
                    s.reader = Some(Box::new(FileSource::open(path, *format, *follow, *max_line, self.decode_threads)?))
                }
                ReaderSpec::Datagen(cfg) => s.reader = Some(Box::new(Datagen::new(cfg.clone()))),
                ReaderSpec::Nexmark(cfg, stream) => s.reader = Some(Box::new(Nexmark::new(cfg.clone(), *stream))),
                ReaderSpec::External { .. } => {}
            }
            s.replayable = s.reader.as_ref().is_some_and(|r| r.replayable());
            if !s.position.is_empty() {
                if let Some(r) = s.reader.as_mut() {
                    r.resume(&s.position, &mut s.decoder).map_err(|e| match e {
                        EngineError::State(m) => EngineError::State(format!("source '{}': {m}", s.name)),
                        e => e,
                    })?;
                }
            }
            s.last_row = Instant::now();
        }
        self.checkpoint_a_new_identity()?;
        self.started = true;
        Ok(())
    }

    /// Polls every source once and runs what they produced. Returns whether anything was read.
    pub fn step(&mut self) -> Result<bool> {
        self.start()?;
        let mut any = false;
        let now = crate::time::now_ms();
        if self.mode == Mode::Live {
            self.tables.iter_mut().for_each(TableRuntime::maybe_reload);
        }
        for i in 0..self.sources.len() {
            if self.sources[i].ended {
                continue;
            }
            let poll = {
                let s = &mut self.sources[i];
                let reader = s.reader.as_mut().ok_or_else(|| EngineError::Internal("source not started".into()))?;
                reader.poll(&mut s.decoder, s.batch_rows)?
            };
            any |= poll == Poll::Rows;
            let (errors, rows) = self.take_decoded(i)?;
            let split = {
                let s = &mut self.sources[i];
                match s.reader.as_ref() {
                    Some(r) if s.replayable => {
                        debug_assert!(r.split().is_none() || !r.splits().is_empty() || rows.is_none());
                        s.splits.assign(r.splits());
                        r.split()
                    }
                    _ => None,
                }
            };
            let mut mark = None;
            if let Some(d) = self.durable.as_mut() {
                let s = &mut self.sources[i];
                // A replayable source reads its input again after a crash: only checkpoints
                // save its position.
                if !s.replayable && (errors.is_some() || rows.is_some() || poll == Poll::Rows) {
                    // Logged before it is processed, with where to resume after it; a read that
                    // gave no rows is logged only when it moved the position.
                    let logged = s.reader.as_ref().map(|r| r.position()).unwrap_or_default();
                    if errors.is_some() || rows.is_some() || !logged.is_empty() {
                        s.spec.fold_position(&mut s.position, &logged);
                        let errors_schema = errors_schema();
                        let schemas = LoggedSchemas { errors: &errors_schema, rows: &s.decoder.schema };
                        d.log_batch(i, &logged, errors.as_ref(), rows.as_ref(), &schemas)?;
                    }
                }
                mark = Some(d.next_lsn());
            }
            if poll != Poll::Idle {
                if let Some(r) = self.sources[i].reader.as_mut() {
                    r.handed_on(mark);
                }
            }
            self.run_source_output(i, errors, rows, split)?;
            if poll == Poll::End {
                self.end_source(i)?;
            } else if self.mode == Mode::Live {
                self.live_watermarks(i, now)?;
            }
            self.flow_step_end()?;
        }
        Ok(any)
    }

    /// Takes what source `i` decoded: error rows and rows.
    fn take_decoded(&mut self, i: usize) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
        let s = &mut self.sources[i];
        Ok((s.decoder.errors.finish()?, s.decoder.finish()?))
    }

    /// Pushes the decoded rows of source `i` into the graph.
    fn run_source_output(
        &mut self,
        i: usize,
        errors: Option<RecordBatch>,
        rows: Option<RecordBatch>,
        split: Option<u64>,
    ) -> Result<()> {
        let s = &mut self.sources[i];
        if let Some(errors) = errors {
            s.stats.errors += errors.num_rows() as u64;
            if s.on_error == OnError::Fail {
                let raw = errors.column(0).as_string::<i32>().value(0).to_string();
                let message = errors.column(1).as_string::<i32>().value(0).to_string();
                return Err(EngineError::BadRow { source_name: s.name.clone(), message, raw });
            }
            s.taps.offer(SourceRows::Errors, &errors);
            let node = s.errors;
            self.flow_push(node, Chunk::append(errors))?;
        }
        let s = &mut self.sources[i];
        let Some(batch) = rows else { return Ok(()) };
        s.last_row = Instant::now();
        let (accepted, late) = s.split_late(batch, split)?;
        let (main, late_node, wm) = (s.main, s.late, s.watermark());
        if let Some(a) = accepted {
            let s = &mut self.sources[i];
            s.stats.accepted += a.num_rows() as u64;
            s.taps.offer(SourceRows::Accepted, &a);
            self.flow_push(main, Chunk::append(a))?;
        }
        if let Some(l) = late {
            let s = &mut self.sources[i];
            s.stats.late += l.num_rows() as u64;
            s.taps.offer(SourceRows::Late, &l);
            self.flow_push(late_node, Chunk::append(l))?;
        }
        if self.sources[i].time_col.is_some() {
            self.flow_advance(main, wm)?;
        }
        Ok(())
    }

    /// Live mode: processing-time watermarks and idle timeouts.
    fn live_watermarks(&mut self, i: usize, now: i64) -> Result<()> {
        let s = &mut self.sources[i];
        let (main, late, errors) = (s.main, s.late, s.errors);
        if s.time_col.is_none() {
            self.flow_advance(main, now)?;
        } else if let Some(timeout) = s.idle_timeout {
            if !s.splits.is_empty() {
                // A split gone idle stops holding the watermark back.
                s.splits.settle(s.delay, s.idle_timeout);
                let wm = s.watermark();
                self.flow_advance(main, wm)?;
            }
            let s = &mut self.sources[i];
            let idle = s.last_row.elapsed().as_millis() as i64;
            if idle >= timeout && s.max_ts != MIN_TS {
                // Event time moves on with the wall clock while the source is silent.
                let floor = s.max_ts.saturating_sub(s.delay).saturating_add(idle);
                if floor > s.idle_floor {
                    s.idle_floor = floor;
                    let wm = s.watermark();
                    if let (Some(d), false) = (&mut self.durable, s.replayable) {
                        d.log_idle(i, floor)?;
                    }
                    self.flow_advance(main, wm)?;
                }
            }
        }
        self.flow_advance(late, now)?;
        self.flow_advance(errors, now)?;
        Ok(())
    }

    /// A source ended: its watermark becomes +inf, closing what depends only on ended inputs.
    fn end_source(&mut self, i: usize) -> Result<()> {
        if let (Some(d), false) = (&mut self.durable, self.sources[i].replayable) {
            d.log_end(i)?;
        }
        let s = &mut self.sources[i];
        s.ended = true;
        let nodes = [s.main, s.late, s.errors];
        tracing::debug!(source = %s.name, accepted = s.stats.accepted, late = s.stats.late, errors = s.stats.errors, "source ended");
        for n in nodes {
            self.flow_advance(n, MAX_TS)?;
        }
        Ok(())
    }

    pub fn all_ended(&self) -> bool {
        self.sources.iter().all(|s| s.ended)
    }

    /// Replay: reads every source to its end, closes every window, flushes every sink.
    pub fn run_to_end(&mut self) -> Result<()> {
        while !self.all_ended() {
            self.step()?;
        }
        self.flow_drain()?;
        self.graph.finish_all()
    }

    /// Live: runs until `stop` is set, or until every source has ended. A durable pipeline commits
    /// its WAL by the group-commit policy, checkpoints by its interval, and takes a final
    /// checkpoint when it stops or its sources have ended.
    pub fn run_live(&mut self, stop: &AtomicBool) -> Result<()> {
        self.run_live_observed(stop, Duration::MAX, &mut |_| {})
    }

    /// [`Pipeline::run_live`], calling `observe` about every `every` (and once at the start), for
    /// metrics and health: a worker that stops calling it is stuck.
    pub fn run_live_observed(
        &mut self,
        stop: &AtomicBool,
        every: Duration,
        observe: &mut dyn FnMut(&Pipeline),
    ) -> Result<()> {
        let mut last = Instant::now();
        let mut idle_rounds = 0u32;
        observe(self);
        while !stop.load(Ordering::Relaxed) && !self.all_ended() {
            if last.elapsed() >= every {
                observe(self);
                last = Instant::now();
            }
            let any = self.step()?;
            self.tick()?;
            if let Some(ticket) = self.control.pending() {
                self.checkpoint()?;
                self.notify_durable();
                self.control.served(ticket);
            }
            if any {
                idle_rounds = 0;
            } else {
                // Nothing to read: the shards' output goes out now rather than with the next step.
                self.flow_drain()?;
                // Idle for longer and longer, so an idle gateway's CPU rests; a pending group
                // commit still keeps its deadline.
                let backoff = self.idle_sleep.saturating_mul(1 << idle_rounds.min(6)).min(self.idle_sleep_max);
                idle_rounds = idle_rounds.saturating_add(1);
                let wait = self.commit_wait().map_or(backoff, |w| w.min(backoff));
                self.wakeup.wait(wait);
            }
        }
        self.flow_drain()?;
        self.graph.finish_all()?;
        if self.durable.is_some() {
            self.checkpoint()?;
            self.notify_durable();
        }
        self.graph.close_all()
    }

    /// What a live durable pipeline does after each step: group commit, a checkpoint when one
    /// is due, and acknowledgements of what became durable. Nothing for other pipelines.
    pub fn tick(&mut self) -> Result<()> {
        if self.durable.is_some() {
            self.durable_tick()?;
            self.notify_durable();
        }
        Ok(())
    }

    /// Tells every reader how far the WAL is durable, so it may acknowledge its input.
    fn notify_durable(&mut self) {
        if let Some(lsn) = self.durable_lsn() {
            for s in &mut self.sources {
                if let Some(r) = s.reader.as_mut() {
                    r.durable(lsn);
                }
            }
        }
    }

    /// Counters for metrics.
    pub fn observe(&self) -> Observation {
        Observation {
            sources: self
                .sources
                .iter()
                .map(|s| SourceObservation {
                    name: s.name.clone(),
                    stats: s.stats,
                    watermark: s.time_col.map(|_| s.watermark()).filter(|w| *w != MIN_TS),
                    connected: s.reader.as_ref().and_then(|r| r.connected()),
                })
                .collect(),
            sinks: self
                .sinks
                .iter()
                .map(|(n, id)| {
                    let (rows, dels) = self.graph.sink_counts(*id).unwrap_or((0, 0));
                    (n.clone(), rows, dels)
                })
                .collect(),
            state_bytes: self.state_bytes(),
            durable: self.durable_stats(),
            shards: self.summary.shards,
            shard_backlog: match &self.sharding {
                Sharding::Running(s) => s.in_flight(),
                _ => 0,
            },
        }
    }

    pub fn source_stats(&self) -> Vec<(String, SourceStats)> {
        self.sources.iter().map(|s| (s.name.clone(), s.stats)).collect()
    }

    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn state_bytes(&self) -> usize {
        let shards = match &self.sharding {
            Sharding::Running(s) => s.state_bytes(),
            _ => 0,
        };
        self.graph.state_bytes() + shards
    }
}

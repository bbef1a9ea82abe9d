//! Key-sharded execution of one pipeline: N copies of its operator graph, each on a worker thread
//! of its own (pinned by the caller's hook), each holding the state of the keys that hash to it.
//!
//! The pipeline's own thread stays the coordinator. It reads sources, applies the lateness rule,
//! logs to the WAL, then routes every row by its source's shard key to one shard and sends every
//! watermark to all of them, over bounded queues (one producer, one consumer each). A step's
//! commands go to every shard at once; the shards' output comes back per step and is written to the
//! sinks in a fixed order (step, then shard), so output never depends on thread timing, and a
//! recovery that replays the WAL rebuilds each shard's state exactly.
//!
//! Owns: routing (which column routes each source, and the hash), the shard threads and their
//! queues. Must never: give a shard a row whose state lives in another (the planner's
//! [`ShardNeed`]s decide the routing columns, or the pipeline is not sharded), reorder a shard's
//! input, or drop a reply (a shard that fails or stops fails the pipeline).

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, UInt64Type};

use crate::error::{EngineError, Result};
use crate::ops::graph::{Graph, NodeId};
use crate::ops::snapshot::{StateReader, StateWriter};
use crate::ops::{Chunk, Operator};
use crate::plan::ShardNeed;

/// How a source's rows are spread over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By the hash of this column's value.
    Key(usize),
    /// The source feeds no keyed state: whole batches go round the shards.
    Spread,
}

/// A source's three graph nodes (its rows, `LATE()`, `ERRORS()`) and its schema.
pub struct SourceNodes {
    pub name: String,
    pub nodes: [NodeId; 3],
    pub schema: SchemaRef,
}

/// Most routing assignments tried before giving up (sources × candidate columns is small).
const MAX_ASSIGNMENTS: usize = 4096;

/// Chooses the column that routes each source so that every stateful operator's rows that can meet
/// land in one shard. `Err` says, for the user, why the pipeline cannot be sharded.
pub fn route_plan(
    needs: &[ShardNeed],
    graph: &Graph,
    sources: &[SourceNodes],
) -> std::result::Result<Vec<Route>, String> {
    if needs.is_empty() {
        // Nothing to split: the work is the reader's, and another thread would only add a hop.
        return Err("it keeps no keyed state".into());
    }
    // Which sources feed each node through their rows (or LATE) and through ERRORS.
    let reach: Vec<(Vec<bool>, Vec<bool>)> = sources
        .iter()
        .map(|s| {
            let (main, late) = (graph.reachable(s.nodes[0]), graph.reachable(s.nodes[1]));
            (main.iter().zip(&late).map(|(a, b)| *a || *b).collect(), graph.reachable(s.nodes[2]))
        })
        .collect();
    let feeds = |node: NodeId| -> Vec<usize> { (0..sources.len()).filter(|&s| reach[s].0[node]).collect() };
    let mut candidates: Vec<Vec<usize>> = vec![vec![]; sources.len()];
    let mut involved = vec![false; sources.len()];
    for need in needs {
        if need.alternatives.is_empty() {
            return Err(format!("the {} has no key: all its rows share one state", need.op));
        }
        for part in need.alternatives.iter().flatten() {
            if let Some(s) = (0..sources.len()).find(|&s| reach[s].1[part.0]) {
                return Err(format!("the {} reads ERRORS({})", need.op, sources[s].name));
            }
            for s in feeds(part.0) {
                involved[s] = true;
                for &(src, col) in &part.1 {
                    if src == s && hashable(sources[s].schema.field(col).data_type()) && !candidates[s].contains(&col) {
                        candidates[s].push(col);
                    }
                }
            }
        }
    }
    for s in 0..sources.len() {
        if involved[s] && candidates[s].is_empty() {
            let ops: Vec<&str> = needs
                .iter()
                .filter(|n| n.alternatives.iter().flatten().any(|p| reach[s].0[p.0]))
                .map(|n| n.op.as_str())
                .collect();
            return Err(format!(
                "no column of source '{}' keys its stateful operators ({}); a shard key must be a source column passed on unchanged (of an integer, text, boolean or timestamp type)",
                sources[s].name,
                ops.join(", ")
            ));
        }
    }
    let satisfied = |choice: &[Option<usize>], need: &ShardNeed| {
        need.alternatives.iter().any(|alt| {
            alt.iter().all(|(node, origins)| {
                feeds(*node).iter().all(|&s| choice[s].is_some_and(|c| origins.contains(&(s, c))))
            })
        })
    };
    let slots: Vec<usize> = (0..sources.len()).filter(|&s| involved[s]).collect();
    let total = slots.iter().try_fold(1usize, |acc, &s| acc.checked_mul(candidates[s].len())).unwrap_or(usize::MAX);
    for n in 0..total.min(MAX_ASSIGNMENTS) {
        let mut choice: Vec<Option<usize>> = vec![None; sources.len()];
        let mut rest = n;
        for &s in &slots {
            choice[s] = Some(candidates[s][rest % candidates[s].len()]);
            rest /= candidates[s].len();
        }
        if needs.iter().all(|need| satisfied(&choice, need)) {
            return Ok(choice.into_iter().map(|c| c.map_or(Route::Spread, Route::Key)).collect());
        }
    }
    let keys: Vec<String> = needs.iter().take(MAX_NEEDS_NAMED).map(|need| keyed_by(need, sources)).collect();
    let more = needs.len().saturating_sub(MAX_NEEDS_NAMED);
    Err(format!(
        "its stateful operators keep state by different columns, and no one column of each source keys them all: {}{}",
        keys.join("; "),
        if more > 0 { format!("; and {more} more") } else { String::new() }
    ))
}

/// Most stateful operators a "cannot shard" message lists (with their keys).
const MAX_NEEDS_NAMED: usize = 8;

/// How `need` keeps its state, for a user: "GROUP BY of view 'per_site' by readings.site" (the
/// source columns any one of which would key it).
fn keyed_by(need: &ShardNeed, sources: &[SourceNodes]) -> String {
    let column = |&(s, c): &(usize, usize)| format!("{}.{}", sources[s].name, sources[s].schema.field(c).name());
    let mut alternatives: Vec<String> = Vec::new();
    for alt in &need.alternatives {
        // A key computed from the input (a window's bounds) cannot route rows; say so only if
        // nothing else keys the operator.
        if alt.iter().any(|(_, origins)| origins.is_empty()) {
            continue;
        }
        let parts: Vec<String> =
            alt.iter().map(|(_, origins)| origins.iter().map(column).collect::<Vec<_>>().join(" and ")).collect();
        let text = parts.join(" = ");
        if !alternatives.contains(&text) {
            alternatives.push(text);
        }
    }
    match alternatives.is_empty() {
        true => format!("{} by computed values only", need.op),
        false => format!("{} by {}", need.op, alternatives.join(" or ")),
    }
}

/// Types a shard key may have: the hash is defined on their values, not on Arrow's layout.
pub fn hashable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::Timestamp(_, _)
            | DataType::Date32
    )
}

/// The shard of each row of `col`, into `out`: XXH3-64 (a specified function, so routing and the
/// shards' checkpointed state agree across restarts and builds) of the value as 8 little-endian
/// bytes for integers, its bytes for text. Nulls go to shard 0.
pub fn shard_of_rows(col: &ArrayRef, shards: usize, out: &mut Vec<u32>) -> Result<()> {
    use twox_hash::XxHash3_64;
    out.clear();
    let n = shards as u64;
    let pick = |bytes: &[u8]| (XxHash3_64::oneshot(bytes) % n) as u32;
    match col.data_type() {
        // Widened first, so equal values of any width land in one shard.
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Date32
        | DataType::Timestamp(_, _) => {
            let a = arrow::compute::cast(col, &DataType::Int64)?;
            let a = a.as_primitive::<Int64Type>();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(&a.value(i).to_le_bytes()) }));
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let a = arrow::compute::cast(col, &DataType::UInt64)?;
            let a = a.as_primitive::<UInt64Type>();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(&a.value(i).to_le_bytes()) }));
        }
        DataType::Boolean => {
            let a = col.as_boolean();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(&[a.value(i) as u8]) }));
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(a.value(i).as_bytes()) }));
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(a.value(i).as_bytes()) }));
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(a.value(i).as_bytes()) }));
        }
        DataType::Binary => {
            let a = col.as_binary::<i32>();
            out.extend((0..a.len()).map(|i| if a.is_null(i) { 0 } else { pick(a.value(i)) }));
        }
        other => return Err(EngineError::Internal(format!("a shard key of type {other}"))),
    }
    Ok(())
}

/// Stands in a shard's graph for a sink: what reaches it goes back to the coordinator, which
/// owns the real sink.
pub struct Capture {
    pub sink: NodeId,
    pub out: Arc<Mutex<Vec<(NodeId, Chunk)>>>,
}

impl Operator for Capture {
    fn name(&self) -> String {
        "sink capture".into()
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        self.out
            .lock()
            .map_err(|_| EngineError::Internal("a shard's output lock is poisoned".into()))?
            .push((self.sink, chunk));
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }
}

/// A shard's graph before its thread starts.
pub struct ShardGraph {
    pub graph: Graph,
    pub captured: Arc<Mutex<Vec<(NodeId, Chunk)>>>,
}

enum Op {
    Push(NodeId, Chunk),
    Advance(NodeId, i64),
}

enum Cmd {
    Step(Vec<Op>),
    Snapshot,
    Restore(Vec<Vec<u8>>),
}

/// A step's output (sink node, rows), and the shard's state bytes (as of [`STATE_BYTES_RECOUNT_MS`]).
type StepOutput = (Vec<(NodeId, Chunk)>, usize);

enum Reply {
    Step(Result<StepOutput>),
    Blobs(Result<Vec<Vec<u8>>>),
    Restored(Result<()>),
}

struct Worker {
    tx: Option<SyncSender<Cmd>>,
    rx: Receiver<Reply>,
    /// Step replies received but not yet merged (they are merged in step order, shard by shard).
    ready: VecDeque<Result<StepOutput>>,
    thread: Option<JoinHandle<()>>,
}

/// Called on each shard thread as it starts, with the shard's index (the daemon pins it to a core).
pub type ShardThreadHook = Arc<dyn Fn(usize) + Send + Sync>;

/// The running shards of one pipeline.
pub struct Shards {
    workers: Vec<Worker>,
    /// Per graph node: the source whose rows enter there, and which of its nodes it is (0 rows,
    /// 1 LATE, 2 ERRORS).
    entry: Vec<Option<(usize, usize)>>,
    routes: Vec<Route>,
    /// The current step's commands, per shard.
    pending: Vec<Vec<Op>>,
    /// Steps sent whose output has not been merged; at most `max_in_flight`.
    in_flight: usize,
    max_in_flight: usize,
    state_bytes: Vec<usize>,
    /// Per graph node, the last watermark sent (one that does not move is not sent again).
    sent_wm: Vec<i64>,
    spread_next: usize,
    scratch: Vec<u32>,
}

impl Shards {
    /// Starts one thread per graph. `queue` bounds the steps in flight (and each queue).
    pub fn start(
        graphs: Vec<ShardGraph>,
        sources: &[SourceNodes],
        routes: Vec<Route>,
        queue: usize,
        hook: Option<ShardThreadHook>,
    ) -> Result<Shards> {
        let n = graphs.len();
        let queue = queue.max(1);
        let nodes = graphs.first().map(|g| g.graph.len()).unwrap_or(0);
        let mut entry = vec![None; nodes];
        for (i, s) in sources.iter().enumerate() {
            for (k, &node) in s.nodes.iter().enumerate() {
                entry[node] = Some((i, k));
            }
        }
        let mut workers = Vec::with_capacity(n);
        for (k, g) in graphs.into_iter().enumerate() {
            let (tx, cmd_rx) = sync_channel::<Cmd>(queue);
            // One more than the steps in flight, so a shard never blocks on its reply.
            let (reply_tx, rx) = sync_channel::<Reply>(queue + 1);
            let hook = hook.clone();
            let thread = std::thread::Builder::new()
                .name(format!("eddy-shard{k}"))
                .spawn(move || {
                    if let Some(h) = hook {
                        h(k);
                    }
                    shard_loop(g, cmd_rx, reply_tx)
                })
                .map_err(|e| EngineError::io("<thread>", e))?;
            workers.push(Worker { tx: Some(tx), rx, ready: VecDeque::new(), thread: Some(thread) });
        }
        Ok(Shards {
            workers,
            entry,
            routes,
            pending: (0..n).map(|_| Vec::new()).collect(),
            in_flight: 0,
            max_in_flight: queue,
            state_bytes: vec![0; n],
            sent_wm: vec![crate::time::MIN_TS; nodes],
            spread_next: 0,
            scratch: Vec::new(),
        })
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Steps sent to the shards whose output is not merged yet (a measure of how far behind they are).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn state_bytes(&self) -> usize {
        self.state_bytes.iter().sum()
    }

    /// Routes rows entering at a source's node to their shards (sent with the step).
    pub fn push(&mut self, node: NodeId, chunk: Chunk) -> Result<()> {
        if chunk.num_rows() == 0 {
            return Ok(());
        }
        let (source, kind) = self
            .entry
            .get(node)
            .copied()
            .flatten()
            .ok_or_else(|| EngineError::Internal(format!("rows pushed into node {node}, which no source feeds")))?;
        let n = self.workers.len();
        let route = if kind == 2 { None } else { Some(self.routes[source]) };
        match route {
            // ERRORS rows feed no keyed state (the routing plan checked): one shard has them all.
            None => self.pending[0].push(Op::Push(node, chunk)),
            Some(Route::Spread) => {
                let k = self.spread_next % n;
                self.spread_next = self.spread_next.wrapping_add(1);
                self.pending[k].push(Op::Push(node, chunk));
            }
            Some(Route::Key(col)) => {
                shard_of_rows(chunk.batch.column(col), n, &mut self.scratch)?;
                let first = self.scratch.first().copied().unwrap_or(0);
                if self.scratch.iter().all(|&s| s == first) {
                    self.pending[first as usize].push(Op::Push(node, chunk));
                    return Ok(());
                }
                let mut idx: Vec<Vec<u32>> = vec![Vec::new(); n];
                for (row, &s) in self.scratch.iter().enumerate() {
                    idx[s as usize].push(row as u32);
                }
                for (k, rows) in idx.into_iter().enumerate() {
                    if rows.is_empty() {
                        continue;
                    }
                    let rows = UInt32Array::from(rows);
                    let batch: RecordBatch = take_record_batch(&chunk.batch, &rows)?;
                    let kinds = chunk.kinds.as_ref().map(|kd| rows.values().iter().map(|&r| kd[r as usize]).collect());
                    self.pending[k].push(Op::Push(node, Chunk { batch, kinds }));
                }
            }
        }
        Ok(())
    }

    /// A watermark for a source's node: every shard gets it.
    pub fn advance(&mut self, node: NodeId, wm: i64) {
        match self.sent_wm.get_mut(node) {
            Some(last) if *last >= wm => return,
            Some(last) => *last = wm,
            None => {}
        }
        for p in &mut self.pending {
            p.push(Op::Advance(node, wm));
        }
    }

    /// Sends the step built by `push`/`advance` to every shard; merges the output of steps that
    /// are done into `out` (sink node, rows), in order. Blocks when `max_in_flight` steps are out.
    pub fn send_step(&mut self, out: &mut dyn FnMut(NodeId, Chunk) -> Result<()>) -> Result<()> {
        if self.pending.iter().all(|p| p.is_empty()) {
            return self.collect(false, out);
        }
        while self.in_flight >= self.max_in_flight {
            self.collect_one(true, out)?;
        }
        for (k, w) in self.workers.iter_mut().enumerate() {
            let ops = std::mem::take(&mut self.pending[k]);
            let tx = w.tx.as_ref().ok_or_else(|| EngineError::Internal("shard queue closed".into()))?;
            tx.send(Cmd::Step(ops)).map_err(|_| EngineError::Internal(format!("shard {k} stopped")))?;
        }
        self.in_flight += 1;
        self.collect(false, out)
    }

    /// Merges every step still out (blocking until the shards have done them).
    pub fn drain(&mut self, out: &mut dyn FnMut(NodeId, Chunk) -> Result<()>) -> Result<()> {
        self.collect(true, out)
    }

    fn collect(&mut self, block: bool, out: &mut dyn FnMut(NodeId, Chunk) -> Result<()>) -> Result<()> {
        while self.in_flight > 0 {
            if !self.collect_one(block, out)? {
                break;
            }
        }
        Ok(())
    }

    /// Merges the oldest step if every shard has replied to it; returns whether it did.
    fn collect_one(&mut self, block: bool, out: &mut dyn FnMut(NodeId, Chunk) -> Result<()>) -> Result<bool> {
        for (k, w) in self.workers.iter_mut().enumerate() {
            if !w.ready.is_empty() {
                continue;
            }
            let reply = if block {
                w.rx.recv().map_err(|_| EngineError::Internal(format!("shard {k} stopped")))?
            } else {
                match w.rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => return Ok(false),
                    Err(TryRecvError::Disconnected) => return Err(EngineError::Internal(format!("shard {k} stopped"))),
                }
            };
            match reply {
                Reply::Step(r) => w.ready.push_back(r),
                _ => return Err(EngineError::Internal(format!("shard {k} answered out of turn"))),
            }
        }
        self.in_flight -= 1;
        for k in 0..self.workers.len() {
            let r =
                self.workers[k].ready.pop_front().ok_or_else(|| EngineError::Internal("shard reply missing".into()))?;
            let (chunks, bytes) = r?;
            self.state_bytes[k] = bytes;
            for (sink, chunk) in chunks {
                out(sink, chunk)?;
            }
        }
        Ok(true)
    }

    /// Sends one command to each shard (all at once, so they work on it together), then
    /// collects their replies in shard order. Only between steps.
    fn call_all(&mut self, mut cmd: impl FnMut(usize) -> Cmd) -> Result<Vec<Reply>> {
        if self.in_flight != 0 || self.pending.iter().any(|p| !p.is_empty()) {
            return Err(EngineError::Internal("shards called with a step out".into()));
        }
        for (k, w) in self.workers.iter().enumerate() {
            let tx = w.tx.as_ref().ok_or_else(|| EngineError::Internal("shard queue closed".into()))?;
            tx.send(cmd(k)).map_err(|_| EngineError::Internal(format!("shard {k} stopped")))?;
        }
        self.workers
            .iter()
            .enumerate()
            .map(|(k, w)| w.rx.recv().map_err(|_| EngineError::Internal(format!("shard {k} stopped"))))
            .collect()
    }

    /// Every shard's node states, in node order (call [`Shards::drain`] first).
    pub fn snapshot(&mut self) -> Result<Vec<Vec<Vec<u8>>>> {
        self.call_all(|_| Cmd::Snapshot)?
            .into_iter()
            .map(|r| match r {
                Reply::Blobs(r) => r,
                _ => Err(EngineError::Internal("a shard answered out of turn".into())),
            })
            .collect()
    }

    /// Restores each shard's nodes from what [`Shards::snapshot`] gave.
    pub fn restore(&mut self, mut blobs: Vec<Vec<Vec<u8>>>) -> Result<()> {
        if blobs.len() != self.workers.len() {
            return Err(EngineError::Internal("shard states for another shard count".into()));
        }
        for r in self.call_all(|k| Cmd::Restore(std::mem::take(&mut blobs[k])))? {
            match r {
                Reply::Restored(r) => r?,
                _ => return Err(EngineError::Internal("a shard answered out of turn".into())),
            }
        }
        Ok(())
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the queue ends the thread's loop.
            w.tx = None;
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// How long a shard's count of its state bytes may stand before it is counted again. Counting
/// walks every group of every operator, so a count per step would make each step cost as much as
/// the state is large; the count is for stats and metrics, where a second-old figure is fine.
const STATE_BYTES_RECOUNT_MS: u64 = 1000;

/// A shard's state bytes as last counted, and when.
#[derive(Default)]
struct StateBytesGauge {
    counted_at: Option<Instant>,
    bytes: usize,
}

impl StateBytesGauge {
    /// The bytes as of `now`: `count()`'s, when the last count is older than the recount interval.
    fn read(&mut self, now: Instant, count: impl FnOnce() -> usize) -> usize {
        let stale = self
            .counted_at
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_millis(STATE_BYTES_RECOUNT_MS));
        if stale {
            self.bytes = count();
            self.counted_at = Some(now);
        }
        self.bytes
    }
}

fn shard_loop(mut g: ShardGraph, rx: Receiver<Cmd>, tx: SyncSender<Reply>) {
    let mut gauge = StateBytesGauge::default();
    while let Ok(cmd) = rx.recv() {
        let reply = match cmd {
            Cmd::Step(ops) => Reply::Step(
                run_step(&mut g, ops).map(|out| (out, gauge.read(Instant::now(), || g.graph.state_bytes()))),
            ),
            Cmd::Snapshot => Reply::Blobs(
                (0..g.graph.len())
                    .map(|id| {
                        let mut w = StateWriter::default();
                        g.graph.snapshot_node(id, &mut w)?;
                        Ok(w.buf)
                    })
                    .collect(),
            ),
            Cmd::Restore(blobs) => {
                gauge = StateBytesGauge::default();
                Reply::Restored(restore(&mut g.graph, &blobs))
            }
        };
        if tx.send(reply).is_err() {
            return;
        }
    }
}

fn run_step(g: &mut ShardGraph, ops: Vec<Op>) -> Result<Vec<(NodeId, Chunk)>> {
    for op in ops {
        match op {
            Op::Push(node, chunk) => g.graph.push(node, 0, chunk)?,
            Op::Advance(node, wm) => g.graph.advance(node, 0, wm)?,
        }
    }
    Ok(std::mem::take(
        &mut *g.captured.lock().map_err(|_| EngineError::Internal("a shard's output lock is poisoned".into()))?,
    ))
}

fn restore(graph: &mut Graph, blobs: &[Vec<u8>]) -> Result<()> {
    if blobs.len() != graph.len() {
        return Err(EngineError::State(format!(
            "a shard's checkpoint has {} operators; the pipeline has {}",
            blobs.len(),
            graph.len()
        )));
    }
    for (id, b) in blobs.iter().enumerate() {
        let what = format!("shard node {id}");
        let mut r = StateReader::new(b, &what);
        graph.restore_node(id, &mut r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn equal_values_of_any_integer_width_go_to_one_shard_and_the_hash_is_fixed() {
        let a: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(5), None, Some(-3)]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), None, Some(-3)]));
        let (mut x, mut y) = (vec![], vec![]);
        shard_of_rows(&a, 7, &mut x).unwrap();
        shard_of_rows(&b, 7, &mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!(x[1], 0, "nulls go to shard 0");
        // XXH3-64 of "dev-1" (Python: xxhash.xxh3_64_intdigest(b"dev-1")), pinned: routing must
        // not change between builds, or recovered shards would hold other shards' keys.
        let s: ArrayRef = Arc::new(StringArray::from(vec!["dev-1"]));
        shard_of_rows(&s, 1 << 31, &mut x).unwrap();
        assert_eq!(x[0] as u64, 7042560120561957536 % (1 << 31));
    }

    #[test]
    fn state_bytes_are_recounted_once_the_last_count_is_a_second_old() {
        let mut gauge = StateBytesGauge::default();
        let t0 = Instant::now();
        let counts = std::cell::Cell::new(0);
        let count = |bytes: usize| {
            counts.set(counts.get() + 1);
            bytes
        };
        assert_eq!(gauge.read(t0, || count(100)), 100, "the first step counts");
        assert_eq!(gauge.read(t0 + Duration::from_millis(STATE_BYTES_RECOUNT_MS - 1), || count(200)), 100);
        assert_eq!(gauge.read(t0 + Duration::from_millis(STATE_BYTES_RECOUNT_MS), || count(300)), 300);
        assert_eq!(counts.get(), 2, "steps within the interval reuse the count");
        // A restore starts a new gauge: its first step counts again.
        let mut gauge = StateBytesGauge::default();
        assert_eq!(gauge.read(t0, || count(7)), 7);
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let s: ArrayRef = Arc::new(StringArray::from((0..1000).map(|i| format!("device-{i}")).collect::<Vec<_>>()));
        let mut x = vec![];
        shard_of_rows(&s, 4, &mut x).unwrap();
        for k in 0..4 {
            let n = x.iter().filter(|&&v| v == k).count();
            assert!((150..350).contains(&n), "shard {k} has {n} of 1000 keys");
        }
    }
}

//! The dataflow graph: operators as nodes, edges from an output to an input port. Pushing a chunk
//! into a node runs it and everything downstream, depth first; a node's input watermark is the
//! minimum of its inputs' watermarks.

use std::sync::Arc;

use super::{Chunk, Operator};
use crate::error::{EngineError, Result};
use crate::query::LiveView;
use crate::time::MIN_TS;

pub type NodeId = usize;

struct Node {
    op: Box<dyn Operator>,
    /// Watermark seen on each input port.
    input_wms: Vec<i64>,
    /// Minimum over `input_wms` last handed to the operator.
    in_wm: i64,
    /// Watermark of the node's output.
    out_wm: i64,
    outputs: Vec<(NodeId, usize)>,
    /// Materialized views whose rows this node's output carries (kept for on-demand queries),
    /// with the part of each this graph fills.
    views: Vec<(Arc<LiveView>, usize)>,
    /// The statement the node was planned for ("sink 'alerts'"), named in its errors.
    owner: Option<Arc<str>>,
}

#[derive(Default)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Given to the nodes added from now on: see [`Graph::plan_for`].
    owner: Option<Arc<str>>,
}

impl Graph {
    pub fn add(&mut self, op: Box<dyn Operator>, inputs: usize) -> NodeId {
        self.nodes.push(Node {
            op,
            input_wms: vec![MIN_TS; inputs.max(1)],
            in_wm: MIN_TS,
            out_wm: MIN_TS,
            outputs: vec![],
            views: vec![],
            owner: self.owner.clone(),
        });
        self.nodes.len() - 1
    }

    /// Nodes added from now on belong to `owner` (e.g. "view 'bars_1m'"), which their
    /// evaluation errors name.
    pub fn plan_for(&mut self, owner: &str) {
        self.owner = Some(owner.into());
    }

    /// An error of node `id`'s operator: one that evaluating an expression raised (e.g. an
    /// integer division by zero) names the statement and operator and keeps only DataFusion's
    /// innermost message; the others already say where they come from.
    fn in_node(&self, id: NodeId, e: EngineError) -> EngineError {
        let message = match e {
            EngineError::DataFusion(e) => e.find_root().message().into_owned(),
            EngineError::Arrow(e) => e.to_string(),
            e => return e,
        };
        let node = &self.nodes[id];
        let at = match &node.owner {
            Some(owner) => format!("{owner} ({})", node.op.name()),
            None => node.op.name(),
        };
        EngineError::Eval { at, message }
    }

    /// Connects the output of `from` to input `port` of `to`.
    pub fn connect(&mut self, from: NodeId, to: NodeId, port: usize) {
        self.nodes[from].outputs.push((to, port));
        if self.nodes[to].input_wms.len() <= port {
            self.nodes[to].input_wms.resize(port + 1, MIN_TS);
        }
    }

    /// Folds everything node `id` outputs into part `part` of `view` too.
    pub fn attach_view(&mut self, id: NodeId, view: Arc<LiveView>, part: usize) {
        self.nodes[id].views.push((view, part));
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn name(&self, id: NodeId) -> String {
        self.nodes[id].op.name()
    }

    /// Which nodes `from` reaches (itself included), by node id.
    pub fn reachable(&self, from: NodeId) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        let mut todo = vec![from];
        while let Some(n) = todo.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            todo.extend(self.nodes[n].outputs.iter().map(|(to, _)| *to));
        }
        seen
    }

    pub fn state_bytes(&self) -> usize {
        self.nodes.iter().map(|n| n.op.state_bytes()).sum()
    }

    /// The first operator that cannot be checkpointed, if any.
    pub fn not_checkpointable(&self) -> Option<String> {
        self.nodes.iter().find(|n| !n.op.checkpointable()).map(|n| n.op.name())
    }

    /// State of node `id` for a checkpoint: its watermarks, then the operator's own state.
    pub fn snapshot_node(&mut self, id: NodeId, w: &mut super::snapshot::StateWriter) -> Result<()> {
        let n = &mut self.nodes[id];
        w.u64(n.input_wms.len() as u64);
        n.input_wms.iter().for_each(|&x| w.i64(x));
        w.i64(n.in_wm);
        w.i64(n.out_wm);
        n.op.snapshot(w)
    }

    /// Tells every operator what state the pipeline opened ([`super::Operator::state_opened`]).
    pub fn state_opened(&mut self, state: &super::OpenedState) {
        self.nodes.iter_mut().for_each(|n| n.op.state_opened(state));
    }

    pub fn restore_node(&mut self, id: NodeId, r: &mut super::snapshot::StateReader) -> Result<()> {
        let n = &mut self.nodes[id];
        let ports = r.count(8)?;
        if ports != n.input_wms.len() {
            return Err(r.err("an input count mismatch"));
        }
        for wm in n.input_wms.iter_mut() {
            *wm = r.i64()?;
        }
        n.in_wm = r.i64()?;
        n.out_wm = r.i64()?;
        n.op.restore(r)?;
        r.finish()
    }

    pub fn node_state_bytes(&self, id: NodeId) -> usize {
        self.nodes[id].op.state_bytes()
    }

    /// A checkpoint is durable: sinks publish their staged output.
    pub fn checkpoint_committed(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.op.on_checkpoint_committed())
    }

    /// Opens every operator's outputs (sinks).
    pub fn start_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.op.start())
    }

    /// Flushes every operator (sinks).
    pub fn finish_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.op.finish())
    }

    /// A sink node's rows and retractions written.
    pub fn sink_counts(&self, id: NodeId) -> Option<(u64, u64)> {
        self.nodes.get(id).and_then(|n| n.op.sink_counts())
    }

    /// Closes every operator's outputs (sinks), after the final checkpoint.
    pub fn close_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.op.close())
    }

    /// Runs `chunk` through node `id` (input `port`) and everything downstream of it.
    pub fn push(&mut self, id: NodeId, port: usize, chunk: Chunk) -> Result<()> {
        if chunk.num_rows() == 0 {
            return Ok(());
        }
        let mut out = Vec::new();
        self.nodes[id].op.on_chunk(port, chunk, &mut out).map_err(|e| self.in_node(id, e))?;
        self.forward(id, out)
    }

    fn forward(&mut self, id: NodeId, out: Vec<Chunk>) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        for (view, part) in &self.nodes[id].views {
            out.iter().for_each(|c| view.offer(*part, c));
        }
        let targets = self.nodes[id].outputs.clone();
        for chunk in out {
            for &(t, p) in &targets {
                self.push(t, p, chunk.clone())?;
            }
        }
        Ok(())
    }

    /// Raises the watermark on input `port` of node `id`; watermarks never go back.
    pub fn advance(&mut self, id: NodeId, port: usize, wm: i64) -> Result<()> {
        let node = &mut self.nodes[id];
        if wm <= node.input_wms[port] {
            return Ok(());
        }
        node.input_wms[port] = wm;
        let min = node.input_wms.iter().copied().min().unwrap_or(wm);
        if min <= node.in_wm {
            return Ok(());
        }
        node.in_wm = min;
        let mut out = Vec::new();
        let out_wm = node.op.on_watermark(min, &mut out).map_err(|e| self.in_node(id, e))?;
        self.forward(id, out)?;
        let node = &mut self.nodes[id];
        if out_wm > node.out_wm {
            node.out_wm = out_wm;
            let targets = node.outputs.clone();
            for (t, p) in targets {
                self.advance(t, p, out_wm)?;
            }
        }
        Ok(())
    }
}

/// Forwards rows and watermarks unchanged (a source's outputs).
pub struct Passthrough(pub String);

impl Operator for Passthrough {
    fn checkpointable(&self) -> bool {
        true // stateless
    }
    fn name(&self) -> String {
        self.0.clone()
    }
    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        out.push(chunk);
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
        Ok(wm)
    }
}

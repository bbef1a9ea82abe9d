//! `MATCH_RECOGNIZE`: rows are matched per partition in event-time order, once the watermark has
//! passed them (so late-arriving order never changes a match).
//!
//! The PATTERN is compiled to a small backtracking program ([`Inst`]); alternatives are tried in
//! the standard preference order (greedy: more rows first, reluctant: fewer, alternation: left
//! first), and the first complete match wins. When the preferred path needs a row that is not
//! final yet, the attempt waits ("need more") instead of settling for a worse match. `WITHIN` cuts
//! a path at the first row past the bound — or once the watermark shows no such row can come —
//! and with `EMIT TIMEOUTS` the longest cut-off partial match is emitted with status 'timeout'.
//!
//! State: per partition, the rows from the current match attempt on (plus the rows `PREV` can
//! reach back to); rows waiting for the watermark are held once, in the operator's row store.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion_common::ScalarValue;
use datafusion_physical_expr::PhysicalExpr;

use super::rows::{KeyEncoder, RowRef, RowStore};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};
use crate::sql::pattern::{Nav, NavKind, Pat, PatternDef, Skip};
use crate::time::MAX_TS;

/// Most backtracking steps one match attempt may take before the query is called too ambiguous.
pub const MAX_STEPS_PER_ATTEMPT: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
enum Inst {
    Var(u16),
    /// Try the first target, then the second.
    Split(usize, usize),
    Jmp(usize),
    Match,
}

fn compile(p: &Pat, prog: &mut Vec<Inst>) {
    match p {
        Pat::Var(v) => prog.push(Inst::Var(*v as u16)),
        Pat::Concat(ps) => ps.iter().for_each(|p| compile(p, prog)),
        Pat::Alt(ps) => {
            let mut jumps = Vec::new();
            for (i, p) in ps.iter().enumerate() {
                if i + 1 == ps.len() {
                    compile(p, prog);
                } else {
                    let split = prog.len();
                    prog.push(Inst::Split(split + 1, 0));
                    compile(p, prog);
                    jumps.push(prog.len());
                    prog.push(Inst::Jmp(0));
                    let next = prog.len();
                    prog[split] = Inst::Split(split + 1, next);
                }
            }
            let end = prog.len();
            for j in jumps {
                prog[j] = Inst::Jmp(end);
            }
        }
        Pat::Repeat { pat, min, max, greedy } => {
            for _ in 0..*min {
                compile(pat, prog);
            }
            let choice =
                |body: usize, end: usize| if *greedy { Inst::Split(body, end) } else { Inst::Split(end, body) };
            match max {
                Some(m) => {
                    let mut splits = Vec::new();
                    for _ in *min..*m {
                        splits.push(prog.len());
                        prog.push(Inst::Jmp(0));
                        compile(pat, prog);
                    }
                    let end = prog.len();
                    for s in splits {
                        prog[s] = choice(s + 1, end);
                    }
                }
                None => {
                    let split = prog.len();
                    prog.push(Inst::Jmp(0));
                    compile(pat, prog);
                    prog.push(Inst::Jmp(split));
                    let end = prog.len();
                    prog[split] = choice(split + 1, end);
                }
            }
        }
    }
}

/// The compiled parts of a pattern query.
pub struct PatternExprs {
    pub defines: Vec<Option<Arc<dyn PhysicalExpr>>>,
    pub define_schema: SchemaRef,
    pub measures: Vec<Arc<dyn PhysicalExpr>>,
    pub measure_schema: SchemaRef,
}

struct Partition {
    /// Final rows in event-time order: (row, time).
    rows: VecDeque<(RowRef, i64)>,
    /// Absolute index of `rows[0]`.
    base: u64,
    /// Absolute index where the next match attempt starts.
    start: u64,
    /// Per row and variable: condition value of history-free DEFINEs (0 unknown, 1 false, 2 true).
    cache: VecDeque<u8>,
}

enum Attempt {
    Matched { end: u64, assign: Vec<u16> },
    Failed { cut: Option<Vec<u16>> },
    NeedMore,
}

enum Cond {
    Yes,
    No,
    NeedMore,
}

pub struct MatchRecognizeOp {
    def: Arc<PatternDef>,
    exprs: PatternExprs,
    prog: Vec<Inst>,
    /// Per variable: its DEFINE needs the match's variable mapping.
    history: Vec<bool>,
    /// Per variable and navigation placeholder: whether its DEFINE reads the placeholder.
    define_uses: Vec<Vec<bool>>,
    lag: i64,
    /// Farthest PREV reach: rows kept behind the attempt start.
    reach_back: u64,
    out_schema: SchemaRef,
    in_schema: SchemaRef,
    store: RowStore,
    encoder: KeyEncoder,
    part_ids: HashMap<Box<[u8]>, u32>,
    parts: Vec<Partition>,
    waiting: BTreeMap<(i64, u64), (u32, RowRef)>,
    seq: u64,
    /// Partitions whose attempt waits for rows: (deadline for WITHIN, partition).
    blocked: BinaryHeap<Reverse<(i64, u32)>>,
    blocked_set: HashSet<u32>,
    held: usize,
    limits: Limits,
}

/// One finished attempt to emit.
struct Found {
    part: u32,
    start: u64,
    assign: Vec<u16>,
    timeout: bool,
}

impl MatchRecognizeOp {
    pub fn new(
        def: Arc<PatternDef>,
        exprs: PatternExprs,
        in_schema: &SchemaRef,
        out_schema: SchemaRef,
        lag: i64,
        limits: Limits,
    ) -> Result<Self> {
        let mut prog = Vec::new();
        compile(&def.pattern, &mut prog);
        prog.push(Inst::Match);
        let define_uses: Vec<Vec<bool>> = def
            .defines
            .iter()
            .map(|d| (0..def.define_navs.navs.len()).map(|i| d.as_ref().is_some_and(|e| uses(e, i))).collect())
            .collect();
        let history = (0..def.vars.len())
            .map(|v| def.define_navs.navs.iter().enumerate().any(|(i, n)| define_uses[v][i] && n.needs_history(v)))
            .collect();
        let reach_back = def
            .define_navs
            .navs
            .iter()
            .chain(&def.measure_navs.navs)
            .map(|n| if let NavKind::Prev(k) = n.kind { k as u64 } else { 0 })
            .max()
            .unwrap_or(0);
        let key_types = if def.partition_by.is_empty() {
            vec![DataType::Boolean]
        } else {
            def.partition_by.iter().map(|&c| in_schema.field(c).data_type().clone()).collect()
        };
        Ok(MatchRecognizeOp {
            prog,
            history,
            define_uses,
            lag,
            reach_back,
            out_schema,
            in_schema: in_schema.clone(),
            store: RowStore::new(in_schema),
            encoder: KeyEncoder::new(key_types)?,
            part_ids: HashMap::new(),
            parts: Vec::new(),
            waiting: BTreeMap::new(),
            seq: 0,
            blocked: BinaryHeap::new(),
            blocked_set: HashSet::new(),
            held: 0,
            limits,
            def,
            exprs,
        })
    }

    fn nvars(&self) -> usize {
        self.def.vars.len()
    }

    /// The row at absolute index `i` of partition `p`, if held.
    fn row(&self, p: &Partition, i: u64) -> Option<(RowRef, i64)> {
        i.checked_sub(p.base).and_then(|k| p.rows.get(k as usize)).copied()
    }

    /// Runs match attempts in partition `pid` until one needs rows not final yet.
    fn run_partition(&mut self, pid: u32, frontier: i64, found: &mut Vec<Found>) -> Result<()> {
        let final_all = frontier == MAX_TS;
        loop {
            let p = &self.parts[pid as usize];
            let end = p.base + p.rows.len() as u64;
            if p.start >= end {
                break;
            }
            let start = p.start;
            match self.attempt(pid, start, frontier, final_all)? {
                Attempt::Matched { end, assign } => {
                    let next = match self.def.skip {
                        Skip::PastLastRow => end,
                        Skip::ToNextRow => start + 1,
                        Skip::ToFirst(v) => {
                            assign.iter().position(|&a| a as usize == v).map(|j| start + j as u64).unwrap_or(start + 1)
                        }
                        Skip::ToLast(v) => {
                            assign.iter().rposition(|&a| a as usize == v).map(|j| start + j as u64).unwrap_or(start + 1)
                        }
                    };
                    // Skipping to the start again would find the same match forever.
                    self.parts[pid as usize].start = next.max(start + 1);
                    found.push(Found { part: pid, start, assign, timeout: false });
                }
                Attempt::Failed { cut } => {
                    if let (Some(assign), true) = (cut, self.def.emit_timeouts) {
                        found.push(Found { part: pid, start, assign, timeout: true });
                    }
                    self.parts[pid as usize].start = start + 1;
                }
                Attempt::NeedMore => {
                    if self.blocked_set.insert(pid) {
                        let first = self.row(&self.parts[pid as usize], start).map(|r| r.1).unwrap_or(MAX_TS);
                        let deadline = self.def.within.map(|d| first.saturating_add(d)).unwrap_or(MAX_TS);
                        self.blocked.push(Reverse((deadline, pid)));
                    }
                    return Ok(());
                }
            }
        }
        self.blocked_set.remove(&pid);
        Ok(())
    }

    /// One match attempt from absolute row `start`.
    fn attempt(&mut self, pid: u32, start: u64, frontier: i64, final_all: bool) -> Result<Attempt> {
        let first_ts = self.row(&self.parts[pid as usize], start).map(|r| r.1).unwrap_or(MAX_TS);
        let bound = self.def.within.map(|d| first_ts.saturating_add(d));
        let mut stack: Vec<(usize, u64, usize)> = Vec::new();
        let mut assign: Vec<u16> = Vec::new();
        let mut best_cut: Option<Vec<u16>> = None;
        let (mut pc, mut pos) = (0usize, start);
        let mut steps = 0usize;
        loop {
            steps += 1;
            if steps > MAX_STEPS_PER_ATTEMPT {
                return Err(EngineError::Limit(format!(
                    "MATCH_RECOGNIZE: one match attempt took more than {MAX_STEPS_PER_ATTEMPT} steps; make the PATTERN less ambiguous or add WITHIN"
                )));
            }
            let mut fail = false;
            match self.prog[pc] {
                Inst::Match => return Ok(Attempt::Matched { end: pos, assign }),
                Inst::Jmp(t) => pc = t,
                Inst::Split(a, b) => {
                    stack.push((b, pos, assign.len()));
                    pc = a;
                }
                Inst::Var(v) => {
                    let row = self.row(&self.parts[pid as usize], pos);
                    let cut = match (row, bound) {
                        (Some((_, t)), Some(b)) => t > b,
                        // No such row yet: every future row comes at or after the frontier.
                        (None, Some(b)) => frontier > b,
                        _ => false,
                    };
                    if cut {
                        if self.def.emit_timeouts
                            && best_cut.as_ref().is_none_or(|c| c.len() < assign.len())
                            && !assign.is_empty()
                        {
                            best_cut = Some(assign.clone());
                        }
                        fail = true;
                    } else if row.is_none() {
                        if !final_all {
                            return Ok(Attempt::NeedMore);
                        }
                        fail = true;
                    } else {
                        assign.push(v);
                        match self.condition(pid, v as usize, start, pos, &assign, final_all)? {
                            Cond::Yes => {
                                pos += 1;
                                pc += 1;
                            }
                            Cond::No => {
                                assign.pop();
                                fail = true;
                            }
                            Cond::NeedMore => return Ok(Attempt::NeedMore),
                        }
                    }
                }
            }
            if fail {
                match stack.pop() {
                    Some((p, at, len)) => {
                        pc = p;
                        pos = at;
                        assign.truncate(len);
                    }
                    None => return Ok(Attempt::Failed { cut: best_cut }),
                }
            }
        }
    }

    /// DEFINE of variable `v` for the row at `pos`, with `assign` the mapping so far (ending in `v`).
    fn condition(&mut self, pid: u32, v: usize, start: u64, pos: u64, assign: &[u16], final_all: bool) -> Result<Cond> {
        if self.exprs.defines[v].is_none() {
            return Ok(Cond::Yes);
        }
        if !self.history[v] {
            let p = &self.parts[pid as usize];
            let slot = ((pos - p.base) as usize) * self.nvars() + v;
            match p.cache.get(slot).copied().unwrap_or(0) {
                1 => return Ok(Cond::No),
                2 => return Ok(Cond::Yes),
                _ => return self.fill_cache(pid, v, pos, final_all),
            }
        }
        // History-dependent: evaluate for this one candidate.
        let mut cols = Vec::with_capacity(self.def.define_navs.navs.len());
        for nav in &self.def.define_navs.navs {
            match self.nav_value(pid, nav, Some(v), start, assign, final_all)? {
                Some(a) => cols.push(a),
                None => return Ok(Cond::NeedMore),
            }
        }
        let Some(e) = &self.exprs.defines[v] else { return Ok(Cond::Yes) };
        let b = eval_bool(e, &self.exprs.define_schema, cols, 1)?;
        Ok(if b.is_valid(0) && b.value(0) { Cond::Yes } else { Cond::No })
    }

    /// Computes a history-free DEFINE for rows `from..` of the partition in one batch.
    fn fill_cache(&mut self, pid: u32, v: usize, from: u64, final_all: bool) -> Result<Cond> {
        let navs = &self.def.define_navs.navs;
        let next_reach =
            navs.iter().map(|n| if let NavKind::Next(k) = n.kind { k as u64 } else { 0 }).max().unwrap_or(0);
        let p = &self.parts[pid as usize];
        let end = p.base + p.rows.len() as u64;
        // Rows whose NEXT neighbours are final (all of them once nothing more comes).
        let upto = if final_all { end } else { end.saturating_sub(next_reach) };
        if from >= upto {
            return Ok(Cond::NeedMore);
        }
        let n = (upto - from) as usize;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(navs.len());
        let used = &self.define_uses[v];
        for (i, nav) in navs.iter().enumerate() {
            if !used.get(i).copied().unwrap_or(false) {
                cols.push(new_null_array(&nav.data_type, n));
                continue;
            }
            let Some(col) = nav.col else {
                cols.push(new_null_array(&nav.data_type, n));
                continue;
            };
            let refs: Vec<Option<RowRef>> = (from..upto)
                .map(|i| {
                    let at = match nav.kind {
                        NavKind::Prev(k) => i.checked_sub(k as u64),
                        NavKind::Next(k) => Some(i + k as u64),
                        _ => Some(i),
                    };
                    at.and_then(|a| self.row(p, a)).map(|r| r.0)
                })
                .collect();
            cols.push(self.store.gather(&refs, &[col])?.remove(0));
        }
        let Some(e) = &self.exprs.defines[v] else { return Ok(Cond::Yes) };
        let b = eval_bool(e, &self.exprs.define_schema, cols, n)?;
        let nv = self.nvars();
        let p = &mut self.parts[pid as usize];
        for k in 0..n {
            let slot = ((from - p.base) as usize + k) * nv + v;
            if let Some(c) = p.cache.get_mut(slot) {
                *c = if b.is_valid(k) && b.value(k) { 2 } else { 1 };
            }
        }
        Ok(if b.is_valid(0) && b.value(0) { Cond::Yes } else { Cond::No })
    }

    /// One navigation value for one candidate as a 1-row array; `None`: needs rows not final yet.
    /// `defining`: the variable being defined (DEFINE), or `None` (MEASURES, after the match).
    fn nav_value(
        &self,
        pid: u32,
        nav: &Nav,
        defining: Option<usize>,
        start: u64,
        assign: &[u16],
        final_all: bool,
    ) -> Result<Option<ArrayRef>> {
        let p = &self.parts[pid as usize];
        let rows_of = |var: Option<usize>| -> Vec<u64> {
            assign
                .iter()
                .enumerate()
                .filter(|(_, &a)| var.is_none_or(|x| a as usize == x))
                .map(|(j, _)| start + j as u64)
                .collect()
        };
        // The row `A.col` names: the current row, or the last row mapped to A.
        let anchor = |var: Option<usize>| -> Option<u64> {
            match (var, defining) {
                (None, _) => Some(start + assign.len() as u64 - 1),
                (Some(x), Some(d)) if x == d => Some(start + assign.len() as u64 - 1),
                (Some(x), _) => assign.iter().rposition(|&a| a as usize == x).map(|j| start + j as u64),
            }
        };
        let at: Option<u64> = match nav.kind {
            NavKind::Current => anchor(nav.var),
            NavKind::Prev(k) => anchor(nav.var).and_then(|a| a.checked_sub(k as u64)),
            NavKind::Next(k) => anchor(nav.var).map(|a| a + k as u64),
            NavKind::First(k) => rows_of(nav.var).get(k as usize).copied(),
            NavKind::Last(k) => {
                let r = rows_of(nav.var);
                r.len().checked_sub(1 + k as usize).map(|i| r[i])
            }
            NavKind::MatchStatus => return Ok(Some(new_null_array(&DataType::Utf8, 1))),
            agg => return Ok(Some(self.aggregate(p, agg, nav, &rows_of(nav.var))?)),
        };
        let Some(col) = nav.col else { return Ok(Some(new_null_array(&nav.data_type, 1))) };
        if let (NavKind::Next(_), Some(a)) = (nav.kind, at) {
            if self.row(p, a).is_none() && !final_all {
                return Ok(None);
            }
        }
        let r = at.and_then(|a| self.row(p, a)).map(|r| r.0);
        Ok(Some(self.store.gather(&[r], &[col])?.remove(0)))
    }

    fn aggregate(&self, p: &Partition, kind: NavKind, nav: &Nav, rows: &[u64]) -> Result<ArrayRef> {
        if kind == NavKind::Count {
            let n = match nav.col {
                None => rows.len(),
                Some(c) => {
                    let refs: Vec<Option<RowRef>> = rows.iter().map(|&i| self.row(p, i).map(|r| r.0)).collect();
                    let a = self.store.gather(&refs, &[c])?.remove(0);
                    a.len() - a.null_count()
                }
            };
            return Ok(ScalarValue::Int64(Some(n as i64)).to_array()?);
        }
        let Some(c) = nav.col else { return Ok(new_null_array(&nav.data_type, 1)) };
        let refs: Vec<Option<RowRef>> = rows.iter().map(|&i| self.row(p, i).map(|r| r.0)).collect();
        let values = self.store.gather(&refs, &[c])?.remove(0);
        let mut acc: Option<ScalarValue> = None;
        let mut count = 0i64;
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            let v = ScalarValue::try_from_array(&values, i)?;
            let v = if matches!(kind, NavKind::Sum | NavKind::Avg) {
                v.cast_to(&nav_sum_type(&nav.data_type, kind))?
            } else {
                v
            };
            count += 1;
            acc = Some(match (acc, kind) {
                (None, _) => v,
                (Some(a), NavKind::Sum | NavKind::Avg) => a.add(&v)?,
                (Some(a), NavKind::Min) => {
                    if v < a {
                        v
                    } else {
                        a
                    }
                }
                (Some(a), _) => {
                    if v > a {
                        v
                    } else {
                        a
                    }
                }
            });
        }
        let value = match (acc, kind) {
            (None, _) => ScalarValue::try_from(&nav.data_type)?,
            (Some(a), NavKind::Avg) => match a.cast_to(&DataType::Float64)? {
                ScalarValue::Float64(Some(s)) => ScalarValue::Float64(Some(s / count as f64)),
                other => other,
            },
            (Some(a), _) => a.cast_to(&nav.data_type)?,
        };
        Ok(value.to_array()?)
    }

    /// Output rows for finished attempts.
    fn output(&self, found: &[Found]) -> Result<Option<RecordBatch>> {
        if found.is_empty() {
            return Ok(None);
        }
        let n = found.len();
        let mut cols: Vec<ArrayRef> = Vec::new();
        let firsts: Vec<Option<RowRef>> =
            found.iter().map(|f| self.row(&self.parts[f.part as usize], f.start).map(|r| r.0)).collect();
        cols.extend(self.store.gather(&firsts, &self.def.partition_by)?);
        let mut nav_cols: Vec<ArrayRef> = Vec::with_capacity(self.def.measure_navs.navs.len());
        for nav in &self.def.measure_navs.navs {
            if nav.kind == NavKind::MatchStatus {
                nav_cols.push(Arc::new(StringArray::from_iter_values(found.iter().map(|f| {
                    if f.timeout {
                        "timeout"
                    } else {
                        "match"
                    }
                }))));
                continue;
            }
            let mut parts = Vec::with_capacity(n);
            for f in found {
                let v = self.nav_value(f.part, nav, None, f.start, &f.assign, true)?;
                parts.push(v.unwrap_or_else(|| new_null_array(&nav.data_type, 1)));
            }
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            nav_cols.push(arrow::compute::concat(&refs)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        let navs = RecordBatch::try_new_with_options(self.exprs.measure_schema.clone(), nav_cols, &options)?;
        for m in &self.exprs.measures {
            cols.push(m.evaluate(&navs)?.into_array(n)?);
        }
        Ok(Some(RecordBatch::try_new_with_options(self.out_schema.clone(), cols, &options)?))
    }

    /// Frees rows no attempt or PREV can reach any more.
    fn trim(&mut self, pid: u32) {
        let nv = self.nvars();
        let keep_from = self.parts[pid as usize].start.saturating_sub(self.reach_back);
        let mut released = Vec::new();
        let p = &mut self.parts[pid as usize];
        while p.base < keep_from {
            let Some((r, _)) = p.rows.pop_front() else { break };
            p.cache.drain(..nv.min(p.cache.len()));
            p.base += 1;
            released.push(r);
        }
        self.held -= released.len();
        for r in released {
            self.store.release(r);
        }
    }
}

fn nav_sum_type(t: &DataType, kind: NavKind) -> DataType {
    if kind == NavKind::Sum && t.is_integer() {
        DataType::Int64
    } else {
        DataType::Float64
    }
}

/// Whether `e` refers to placeholder `__nav<i>`.
fn uses(e: &datafusion_expr::Expr, i: usize) -> bool {
    let name = format!("__nav{i}");
    e.column_refs().iter().any(|c| c.name == name)
}

fn eval_bool(
    e: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    cols: Vec<ArrayRef>,
    n: usize,
) -> Result<arrow::array::BooleanArray> {
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    let batch = RecordBatch::try_new_with_options(schema.clone(), cols, &options)?;
    let v = e.evaluate(&batch)?.into_array(n)?;
    Ok(v.as_boolean_opt().ok_or_else(|| EngineError::Internal("DEFINE is not BOOLEAN".into()))?.clone())
}

impl Operator for MatchRecognizeOp {
    fn name(&self) -> String {
        "match_recognize".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        let batch = chunk.batch;
        let n = batch.num_rows();
        if self.held + self.waiting.len() + n > self.limits.max_groups {
            return Err(EngineError::Limit(format!(
                "MATCH_RECOGNIZE: more than {} rows held (raise limits.max_groups, or add WITHIN to bound how long a match may wait)",
                self.limits.max_groups
            )));
        }
        let keys: Vec<ArrayRef> = if self.def.partition_by.is_empty() {
            vec![super::constant_key(n)]
        } else {
            self.def.partition_by.iter().map(|&c| batch.column(c).clone()).collect()
        };
        let (rows, _) = self.encoder.encode(&keys)?;
        let ts_col = batch.column(self.def.order_col).clone();
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let slot = self.store.add(batch);
        for i in 0..n {
            if ts.is_null(i) {
                continue;
            }
            let k = rows.row(i);
            let pid = match self.part_ids.get(k.as_ref()) {
                Some(&p) => p,
                None => {
                    let p = self.parts.len() as u32;
                    self.parts.push(Partition { rows: VecDeque::new(), base: 0, start: 0, cache: VecDeque::new() });
                    self.part_ids.insert(k.as_ref().into(), p);
                    p
                }
            };
            let r = RowRef { slot, row: i as u32 };
            self.store.hold(r);
            self.waiting.insert((ts.value(i), self.seq), (pid, r));
            self.seq += 1;
        }
        self.store.seal(slot);
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        // Rows below the frontier are final: no row of a lower time can still come.
        let frontier = if wm == MAX_TS { MAX_TS } else { wm.saturating_sub(self.lag) };
        let nv = self.nvars();
        let mut dirty: Vec<u32> = Vec::new();
        while let Some((&(t, _), _)) = self.waiting.first_key_value() {
            if t >= frontier && frontier != MAX_TS {
                break;
            }
            let Some(((t, _), (pid, r))) = self.waiting.pop_first() else { break };
            let p = &mut self.parts[pid as usize];
            p.rows.push_back((r, t));
            p.cache.extend(std::iter::repeat_n(0u8, nv));
            self.held += 1;
            if dirty.last() != Some(&pid) {
                dirty.push(pid);
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        // Waiting attempts that WITHIN (or the end of input) now settles.
        while let Some(Reverse((deadline, pid))) = self.blocked.peek().copied() {
            if deadline >= frontier && frontier != MAX_TS {
                break;
            }
            self.blocked.pop();
            if self.blocked_set.remove(&pid) {
                dirty.push(pid);
            }
        }
        if frontier == MAX_TS {
            dirty.extend(self.blocked_set.drain());
            self.blocked.clear();
        }
        dirty.sort_unstable();
        dirty.dedup();
        let mut found = Vec::new();
        for &pid in &dirty {
            self.blocked_set.remove(&pid);
            self.run_partition(pid, frontier, &mut found)?;
        }
        if let Some(batch) = self.output(&found)? {
            out.push(Chunk::append(batch));
        }
        for pid in dirty {
            self.trim(pid);
        }
        Ok(wm)
    }

    fn state_bytes(&self) -> usize {
        self.store.bytes() + (self.held + self.waiting.len()) * 32
    }

    fn checkpointable(&self) -> bool {
        true
    }

    /// The arrival counter; per partition (in id order) its key, `base`, `start`, condition cache
    /// and row times; every held row as one batch (partitions' rows in order, then the waiting
    /// rows); the waiting rows' (time, arrival, partition); the blocked partitions' deadlines.
    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        let mut keys: Vec<&[u8]> = vec![&[]; self.parts.len()];
        for (k, &pid) in &self.part_ids {
            if let Some(slot) = keys.get_mut(pid as usize) {
                *slot = k;
            }
        }
        w.u64(self.seq);
        w.u64(self.parts.len() as u64);
        for (p, key) in self.parts.iter().zip(keys) {
            w.bytes(key);
            w.u64(p.base);
            w.u64(p.start);
            w.bytes(&p.cache.iter().copied().collect::<Vec<u8>>());
            w.u64(p.rows.len() as u64);
            p.rows.iter().for_each(|(_, t)| w.i64(*t));
        }
        w.u64(self.waiting.len() as u64);
        let refs: Vec<RowRef> = self
            .parts
            .iter()
            .flat_map(|p| p.rows.iter().map(|(r, _)| *r))
            .chain(self.waiting.values().map(|(_, r)| *r))
            .collect();
        w.u64(refs.len() as u64);
        self.store.write_rows(&self.in_schema, &refs, w)?;
        for ((t, seq), (pid, _)) in &self.waiting {
            w.i64(*t);
            w.u64(*seq);
            w.u64(*pid as u64);
        }
        // The heap as it is (an entry counts only while its partition is in the set).
        w.u64(self.blocked.len() as u64);
        for Reverse((deadline, pid)) in &self.blocked {
            w.i64(*deadline);
            w.u64(*pid as u64);
        }
        let mut set: Vec<u32> = self.blocked_set.iter().copied().collect();
        set.sort_unstable();
        w.u64(set.len() as u64);
        set.iter().for_each(|pid| w.u64(*pid as u64));
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.seq = r.u64()?;
        let nparts = r.count(40)?;
        let mut times: Vec<Vec<i64>> = Vec::with_capacity(nparts);
        for pid in 0..nparts {
            let key: Box<[u8]> = r.bytes()?.into();
            let (base, start) = (r.u64()?, r.u64()?);
            let cache: VecDeque<u8> = r.bytes()?.iter().copied().collect();
            let n = r.count(8)?;
            times.push((0..n).map(|_| r.i64()).collect::<Result<_>>()?);
            self.part_ids.insert(key, pid as u32);
            self.parts.push(Partition { rows: VecDeque::with_capacity(n), base, start, cache });
        }
        let nwaiting = r.count(24)?;
        let total = r.count(0)?;
        let slot = self.store.read_rows(&self.in_schema, total, r)?;
        let mut next = 0u32;
        let mut take = |store: &mut RowStore| {
            let row = RowRef { slot, row: next };
            next += 1;
            store.hold(row);
            row
        };
        for (p, ts) in self.parts.iter_mut().zip(times) {
            for t in ts {
                p.rows.push_back((take(&mut self.store), t));
                self.held += 1;
            }
        }
        for _ in 0..nwaiting {
            let (t, seq, pid) = (r.i64()?, r.u64()?, r.u64()?);
            if pid as usize >= self.parts.len() {
                return Err(r.err("a waiting row of an unknown partition"));
            }
            self.waiting.insert((t, seq), (pid as u32, take(&mut self.store)));
        }
        if next as usize != total {
            return Err(r.err("a row count mismatch in a pattern's state"));
        }
        self.store.seal(slot);
        for _ in 0..r.count(16)? {
            let (deadline, pid) = (r.i64()?, r.u64()? as u32);
            self.blocked.push(Reverse((deadline, pid)));
        }
        for _ in 0..r.count(8)? {
            self.blocked_set.insert(r.u64()? as u32);
        }
        Ok(())
    }
}

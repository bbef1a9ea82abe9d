//! Planning joins: which kind a join is (lookup, interval, window, ASOF) follows from what it joins
//! and from its condition, which is split here into equal keys, time bounds and the rest.
//!
//! Time bounds are kept as `R.t - L.t ∈ [lo, hi]` (R: the right input's time column, L: the left's).
//! From the inputs' watermarks and this bound follows how far each output time column may lag.

use std::sync::Arc;

use datafusion_common::{Column, DFSchema};
use datafusion_expr::logical_plan::{Join, JoinType};
use datafusion_expr::utils::split_conjunction;
use datafusion_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator as Op};

use super::{plan_err, Origins, Planner, Stream};
use crate::error::Result;
use crate::ops::asof_join::{AsofJoin, AsofSide};
use crate::ops::lookup_join::LookupJoin;
use crate::ops::stream_join::{JoinSide, JoinTiming, StreamJoin};
use crate::sql::asof::AsofJoinNode;
use crate::sql::catalog::{RelationKind, RelationSource};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Left,
    Right,
    Both,
    Neither,
}

/// The reference table a plan scans, if it is one.
fn table_scan(plan: &LogicalPlan) -> Option<&RelationSource> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => table_scan(&a.input),
        LogicalPlan::TableScan(s) if s.projection.is_none() => {
            s.source.downcast_ref::<RelationSource>().filter(|r| r.kind == RelationKind::Table)
        }
        _ => None,
    }
}

fn side_of(e: &Expr, left: &DFSchema, right: &DFSchema) -> Side {
    let (mut l, mut r) = (false, false);
    for c in e.column_refs() {
        if left.has_column(c) {
            l = true;
        } else if right.has_column(c) {
            r = true;
        }
    }
    match (l, r) {
        (true, true) => Side::Both,
        (true, false) => Side::Left,
        (false, true) => Side::Right,
        (false, false) => Side::Neither,
    }
}

/// `col`, `col + INTERVAL`, `col - INTERVAL` → (column, offset ms).
fn time_term(e: &Expr) -> Option<(&Column, i64)> {
    match e {
        Expr::Column(c) => Some((c, 0)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (Expr::Column(c), Expr::Literal(v, _)) = (left.as_ref(), right.as_ref()) else { return None };
            let ms = super::interval_ms(v).ok()?;
            match op {
                Op::Plus => Some((c, ms)),
                Op::Minus => Some((c, -ms)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A condition split for a join.
struct Split {
    left_keys: Vec<Expr>,
    right_keys: Vec<Expr>,
    /// `R.t - L.t >= lo` / `<= hi`, with the columns they bound.
    lo: Option<i64>,
    hi: Option<i64>,
    time: Option<(Column, Column)>,
    /// ASOF: `L.t >= R.t` (false) or `L.t > R.t` (true).
    residual: Vec<Expr>,
}

fn split(cond: Option<&Expr>, on: &[(Expr, Expr)], left: &DFSchema, right: &DFSchema) -> Result<Split> {
    let mut s = Split { left_keys: vec![], right_keys: vec![], lo: None, hi: None, time: None, residual: vec![] };
    for (l, r) in on {
        s.left_keys.push(l.clone());
        s.right_keys.push(r.clone());
    }
    let Some(cond) = cond else { return Ok(s) };
    for c in split_conjunction(cond) {
        if let Expr::BinaryExpr(BinaryExpr { left: a, op: Op::Eq, right: b }) = c {
            match (side_of(a, left, right), side_of(b, left, right)) {
                (Side::Left, Side::Right) => {
                    s.left_keys.push((**a).clone());
                    s.right_keys.push((**b).clone());
                    continue;
                }
                (Side::Right, Side::Left) => {
                    s.left_keys.push((**b).clone());
                    s.right_keys.push((**a).clone());
                    continue;
                }
                _ => {}
            }
        }
        let comparisons: Vec<(&Expr, Op, &Expr)> = match c {
            Expr::Between(b) if !b.negated => vec![(&*b.expr, Op::GtEq, &*b.low), (&*b.expr, Op::LtEq, &*b.high)],
            Expr::BinaryExpr(BinaryExpr { left: a, op: op @ (Op::Gt | Op::GtEq | Op::Lt | Op::LtEq), right: b }) => {
                vec![(a, *op, b)]
            }
            _ => vec![],
        };
        let bounds: Option<Vec<(Column, Column, Op, i64)>> = comparisons
            .iter()
            .map(|(a, op, b)| {
                let ((ca, oa), (cb, ob)) = (time_term(a)?, time_term(b)?);
                let (sa, sb) =
                    (side_of(&Expr::Column(ca.clone()), left, right), side_of(&Expr::Column(cb.clone()), left, right));
                // Normalise to R - L (op) x.
                match (sa, sb) {
                    // R + oa op L + ob  →  R - L op ob - oa
                    (Side::Right, Side::Left) => Some((cb.clone(), ca.clone(), *op, ob - oa)),
                    // L + oa op R + ob  →  R - L (flipped op) oa - ob
                    (Side::Left, Side::Right) => Some((ca.clone(), cb.clone(), flip(*op), oa - ob)),
                    _ => None,
                }
            })
            .collect();
        match bounds {
            Some(bounds) if !bounds.is_empty() => {
                for (lc, rc, op, x) in bounds {
                    if let Some((l0, r0)) = &s.time {
                        if *l0 != lc || *r0 != rc {
                            return Err(plan_err(format!(
                                "a join's time bounds must all compare the same two columns ({l0} and {r0}), found {lc} and {rc}"
                            )));
                        }
                    }
                    s.time = Some((lc, rc));
                    match op {
                        Op::GtEq => s.lo = Some(s.lo.map_or(x, |v: i64| v.max(x))),
                        Op::Gt => s.lo = Some(s.lo.map_or(x + 1, |v: i64| v.max(x + 1))),
                        Op::LtEq => s.hi = Some(s.hi.map_or(x, |v: i64| v.min(x))),
                        _ => s.hi = Some(s.hi.map_or(x - 1, |v: i64| v.min(x - 1))),
                    }
                }
            }
            _ => s.residual.push(c.clone()),
        }
    }
    Ok(s)
}

fn flip(op: Op) -> Op {
    match op {
        Op::Gt => Op::Lt,
        Op::GtEq => Op::LtEq,
        Op::Lt => Op::Gt,
        Op::LtEq => Op::GtEq,
        o => o,
    }
}

fn conjunction(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|a, b| a.and(b))
}

impl Planner<'_> {
    pub(super) fn plan_join(
        &mut self,
        j: &Join,
        outermost: Option<*const datafusion_expr::Aggregate>,
        emit: Option<crate::sql::ddl::Emit>,
    ) -> Result<Stream> {
        if !matches!(j.join_type, JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full) {
            return Err(plan_err(format!("{} joins are not supported; use INNER, LEFT, RIGHT or FULL", j.join_type)));
        }
        let (ls, rs) = (j.left.schema().as_ref(), j.right.schema().as_ref());
        let cond = split(j.filter.as_ref(), &j.on, ls, rs)?;
        if let Some(t) = table_scan(&j.right) {
            return self.plan_lookup(j, t, cond, outermost, emit);
        }
        if table_scan(&j.left).is_some() {
            return Err(plan_err(
                "a lookup join takes the stream first: FROM stream JOIN table FOR SYSTEM_TIME AS OF stream.ts ON ...",
            ));
        }
        let left = self.plan_node(&j.left, outermost, emit)?;
        let right = self.plan_node(&j.right, outermost, emit)?;
        if left.updating || right.updating {
            return Err(plan_err("a join of two streams takes append-only inputs; an updating result (GROUP BY without a window, EMIT ON UPDATE) can only be joined with a reference TABLE"));
        }
        let lag_of = |s: &Stream, schema: &DFSchema, c: &Column| {
            schema.index_of_column(c).ok().and_then(|i| s.time_offset(i).map(|o| (i, o)))
        };
        let mut keys_l = cond.left_keys.clone();
        let mut keys_r = cond.right_keys.clone();
        let nl = ls.fields().len();
        let (timing, time_l, time_r, out_time) = match (&cond.time, cond.lo, cond.hi) {
            (Some((lc, rc)), Some(lo), Some(hi)) => {
                if lo > hi {
                    return Err(plan_err(format!("the join's time bound is empty ({rc} - {lc} between {lo} and {hi} ms)")));
                }
                let (Some((li, lag_l)), Some((ri, lag_r))) = (lag_of(&left, ls, lc), lag_of(&right, rs, rc)) else {
                    return Err(plan_err(format!("an interval join bounds event-time columns with a watermark; {lc} or {rc} has none")));
                };
                let out_l = lag_l.max(lag_r + hi.max(0));
                let out_r = lag_r.max(lag_l + (-lo).max(0));
                (JoinTiming::Interval { lo, hi }, (li, lag_l), (ri, lag_r), vec![(li, out_l), (nl + ri, out_r)])
            }
            (Some((lc, rc)), _, _) => {
                return Err(plan_err(format!(
                    "the join bounds {rc} - {lc} on one side only, so its state would grow without end; bound both sides: {rc} BETWEEN {lc} - INTERVAL ... AND {lc} + INTERVAL ..."
                )))
            }
            (None, _, _) => {
                // Window join: an equality of two watermarked columns (the one lagging least triggers).
                // (key index, (left column, lag), (right column, lag))
                type Candidate = (usize, (usize, i64), (usize, i64));
                let mut best: Option<Candidate> = None;
                for (k, (a, b)) in keys_l.iter().zip(&keys_r).enumerate() {
                    if let (Expr::Column(a), Expr::Column(b)) = (a, b) {
                        if let (Some(x), Some(y)) = (lag_of(&left, ls, a), lag_of(&right, rs, b)) {
                            if best.is_none_or(|(_, bx, by)| x.1.max(y.1) < bx.1.max(by.1)) {
                                best = Some((k, x, y));
                            }
                        }
                    }
                }
                let Some((k, x, y)) = best else {
                    return Err(plan_err(
                        "a join of two streams needs a time bound, or its state grows without end: an interval (b.ts BETWEEN a.ts - INTERVAL '5' SECOND AND a.ts), equal windows (a.window_start = b.window_start AND a.window_end = b.window_end), or ASOF JOIN",
                    ));
                };
                keys_l.remove(k);
                keys_r.remove(k);
                let lag = x.1.max(y.1);
                (JoinTiming::Window, x, y, vec![(x.0, lag), (nl + y.0, lag)])
            }
        };
        let pairs = key_columns(&keys_l, &keys_r, ls, rs);
        let (lkeys, rkeys, key_types) = self.key_exprs(&keys_l, &keys_r, ls, rs)?;
        let residual = match conjunction(cond.residual) {
            Some(e) => Some(self.physical(&e, &j.schema)?),
            None => None,
        };
        let schema = Arc::new(j.schema.as_arrow().clone());
        let outer_l = matches!(j.join_type, JoinType::Left | JoinType::Full);
        let outer_r = matches!(j.join_type, JoinType::Right | JoinType::Full);
        let kind = match timing {
            JoinTiming::Interval { .. } => "interval join",
            JoinTiming::Window => "window join",
        };
        let op = StreamJoin::new(
            format!("{kind} ({})", j.join_type),
            (
                JoinSide { keys: lkeys, time_col: time_l.0, lag: time_l.1, outer: outer_l, columns: nl },
                left.schema.clone(),
            ),
            (
                JoinSide { keys: rkeys, time_col: time_r.0, lag: time_r.1, outer: outer_r, columns: rs.fields().len() },
                right.schema.clone(),
            ),
            key_types,
            timing,
            residual,
            schema.clone(),
            self.limits,
        )?;
        self.need_joined(kind, &left, &right, &pairs);
        let mut out = self.add_binary(Box::new(op), &left, &right, schema, out_time);
        if j.join_type == JoinType::Inner {
            // Both key columns of an inner join's row hold the same value.
            for &(l, r) in &pairs {
                let both: Origins = out.origins[l].iter().chain(&out.origins[nl + r]).copied().collect();
                out.origins[l] = both.clone();
                out.origins[nl + r] = both;
            }
        }
        Ok(out)
    }

    /// Records that a join keeps its state per value of its equal keys (column pairs).
    fn need_joined(&mut self, op: &str, left: &Stream, right: &Stream, pairs: &[(usize, usize)]) {
        let alternatives = pairs
            .iter()
            .map(|&(l, r)| vec![(left.node, left.origins_of(l)), (right.node, right.origins_of(r))])
            .collect();
        self.needs.push(super::ShardNeed { op: op.to_string(), alternatives });
    }

    /// A two-input operator joining `left` (port 0) and `right` (port 1).
    fn add_binary(
        &mut self,
        op: Box<dyn crate::ops::Operator>,
        left: &Stream,
        right: &Stream,
        schema: arrow::datatypes::SchemaRef,
        time_cols: Vec<(usize, i64)>,
    ) -> Stream {
        let node = self.graph.add(op, 2);
        self.graph.connect(left.node, node, 0);
        self.graph.connect(right.node, node, 1);
        let mut s = Stream::append_only(node, schema, time_cols);
        let nl = left.schema.fields().len();
        s.origins = (0..nl)
            .map(|c| left.origins_of(c))
            .chain((0..right.schema.fields().len()).map(|c| right.origins_of(c)))
            .collect();
        s
    }

    /// Physical key expressions for both sides; no keys become one constant key.
    #[allow(clippy::type_complexity)]
    fn key_exprs(
        &self,
        l: &[Expr],
        r: &[Expr],
        ls: &DFSchema,
        rs: &DFSchema,
    ) -> Result<(
        Vec<Arc<dyn datafusion_physical_expr::PhysicalExpr>>,
        Vec<Arc<dyn datafusion_physical_expr::PhysicalExpr>>,
        Vec<arrow::datatypes::DataType>,
    )> {
        if l.is_empty() {
            let t = Expr::Literal(datafusion_common::ScalarValue::Boolean(Some(true)), None);
            return Ok((
                vec![self.physical(&t, ls)?],
                vec![self.physical(&t, rs)?],
                vec![arrow::datatypes::DataType::Boolean],
            ));
        }
        let mut types = Vec::new();
        for (a, b) in l.iter().zip(r) {
            let (ta, tb) = (a.get_type(ls)?, b.get_type(rs)?);
            if ta != tb {
                return Err(plan_err(format!("join keys {a} ({ta}) and {b} ({tb}) differ in type; CAST one of them")));
            }
            types.push(ta);
        }
        let lk = l.iter().map(|e| self.physical(e, ls)).collect::<Result<Vec<_>>>()?;
        let rk = r.iter().map(|e| self.physical(e, rs)).collect::<Result<Vec<_>>>()?;
        Ok((lk, rk, types))
    }

    fn plan_lookup(
        &mut self,
        j: &Join,
        table: &RelationSource,
        cond: Split,
        outermost: Option<*const datafusion_expr::Aggregate>,
        emit: Option<crate::sql::ddl::Emit>,
    ) -> Result<Stream> {
        if !matches!(j.join_type, JoinType::Inner | JoinType::Left) {
            return Err(plan_err("a lookup join is INNER or LEFT, with the stream first"));
        }
        let (ls, rs) = (j.left.schema().as_ref(), j.right.schema().as_ref());
        let stream = self.plan_node(&j.left, outermost, emit)?;
        let mut table_keys = Vec::new();
        for k in &cond.right_keys {
            match k {
                Expr::Column(c) => table_keys.push(rs.index_of_column(c)?),
                other => return Err(plan_err(format!("a lookup join matches table columns; found {other}"))),
            }
        }
        if table_keys.is_empty() {
            return Err(plan_err(format!("a lookup join needs equal keys: ON stream.col = {}.col", table.name)));
        }
        let mut residual = cond.residual;
        if let (Some((l, r)), lo, hi) = (cond.time, cond.lo, cond.hi) {
            // Not a time bound for a table: keep the comparison as a plain condition.
            let (lc, rc) = (Expr::Column(l), Expr::Column(r));
            if let Some(lo) = lo {
                residual.push(rc.clone().gt_eq(lc.clone() + interval(lo)));
            }
            if let Some(hi) = hi {
                residual.push(rc.lt_eq(lc + interval(hi)));
            }
        }
        let handle = self
            .tables
            .get(&table.name)
            .cloned()
            .ok_or_else(|| crate::error::EngineError::Internal(format!("table {} has no data", table.name)))?;
        let (stream_keys, _, key_types) = self.key_exprs(&cond.left_keys, &cond.right_keys, ls, rs)?;
        // Deletes of an updating stream may find no row: every output column can then be NULL.
        let mut arrow_schema = j.schema.as_arrow().clone();
        if stream.updating {
            arrow_schema = arrow::datatypes::Schema::new(
                arrow_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            );
            if let Some(key) = &stream.key {
                let covered = table_pk_covered(table, &table_keys);
                if !covered {
                    return Err(plan_err(format!(
                        "an updating result joined with '{}' must match its PRIMARY KEY, so that each row finds at most one ({key:?})",
                        table.name
                    )));
                }
            }
        }
        let schema = Arc::new(arrow_schema);
        let residual = match conjunction(residual) {
            Some(e) => Some(self.physical(&e, &j.schema)?),
            None => None,
        };
        let op = LookupJoin::new(
            format!("lookup join {}", table.name),
            handle,
            stream_keys,
            table_keys,
            key_types,
            j.join_type == JoinType::Left,
            residual,
            schema.clone(),
            stream.updating,
        )?;
        let node = self.add(Box::new(op), stream.node);
        Ok(Stream { node, schema, window: None, pending_session: None, ..stream })
    }

    pub(super) fn plan_asof(
        &mut self,
        a: &AsofJoinNode,
        outermost: Option<*const datafusion_expr::Aggregate>,
        emit: Option<crate::sql::ddl::Emit>,
    ) -> Result<Stream> {
        let usage = "ASOF JOIN q ON t.key = q.key AND t.ts >= q.ts";
        let (ls, rs) = (a.left.schema().as_ref(), a.right.schema().as_ref());
        let left = self.plan_node(&a.left, outermost, emit)?;
        let right = self.plan_node(&a.right, outermost, emit)?;
        if left.updating || right.updating {
            return Err(plan_err("ASOF JOIN takes append-only inputs"));
        }
        let cond = split(Some(&a.on), &[], ls, rs)?;
        if !cond.residual.is_empty() {
            let rest: Vec<String> = cond.residual.iter().map(|e| e.to_string()).collect();
            return Err(plan_err(format!(
                "ASOF JOIN takes equal keys and one time comparison ({usage}); cannot use {}",
                rest.join(" AND ")
            )));
        }
        // L.t >= R.t is R - L <= 0; L.t > R.t is R - L <= -1.
        let (Some((lc, rc)), None, Some(hi)) = (&cond.time, cond.lo, cond.hi) else {
            return Err(plan_err(format!("ASOF JOIN needs the left time at or after the right one: {usage}")));
        };
        let strict = match hi {
            0 => false,
            -1 => true,
            _ => return Err(plan_err(format!("ASOF JOIN compares the two times without an offset: {usage}"))),
        };
        let lag_of = |s: &Stream, schema: &DFSchema, c: &Column| {
            schema.index_of_column(c).ok().and_then(|i| s.time_offset(i).map(|o| (i, o)))
        };
        let (Some((li, lag_l)), Some((ri, lag_r))) = (lag_of(&left, ls, lc), lag_of(&right, rs, rc)) else {
            return Err(plan_err(format!(
                "ASOF JOIN compares event-time columns with a watermark; {lc} or {rc} has none"
            )));
        };
        let pairs = key_columns(&cond.left_keys, &cond.right_keys, ls, rs);
        self.need_joined("asof join", &left, &right, &pairs);
        let (lkeys, rkeys, key_types) = self.key_exprs(&cond.left_keys, &cond.right_keys, ls, rs)?;
        let schema = Arc::new(a.schema.as_arrow().clone());
        let op = AsofJoin::new(
            "asof join".into(),
            AsofSide { keys: lkeys, time_col: li, lag: lag_l, schema: left.schema.clone() },
            AsofSide { keys: rkeys, time_col: ri, lag: lag_r, schema: right.schema.clone() },
            key_types,
            strict,
            schema.clone(),
            self.limits,
        )?;
        Ok(self.add_binary(Box::new(op), &left, &right, schema, vec![(li, lag_l.max(lag_r))]))
    }
}

fn interval(ms: i64) -> Expr {
    Expr::Literal(
        datafusion_common::ScalarValue::IntervalMonthDayNano(Some(arrow::datatypes::IntervalMonthDayNano::new(
            0,
            0,
            ms * 1_000_000,
        ))),
        None,
    )
}

/// The equal keys that are plain columns on both sides, as (left column, right column).
fn key_columns(l: &[Expr], r: &[Expr], ls: &DFSchema, rs: &DFSchema) -> Vec<(usize, usize)> {
    l.iter()
        .zip(r)
        .filter_map(|(a, b)| match (a, b) {
            (Expr::Column(a), Expr::Column(b)) => Some((ls.index_of_column(a).ok()?, rs.index_of_column(b).ok()?)),
            _ => None,
        })
        .collect()
}

fn table_pk_covered(table: &RelationSource, keys: &[usize]) -> bool {
    !table.primary_key.is_empty() && table.primary_key.iter().all(|k| keys.contains(k))
}

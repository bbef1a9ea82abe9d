//! `SESSION` windows aggregated per GROUP BY key. Rows t1 < t2 of a key share a session iff
//! t2 < t1 + gap (transitively); a session is [first ts, last ts + gap) and closes when the
//! watermark reaches its end.
//!
//! Results must not depend on batch boundaries, and floating-point sums depend on the order of
//! additions. So rows are taken one by one in arrival order, and each session's partial
//! aggregate is kept as *pieces*: one group of a `GroupsAccumulator` (which adds row by row) per
//! session ever opened. When a row bridges sessions they merge by concatenating their piece
//! lists; rows go to the oldest piece, and a closing session folds its pieces in creation order.
//! Which piece a row lands in depends only on the rows before it, so the result is the same for
//! any batching. Piece numbers are kept in creation order (compaction preserves it).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::TimestampMillisecondType;
use arrow::row::RowConverter;

use super::agg::{AggregateExprs, GroupsAccs};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator};
use crate::error::{EngineError, Result};

/// Marks the piece-based state layout; state written before it starts with `closed_upto`, which
/// never takes this value (it is a time some 190 million years ahead).
const PIECES_LAYOUT: i64 = 0x5345_5353_494f_4e32;

struct Session {
    start: i64,
    /// Last row time + gap.
    end: i64,
    /// Groups of `SessionAggregate::accs` holding this session's rows, ascending (= oldest first).
    pieces: Vec<u32>,
}

pub struct SessionAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    time_col: usize,
    gap: i64,
    wm_offset: i64,
    limits: Limits,
    /// Open sessions per key, sorted by start, never overlapping.
    sessions: HashMap<Box<[u8]>, Vec<Session>, ahash::RandomState>,
    open: usize,
    /// One group per piece; groups `0..pieces` are in use.
    accs: GroupsAccs,
    pieces: usize,
    closed_upto: i64,
    pub late_rows: u64,
    /// Per-batch scratch: the rows taken and the piece of each.
    rows: Vec<u32>,
    groups: Vec<usize>,
}

impl SessionAggregate {
    pub fn new(exprs: AggregateExprs, time_col: usize, gap: i64, wm_offset: i64, limits: Limits) -> Result<Self> {
        Ok(SessionAggregate {
            converter: exprs.row_converter()?,
            accs: GroupsAccs::new(&exprs)?,
            exprs,
            time_col,
            gap,
            wm_offset,
            limits,
            sessions: HashMap::default(),
            open: 0,
            pieces: 0,
            closed_upto: i64::MIN,
            late_rows: 0,
            rows: Vec::new(),
            groups: Vec::new(),
        })
    }

    /// Places a row of time `t` and key `key`: into the session it falls in (merging every
    /// session it bridges), or a new one. Returns the piece the row's values go to.
    fn place(&mut self, key: &[u8], t: i64) -> Result<usize> {
        let end = t.saturating_add(self.gap);
        let list = match self.sessions.get_mut(key) {
            Some(list) => list,
            None => self.sessions.entry(key.into()).or_default(),
        };
        // Sessions overlapping [t, t + gap) are contiguous in start order.
        let overlaps = |s: &Session| s.start < end && t < s.end;
        let Some(first) = list.iter().position(overlaps) else {
            let piece = self.pieces;
            self.pieces += 1;
            let at = list.iter().position(|s| s.start > t).unwrap_or(list.len());
            list.insert(at, Session { start: t, end, pieces: vec![piece as u32] });
            self.open += 1;
            if self.open > self.limits.max_groups || self.pieces > self.limits.max_groups.saturating_mul(2) {
                return Err(EngineError::Limit(format!(
                    "{} open sessions holding {} pieces (limits.max_groups)",
                    self.open, self.pieces
                )));
            }
            return Ok(piece);
        };
        while first + 1 < list.len() && overlaps(&list[first + 1]) {
            let bridged = list.remove(first + 1);
            self.open -= 1;
            let s = &mut list[first];
            s.end = s.end.max(bridged.end);
            s.pieces.extend(bridged.pieces);
            s.pieces.sort_unstable();
        }
        let s = &mut list[first];
        s.start = s.start.min(t);
        s.end = s.end.max(end);
        Ok(s.pieces[0] as usize)
    }
}

impl Operator for SessionAggregate {
    fn name(&self) -> String {
        "session aggregate".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, _out: &mut Vec<Chunk>) -> Result<()> {
        let batch = chunk.batch;
        let ts = batch.column(self.time_col).as_primitive::<TimestampMillisecondType>().clone();
        let input = self.exprs.evaluate(&self.converter, &batch)?;
        let (mut rows, mut groups) = (std::mem::take(&mut self.rows), std::mem::take(&mut self.groups));
        rows.clear();
        groups.clear();
        for i in 0..batch.num_rows() {
            if !ts.is_valid(i) {
                continue;
            }
            let t = ts.value(i);
            if t.saturating_add(self.gap) <= self.closed_upto {
                self.late_rows += 1;
                continue;
            }
            let piece = self.place(input.keys.row(i).as_ref(), t)?;
            rows.push(i as u32);
            groups.push(piece);
        }
        let result = if rows.len() == batch.num_rows() {
            self.accs.update(&input, None, &groups, self.pieces)
        } else {
            self.accs.update(&input, Some(&UInt32Array::from_iter_values(rows.iter().copied())), &groups, self.pieces)
        };
        (self.rows, self.groups) = (rows, groups);
        result
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        let w = wm.saturating_sub(self.wm_offset);
        let parser = self.converter.parser();
        let mut closed_sessions = Vec::new();
        self.sessions.retain(|key, list| {
            while list.first().is_some_and(|s| s.end <= w) {
                closed_sessions.push((key.clone(), list.remove(0)));
            }
            !list.is_empty()
        });
        self.closed_upto = self.closed_upto.max(w);
        if closed_sessions.is_empty() {
            return Ok(wm);
        }
        // Emitted by end, then key: the map's order would differ from run to run (its hash is
        // seeded per process), and a replay should write the same rows in the same order.
        closed_sessions.sort_unstable_by(|(ka, a), (kb, b)| (a.end, ka).cmp(&(b.end, kb)));
        let mut keys = Vec::with_capacity(closed_sessions.len());
        let mut starts = Vec::with_capacity(closed_sessions.len());
        let mut ends = Vec::with_capacity(closed_sessions.len());
        // (piece, output row) of every closed session, pieces in creation order.
        let mut folds: (Vec<u32>, Vec<usize>) = (Vec::new(), Vec::new());
        for (key, s) in closed_sessions {
            folds.0.extend(&s.pieces);
            folds.1.extend(std::iter::repeat_n(keys.len(), s.pieces.len()));
            keys.push(key);
            starts.push(s.start);
            ends.push(s.end);
        }
        let n = keys.len();
        self.open -= n;
        let state = self.accs.take_state()?;
        let mut closed = GroupsAccs::new(&self.exprs)?;
        closed.merge(&state, &UInt32Array::from(folds.0), &folds.1, n)?;
        let values = closed.evaluate()?;
        self.compact(&state)?;
        let key_cols = self.converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        let s: ArrayRef = Arc::new(TimestampMillisecondArray::from(starts));
        let e: ArrayRef = Arc::new(TimestampMillisecondArray::from(ends));
        out.push(Chunk::append(self.exprs.output_batch(key_cols, Some((s, e)), values, n)?));
        Ok(wm)
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        w.i64(PIECES_LAYOUT);
        w.i64(self.closed_upto);
        w.u64(self.late_rows);
        w.u64(self.open as u64);
        for (key, list) in &self.sessions {
            for s in list {
                w.bytes(key);
                w.i64(s.start);
                w.i64(s.end);
                w.u64(s.pieces.len() as u64);
                s.pieces.iter().for_each(|&p| w.u64(u64::from(p)));
            }
        }
        w.u64(self.pieces as u64);
        self.accs.snapshot(self.pieces, w)?;
        self.exprs.snapshot_arrival(w);
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.sessions.clear();
        let first = r.i64()?;
        if first != PIECES_LAYOUT {
            return self.restore_one_piece_each(first, r);
        }
        self.closed_upto = r.i64()?;
        self.late_rows = r.u64()?;
        let n = r.count(32)?;
        let mut heads = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, start, end) = (Box::<[u8]>::from(r.bytes()?), r.i64()?, r.i64()?);
            let pieces = (0..r.count(8)?).map(|_| Ok(r.u64()? as u32)).collect::<Result<Vec<u32>>>()?;
            heads.push((key, Session { start, end, pieces }));
        }
        self.pieces = r.count(0)?;
        if heads.iter().flat_map(|(_, s)| &s.pieces).any(|&p| p as usize >= self.pieces) {
            return Err(r.err("a session piece out of range"));
        }
        self.accs = GroupsAccs::restore(&self.exprs, self.pieces, r)?;
        // Sessions were written key by key, each key's list in start order.
        for (key, s) in heads {
            self.sessions.entry(key).or_default().push(s);
        }
        self.open = n;
        self.exprs.restore_arrival(r)
    }

    fn state_bytes(&self) -> usize {
        self.accs.bytes() + self.sessions.values().flatten().map(|s| 48 + 4 * s.pieces.capacity()).sum::<usize>()
    }
}

impl SessionAggregate {
    /// Renumbers the open sessions' pieces `0..` in their old order (so numbers stay in creation
    /// order) and keeps only their states; `state` is every piece's, taken from `accs`.
    fn compact(&mut self, state: &[Vec<ArrayRef>]) -> Result<()> {
        let mut renumbered = vec![u32::MAX; self.pieces];
        for s in self.sessions.values().flatten() {
            s.pieces.iter().for_each(|&p| renumbered[p as usize] = 0);
        }
        let mut kept = Vec::new();
        for (old, new) in renumbered.iter_mut().enumerate() {
            if *new == 0 {
                *new = kept.len() as u32;
                kept.push(old as u32);
            }
        }
        for s in self.sessions.values_mut().flatten() {
            s.pieces.iter_mut().for_each(|p| *p = renumbered[*p as usize]);
        }
        self.pieces = kept.len();
        self.accs = GroupsAccs::new(&self.exprs)?;
        let all: Vec<usize> = (0..kept.len()).collect();
        self.accs.merge(state, &UInt32Array::from(kept), &all, self.pieces)
    }

    /// State written before pieces existed: one accumulator state per session, in session order.
    fn restore_one_piece_each(&mut self, closed_upto: i64, r: &mut StateReader) -> Result<()> {
        self.closed_upto = closed_upto;
        self.late_rows = r.u64()?;
        let n = r.count(24)?;
        let mut heads = Vec::with_capacity(n);
        for piece in 0..n {
            let (key, start, end) = (Box::<[u8]>::from(r.bytes()?), r.i64()?, r.i64()?);
            heads.push((key, Session { start, end, pieces: vec![piece as u32] }));
        }
        self.accs = GroupsAccs::restore_row_states(&self.exprs, n, r)?;
        for (key, s) in heads {
            self.sessions.entry(key).or_default().push(s);
        }
        self.open = n;
        self.pieces = n;
        self.exprs.restore_arrival(r)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow::util::display::array_value_to_string;
    use datafusion_physical_expr::aggregate::AggregateExprBuilder;
    use datafusion_physical_expr::expressions::col;

    use super::*;
    use crate::ops::agg::{snapshot_groups, update_group, GroupCol, RowAccs};

    const GAP_MS: i64 = 2_000;

    fn input_schema() -> arrow::datatypes::SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    /// `SELECT k, window_start, window_end, SUM(v), AVG(v) FROM SESSION(.., ts, 2 s) GROUP BY ..`
    fn operator() -> SessionAggregate {
        let schema = input_schema();
        let v = col("v", &schema).unwrap();
        let agg = |f, alias: &str| {
            Arc::new(AggregateExprBuilder::new(f, vec![v.clone()]).schema(schema.clone()).alias(alias).build().unwrap())
        };
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("s", DataType::Float64, true),
            Field::new("a", DataType::Float64, true),
        ]));
        let exprs = AggregateExprs {
            keys: vec![col("k", &schema).unwrap()],
            key_fields: vec![Arc::new(schema.field(0).clone())],
            group_layout: vec![GroupCol::Key(0), GroupCol::WindowStart, GroupCol::WindowEnd],
            aggs: vec![
                agg(datafusion_functions_aggregate::sum::sum_udaf(), "s"),
                agg(datafusion_functions_aggregate::average::avg_udaf(), "a"),
            ],
            args: vec![vec![v.clone()], vec![v.clone()]],
            filters: vec![None, None],
            output,
            arrival: None,
        };
        SessionAggregate::new(exprs, 2, GAP_MS, 0, Limits::default()).unwrap()
    }

    fn batch(rows: &[(&str, f64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn feed(op: &mut SessionAggregate, rows: &[(&str, f64, i64)]) {
        op.on_chunk(0, Chunk::append(batch(rows)), &mut Vec::new()).unwrap();
    }

    /// Every session still open, closed now, as sorted text rows.
    fn close_all(op: &mut SessionAggregate) -> Vec<String> {
        let mut out = Vec::new();
        op.on_watermark(i64::MAX, &mut out).unwrap();
        let mut rows: Vec<String> = out
            .iter()
            .flat_map(|c| {
                (0..c.batch.num_rows()).map(|i| {
                    c.batch
                        .columns()
                        .iter()
                        .map(|col| array_value_to_string(col, i).unwrap())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            })
            .collect();
        rows.sort();
        rows
    }

    fn restored(bytes: &[u8]) -> SessionAggregate {
        let mut op = operator();
        let mut r = StateReader::new(bytes, "session state");
        op.restore(&mut r).unwrap();
        r.finish().unwrap();
        op
    }

    const BEFORE: &[(&str, f64, i64)] = &[("a", 1.5, 0), ("b", 4.0, 500), ("a", 2.25, 1_000), ("a", 8.0, 10_000)];
    /// Chains a's two sessions into one (each row within the gap of the one before) and extends b's.
    const AFTER: &[(&str, f64, i64)] =
        &[("a", 0.125, 2_900), ("a", 16.0, 4_800), ("a", -3.0, 6_700), ("a", 0.5, 8_600), ("b", 1.0, 2_000)];

    #[test]
    fn bridged_sessions_survive_a_checkpoint_with_their_pieces() {
        let mut straight = operator();
        feed(&mut straight, BEFORE);
        feed(&mut straight, &AFTER[..2]);
        let mut w = StateWriter::default();
        straight.snapshot(&mut w).unwrap();
        let mut again = restored(&w.buf);
        feed(&mut straight, &AFTER[2..]);
        feed(&mut again, &AFTER[2..]);
        let rows = close_all(&mut straight);
        assert_eq!(rows, close_all(&mut again));
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].starts_with("a 1970-01-01T00:00:00 1970-01-01T00:00:12 25.375"), "{rows:?}");
    }

    #[test]
    fn state_from_before_pieces_restores_one_piece_per_session() {
        let mut straight = operator();
        feed(&mut straight, BEFORE);
        // The layout written before pieces: one Accumulator per session, in session order.
        let exprs = &straight.exprs;
        let input = exprs.evaluate(&straight.converter, &batch(BEFORE)).unwrap();
        let key = |i: usize| -> Box<[u8]> { input.keys.row(i).as_ref().into() };
        let sessions =
            [(key(0), 0i64, 3_000i64, &[0u32, 2][..]), (key(0), 10_000, 12_000, &[3]), (key(1), 500, 2_500, &[1])];
        let mut w = StateWriter::default();
        w.i64(i64::MIN);
        w.u64(0);
        w.u64(sessions.len() as u64);
        let mut accs = Vec::new();
        for (k, start, end, rows) in &sessions {
            w.bytes(k);
            w.i64(*start);
            w.i64(*end);
            let mut a = RowAccs::new_group(exprs, &RowAccs::kinds(exprs)).unwrap();
            update_group(&mut a, &input, &UInt32Array::from(rows.to_vec())).unwrap();
            accs.push(a);
        }
        snapshot_groups(accs.iter_mut(), sessions.len(), &mut w).unwrap();
        let mut old = restored(&w.buf);
        feed(&mut straight, AFTER);
        feed(&mut old, AFTER);
        assert_eq!(close_all(&mut straight), close_all(&mut old));
    }

    #[test]
    fn closed_sessions_come_out_by_end_then_key_in_every_run() {
        // Forty keys, each with one session; two ends. Fresh operators hash with fresh seeds.
        let names: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
        let rows: Vec<(&str, f64, i64)> =
            names.iter().enumerate().map(|(i, k)| (k.as_str(), 1.0, if i % 2 == 0 { 5_000 } else { 1_000 })).collect();
        for _ in 0..3 {
            let mut op = operator();
            feed(&mut op, &rows);
            let mut out = Vec::new();
            op.on_watermark(i64::MAX, &mut out).unwrap();
            let got: Vec<(String, String)> = out
                .iter()
                .flat_map(|c| {
                    (0..c.batch.num_rows()).map(|i| {
                        let cell = |col: usize| array_value_to_string(c.batch.column(col), i).unwrap();
                        (cell(2), cell(0))
                    })
                })
                .collect();
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(got.len(), 40);
            assert_eq!(got, sorted, "by window_end, then key");
        }
    }

    #[test]
    fn a_late_session_is_counted_not_aggregated() {
        let mut op = operator();
        feed(&mut op, BEFORE);
        op.on_watermark(20_000, &mut Vec::new()).unwrap();
        // A session closes when the watermark reaches its end: [18_000, 20_000) is closed.
        feed(&mut op, &[("a", 1.0, 17_999), ("a", 1.0, 18_000), ("a", 2.0, 18_001)]);
        assert_eq!(op.late_rows, 2);
        assert_eq!(close_all(&mut op), vec!["a 1970-01-01T00:00:18.001 1970-01-01T00:00:20.001 2.0 2.0".to_string()]);
    }
}

//! Non-windowed `GROUP BY`: an updating result. After every batch the changed groups are emitted as
//! upserts keyed by the GROUP BY columns. State lives as long as its group.

use std::sync::Arc;

use arrow::row::RowConverter;

use super::agg::{AggregateExprs, GroupIndex, RowAccs};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator, RowKind};
use crate::error::{EngineError, Result};
use crate::time::MAX_TS;

pub struct GroupAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    groups: GroupIndex,
    accs: RowAccs,
    limits: Limits,
    scratch: Vec<usize>,
    /// Whether the end of input (watermark [`MAX_TS`]) gives the one row of an aggregate without
    /// GROUP BY that saw no rows (set for one-off queries only).
    one_row_when_empty: bool,
}

impl GroupAggregate {
    pub fn new(exprs: AggregateExprs, limits: Limits) -> Result<Self> {
        Ok(GroupAggregate {
            converter: exprs.row_converter()?,
            exprs,
            groups: GroupIndex::default(),
            accs: RowAccs::default(),
            limits,
            scratch: vec![],
            one_row_when_empty: false,
        })
    }

    /// At the end of input, an aggregate without GROUP BY that saw no rows gives one row, of
    /// its aggregates over nothing (`COUNT` 0, `SUM`/`MAX` NULL), as batch SQL does.
    pub fn one_row_when_empty(&mut self) {
        self.one_row_when_empty = true;
    }

    /// The changed groups' current rows, as upserts.
    fn upserts(&mut self, changed: &[u32]) -> Result<Chunk> {
        let values = self.accs.evaluate(&self.exprs, changed)?;
        let keys = self.groups.key_columns(&self.converter, Some(changed))?;
        let batch = self.exprs.output_batch(keys, None, values, changed.len())?;
        let kinds: Arc<[RowKind]> = vec![RowKind::Upsert; batch.num_rows()].into();
        Ok(Chunk { batch, kinds: Some(kinds) })
    }
}

impl Operator for GroupAggregate {
    fn name(&self) -> String {
        "group aggregate".into()
    }

    fn on_chunk(&mut self, _port: usize, chunk: Chunk, out: &mut Vec<Chunk>) -> Result<()> {
        if chunk.kinds.is_some() {
            return Err(EngineError::Internal("aggregating an updating stream".into()));
        }
        let batch = chunk.batch;
        let n = batch.num_rows();
        let input = self.exprs.evaluate(&self.converter, &batch)?;
        self.scratch.clear();
        for i in 0..n {
            self.scratch.push(self.groups.intern(input.keys.row(i).as_ref()));
        }
        if self.groups.len() > self.limits.max_groups {
            return Err(EngineError::Limit(format!(
                "{} groups in one aggregation (limits.max_groups)",
                self.groups.len()
            )));
        }
        let rows: Vec<u32> = (0..n as u32).collect();
        self.accs.update(&self.exprs, &input, &rows, &self.scratch)?;
        let mut changed: Vec<u32> = self.scratch.iter().map(|&g| g as u32).collect();
        changed.sort_unstable();
        changed.dedup();
        out.push(self.upserts(&changed)?);
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Chunk>) -> Result<i64> {
        if self.one_row_when_empty && wm == MAX_TS && self.exprs.keys.is_empty() && self.groups.len() == 0 {
            // The one group every row of an aggregate without keys falls in, with no rows added.
            let key = self.converter.convert_columns(&[super::constant_key(1)])?;
            let group = self.groups.intern(key.row(0).as_ref());
            self.accs.add_groups(&self.exprs, group + 1)?;
            out.push(self.upserts(&[group as u32])?);
        }
        Ok(wm)
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn snapshot(&mut self, w: &mut StateWriter) -> Result<()> {
        self.groups.snapshot(w);
        self.accs.snapshot(w)?;
        self.exprs.snapshot_arrival(w);
        Ok(())
    }

    fn restore(&mut self, r: &mut StateReader) -> Result<()> {
        self.groups = GroupIndex::restore(r)?;
        self.accs = RowAccs::restore(&self.exprs, r)?;
        if self.accs.len() != self.groups.len() {
            return Err(r.err("groups and accumulators differ in number"));
        }
        self.exprs.restore_arrival(r)
    }

    fn state_bytes(&self) -> usize {
        self.groups.bytes() + self.accs.bytes()
    }
}

//! Non-windowed `GROUP BY`: an updating result. After every batch the changed groups are emitted as
//! upserts keyed by the GROUP BY columns. State lives as long as its group.

use std::sync::Arc;

use arrow::row::RowConverter;

use super::agg::{AggregateExprs, GroupIndex, RowAccs};
use super::snapshot::{StateReader, StateWriter};
use super::{Chunk, Limits, Operator, RowKind};
use crate::error::{EngineError, Result};

pub struct GroupAggregate {
    exprs: AggregateExprs,
    converter: RowConverter,
    groups: GroupIndex,
    accs: RowAccs,
    limits: Limits,
    scratch: Vec<usize>,
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
        })
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
        let values = self.accs.evaluate(&self.exprs, &changed)?;
        let keys = self.groups.key_columns(&self.converter, Some(&changed))?;
        let batch = self.exprs.output_batch(keys, None, values, changed.len())?;
        let kinds: Arc<[RowKind]> = vec![RowKind::Upsert; batch.num_rows()].into();
        out.push(Chunk { batch, kinds: Some(kinds) });
        Ok(())
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Chunk>) -> Result<i64> {
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

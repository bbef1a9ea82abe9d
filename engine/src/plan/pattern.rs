//! Planning `MATCH_RECOGNIZE` into the pattern operator.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion_expr::Expr;

use super::{plan_err, Planner, Stream};
use crate::error::Result;
use crate::ops::pattern::{MatchRecognizeOp, PatternExprs};
use crate::sql::pattern::{MatchRecognizeNode, NavKind, Pat};

/// A part of the pattern repeated without bound must consume rows on every round.
fn check_repeats(p: &Pat) -> Result<()> {
    match p {
        Pat::Var(_) => Ok(()),
        Pat::Concat(v) | Pat::Alt(v) => v.iter().try_for_each(check_repeats),
        Pat::Repeat { pat, max, .. } => {
            if max.is_none() && pat.min_len() == 0 {
                return Err(plan_err(
                    "MATCH_RECOGNIZE: a part of PATTERN repeated with * or + must match at least one row each time",
                ));
            }
            check_repeats(pat)
        }
    }
}

impl Planner<'_> {
    pub(super) fn plan_match_recognize(
        &mut self,
        m: &MatchRecognizeNode,
        outermost: Option<*const datafusion_expr::Aggregate>,
        emit: Option<crate::sql::ddl::Emit>,
    ) -> Result<Stream> {
        let def = m.def.clone();
        check_repeats(&def.pattern)?;
        let input = self.plan_node(&m.input, outermost, emit)?;
        if input.updating {
            return Err(plan_err("MATCH_RECOGNIZE takes an append-only input"));
        }
        let Some(lag) = input.time_offset(def.order_col) else {
            return Err(plan_err(format!(
                "MATCH_RECOGNIZE: ORDER BY {} needs a column with a watermark (declare WATERMARK FOR it)",
                input.schema.field(def.order_col).name()
            )));
        };
        let define_schema: SchemaRef = Arc::new(def.define_navs.schema.as_arrow().clone());
        let measure_schema: SchemaRef = Arc::new(def.measure_navs.schema.as_arrow().clone());
        let defines = def
            .defines
            .iter()
            .map(|d| d.as_ref().map(|e| self.physical(e, &def.define_navs.schema)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let measures =
            def.measures.iter().map(|e| self.physical(e, &def.measure_navs.schema)).collect::<Result<Vec<_>>>()?;
        let schema: SchemaRef = Arc::new(m.schema.as_arrow().clone());
        // With WITHIN, a match's rows are at most `within` older than the watermark's frontier, so
        // a measure that is one of its event times keeps a watermark.
        let mut time_cols = Vec::new();
        if let Some(d) = def.within {
            for (i, e) in def.measures.iter().enumerate() {
                let Expr::Column(c) = e else { continue };
                let Some(k) = c.name.strip_prefix("__nav").and_then(|k| k.parse::<usize>().ok()) else { continue };
                let nav = &def.measure_navs.navs[k];
                if nav.col == Some(def.order_col)
                    && matches!(nav.kind, NavKind::Current | NavKind::First(_) | NavKind::Last(_))
                {
                    time_cols.push((def.partition_by.len() + i, lag + d));
                }
            }
        }
        let exprs = PatternExprs { defines, define_schema, measures, measure_schema };
        self.need_keyed("MATCH_RECOGNIZE", &input, def.partition_by.clone());
        let origins = def.partition_by.iter().map(|&c| input.origins_of(c)).collect();
        let op = MatchRecognizeOp::new(def, exprs, &input.schema, schema.clone(), lag, self.limits)?;
        let node = self.add(Box::new(op), input.node);
        Ok(Stream { origins, ..Stream::append_only(node, schema, time_cols) })
    }
}

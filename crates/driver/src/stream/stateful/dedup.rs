//! Streaming deduplication: the first row of each key passes; with a watermark a key
//! is forgotten once the watermark passes its event time.

use std::collections::HashMap;

use arrow::array::BooleanArray;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, LogicalPlanBuilder};
use ember_core::Result;
use ember_core::event_time::event_times;

use super::{
    Processed, Rows, Watermark, converter, event_time_expr, key_rows, refuse, row_bytes, unalias,
};
use crate::stream::state::Change;

pub struct DedupOp {
    key_types: Vec<DataType>,
    /// The row's columns, after the event time; the keys follow them.
    columns: usize,
}

impl DedupOp {
    pub(super) fn plan(
        distinct: &Distinct,
        watermark: Option<&Watermark>,
    ) -> Result<(LogicalPlan, Self, bool)> {
        let (input, keys): (&LogicalPlan, Vec<Expr>) = match distinct {
            Distinct::All(input) => (
                input,
                input
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect(),
            ),
            Distinct::On(on) => {
                let columns: Vec<Expr> = on
                    .input
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                let select: Vec<&Expr> = on.select_expr.iter().map(unalias).collect();
                if select.len() != columns.len()
                    || select.iter().zip(&columns).any(|(s, c)| *s != c)
                    || on.sort_expr.is_some()
                {
                    return Err(refuse(
                        "DISTINCT ON over a stream keeps whole rows: use drop_duplicates(subset)",
                    ));
                }
                (on.input.as_ref(), on.on_expr.clone())
            }
        };
        let mut exprs = vec![];
        let event_time = event_time_expr(input, watermark)?;
        let has_event_time = event_time.is_some();
        exprs.extend(event_time);
        let columns = input.schema().fields().len();
        exprs.extend(input.schema().columns().into_iter().map(Expr::Column));
        for (i, k) in keys.iter().enumerate() {
            exprs.push(k.clone().alias(format!("__ember_key{i}")));
        }
        let batch = LogicalPlanBuilder::from(input.clone())
            .project(exprs)?
            .build()?;
        let from = usize::from(has_event_time) + columns;
        let key_types = (0..keys.len())
            .map(|i| batch.schema().field(from + i).data_type().clone())
            .collect();
        Ok((batch, DedupOp { key_types, columns }, has_event_time))
    }

    pub(super) fn fold(
        &self,
        seen: &mut HashMap<Box<[u8]>, i64>,
        rows: &Rows,
        next_watermark: Option<i64>,
        output: &SchemaRef,
    ) -> Result<Processed> {
        let converter = converter(&self.key_types)?;
        let mut changes: Vec<Change> = vec![];
        let mut parts = vec![];
        for (b, batch) in rows.input.iter().enumerate() {
            let keys = key_rows(
                &converter,
                batch,
                rows.first + self.columns,
                self.key_types.len(),
            )?;
            let times = if rows.first == 1 {
                Some(event_times(batch.column(0))?)
            } else {
                None
            };
            let mut keep = Vec::with_capacity(batch.num_rows());
            for r in 0..batch.num_rows() {
                let key = row_bytes(&keys, r);
                let new = rows.on_time(b, r) && !seen.contains_key(key);
                if new {
                    let t = times.as_ref().map_or(i64::MAX, |t| t.value(r));
                    seen.insert(key.into(), t);
                    changes.push((key.into(), Some(t.to_le_bytes().to_vec())));
                }
                keep.push(new);
            }
            let columns = batch.columns()[rows.first..rows.first + self.columns].to_vec();
            let row = RecordBatch::try_new(output.clone(), columns)?;
            parts.push(arrow::compute::filter_record_batch(
                &row,
                &BooleanArray::from(keep),
            )?);
        }
        let updated = changes.len();
        let mut removed = 0;
        if let Some(w) = next_watermark {
            seen.retain(|k, t| {
                let keep = *t >= w;
                if !keep {
                    changes.push((k.clone(), None));
                    removed += 1;
                }
                keep
            });
        }
        Ok(Processed {
            rows: arrow::compute::concat_batches(output, &parts)?,
            late_rows: 0,
            next_watermark: None,
            changes,
            rows_total: seen.len(),
            rows_updated: updated,
            rows_removed: removed,
        })
    }
}

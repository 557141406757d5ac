//! Streaming deduplication: the first row of each key passes; with a watermark a key
//! is forgotten once the watermark passes its event time.

use std::collections::HashMap;

use arrow::array::BooleanArray;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::store::Change;
use super::{Processed, Rows, converter, key_rows, row_bytes};
use crate::event_time::event_times;
use crate::{EmberError, Result};

#[derive(Debug)]
pub struct DedupOp {
    key_types: Vec<DataType>,
    /// The row's columns, after the event time; the keys follow them.
    columns: usize,
}

impl DedupOp {
    pub(super) fn new(
        keys: usize,
        columns: usize,
        first: usize,
        input: &Schema,
    ) -> Result<DedupOp> {
        let from = first + columns;
        if input.fields().len() != from + keys {
            return Err(EmberError::Decode {
                what: "a streaming deduplication",
                message: format!("{columns} columns and {keys} keys do not fit input ({input})"),
            });
        }
        Ok(DedupOp {
            key_types: (0..keys)
                .map(|i| input.field(from + i).data_type().clone())
                .collect(),
            columns,
        })
    }

    pub(super) fn fold(
        &self,
        seen: &mut HashMap<Box<[u8]>, i64>,
        rows: &Rows,
        watermark: Option<i64>,
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
        if let Some(w) = watermark {
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
            max_event_time: None,
            changes,
            rows_total: seen.len(),
            rows_updated: updated,
            rows_removed: removed,
        })
    }
}

//! DataFrames from the catalog and from memory: `table`, `range`, `create_dataframe`.

use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use ember_core::{EmberError, Result};

use super::DataFrame;
use crate::session::Session;

/// Rows per batch that `range` builds.
const RANGE_BATCH_ROWS: usize = 64 * 1024;

impl Session {
    /// A registered table or view (`CREATE EXTERNAL TABLE`, `create_or_replace_temp_view`).
    pub async fn table(&self, name: &str) -> Result<DataFrame> {
        let df = self.context().table(name).await?;
        Ok(DataFrame::new(self.clone(), df))
    }

    /// Numbers `start, start + step, ...` up to but excluding `end`, in one `Int64`
    /// column named `id` (Spark's `spark.range`). The rows are built in memory.
    pub fn range(&self, start: i64, end: i64, step: i64) -> Result<DataFrame> {
        let rows = range_len(start, end, step)?;
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let mut batches = Vec::with_capacity(rows.div_ceil(RANGE_BATCH_ROWS));
        let mut done = 0usize;
        while done < rows {
            let n = RANGE_BATCH_ROWS.min(rows - done);
            // Computed in i128: every value lies in [start, end), so the cast back to
            // i64 is exact, but `start + i * step` may overflow on the way there.
            let first = i128::from(start) + done as i128 * i128::from(step);
            let values = (0..n as i128).map(|i| (first + i * i128::from(step)) as i64);
            let column = Arc::new(Int64Array::from_iter_values(values));
            batches.push(RecordBatch::try_new(Arc::clone(&schema), vec![column])?);
            done += n;
        }
        self.dataframe_from_batches(schema, batches)
    }

    /// A DataFrame over rows already in memory. Every batch must have the same schema.
    pub fn create_dataframe(&self, batches: Vec<RecordBatch>) -> Result<DataFrame> {
        let schema = batches.first().map(|b| b.schema()).ok_or_else(|| {
            EmberError::DataFusion(DataFusionError::Plan(
                "create_dataframe needs at least one batch to know the schema".into(),
            ))
        })?;
        self.dataframe_from_batches(schema, batches)
    }

    /// A DataFrame over a `MemTable` of `batches`, spread over the executor slots.
    pub(crate) fn dataframe_from_batches(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<DataFrame> {
        let slots = self.context().copied_config().target_partitions();
        let table = mem_table(schema, batches, slots)?;
        let df = self.context().read_table(Arc::new(table))?;
        Ok(DataFrame::new(self.clone(), df))
    }
}

/// A `MemTable` holding `batches` round-robin in at most `max_partitions` partitions
/// (at least one, so an empty table still has a partition to scan).
pub(crate) fn mem_table(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    max_partitions: usize,
) -> Result<MemTable> {
    let n = batches.len().min(max_partitions).max(1);
    let mut partitions = vec![Vec::new(); n];
    for (i, batch) in batches.into_iter().enumerate() {
        partitions[i % n].push(batch);
    }
    Ok(MemTable::try_new(schema, partitions)?)
}

/// How many rows `range(start, end, step)` has; an error if `step` is zero or the
/// count does not fit in memory-sized integers.
fn range_len(start: i64, end: i64, step: i64) -> Result<usize> {
    if step == 0 {
        return Err(EmberError::DataFusion(DataFusionError::Plan(
            "range step must not be zero".into(),
        )));
    }
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let span = end - start;
    if span == 0 || (span > 0) != (step > 0) {
        return Ok(0);
    }
    // Ceiling division of two same-signed numbers.
    let rows = (span + step - step.signum()) / step;
    usize::try_from(rows).map_err(|_| {
        EmberError::DataFusion(DataFusionError::Plan(format!(
            "range({start}, {end}, {step}) has too many rows ({rows})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::range_len;

    #[test]
    fn range_len_counts_like_spark() {
        assert_eq!(range_len(0, 10, 1).ok(), Some(10));
        assert_eq!(range_len(0, 10, 3).ok(), Some(4)); // 0 3 6 9
        assert_eq!(range_len(10, 0, -3).ok(), Some(4)); // 10 7 4 1
        assert_eq!(range_len(0, 10, -1).ok(), Some(0));
        assert_eq!(range_len(5, 5, 1).ok(), Some(0));
        assert_eq!(range_len(i64::MIN, i64::MAX, i64::MAX).ok(), Some(3));
        assert!(range_len(0, 1, 0).is_err());
    }
}

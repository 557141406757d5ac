//! Key summaries: what a map task reports about the values of chosen columns of its
//! output, so that the driver can filter another stage's scan by them before it starts
//! (a runtime filter).
//!
//! A summary holds every distinct non-null value while there are at most
//! [`MAX_DISTINCT_VALUES`], and only the smallest and largest past that. Merging the
//! summaries of every map task of a stage gives the same kind of summary of the stage.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use crate::convert::{ipc_stream, read_ipc_stream};
use crate::error::{EmberError, Result};

/// The most distinct values a summary lists before it keeps only the bounds.
pub const MAX_DISTINCT_VALUES: usize = 4096;

/// The values one map task saw in column `column` of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// Column index in the map stage's output.
    pub column: usize,
    /// `values` is every distinct non-null value; otherwise it is the smallest and the
    /// largest.
    pub complete: bool,
    /// An Arrow IPC stream of one single-column batch; empty when no non-null value
    /// was seen.
    pub values: Vec<u8>,
}

/// The values of one column, gathered batch by batch or merged from summaries.
#[derive(Debug)]
pub struct KeyValues {
    data_type: DataType,
    /// `None` once more than [`MAX_DISTINCT_VALUES`] were seen.
    distinct: Option<HashSet<ScalarValue>>,
    min: MinAccumulator,
    max: MaxAccumulator,
}

impl KeyValues {
    pub fn try_new(data_type: &DataType) -> Result<Self> {
        Ok(KeyValues {
            data_type: data_type.clone(),
            distinct: Some(HashSet::new()),
            min: MinAccumulator::try_new(data_type)?,
            max: MaxAccumulator::try_new(data_type)?,
        })
    }

    /// Adds the values of `array`.
    pub fn update(&mut self, array: &ArrayRef) -> Result<()> {
        if array.data_type() != &self.data_type {
            return Err(EmberError::Internal(format!(
                "key summary of {} given a {} column",
                self.data_type,
                array.data_type()
            )));
        }
        self.min.update_batch(std::slice::from_ref(array))?;
        self.max.update_batch(std::slice::from_ref(array))?;
        if let Some(set) = &mut self.distinct {
            for i in 0..array.len() {
                if array.is_valid(i) {
                    set.insert(ScalarValue::try_from_array(array, i)?);
                    if set.len() > MAX_DISTINCT_VALUES {
                        self.distinct = None;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds what another task's summary holds; `what` names it in errors.
    pub fn merge(&mut self, summary: &KeySummary, what: &str) -> Result<()> {
        if summary.values.is_empty() {
            return Ok(());
        }
        let (_, batches) = read_ipc_stream(&summary.values, "key summary")
            .map_err(|e| EmberError::Internal(format!("{what}: {e}")))?;
        // Gather this summary's values in a set of their own, then join the two lists
        // when both are whole.
        let before = self.distinct.replace(HashSet::new());
        for batch in &batches {
            if let Some(column) = batch.columns().first() {
                self.update(column)?;
            }
        }
        let now = self.distinct.take();
        self.distinct = match (before, now) {
            (Some(mut before), Some(now)) if summary.complete => {
                before.extend(now);
                (before.len() <= MAX_DISTINCT_VALUES).then_some(before)
            }
            _ => None,
        };
        Ok(())
    }

    /// Every distinct non-null value, sorted, when there are at most
    /// [`MAX_DISTINCT_VALUES`].
    pub fn distinct(&self) -> Option<Vec<ScalarValue>> {
        let mut values: Vec<ScalarValue> = self.distinct.as_ref()?.iter().cloned().collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Some(values)
    }

    /// The smallest and the largest non-null value; `None` when there was none.
    pub fn bounds(&self) -> Result<Option<(ScalarValue, ScalarValue)>> {
        let min = self.min.clone().evaluate()?;
        let max = self.max.clone().evaluate()?;
        if min.is_null() || max.is_null() {
            return Ok(None);
        }
        Ok(Some((min, max)))
    }

    /// The summary of column `column` to report.
    pub fn summary(&self, column: usize) -> Result<KeySummary> {
        let (complete, values) = match self.distinct() {
            Some(values) => (true, values),
            None => match self.bounds()? {
                Some((min, max)) => (false, vec![min, max]),
                None => (true, vec![]),
            },
        };
        if values.is_empty() {
            return Ok(KeySummary {
                column,
                complete,
                values: Vec::new(),
            });
        }
        let array = ScalarValue::iter_to_array(values)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "key",
            self.data_type.clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![array])?;
        Ok(KeySummary {
            column,
            complete,
            values: ipc_stream(&schema, &[batch])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn ints(values: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    #[test]
    fn few_values_are_listed_and_many_keep_their_bounds() {
        let mut a = KeyValues::try_new(&DataType::Int64).unwrap();
        a.update(&ints(&[Some(3), None, Some(1), Some(3)])).unwrap();
        let mut merged = KeyValues::try_new(&DataType::Int64).unwrap();
        merged.merge(&a.summary(0).unwrap(), "task 0").unwrap();
        assert_eq!(
            merged.distinct().unwrap(),
            vec![ScalarValue::Int64(Some(1)), ScalarValue::Int64(Some(3))]
        );

        let many: Vec<Option<i64>> = (0..(MAX_DISTINCT_VALUES as i64 + 10)).map(Some).collect();
        let mut b = KeyValues::try_new(&DataType::Int64).unwrap();
        b.update(&ints(&many)).unwrap();
        let summary = b.summary(0).unwrap();
        assert!(!summary.complete);
        merged.merge(&summary, "task 1").unwrap();
        assert!(merged.distinct().is_none());
        assert_eq!(
            merged.bounds().unwrap(),
            Some((
                ScalarValue::Int64(Some(0)),
                ScalarValue::Int64(Some(MAX_DISTINCT_VALUES as i64 + 9))
            ))
        );
    }

    #[test]
    fn only_nulls_give_an_empty_complete_summary() {
        let mut a = KeyValues::try_new(&DataType::Int64).unwrap();
        a.update(&ints(&[None, None])).unwrap();
        let s = a.summary(2).unwrap();
        assert!(s.complete && s.values.is_empty());
        let mut merged = KeyValues::try_new(&DataType::Int64).unwrap();
        merged.merge(&s, "task 0").unwrap();
        assert_eq!(merged.distinct().unwrap(), vec![]);
        assert_eq!(merged.bounds().unwrap(), None);
    }
}

//! Key summaries: what a map task reports about the values of chosen columns of its
//! output, so that the driver can filter another stage's scan by them before it starts
//! (a runtime filter).
//!
//! A summary holds every distinct non-null value while there are at most
//! [`MAX_DISTINCT_VALUES`]; past that, the 64-bit hashes ([`hash_each`]) of every
//! distinct value while there are at most [`MAX_HASHED_VALUES`], from which the driver
//! makes a [`BloomFilter`]; and always the smallest and largest value. Merging the
//! summaries of every map task of a stage gives the same kind of summary of the stage.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use arrow::array::{Array, ArrayData, ArrayRef, make_array};
use arrow::buffer::MutableBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use crate::convert::{ipc_stream, read_ipc_stream};
use crate::error::{EmberError, Result};

mod bloom;
mod hash;

pub use bloom::BloomFilter;
pub use hash::hash_each;
use hash::{HashSet64, Identity, ValueBytes};

/// The most distinct values a summary lists before it keeps their hashes.
pub const MAX_DISTINCT_VALUES: usize = 4096;

/// The most distinct hashes a summary keeps before it keeps only the bounds: a bloom
/// filter of this many keys takes 1.25 MiB.
pub const MAX_HASHED_VALUES: usize = 1 << 20;

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
    /// The [`hash_each`] of every distinct non-null value, as little-endian u64s, when
    /// `values` is not complete and there are at most [`MAX_HASHED_VALUES`]; else empty
    /// (and `hashed` false).
    pub hashes: Vec<u8>,
    pub hashed: bool,
}

/// The values of one column, gathered batch by batch or merged from summaries.
#[derive(Debug)]
pub struct KeyValues {
    data_type: DataType,
    /// For a type without a fixed width: its values as bytes ([`ValueBytes`]) and back.
    rows: Option<RowConverter>,
    /// `None` once more than [`MAX_DISTINCT_VALUES`] were seen.
    distinct: Option<Listed>,
    /// `None` once more than [`MAX_HASHED_VALUES`] were seen.
    hashes: Option<HashSet64>,
    min: MinAccumulator,
    max: MaxAccumulator,
}

impl KeyValues {
    pub fn try_new(data_type: &DataType) -> Result<Self> {
        let rows = match data_type.primitive_width() {
            Some(_) => None,
            None => RowConverter::new(vec![SortField::new(data_type.clone())]).ok(),
        };
        // A type the row format cannot encode has no bytes to list or hash by: its
        // summary keeps only the bounds.
        let keyed = data_type.primitive_width().is_some() || rows.is_some();
        Ok(KeyValues {
            data_type: data_type.clone(),
            rows,
            distinct: keyed.then(Listed::default),
            hashes: keyed.then(HashSet64::default),
            min: MinAccumulator::try_new(data_type)?,
            max: MaxAccumulator::try_new(data_type)?,
        })
    }

    /// The same, keeping no hashes: for a summary whose bloom filter will not be used,
    /// only its bounds and list.
    pub fn without_hashes(mut self) -> Self {
        self.hashes = None;
        self
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
        if self.distinct.is_none() && self.hashes.is_none() {
            return Ok(());
        }
        let bytes = ValueBytes::of(array, self.rows.as_ref())?;
        let hashes = bytes.hashes();
        let nulls = array.logical_nulls();
        let valid = |i: &usize| nulls.as_ref().is_none_or(|n| n.is_valid(*i));
        if let Some(listed) = &mut self.distinct {
            let mut full = false;
            for i in (0..array.len()).filter(valid) {
                listed.insert(hashes[i], bytes.get(i));
                if listed.len > MAX_DISTINCT_VALUES {
                    full = true;
                    break;
                }
            }
            if !full {
                return Ok(());
            }
            self.stop_listing();
        }
        if let Some(set) = &mut self.hashes {
            set.extend((0..array.len()).filter(valid).map(|i| hashes[i]));
            if set.len() > MAX_HASHED_VALUES {
                self.hashes = None;
            }
        }
        Ok(())
    }

    /// Past [`MAX_DISTINCT_VALUES`]: the listed values go on as their hashes only
    /// (hashes are kept from here on, so a column of few keys never builds a set of
    /// them).
    fn stop_listing(&mut self) {
        if let Some(listed) = self.distinct.take()
            && let Some(set) = &mut self.hashes
        {
            set.extend(listed.by_hash.into_keys());
            if set.len() > MAX_HASHED_VALUES {
                self.hashes = None;
            }
        }
    }

    /// Adds what another task's summary holds; `what` names it in errors.
    pub fn merge(&mut self, summary: &KeySummary, what: &str) -> Result<()> {
        if summary.values.is_empty() {
            return Ok(());
        }
        let (_, batches) = read_ipc_stream(&summary.values, "key summary")
            .map_err(|e| EmberError::Internal(format!("{what}: {e}")))?;
        let columns = batches.iter().filter_map(|b| b.columns().first());
        if summary.complete {
            for column in columns {
                self.update(column)?;
            }
            return Ok(());
        }
        // The task's bounds, and its hashes when it kept them (of values of this type).
        for column in columns {
            if column.data_type() != &self.data_type {
                return Err(EmberError::Internal(format!(
                    "{what}: key summary of {} merged into one of {}",
                    column.data_type(),
                    self.data_type
                )));
            }
            self.min.update_batch(std::slice::from_ref(column))?;
            self.max.update_batch(std::slice::from_ref(column))?;
        }
        if !summary.hashes.len().is_multiple_of(8) {
            return Err(EmberError::Internal(format!(
                "{what}: key summary hashes of {} bytes, not whole 8-byte values",
                summary.hashes.len()
            )));
        }
        self.stop_listing();
        match (&mut self.hashes, summary.hashed) {
            (Some(hashes), true) => {
                hashes.extend(
                    summary
                        .hashes
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                );
                if hashes.len() > MAX_HASHED_VALUES {
                    self.hashes = None;
                }
            }
            _ => self.hashes = None,
        }
        Ok(())
    }

    /// A bloom filter of every distinct value's hash, when there are at most
    /// [`MAX_HASHED_VALUES`].
    pub fn bloom_filter(&self) -> Option<BloomFilter> {
        self.hashes
            .as_ref()
            .map(|h| BloomFilter::of(h.iter().copied(), h.len()))
    }

    /// How many distinct non-null values there are, when at most
    /// [`MAX_DISTINCT_VALUES`].
    pub fn distinct_count(&self) -> Option<usize> {
        self.distinct.as_ref().map(|l| l.len)
    }

    /// Every distinct non-null value, sorted, when there are at most
    /// [`MAX_DISTINCT_VALUES`].
    pub fn distinct(&self) -> Result<Option<ArrayRef>> {
        let Some(listed) = &self.distinct else {
            return Ok(None);
        };
        let values = self.listed_array(listed)?;
        Ok(Some(arrow::compute::sort(&values, None)?))
    }

    /// The listed values as one array, in no particular order.
    fn listed_array(&self, listed: &Listed) -> Result<ArrayRef> {
        let values = listed.by_hash.values().flatten();
        let Some(converter) = &self.rows else {
            // Fixed-width values: their bytes are the array's values buffer.
            let mut buffer =
                MutableBuffer::new(listed.len * self.data_type.primitive_width().unwrap_or(0));
            for v in values {
                buffer.extend_from_slice(v);
            }
            let data = ArrayData::builder(self.data_type.clone())
                .len(listed.len)
                .add_buffer(buffer.into())
                .build()?;
            return Ok(make_array(data));
        };
        let parser = converter.parser();
        let mut columns = converter.convert_rows(values.map(|v| parser.parse(v)))?;
        let column = columns.pop().ok_or_else(|| {
            EmberError::Internal("a row converter of one column gave none".into())
        })?;
        // Dictionaries come back as their values.
        Ok(match column.data_type() == &self.data_type {
            true => column,
            false => arrow::compute::cast(&column, &self.data_type)?,
        })
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
        let (complete, values) = match &self.distinct {
            Some(listed) if listed.len == 0 => (true, None),
            Some(listed) => (true, Some(self.listed_array(listed)?)),
            None => match self.bounds()? {
                Some((min, max)) => (false, Some(ScalarValue::iter_to_array([min, max])?)),
                None => (true, None),
            },
        };
        let hashes = match (&self.hashes, complete) {
            (Some(h), false) => Some(h.iter().flat_map(|v| v.to_le_bytes()).collect()),
            _ => None,
        };
        let hashed = hashes.is_some();
        let hashes = hashes.unwrap_or_default();
        let Some(array) = values else {
            return Ok(KeySummary {
                column,
                complete,
                values: Vec::new(),
                hashes,
                hashed,
            });
        };
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
            hashes,
            hashed,
        })
    }
}

/// Distinct values, by their bytes ([`ValueBytes`]) under their hash: a map task's
/// key column of millions of rows and a few distinct values costs a hash and a lookup
/// a row, and an allocation per distinct value.
#[derive(Debug, Default)]
struct Listed {
    /// Values of the same hash are told apart by their bytes.
    by_hash: HashMap<u64, Vec<Box<[u8]>>, BuildHasherDefault<Identity>>,
    len: usize,
}

impl Listed {
    fn insert(&mut self, hash: u64, bytes: &[u8]) {
        let same = self.by_hash.entry(hash).or_default();
        if !same.iter().any(|b| **b == *bytes) {
            same.push(bytes.into());
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn ints(values: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    fn distinct(values: &KeyValues) -> Option<Vec<ScalarValue>> {
        let array = values.distinct().unwrap()?;
        Some(
            (0..array.len())
                .map(|i| ScalarValue::try_from_array(&array, i).unwrap())
                .collect(),
        )
    }

    #[test]
    fn few_values_are_listed_and_many_keep_their_bounds() {
        let mut a = KeyValues::try_new(&DataType::Int64).unwrap();
        a.update(&ints(&[Some(3), None, Some(1), Some(3)])).unwrap();
        let mut merged = KeyValues::try_new(&DataType::Int64).unwrap();
        merged.merge(&a.summary(0).unwrap(), "task 0").unwrap();
        assert_eq!(
            distinct(&merged).unwrap(),
            vec![ScalarValue::Int64(Some(1)), ScalarValue::Int64(Some(3))]
        );

        let many: Vec<Option<i64>> = (0..(MAX_DISTINCT_VALUES as i64 + 10)).map(Some).collect();
        let mut b = KeyValues::try_new(&DataType::Int64).unwrap();
        b.update(&ints(&many)).unwrap();
        let summary = b.summary(0).unwrap();
        assert!(!summary.complete);
        merged.merge(&summary, "task 1").unwrap();
        assert!(distinct(&merged).is_none());
        assert_eq!(
            merged.bounds().unwrap(),
            Some((
                ScalarValue::Int64(Some(0)),
                ScalarValue::Int64(Some(MAX_DISTINCT_VALUES as i64 + 9))
            ))
        );
    }

    #[test]
    fn past_the_listed_values_a_bloom_filter_holds_every_key() {
        let many: Vec<Option<i64>> = (0..20_000).map(|i| Some(i * 3)).collect();
        let mut a = KeyValues::try_new(&DataType::Int64).unwrap();
        a.update(&ints(&many[..10_000])).unwrap();
        let mut b = KeyValues::try_new(&DataType::Int64).unwrap();
        b.update(&ints(&many[10_000..])).unwrap();
        let mut merged = KeyValues::try_new(&DataType::Int64).unwrap();
        for s in [a.summary(0).unwrap(), b.summary(0).unwrap()] {
            assert!(!s.complete && s.hashed);
            merged.merge(&s, "task").unwrap();
        }
        // Keys of another type are an error, not a filter that drops every row.
        let mut other = KeyValues::try_new(&DataType::Int32).unwrap();
        assert!(other.merge(&a.summary(0).unwrap(), "task").is_err());
        let bloom = merged.bloom_filter().unwrap();
        let present = hash_each(&ints(&many)).unwrap();
        assert!(present.iter().all(|h| bloom.may_contain(*h)));
        let absent: Vec<Option<i64>> = (0..20_000).map(|i| Some(i * 3 + 1)).collect();
        let false_positives = hash_each(&ints(&absent))
            .unwrap()
            .iter()
            .filter(|h| bloom.may_contain(**h))
            .count();
        assert!(false_positives < 1_000, "{false_positives} of 20000");
        let back = BloomFilter::from_bytes(&bloom.to_bytes()).unwrap();
        assert_eq!(back, bloom);
        assert!(BloomFilter::from_bytes(&[0; 24]).is_err());
    }

    #[test]
    fn only_nulls_give_an_empty_complete_summary() {
        let mut a = KeyValues::try_new(&DataType::Int64).unwrap();
        a.update(&ints(&[None, None])).unwrap();
        let s = a.summary(2).unwrap();
        assert!(s.complete && s.values.is_empty());
        let mut merged = KeyValues::try_new(&DataType::Int64).unwrap();
        merged.merge(&s, "task 0").unwrap();
        assert_eq!(distinct(&merged).unwrap(), vec![]);
        assert_eq!(merged.bounds().unwrap(), None);
    }

    /// Every kind of column a join key can be: fixed-width values (sliced, so not at
    /// the start of their buffer), strings and dictionaries (by their row encoding),
    /// decimals, with nulls and repeats across batches and tasks.
    #[test]
    fn distinct_values_of_every_kind_of_column_survive_summaries() {
        use arrow::array::{Decimal128Array, DictionaryArray, StringArray};
        use arrow::datatypes::Int32Type;

        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            None,
            Some("a"),
            Some("b"),
            Some(""),
        ]));
        let dictionary: ArrayRef = Arc::new(
            vec![Some("x"), Some("y"), None, Some("x")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let decimals: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(150), Some(-3), None, Some(150)])
                .with_precision_and_scale(7, 2)
                .unwrap(),
        );
        let sliced = ints(&[Some(9), Some(5), None, Some(7), Some(5)]).slice(1, 4);
        for (array, want) in [
            (strings, vec!["", "a", "b"]),
            (dictionary, vec!["x", "y"]),
            (decimals, vec!["-0.03", "1.50"]),
            (sliced, vec!["5", "7"]),
        ] {
            let mut task = KeyValues::try_new(array.data_type()).unwrap();
            task.update(&array.slice(0, 2)).unwrap();
            task.update(&array.slice(2, array.len() - 2)).unwrap();
            let mut merged = KeyValues::try_new(array.data_type()).unwrap();
            for _ in 0..2 {
                merged.merge(&task.summary(0).unwrap(), "task").unwrap();
            }
            let got = merged.distinct().unwrap().unwrap();
            assert_eq!(got.data_type(), array.data_type());
            let got: Vec<String> = (0..got.len())
                .map(|i| ScalarValue::try_from_array(&got, i).unwrap().to_string())
                .collect();
            assert_eq!(got, want, "{}", array.data_type());
        }
    }

    /// Two values with one hash are two values (a hash is not an identity).
    #[test]
    fn listed_values_of_one_hash_are_told_apart_by_their_bytes() {
        let mut listed = Listed::default();
        listed.insert(7, b"a");
        listed.insert(7, b"b");
        listed.insert(7, b"a");
        assert_eq!(listed.len, 2);
    }
}

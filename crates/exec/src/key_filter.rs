//! The predicates of runtime filters that DataFusion has no compact form of:
//! `KeyFilterExpr`, true for the rows whose key a [`BloomFilter`] of a join's build
//! side may hold (when it has too many keys to list; nulls are false: they never match
//! an equi-join key), and `KeySetExpr`, a long list of keys.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::InListExpr;
use ember_core::keys::{BloomFilter, hash_each};

#[derive(Debug, Clone)]
pub struct KeyFilterExpr {
    key: Arc<dyn PhysicalExpr>,
    filter: Arc<BloomFilter>,
}

impl KeyFilterExpr {
    pub fn new(key: Arc<dyn PhysicalExpr>, filter: BloomFilter) -> Self {
        KeyFilterExpr {
            key,
            filter: Arc::new(filter),
        }
    }

    pub fn filter(&self) -> &BloomFilter {
        &self.filter
    }
}

impl PartialEq for KeyFilterExpr {
    fn eq(&self, other: &Self) -> bool {
        self.key.eq(&other.key) && self.filter == other.filter
    }
}

impl Eq for KeyFilterExpr {}

impl Hash for KeyFilterExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.filter.len_bytes().hash(state);
    }
}

impl fmt::Display for KeyFilterExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} IN BLOOM FILTER ({} bytes)",
            self.key,
            self.filter.len_bytes()
        )
    }
}

impl PhysicalExpr for KeyFilterExpr {
    fn data_type(&self, _input_schema: &Schema) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> DFResult<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DFResult<ColumnarValue> {
        let keys = self.key.evaluate(batch)?.into_array(batch.num_rows())?;
        let hashes = hash_each(&keys).map_err(datafusion::error::DataFusionError::from)?;
        let found =
            BooleanBuffer::collect_bool(hashes.len(), |i| self.filter.may_contain(hashes[i]));
        // A null key matches no build row.
        let kept = match keys.logical_nulls() {
            Some(nulls) => &found & nulls.inner(),
            None => found,
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            kept, None,
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.key]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DFResult<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(KeyFilterExpr {
            key: children[0].clone(),
            filter: self.filter.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt_sql(f)?;
        write!(f, " IN BLOOM FILTER")
    }
}

/// `KeySetExpr`: true for the rows whose key is one of a join build side's listed
/// keys. It holds them as one Arrow array, which the plan codec carries as Arrow IPC:
/// thousands of keys as `IN (...)` literals would cost milliseconds to encode, and to
/// decode in every task. Nulls are null, and so filtered out.
#[derive(Debug)]
pub struct KeySetExpr {
    key: Arc<dyn PhysicalExpr>,
    values: ArrayRef,
    /// DataFusion's `IN` over `values`, built at the first batch (it needs the
    /// input's schema).
    list: OnceLock<Arc<dyn PhysicalExpr>>,
}

impl KeySetExpr {
    pub fn new(key: Arc<dyn PhysicalExpr>, values: ArrayRef) -> Self {
        KeySetExpr {
            key,
            values,
            list: OnceLock::new(),
        }
    }

    pub fn values(&self) -> &ArrayRef {
        &self.values
    }

    fn list(&self, schema: &Schema) -> DFResult<&Arc<dyn PhysicalExpr>> {
        if let Some(list) = self.list.get() {
            return Ok(list);
        }
        let list =
            InListExpr::try_new_from_array(self.key.clone(), self.values.clone(), false, schema)?;
        Ok(self.list.get_or_init(|| Arc::new(list)))
    }
}

impl PartialEq for KeySetExpr {
    fn eq(&self, other: &Self) -> bool {
        self.key.eq(&other.key) && self.values.to_data() == other.values.to_data()
    }
}

impl Eq for KeySetExpr {}

impl Hash for KeySetExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.values.len().hash(state);
    }
}

impl fmt::Display for KeySetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} IN ({} KEYS)", self.key, self.values.len())
    }
}

impl PhysicalExpr for KeySetExpr {
    fn data_type(&self, _input_schema: &Schema) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> DFResult<bool> {
        self.key.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DFResult<ColumnarValue> {
        self.list(&batch.schema())?.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.key]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DFResult<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(KeySetExpr::new(
            children[0].clone(),
            self.values.clone(),
        )))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt_sql(f)?;
        write!(f, " IN ({} KEYS)", self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    #[test]
    fn a_key_set_keeps_its_keys_and_no_null() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("other", DataType::Int64, true),
            Field::new("k", DataType::Int64, true),
        ]));
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(5)]));
        let batch = RecordBatch::try_new(schema, vec![keys.clone(), keys]).unwrap();
        let set = KeySetExpr::new(
            Arc::new(Column::new("k", 1)),
            Arc::new(Int64Array::from(vec![2, 5, 9])),
        );
        let kept = set.evaluate(&batch).unwrap().into_array(4).unwrap();
        let kept = kept.as_any().downcast_ref::<BooleanArray>().unwrap();
        let kept: Vec<Option<bool>> = kept.iter().collect();
        assert_eq!(kept, [Some(false), Some(true), None, Some(true)]);
        assert_eq!(set.to_string(), "k@1 IN (3 KEYS)");
    }

    #[test]
    fn a_bloom_filter_keeps_its_keys_of_a_sliced_batch_and_never_a_null() {
        use arrow::array::StringArray;
        use ember_core::keys::KeyValues;

        // Build sides of two types: fixed-width keys hash their bytes, strings their
        // row encoding; either way past the listed values a bloom filter holds them.
        let ints: ArrayRef = Arc::new(Int64Array::from_iter_values((0..10_000).map(|i| i * 7)));
        let strings: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..10_000).map(|i| format!("key-{}", i * 7)),
        ));
        for build in [ints, strings] {
            let mut values = KeyValues::try_new(build.data_type()).unwrap();
            values.update(&build).unwrap();
            let bloom = values
                .bloom_filter()
                .expect("hashed past the listed values");
            let filter = KeyFilterExpr::new(Arc::new(Column::new("k", 0)), bloom);
            // The probe: a null, then every build key and as many absent ones, read
            // through a slice (an offset into the buffers).
            let probe = arrow::compute::concat(&[
                &arrow::array::new_null_array(build.data_type(), 1),
                &build,
                &arrow::compute::cast(
                    &Int64Array::from_iter_values((0..10_000).map(|i| i * 7 + 3)),
                    build.data_type(),
                )
                .unwrap(),
            ])
            .unwrap()
            .slice(0, 20_001);
            let schema = Arc::new(Schema::new(vec![Field::new(
                "k",
                build.data_type().clone(),
                true,
            )]));
            let batch = RecordBatch::try_new(schema, vec![probe]).unwrap();
            let kept = filter.evaluate(&batch).unwrap().into_array(20_001).unwrap();
            let kept = kept.as_any().downcast_ref::<BooleanArray>().unwrap();
            assert_eq!(kept.null_count(), 0);
            assert!(!kept.value(0), "a null key is never kept");
            assert!(
                (1..=10_000).all(|i| kept.value(i)),
                "no build key is dropped"
            );
            let false_positives = (10_001..20_001).filter(|i| kept.value(*i)).count();
            assert!(
                false_positives < 500,
                "{false_positives} of 10000 absent keys kept"
            );
            // The same rows at an offset: the answers move with them.
            let sliced = batch.slice(5, 100);
            let kept = filter.evaluate(&sliced).unwrap().into_array(100).unwrap();
            let kept = kept.as_any().downcast_ref::<BooleanArray>().unwrap();
            assert!((0..100).all(|i| kept.value(i)));
        }
    }
}

//! The predicates of runtime filters that DataFusion has no compact form of:
//! `KeyFilterExpr`, true for the rows whose key a [`BloomFilter`] of a join's build
//! side may hold (when it has too many keys to list; nulls are false: they never match
//! an equi-join key), and `KeySetExpr`, a long list of keys.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::InListExpr;
use ember_core::keys::{BloomFilter, hash_keys};

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
        let hashes = hash_keys(&keys).map_err(datafusion::error::DataFusionError::from)?;
        let kept: BooleanArray = hashes
            .into_iter()
            .map(|h| Some(h.is_some_and(|h| self.filter.may_contain(h))))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(kept)))
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
}

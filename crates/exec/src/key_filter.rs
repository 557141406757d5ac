//! `KeyFilterExpr`: true for the rows whose key a [`BloomFilter`] of a join's build
//! side may hold; a runtime filter's predicate when the build side has too many keys to
//! list. Nulls are false: they never match an equi-join key.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
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

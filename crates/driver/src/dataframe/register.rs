//! Registering functions with a session: scalar UDFs, aggregate UDFs and batch
//! functions for `map_batches`.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use ember_exec::batch_fn::BatchFn;

use crate::session::Session;

impl Session {
    /// Makes a scalar function callable from SQL and from `DataFrame` expressions
    /// (`udf.call(vec![col("a")])`).
    pub fn register_udf(&self, udf: ScalarUDF) {
        self.context().register_udf(udf);
    }

    /// Makes an aggregate function callable from SQL and from `GroupedData::agg`.
    pub fn register_udaf(&self, udaf: AggregateUDF) {
        self.context().register_udaf(udaf);
    }

    /// Registers `f` under `name` for [`DataFrame::map_batches`](super::DataFrame::map_batches).
    /// `f` must return batches of exactly `output_schema`; a later registration with the
    /// same name replaces this one.
    pub fn register_batch_fn<F>(&self, name: &str, output_schema: SchemaRef, f: F)
    where
        F: Fn(RecordBatch) -> datafusion::error::Result<RecordBatch> + Send + Sync + 'static,
    {
        self.batch_fns().register(BatchFn {
            name: name.to_string(),
            output_schema,
            func: Arc::new(f),
        });
    }
}

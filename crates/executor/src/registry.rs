//! The functions an executor offers: DataFusion's built-ins plus what a user's
//! program registers before it runs as an executor.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;
use ember_exec::batch_fn::{BatchFn, BatchFnRegistry};
use ember_exec::task::{FunctionSet, FunctionSource};

/// User functions for an executor process:
///
/// ```no_run
/// # async fn demo(udf: datafusion::logical_expr::ScalarUDF) -> ember_core::Result<()> {
/// let registry = ember_executor::Registry::new().with_udf(udf);
/// let config = ember_executor::ExecutorConfig::new("http://127.0.0.1:7077", "/tmp/ember-work");
/// ember_executor::run(config, registry).await
/// # }
/// ```
///
/// The driver checks a job's functions against what each executor registered and
/// refuses a job naming a function an executor lacks.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) batch_fns: Arc<BatchFnRegistry>,
    scalar: Vec<ScalarUDF>,
    aggregate: Vec<AggregateUDF>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("functions", &self.user_functions())
            .field("batch_fns", &self.batch_fns.names())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// A scalar UDF, under the same name the client's session registered it.
    pub fn with_udf(mut self, udf: ScalarUDF) -> Self {
        self.scalar.push(udf);
        self
    }

    /// An aggregate UDF.
    pub fn with_udaf(mut self, udaf: AggregateUDF) -> Self {
        self.aggregate.push(udaf);
        self
    }

    /// A batch function for `map_batches`.
    pub fn with_batch_fn<F>(self, name: &str, output_schema: SchemaRef, f: F) -> Self
    where
        F: Fn(RecordBatch) -> datafusion::error::Result<RecordBatch> + Send + Sync + 'static,
    {
        self.batch_fns.register(BatchFn {
            name: name.to_string(),
            output_schema,
            func: Arc::new(f),
        });
        self
    }

    /// Names of the user's scalar and aggregate functions, aliases included, sorted.
    pub fn user_functions(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .scalar
            .iter()
            .flat_map(|f| std::iter::once(f.name().to_string()).chain(f.aliases().iter().cloned()))
            .chain(self.aggregate.iter().flat_map(|f| {
                std::iter::once(f.name().to_string()).chain(f.aliases().iter().cloned())
            }))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The built-ins plus the user's functions, as tasks resolve them.
    pub(crate) fn function_source(&self) -> Arc<dyn FunctionSource> {
        let ctx = SessionContext::new();
        for f in ember_core::ember_functions() {
            ctx.register_udf(f);
        }
        for f in &self.scalar {
            ctx.register_udf(f.clone());
        }
        for f in &self.aggregate {
            ctx.register_udaf(f.clone());
        }
        Arc::new(Functions(FunctionSet::of(&ctx.state())))
    }
}

/// A fixed set of functions, the same for every task of this executor.
#[derive(Debug)]
struct Functions(FunctionSet);

impl FunctionSource for Functions {
    fn functions(&self) -> FunctionSet {
        self.0.clone()
    }
}

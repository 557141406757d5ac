//! A table a client cached on its driver (`CACHE TABLE t`): in the client's catalog
//! only its name and schema, for planning; the driver reads its cached partitions in
//! the plan's place.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Stands for table `name`, cached in the client's session on the driver.
#[derive(Debug)]
pub(crate) struct CachedOnDriver {
    pub name: String,
    pub schema: SchemaRef,
}

#[async_trait::async_trait]
impl TableProvider for CachedOnDriver {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "table {} is cached on the driver, which reads it; this session has no \
             driver that caches it (was it uncached?)",
            self.name
        )))
    }
}

//! Actions: each runs the frame's plan as one ember job through
//! [`Session::collect_plan`](crate::Session::collect_plan).

use arrow::array::{Array, Int64Array};
use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::count::count_all;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::physical_plan::SendableRecordBatchStream;
use ember_core::{EmberError, Result};

use super::DataFrame;

impl DataFrame {
    /// Runs the plan and returns every row.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        let stream = self.execute_stream().await?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }

    /// Runs the plan and streams its rows as the job's tasks finish, partition by
    /// partition in order (Spark's `toLocalIterator`): the rows never have to fit in
    /// memory at once, and the first arrive before the last task ends. Dropping the
    /// stream cancels the job.
    pub async fn execute_stream(&self) -> Result<SendableRecordBatchStream> {
        self.session
            .execute_described(self.logical_plan(), self.description.as_deref())
            .await
    }

    /// The number of rows, counted by the job (only the count comes back).
    pub async fn count(&self) -> Result<usize> {
        let plan = LogicalPlanBuilder::from(self.logical_plan().clone())
            .aggregate(Vec::<Expr>::new(), vec![count_all()])?
            .build()?;
        let batches = self
            .session
            .collect_described(&plan, self.description.as_deref())
            .await?;
        let counts = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>())
            .filter(|a| !a.is_null(0))
            .ok_or_else(|| EmberError::Internal("count(*) returned no Int64 value".into()))?;
        usize::try_from(counts.value(0))
            .map_err(|_| EmberError::Internal(format!("negative count {}", counts.value(0))))
    }

    /// The first row as a one-row batch, or `None` if there are no rows.
    pub async fn first(&self) -> Result<Option<RecordBatch>> {
        let row = self.take(1).await?;
        Ok((row.num_rows() > 0).then_some(row))
    }

    /// The first `n` rows (fewer if there are fewer), in one batch.
    pub async fn take(&self, n: usize) -> Result<RecordBatch> {
        let batches = self.limit(n)?.collect().await?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.schema());
        Ok(concat_batches(&schema, &batches)?)
    }
}

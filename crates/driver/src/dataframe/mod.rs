//! The lazy DataFrame API.

use arrow::record_batch::RecordBatch;
use ember_core::Result;

use crate::session::Session;

/// A lazy, immutable table: transformations build a plan, actions run it as an ember job.
#[derive(Debug, Clone)]
pub struct DataFrame {
    session: Session,
    df: datafusion::dataframe::DataFrame,
}

impl DataFrame {
    pub(crate) fn new(session: Session, df: datafusion::dataframe::DataFrame) -> Self {
        DataFrame { session, df }
    }

    /// Runs the plan and returns every row.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        self.session.collect_plan(self.df.logical_plan()).await
    }
}

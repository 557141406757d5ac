//! The engine: stage planner + DAG scheduler + executor slots.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use ember_core::batch_fn::BatchFnRegistry;
use ember_core::task::FunctionSource;
use ember_core::{EmberConfig, Result};

/// One running stage, as progress bars show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageProgress {
    pub job: u64,
    pub stage: usize,
    pub total: usize,
    pub running: usize,
    pub done: usize,
}

/// Every running stage of every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub stages: Vec<StageProgress>,
}

pub(crate) struct Engine {
    progress: tokio::sync::watch::Receiver<JobProgress>,
}

impl Engine {
    pub(crate) fn start_local(
        _slots: usize,
        _config: &EmberConfig,
        _batch_fns: Arc<BatchFnRegistry>,
        _functions: Arc<dyn FunctionSource>,
    ) -> Result<Engine> {
        let (_tx, progress) = tokio::sync::watch::channel(JobProgress::default());
        Ok(Engine { progress })
    }

    pub(crate) async fn run(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &SessionConfig,
    ) -> Result<Vec<RecordBatch>> {
        let ctx = datafusion::execution::TaskContext::default();
        Ok(datafusion::physical_plan::collect(plan, Arc::new(ctx)).await?)
    }

    pub(crate) fn explain(&self, _plan: Arc<dyn ExecutionPlan>) -> Result<String> {
        Ok(String::new())
    }

    pub(crate) fn progress(&self) -> tokio::sync::watch::Receiver<JobProgress> {
        self.progress.clone()
    }
}

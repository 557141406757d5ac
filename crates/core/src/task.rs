//! Tasks: what the scheduler sends and what comes back (`ember_exec::task` runs
//! them), and the DataFusion settings every stage runs with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionConfig;

use crate::config::EmberConfig;
use crate::error::{EmberError, Result};
use crate::shuffle::MapOutput;

/// `(job, stage, stage_attempt, partition, task_attempt)`: every attempt of every task
/// is distinct, so a late report of an old attempt is recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub job: u64,
    pub stage: usize,
    pub stage_attempt: usize,
    pub partition: usize,
    pub attempt: usize,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {}.{}.{} (stage attempt {}, attempt {})",
            self.job, self.stage, self.partition, self.stage_attempt, self.attempt
        )
    }
}

/// Everything needed to run a task: the encoded stage plan and the session config.
#[derive(Debug, Clone)]
pub struct TaskDefinition {
    pub id: TaskId,
    pub plan: bytes::Bytes,
    /// For a slot in the driver's own process: the stage plan that `plan` encodes.
    /// The task runs a copy of it with fresh operator state instead of decoding
    /// `plan`. Never sent to another process.
    pub in_process: Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    pub config: Arc<Vec<(String, String)>>,
    pub session_id: String,
}

/// What a successful task produced.
#[derive(Debug, Clone)]
pub enum TaskOutput {
    /// A map task's shuffle output.
    Map(MapOutput),
    /// A final-stage task's result rows.
    Result(Vec<RecordBatch>),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TaskMetrics {
    pub output_rows: u64,
    pub output_bytes: u64,
    pub elapsed: Duration,
}

/// Why a task failed, as the scheduler needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    Execution,
    FetchFailed {
        executor: String,
        map_stage: usize,
        map_partition: usize,
    },
    Io,
    ExecutorLost,
    Killed,
    /// An operator that cannot spill asked for more than the executor's memory pool
    /// had left.
    ResourcesExhausted,
}

#[derive(Debug, Clone)]
pub struct TaskFailure {
    pub reason: FailureReason,
    pub message: String,
    pub retryable: bool,
}

/// A typed task result.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub id: TaskId,
    pub executor_id: String,
    pub result: std::result::Result<(TaskOutput, TaskMetrics), TaskFailure>,
}

/// DataFusion settings ember's stages need, whatever the session says.
///
/// - Work stealing lets one partition of a file scan read its siblings' files, which is
///   right in one process that polls every partition, and wrong when each partition is
///   an isolated task: a task would read the whole table.
/// - Join dynamic filters make the partitions of one hash join wait for each other at
///   a barrier: a task runs one partition alone and would wait forever.
/// - Physical scalar subqueries share their result with expressions elsewhere in the
///   plan through memory, which no stage boundary can carry; planned as joins instead,
///   they become ordinary (broadcast) stages.
pub const REQUIRED_DATAFUSION_SETTINGS: &[(&str, &str)] = &[
    (
        "datafusion.execution.enable_file_stream_work_stealing",
        "false",
    ),
    (
        "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
        "false",
    ),
    (
        "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
        "false",
    ),
];

/// Applies `key=value` settings, then [`REQUIRED_DATAFUSION_SETTINGS`], to a config.
pub fn apply_settings<'a>(
    config: &mut SessionConfig,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let required = REQUIRED_DATAFUSION_SETTINGS.iter().map(|(k, v)| (*k, *v));
    for (k, v) in pairs.into_iter().chain(required) {
        config
            .options_mut()
            .set(k, v)
            .map_err(|e| EmberError::Config(format!("{k}={v}: {e}")))?;
    }
    Ok(())
}

/// Builds a session config from the key/value pairs a task definition carries.
pub fn session_config_from_pairs(pairs: &[(String, String)]) -> Result<SessionConfig> {
    let mut config = SessionConfig::new().with_option_extension(EmberConfig::default());
    apply_settings(
        &mut config,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok(config)
}

/// The ember error inside a DataFusion error, if there is one.
pub fn find_ember_error(e: &DataFusionError) -> Option<&EmberError> {
    match e {
        DataFusionError::External(b) => {
            b.downcast_ref::<EmberError>()
                .and_then(|inner| match inner {
                    EmberError::DataFusion(df) => find_ember_error(df).or(Some(inner)),
                    other => Some(other),
                })
        }
        DataFusionError::Context(_, inner) => find_ember_error(inner),
        DataFusionError::Shared(inner) => find_ember_error(inner),
        DataFusionError::Diagnostic(_, inner) => find_ember_error(inner),
        _ => None,
    }
}

//! What the UI store keeps, as the REST API serializes it.

use std::sync::Arc;

use serde::Serialize;

use crate::events::{JobStatus, SqlStatus, StageStatus, TaskRef, TaskStatus};
use crate::stream::{Progress, Status as StreamStatus};

#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub id: u64,
    pub description: String,
    pub status: JobStatus,
    pub submitted_ms: i64,
    pub completed_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub stages: Vec<usize>,
    pub num_tasks: usize,
    pub completed_tasks: usize,
    pub failed_tasks: usize,
    pub shuffle_bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    pub partition: usize,
    pub attempt: usize,
    pub executor: Option<String>,
    pub status: TaskStatus,
    pub start_ms: i64,
    pub duration_ms: Option<i64>,
    pub rows_out: u64,
    pub bytes_out: u64,
    pub error: Option<String>,
}

impl TaskInfo {
    pub(super) fn started(id: &TaskRef, start_ms: i64) -> TaskInfo {
        TaskInfo {
            partition: id.partition,
            attempt: id.attempt,
            executor: None,
            status: TaskStatus::Running,
            start_ms,
            duration_ms: None,
            rows_out: 0,
            bytes_out: 0,
            error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageInfo {
    pub job: u64,
    pub id: usize,
    pub attempt: usize,
    pub name: String,
    pub status: StageStatus,
    pub partitions: usize,
    pub parents: Vec<usize>,
    pub exchange: Option<String>,
    pub tasks_total: usize,
    pub tasks_done: usize,
    pub tasks_running: usize,
    pub tasks_failed: usize,
    /// Rows read from the shuffle: what the parent stages wrote.
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_out: u64,
    pub shuffle_write_bytes: u64,
    pub shuffle_read_bytes: u64,
    pub submitted_ms: Option<i64>,
    pub completed_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Partitions it was planned with, before adaptive execution changed them.
    pub planned_partitions: usize,
    /// What adaptive execution decided for it when it started (empty: as planned).
    pub adaptive: Vec<String>,
    /// Shared, so that listing stages copies no plans and no tasks.
    #[serde(skip)]
    pub plan: Arc<str>,
    #[serde(skip)]
    pub tasks: Arc<Vec<TaskInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SqlInfo {
    pub id: u64,
    pub description: String,
    pub submitted_ms: i64,
    pub duration_ms: Option<i64>,
    pub status: SqlStatus,
    pub jobs: Vec<u64>,
    pub logical_plan: String,
    pub physical_plan: String,
    /// Its jobs' stages that adaptive execution planned again, as they ran: a
    /// heading (`job J stage S: N tasks, planned M`), the decisions, the stage plan.
    pub adaptive: Vec<String>,
}

/// A streaming query as the UI and `/metrics` read it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    pub active: bool,
    pub status: StreamStatus,
    pub recent_progress: Vec<Progress>,
}

/// The application itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppInfo {
    pub id: String,
    pub name: String,
    pub master: String,
    pub start_ms: i64,
    /// When it stopped (replayed applications whose log says so).
    pub end_ms: Option<i64>,
}

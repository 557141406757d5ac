//! The application's typed events, and the bus that hands them to listeners.
//!
//! The scheduler (`engine/`), the cluster registry, the session and the streaming
//! runner post [`AppEvent`]s; everything that shows or keeps driver state listens:
//!
//! ```text
//!  scheduler ─┐                    ┌─▶ UI store (ui::status): REST API, /metrics
//!  registry  ─┼─▶ ListenerBus::post ┼─▶ job records (records.rs): GetJob / CancelJob
//!  session   ─┤   (one at a time,   ├─▶ progress (progress.rs): the running stages'
//!  streaming ─┘    in post order)   │   task counts, for progress bars
//!                                   └─▶ event log (log.rs): <dir>/<app>.jsonl
//! ```
//!
//! Delivery is synchronous and serialized: every listener sees every event in the
//! same order, and a listener has seen an event before `post` returns (so the UI
//! shows a job as ended by the time its caller has the result). Listeners must
//! therefore be quick and never block: the event log hands lines to its own writer
//! thread. A listener must not post from `on_event`.
//!
//! The events are serde-serializable: the event log writes them as JSON lines and
//! `ember history` replays them into the same UI store.

pub(crate) mod log;
pub mod progress;
pub(crate) mod records;

use std::sync::Arc;

use ember_exec::task::{FailureReason, TaskId, TaskStatus as TaskReport};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::stream::Progress;

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh application id, as Spark names them: `app-<start ms>-<pid>`.
pub(crate) fn new_app_id() -> String {
    format!("app-{}-{:04}", now_ms(), std::process::id() % 10_000)
}

/// How a job stands; serialized as the REST API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// How a stage stands in the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Waiting,
    Running,
    Done,
    Failed,
}

/// How a task attempt stands in the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Succeeded,
    Failed,
}

/// How a SQL query stands in the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlStatus {
    Running,
    Succeeded,
    Failed,
}

/// How an executor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorStatus {
    Active,
    Decommissioning,
    Lost,
}

/// An executor as the UI and the REST API show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutorView {
    pub id: String,
    pub address: String,
    pub cores: usize,
    pub memory_bytes: u64,
    /// The executor process's peak resident memory, from its heartbeats (0 before
    /// the first, or in local mode).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    pub active_tasks: usize,
    pub registered_ms: i64,
    pub last_heartbeat_ms: i64,
    pub status: ExecutorStatus,
    pub lost_reason: Option<String>,
}

/// The executors as they are now, heartbeats and memory included (what changes too
/// often to be an event): the cluster registry answers it for the live UI.
pub(crate) trait LiveExecutors: Send + Sync {
    /// Every registered executor, then the ones lost lately.
    fn views(&self) -> Vec<ExecutorView>;
}

/// `(job, stage, stage_attempt, partition, attempt)` of a task attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    pub job: u64,
    pub stage: usize,
    pub stage_attempt: usize,
    pub partition: usize,
    pub attempt: usize,
}

impl From<TaskId> for TaskRef {
    fn from(id: TaskId) -> TaskRef {
        TaskRef {
            job: id.job,
            stage: id.stage,
            stage_attempt: id.stage_attempt,
            partition: id.partition,
            attempt: id.attempt,
        }
    }
}

/// What a successful task measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub rows_out: u64,
    pub bytes_out: u64,
    pub elapsed_ms: u64,
}

/// Why a task attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// `Execution`, `FetchFailed { .. }`, `Io`, `ExecutorLost`, `Killed`.
    pub reason: String,
    pub message: String,
    pub retryable: bool,
}

/// A stage of a job as the planner cut it: its plan and its place in the DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlan {
    pub id: usize,
    /// The operator that names it: the first below the shuffle writer.
    pub name: String,
    /// The plan, indented, as `EXPLAIN` prints it.
    pub plan: String,
    pub parents: Vec<usize>,
    pub tasks: usize,
    /// Where its output goes: `hash(4)`, `single`, ... (none for the final stage).
    pub exchange: Option<String>,
}

/// Something that happened in the application. Each carries its time (ms since the
/// epoch), so a replay shows the times the live UI showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AppEvent {
    AppStarted {
        app_id: String,
        name: String,
        master: String,
        time_ms: i64,
    },
    AppEnded {
        time_ms: i64,
    },
    SqlStarted {
        id: u64,
        description: String,
        logical_plan: String,
        physical_plan: String,
        time_ms: i64,
    },
    SqlEnded {
        id: u64,
        status: SqlStatus,
        time_ms: i64,
    },
    JobSubmitted {
        job: u64,
        description: String,
        /// The SQL query it runs for.
        sql: Option<u64>,
        stages: Vec<StagePlan>,
        time_ms: i64,
    },
    JobEnded {
        job: u64,
        status: JobStatus,
        error: Option<String>,
        time_ms: i64,
    },
    /// A stage (attempt) starts: its parents are done, its tasks are queued. `done`
    /// of its tasks have their output already, `running` still run (from before it
    /// went back to waiting).
    StageSubmitted {
        job: u64,
        stage: usize,
        attempt: usize,
        #[serde(default)]
        done: usize,
        #[serde(default)]
        running: usize,
        time_ms: i64,
    },
    /// Adaptive execution planned a stage's tasks again when it first started, from
    /// the sizes of the shuffle outputs it reads: it runs as `tasks` tasks, with
    /// `plan` (its operators as they run), for the reasons in `notes`.
    StageAdapted {
        job: u64,
        stage: usize,
        tasks: usize,
        /// The tasks it was planned with.
        planned: usize,
        notes: Vec<String>,
        plan: String,
    },
    /// A stage goes back to waiting: map output it reads, or some of its own, was
    /// lost and is being recomputed from lineage.
    StageWaiting {
        job: u64,
        stage: usize,
        attempt: usize,
        time_ms: i64,
    },
    StageCompleted {
        job: u64,
        stage: usize,
        attempt: usize,
        time_ms: i64,
    },
    TaskStarted {
        task: TaskRef,
        time_ms: i64,
    },
    /// A task attempt's report, accepted by the scheduler (stale ones are not posted).
    TaskEnded {
        task: TaskRef,
        executor: String,
        /// Its output went to the shuffle.
        map: bool,
        metrics: Option<TaskMetrics>,
        failure: Option<TaskFailure>,
        time_ms: i64,
    },
    ExecutorAdded {
        executor: String,
        address: String,
        cores: usize,
        memory_bytes: u64,
        time_ms: i64,
    },
    /// Leaving on purpose: no new tasks go to it.
    ExecutorDecommissioned {
        executor: String,
        reason: String,
        time_ms: i64,
    },
    ExecutorLost {
        executor: String,
        reason: String,
        time_ms: i64,
    },
    StreamingQueryStarted {
        id: String,
        run_id: String,
        name: Option<String>,
        time_ms: i64,
    },
    StreamingBatchCommitted {
        progress: Box<Progress>,
    },
    StreamingQueryEnded {
        id: String,
        run_id: String,
        time_ms: i64,
    },
}

impl AppEvent {
    /// The `TaskEnded` event of a task report.
    pub(crate) fn task_ended(report: &TaskReport, map: bool) -> AppEvent {
        let (metrics, failure) = match &report.result {
            Ok((_, m)) => (
                Some(TaskMetrics {
                    rows_out: m.output_rows,
                    bytes_out: m.output_bytes,
                    elapsed_ms: m.elapsed.as_millis() as u64,
                }),
                None,
            ),
            Err(f) => (
                None,
                Some(TaskFailure {
                    reason: reason_name(&f.reason),
                    message: f.message.clone(),
                    retryable: f.retryable,
                }),
            ),
        };
        AppEvent::TaskEnded {
            task: report.id.into(),
            executor: report.executor_id.clone(),
            map,
            metrics,
            failure,
            time_ms: now_ms(),
        }
    }
}

fn reason_name(reason: &FailureReason) -> String {
    format!("{reason:?}")
}

/// Hears every event of the application, in order. Must return quickly.
pub trait Listener: Send + Sync {
    fn on_event(&self, event: &AppEvent);
}

/// Hands each posted event to every listener, one event at a time.
#[derive(Default)]
pub struct ListenerBus {
    listeners: RwLock<Vec<Arc<dyn Listener>>>,
    /// Held while an event is delivered: listeners see one order.
    delivering: Mutex<()>,
}

impl ListenerBus {
    pub fn new() -> Arc<ListenerBus> {
        Arc::default()
    }

    /// Adds a listener; it hears the events posted from now on.
    pub fn add(&self, listener: Arc<dyn Listener>) {
        self.listeners.write().push(listener);
    }

    pub fn post(&self, event: AppEvent) {
        let _order = self.delivering.lock();
        for l in self.listeners.read().iter() {
            l.on_event(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_the_rest_api_shows_them() {
        let s = |v: &dyn erased::Ser| v.json();
        assert_eq!(s(&JobStatus::Cancelled), "\"cancelled\"");
        assert_eq!(s(&StageStatus::Done), "\"done\"");
        assert_eq!(s(&TaskStatus::Succeeded), "\"succeeded\"");
        assert_eq!(s(&ExecutorStatus::Decommissioning), "\"decommissioning\"");
    }

    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = AppEvent::JobEnded {
            job: 3,
            status: JobStatus::Failed,
            error: Some("boom".into()),
            time_ms: 5,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"event\":\"job_ended\""), "{line}");
        assert_eq!(serde_json::from_str::<AppEvent>(&line).unwrap(), e);
    }
}

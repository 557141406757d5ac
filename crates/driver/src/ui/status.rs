//! The UI store: what the web UI, the REST API and `/metrics` show — the recent jobs,
//! their stages and tasks, the SQL queries, the executors, the streaming queries and
//! counters since the start. It is a [`Listener`]: it builds all of it from the
//! application's events, live (registered on the session's bus) or replayed from an
//! event log (`ember history`). Readers take snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use ember_core::metrics::Histogram;

pub(crate) use crate::events::now_ms;
use crate::events::{
    AppEvent, ExecutorStatus, ExecutorView, JobStatus, Listener, SqlStatus, StagePlan, StageStatus,
    TaskStatus,
};
use crate::stream::Status as StreamStatus;

pub use super::info::{AppInfo, JobInfo, SqlInfo, StageInfo, StreamInfo, TaskInfo};

/// Counters and histograms since the start, for `/metrics`.
#[derive(Default)]
pub(crate) struct Counters {
    pub jobs_succeeded: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_cancelled: AtomicU64,
    pub stages_completed: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub shuffle_bytes: AtomicU64,
    pub output_rows: AtomicU64,
    pub task_seconds: Histogram,
}

#[derive(Default)]
struct Inner {
    app: AppInfo,
    jobs: BTreeMap<u64, JobInfo>,
    stages: BTreeMap<(u64, usize), StageInfo>,
    sql: BTreeMap<u64, SqlInfo>,
    /// Tasks each executor finished and failed.
    by_executor: BTreeMap<String, (u64, u64)>,
    /// Executors as their events told (what a replay shows).
    executors: BTreeMap<String, ExecutorView>,
    /// Streaming queries as their events told, by run id.
    streams: BTreeMap<String, StreamInfo>,
    order: VecDeque<u64>,
}

/// The application's status, built from its events.
#[derive(Default)]
pub struct AppStatus {
    /// Streaming queries running in this process, whose status is read live.
    live_streams: Mutex<Vec<Arc<dyn super::StreamView>>>,
    pub(crate) counters: Counters,
    inner: Mutex<Inner>,
}

/// Jobs (with their stages), SQL queries and streaming queries kept for the UI.
const KEPT: usize = 500;
/// Streaming queries kept.
const KEPT_STREAMS: usize = 50;
/// Progress reports kept per streaming query.
const KEPT_PROGRESS: usize = 100;

impl Listener for AppStatus {
    fn on_event(&self, event: &AppEvent) {
        self.apply(event);
    }
}

impl AppStatus {
    pub(crate) fn new() -> AppStatus {
        AppStatus::default()
    }

    /// Folds one event into the state.
    pub(crate) fn apply(&self, event: &AppEvent) {
        let mut inner = self.inner.lock();
        match event {
            AppEvent::AppStarted {
                app_id,
                name,
                master,
                time_ms,
            } => {
                inner.app = AppInfo {
                    id: app_id.clone(),
                    name: name.clone(),
                    master: master.clone(),
                    start_ms: *time_ms,
                    end_ms: None,
                }
            }
            AppEvent::AppEnded { time_ms } => {
                inner.app.end_ms = Some(*time_ms);
                for s in inner.streams.values_mut() {
                    s.active = false;
                }
            }
            AppEvent::SqlStarted {
                id,
                description,
                logical_plan,
                physical_plan,
                time_ms,
            } => {
                inner.sql.insert(
                    *id,
                    SqlInfo {
                        id: *id,
                        description: description.clone(),
                        submitted_ms: *time_ms,
                        duration_ms: None,
                        status: SqlStatus::Running,
                        jobs: vec![],
                        logical_plan: logical_plan.clone(),
                        physical_plan: physical_plan.clone(),
                        adaptive: vec![],
                    },
                );
                while inner.sql.len() > KEPT {
                    inner.sql.pop_first();
                }
            }
            AppEvent::SqlEnded {
                id,
                status,
                time_ms,
            } => {
                if let Some(q) = inner.sql.get_mut(id) {
                    q.status = *status;
                    q.duration_ms = Some(time_ms - q.submitted_ms);
                }
            }
            AppEvent::JobSubmitted {
                job,
                description,
                sql,
                stages,
                time_ms,
            } => job_submitted(&mut inner, *job, description, *sql, stages, *time_ms),
            AppEvent::JobEnded {
                job,
                status,
                error,
                time_ms,
            } => self.job_ended(&mut inner, *job, *status, error.clone(), *time_ms),
            AppEvent::StageSubmitted {
                job,
                stage,
                attempt,
                time_ms,
                ..
            } => {
                if let Some(s) = inner.stages.get_mut(&(*job, *stage)) {
                    s.status = StageStatus::Running;
                    s.attempt = *attempt;
                    s.submitted_ms.get_or_insert(*time_ms);
                    s.completed_ms = None;
                }
            }
            AppEvent::StageAdapted {
                job,
                stage,
                tasks,
                notes,
                plan,
                ..
            } => stage_adapted(&mut inner, (*job, *stage), *tasks, notes, plan),
            AppEvent::StageWaiting { job, stage, .. } => {
                if let Some(s) = inner.stages.get_mut(&(*job, *stage)) {
                    s.status = StageStatus::Waiting;
                }
            }
            AppEvent::StageCompleted {
                job,
                stage,
                time_ms,
                ..
            } => {
                if let Some(s) = inner.stages.get_mut(&(*job, *stage)) {
                    s.status = StageStatus::Done;
                    s.completed_ms = Some(*time_ms);
                    s.duration_ms = s.submitted_ms.map(|t| time_ms - t);
                    self.counters
                        .stages_completed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            AppEvent::TaskStarted { task, time_ms } => {
                if let Some(s) = inner.stages.get_mut(&(task.job, task.stage)) {
                    s.tasks_running += 1;
                    Arc::make_mut(&mut s.tasks).push(TaskInfo::started(task, *time_ms));
                }
            }
            AppEvent::TaskEnded { .. } => self.task_ended(&mut inner, event),
            AppEvent::ExecutorAdded {
                executor,
                address,
                cores,
                memory_bytes,
                time_ms,
            } => {
                inner.executors.insert(
                    executor.clone(),
                    ExecutorView {
                        id: executor.clone(),
                        address: address.clone(),
                        cores: *cores,
                        memory_bytes: *memory_bytes,
                        peak_rss_bytes: 0,
                        active_tasks: 0,
                        registered_ms: *time_ms,
                        last_heartbeat_ms: *time_ms,
                        status: ExecutorStatus::Active,
                        lost_reason: None,
                    },
                );
            }
            AppEvent::ExecutorDecommissioned { executor, .. } => {
                if let Some(e) = inner.executors.get_mut(executor) {
                    e.status = ExecutorStatus::Decommissioning;
                }
            }
            AppEvent::ExecutorLost {
                executor,
                reason,
                time_ms,
            } => {
                if let Some(e) = inner.executors.get_mut(executor) {
                    e.status = ExecutorStatus::Lost;
                    e.lost_reason = Some(reason.clone());
                    e.last_heartbeat_ms = *time_ms;
                }
            }
            AppEvent::StreamingQueryStarted {
                id, run_id, name, ..
            } => {
                inner.streams.insert(
                    run_id.clone(),
                    StreamInfo {
                        id: id.clone(),
                        run_id: run_id.clone(),
                        name: name.clone(),
                        active: true,
                        status: StreamStatus {
                            message: "Running".into(),
                            is_trigger_active: false,
                            is_data_available: false,
                        },
                        recent_progress: vec![],
                    },
                );
                while inner.streams.len() > KEPT_STREAMS {
                    inner.streams.pop_first();
                }
            }
            AppEvent::StreamingBatchCommitted { progress } => {
                if let Some(s) = inner.streams.get_mut(&progress.run_id) {
                    if s.recent_progress.len() == KEPT_PROGRESS {
                        s.recent_progress.remove(0);
                    }
                    s.recent_progress.push((**progress).clone());
                }
            }
            AppEvent::StreamingQueryEnded { run_id, .. } => {
                if let Some(s) = inner.streams.get_mut(run_id) {
                    s.active = false;
                    s.status.message = "Stopped".into();
                }
            }
        }
    }

    fn task_ended(&self, inner: &mut Inner, event: &AppEvent) {
        let AppEvent::TaskEnded {
            task: id,
            executor,
            map,
            metrics,
            failure,
            time_ms,
        } = event
        else {
            return;
        };
        let entry = inner.by_executor.entry(executor.clone()).or_default();
        if metrics.is_some() {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        let Some(s) = inner.stages.get_mut(&(id.job, id.stage)) else {
            return;
        };
        s.tasks_running = s.tasks_running.saturating_sub(1);
        let tasks = Arc::make_mut(&mut s.tasks);
        let at = tasks
            .iter()
            .rposition(|t| t.partition == id.partition && t.attempt == id.attempt);
        let task = match at {
            Some(i) => &mut tasks[i],
            None => {
                tasks.push(TaskInfo::started(id, *time_ms));
                tasks.last_mut().expect("pushed")
            }
        };
        task.executor = Some(executor.clone());
        if let Some(m) = metrics {
            task.status = TaskStatus::Succeeded;
            task.duration_ms = Some(m.elapsed_ms as i64);
            task.rows_out = m.rows_out;
            task.bytes_out = m.bytes_out;
            s.tasks_done += 1;
            s.rows_out += m.rows_out;
            s.bytes_out += m.bytes_out;
            self.counters
                .tasks_succeeded
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .output_rows
                .fetch_add(m.rows_out, Ordering::Relaxed);
            self.counters
                .task_seconds
                .observe(m.elapsed_ms as f64 / 1000.0);
            if *map {
                s.shuffle_write_bytes += m.bytes_out;
                self.counters
                    .shuffle_bytes
                    .fetch_add(m.bytes_out, Ordering::Relaxed);
            }
        } else {
            task.status = TaskStatus::Failed;
            task.duration_ms = Some(time_ms - task.start_ms);
            task.error = failure
                .as_ref()
                .map(|f| format!("{}: {}", f.reason, f.message));
            s.tasks_failed += 1;
            self.counters.tasks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let parents = s.parents.clone();
        if let Some(job) = inner.jobs.get_mut(&id.job) {
            match metrics {
                Some(m) => {
                    job.completed_tasks += 1;
                    if *map {
                        job.shuffle_bytes += m.bytes_out;
                    }
                }
                None => job.failed_tasks += 1,
            }
        }
        // What this stage reads is what its parents wrote.
        let (read, rows_in) = parents
            .iter()
            .filter_map(|p| inner.stages.get(&(id.job, *p)))
            .fold((0, 0), |(b, r), p| {
                (b + p.shuffle_write_bytes, r + p.rows_out)
            });
        if let Some(s) = inner.stages.get_mut(&(id.job, id.stage)) {
            s.shuffle_read_bytes = read;
            s.rows_in = rows_in;
        }
    }

    fn job_ended(
        &self,
        inner: &mut Inner,
        job: u64,
        status: JobStatus,
        error: Option<String>,
        time_ms: i64,
    ) {
        let counter = match status {
            JobStatus::Succeeded => &self.counters.jobs_succeeded,
            JobStatus::Cancelled => &self.counters.jobs_cancelled,
            JobStatus::Failed | JobStatus::Running => &self.counters.jobs_failed,
        };
        let Some(j) = inner.jobs.get_mut(&job) else {
            return;
        };
        if j.status != JobStatus::Running {
            return;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        j.status = status;
        j.completed_ms = Some(time_ms);
        j.duration_ms = Some(time_ms - j.submitted_ms);
        j.error = error;
        let stages = j.stages.clone();
        if status != JobStatus::Succeeded {
            for s in stages {
                if let Some(s) = inner.stages.get_mut(&(job, s))
                    && s.status == StageStatus::Running
                {
                    s.status = StageStatus::Failed;
                }
            }
        }
    }

    /// A streaming query runs in this process: its status is read from it live.
    pub(crate) fn add_stream(&self, stream: Arc<dyn super::StreamView>) {
        let mut streams = self.live_streams.lock();
        streams.push(stream);
        let excess = streams.len().saturating_sub(KEPT_STREAMS);
        streams.drain(..excess);
    }

    // ----- what readers see

    pub fn app(&self) -> AppInfo {
        self.inner.lock().app.clone()
    }

    /// The streaming queries, newest first: those running here read live, the
    /// others (a replay's) as their events told.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let live: Vec<StreamInfo> = self
            .live_streams
            .lock()
            .iter()
            .rev()
            .map(|s| s.view())
            .collect();
        let inner = self.inner.lock();
        let replayed = inner
            .streams
            .values()
            .rev()
            .filter(|s| !live.iter().any(|l| l.run_id == s.run_id))
            .cloned()
            .collect::<Vec<_>>();
        live.into_iter().chain(replayed).collect()
    }

    /// The executors as their events told, lost ones last.
    pub fn executors(&self) -> Vec<ExecutorView> {
        let inner = self.inner.lock();
        let mut views: Vec<ExecutorView> = inner.executors.values().cloned().collect();
        views.sort_by_key(|e| e.status == ExecutorStatus::Lost);
        views
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        self.inner.lock().jobs.values().rev().cloned().collect()
    }

    pub fn job(&self, id: u64) -> Option<(JobInfo, Vec<StageInfo>)> {
        let inner = self.inner.lock();
        let job = inner.jobs.get(&id)?.clone();
        let stages = job
            .stages
            .iter()
            .filter_map(|s| inner.stages.get(&(id, *s)).cloned())
            .collect();
        Some((job, stages))
    }

    pub fn stages(&self) -> Vec<StageInfo> {
        self.inner.lock().stages.values().rev().cloned().collect()
    }

    pub fn stage(&self, job: u64, stage: usize) -> Option<StageInfo> {
        self.inner.lock().stages.get(&(job, stage)).cloned()
    }

    pub fn sql(&self) -> Vec<SqlInfo> {
        self.inner.lock().sql.values().rev().cloned().collect()
    }

    /// Tasks an executor finished and failed.
    pub fn executor_tasks(&self, executor: &str) -> (u64, u64) {
        self.inner
            .lock()
            .by_executor
            .get(executor)
            .copied()
            .unwrap_or_default()
    }

    /// Tasks running now, over every stage.
    pub fn running_tasks(&self) -> usize {
        self.inner
            .lock()
            .stages
            .values()
            .map(|s| s.tasks_running)
            .sum()
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> usize {
        self.inner
            .lock()
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Running)
            .count()
    }
}

/// A stage's tasks planned again when it started: its partitions, its decisions, and
/// its plan as planned and as run; its SQL query lists the same.
fn stage_adapted(
    inner: &mut Inner,
    (job, stage): (u64, usize),
    tasks: usize,
    notes: &[String],
    plan: &str,
) {
    let Some(s) = inner.stages.get_mut(&(job, stage)) else {
        return;
    };
    let planned = s.partitions;
    s.partitions = tasks;
    s.tasks_total = tasks;
    s.adaptive = notes.to_vec();
    let decisions: String = notes.iter().map(|n| format!("  {n}\n")).collect();
    s.plan = format!(
        "{}\nAs run (adaptive execution), {tasks} tasks:\n{decisions}{plan}",
        s.plan
    )
    .into();
    let sql = inner.jobs.get_mut(&job).and_then(|j| {
        j.num_tasks = (j.num_tasks + tasks).saturating_sub(planned);
        inner.sql.values_mut().find(|q| q.jobs.contains(&job))
    });
    if let Some(q) = sql {
        q.adaptive.push(format!(
            "job {job} stage {stage}: {tasks} tasks, planned {planned}\n{decisions}{plan}"
        ));
    }
}

fn job_submitted(
    inner: &mut Inner,
    job: u64,
    description: &str,
    sql: Option<u64>,
    stages: &[StagePlan],
    time_ms: i64,
) {
    let num_tasks = stages.iter().map(|s| s.tasks).sum();
    let ids = stages.iter().map(|s| s.id).collect();
    for s in stages {
        inner.stages.insert(
            (job, s.id),
            StageInfo {
                job,
                id: s.id,
                attempt: 0,
                name: s.name.clone(),
                status: StageStatus::Waiting,
                partitions: s.tasks,
                parents: s.parents.clone(),
                exchange: s.exchange.clone(),
                tasks_total: s.tasks,
                tasks_done: 0,
                tasks_running: 0,
                tasks_failed: 0,
                rows_in: 0,
                rows_out: 0,
                bytes_out: 0,
                shuffle_write_bytes: 0,
                shuffle_read_bytes: 0,
                submitted_ms: None,
                completed_ms: None,
                duration_ms: None,
                planned_partitions: s.tasks,
                adaptive: Vec::new(),
                plan: s.plan.as_str().into(),
                tasks: Arc::default(),
            },
        );
    }
    inner.jobs.insert(
        job,
        JobInfo {
            id: job,
            description: description.to_string(),
            status: JobStatus::Running,
            submitted_ms: time_ms,
            completed_ms: None,
            duration_ms: None,
            stages: ids,
            num_tasks,
            completed_tasks: 0,
            failed_tasks: 0,
            shuffle_bytes: 0,
            error: None,
        },
    );
    if let Some(q) = sql.and_then(|s| inner.sql.get_mut(&s)) {
        q.jobs.push(job);
    }
    inner.order.push_back(job);
    while inner.order.len() > KEPT {
        let Some(old) = inner.order.pop_front() else {
            break;
        };
        inner.jobs.remove(&old);
        inner.stages.retain(|(j, _), _| *j != old);
    }
}

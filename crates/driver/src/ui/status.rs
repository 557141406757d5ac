//! What the web UI, the REST API and `/metrics` show: the recent jobs, their stages
//! and tasks, the SQL queries, the executors, and counters since the start. The
//! scheduler and the session report here as things happen; readers take snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::physical_plan::{ExecutionPlan, displayable};
use ember_exec::task::{TaskId, TaskStatus};
use parking_lot::Mutex;
use serde::Serialize;

use ember_core::metrics::Histogram;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub id: u64,
    pub description: String,
    pub status: &'static str,
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
    pub status: &'static str,
    pub start_ms: i64,
    pub duration_ms: Option<i64>,
    pub rows_out: u64,
    pub bytes_out: u64,
    pub error: Option<String>,
}

impl TaskInfo {
    fn started(id: &TaskId, start_ms: i64) -> TaskInfo {
        TaskInfo {
            partition: id.partition,
            attempt: id.attempt,
            executor: None,
            status: "running",
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
    pub status: &'static str,
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
    pub status: &'static str,
    pub jobs: Vec<u64>,
    pub logical_plan: String,
    pub physical_plan: String,
}

/// A stage of a job as the scheduler plans it.
pub(crate) struct PlannedStage {
    pub id: usize,
    pub plan: Arc<dyn ExecutionPlan>,
    pub parents: Vec<usize>,
    pub tasks: usize,
    /// Where its output goes: `hash(4)`, `single`, ... (none for the final stage).
    pub exchange: Option<String>,
}

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
    jobs: BTreeMap<u64, JobInfo>,
    stages: BTreeMap<(u64, usize), StageInfo>,
    sql: BTreeMap<u64, SqlInfo>,
    /// Tasks each executor finished and failed.
    by_executor: BTreeMap<String, (u64, u64)>,
    order: VecDeque<u64>,
}

/// The application's live status.
pub struct AppStatus {
    /// Streaming queries started in this application.
    streams: Mutex<Vec<Arc<dyn super::StreamView>>>,
    pub(crate) app_id: String,
    pub(crate) master: String,
    pub(crate) started_ms: i64,
    pub(crate) counters: Counters,
    inner: Mutex<Inner>,
    next_sql: AtomicU64,
}

/// Jobs (with their stages) and SQL queries kept for the UI.
const KEPT: usize = 500;

/// The operator that names a stage: the first below the shuffle writer.
fn stage_name(plan: &Arc<dyn ExecutionPlan>) -> String {
    let mut node = plan.clone();
    loop {
        let name = node.name().to_string();
        let skip = matches!(
            name.as_str(),
            "ShuffleWriterExec" | "CoalesceBatchesExec" | "CoalescePartitionsExec"
        );
        match node.children().first() {
            Some(child) if skip => node = (*child).clone(),
            _ => return name,
        }
    }
}

impl AppStatus {
    pub(crate) fn new(master: &str) -> AppStatus {
        let started_ms = now_ms();
        AppStatus {
            streams: Mutex::new(vec![]),
            app_id: format!("app-{started_ms}-{:04}", std::process::id() % 10_000),
            master: master.to_string(),
            started_ms,
            counters: Counters::default(),
            inner: Mutex::new(Inner::default()),
            next_sql: AtomicU64::new(1),
        }
    }

    // ----- what the session and the scheduler report

    /// A query starts: its plans, for the SQL page; returns its id.
    pub(crate) fn sql_started(
        &self,
        description: String,
        logical_plan: String,
        physical_plan: String,
    ) -> u64 {
        let id = self.next_sql.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        inner.sql.insert(
            id,
            SqlInfo {
                id,
                description,
                submitted_ms: now_ms(),
                duration_ms: None,
                status: "running",
                jobs: vec![],
                logical_plan,
                physical_plan,
            },
        );
        while inner.sql.len() > KEPT {
            inner.sql.pop_first();
        }
        id
    }

    pub(crate) fn sql_ended(&self, id: u64, ok: bool) {
        if let Some(q) = self.inner.lock().sql.get_mut(&id) {
            q.status = if ok { "succeeded" } else { "failed" };
            q.duration_ms = Some(now_ms() - q.submitted_ms);
        }
    }

    pub(crate) fn job_submitted(
        &self,
        job: u64,
        description: String,
        sql: Option<u64>,
        stages: Vec<PlannedStage>,
    ) {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let num_tasks = stages.iter().map(|s| s.tasks).sum();
        let ids = stages.iter().map(|s| s.id).collect();
        for s in stages {
            inner.stages.insert(
                (job, s.id),
                StageInfo {
                    job,
                    id: s.id,
                    attempt: 0,
                    name: stage_name(&s.plan),
                    status: "waiting",
                    partitions: s.tasks,
                    parents: s.parents,
                    exchange: s.exchange,
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
                    plan: displayable(s.plan.as_ref()).indent(true).to_string().into(),
                    tasks: Arc::default(),
                },
            );
        }
        inner.jobs.insert(
            job,
            JobInfo {
                id: job,
                description,
                status: "running",
                submitted_ms: now,
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
            let old = inner.order.pop_front().expect("not empty");
            inner.jobs.remove(&old);
            inner.stages.retain(|(j, _), _| *j != old);
        }
    }

    pub(crate) fn stage_started(&self, job: u64, stage: usize, attempt: usize) {
        if let Some(s) = self.inner.lock().stages.get_mut(&(job, stage)) {
            s.status = "running";
            s.attempt = attempt;
            s.submitted_ms.get_or_insert_with(now_ms);
            s.completed_ms = None;
        }
    }

    pub(crate) fn task_started(&self, id: &TaskId) {
        if let Some(s) = self.inner.lock().stages.get_mut(&(id.job, id.stage)) {
            s.tasks_running += 1;
            Arc::make_mut(&mut s.tasks).push(TaskInfo::started(id, now_ms()));
        }
    }

    /// A task's report; `map` says its output went to the shuffle.
    pub(crate) fn task_finished(&self, status: &TaskStatus, map: bool) {
        let id = status.id;
        let now = now_ms();
        let mut inner = self.inner.lock();
        let ok = status.result.is_ok();
        let entry = inner
            .by_executor
            .entry(status.executor_id.clone())
            .or_default();
        if ok {
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
                tasks.push(TaskInfo::started(&id, now));
                tasks.last_mut().expect("pushed")
            }
        };
        task.executor = Some(status.executor_id.clone());
        match &status.result {
            Ok((_, metrics)) => {
                task.status = "succeeded";
                task.duration_ms = Some(metrics.elapsed.as_millis() as i64);
                task.rows_out = metrics.output_rows;
                task.bytes_out = metrics.output_bytes;
                s.tasks_done += 1;
                s.rows_out += metrics.output_rows;
                s.bytes_out += metrics.output_bytes;
                self.counters
                    .tasks_succeeded
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .output_rows
                    .fetch_add(metrics.output_rows, Ordering::Relaxed);
                self.counters
                    .task_seconds
                    .observe(metrics.elapsed.as_secs_f64());
                if map {
                    s.shuffle_write_bytes += metrics.output_bytes;
                    self.counters
                        .shuffle_bytes
                        .fetch_add(metrics.output_bytes, Ordering::Relaxed);
                }
            }
            Err(failure) => {
                task.status = "failed";
                task.duration_ms = Some(now - task.start_ms);
                task.error = Some(format!("{:?}: {}", failure.reason, failure.message));
                s.tasks_failed += 1;
                self.counters.tasks_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let parents = s.parents.clone();
        if let Some(job) = inner.jobs.get_mut(&id.job) {
            match &status.result {
                Ok((_, m)) => {
                    job.completed_tasks += 1;
                    if map {
                        job.shuffle_bytes += m.output_bytes;
                    }
                }
                Err(_) => job.failed_tasks += 1,
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

    pub(crate) fn stage_done(&self, job: u64, stage: usize) {
        if let Some(s) = self.inner.lock().stages.get_mut(&(job, stage)) {
            s.status = "done";
            let now = now_ms();
            s.completed_ms = Some(now);
            s.duration_ms = s.submitted_ms.map(|t| now - t);
            self.counters
                .stages_completed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A job ended: `succeeded`, `failed` or `cancelled`.
    pub(crate) fn job_ended(&self, job: u64, status: &'static str, error: Option<String>) {
        let counter = match status {
            "succeeded" => &self.counters.jobs_succeeded,
            "cancelled" => &self.counters.jobs_cancelled,
            _ => &self.counters.jobs_failed,
        };
        let mut inner = self.inner.lock();
        let Some(j) = inner.jobs.get_mut(&job) else {
            return;
        };
        if j.status != "running" {
            return;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        j.status = status;
        j.completed_ms = Some(now);
        j.duration_ms = Some(now - j.submitted_ms);
        j.error = error;
        let stages = j.stages.clone();
        if status != "succeeded" {
            for s in stages {
                if let Some(s) = inner.stages.get_mut(&(job, s))
                    && s.status == "running"
                {
                    s.status = "failed";
                }
            }
        }
    }

    /// A streaming query started; the 50 latest are kept.
    pub(crate) fn add_stream(&self, stream: Arc<dyn super::StreamView>) {
        let mut streams = self.streams.lock();
        streams.push(stream);
        let excess = streams.len().saturating_sub(50);
        streams.drain(..excess);
    }

    // ----- what readers see

    pub fn streams(&self) -> Vec<serde_json::Value> {
        self.streams.lock().iter().rev().map(|s| s.view()).collect()
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
            .filter(|j| j.status == "running")
            .count()
    }
}

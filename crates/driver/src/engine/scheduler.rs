//! The DAG scheduler: one event loop that owns every job's state. No locks: executors
//! and callers talk to it through [`Event`]s.
//!
//! ```text
//!  Submit ──▶ stages Waiting ──(all parents Done)──▶ Running: tasks queued
//!                 ▲                                     │ tasks fill free slots
//!                 │ FetchFailed: lost map outputs       ▼
//!                 └── re-run in the parent (lineage) ◀─ TaskFinished
//!                                                       │ all tasks Done
//!                                                       ▼
//!                                       Done ──▶ children become ready;
//!                                                final stage Done ──▶ reply
//! ```
//!
//! A failed task is retried up to `ember.task.max_failures` times when its error is
//! retryable; otherwise, or past that, the job fails with the task's error as the cause.
//! Every report names its stage attempt and task attempt; reports of superseded
//! attempts are ignored.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use ember_core::EmberError;
use ember_exec::codec::{EmberCodec, encode_plan};
use ember_exec::task::{
    FailureReason, TaskDefinition, TaskFailure, TaskId, TaskOutput, TaskStatus,
};
use tokio::sync::{mpsc, watch};

use super::job::{Job, StageStatus, TaskState};
use super::{JobProgress, JobRecords, StageProgress};
use crate::ui::status::{AppStatus, PlannedStage};

pub(crate) enum Event {
    Submit(Box<Job>),
    /// An executor registered with this many task slots.
    SlotsAdded(usize),
    /// An executor is leaving: launch nothing more on its slots (its running tasks
    /// still report when they finish).
    SlotsRemoved(usize),
    /// An executor stopped answering: its slots are gone, its running tasks failed,
    /// and the map outputs it held must be recomputed.
    ExecutorLost {
        executor: String,
        cores: usize,
        running: Vec<TaskId>,
    },
    /// No executor has been left for the grace period: running jobs cannot finish.
    NoExecutors {
        message: String,
    },
    TaskFinished(Box<TaskStatus>),
    Cancel {
        job: u64,
    },
}

/// Where tasks run: in-process slots (local mode) or executor processes.
pub(crate) trait TaskLauncher: Send + Sync + 'static {
    /// Starts a task; it must report exactly one `Event::TaskFinished`.
    fn launch(&self, task: TaskDefinition);
    /// Kills the job's running tasks (they still report, as `Killed`).
    fn cancel_job(&self, job: u64);
    /// Frees the job's shuffle data.
    fn remove_job(&self, job: u64);
}

pub(crate) struct Scheduler {
    jobs: BTreeMap<u64, Job>,
    /// (job, stage, partition) waiting for a slot, in submission order (FIFO).
    queue: VecDeque<(u64, usize, usize)>,
    /// Slots minus running tasks; negative while a leaving executor's tasks finish.
    free_slots: isize,
    launcher: Arc<dyn TaskLauncher>,
    codec: EmberCodec,
    progress: watch::Sender<JobProgress>,
    records: Arc<JobRecords>,
    status: Arc<AppStatus>,
}

impl Scheduler {
    pub(crate) fn new(
        launcher: Arc<dyn TaskLauncher>,
        slots: usize,
        codec: EmberCodec,
        progress: watch::Sender<JobProgress>,
        records: Arc<JobRecords>,
        status: Arc<AppStatus>,
    ) -> Self {
        Scheduler {
            jobs: BTreeMap::new(),
            queue: VecDeque::new(),
            free_slots: slots as isize,
            launcher,
            codec,
            progress,
            records,
            status,
        }
    }

    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Submit(job) => self.submit(*job),
                Event::TaskFinished(status) => self.task_finished(*status),
                Event::Cancel { job } => self.fail_job(job, EmberError::Cancelled { job }),
                Event::SlotsAdded(n) => self.free_slots += n as isize,
                Event::SlotsRemoved(n) => self.free_slots -= n as isize,
                Event::ExecutorLost {
                    executor,
                    cores,
                    running,
                } => self.executor_lost(&executor, cores, running),
                Event::NoExecutors { message } => {
                    let jobs: Vec<u64> = self.jobs.keys().copied().collect();
                    for job in jobs {
                        let cause = message.clone();
                        self.fail_job(job, EmberError::JobFailed { job, cause });
                    }
                }
            }
            self.launch_tasks();
            self.publish_progress();
        }
    }

    fn submit(&mut self, job: Job) {
        let id = job.id;
        tracing::info!(job = id, stages = job.graph.stages.len(), "job submitted");
        let stages = job
            .graph
            .stages
            .values()
            .map(|s| PlannedStage {
                id: s.id,
                plan: s.plan.clone(),
                parents: s.parents.clone(),
                tasks: s.tasks,
                exchange: (s.id != job.graph.final_stage).then(|| s.output.to_string()),
            })
            .collect();
        self.status
            .job_submitted(id, job.description.clone(), job.sql, stages);
        self.jobs.insert(id, job);
        self.start_ready_stages(id);
    }

    /// Starts every stage whose parents are done: resolves its shuffle reads, encodes
    /// the plan once, and queues its pending tasks.
    fn start_ready_stages(&mut self, job_id: u64) {
        loop {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                return;
            };
            let ready = job.ready_stages();
            if ready.is_empty() {
                return;
            }
            for stage in ready {
                let encoded = job
                    .resolve(stage)
                    .and_then(|plan| encode_plan(plan, &self.codec));
                let bytes = match encoded {
                    Ok(b) => b,
                    Err(e) => return self.fail_job(job_id, e),
                };
                let state = job.stages.get_mut(&stage).expect("stage exists");
                state.plan_bytes = Some(bytes);
                state.status = StageStatus::Running;
                self.status.stage_started(job_id, stage, state.attempt);
                tracing::info!(
                    job = job_id,
                    stage,
                    attempt = state.attempt,
                    tasks = state.tasks.len(),
                    "stage started"
                );
                for (p, t) in state.tasks.iter().enumerate() {
                    if *t == TaskState::Pending {
                        self.queue.push_back((job_id, stage, p));
                    }
                }
                if state.tasks.is_empty() || state.done() == state.tasks.len() {
                    state.status = StageStatus::Done;
                    self.status.stage_done(job_id, stage);
                    if stage == job.graph.final_stage {
                        return self.finish_job(job_id);
                    }
                }
            }
        }
    }

    fn launch_tasks(&mut self) {
        while self.free_slots > 0 {
            let Some((job_id, stage, p)) = self.queue.pop_front() else {
                return;
            };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let state = job.stages.get_mut(&stage).expect("stage exists");
            if state.status != StageStatus::Running || state.tasks[p] != TaskState::Pending {
                continue;
            }
            let Some(plan) = state.plan_bytes.clone() else {
                continue;
            };
            let attempt = state.failures[p];
            state.tasks[p] = TaskState::Running { attempt };
            self.free_slots -= 1;
            let id = TaskId {
                job: job_id,
                stage,
                stage_attempt: state.attempt,
                partition: p,
                attempt,
            };
            self.status.task_started(&id);
            self.launcher.launch(TaskDefinition {
                id,
                plan,
                config: job.config.clone(),
                session_id: job.session_id.clone(),
            });
        }
    }

    fn task_finished(&mut self, status: TaskStatus) {
        self.free_slots += 1;
        let id = status.id;
        let Some(job) = self.jobs.get_mut(&id.job) else {
            // The job ended while this task ran: free whatever it left behind.
            if matches!(status.result, Ok((TaskOutput::Map(_), _))) {
                self.launcher.remove_job(id.job);
            }
            return;
        };
        let Some(state) = job.stages.get_mut(&id.stage) else {
            return;
        };
        if state.attempt != id.stage_attempt
            || state.tasks.get(id.partition)
                != Some(&TaskState::Running {
                    attempt: id.attempt,
                })
        {
            tracing::debug!(task = %id, "ignoring report of a superseded attempt");
            return;
        }
        self.status.task_finished(
            &status,
            matches!(status.result, Ok((TaskOutput::Map(_), _))),
        );
        match status.result {
            Ok((output, metrics)) => {
                tracing::debug!(task = %id, rows = metrics.output_rows, elapsed_ms = metrics.elapsed.as_millis() as u64, "task succeeded");
                match output {
                    TaskOutput::Map(m) => {
                        self.records.add_shuffle_bytes(id.job, metrics.output_bytes);
                        state.outputs[id.partition] = Some(m);
                    }
                    TaskOutput::Result(batches) => {
                        job.results.insert(id.partition, batches);
                    }
                }
                state.tasks[id.partition] = TaskState::Done;
                if state.done() == state.tasks.len() {
                    state.status = StageStatus::Done;
                    self.status.stage_done(id.job, id.stage);
                    tracing::info!(job = id.job, stage = id.stage, "stage finished");
                    if id.stage == job.graph.final_stage {
                        self.finish_job(id.job);
                    } else {
                        self.start_ready_stages(id.job);
                    }
                }
            }
            Err(failure) => {
                tracing::warn!(task = %id, reason = ?failure.reason, error = %failure.message, "task failed");
                if let FailureReason::FetchFailed {
                    executor,
                    map_stage,
                    map_partition,
                } = &failure.reason
                {
                    return self.fetch_failed(
                        id,
                        map_stage,
                        *map_partition,
                        executor,
                        &failure.message,
                    );
                }
                state.failures[id.partition] += 1;
                let failures = state.failures[id.partition];
                if failure.retryable && failures < job.ember.task_max_failures {
                    state.tasks[id.partition] = TaskState::Pending;
                    self.queue.push_back((id.job, id.stage, id.partition));
                } else {
                    let cause = format!(
                        "stage {} task {} failed {} time(s); last error: {}",
                        id.stage, id.partition, failures, failure.message
                    );
                    self.fail_job(id.job, EmberError::JobFailed { job: id.job, cause });
                }
            }
        }
    }

    /// A reader could not fetch a map output: that output, and every other the same
    /// executor holds, is treated as lost (its files are likely gone with it) and
    /// recomputed from lineage; the reading task waits for it without counting a
    /// failure.
    fn fetch_failed(
        &mut self,
        id: TaskId,
        map_stage: &usize,
        map_partition: usize,
        executor: &str,
        message: &str,
    ) {
        let Some(job) = self.jobs.get_mut(&id.job) else {
            return;
        };
        tracing::warn!(
            job = id.job,
            stage = id.stage,
            map_stage = *map_stage,
            map_partition,
            executor,
            "map output lost; recomputing it from lineage"
        );
        if let Some(reader) = job.stages.get_mut(&id.stage) {
            reader.tasks[id.partition] = TaskState::Pending;
        }
        if let Some(parent) = job.stages.get_mut(map_stage) {
            parent.outputs[map_partition] = None;
            parent.tasks[map_partition] = TaskState::Pending;
        }
        self.forget_outputs(executor);
        self.reconcile_all(message);
    }

    /// Fails the lost executor's running tasks (they are retried elsewhere) and
    /// forgets every map output it held: stages that lost output run those map tasks
    /// again (lineage) before their readers go on.
    fn executor_lost(&mut self, executor: &str, cores: usize, running: Vec<TaskId>) {
        tracing::warn!(executor, cores, tasks = running.len(), "executor lost");
        self.forget_outputs(executor);
        for id in running {
            self.task_finished(TaskStatus {
                id,
                executor_id: executor.to_string(),
                result: Err(TaskFailure {
                    reason: FailureReason::ExecutorLost,
                    message: format!("executor {executor} was lost while running {id}"),
                    retryable: true,
                }),
            });
        }
        self.free_slots -= cores as isize;
        self.reconcile_all(&format!("executor {executor} was lost"));
    }

    /// Marks every map output `executor` holds as missing: its task is pending again.
    fn forget_outputs(&mut self, executor: &str) {
        for job in self.jobs.values_mut() {
            for (stage, state) in job.stages.iter_mut() {
                let lost: Vec<usize> = state
                    .outputs
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.as_ref().is_some_and(|o| o.executor_id == executor))
                    .map(|(m, _)| m)
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                tracing::warn!(
                    job = job.id,
                    stage,
                    outputs = lost.len(),
                    executor,
                    "recomputing lost map outputs from lineage"
                );
                for m in lost {
                    state.outputs[m] = None;
                    state.tasks[m] = TaskState::Pending;
                }
            }
        }
    }

    fn reconcile_all(&mut self, cause: &str) {
        let jobs: Vec<u64> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.reconcile(job, cause);
        }
    }

    /// Brings a job's stages back in line after map outputs went missing:
    /// - a stage missing some of its own outputs is not done;
    /// - a running stage whose parent is not done waits, as a new attempt (reports of
    ///   its running tasks are stale: they read locations that are gone);
    /// - then every waiting stage whose parents are done starts again, its reads
    ///   resolved to the current locations, running only its pending tasks.
    fn reconcile(&mut self, job_id: u64, cause: &str) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let max_attempts = job.ember.stage_max_attempts;
        let incomplete: Vec<usize> = job
            .stages
            .iter()
            .filter(|(_, s)| s.done() < s.tasks.len())
            .map(|(id, _)| *id)
            .collect();
        let mut exhausted = None;
        for stage in job.graph.stages.values() {
            let state = job.stages.get_mut(&stage.id).expect("stage exists");
            let parent_missing = stage.parents.iter().any(|p| incomplete.contains(p));
            match state.status {
                StageStatus::Running if parent_missing => {
                    state.attempt += 1;
                    state.status = StageStatus::Waiting;
                    state.plan_bytes = None;
                    for t in &mut state.tasks {
                        if matches!(t, TaskState::Running { .. }) {
                            *t = TaskState::Pending;
                        }
                    }
                    if state.attempt >= max_attempts {
                        exhausted = Some(stage.id);
                    }
                }
                // Lost some of its own outputs: re-run those tasks once its parents
                // are done (resolved again, the same attempt).
                StageStatus::Running | StageStatus::Done if incomplete.contains(&stage.id) => {
                    state.status = StageStatus::Waiting;
                }
                _ => {}
            }
        }
        if let Some(stage) = exhausted {
            let cause =
                format!("stage {stage} was attempted {max_attempts} times; last loss: {cause}");
            return self.fail_job(job_id, EmberError::JobFailed { job: job_id, cause });
        }
        self.start_ready_stages(job_id);
    }

    fn finish_job(&mut self, job_id: u64) {
        let Some(mut job) = self.jobs.remove(&job_id) else {
            return;
        };
        let batches: Vec<RecordBatch> = std::mem::take(&mut job.results)
            .into_values()
            .flatten()
            .collect();
        tracing::info!(job = job_id, batches = batches.len(), "job finished");
        self.status.job_ended(job_id, "succeeded", None);
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(Ok(batches));
        }
        self.job_ended(job_id);
    }

    fn job_ended(&mut self, job_id: u64) {
        self.launcher.remove_job(job_id);
        if self.jobs.is_empty() {
            self.codec.clear_in_process();
        }
    }

    fn fail_job(&mut self, job_id: u64, error: EmberError) {
        let Some(mut job) = self.jobs.remove(&job_id) else {
            return;
        };
        tracing::warn!(job = job_id, error = %error, "job failed");
        let outcome = match error {
            EmberError::Cancelled { .. } => "cancelled",
            _ => "failed",
        };
        self.status
            .job_ended(job_id, outcome, Some(error.one_line()));
        self.launcher.cancel_job(job_id);
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(Err(error));
        }
        self.job_ended(job_id);
    }

    fn publish_progress(&self) {
        let stages: Vec<StageProgress> = self
            .jobs
            .values()
            .flat_map(|job| {
                job.stages
                    .iter()
                    .filter(|(_, s)| s.status == StageStatus::Running)
                    .map(|(id, s)| StageProgress {
                        job: job.id,
                        stage: *id,
                        total: s.tasks.len(),
                        running: s.running(),
                        done: s.done(),
                    })
            })
            .collect();
        self.progress.send_if_modified(|p| {
            if p.stages == stages {
                false
            } else {
                p.stages = stages;
                true
            }
        });
    }
}

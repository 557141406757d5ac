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
//!                      final-stage outputs ──▶ the result reader (`results.rs`),
//!                             which fetches them in order; all read ──▶ job ends
//! ```
//!
//! A failed task is retried up to `ember.task.max_failures` times when its error is
//! retryable; otherwise, or past that, the job fails with the task's error as the cause.
//! Every report names its stage attempt and task attempt; reports of superseded
//! attempts are ignored.
//!
//! The scheduler decides; it does not count executor slots. The [`TaskLauncher`]
//! (in-process slots or the cluster registry) is their one owner: a task it cannot
//! place stays at the head of the queue until a slot frees (a task report, a new
//! executor), and no attempt is spent on it. What happens is posted to the
//! application's [`ListenerBus`] as typed [`AppEvent`]s (job, stage, task); the UI,
//! job records and the event log listen there.
//!
//! [`Scheduler::handle`] takes one [`Event`] and makes every decision it implies,
//! with no timers and no I/O of its own: the unit tests below drive it with a fake
//! launcher.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlan, displayable};
use ember_core::EmberError;
use ember_core::shuffle::cache_jobs;
use ember_exec::codec::EmberCodec;
use ember_exec::task::{FailureReason, TaskDefinition, TaskId, TaskOutput, TaskStatus};
use tokio::sync::mpsc;

use super::cache::CacheRegistry;
use super::job::{Job, ResolvedStage, ResultEvent, StageStatus, TaskState};
use super::planner::StageGraph;
use crate::events::{AppEvent, JobStatus, ListenerBus, StagePlan, now_ms};

pub(crate) enum Event {
    Submit(Box<Job>),
    /// Executor slots came or went (an executor registered, or is leaving): queued
    /// tasks may be placed now. The launcher knows how many there are.
    SlotsChanged,
    /// An executor stopped answering: its slots are gone, its running tasks failed,
    /// and the map outputs it held must be recomputed.
    ExecutorLost {
        executor: String,
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
    /// The result reader has read final-stage partition `partition` whole.
    ResultFetched {
        job: u64,
        partition: usize,
    },
    /// The result reader could not fetch final-stage partition `partition` from
    /// `executor`: it is recomputed (with every output that executor held).
    ResultLost {
        job: u64,
        partition: usize,
        executor: String,
        message: String,
    },
    /// A persisted frame is forgotten: its kept partitions are removed everywhere.
    Uncache {
        cache: u64,
    },
    /// The result reader has read every partition: the job has succeeded. `ended`
    /// is told once the job's end has been posted, so that the caller sees the end
    /// of its rows after the job's (a program may stop right then).
    ResultsRead {
        job: u64,
        ended: tokio::sync::oneshot::Sender<()>,
    },
}

/// Where tasks run: in-process slots (local mode) or executor processes.
pub(crate) trait TaskLauncher: Send + Sync + 'static {
    /// Starts a task on a free slot; it must then report exactly one
    /// `Event::TaskFinished`. With no free slot the task comes back, unlaunched (and
    /// the launcher posts an event when a slot frees).
    fn launch(&self, task: TaskDefinition) -> Result<(), Box<TaskDefinition>>;
    /// Whether its tasks run in this process, and so can take the stage plan itself
    /// ([`TaskDefinition::in_process`]) rather than decode it.
    fn in_process(&self) -> bool {
        false
    }
    /// Kills the running tasks `matching` picks (they still report, as `Killed`).
    fn cancel_tasks(&self, matching: &dyn Fn(&TaskId) -> bool);
    /// Frees the job's shuffle data.
    fn remove_job(&self, job: u64);
}

pub(crate) struct Scheduler {
    jobs: BTreeMap<u64, Job>,
    /// (job, stage, partition) waiting for a slot, in submission order (FIFO).
    queue: VecDeque<(u64, usize, usize)>,
    /// Owns the slots: places tasks, or hands them back when none is free.
    launcher: Arc<dyn TaskLauncher>,
    codec: EmberCodec,
    bus: Arc<ListenerBus>,
    /// The persisted frames' kept partitions.
    caches: Arc<CacheRegistry>,
}

impl Scheduler {
    pub(crate) fn new(
        launcher: Arc<dyn TaskLauncher>,
        codec: EmberCodec,
        bus: Arc<ListenerBus>,
        caches: Arc<CacheRegistry>,
    ) -> Self {
        Scheduler {
            jobs: BTreeMap::new(),
            queue: VecDeque::new(),
            launcher,
            codec,
            bus,
            caches,
        }
    }

    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = events.recv().await {
            self.handle(event);
        }
    }

    /// Takes one event and makes every decision it implies: stages started or
    /// re-run, tasks launched, jobs ended.
    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Submit(job) => self.submit(*job),
            Event::TaskFinished(status) => self.task_finished(*status),
            Event::Cancel { job } => self.fail_job(job, EmberError::Cancelled { job }),
            Event::ResultFetched { job, partition } => {
                if let Some(flag) = self
                    .jobs
                    .get_mut(&job)
                    .and_then(|j| j.fetched.get_mut(partition))
                {
                    *flag = true;
                }
            }
            Event::ResultLost {
                job,
                partition,
                executor,
                message,
            } => self.result_lost(job, partition, &executor, &message),
            Event::Uncache { cache } => {
                self.caches.remove(cache);
                for job in cache_jobs(cache) {
                    self.launcher.remove_job(job);
                }
            }
            Event::ResultsRead { job, ended } => {
                self.finish_job(job);
                let _ = ended.send(());
            }
            Event::SlotsChanged => {}
            Event::ExecutorLost { executor, running } => self.executor_lost(&executor, running),
            Event::NoExecutors { message } => {
                let jobs: Vec<u64> = self.jobs.keys().copied().collect();
                for job in jobs {
                    let cause = message.clone();
                    self.fail_job(job, EmberError::JobFailed { job, cause });
                }
            }
        }
        self.launch_tasks();
    }

    fn submit(&mut self, job: Job) {
        let id = job.id;
        tracing::info!(job = id, stages = job.graph.stages.len(), "job submitted");
        let stages = job
            .graph
            .stages
            .values()
            .map(|s| StagePlan {
                id: s.id,
                name: stage_name(&s.plan),
                plan: super::runtime_filter::describe(&job.graph, s.id)
                    .into_iter()
                    .map(|line| line + "\n")
                    .chain([displayable(s.plan.as_ref()).indent(true).to_string()])
                    .collect(),
                parents: s.parents.clone(),
                tasks: s.tasks,
                exchange: (s.id != job.graph.final_stage).then(|| s.output.to_string()),
            })
            .collect();
        self.bus.post(AppEvent::JobSubmitted {
            job: id,
            description: job.description.clone(),
            sql: job.sql,
            stages,
            time_ms: now_ms(),
        });
        let mut job = job;
        self.reuse_cached(&mut job);
        self.jobs.insert(id, job);
        self.start_ready_stages(id);
    }

    /// A job's cache stages start with the partitions kept from earlier jobs done: a
    /// whole cached frame is not computed again.
    fn reuse_cached(&self, job: &mut Job) {
        for stage in job.graph.stages.values() {
            let Some(cache) = stage.cache() else {
                continue;
            };
            let state = job.stages.get_mut(&stage.id).expect("stage exists");
            for (p, output) in self
                .caches
                .outputs(cache, stage.tasks)
                .into_iter()
                .enumerate()
            {
                if let Some(output) = output {
                    state.outputs[p] = Some(output);
                    state.tasks[p] = TaskState::Done;
                }
            }
            if stage.tasks > 0 && state.done() == stage.tasks {
                tracing::info!(job = job.id, stage = stage.id, cache, "cached frame reused");
                state.status = StageStatus::Done;
            }
        }
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
                let planned = job.graph.stages[&stage].tasks;
                let started = std::time::Instant::now();
                let adapted = job.adapt(stage);
                let resolved = job.resolve(stage);
                let resolve_us = started.elapsed().as_micros() as u64;
                if let (Some(notes), Ok(plan)) = (adapted, &resolved) {
                    let tasks = job.graph.stages[&stage].tasks;
                    tracing::info!(job = job_id, stage, tasks, ?notes, "stage adapted");
                    self.bus.post(AppEvent::StageAdapted {
                        job: job_id,
                        stage,
                        tasks,
                        planned,
                        notes,
                        plan: super::explain::resolved_plan(plan),
                    });
                }
                let started = std::time::Instant::now();
                let encoded = resolved.and_then(|plan| ResolvedStage::encode(plan, &self.codec));
                let stage_plan = match encoded {
                    Ok(p) => p,
                    Err(e) => return self.fail_job(job_id, e),
                };
                let encode_us = started.elapsed().as_micros() as u64;
                let plan_bytes = stage_plan.bytes.len();
                let state = job.stages.get_mut(&stage).expect("stage exists");
                state.plan = Some(stage_plan);
                state.status = StageStatus::Running;
                self.bus.post(AppEvent::StageSubmitted {
                    job: job_id,
                    stage,
                    attempt: state.attempt,
                    done: state.done(),
                    running: state.running(),
                    time_ms: now_ms(),
                });
                tracing::info!(
                    job = job_id,
                    stage,
                    attempt = state.attempt,
                    tasks = state.tasks.len(),
                    resolve_us,
                    encode_us,
                    plan_bytes,
                    "stage started"
                );
                for (p, t) in state.tasks.iter().enumerate() {
                    if *t == TaskState::Pending {
                        self.queue.push_back((job_id, stage, p));
                    }
                }
                if state.tasks.is_empty() || state.done() == state.tasks.len() {
                    state.status = StageStatus::Done;
                    self.bus.post(AppEvent::StageCompleted {
                        job: job_id,
                        stage,
                        attempt: state.attempt,
                        time_ms: now_ms(),
                    });
                }
            }
        }
    }

    /// Places queued tasks, in order, until the launcher has no free slot.
    fn launch_tasks(&mut self) {
        while let Some((job_id, stage, p)) = self.queue.pop_front() {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(state) = job.stages.get_mut(&stage) else {
                continue;
            };
            if state.status != StageStatus::Running || state.tasks[p] != TaskState::Pending {
                continue;
            }
            let Some(plan) = &state.plan else {
                continue;
            };
            let attempt = state.failures[p];
            let id = TaskId {
                job: job_id,
                stage,
                stage_attempt: state.attempt,
                partition: p,
                attempt,
            };
            let config = job.config.of(stage, job.graph.final_stage);
            let task = TaskDefinition {
                id,
                plan: plan.bytes.clone(),
                in_process: self.launcher.in_process().then(|| plan.plan.clone()),
                config,
                session_id: job.session_id.clone(),
            };
            if self.launcher.launch(task).is_err() {
                // No free slot: the task waits, first in line, for one.
                self.queue.push_front((job_id, stage, p));
                return;
            }
            state.tasks[p] = TaskState::Running { attempt };
            self.bus.post(AppEvent::TaskStarted {
                task: id.into(),
                time_ms: now_ms(),
            });
        }
    }

    fn task_finished(&mut self, status: TaskStatus) {
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
        let is_final = id.stage == job.graph.final_stage;
        // The final stage's stored output is the result, not shuffle data.
        self.bus.post(AppEvent::task_ended(
            &status,
            !is_final && matches!(status.result, Ok((TaskOutput::Map(_), _))),
        ));
        match status.result {
            Ok((output, metrics)) => {
                tracing::debug!(task = %id, rows = metrics.output_rows, elapsed_ms = metrics.elapsed.as_millis() as u64, "task succeeded");
                let TaskOutput::Map(m) = output else {
                    let cause = format!("task {id} returned rows instead of storing them");
                    return self.fail_job(id.job, EmberError::Internal(cause));
                };
                if let Some(cache) = job.graph.stages[&id.stage].cache() {
                    self.caches
                        .record(cache, state.tasks.len(), id.partition, &m);
                }
                if is_final {
                    let _ = job.results.send(ResultEvent::Ready {
                        partition: id.partition,
                        output: m.clone(),
                    });
                }
                state.outputs[id.partition] = Some(m);
                state.tasks[id.partition] = TaskState::Done;
                if state.done() == state.tasks.len() {
                    state.status = StageStatus::Done;
                    self.bus.post(AppEvent::StageCompleted {
                        job: id.job,
                        stage: id.stage,
                        attempt: state.attempt,
                        time_ms: now_ms(),
                    });
                    tracing::info!(job = id.job, stage = id.stage, "stage finished");
                    // The job ends when its reader has fetched the final stage's
                    // outputs (`ResultsRead`).
                    if !is_final {
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
                if failure.reason == FailureReason::ResourcesExhausted
                    && !state.sort_merge
                    && super::fallback::has_partitioned_hash_join(&job.graph.stages[&id.stage].plan)
                {
                    return self.run_with_sort_merge_joins(id, &failure.message);
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

    fn finish_job(&mut self, job_id: u64) {
        let Some(job) = self.jobs.remove(&job_id) else {
            return;
        };
        tracing::info!(job = job_id, "job finished");
        self.bus.post(AppEvent::JobEnded {
            job: job_id,
            status: JobStatus::Succeeded,
            error: None,
            time_ms: now_ms(),
        });
        self.job_ended(job_id, &job.graph);
    }

    fn job_ended(&mut self, job_id: u64, graph: &StageGraph) {
        self.launcher.remove_job(job_id);
        // A frame unpersisted while this job computed it: what the job kept goes.
        for cache in graph.stages.values().filter_map(|s| s.cache()) {
            if !self.caches.contains(cache) {
                for job in cache_jobs(cache) {
                    self.launcher.remove_job(job);
                }
            }
        }
        if self.jobs.is_empty() {
            self.codec.clear_in_process();
        }
    }

    fn fail_job(&mut self, job_id: u64, error: EmberError) {
        let Some(job) = self.jobs.remove(&job_id) else {
            return;
        };
        tracing::warn!(job = job_id, error = %error, "job failed");
        let status = match error {
            EmberError::Cancelled { .. } => JobStatus::Cancelled,
            _ => JobStatus::Failed,
        };
        self.bus.post(AppEvent::JobEnded {
            job: job_id,
            status,
            error: Some(error.one_line()),
            time_ms: now_ms(),
        });
        self.launcher.cancel_tasks(&|t| t.job == job_id);
        let _ = job.results.send(ResultEvent::Failed(error));
        self.job_ended(job_id, &job.graph);
    }
}

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

#[path = "recovery.rs"]
mod recovery;

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

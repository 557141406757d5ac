//! What the scheduler does when outputs go missing: a failed fetch, a lost result
//! partition, a lost executor, a hash join out of memory. Lost map outputs are
//! recomputed from lineage (only the tasks that produced them), and the stages
//! reading them wait, as new attempts, until they are back.

use ember_core::EmberError;
use ember_exec::task::{FailureReason, TaskFailure, TaskId, TaskStatus};

use super::super::job::{ResolvedStage, StageStatus, TaskState};
use super::Scheduler;
use crate::events::{AppEvent, now_ms};

impl Scheduler {
    /// A reader could not fetch a map output: that output, and every other the same
    /// executor holds, is treated as lost (its files are likely gone with it) and
    /// recomputed from lineage; the reading task waits for it without counting a
    /// failure.
    pub(super) fn fetch_failed(
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

    /// A task of a stage with hash joins ran out of memory: the stage's plan is
    /// re-encoded with sort-merge joins (which spill), and the task runs again, its
    /// failure not counted. Its other running tasks go on; their hash joins may fit.
    pub(super) fn run_with_sort_merge_joins(&mut self, id: TaskId, message: &str) {
        let Some(job) = self.jobs.get_mut(&id.job) else {
            return;
        };
        tracing::warn!(
            task = %id,
            error = message,
            "a hash join's build side does not fit in memory; the stage runs with sort-merge joins"
        );
        let Some(state) = job.stages.get_mut(&id.stage) else {
            return;
        };
        state.sort_merge = true;
        // The stage's other running tasks hold hash tables too: they are killed, and
        // their reports (of the old attempt) ignored.
        let old_attempt = state.attempt;
        state.attempt += 1;
        for t in &mut state.tasks {
            if matches!(t, TaskState::Running { .. }) {
                *t = TaskState::Pending;
            }
        }
        state.tasks[id.partition] = TaskState::Pending;
        self.launcher.cancel_tasks(&|t| {
            t.job == id.job && t.stage == id.stage && t.stage_attempt == old_attempt
        });
        let encoded = job
            .resolve(id.stage)
            .and_then(|plan| ResolvedStage::encode(plan, &self.codec));
        let stage_plan = match encoded {
            Ok(p) => p,
            Err(e) => return self.fail_job(id.job, e),
        };
        let state = job.stages.get_mut(&id.stage).expect("stage exists");
        state.plan = Some(stage_plan);
        self.bus.post(AppEvent::StageSubmitted {
            job: id.job,
            stage: id.stage,
            attempt: state.attempt,
            done: state.done(),
            running: 0,
            time_ms: now_ms(),
        });
        for (p, t) in state.tasks.iter().enumerate() {
            if *t == TaskState::Pending {
                self.queue.push_back((id.job, id.stage, p));
            }
        }
    }

    /// The result reader could not fetch a final-stage output: like a reader task's
    /// fetch failure, that output and every other the executor holds are recomputed.
    pub(super) fn result_lost(
        &mut self,
        job_id: u64,
        partition: usize,
        executor: &str,
        message: &str,
    ) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        tracing::warn!(
            job = job_id,
            partition,
            executor,
            error = message,
            "result output lost; recomputing it from lineage"
        );
        let final_stage = job.graph.final_stage;
        if let Some(state) = job.stages.get_mut(&final_stage)
            && state.tasks.get(partition) == Some(&TaskState::Done)
        {
            state.outputs[partition] = None;
            state.tasks[partition] = TaskState::Pending;
        }
        self.forget_outputs(executor);
        self.reconcile_all(message);
    }

    /// Fails the lost executor's running tasks (they are retried elsewhere) and
    /// forgets every map output it held: stages that lost output run those map tasks
    /// again (lineage) before their readers go on.
    pub(super) fn executor_lost(&mut self, executor: &str, running: Vec<TaskId>) {
        tracing::warn!(executor, tasks = running.len(), "executor lost");
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
        self.reconcile_all(&format!("executor {executor} was lost"));
    }

    /// Marks every map output `executor` holds as missing: its task is pending again.
    /// Cached partitions it held are forgotten too.
    pub(super) fn forget_outputs(&mut self, executor: &str) {
        self.caches.forget_executor(executor);
        for job in self.jobs.values_mut() {
            for (stage, state) in job.stages.iter_mut() {
                // Result partitions already read are not needed again.
                let read = |m: usize| *stage == job.graph.final_stage && job.fetched[m];
                let lost: Vec<usize> = state
                    .outputs
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.as_ref().is_some_and(|o| o.executor_id == executor))
                    .map(|(m, _)| m)
                    .filter(|&m| !read(m))
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

    pub(super) fn reconcile_all(&mut self, cause: &str) {
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
    pub(super) fn reconcile(&mut self, job_id: u64, cause: &str) {
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
            let before = state.status;
            match state.status {
                StageStatus::Running if parent_missing => {
                    state.attempt += 1;
                    state.status = StageStatus::Waiting;
                    state.plan = None;
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
            if before != StageStatus::Waiting && state.status == StageStatus::Waiting {
                self.bus.post(AppEvent::StageWaiting {
                    job: job_id,
                    stage: stage.id,
                    attempt: state.attempt,
                    time_ms: now_ms(),
                });
            }
        }
        if let Some(stage) = exhausted {
            let cause =
                format!("stage {stage} was attempted {max_attempts} times; last loss: {cause}");
            return self.fail_job(job_id, EmberError::JobFailed { job: job_id, cause });
        }
        self.start_ready_stages(job_id);
    }
}

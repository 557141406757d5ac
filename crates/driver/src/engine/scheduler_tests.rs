//! The scheduler's decisions, driven event by event: no processes, no timers. A fake
//! launcher with a fixed number of slots records what is launched and cancelled;
//! the tests play the executors, reporting successes, failures, fetch failures and
//! lost executors, and check which tasks run again, which stage attempts start and
//! how jobs end.

use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::{EmberConfig, EmberError, Result};
use ember_exec::shuffle::{MapOutput, ShuffleData};
use ember_exec::task::{
    FailureReason, TaskDefinition, TaskFailure, TaskId, TaskMetrics, TaskOutput, TaskStatus,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::*;
use crate::engine::RuntimeFilters;
use crate::engine::job::{Job, ResultEvent, TaskConfigs};
use crate::engine::planner::StageGraph;
use crate::events::progress::ProgressListener;
use crate::events::{AppEvent, JobStatus, Listener, ListenerBus};

#[derive(Default)]
struct FakeLauncher {
    slots: Mutex<usize>,
    running: Mutex<Vec<TaskId>>,
    /// Launched since the test last looked.
    launched: Mutex<Vec<TaskId>>,
    /// Every task ever launched.
    history: Mutex<Vec<TaskId>>,
    cancelled: Mutex<Vec<u64>>,
}

impl TaskLauncher for FakeLauncher {
    fn launch(&self, task: TaskDefinition) -> Result<(), Box<TaskDefinition>> {
        let mut running = self.running.lock();
        if running.len() >= *self.slots.lock() {
            return Err(Box::new(task));
        }
        running.push(task.id);
        self.launched.lock().push(task.id);
        self.history.lock().push(task.id);
        Ok(())
    }

    /// Records the jobs with a launched task `matching` picks.
    fn cancel_tasks(&self, matching: &dyn Fn(&TaskId) -> bool) {
        let history = self.history.lock();
        let mut cancelled = self.cancelled.lock();
        for id in history.iter().filter(|id| matching(id)) {
            if !cancelled.contains(&id.job) {
                cancelled.push(id.job);
            }
        }
    }

    fn remove_job(&self, _job: u64) {}
}

#[derive(Default)]
struct Recorder(Mutex<Vec<AppEvent>>);

impl Listener for Recorder {
    fn on_event(&self, event: &AppEvent) {
        self.0.lock().push(event.clone());
    }
}

struct Harness {
    scheduler: Scheduler,
    launcher: Arc<FakeLauncher>,
    events: Arc<Recorder>,
    progress: Arc<ProgressListener>,
    results: mpsc::UnboundedReceiver<ResultEvent>,
    /// Final-stage partitions announced so far, and where.
    ready: Vec<(usize, String)>,
    /// Final-stage partitions the result reader waits for.
    partitions: usize,
    map_stage: usize,
    final_stage: usize,
}

/// A two-stage job (`GROUP BY` over two partitions: 2 map tasks, 2 reduce tasks)
/// submitted to a scheduler with `slots` slots.
async fn harness(slots: usize, settings: &[(&str, &str)]) -> Harness {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let batch = |v: Vec<i64>| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
    };
    let table = MemTable::try_new(
        schema.clone(),
        vec![vec![batch(vec![1, 2, 3])], vec![batch(vec![3, 4, 5])]],
    )
    .unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_table("t", Arc::new(table)).unwrap();
    let plan = ctx
        .sql("SELECT k, count(*) FROM t GROUP BY k")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let graph = StageGraph::plan(1, plan, Some(RuntimeFilters::default())).unwrap();
    let final_stage = graph.final_stage;
    let map_stage = graph.stages[&final_stage].parents[0];
    assert_eq!(graph.stages[&map_stage].tasks, 2);
    assert_eq!(graph.stages[&final_stage].tasks, 2);
    let mut ember = EmberConfig::default();
    // Stages run as planned unless a test turns adaptive execution on.
    ember.set_key("ember.adaptive.enabled", "false").unwrap();
    for (k, v) in settings {
        ember.set_key(k, v).unwrap();
    }
    let launcher = Arc::new(FakeLauncher::default());
    *launcher.slots.lock() = slots;
    let bus = ListenerBus::new();
    let events = Arc::new(Recorder::default());
    bus.add(events.clone());
    let progress = Arc::new(ProgressListener::default());
    bus.add(progress.clone());
    let codec = EmberCodec::in_process(Arc::default(), Arc::default());
    let mut scheduler = Scheduler::new(launcher.clone(), codec, bus, Arc::default());
    let (tx, results) = mpsc::unbounded_channel();
    let job = Job::new(
        1,
        graph,
        TaskConfigs {
            map: Arc::default(),
            result: Arc::default(),
        },
        ember,
        "test".into(),
        ("a test job".into(), None),
        tx,
    );
    scheduler.handle(Event::Submit(Box::new(job)));
    Harness {
        scheduler,
        launcher,
        events,
        progress,
        results,
        ready: vec![],
        partitions: 2,
        map_stage,
        final_stage,
    }
}

impl Harness {
    /// The tasks launched since the last call, in order.
    fn launched(&self) -> Vec<TaskId> {
        std::mem::take(&mut *self.launcher.launched.lock())
    }

    /// The executor `executor` reports `id` with `result`; its slot is free again.
    fn report(
        &mut self,
        id: TaskId,
        executor: &str,
        result: std::result::Result<TaskOutput, TaskFailure>,
    ) {
        self.launcher.running.lock().retain(|t| *t != id);
        let status = TaskStatus {
            id,
            executor_id: executor.into(),
            result: result.map(|o| (o, TaskMetrics::default())),
        };
        self.scheduler.handle(Event::TaskFinished(Box::new(status)));
    }

    fn succeed(&mut self, id: TaskId, executor: &str) {
        let output = TaskOutput::Map(MapOutput {
            executor_id: executor.into(),
            executor_address: String::new(),
            data: ShuffleData::File(format!("/shuffle/{executor}/{}", id.partition).into()),
            partitions: vec![],
            keys: vec![],
        });
        self.report(id, executor, Ok(output));
    }

    fn fail(&mut self, id: TaskId, executor: &str, reason: FailureReason, retryable: bool) {
        let failure = TaskFailure {
            reason,
            message: format!("{id} failed"),
            retryable,
        };
        self.report(id, executor, Err(failure));
    }

    /// The stage attempts submitted so far, in order: (stage, attempt).
    fn stage_attempts(&self) -> Vec<(usize, usize)> {
        self.events
            .0
            .lock()
            .iter()
            .filter_map(|e| match e {
                AppEvent::StageSubmitted { stage, attempt, .. } => Some((*stage, *attempt)),
                _ => None,
            })
            .collect()
    }

    fn task_ends(&self) -> usize {
        let events = self.events.0.lock();
        events
            .iter()
            .filter(|e| matches!(e, AppEvent::TaskEnded { .. }))
            .count()
    }

    /// The progress bars' view, from the events: (stage, total, running, done).
    fn progress(&self) -> Vec<(usize, usize, usize, usize)> {
        self.progress
            .subscribe()
            .borrow()
            .stages
            .iter()
            .map(|s| (s.stage, s.total, s.running, s.done))
            .collect()
    }

    /// What the result reader has been told: the job's failure, or `Ok` once every
    /// final-stage partition is stored (`None` while some are not).
    fn outcome(&mut self) -> Option<Result<()>> {
        while let Ok(event) = self.results.try_recv() {
            match event {
                ResultEvent::Ready { partition, output } => {
                    self.ready.push((partition, output.executor_id))
                }
                ResultEvent::Failed(e) => return Some(Err(e)),
                ResultEvent::Partitions(n) => self.partitions = n,
            }
        }
        let mut stored: Vec<usize> = self.ready.iter().map(|(p, _)| *p).collect();
        stored.sort();
        stored.dedup();
        (stored.len() == self.partitions).then_some(Ok(()))
    }

    /// The job's end, if the bus has heard of it.
    fn job_ended(&self) -> Option<JobStatus> {
        self.events.0.lock().iter().find_map(|e| match e {
            AppEvent::JobEnded { status, .. } => Some(*status),
            _ => None,
        })
    }
}

fn parts(ids: &[TaskId]) -> Vec<(usize, usize, usize, usize)> {
    ids.iter()
        .map(|t| (t.stage, t.stage_attempt, t.partition, t.attempt))
        .collect()
}

#[tokio::test]
async fn a_job_runs_its_map_stage_then_its_reduce_stage_and_replies() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    assert_eq!(
        parts(&maps),
        [(h.map_stage, 0, 0, 0), (h.map_stage, 0, 1, 0)]
    );
    h.succeed(maps[0], "e1");
    assert!(
        h.launched().is_empty(),
        "the reduce stage waits for every map task"
    );
    h.succeed(maps[1], "e1");
    let reduces = h.launched();
    assert_eq!(
        parts(&reduces),
        [(h.final_stage, 0, 0, 0), (h.final_stage, 0, 1, 0)]
    );
    h.succeed(reduces[0], "e1");
    assert!(h.outcome().is_none());
    h.succeed(reduces[1], "e1");
    assert!(matches!(h.outcome(), Some(Ok(_))));
}

#[tokio::test]
async fn a_task_with_no_free_slot_waits_and_spends_no_attempt() {
    let mut h = harness(1, &[]).await;
    let first = h.launched();
    assert_eq!(
        parts(&first),
        [(h.map_stage, 0, 0, 0)],
        "one slot, one task"
    );
    // Events that free nothing launch nothing.
    h.scheduler.handle(Event::SlotsChanged);
    assert!(h.launched().is_empty());
    h.succeed(first[0], "e1");
    assert_eq!(
        parts(&h.launched()),
        [(h.map_stage, 0, 1, 0)],
        "the waiting task runs as its first attempt once a slot frees"
    );
    assert_eq!(h.task_ends(), 1, "no failure was reported for the wait");
}

#[tokio::test]
async fn a_retryable_failure_reruns_the_task_until_max_failures_then_fails_the_job() {
    let mut h = harness(4, &[("ember.task.max_failures", "3")]).await;
    let maps = h.launched();
    h.succeed(maps[1], "e1");
    h.fail(maps[0], "e1", FailureReason::Io, true);
    let retry = h.launched();
    assert_eq!(
        parts(&retry),
        [(h.map_stage, 0, 0, 1)],
        "attempt 1 of the same task"
    );
    h.fail(retry[0], "e1", FailureReason::Io, true);
    let retry = h.launched();
    assert_eq!(parts(&retry), [(h.map_stage, 0, 0, 2)]);
    h.fail(retry[0], "e1", FailureReason::Io, true);
    assert!(h.launched().is_empty(), "no fourth attempt");
    match h.outcome() {
        Some(Err(EmberError::JobFailed { job: 1, cause })) => {
            assert!(cause.contains("failed 3 time(s)"), "{cause}")
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    assert_eq!(
        *h.launcher.cancelled.lock(),
        [1],
        "its other tasks are cancelled"
    );
}

#[tokio::test]
async fn a_failure_that_is_not_retryable_fails_the_job_at_once() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.fail(maps[0], "e1", FailureReason::Execution, false);
    assert!(h.launched().is_empty());
    assert!(matches!(
        h.outcome(),
        Some(Err(EmberError::JobFailed { .. }))
    ));
}

#[tokio::test]
async fn a_fetch_failure_reruns_only_the_lost_map_output_then_resubmits_the_reader() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    h.succeed(maps[1], "e2");
    let reduces = h.launched();
    assert_eq!(reduces.len(), 2);
    h.fail(
        reduces[0],
        "e2",
        FailureReason::FetchFailed {
            executor: "e1".into(),
            map_stage: h.map_stage,
            map_partition: 0,
        },
        true,
    );
    // Only e1's output is recomputed; e2's stays.
    let rerun = h.launched();
    assert_eq!(parts(&rerun), [(h.map_stage, 0, 0, 0)]);
    // The reader that was still running belongs to the superseded attempt: its
    // report is ignored (no event, no decision).
    let ends = h.task_ends();
    h.succeed(reduces[1], "e2");
    assert_eq!(h.task_ends(), ends, "a stale attempt's report is ignored");
    assert!(h.launched().is_empty());
    h.succeed(rerun[0], "e3");
    let again = h.launched();
    assert_eq!(
        parts(&again),
        [(h.final_stage, 1, 0, 0), (h.final_stage, 1, 1, 0)],
        "the reader stage runs again as attempt 1, the fetch failure not counted"
    );
    assert_eq!(
        h.stage_attempts(),
        [
            (h.map_stage, 0),
            (h.final_stage, 0),
            (h.map_stage, 0),
            (h.final_stage, 1)
        ]
    );
    h.succeed(again[0], "e3");
    h.succeed(again[1], "e3");
    assert!(matches!(h.outcome(), Some(Ok(_))));
}

#[tokio::test]
async fn an_adapted_stage_keeps_its_tasks_when_it_runs_again_after_a_fetch_failure() {
    let mut h = harness(4, &[("ember.adaptive.enabled", "true")]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    h.succeed(maps[1], "e2");
    // Two empty reduce partitions: one task reads both.
    let reduces = h.launched();
    assert_eq!(parts(&reduces), [(h.final_stage, 0, 0, 0)]);
    assert!(h.outcome().is_none());
    assert_eq!(h.partitions, 1, "the result reader is told");
    assert_eq!(
        h.progress(),
        [(h.final_stage, 1, 1, 0)],
        "the progress bar counts the tasks it runs"
    );
    h.fail(
        reduces[0],
        "e2",
        FailureReason::FetchFailed {
            executor: "e1".into(),
            map_stage: h.map_stage,
            map_partition: 0,
        },
        true,
    );
    let rerun = h.launched();
    assert_eq!(parts(&rerun), [(h.map_stage, 0, 0, 0)]);
    h.succeed(rerun[0], "e3");
    // The second attempt reads the same pieces: still one task.
    let again = h.launched();
    assert_eq!(parts(&again), [(h.final_stage, 1, 0, 0)]);
    h.succeed(again[0], "e3");
    assert!(matches!(h.outcome(), Some(Ok(_))));
    let adapted = h
        .events
        .0
        .lock()
        .iter()
        .filter(|e| matches!(e, AppEvent::StageAdapted { .. }))
        .count();
    assert_eq!(adapted, 1, "decided once");
}

#[tokio::test]
async fn a_lost_executor_fails_its_running_tasks_over_and_recomputes_its_map_outputs() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    // maps[1] runs on e1 too when e1 is lost: it runs again, as attempt 1, and the
    // output e1 held is recomputed.
    h.launcher.running.lock().clear();
    h.scheduler.handle(Event::ExecutorLost {
        executor: "e1".into(),
        running: vec![maps[1]],
    });
    let mut rerun = parts(&h.launched());
    rerun.sort();
    assert_eq!(rerun, [(h.map_stage, 0, 0, 0), (h.map_stage, 0, 1, 1)]);
}

#[tokio::test]
async fn a_reader_stage_that_keeps_losing_its_input_fails_after_max_attempts() {
    let mut h = harness(4, &[("ember.stage.max_attempts", "2")]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    h.succeed(maps[1], "e1");
    let fetch_failed = FailureReason::FetchFailed {
        executor: "e1".into(),
        map_stage: h.map_stage,
        map_partition: 0,
    };
    let reduces = h.launched();
    h.fail(reduces[0], "e2", fetch_failed.clone(), true);
    let rerun = h.launched();
    assert_eq!(rerun.len(), 2, "both of e1's outputs are recomputed");
    assert!(
        h.outcome().is_none(),
        "attempt 1 of the reader may still run"
    );
    for id in rerun {
        h.succeed(id, "e1");
    }
    let reduces = h.launched();
    assert!(reduces.iter().all(|t| t.stage_attempt == 1));
    h.fail(reduces[0], "e2", fetch_failed, true);
    match h.outcome() {
        Some(Err(EmberError::JobFailed { cause, .. })) => {
            assert!(cause.contains("attempted 2 times"), "{cause}")
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cancelled_job_replies_cancelled_and_later_reports_are_ignored() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.scheduler.handle(Event::Cancel { job: 1 });
    assert!(matches!(
        h.outcome(),
        Some(Err(EmberError::Cancelled { job: 1 }))
    ));
    let ends = h.task_ends();
    h.fail(maps[0], "e1", FailureReason::Killed, false);
    assert_eq!(h.task_ends(), ends);
    assert!(h.launched().is_empty());
}

#[tokio::test]
async fn progress_bars_follow_the_events_through_a_lost_map_output() {
    let mut h = harness(4, &[]).await;
    let (map, reduce) = (h.map_stage, h.final_stage);
    let maps = h.launched();
    assert_eq!(h.progress(), [(map, 2, 2, 0)]);
    h.succeed(maps[0], "e1");
    assert_eq!(h.progress(), [(map, 2, 1, 1)]);
    h.succeed(maps[1], "e2");
    let reduces = h.launched();
    assert_eq!(h.progress(), [(reduce, 2, 2, 0)]);
    h.fail(
        reduces[0],
        "e2",
        FailureReason::FetchFailed {
            executor: "e1".into(),
            map_stage: map,
            map_partition: 0,
        },
        true,
    );
    // The reader waits; the map stage runs its lost task again, one output kept.
    let rerun = h.launched();
    assert_eq!(h.progress(), [(map, 2, 1, 1)]);
    h.succeed(reduces[1], "e2");
    assert_eq!(
        h.progress(),
        [(map, 2, 1, 1)],
        "a stale report moves nothing"
    );
    h.succeed(rerun[0], "e3");
    let again = h.launched();
    assert_eq!(h.progress(), [(reduce, 2, 2, 0)]);
    h.succeed(again[0], "e3");
    assert_eq!(h.progress(), [(reduce, 2, 1, 1)]);
    h.succeed(again[1], "e3");
    assert!(h.progress().is_empty(), "nothing runs once the job ended");
}

#[tokio::test]
async fn results_are_announced_as_stored_and_the_job_ends_when_they_are_read() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    h.succeed(maps[1], "e2");
    let reduces = h.launched();
    h.succeed(reduces[1], "e2");
    assert!(h.outcome().is_none());
    assert_eq!(
        h.ready,
        [(1, "e2".to_string())],
        "partition 1 is readable first"
    );
    h.succeed(reduces[0], "e1");
    assert!(matches!(h.outcome(), Some(Ok(()))));
    assert_eq!(h.job_ended(), None, "the job runs until its reader is done");
    h.scheduler.handle(Event::ResultsRead {
        job: 1,
        ended: tokio::sync::oneshot::channel().0,
    });
    assert_eq!(h.job_ended(), Some(JobStatus::Succeeded));
}

#[tokio::test]
async fn a_lost_result_is_recomputed_from_lineage_unless_it_was_read() {
    let mut h = harness(4, &[]).await;
    let maps = h.launched();
    h.succeed(maps[0], "e1");
    h.succeed(maps[1], "e2");
    let reduces = h.launched();
    h.succeed(reduces[0], "e1");
    h.succeed(reduces[1], "e2");
    assert!(matches!(h.outcome(), Some(Ok(()))));
    h.scheduler.handle(Event::ResultFetched {
        job: 1,
        partition: 0,
    });
    // e1 held map output 0 and result 0: the result was read, and no stage reads
    // the map output any more, so nothing runs.
    h.scheduler.handle(Event::ExecutorLost {
        executor: "e1".into(),
        running: vec![],
    });
    assert!(h.launched().is_empty(), "nothing needed was lost");
    // Result 1 cannot be fetched from e2: it runs again, after the map outputs it
    // reads (both gone now) are recomputed.
    h.scheduler.handle(Event::ResultLost {
        job: 1,
        partition: 1,
        executor: "e2".into(),
        message: "e2 is gone".into(),
    });
    let mut rerun = parts(&h.launched());
    rerun.sort();
    assert_eq!(rerun, [(h.map_stage, 0, 0, 0), (h.map_stage, 0, 1, 0)]);
    h.succeed(maps[0], "e3");
    h.succeed(maps[1], "e3");
    let again = h.launched();
    assert_eq!(
        parts(&again),
        [(h.final_stage, 0, 1, 0)],
        "only the lost result partition runs again"
    );
    h.succeed(again[0], "e3");
    h.outcome();
    assert_eq!(h.ready.last(), Some(&(1, "e3".to_string())));
    h.scheduler.handle(Event::ResultsRead {
        job: 1,
        ended: tokio::sync::oneshot::channel().0,
    });
    assert_eq!(h.job_ended(), Some(JobStatus::Succeeded));
}

//! Local mode's executors: N in-process slots running tasks on the session's runtime,
//! through the same task definitions as a cluster, but each with the stage plan
//! itself, which it runs a fresh copy of rather than decode it. It owns the slots:
//! a task is placed while fewer than N run.

use std::collections::HashMap;
use std::sync::Arc;

use ember_exec::cancel::CancelFlag;
use ember_exec::task::{
    FailureReason, TaskDefinition, TaskEnv, TaskFailure, TaskId, TaskOutput, TaskStatus, run_task,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::scheduler::{Event, TaskLauncher};

pub(crate) struct LocalExecutors {
    env: TaskEnv,
    slots: usize,
    events: mpsc::UnboundedSender<Event>,
    /// Running tasks and the switch that kills each.
    running: Arc<Mutex<HashMap<TaskId, oneshot::Sender<()>>>>,
    runtime: tokio::runtime::Handle,
}

impl LocalExecutors {
    pub(crate) fn new(
        env: TaskEnv,
        slots: usize,
        events: mpsc::UnboundedSender<Event>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        LocalExecutors {
            env,
            slots,
            events,
            running: Arc::default(),
            runtime,
        }
    }
}

fn failed(id: TaskId, executor_id: String, reason: FailureReason, message: String) -> TaskStatus {
    TaskStatus {
        id,
        executor_id,
        result: Err(TaskFailure {
            reason,
            message,
            retryable: false,
        }),
    }
}

impl TaskLauncher for LocalExecutors {
    fn in_process(&self) -> bool {
        true
    }

    fn launch(&self, task: TaskDefinition) -> Result<(), Box<TaskDefinition>> {
        let id = task.id;
        // Held until the task is in `running`: two launches cannot both take the
        // last slot.
        let mut running = self.running.lock();
        if running.len() >= self.slots {
            return Err(Box::new(task));
        }
        let env = self.env.clone();
        let shuffle = env.shuffle.clone();
        let executor_id = env.executor_id.clone();
        let cancel = CancelFlag::default();
        let flag = cancel.clone();
        let mut handle = self
            .runtime
            .spawn(async move { run_task(&task, &env, &flag).await });
        let (kill, mut killed) = oneshot::channel();
        running.insert(id, kill);
        drop(running);
        let running = self.running.clone();
        let events = self.events.clone();
        let runtime = self.runtime.clone();
        // The reporter owns the task: whatever happens to it (success, error, panic,
        // kill), the scheduler hears about it exactly once and gets its slot back.
        self.runtime.spawn(async move {
            let status = tokio::select! {
                joined = &mut handle => match joined {
                    Ok(status) => status,
                    Err(e) => failed(id, executor_id, FailureReason::Execution, format!("{id} panicked: {e}")),
                },
                Ok(()) = &mut killed => {
                    // The task stops at its next batch (or yield); the slot is free now,
                    // and whatever the task still writes is dropped when it ends.
                    cancel.cancel();
                    handle.abort();
                    runtime.spawn(async move {
                        if let Ok(TaskStatus { result: Ok((TaskOutput::Map(_), _)), .. }) = handle.await {
                            shuffle.remove_job(id.job);
                        }
                    });
                    failed(id, executor_id, FailureReason::Killed, format!("{id} was killed"))
                }
            };
            running.lock().remove(&id);
            let _ = events.send(Event::TaskFinished(Box::new(status)));
        });
        Ok(())
    }

    fn cancel_tasks(&self, matching: &dyn Fn(&TaskId) -> bool) {
        let mut running = self.running.lock();
        let ids: Vec<TaskId> = running.keys().filter(|id| matching(id)).copied().collect();
        for id in ids {
            if let Some(kill) = running.remove(&id) {
                let _ = kill.send(());
            }
        }
    }

    fn remove_job(&self, job: u64) {
        self.env.shuffle.remove_job(job);
    }
}

//! Progress bars' view of the running stages, kept by a listener of the scheduler's
//! events and published on a watch channel (`Session::progress`, and to remote
//! clients through `GetJob`).

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{AppEvent, Listener};

/// One running stage, as progress bars show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageProgress {
    pub job: u64,
    pub stage: usize,
    pub total: usize,
    pub running: usize,
    pub done: usize,
}

/// Every running stage of every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub stages: Vec<StageProgress>,
}

/// Follows stages from their submission to their completion (or their going back
/// to waiting) and their tasks in between.
pub(crate) struct ProgressListener {
    state: Mutex<Counts>,
    sender: watch::Sender<JobProgress>,
}

#[derive(Default)]
struct Counts {
    /// Tasks of every stage of the jobs running, from their submission.
    totals: HashMap<(u64, usize), usize>,
    /// The running stages, in (job, stage) order.
    running: BTreeMap<(u64, usize), StageProgress>,
}

impl Default for ProgressListener {
    fn default() -> Self {
        ProgressListener {
            state: Mutex::default(),
            sender: watch::channel(JobProgress::default()).0,
        }
    }
}

impl ProgressListener {
    pub(crate) fn subscribe(&self) -> watch::Receiver<JobProgress> {
        self.sender.subscribe()
    }

    fn publish(&self, counts: &Counts) {
        let stages: Vec<StageProgress> = counts.running.values().cloned().collect();
        self.sender.send_if_modified(|p| {
            if p.stages == stages {
                false
            } else {
                p.stages = stages;
                true
            }
        });
    }
}

impl Listener for ProgressListener {
    fn on_event(&self, event: &AppEvent) {
        let mut counts = self.state.lock();
        match event {
            AppEvent::JobSubmitted { job, stages, .. } => {
                for s in stages {
                    counts.totals.insert((*job, s.id), s.tasks);
                }
                return;
            }
            AppEvent::StageAdapted {
                job, stage, tasks, ..
            } => {
                // Posted before the stage starts: its bar counts the tasks it runs.
                counts.totals.insert((*job, *stage), *tasks);
                return;
            }
            AppEvent::JobEnded { job, .. } => {
                counts.totals.retain(|(j, _), _| j != job);
                counts.running.retain(|(j, _), _| j != job);
            }
            AppEvent::StageSubmitted {
                job,
                stage,
                done,
                running,
                ..
            } => {
                let total = counts.totals.get(&(*job, *stage)).copied().unwrap_or(0);
                counts.running.insert(
                    (*job, *stage),
                    StageProgress {
                        job: *job,
                        stage: *stage,
                        total,
                        running: *running,
                        done: *done,
                    },
                );
            }
            AppEvent::StageCompleted { job, stage, .. }
            | AppEvent::StageWaiting { job, stage, .. } => {
                counts.running.remove(&(*job, *stage));
            }
            AppEvent::TaskStarted { task, .. } => {
                match counts.running.get_mut(&(task.job, task.stage)) {
                    Some(s) => s.running += 1,
                    None => return,
                }
            }
            AppEvent::TaskEnded { task, failure, .. } => {
                match counts.running.get_mut(&(task.job, task.stage)) {
                    Some(s) => {
                        s.running = s.running.saturating_sub(1);
                        if failure.is_none() {
                            s.done += 1;
                        }
                    }
                    None => return,
                }
            }
            _ => return,
        }
        self.publish(&counts);
    }
}

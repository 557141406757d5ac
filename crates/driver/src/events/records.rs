//! Job records: each recent job's state and the bytes it shuffled, for a client's
//! `GetJob` and the result stream's totals. A listener of the scheduler's events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{AppEvent, JobStatus, Listener};

/// What became of a job, for `GetJob`.
#[derive(Debug, Clone)]
pub(crate) struct JobRecord {
    pub state: JobStatus,
    pub error: String,
    /// Bytes its map tasks wrote to the shuffle.
    pub shuffle_bytes: u64,
    /// Its stages that adaptive execution planned again, as they ran.
    pub adapted: Vec<String>,
}

/// The most recent jobs' states, and the bytes shuffled by every job so far.
#[derive(Default)]
pub(crate) struct JobRecords {
    jobs: Mutex<BTreeMap<u64, JobRecord>>,
    shuffle_bytes: AtomicU64,
}

impl JobRecords {
    const KEPT: usize = 1000;

    pub(crate) fn set(&self, job: u64, state: JobStatus, error: String) {
        let mut jobs = self.jobs.lock();
        let (shuffle_bytes, adapted) = jobs
            .remove(&job)
            .map_or((0, Vec::new()), |r| (r.shuffle_bytes, r.adapted));
        jobs.insert(
            job,
            JobRecord {
                state,
                error,
                shuffle_bytes,
                adapted,
            },
        );
        while jobs.len() > Self::KEPT {
            jobs.pop_first();
        }
    }

    /// Records a running job as cancelled (its caller stopped waiting; the
    /// scheduler's `JobEnded` follows). A job that has already ended keeps its state.
    pub(crate) fn cancel_if_running(&self, job: u64) {
        if let Some(r) = self.jobs.lock().get_mut(&job)
            && r.state == JobStatus::Running
        {
            r.state = JobStatus::Cancelled;
        }
    }

    /// A map task of `job` wrote `bytes` to the shuffle.
    fn add_shuffle_bytes(&self, job: u64, bytes: u64) {
        self.shuffle_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(r) = self.jobs.lock().get_mut(&job) {
            r.shuffle_bytes += bytes;
        }
    }

    pub(crate) fn get(&self, job: u64) -> Option<JobRecord> {
        self.jobs.lock().get(&job).cloned()
    }

    pub(crate) fn total_shuffle_bytes(&self) -> u64 {
        self.shuffle_bytes.load(Ordering::Relaxed)
    }
}

/// Job records follow the scheduler's events: a job's end, a map task's bytes. (A job
/// is recorded as running by [`Engine::run`] itself, before the scheduler hears of
/// it, so that a client asking at once finds it.)
impl Listener for JobRecords {
    fn on_event(&self, event: &AppEvent) {
        match event {
            AppEvent::JobEnded {
                job, status, error, ..
            } => {
                let error = match status {
                    JobStatus::Failed => error.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                self.set(*job, *status, error);
            }
            AppEvent::TaskEnded {
                task,
                map: true,
                metrics: Some(m),
                ..
            } => self.add_shuffle_bytes(task.job, m.bytes_out),
            AppEvent::StageAdapted {
                job,
                stage,
                tasks,
                planned,
                notes,
                plan,
            } => {
                if let Some(r) = self.jobs.lock().get_mut(job) {
                    let mut text = format!(
                        "Stage {stage}: {} (planned {planned})\n",
                        crate::engine::count(*tasks, "task")
                    );
                    for note in notes {
                        text.push_str(&format!("  {note}\n"));
                    }
                    for line in plan.lines() {
                        text.push_str(&format!("  {line}\n"));
                    }
                    r.adapted.push(text);
                }
            }
            _ => {}
        }
    }
}

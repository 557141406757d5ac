//! Cluster mode's executors: processes that register with the driver over gRPC.
//!
//! [`ClusterExecutors`] is the scheduler's [`TaskLauncher`] for them, and the one
//! owner of their slots: it places each task on the registered executor with the
//! most free slots and sends `LaunchTasks` (or hands the task back, to wait, when
//! every slot is taken). It posts executor events (added, decommissioned, lost);
//! the driver's gRPC service (`service.rs`) hands it executors' registrations,
//! heartbeats and task reports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ember_core::PROTOCOL_VERSION;
use ember_core::convert::{task_definition_to_proto, task_id_to_proto};
use ember_core::proto::executor_service_client::ExecutorServiceClient;
use ember_core::proto::{
    CancelTasksRequest, LaunchTasksRequest, RegisterExecutorRequest, RemoveJobRequest,
};
use ember_core::rpc::{AuthChannel, Security};
use ember_exec::task::{FailureReason, TaskDefinition, TaskFailure, TaskId, TaskStatus};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::scheduler::{Event, TaskLauncher};
use crate::events::{AppEvent, ExecutorStatus, ExecutorView, ListenerBus, LiveExecutors};

struct RemoteExecutor {
    client: ExecutorServiceClient<AuthChannel>,
    address: String,
    memory_bytes: u64,
    /// The process's peak resident memory, as its last heartbeat said.
    peak_rss_bytes: u64,
    registered_ms: i64,
    last_seen_ms: i64,
    cores: usize,
    busy: usize,
    last_seen: Instant,
    /// Leaving (SIGTERM): no new tasks; its slots are already taken off.
    draining: bool,
    /// A connection check is under way (its heartbeats are late).
    probing: bool,
    /// The user functions and batch functions it offers, sorted.
    udfs: Vec<String>,
    batch_fns: Vec<String>,
}

#[derive(Default)]
struct ClusterState {
    executors: BTreeMap<String, RemoteExecutor>,
    /// Where each launched task runs.
    running: HashMap<TaskId, RunningTask>,
    /// The executors lost most recently, for the UI.
    lost: std::collections::VecDeque<ExecutorView>,
}

/// A launched task the driver has no report of yet.
struct RunningTask {
    executor: String,
    launched: Instant,
    /// Consecutive heartbeats of its executor that did not list it.
    missed: u32,
}

/// A task its executor's heartbeats stopped listing has lost its report: it is failed
/// over after this many heartbeats in a row without it, and no sooner than
/// [`LAUNCH_GRACE`] after its launch (whose request may still be on its way).
const MISSED_HEARTBEATS: u32 = 2;
const LAUNCH_GRACE: Duration = Duration::from_secs(2);

fn epoch_ms() -> i64 {
    crate::events::now_ms()
}

/// Heartbeats this late make the driver check the executor's connection.
const PROBE_AFTER: Duration = Duration::from_secs(3);

pub(crate) struct ClusterExecutors {
    state: Mutex<ClusterState>,
    events: mpsc::UnboundedSender<Event>,
    /// Cores of the registered executors that take tasks (to know whether any are
    /// there; free slots are counted per executor, under `state`).
    cores: AtomicUsize,
    security: Security,
    bus: Arc<ListenerBus>,
    /// The calls to executors in flight (launches, cancels, probes, job removals):
    /// aborted by [`ClusterExecutors::shutdown`] when the engine stops.
    calls: Mutex<tokio::task::JoinSet<()>>,
}

impl ClusterExecutors {
    /// Runs a call to an executor as a task this registry owns.
    fn call(&self, call: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut calls = self.calls.lock();
        while calls.try_join_next().is_some() {}
        calls.spawn(call);
    }

    /// Aborts the calls still in flight (the engine is going away).
    pub(crate) fn shutdown(&self) {
        self.calls.lock().abort_all();
    }

    pub(crate) fn new(
        events: mpsc::UnboundedSender<Event>,
        security: Security,
        bus: Arc<ListenerBus>,
    ) -> Self {
        ClusterExecutors {
            state: Mutex::default(),
            events,
            cores: AtomicUsize::new(0),
            security,
            bus,
            calls: Mutex::default(),
        }
    }

    /// Whether every executor runs on one host: the reader of a map output is then
    /// on its writer's host, wherever its task runs.
    pub(crate) fn on_one_host(&self) -> bool {
        let state = self.state.lock();
        one_host(state.executors.values().map(|e| e.address.as_str()))
    }

    /// Checks that every executor offers the user functions and batch functions a
    /// job calls; the error names the first one missing and where.
    pub(crate) fn check_functions(
        &self,
        udfs: &[String],
        batch_fns: &[String],
    ) -> Result<(), String> {
        let state = self.state.lock();
        for (id, e) in state.executors.iter().filter(|(_, e)| !e.draining) {
            if let Some(f) = udfs.iter().find(|f| e.udfs.binary_search(f).is_err()) {
                return Err(format!(
                    "the job calls function '{f}', which executor {id} does not have; run the executors from a program that registers it (ember::executor::run with Registry::with_udf)"
                ));
            }
            if let Some(f) = batch_fns
                .iter()
                .find(|f| e.batch_fns.binary_search(f).is_err())
            {
                return Err(format!(
                    "the job calls batch function '{f}', which executor {id} does not have; run the executors from a program that registers it (ember::executor::run with Registry::with_batch_fn)"
                ));
            }
        }
        Ok(())
    }

    /// An executor leaving on purpose: first no new tasks, then gone.
    pub(super) fn decommission(&self, executor: &str, finished: bool, reason: &str) {
        if finished {
            return self.lose(executor, &format!("decommissioned ({reason})"));
        }
        let mut state = self.state.lock();
        let Some(e) = state.executors.get_mut(executor) else {
            return;
        };
        if e.draining {
            return;
        }
        e.draining = true;
        let cores = e.cores;
        drop(state);
        self.cores.fetch_sub(cores, Ordering::AcqRel);
        tracing::info!(executor, reason, "executor leaving: no new tasks go to it");
        self.bus.post(AppEvent::ExecutorDecommissioned {
            executor: executor.to_string(),
            reason: reason.to_string(),
            time_ms: epoch_ms(),
        });
        let _ = self.events.send(Event::SlotsChanged);
    }

    /// Task slots of all registered executors.
    pub(crate) fn total_cores(&self) -> usize {
        self.cores.load(Ordering::Acquire)
    }

    /// Adds an executor; returns the slots it brings.
    pub(super) fn register(&self, req: &RegisterExecutorRequest) -> Result<usize, String> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not this driver's {PROTOCOL_VERSION}",
                req.protocol_version
            ));
        }
        if req.cores == 0 {
            return Err("an executor needs at least one core".into());
        }
        let channel = self
            .security
            .channel(&req.address)
            .map_err(|e| format!("executor {}: {e}", req.executor_id))?;
        let client = self.security.executor_client(channel);
        let sorted = |names: &[String]| {
            let mut names = names.to_vec();
            names.sort();
            names
        };
        let mut state = self.state.lock();
        if state.executors.contains_key(&req.executor_id) {
            return Ok(0); // re-registration: slots already counted
        }
        state.executors.insert(
            req.executor_id.clone(),
            RemoteExecutor {
                client,
                address: req.address.clone(),
                memory_bytes: req.memory_bytes,
                peak_rss_bytes: 0,
                registered_ms: epoch_ms(),
                last_seen_ms: epoch_ms(),
                cores: req.cores as usize,
                busy: 0,
                last_seen: Instant::now(),
                draining: false,
                probing: false,
                udfs: sorted(&req.udfs),
                batch_fns: sorted(&req.batch_functions),
            },
        );
        self.cores.fetch_add(req.cores as usize, Ordering::AcqRel);
        drop(state);
        self.bus.post(AppEvent::ExecutorAdded {
            executor: req.executor_id.clone(),
            address: req.address.clone(),
            cores: req.cores as usize,
            memory_bytes: req.memory_bytes,
            time_ms: epoch_ms(),
        });
        Ok(req.cores as usize)
    }

    /// Records a sign of life; false for an executor this driver does not know.
    /// An executor's heartbeat told its peak resident memory.
    pub(super) fn peak_rss(&self, executor_id: &str, bytes: u64) {
        if let Some(e) = self.state.lock().executors.get_mut(executor_id) {
            e.peak_rss_bytes = e.peak_rss_bytes.max(bytes);
        }
    }

    pub(super) fn touch(&self, executor_id: &str) -> bool {
        match self.state.lock().executors.get_mut(executor_id) {
            Some(e) => {
                e.last_seen = Instant::now();
                e.last_seen_ms = epoch_ms();
                true
            }
            None => false,
        }
    }

    /// Compares the tasks an executor's heartbeat lists with those the driver believes
    /// run there: a task missing from [`MISSED_HEARTBEATS`] heartbeats in a row ended
    /// without a report reaching the driver (the executor gave up on it, or restarted),
    /// so it fails as if its executor were lost, and is retried. The executor keeps a
    /// task listed until the driver has its report, so a report in flight is no loss.
    pub(super) fn check_running(&self, executor: &str, listed: &[TaskId]) {
        let listed: HashSet<&TaskId> = listed.iter().collect();
        let mut state = self.state.lock();
        let mut missing = vec![];
        for (id, task) in state
            .running
            .iter_mut()
            .filter(|(_, t)| t.executor == executor)
        {
            if listed.contains(id) {
                task.missed = 0;
                continue;
            }
            task.missed += 1;
            if task.missed >= MISSED_HEARTBEATS && task.launched.elapsed() >= LAUNCH_GRACE {
                missing.push(*id);
            }
        }
        drop(state);
        for id in missing {
            tracing::warn!(executor, task = %id, "the executor no longer has a task the driver launched there; running it again");
            self.lost(
                id,
                executor.to_string(),
                format!(
                    "executor {executor} no longer has {id} (missing from {MISSED_HEARTBEATS} heartbeats in a row): its report was lost"
                ),
            );
        }
    }

    /// Forgets executors silent for longer than `timeout`, and those that, a few
    /// heartbeats late, no longer accept connections (a killed process).
    pub(crate) fn expire(self: &Arc<Self>, timeout: Duration) {
        self.probe_late();
        let silent: Vec<String> = self
            .state
            .lock()
            .executors
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for executor in silent {
            self.lose(&executor, &format!("no heartbeat for {timeout:?}"));
        }
    }

    /// Calls each executor whose heartbeats are late; one whose port refuses the
    /// connection is gone, without waiting for the heartbeat timeout.
    fn probe_late(self: &Arc<Self>) {
        let mut state = self.state.lock();
        for (id, e) in state.executors.iter_mut() {
            if e.probing || e.last_seen.elapsed() < PROBE_AFTER {
                continue;
            }
            e.probing = true;
            let (this, id, mut client) = (self.clone(), id.clone(), e.client.clone());
            self.call(async move {
                let ping = client.cancel_tasks(
                    this.security
                        .liveness()
                        .unary(CancelTasksRequest { tasks: vec![] }),
                );
                let answer = tokio::time::timeout(PROBE_AFTER, ping).await;
                if let Ok(Err(status)) = &answer
                    && status.code() == tonic::Code::Unavailable
                {
                    this.lose(&id, &format!("unreachable: {}", status.message()));
                }
                if let Some(e) = this.state.lock().executors.get_mut(&id) {
                    e.probing = false;
                }
            });
        }
    }

    /// Removes an executor and tells the scheduler what it took with it.
    fn lose(&self, executor: &str, why: &str) {
        let mut state = self.state.lock();
        let Some(lost) = state.executors.remove(executor) else {
            return;
        };
        let running: Vec<TaskId> = state
            .running
            .iter()
            .filter(|(_, t)| t.executor == executor)
            .map(|(id, _)| *id)
            .collect();
        for id in &running {
            state.running.remove(id);
        }
        let mut view = view_of(executor, &lost);
        view.status = ExecutorStatus::Lost;
        view.active_tasks = 0;
        view.lost_reason = Some(why.to_string());
        state.lost.push_back(view);
        while state.lost.len() > 100 {
            state.lost.pop_front();
        }
        drop(state);
        // A draining executor's slots were taken off when it started leaving.
        let cores = if lost.draining { 0 } else { lost.cores };
        self.cores.fetch_sub(cores, Ordering::AcqRel);
        tracing::warn!(executor, reason = why, "executor lost");
        self.bus.post(AppEvent::ExecutorLost {
            executor: executor.to_string(),
            reason: why.to_string(),
            time_ms: epoch_ms(),
        });
        let _ = self.events.send(Event::ExecutorLost {
            executor: executor.to_string(),
            running,
        });
    }

    /// A task's report arrived: its slot on the executor is free again. False when the
    /// task was not running any more (its executor was already given up on, and the
    /// scheduler has been told), so the report must not free a slot twice.
    pub(super) fn task_reported(&self, id: &TaskId) -> bool {
        let mut state = self.state.lock();
        let Some(task) = state.running.remove(id) else {
            return false;
        };
        if let Some(e) = state.executors.get_mut(&task.executor) {
            e.busy = e.busy.saturating_sub(1);
        }
        true
    }

    fn lost(&self, task: TaskId, executor: String, message: String) {
        self.task_reported(&task);
        let status = TaskStatus {
            id: task,
            executor_id: executor,
            result: Err(TaskFailure {
                reason: FailureReason::ExecutorLost,
                message,
                retryable: true,
            }),
        };
        let _ = self.events.send(Event::TaskFinished(Box::new(status)));
    }
}

/// Whether the executors at `addresses` (`http://host:port`) share one host; an
/// address without a host shares none.
fn one_host<'a>(addresses: impl IntoIterator<Item = &'a str>) -> bool {
    let mut hosts = addresses.into_iter().map(|a| {
        url::Url::parse(a)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
    });
    match hosts.next() {
        None => true,
        Some(first) => first.is_some() && hosts.all(|h| h == first),
    }
}

impl TaskLauncher for Arc<ClusterExecutors> {
    fn launch(&self, task: TaskDefinition) -> Result<(), Box<TaskDefinition>> {
        let id = task.id;
        let chosen = {
            let mut state = self.state.lock();
            let best = state
                .executors
                .iter_mut()
                .filter(|(_, e)| !e.draining && e.busy < e.cores)
                .max_by_key(|(_, e)| e.cores - e.busy)
                .map(|(name, e)| {
                    e.busy += 1;
                    (name.clone(), e.client.clone())
                });
            if let Some((name, _)) = &best {
                let task = RunningTask {
                    executor: name.clone(),
                    launched: Instant::now(),
                    missed: 0,
                };
                state.running.insert(id, task);
            }
            best
        };
        let Some((executor, mut client)) = chosen else {
            return Err(Box::new(task));
        };
        let this = self.clone();
        self.call(async move {
            let request = this.security.liveness().unary(LaunchTasksRequest {
                tasks: vec![task_definition_to_proto(&task)],
            });
            if let Err(e) = client.launch_tasks(request).await {
                // An executor that cannot take a task is treated as gone; the task
                // (with the others it ran) is retried elsewhere.
                let why = format!("launching {id} failed: {}", e.message());
                this.lose(&executor, &why);
            }
        });
        Ok(())
    }

    fn cancel_tasks(&self, matching: &dyn Fn(&TaskId) -> bool) {
        let state = self.state.lock();
        let mut by_executor: HashMap<&str, Vec<_>> = HashMap::new();
        for (id, task) in state.running.iter().filter(|(id, _)| matching(id)) {
            by_executor
                .entry(&task.executor)
                .or_default()
                .push(task_id_to_proto(id));
        }
        for (executor, tasks) in by_executor {
            if let Some(e) = state.executors.get(executor) {
                let mut client = e.client.clone();
                let request = self.security.liveness().unary(CancelTasksRequest { tasks });
                self.call(async move {
                    let _ = client.cancel_tasks(request).await;
                });
            }
        }
    }

    fn remove_job(&self, job: u64) {
        for e in self.state.lock().executors.values() {
            let mut client = e.client.clone();
            let request = self
                .security
                .liveness()
                .unary(RemoveJobRequest { job_id: job });
            self.call(async move {
                let _ = client.remove_job(request).await;
            });
        }
    }
}

impl LiveExecutors for ClusterExecutors {
    fn views(&self) -> Vec<ExecutorView> {
        let state = self.state.lock();
        state
            .executors
            .iter()
            .map(|(id, e)| view_of(id, e))
            .chain(state.lost.iter().rev().cloned())
            .collect()
    }
}

fn view_of(id: &str, e: &RemoteExecutor) -> ExecutorView {
    ExecutorView {
        id: id.to_string(),
        address: e.address.clone(),
        cores: e.cores,
        memory_bytes: e.memory_bytes,
        peak_rss_bytes: e.peak_rss_bytes,
        active_tasks: e.busy,
        registered_ms: e.registered_ms,
        last_heartbeat_ms: e.last_seen_ms,
        status: if e.draining {
            ExecutorStatus::Decommissioning
        } else {
            ExecutorStatus::Active
        },
        lost_reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::one_host;

    #[test]
    fn executors_share_a_host_only_when_every_address_names_it() {
        assert!(one_host([]));
        assert!(one_host(["http://127.0.0.1:4001", "http://127.0.0.1:4002"]));
        assert!(!one_host(["http://127.0.0.1:4001", "http://10.0.0.2:4001"]));
        assert!(!one_host(["not an address", "not an address"]));
    }
}

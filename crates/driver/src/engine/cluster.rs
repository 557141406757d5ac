//! Cluster mode's executors: processes that register with the driver over gRPC.
//!
//! [`ClusterExecutors`] is the scheduler's [`TaskLauncher`] for them: it places each
//! task on the registered executor with the most free slots and sends `LaunchTasks`;
//! [`DriverServer`] is the driver's gRPC service, through which executors register
//! and report task statuses (turned into scheduler events).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ember_core::PROTOCOL_VERSION;
use ember_core::convert::{task_definition_to_proto, task_id_to_proto, task_status_from_proto};
use ember_core::proto::driver_service_server::DriverService;
use ember_core::proto::executor_service_client::ExecutorServiceClient;
use ember_core::proto::{
    CancelJobRequest, CancelJobResponse, CancelTasksRequest, ExecutePlanRequest, ExecuteResponse,
    ExecuteSqlRequest, GetJobRequest, HeartbeatRequest, HeartbeatResponse, JobStatus,
    LaunchTasksRequest, RegisterExecutorRequest, RegisterExecutorResponse, RemoveJobRequest,
    ReportTaskStatusRequest, ReportTaskStatusResponse,
};
use ember_core::task::{FailureReason, TaskDefinition, TaskFailure, TaskId, TaskStatus};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::scheduler::{Event, TaskLauncher};

struct RemoteExecutor {
    client: ExecutorServiceClient<Channel>,
    cores: usize,
    busy: usize,
    last_seen: Instant,
}

#[derive(Default)]
struct ClusterState {
    executors: BTreeMap<String, RemoteExecutor>,
    /// Which executor runs each launched task.
    running: HashMap<TaskId, String>,
}

pub(crate) struct ClusterExecutors {
    state: Mutex<ClusterState>,
    events: mpsc::UnboundedSender<Event>,
    cores: AtomicUsize,
}

impl ClusterExecutors {
    pub(crate) fn new(events: mpsc::UnboundedSender<Event>) -> Self {
        ClusterExecutors {
            state: Mutex::default(),
            events,
            cores: AtomicUsize::new(0),
        }
    }

    /// Task slots of all registered executors.
    pub(crate) fn total_cores(&self) -> usize {
        self.cores.load(Ordering::Acquire)
    }

    /// Adds an executor; returns the slots it brings.
    fn register(&self, req: &RegisterExecutorRequest) -> Result<usize, String> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not this driver's {PROTOCOL_VERSION}",
                req.protocol_version
            ));
        }
        if req.cores == 0 {
            return Err("an executor needs at least one core".into());
        }
        let endpoint = Endpoint::from_shared(req.address.clone())
            .map_err(|e| format!("bad executor address '{}': {e}", req.address))?;
        let client = ExecutorServiceClient::new(endpoint.connect_lazy());
        let mut state = self.state.lock();
        if state.executors.contains_key(&req.executor_id) {
            return Ok(0); // re-registration: slots already counted
        }
        state.executors.insert(
            req.executor_id.clone(),
            RemoteExecutor {
                client,
                cores: req.cores as usize,
                busy: 0,
                last_seen: Instant::now(),
            },
        );
        self.cores.fetch_add(req.cores as usize, Ordering::AcqRel);
        Ok(req.cores as usize)
    }

    /// Records a sign of life; false for an executor this driver does not know.
    fn touch(&self, executor_id: &str) -> bool {
        match self.state.lock().executors.get_mut(executor_id) {
            Some(e) => {
                e.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets executors silent for longer than `timeout`.
    pub(crate) fn expire(&self, timeout: Duration) {
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

    /// Removes an executor and tells the scheduler what it took with it.
    fn lose(&self, executor: &str, why: &str) {
        let mut state = self.state.lock();
        let Some(lost) = state.executors.remove(executor) else {
            return;
        };
        let running: Vec<TaskId> = state
            .running
            .iter()
            .filter(|(_, e)| e.as_str() == executor)
            .map(|(id, _)| *id)
            .collect();
        for id in &running {
            state.running.remove(id);
        }
        drop(state);
        self.cores.fetch_sub(lost.cores, Ordering::AcqRel);
        tracing::warn!(executor, reason = why, "executor lost");
        let _ = self.events.send(Event::ExecutorLost {
            executor: executor.to_string(),
            cores: lost.cores,
            running,
        });
    }

    /// A task's report arrived: its slot on the executor is free again. False when the
    /// task was not running any more (its executor was already given up on, and the
    /// scheduler has been told), so the report must not free a slot twice.
    fn task_reported(&self, id: &TaskId) -> bool {
        let mut state = self.state.lock();
        let Some(executor) = state.running.remove(id) else {
            return false;
        };
        if let Some(e) = state.executors.get_mut(&executor) {
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

impl TaskLauncher for Arc<ClusterExecutors> {
    fn launch(&self, task: TaskDefinition) {
        let id = task.id;
        let chosen = {
            let mut state = self.state.lock();
            let best = state
                .executors
                .iter_mut()
                .filter(|(_, e)| e.busy < e.cores)
                .max_by_key(|(_, e)| e.cores - e.busy)
                .map(|(name, e)| {
                    e.busy += 1;
                    (name.clone(), e.client.clone())
                });
            if let Some((name, _)) = &best {
                state.running.insert(id, name.clone());
            }
            best
        };
        let Some((executor, mut client)) = chosen else {
            return self.lost(
                id,
                String::new(),
                format!("no executor has a free slot for {id}"),
            );
        };
        let this = self.clone();
        tokio::spawn(async move {
            let request = LaunchTasksRequest {
                tasks: vec![task_definition_to_proto(&task)],
            };
            if let Err(e) = client.launch_tasks(request).await {
                // An executor that cannot take a task is treated as gone; the task
                // (with the others it ran) is retried elsewhere.
                let why = format!("launching {id} failed: {}", e.message());
                this.lose(&executor, &why);
            }
        });
    }

    fn cancel_job(&self, job: u64) {
        let state = self.state.lock();
        let mut by_executor: HashMap<&str, Vec<_>> = HashMap::new();
        for (id, executor) in state.running.iter().filter(|(id, _)| id.job == job) {
            by_executor
                .entry(executor)
                .or_default()
                .push(task_id_to_proto(id));
        }
        for (executor, tasks) in by_executor {
            if let Some(e) = state.executors.get(executor) {
                let mut client = e.client.clone();
                tokio::spawn(async move {
                    let _ = client.cancel_tasks(CancelTasksRequest { tasks }).await;
                });
            }
        }
    }

    fn remove_job(&self, job: u64) {
        for e in self.state.lock().executors.values() {
            let mut client = e.client.clone();
            tokio::spawn(async move {
                let _ = client.remove_job(RemoveJobRequest { job_id: job }).await;
            });
        }
    }
}

/// The driver's gRPC service.
pub(crate) struct DriverServer {
    pub(crate) cluster: Arc<ClusterExecutors>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
}

type ResultStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecuteResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DriverService for DriverServer {
    async fn register_executor(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<Response<RegisterExecutorResponse>, Status> {
        let req = request.into_inner();
        let reply = match self.cluster.register(&req) {
            Ok(slots) => {
                tracing::info!(executor = %req.executor_id, address = %req.address, cores = req.cores, "executor registered");
                if slots > 0 {
                    let _ = self.events.send(Event::SlotsAdded(slots));
                }
                RegisterExecutorResponse {
                    accepted: true,
                    message: String::new(),
                }
            }
            Err(message) => {
                tracing::warn!(executor = %req.executor_id, %message, "executor refused");
                RegisterExecutorResponse {
                    accepted: false,
                    message,
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let reregister = !self.cluster.touch(&request.get_ref().executor_id);
        Ok(Response::new(HeartbeatResponse { reregister }))
    }

    async fn report_task_status(
        &self,
        request: Request<ReportTaskStatusRequest>,
    ) -> Result<Response<ReportTaskStatusResponse>, Status> {
        for status in request.into_inner().statuses {
            let status = task_status_from_proto(status)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.cluster.touch(&status.executor_id);
            if self.cluster.task_reported(&status.id) {
                let _ = self.events.send(Event::TaskFinished(Box::new(status)));
            } else {
                tracing::debug!(task = %status.id, "ignoring the report of a task already failed over");
            }
        }
        Ok(Response::new(ReportTaskStatusResponse {}))
    }

    type ExecuteSqlStream = ResultStream;

    async fn execute_sql(
        &self,
        _: Request<ExecuteSqlRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        Err(Status::unimplemented(
            "remote client sessions are not implemented yet",
        ))
    }

    type ExecutePlanStream = ResultStream;

    async fn execute_plan(
        &self,
        _: Request<ExecutePlanRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        Err(Status::unimplemented(
            "remote client sessions are not implemented yet",
        ))
    }

    async fn get_job(&self, _: Request<GetJobRequest>) -> Result<Response<JobStatus>, Status> {
        Err(Status::unimplemented(
            "remote client sessions are not implemented yet",
        ))
    }

    async fn cancel_job(
        &self,
        _: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        Err(Status::unimplemented(
            "remote client sessions are not implemented yet",
        ))
    }
}

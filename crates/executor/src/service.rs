//! The executor's gRPC service: tasks in, statuses out, shuffle files served.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ember_core::EmberConfig;
use ember_core::convert::{
    task_definition_from_proto, task_id_from_proto, task_id_to_proto, task_status_to_proto,
};
use ember_core::proto::driver_service_client::DriverServiceClient;
use ember_core::proto::executor_service_server::ExecutorService;
use ember_core::proto::{
    CancelTasksRequest, CancelTasksResponse, FetchPartitionChunk, FetchPartitionRequest,
    LaunchTasksRequest, LaunchTasksResponse, RemoveJobRequest, RemoveJobResponse,
    ReportTaskStatusRequest, StopRequest, StopResponse, TaskFailure, TaskStatus, task_failure,
    task_status,
};
use ember_core::rpc::{AuthChannel, Liveness};
use ember_exec::cancel::CancelFlag;
use ember_exec::shuffle::serve_partition;
use ember_exec::task::{TaskDefinition, TaskEnv, TaskId, run_task, session_config_from_pairs};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};

/// The tasks running on this executor, each with the flag that stops it.
pub(crate) type RunningTasks = Arc<Mutex<HashMap<TaskId, CancelFlag>>>;

pub(crate) struct ExecutorServer {
    pub(crate) env: TaskEnv,
    pub(crate) driver: DriverServiceClient<AuthChannel>,
    pub(crate) running: RunningTasks,
    pub(crate) stop: Arc<Notify>,
    pub(crate) metrics: Arc<crate::metrics::ExecutorMetrics>,
    /// Deadlines of the control calls to the driver.
    pub(crate) liveness: Liveness,
    /// Turns true when the executor has stopped: reports still being retried give up.
    pub(crate) ended: watch::Receiver<bool>,
}

/// First and longest wait between tries of a task status report.
const REPORT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl ExecutorServer {
    fn launch(&self, def: TaskDefinition) {
        let id = def.id;
        let flag = CancelFlag::default();
        self.running.lock().insert(id, flag.clone());
        let env = self.env.clone();
        let running = self.running.clone();
        let driver = self.driver.clone();
        let metrics = self.metrics.clone();
        let liveness = self.liveness;
        let ended = self.ended.clone();
        tokio::spawn(async move {
            let status = run_task(&def, &env, &flag).await;
            metrics.task_ended(&status);
            let message = task_status_to_proto(&status).unwrap_or_else(|e| TaskStatus {
                id: Some(task_id_to_proto(&id)),
                executor_id: env.executor_id.clone(),
                result: Some(task_status::Result::Failed(TaskFailure {
                    message: format!("could not encode the result of {id}: {e}"),
                    retryable: false,
                    reason: Some(task_failure::Reason::Execution(String::new())),
                })),
            });
            let ember = session_config_from_pairs(&def.config)
                .map(|c| EmberConfig::from_session(&c))
                .unwrap_or_default();
            if ember.injected_forgotten(id.stage, id.attempt) {
                tracing::warn!(task = %id, "dropping the report and forgetting the task (ember.test.forget_tasks)");
            } else {
                report(driver, liveness, ended, &ember, id, message).await;
            }
            // Only now: until the driver has the report, heartbeats list the task (so
            // the driver does not give up on it) and a draining executor waits for it.
            running.lock().remove(&id);
        });
    }
}

/// Reports a task's status until the driver accepts it, backing off between tries,
/// for as long as this executor is registered (`ended` turns true when it stops). The
/// driver ignores a report it already has, so a retried one that did arrive is safe.
async fn report(
    mut driver: DriverServiceClient<AuthChannel>,
    liveness: Liveness,
    mut ended: watch::Receiver<bool>,
    ember: &EmberConfig,
    id: TaskId,
    status: TaskStatus,
) {
    let report = ReportTaskStatusRequest {
        statuses: vec![status],
    };
    let mut backoff = REPORT_BACKOFF_MIN;
    for tried in 0.. {
        let sent = if ember.injected_report_failure(id.stage, tried) {
            Err(Status::unavailable(
                "report failure injected (ember.test.fail_reports)",
            ))
        } else {
            driver
                .report_task_status(liveness.unary(report.clone()))
                .await
                .map(|_| ())
        };
        match sent {
            Ok(()) => {
                if tried > 0 {
                    tracing::info!(task = %id, tries = tried + 1, "reported the task status to the driver");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e.message(), tries = tried + 1, retry_in = ?backoff, "could not report the task status to the driver; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = ended.wait_for(|ended| *ended) => {
                tracing::warn!(task = %id, "executor stopped before the driver had the task's report");
                return;
            }
        }
        backoff = (backoff * 2).min(REPORT_BACKOFF_MAX);
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<FetchPartitionChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutorService for ExecutorServer {
    async fn launch_tasks(
        &self,
        request: Request<LaunchTasksRequest>,
    ) -> Result<Response<LaunchTasksResponse>, Status> {
        // Decode all first: a malformed request launches nothing.
        let defs = request
            .into_inner()
            .tasks
            .into_iter()
            .map(task_definition_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for def in defs {
            tracing::debug!(task = %def.id, "launching");
            self.launch(def);
        }
        Ok(Response::new(LaunchTasksResponse {}))
    }

    async fn cancel_tasks(
        &self,
        request: Request<CancelTasksRequest>,
    ) -> Result<Response<CancelTasksResponse>, Status> {
        let running = self.running.lock();
        for id in request.into_inner().tasks {
            if let Some(flag) = running.get(&task_id_from_proto(&id)) {
                flag.cancel();
            }
        }
        Ok(Response::new(CancelTasksResponse {}))
    }

    async fn remove_job(
        &self,
        request: Request<RemoveJobRequest>,
    ) -> Result<Response<RemoveJobResponse>, Status> {
        let job = request.into_inner().job_id;
        let shuffle = self.env.shuffle.clone();
        tokio::task::spawn_blocking(move || shuffle.remove_job(job))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RemoveJobResponse {}))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        tracing::info!(reason = %request.get_ref().reason, "stopping on the driver's request");
        self.stop.notify_waiters();
        Ok(Response::new(StopResponse {}))
    }

    type FetchPartitionStream = ChunkStream;

    async fn fetch_partition(
        &self,
        request: Request<FetchPartitionRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let stream = serve_partition(&self.env.shuffle, request.get_ref())?;
        Ok(Response::new(Box::pin(stream)))
    }
}

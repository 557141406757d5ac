//! The executor's gRPC service: tasks in, statuses out, shuffle files served.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use ember_core::cancel::CancelFlag;
use ember_core::convert::{
    task_definition_from_proto, task_id_from_proto, task_id_to_proto, task_status_to_proto,
};
use ember_core::proto::executor_service_server::ExecutorService;
use ember_core::proto::{
    CancelTasksRequest, CancelTasksResponse, FetchPartitionChunk, FetchPartitionRequest,
    LaunchTasksRequest, LaunchTasksResponse, RemoveJobRequest, RemoveJobResponse,
    ReportTaskStatusRequest, StopRequest, StopResponse, TaskFailure, TaskStatus, task_failure,
    task_status,
};
use ember_core::rpc::AuthChannel;
use ember_core::shuffle::serve_partition;
use ember_core::task::{TaskDefinition, TaskEnv, TaskId, run_task};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// The tasks running on this executor, each with the flag that stops it.
pub(crate) type RunningTasks = Arc<Mutex<HashMap<TaskId, CancelFlag>>>;

pub(crate) struct ExecutorServer {
    pub(crate) env: TaskEnv,
    pub(crate) driver: ember_core::proto::driver_service_client::DriverServiceClient<AuthChannel>,
    pub(crate) running: RunningTasks,
    pub(crate) stop: Arc<Notify>,
    pub(crate) metrics: Arc<crate::metrics::ExecutorMetrics>,
}

impl ExecutorServer {
    fn launch(&self, def: TaskDefinition) {
        let id = def.id;
        let flag = CancelFlag::default();
        self.running.lock().insert(id, flag.clone());
        let env = self.env.clone();
        let running = self.running.clone();
        let mut driver = self.driver.clone();
        let metrics = self.metrics.clone();
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
            let report = ReportTaskStatusRequest {
                statuses: vec![message],
            };
            if let Err(e) = driver.report_task_status(report).await {
                tracing::warn!(task = %id, error = %e, "could not report task status to the driver");
            }
            // Only now: an executor draining for shutdown waits for the reports too.
            running.lock().remove(&id);
        });
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
        let stream = serve_partition(&self.env.shuffle.work_dir, request.get_ref())?;
        Ok(Response::new(Box::pin(stream)))
    }
}

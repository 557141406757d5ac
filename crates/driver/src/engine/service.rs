//! The driver's gRPC service: executors register, heartbeat and report task statuses
//! here (handed to the cluster registry and turned into scheduler events), and client
//! sessions (`ember://`) run their queries, their rows streamed back as the result
//! reader hands them on.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use ember_core::convert::{ipc_stream, task_id_from_proto, task_status_from_proto};
use ember_core::proto::driver_service_server::DriverService;
use ember_core::proto::{
    CancelJobRequest, CancelJobResponse, DecommissionRequest, DecommissionResponse,
    ExecutePlanRequest, ExecuteResponse, ExecuteSqlRequest, GetJobRequest, HeartbeatRequest,
    HeartbeatResponse, JobStatus, RegisterExecutorRequest, RegisterExecutorResponse,
    ReportTaskStatusRequest, ReportTaskStatusResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::cluster::ClusterExecutors;
use super::scheduler::Event;
use super::{ClientApi, ClientSlot, ClientState, JOB_OBSERVER, JobRecords};
use crate::events::JobStatus as JobState;

/// The driver's gRPC service.
pub(crate) struct DriverServer {
    pub(crate) cluster: Arc<ClusterExecutors>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) clients: ClientSlot,
    pub(crate) jobs: Arc<JobRecords>,
    /// The running stages, for clients' progress bars.
    pub(crate) progress: tokio::sync::watch::Receiver<crate::events::progress::JobProgress>,
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
                    let _ = self.events.send(Event::SlotsChanged);
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
        let beat = request.into_inner();
        let reregister = !self.cluster.touch(&beat.executor_id);
        self.cluster
            .peak_rss(&beat.executor_id, beat.peak_rss_bytes);
        // An executor of an older build sends only the count: nothing to compare.
        if !reregister && beat.running.len() == beat.running_tasks as usize {
            let listed = beat
                .running
                .iter()
                .map(task_id_from_proto)
                .collect::<Vec<_>>();
            self.cluster.check_running(&beat.executor_id, &listed);
        }
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

    async fn decommission(
        &self,
        request: Request<DecommissionRequest>,
    ) -> Result<Response<DecommissionResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .decommission(&req.executor_id, req.finished, &req.reason);
        Ok(Response::new(DecommissionResponse {}))
    }

    type ExecuteSqlStream = ResultStream;

    async fn execute_sql(
        &self,
        request: Request<ExecuteSqlRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let api = self.client_api()?;
        let req = request.into_inner();
        Ok(Response::new(stream_results(
            self.jobs.clone(),
            async move {
                let client = ClientState::of(&req.config, req.caches);
                api.execute_sql(&req.session_id, &req.sql, client).await
            },
        )))
    }

    type ExecutePlanStream = ResultStream;

    async fn execute_plan(
        &self,
        request: Request<ExecutePlanRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let api = self.client_api()?;
        let req = request.into_inner();
        Ok(Response::new(stream_results(
            self.jobs.clone(),
            async move {
                let client = ClientState::of(&req.config, req.caches);
                api.execute_plan(&req.session_id, &req.logical_plan, client)
                    .await
            },
        )))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let job = request.get_ref().job_id;
        let record = self
            .jobs
            .get(job)
            .ok_or_else(|| Status::not_found(format!("no job {job} on this driver")))?;
        let stages = self
            .progress
            .borrow()
            .stages
            .iter()
            .filter(|s| s.job == job)
            .map(|s| ember_core::proto::StageProgressInfo {
                stage: s.stage as u32,
                total: s.total as u32,
                running: s.running as u32,
                done: s.done as u32,
            })
            .collect();
        Ok(Response::new(JobStatus {
            job_id: job,
            state: record.state.as_str().to_string(),
            error: record.error,
            stages,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let job = request.get_ref().job_id;
        let cancelled = self
            .jobs
            .get(job)
            .is_some_and(|r| r.state == JobState::Running);
        if cancelled {
            tracing::info!(job, "cancelled by its client");
            let _ = self.events.send(Event::Cancel { job });
        }
        Ok(Response::new(CancelJobResponse { cancelled }))
    }
}

impl DriverServer {
    fn client_api(&self) -> Result<Arc<dyn ClientApi>, Status> {
        self.clients
            .get()
            .and_then(|api| api.upgrade())
            .ok_or_else(|| Status::unavailable("this driver does not serve client sessions"))
    }
}

/// Most bytes of rows sent in one message, so that no message nears the limit.
const RESULT_MESSAGE_BYTES: usize = 4 << 20;

/// Runs a client's query and streams its job ids, then its rows (Arrow IPC) as the
/// result reader hands them on: first a message with the schema alone, then the
/// batches, each cut to messages of bounded size. A client that goes away cancels
/// the query: its stream, and so its job, is dropped.
fn stream_results<F>(jobs: Arc<JobRecords>, work: F) -> ResultStream
where
    F: std::future::Future<Output = ember_core::Result<SendableRecordBatchStream>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<ExecuteResponse, Status>>(4);
    tokio::spawn(async move {
        let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
        let work = JOB_OBSERVER.scope(jobs_tx, work);
        tokio::pin!(work);
        let mut job_id = 0;
        let notice = async |job_id: u64| {
            let started = ExecuteResponse {
                job_id,
                arrow_ipc: vec![],
                shuffle_bytes: 0,
            };
            tx.send(Ok(started)).await.is_ok()
        };
        let started = loop {
            tokio::select! {
                result = &mut work => break result,
                Some(job) = jobs_rx.recv() => {
                    job_id = job;
                    if !notice(job_id).await {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        };
        // Jobs submitted before the stream was handed over (the last is the one
        // read from).
        while let Ok(job) = jobs_rx.try_recv() {
            job_id = job;
            if !notice(job_id).await {
                return;
            }
        }
        let mut rows = match started {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(status_of(&e))).await;
                return;
            }
        };
        let schema = rows.schema();
        let message = |batches: &[RecordBatch]| {
            let shuffle_bytes = jobs.get(job_id).map_or(0, |r| r.shuffle_bytes);
            Ok::<_, ember_core::EmberError>(ExecuteResponse {
                job_id,
                arrow_ipc: ipc_stream(&schema, batches)?,
                shuffle_bytes,
            })
        };
        let send = async |m: ember_core::Result<ExecuteResponse>| {
            let m = m.map_err(|e| status_of(&e));
            let failed = m.is_err();
            tx.send(m).await.is_ok() && !failed
        };
        if !send(message(&[])).await {
            return;
        }
        loop {
            let batch = tokio::select! {
                batch = rows.next() => batch,
                _ = tx.closed() => return,
            };
            let batch = match batch {
                None => return,
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    let _ = send(Err(e.into())).await;
                    return;
                }
            };
            for piece in message_slices(&batch) {
                if !send(message(&[piece])).await {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A batch cut into slices of at most [`RESULT_MESSAGE_BYTES`] each (at least one
/// row each).
fn message_slices(batch: &RecordBatch) -> Vec<RecordBatch> {
    let rows = batch.num_rows().max(1);
    let bytes = batch.get_array_memory_size().max(1);
    let rows_per_message = (rows * RESULT_MESSAGE_BYTES / bytes).clamp(1, rows);
    (0..batch.num_rows())
        .step_by(rows_per_message)
        .map(|offset| batch.slice(offset, rows_per_message.min(batch.num_rows() - offset)))
        .collect()
}

/// A driver-side error as the client will see it.
fn status_of(e: &ember_core::EmberError) -> Status {
    use ember_core::EmberError as E;
    let message = e.one_line();
    match e {
        E::DataFusion(_) | E::Config(_) | E::Decode { .. } | E::NotSupported(_) => {
            Status::invalid_argument(message)
        }
        E::Cancelled { .. } => Status::cancelled(message),
        _ => Status::internal(message),
    }
}

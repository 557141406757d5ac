//! An executor process's service, started for real on 127.0.0.1 against a driver
//! stand-in that records what the executor tells it.

use datafusion::physical_expr::EquivalenceProperties;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::Int64Array;
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::SessionContext;
use ember_core::convert::{task_definition_to_proto, task_status_from_proto};
use ember_core::proto::driver_service_server::{DriverService, DriverServiceServer};
use ember_core::proto::executor_service_client::ExecutorServiceClient;
use ember_core::proto::*;
use ember_core::{EmberConfig, PROTOCOL_VERSION};
use ember_exec::codec::{EmberCodec, encode_plan};
use ember_exec::shuffle::{
    PartitionLocation, ShuffleData, ShuffleEnv, ShuffleReaderExec, ShuffleWriterExec,
};
use ember_exec::task::{TaskDefinition, TaskId, TaskOutput, TaskStatus as EmberStatus};
use ember_executor::ExecutorConfig;
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Records registrations and task reports.
struct DriverStandIn {
    registered: mpsc::UnboundedSender<RegisterExecutorRequest>,
    reports: mpsc::UnboundedSender<ember_core::proto::TaskStatus>,
}

type NoStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecuteResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DriverService for DriverStandIn {
    async fn register_executor(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<Response<RegisterExecutorResponse>, Status> {
        let _ = self.registered.send(request.into_inner());
        Ok(Response::new(RegisterExecutorResponse {
            accepted: true,
            message: String::new(),
        }))
    }
    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse { reregister: false }))
    }
    async fn report_task_status(
        &self,
        request: Request<ReportTaskStatusRequest>,
    ) -> Result<Response<ReportTaskStatusResponse>, Status> {
        for s in request.into_inner().statuses {
            let _ = self.reports.send(s);
        }
        Ok(Response::new(ReportTaskStatusResponse {}))
    }
    async fn decommission(
        &self,
        _: Request<ember_core::proto::DecommissionRequest>,
    ) -> Result<Response<ember_core::proto::DecommissionResponse>, Status> {
        Ok(Response::new(ember_core::proto::DecommissionResponse {}))
    }
    type ExecuteSqlStream = NoStream;
    async fn execute_sql(
        &self,
        _: Request<ExecuteSqlRequest>,
    ) -> Result<Response<NoStream>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
    type ExecutePlanStream = NoStream;
    async fn execute_plan(
        &self,
        _: Request<ExecutePlanRequest>,
    ) -> Result<Response<NoStream>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
    async fn get_job(&self, _: Request<GetJobRequest>) -> Result<Response<JobStatus>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
    async fn cancel_job(
        &self,
        _: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
}

struct Harness {
    registered: mpsc::UnboundedReceiver<RegisterExecutorRequest>,
    reports: mpsc::UnboundedReceiver<ember_core::proto::TaskStatus>,
    executor: ember_executor::RunningExecutor,
    _work_dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let (registered_tx, registered) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let driver_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DriverServiceServer::new(DriverStandIn {
                registered: registered_tx,
                reports: reports_tx,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let work_dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new(driver_url, work_dir.path());
    config.cores = 2;
    let executor = ember_executor::start(config, ember_executor::Registry::new())
        .await
        .unwrap();
    Harness {
        registered,
        reports,
        executor,
        _work_dir: work_dir,
    }
}

fn config_pairs() -> Arc<Vec<(String, String)>> {
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_option_extension(EmberConfig::default()),
    );
    let pairs = ctx
        .copied_config()
        .options()
        .entries()
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.key, v)))
        .collect();
    Arc::new(pairs)
}

async fn physical(sql: &str) -> Arc<dyn ExecutionPlan> {
    let ctx = SessionContext::new();
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}

async fn launch(h: &mut Harness, id: TaskId, plan: Arc<dyn ExecutionPlan>) -> EmberStatus {
    let def = TaskDefinition {
        id,
        plan: encode_plan(plan, &EmberCodec::default()).unwrap(),
        in_process: None,
        config: config_pairs(),
        session_id: "test".into(),
    };
    let mut client = ExecutorServiceClient::connect(h.executor.address.clone())
        .await
        .unwrap();
    client
        .launch_tasks(LaunchTasksRequest {
            tasks: vec![task_definition_to_proto(&def)],
        })
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), h.reports.recv())
        .await
        .expect("the executor reports")
        .unwrap();
    task_status_from_proto(report).unwrap()
}

fn task(stage: usize, partition: usize) -> TaskId {
    TaskId {
        job: 1,
        stage,
        stage_attempt: 0,
        partition,
        attempt: 0,
    }
}

fn ints(batches: &[RecordBatch]) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_registers_runs_a_task_and_reports_its_rows() {
    let mut h = start().await;
    let reg = h.registered.recv().await.unwrap();
    assert_eq!(reg.protocol_version, PROTOCOL_VERSION);
    assert_eq!(reg.cores, 2);
    assert_eq!(reg.address, h.executor.address);

    let plan = physical("SELECT CAST(40 + 2 AS BIGINT) AS x").await;
    let status = launch(&mut h, task(1, 0), plan).await;
    assert_eq!(status.executor_id, h.executor.executor_id);
    match status.result {
        Ok((TaskOutput::Result(batches), _)) => assert_eq!(ints(&batches), vec![42]),
        other => panic!("{other:?}"),
    }
    h.executor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_output_written_by_an_executor_is_fetched_from_it() {
    let mut h = start().await;
    let values = physical(
        "SELECT CAST(value AS BIGINT) AS v FROM (VALUES (1), (2), (3), (4), (5), (6)) t(value)",
    )
    .await;
    let key = datafusion::physical_expr::expressions::col("v", &values.schema()).unwrap();
    let writer = ShuffleWriterExec::try_new(
        1,
        1,
        values.clone(),
        Some(Partitioning::Hash(vec![key.clone()], 3)),
    )
    .unwrap();
    let status = launch(&mut h, task(1, 0), Arc::new(writer)).await;
    let map = match status.result {
        Ok((TaskOutput::Map(m), _)) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(map.executor_address, h.executor.address);
    assert!(matches!(map.data, ShuffleData::File(_)), "{:?}", map.data);
    assert_eq!(map.total_rows(), 6);

    // A reader elsewhere (another executor id, no address of its own) fetches all three
    // reduce partitions over the executor's FetchPartition stream.
    let partitions = (0..3)
        .map(|r| {
            vec![PartitionLocation {
                map_partition: 0,
                reduce_partition: r,
                executor_id: map.executor_id.clone(),
                executor_address: map.executor_address.clone(),
                data: map.data.clone(),
                stats: map.partitions[r],
            }]
        })
        .collect();
    let reader = Arc::new(ShuffleReaderExec::new(
        1,
        Partitioning::Hash(vec![key], 3),
        partitions,
        EquivalenceProperties::new(values.schema()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let env = Arc::new(ShuffleEnv::new("reader", dir.path(), None));
    let ctx = Arc::new(
        datafusion::execution::TaskContext::default()
            .with_session_config(datafusion::prelude::SessionConfig::new().with_extension(env)),
    );
    let mut all = Vec::new();
    for r in 0..3 {
        let batches: Vec<RecordBatch> = reader
            .execute(r, ctx.clone())
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        all.extend(batches);
    }
    assert_eq!(ints(&all), vec![1, 2, 3, 4, 5, 6]);

    // One reduce partition made of several remote pieces: they are fetched ahead,
    // concurrently, and read in order.
    let pieces: Vec<PartitionLocation> = (0..3)
        .map(|r| PartitionLocation {
            map_partition: r,
            reduce_partition: r,
            executor_id: map.executor_id.clone(),
            executor_address: map.executor_address.clone(),
            data: map.data.clone(),
            stats: map.partitions[r],
        })
        .collect();
    let merged = ShuffleReaderExec::new(
        1,
        Partitioning::UnknownPartitioning(1),
        vec![pieces],
        EquivalenceProperties::new(values.schema()),
    );
    let batches: Vec<RecordBatch> = merged
        .execute(0, ctx.clone())
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ints(&batches), ints(&all));

    // RemoveJob deletes the job's shuffle files.
    let ShuffleData::File(path) = &map.data else {
        unreachable!()
    };
    let mut client = ExecutorServiceClient::connect(h.executor.address.clone())
        .await
        .unwrap();
    client
        .remove_job(RemoveJobRequest { job_id: 1 })
        .await
        .unwrap();
    assert!(!path.exists());
    h.executor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_launch_request_is_refused_and_the_executor_keeps_serving() {
    let mut h = start().await;
    let mut client = ExecutorServiceClient::connect(h.executor.address.clone())
        .await
        .unwrap();
    let bad = LaunchTasksRequest {
        tasks: vec![ember_core::proto::TaskDefinition::default()],
    };
    let err = client.launch_tasks(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("task definition"),
        "{}",
        err.message()
    );
    // A plan that is not a plan: the task fails and says so; nothing panics.
    let garbage = TaskDefinition {
        id: task(1, 0),
        plan: bytes::Bytes::from_static(b"\x08\x96\x01 definitely not a plan"),
        in_process: None,
        config: config_pairs(),
        session_id: "test".into(),
    };
    client
        .launch_tasks(LaunchTasksRequest {
            tasks: vec![task_definition_to_proto(&garbage)],
        })
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), h.reports.recv())
        .await
        .unwrap()
        .unwrap();
    let status = task_status_from_proto(report).unwrap();
    let failure = status.result.unwrap_err();
    assert!(
        failure.message.contains("could not decode stage plan"),
        "{}",
        failure.message
    );
    // Still serving.
    let plan = physical("SELECT CAST(7 AS BIGINT) AS x").await;
    match launch(&mut h, task(2, 0), plan).await.result {
        Ok((TaskOutput::Result(batches), _)) => assert_eq!(ints(&batches), vec![7]),
        other => panic!("{other:?}"),
    }
    h.executor.stop();
}

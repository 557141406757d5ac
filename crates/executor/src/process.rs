//! Starting an executor: bind, register with the driver, serve, heartbeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;
use ember_core::batch_fn::BatchFnRegistry;
use ember_core::codec::EmberCodec;
use ember_core::proto::driver_service_client::DriverServiceClient;
use ember_core::proto::executor_service_server::ExecutorServiceServer;
use ember_core::proto::{HeartbeatRequest, RegisterExecutorRequest};
use ember_core::shuffle::ShuffleEnv;
use ember_core::task::{FunctionSet, FunctionSource, TaskEnv};
use ember_core::{EmberError, PROTOCOL_VERSION, Result};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::ExecutorConfig;
use crate::service::ExecutorServer;

/// Largest gRPC message accepted (task definitions carry plans).
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// How long to keep trying to reach the driver at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// DataFusion's built-in functions, the same on every executor.
#[derive(Debug)]
struct BuiltinFunctions(FunctionSet);

impl FunctionSource for BuiltinFunctions {
    fn functions(&self) -> FunctionSet {
        self.0.clone()
    }
}

fn builtin_functions() -> FunctionSet {
    FunctionSet::of(&SessionContext::new().state())
}

/// A started executor; dropping it does not stop it, [`stop`](Self::stop) does.
pub struct RunningExecutor {
    pub executor_id: String,
    /// Where its gRPC service listens, e.g. `http://127.0.0.1:40123`.
    pub address: String,
    stop: Arc<Notify>,
    server: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    heartbeat: JoinHandle<()>,
}

/// Stops an executor from elsewhere (a signal handler).
#[derive(Clone)]
pub struct StopHandle(Arc<Notify>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.notify_waiters();
    }
}

impl RunningExecutor {
    pub fn stop(&self) {
        self.stop.notify_waiters();
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Waits until the executor stops (a `Stop` request or [`stop`](Self::stop)).
    pub async fn wait(self) -> Result<()> {
        let served = self.server.await;
        self.heartbeat.abort();
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EmberError::Internal(format!(
                "executor service failed: {e}"
            ))),
            Err(e) => Err(EmberError::Internal(format!(
                "executor service panicked: {e}"
            ))),
        }
    }
}

async fn connect(url: &str) -> Result<DriverServiceClient<Channel>> {
    let started = Instant::now();
    loop {
        match DriverServiceClient::connect(url.to_string()).await {
            Ok(c) => return Ok(c.max_decoding_message_size(MAX_MESSAGE_BYTES)),
            Err(e) if started.elapsed() > CONNECT_TIMEOUT => {
                return Err(EmberError::Config(format!(
                    "cannot reach the driver at {url} after {CONNECT_TIMEOUT:?}: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Binds, registers with the driver and starts serving. `batch_fns` are the
/// `map_batches` functions this executor offers (a user's program registers its own).
pub async fn start(
    config: ExecutorConfig,
    batch_fns: Arc<BatchFnRegistry>,
) -> Result<RunningExecutor> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| EmberError::io(config.bind, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| EmberError::io(config.bind, e))?;
    let address = format!("http://{local}");
    let executor_id = config
        .executor_id
        .clone()
        .unwrap_or_else(|| format!("exec-{}-{}", local.ip(), local.port()));
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| EmberError::io(config.work_dir.display(), e))?;

    let mut driver = connect(&config.driver_url).await?;
    let registration = RegisterExecutorRequest {
        executor_id: executor_id.clone(),
        address: address.clone(),
        cores: config.cores as u32,
        memory_bytes: config.memory_bytes,
        protocol_version: PROTOCOL_VERSION,
        batch_functions: batch_fns.names(),
        udfs: vec![],
    };
    let reply = driver
        .register_executor(registration.clone())
        .await
        .map_err(|e| {
            EmberError::Config(format!(
                "registering with {}: {}",
                config.driver_url,
                e.message()
            ))
        })?
        .into_inner();
    if !reply.accepted {
        return Err(EmberError::Config(format!(
            "the driver at {} refused this executor: {}",
            config.driver_url, reply.message
        )));
    }
    tracing::info!(executor = %executor_id, %address, cores = config.cores, "registered with the driver");

    let env = TaskEnv {
        executor_id: executor_id.clone(),
        shuffle: Arc::new(
            ShuffleEnv::new(executor_id.clone(), &config.work_dir, None)
                .with_address(address.clone()),
        ),
        codec: EmberCodec::new(batch_fns),
        functions: Arc::new(BuiltinFunctions(builtin_functions())),
        runtime: Arc::new(RuntimeEnv::default()),
    };
    let stop = Arc::new(Notify::new());
    let running: crate::service::RunningTasks = Arc::default();
    let service = ExecutorServer {
        env,
        driver: driver.clone(),
        running: running.clone(),
        stop: stop.clone(),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ExecutorServiceServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async move { shutdown.notified().await }),
    );
    let heartbeat = tokio::spawn({
        let executor_id = executor_id.clone();
        let interval = config.heartbeat_interval;
        async move {
            loop {
                tokio::time::sleep(interval).await;
                let beat = HeartbeatRequest {
                    executor_id: executor_id.clone(),
                    running_tasks: running.lock().len() as u32,
                };
                match driver.heartbeat(beat).await {
                    Ok(r) if r.get_ref().reregister => {
                        if let Err(e) = driver.register_executor(registration.clone()).await {
                            tracing::warn!(error = %e, "re-registering with the driver failed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "heartbeat to the driver failed"),
                }
            }
        }
    });
    Ok(RunningExecutor {
        executor_id,
        address,
        stop,
        server,
        heartbeat,
    })
}

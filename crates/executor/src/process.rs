//! Starting an executor: bind, register with the driver, serve, heartbeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::convert::task_id_to_proto;
use ember_core::proto::driver_service_client::DriverServiceClient;
use ember_core::proto::executor_service_server::ExecutorServiceServer;
use ember_core::proto::{DecommissionRequest, HeartbeatRequest, RegisterExecutorRequest};
use ember_core::rpc::{AuthChannel, Liveness, MAX_MESSAGE_BYTES, Security};
use ember_core::{EmberError, PROTOCOL_VERSION, Result};
use ember_exec::codec::EmberCodec;
use ember_exec::memory::MemoryLimits;
use ember_exec::shuffle::{MemoryShuffleStore, ShuffleEnv};
use ember_exec::task::{TaskCaches, TaskEnv};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::config::ExecutorConfig;
use crate::registry::Registry;
use crate::service::{ExecutorServer, RunningTasks};
/// How long to keep trying to reach the driver at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A started executor; dropping it does not stop it, [`stop`](Self::stop) does.
pub struct RunningExecutor {
    pub executor_id: String,
    /// Where its gRPC service listens, e.g. `http://127.0.0.1:40123`.
    pub address: String,
    stop: Arc<Notify>,
    server: tokio::sync::Mutex<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    heartbeat: JoinHandle<()>,
    driver: DriverServiceClient<AuthChannel>,
    running: RunningTasks,
    drain_timeout: Duration,
    /// Set when the service has stopped: task reports still being retried give up.
    ended: watch::Sender<bool>,
    liveness: Liveness,
    /// The `/metrics` server, when configured.
    metrics_server: Option<(std::net::SocketAddr, JoinHandle<()>)>,
}

impl Drop for RunningExecutor {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.metrics_server {
            task.abort();
        }
    }
}

impl RunningExecutor {
    /// Where `/metrics` is served, when it is.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(a, _)| *a)
    }
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

    /// Leaves the cluster on purpose (SIGTERM): the driver launches nothing more
    /// here, the running tasks finish (for up to the drain timeout) and report, then
    /// the driver forgets this executor, recomputing its map outputs elsewhere when a
    /// job still needs them, and the service stops.
    pub async fn decommission(&self, reason: &str) {
        let mut driver = self.driver.clone();
        let request = |finished| {
            self.liveness.unary(DecommissionRequest {
                executor_id: self.executor_id.clone(),
                finished,
                reason: reason.to_string(),
            })
        };
        if let Err(e) = driver.decommission(request(false)).await {
            tracing::warn!(error = %e, "could not tell the driver this executor is leaving");
        }
        let started = Instant::now();
        loop {
            let running = self.running.lock().len();
            if running == 0 {
                break;
            }
            if started.elapsed() >= self.drain_timeout {
                tracing::warn!(
                    running,
                    "leaving with tasks still running; the driver runs them elsewhere"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(executor = %self.executor_id, reason, "decommissioned");
        if let Err(e) = driver.decommission(request(true)).await {
            tracing::warn!(error = %e, "could not tell the driver this executor has left");
        }
        self.stop();
    }

    /// Waits until the executor stops (a `Stop` request or [`stop`](Self::stop)).
    pub async fn wait(self) -> Result<()> {
        self.stopped().await
    }

    async fn stopped(&self) -> Result<()> {
        let served = (&mut *self.server.lock().await).await;
        self.heartbeat.abort();
        self.ended.send_replace(true);
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

async fn connect(security: &Security, url: &str) -> Result<DriverServiceClient<AuthChannel>> {
    let started = Instant::now();
    loop {
        match security.connect(url).await {
            Ok(channel) => return Ok(security.driver_client(channel)),
            Err(e) if started.elapsed() > CONNECT_TIMEOUT => {
                return Err(EmberError::Config(format!(
                    "cannot reach the driver at {url} after {CONNECT_TIMEOUT:?}: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Binds, registers with the driver and starts serving. `registry` holds the user's
/// functions this executor offers besides DataFusion's built-ins.
pub async fn start(config: ExecutorConfig, registry: Registry) -> Result<RunningExecutor> {
    // Before anything else: a TLS cluster's executor needs its own certificate.
    let mut server_builder = config.security.server()?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| EmberError::io(config.bind, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| EmberError::io(config.bind, e))?;
    let host = match &config.advertise_host {
        Some(host) => host.clone(),
        None if local.ip().is_unspecified() => {
            return Err(EmberError::Config(format!(
                "bound to {local}, which others cannot connect to: give the host they reach this executor at (--advertise-host)"
            )));
        }
        None => local.ip().to_string(),
    };
    let address = format!("{}://{host}:{}", config.security.scheme(), local.port());
    let executor_id = config
        .executor_id
        .clone()
        .unwrap_or_else(|| format!("exec-{host}-{}", local.port()));
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| EmberError::io(config.work_dir.display(), e))?;

    let security = config.security.clone();
    let mut driver = connect(&security, &config.driver_url).await?;
    let registration = RegisterExecutorRequest {
        executor_id: executor_id.clone(),
        address: address.clone(),
        cores: config.cores as u32,
        memory_bytes: config.memory_bytes,
        protocol_version: PROTOCOL_VERSION,
        batch_functions: registry.batch_fns.names(),
        udfs: registry.user_functions(),
    };
    let liveness = *security.liveness();
    let reply = driver
        .register_executor(liveness.unary(registration.clone()))
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

    let limits = MemoryLimits {
        memory_bytes: Some(config.memory_bytes),
        spill_dir: Some(config.work_dir.join("spill")),
    };
    let stores = Arc::new(ember_exec::storage::EmberStores::default());
    let runtime = limits.runtime(&*ember_exec::storage::EmberStores::runtime_of(
        stores.clone(),
    )?)?;
    // Persisted frames' partitions stay in memory, drawn from the tasks' pool, up to
    // half of it; the rest of a frame, and every other map output, goes to disk.
    let cache_budget = limits.pool_bytes().unwrap_or(usize::MAX) / 2;
    let cache_memory =
        Arc::new(MemoryShuffleStore::new(cache_budget).with_pool(&runtime.memory_pool));
    let env = TaskEnv {
        executor_id: executor_id.clone(),
        shuffle: Arc::new(
            ShuffleEnv::new(executor_id.clone(), &config.work_dir, None)
                .with_cache_memory(cache_memory)
                .with_address(address.clone())
                .with_security(security.clone()),
        ),
        codec: EmberCodec::new(registry.batch_fns.clone()),
        functions: registry.function_source(),
        runtime,
        caches: Arc::new(TaskCaches {
            object_stores: Some(stores),
            ..TaskCaches::default()
        }),
    };
    let stop = Arc::new(Notify::new());
    let (ended, ended_rx) = watch::channel(false);
    let running: RunningTasks = Arc::default();
    let metrics = Arc::new(crate::metrics::ExecutorMetrics::default());
    let metrics_server = match config.metrics_bind {
        Some(bind) => {
            let (address, task) = crate::metrics::serve(
                bind,
                metrics.clone(),
                running.clone(),
                executor_id.clone(),
                config.cores,
                config.memory_bytes,
                config.security.secret().map(str::to_string),
            )?;
            Some((address, task))
        }
        None => None,
    };
    let service = ExecutorServer {
        env,
        driver: driver.clone(),
        running: running.clone(),
        stop: stop.clone(),
        metrics,
        liveness,
        ended: ended_rx,
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = stop.clone();
    let server = tokio::spawn(
        server_builder
            .add_service(InterceptedService::new(
                ExecutorServiceServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                security.server_auth("the executor service"),
            ))
            .serve_with_incoming_shutdown(incoming, async move { shutdown.notified().await }),
    );
    let heartbeat = tokio::spawn({
        let executor_id = executor_id.clone();
        let running = running.clone();
        let mut driver = driver.clone();
        let interval = config.heartbeat_interval;
        async move {
            loop {
                tokio::time::sleep(interval).await;
                let held: Vec<_> = running.lock().keys().map(task_id_to_proto).collect();
                let beat = HeartbeatRequest {
                    executor_id: executor_id.clone(),
                    running_tasks: held.len() as u32,
                    running: held,
                    peak_rss_bytes: ember_core::metrics::peak_rss_bytes(),
                };
                match driver.heartbeat(liveness.unary(beat)).await {
                    Ok(r) if r.get_ref().reregister => {
                        let again = liveness.unary(registration.clone());
                        if let Err(e) = driver.register_executor(again).await {
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
        server: tokio::sync::Mutex::new(server),
        heartbeat,
        driver,
        running,
        drain_timeout: config.drain_timeout,
        ended,
        liveness,
        metrics_server,
    })
}

/// Runs an executor until the driver stops it, or until Ctrl-C / SIGTERM, on which it
/// leaves gracefully ([`RunningExecutor::decommission`]). A user's program calls this
/// to offer its own functions to the cluster.
pub async fn run(config: ExecutorConfig, registry: Registry) -> Result<()> {
    let executor = Arc::new(start(config, registry).await?);
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| EmberError::Internal(format!("installing the SIGTERM handler: {e}")))?;
    let signals = tokio::spawn({
        let executor = executor.clone();
        async move {
            let reason = tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = terminate.recv() => "SIGTERM",
            };
            executor.decommission(reason).await;
        }
    });
    let stopped = executor.stopped().await;
    signals.abort();
    stopped
}

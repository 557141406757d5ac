//! The engine: stage planner + DAG scheduler + executor slots.
//!
//! `Engine::run` cuts a physical plan into a [`StageGraph`](planner::StageGraph),
//! submits it to the scheduler's event loop and waits for the result. Dropping the
//! returned future (Ctrl-C in the shell) cancels the job.
//!
//! The engine knows nothing of the UI. The scheduler (`scheduler.rs`) and the
//! cluster registry (`cluster.rs`) post typed events ([`crate::events::AppEvent`]) to
//! the session's [`ListenerBus`]; the UI store, the event log, the job records (what
//! `GetJob` answers) and the progress bars' view listen there (`crate::events`).
//! Executor slots have one owner: the launcher
//! (`local.rs` in-process, `cluster.rs` for executor processes).

mod adaptive;
pub(crate) use adaptive::count;
mod cache;
mod cluster;
mod explain;
mod fallback;
mod functions;

pub(crate) use functions::is_builtin;
mod job;
mod local;
mod planner;
mod results;
mod runtime_filter;
pub(crate) use runtime_filter::RuntimeFilters;
mod scheduler;
mod service;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionConfig;
use ember_core::rpc::{MAX_MESSAGE_BYTES, Security};
use ember_core::{EmberConfig, EmberError, Result};
use ember_exec::batch_fn::BatchFnRegistry;
use ember_exec::codec::EmberCodec;
use ember_exec::memory::{MemoryLimits, physical_memory};
use ember_exec::shuffle::{MemoryShuffleStore, ShuffleEnv};
use ember_exec::task::{FunctionSource, TaskEnv};
use tokio::sync::{mpsc, watch};

pub(crate) use cache::{CacheExec, CacheRegistry};
pub use cache::{CachedFrameView, StorageLevel};
pub(crate) use cluster::ClusterExecutors;
use ember_core::proto::driver_service_server::DriverServiceServer;
use job::Job;
pub(crate) use job::TaskConfigs;
use local::LocalExecutors;
use planner::StageGraph;
use scheduler::{Event, Scheduler};
use service::DriverServer;

use crate::events::progress::{JobProgress, ProgressListener};
pub(crate) use crate::events::records::JobRecords;
use crate::events::{AppEvent, JobStatus, ListenerBus, now_ms};

pub(crate) struct Engine {
    events: mpsc::UnboundedSender<Event>,
    progress: watch::Receiver<JobProgress>,
    next_job: AtomicU64,
    event_loop: tokio::task::JoinHandle<()>,
    /// Local mode: the in-process executors' shuffle directory.
    _work_dir: Option<tempfile::TempDir>,
    /// Local mode: its task slots (a cluster counts its executors' cores).
    local_slots: usize,
    /// Cluster mode: the registered executors and the driver's gRPC service.
    cluster: Option<ClusterParts>,
    jobs: Arc<JobRecords>,
    bus: Arc<ListenerBus>,
    next_sql: AtomicU64,
    /// Where the result reader fetches final-stage outputs through.
    results: Arc<ShuffleEnv>,
    /// The persisted frames and their kept partitions.
    caches: Arc<CacheRegistry>,
}

struct ClusterParts {
    executors: Arc<ClusterExecutors>,
    clients: ClientSlot,
    address: String,
    server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    /// Expires executors whose heartbeats stopped.
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.event_loop.abort();
        if let Some(c) = &self.cluster {
            c.server.abort();
            c.monitor.abort();
            c.executors.shutdown();
        }
    }
}

/// What the driver's gRPC service does for client sessions (`ember://`); the
/// session that owns the engine implements it once it exists.
#[tonic::async_trait]
pub(crate) trait ClientApi: Send + Sync {
    /// Runs SQL in the client's session on the driver (DDL included); its rows are
    /// streamed as they are read.
    /// `client` is what the client's session has changed since: its settings that
    /// differ from a new session's, and the frames it persisted or unpersisted; they
    /// are applied to its session on the driver first.
    async fn execute_sql(
        &self,
        session_id: &str,
        sql: &str,
        client: ClientState,
    ) -> Result<SendableRecordBatchStream>;
    /// Runs a logical plan encoded with datafusion-proto and ember's logical codec,
    /// with the client's state as for SQL.
    async fn execute_plan(
        &self,
        session_id: &str,
        plan: &[u8],
        client: ClientState,
    ) -> Result<SendableRecordBatchStream>;
}

/// What a client's request carries of its session's state.
#[derive(Debug, Default)]
pub(crate) struct ClientState {
    pub config: Vec<(String, String)>,
    pub caches: Option<ember_core::proto::ClientCaches>,
}

impl ClientState {
    /// What an `ExecuteSql` or `ExecutePlan` request carries.
    pub(crate) fn of(
        config: &[ember_core::proto::KeyValue],
        caches: Option<ember_core::proto::ClientCaches>,
    ) -> ClientState {
        ClientState {
            config: config
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            caches,
        }
    }
}

/// Set by the session after it is built (the engine starts first).
pub(crate) type ClientSlot = Arc<OnceLock<Weak<dyn ClientApi>>>;

tokio::task_local! {
    /// Told the id of every job submitted from the task it is set in, so the driver's
    /// service can tell a client which job runs its query.
    pub(crate) static JOB_OBSERVER: mpsc::UnboundedSender<u64>;
    /// The query (its description and SQL page id) the jobs submitted from the task
    /// it is set in run for.
    pub(crate) static JOB_QUERY: (String, Option<u64>);
}

impl Engine {
    /// Starts the scheduler with `slots` in-process executor slots.
    /// Events go to `bus`, the first being `AppStarted` (named `app_name`).
    pub(crate) fn start_local(
        slots: usize,
        config: &EmberConfig,
        batch_fns: Arc<BatchFnRegistry>,
        functions: Arc<dyn FunctionSource>,
        runtime: Arc<RuntimeEnv>,
        (bus, app_name): (Arc<ListenerBus>, &str),
    ) -> Result<Engine> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            EmberError::Config("an ember Session must be built inside a tokio runtime".into())
        })?;
        let work_dir = tempfile::Builder::new()
            .prefix("ember-local-")
            .tempdir()
            .map_err(|e| EmberError::io(std::env::temp_dir().display(), e))?;
        let codec = EmberCodec::in_process(batch_fns, Arc::default());
        // One memory pool for the slots, as an executor process has; spills go to
        // the work dir, removed with it.
        let limits = MemoryLimits {
            memory_bytes: match config.executor_memory {
                0 => physical_memory().map(|m| m / 2),
                m => Some(m),
            },
            spill_dir: Some(work_dir.path().join("spill")),
        };
        let runtime = limits.runtime(&runtime)?;
        let memory = (config.shuffle_memory_budget > 0).then(|| {
            Arc::new(
                MemoryShuffleStore::new(config.shuffle_memory_budget)
                    .with_pool(&runtime.memory_pool),
            )
        });
        let shuffle = Arc::new(ShuffleEnv::new("local", work_dir.path(), memory));
        let env = TaskEnv {
            executor_id: "local".into(),
            shuffle: shuffle.clone(),
            codec: codec.clone(),
            functions,
            runtime,
            caches: Arc::default(),
        };
        let (events, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(ProgressListener::default());
        bus.add(progress.clone());
        let launcher = Arc::new(LocalExecutors::new(
            env,
            slots,
            events.clone(),
            handle.clone(),
        ));
        let jobs = Arc::new(JobRecords::default());
        bus.add(jobs.clone());
        app_started(&bus, app_name, &format!("local[{slots}]"));
        bus.post(AppEvent::ExecutorAdded {
            executor: "local".into(),
            address: "in process".into(),
            cores: slots,
            memory_bytes: limits.memory_bytes.unwrap_or(0),
            time_ms: now_ms(),
        });
        let caches = Arc::new(CacheRegistry::default());
        let scheduler = Scheduler::new(launcher, codec, bus.clone(), caches.clone());
        let event_loop = handle.spawn(scheduler.run(rx));
        Ok(Engine {
            events,
            progress: progress.subscribe(),
            next_job: AtomicU64::new(1),
            event_loop,
            _work_dir: Some(work_dir),
            local_slots: slots,
            cluster: None,
            jobs,
            bus,
            next_sql: AtomicU64::new(1),
            results: shuffle,
            caches,
        })
    }

    /// Starts the scheduler as a cluster driver: executors register at `bind`
    /// (e.g. `127.0.0.1:7077`; port 0 picks a free one) and run the tasks.
    pub(crate) fn start_driver(
        bind: &str,
        config: &EmberConfig,
        batch_fns: Arc<BatchFnRegistry>,
        security: Security,
        (bus, app_name): (Arc<ListenerBus>, &str),
    ) -> Result<Engine> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            EmberError::Config("an ember Session must be built inside a tokio runtime".into())
        })?;
        let _entered = handle.enter();
        let (local, listener) = ember_core::rpc::bind_listener(bind)?;
        let (events, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(ProgressListener::default());
        bus.add(progress.clone());
        let executors = Arc::new(ClusterExecutors::new(
            events.clone(),
            security.clone(),
            bus.clone(),
        ));
        let jobs = Arc::new(JobRecords::default());
        bus.add(jobs.clone());
        app_started(&bus, app_name, &format!("driver://{local}"));
        let caches = Arc::new(CacheRegistry::default());
        let scheduler = Scheduler::new(
            Arc::new(executors.clone()),
            EmberCodec::new(batch_fns),
            bus.clone(),
            caches.clone(),
        );
        let event_loop = handle.spawn(scheduler.run(rx));
        let timeout = std::time::Duration::from_secs(config.executor_timeout_secs);
        let grace = std::time::Duration::from_secs(config.cluster_executor_wait_secs);
        let monitor = handle.spawn({
            let executors = executors.clone();
            let events = events.clone();
            let address = format!("{}://{local}", security.scheme());
            async move {
                // Since when no executor has been registered, after there was one.
                let mut empty_since: Option<std::time::Instant> = None;
                let mut had_executors = false;
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    executors.expire(timeout);
                    if executors.total_cores() > 0 {
                        had_executors = true;
                        empty_since = None;
                        continue;
                    }
                    if !had_executors {
                        continue;
                    }
                    let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= grace {
                        let message = format!(
                            "every executor was lost and none registered within {grace:?}; start one with `ember executor --driver {address}`"
                        );
                        let _ = events.send(Event::NoExecutors { message });
                        empty_since = Some(std::time::Instant::now());
                    }
                }
            }
        });
        let clients = ClientSlot::default();
        let service = DriverServer {
            cluster: executors.clone(),
            events: events.clone(),
            clients: clients.clone(),
            jobs: jobs.clone(),
            progress: progress.subscribe(),
        };
        let server = handle.spawn(
            security
                .server()?
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    DriverServiceServer::new(service)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                    security.server_auth("the driver service"),
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        tracing::info!(address = %local, "driver listening for executors");
        Ok(Engine {
            events,
            progress: progress.subscribe(),
            next_job: AtomicU64::new(1),
            event_loop,
            _work_dir: None,
            local_slots: 0,
            jobs,
            bus,
            next_sql: AtomicU64::new(1),
            results: Arc::new(
                ShuffleEnv::new("driver", std::env::temp_dir(), None)
                    .with_security(security.clone()),
            ),
            caches,
            cluster: Some(ClusterParts {
                executors,
                clients,
                address: format!("{}://{local}", security.scheme()),
                server,
                monitor,
            }),
        })
    }

    /// Executor slots: fixed in local mode, those registered so far in a cluster.
    pub(crate) fn cluster_slots(&self) -> Option<usize> {
        self.cluster.as_ref().map(|c| c.executors.total_cores())
    }

    /// Job `job`'s stages that adaptive execution planned again, as they ran.
    pub(crate) fn adapted_stages(&self, job: u64) -> Vec<String> {
        self.jobs.get(job).map(|r| r.adapted).unwrap_or_default()
    }

    /// Bytes written to the shuffle by every job of this engine so far.
    pub(crate) fn shuffle_bytes(&self) -> u64 {
        self.jobs.total_shuffle_bytes()
    }

    /// Lets the driver's service run client sessions' queries through `api`.
    pub(crate) fn serve_clients(&self, api: Weak<dyn ClientApi>) {
        if let Some(c) = &self.cluster {
            let _ = c.clients.set(api);
        }
    }

    /// Where executors register, in cluster mode.
    pub(crate) fn driver_address(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.address.as_str())
    }

    /// Submits a physical plan as a job and streams its rows, partition by partition,
    /// as its final-stage tasks store them. Dropping the stream (Ctrl-C in the shell)
    /// cancels the job.
    pub(crate) async fn run_stream(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
        session_id: &str,
    ) -> Result<SendableRecordBatchStream> {
        if let Some(c) = &self.cluster {
            let wait = std::time::Duration::from_secs(
                EmberConfig::from_session(config).cluster_executor_wait_secs,
            );
            let started = std::time::Instant::now();
            while c.executors.total_cores() == 0 {
                if started.elapsed() >= wait {
                    return Err(EmberError::Config(format!(
                        "no executors have registered with this driver in {wait:?}; start them with `ember executor --driver {}`",
                        c.address
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        if let Some(c) = &self.cluster {
            let (udfs, batch_fns) = functions::user_functions(&plan);
            c.executors
                .check_functions(&udfs, &batch_fns)
                .map_err(EmberError::Config)?;
        }
        let job_id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let schema = plan.schema();
        let runtime_filters = RuntimeFilters::of(&EmberConfig::from_session(config));
        let started = std::time::Instant::now();
        let graph = StageGraph::plan(job_id, plan, runtime_filters)?;
        let graph_us = started.elapsed().as_micros() as u64;
        tracing::debug!(job = job_id, graph_us, "stages planned");
        let (stage, partitions) = (graph.final_stage, graph.stages[&graph.final_stage].tasks);
        let pairs: Vec<(String, String)> = config
            .options()
            .entries()
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.key, v)))
            .collect();
        let configs = self.resolve_shuffle_compression(pairs);
        let (results_tx, results) = mpsc::unbounded_channel();
        let query = JOB_QUERY
            .try_with(|q| q.clone())
            .unwrap_or_else(|_| ("a job".into(), None));
        let job = Job::new(
            job_id,
            graph,
            configs,
            EmberConfig::from_session(config),
            session_id.to_string(),
            query,
            results_tx,
        )
        .with_slots(self.cluster_slots().unwrap_or(self.local_slots));
        // Recorded first: the scheduler may end the job before `send` returns.
        self.jobs.set(job_id, JobStatus::Running, String::new());
        self.events
            .send(Event::Submit(Box::new(job)))
            .map_err(|_| EmberError::Internal("the scheduler has stopped".into()))?;
        let _ = JOB_OBSERVER.try_with(|observer| observer.send(job_id));
        let reader = results::ResultReader {
            job: job_id,
            stage,
            partitions,
            schema,
            shuffle: self.results.clone(),
            results,
            events: self.events.clone(),
            jobs: self.jobs.clone(),
        };
        Ok(reader.stream())
    }

    /// The persisted frames and their kept partitions.
    /// `ember.shuffle.compression=auto` made concrete for one job's map stages and
    /// its final stage. Map outputs are not compressed when every executor is on one
    /// host (their readers then read the local disk, and compressing costs CPU to
    /// save no network), and LZ4 otherwise; a local session's are LZ4, as they reach
    /// the disk only when its memory budget is spent. The final stage's outputs are
    /// read by the driver, which may be elsewhere and through which every row of the
    /// result passes: LZ4 (uncompressed, a fast read of a large result fills the
    /// buffers on the way to the client).
    fn resolve_shuffle_compression(&self, pairs: Vec<(String, String)>) -> TaskConfigs {
        let one_host = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.executors.on_one_host());
        let resolved = |auto: &str| {
            let mut pairs = pairs.clone();
            for (key, value) in pairs.iter_mut() {
                if key == "ember.shuffle.compression" && value.eq_ignore_ascii_case("auto") {
                    *value = auto.into();
                }
            }
            Arc::new(pairs)
        };
        TaskConfigs {
            map: resolved(if one_host { "none" } else { "lz4" }),
            result: resolved("lz4"),
        }
    }

    pub(crate) fn caches(&self) -> &Arc<CacheRegistry> {
        &self.caches
    }

    /// Forgets a persisted frame (at once) and removes its kept partitions everywhere.
    pub(crate) fn uncache(&self, cache: u64) {
        self.caches.remove(cache);
        let _ = self.events.send(Event::Uncache { cache });
    }

    pub(crate) fn progress(&self) -> watch::Receiver<JobProgress> {
        self.progress.clone()
    }

    /// Where the application's events go.
    pub(crate) fn bus(&self) -> &Arc<ListenerBus> {
        &self.bus
    }

    /// A query starts: posts its plans (the UI's SQL page) and returns its id.
    pub(crate) fn sql_started(
        &self,
        description: String,
        logical_plan: String,
        physical_plan: String,
    ) -> u64 {
        let id = self.next_sql.fetch_add(1, Ordering::Relaxed);
        self.bus.post(AppEvent::SqlStarted {
            id,
            description,
            logical_plan,
            physical_plan,
            time_ms: now_ms(),
        });
        id
    }

    pub(crate) fn sql_ended(&self, id: u64, ok: bool) {
        let status = if ok {
            crate::events::SqlStatus::Succeeded
        } else {
            crate::events::SqlStatus::Failed
        };
        self.bus.post(AppEvent::SqlEnded {
            id,
            status,
            time_ms: now_ms(),
        });
    }

    /// The registered executors, in cluster mode.
    pub(crate) fn executors(&self) -> Option<&Arc<ClusterExecutors>> {
        self.cluster.as_ref().map(|c| &c.executors)
    }
}

/// Posts the application's first event.
fn app_started(bus: &ListenerBus, name: &str, master: &str) {
    bus.post(AppEvent::AppStarted {
        app_id: crate::events::new_app_id(),
        name: name.to_string(),
        master: master.to_string(),
        time_ms: now_ms(),
    });
}

/// The stage DAG a plan would run as.
pub(crate) fn explain(
    plan: Arc<dyn ExecutionPlan>,
    caches: Option<&CacheRegistry>,
    runtime_filters: Option<RuntimeFilters>,
) -> Result<String> {
    let graph = StageGraph::plan(0, plan, runtime_filters)?;
    Ok(explain::stage_dag(&graph, caches))
}

/// The stage plans of a physical plan, children first.
pub(crate) fn stage_plans(
    plan: Arc<dyn ExecutionPlan>,
    runtime_filters: Option<RuntimeFilters>,
) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
    let graph = StageGraph::plan(0, plan, runtime_filters)?;
    Ok(graph.stages.into_values().map(|s| s.plan).collect())
}

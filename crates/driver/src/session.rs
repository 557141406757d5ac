//! `Session`: the entry point, in the spirit of Spark's `SparkSession`.
//!
//! A session owns a DataFusion `SessionContext` (catalog, config, functions) and an
//! [`Engine`](crate::engine::Engine): the stage planner plus DAG scheduler that runs
//! every action. `DataFrame`s only build logical plans; actions come back here.

use std::sync::Arc;

use datafusion::catalog::MemTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{DdlStatement, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::rpc::{Liveness, Security};
use ember_core::{EmberConfig, EmberError, Result};
use ember_exec::batch_fn::BatchFnRegistry;
use ember_exec::task::{FunctionSet, FunctionSource, REQUIRED_DATAFUSION_SETTINGS, apply_settings};
use tokio::sync::watch;

use crate::dataframe::DataFrame;
use crate::engine::{ClientApi, Engine};
use crate::events::log::EventLogWriter;
use crate::events::progress::JobProgress;
use crate::events::{AppEvent, ListenerBus};
use crate::map_batches::EmberQueryPlanner;
use crate::planning::{check_expression_depth, on_planning_stack, parse_statement};
use crate::remote::{DriverClients, RemoteDriver};
use crate::ui::status::AppStatus;

/// Where a session runs its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Master {
    /// `local[N]`: N in-process executor slots (`local[*]`: one per core).
    Local { slots: usize },
    /// `driver://HOST:PORT`: this session is a cluster's driver; executor processes
    /// register at HOST:PORT (`ember executor --driver http://HOST:PORT`) and run the tasks.
    Driver { bind: String },
    /// `ember://HOST:PORT`: a client of a separate driver process (`ember driver`),
    /// which plans and schedules this session's queries on its executors.
    Remote { url: String },
}

impl Master {
    /// Parses `local`, `local[N]`, `local[*]`, `driver://HOST:PORT`, `ember://HOST:PORT`.
    pub fn parse(s: &str) -> Result<Master> {
        let s = s.trim();
        if let Some(address) = s.strip_prefix("ember://") {
            if address.is_empty() || address.contains('/') {
                return Err(EmberError::Config(format!(
                    "invalid master '{s}': expected ember://HOST:PORT"
                )));
            }
            return Ok(Master::Remote {
                url: format!("http://{address}"),
            });
        }
        if let Some(bind) = s.strip_prefix("driver://") {
            return Ok(Master::Driver {
                bind: bind.to_string(),
            });
        }
        let cores = || std::thread::available_parallelism().map_or(1, |n| n.get());
        if s == "local" {
            return Ok(Master::Local { slots: 1 });
        }
        if let Some(inner) = s.strip_prefix("local[").and_then(|r| r.strip_suffix(']')) {
            let slots = if inner == "*" {
                cores()
            } else {
                inner
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        EmberError::Config(format!(
                            "invalid master '{s}': expected local[N] with N >= 1"
                        ))
                    })?
            };
            return Ok(Master::Local { slots });
        }
        Err(EmberError::Config(format!(
            "invalid master '{s}': expected local, local[N], local[*], driver://HOST:PORT or ember://HOST:PORT"
        )))
    }

    /// Executor slots known when the session starts (none yet for a driver).
    pub fn slots(&self) -> usize {
        match self {
            Master::Local { slots } => *slots,
            Master::Driver { .. } | Master::Remote { .. } => 0,
        }
    }
}

/// Builds a [`Session`]: `Session::builder().master("local[4]").config(k, v).build()`.
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    master: String,
    app_name: String,
    config: Vec<(String, String)>,
    security: Option<Security>,
    ui: Option<String>,
    flight_sql: Option<String>,
}

impl Default for SessionBuilder {
    fn default() -> Self {
        SessionBuilder {
            master: "local[*]".into(),
            app_name: "ember".into(),
            config: vec![],
            security: None,
            ui: None,
            flight_sql: None,
        }
    }
}

impl SessionBuilder {
    pub fn master(mut self, master: impl Into<String>) -> Self {
        self.master = master.into();
        self
    }

    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }

    /// Sets a `datafusion.*` or `ember.*` key.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// The cluster's shared secret for a driver or a client (default: from
    /// `$EMBER_SECRET`, else none).
    pub fn security(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
    }

    /// Serves the web UI, the REST API and `/metrics` at `bind` (`127.0.0.1:4040`;
    /// a busy port is followed by the next ones). Local and driver sessions only; with
    /// a cluster secret the UI asks for it.
    pub fn ui(mut self, bind: impl Into<String>) -> Self {
        self.ui = Some(bind.into());
        self
    }

    /// Serves Arrow Flight SQL at `bind` (`127.0.0.1:32010`): statements, prepared
    /// statements, the catalog, cancellation; each authenticated client gets a
    /// session of its own. Local and driver sessions only; with a cluster secret a
    /// client needs it.
    pub fn flight_sql(mut self, bind: impl Into<String>) -> Self {
        self.flight_sql = Some(bind.into());
        self
    }

    /// Starts the session's engine. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Session> {
        let master = Master::parse(&self.master)?;
        let slots = master.slots();
        let mut config = SessionConfig::new()
            .with_option_extension(EmberConfig::default())
            .with_target_partitions(slots.max(1))
            .with_information_schema(true);
        apply_settings(
            &mut config,
            self.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        let batch_fns = Arc::new(BatchFnRegistry::default());
        let cluster_driver = matches!(master, Master::Driver { .. });
        let ctx = new_context(config, &batch_fns, cluster_driver);
        let ember = EmberConfig::from_session(&ctx.copied_config());
        let security = match self.security {
            Some(s) => s,
            None => Security::from_file_or_env(None)?,
        }
        .with_liveness(Liveness::from_config(&ember));
        let ui_secret = security.secret().map(str::to_string);
        // The listeners of the application's events, registered before the engine
        // posts its first one.
        let bus = ListenerBus::new();
        let status = Arc::new(AppStatus::new());
        bus.add(status.clone());
        // A client of a remote driver runs no jobs: the driver logs them.
        let event_log = match ember.eventlog_dir.as_str() {
            "" => None,
            _ if matches!(master, Master::Remote { .. }) => None,
            dir => {
                let writer = Arc::new(EventLogWriter::start(std::path::Path::new(dir))?);
                bus.add(writer.clone());
                Some(writer)
            }
        };
        let app = (bus.clone(), self.app_name.as_str());
        let runner = match &master {
            Master::Local { slots } => {
                let functions: Arc<dyn FunctionSource> =
                    Arc::new(SessionFunctions { ctx: ctx.clone() });
                Runner::Engine(Engine::start_local(
                    *slots,
                    &ember,
                    batch_fns.clone(),
                    functions,
                    ctx.runtime_env(),
                    app,
                )?)
            }
            Master::Driver { bind } => Runner::Engine(Engine::start_driver(
                bind,
                &ember,
                batch_fns.clone(),
                security.clone(),
                app,
            )?),
            Master::Remote { url } => {
                let url = url.replacen("http", security.scheme(), 1);
                Runner::Remote(Box::new(RemoteDriver::new(
                    &url,
                    &security,
                    &ctx.session_id(),
                )?))
            }
        };
        let fixed_partitions = self
            .config
            .iter()
            .any(|(k, _)| k == "datafusion.execution.target_partitions");
        let ui = match (&self.ui, &runner) {
            (Some(bind), Runner::Engine(engine)) => {
                let executors = match engine.executors() {
                    Some(c) => crate::ui::Executors::Cluster(c.clone()),
                    None => crate::ui::Executors::Local { slots },
                };
                // A session without its UI still works: say why and go on.
                let storage = Some(engine.caches().clone());
                match crate::ui::serve(bind, status.clone(), executors, storage, ui_secret) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        tracing::warn!(error = %e, "the web UI could not start");
                        None
                    }
                }
            }
            _ => None,
        };
        let inner = Arc::new(SessionInner {
            ui,
            status,
            event_log,
            stopped: std::sync::atomic::AtomicBool::new(false),
            ctx,
            runner,
            batch_fns,
            master,
            app_name: self.app_name,
            fixed_partitions,
            clients: std::sync::OnceLock::new(),
            next_cache: std::sync::atomic::AtomicU64::new(1),
            cached_tables: CachedTables::default(),
            flight_sql: std::sync::OnceLock::new(),
        });
        if let Runner::Engine(engine) = &inner.runner {
            let clients: Arc<dyn ClientApi> = Arc::new(DriverClients::new(&inner));
            // The engine's service holds it weakly; the session keeps it alive.
            engine.serve_clients(Arc::downgrade(&clients));
            let _ = inner.clients.set(clients);
            if let Some(bind) = &self.flight_sql {
                let server = crate::flight_sql::serve(&inner, bind, &security)?;
                let _ = inner.flight_sql.set(server);
            }
        } else if self.flight_sql.is_some() {
            return Err(EmberError::Config(
                "Flight SQL is served by a local or driver session, not by a client of a driver"
                    .into(),
            ));
        }
        Ok(Session { inner })
    }
}

/// A DataFusion context with ember's settings and query planner. A cluster driver
/// plans batch functions it does not have itself: its executors provide them.
pub(crate) fn new_context(
    config: SessionConfig,
    batch_fns: &Arc<BatchFnRegistry>,
    cluster_driver: bool,
) -> SessionContext {
    // The session's object stores, also reachable from its config to take its
    // `ember.s3.*` settings as they change (a client session on a driver shares the
    // driver's, which its config already names).
    let stores = config
        .get_extension::<ember_exec::storage::EmberStores>()
        .unwrap_or_default();
    stores.configure_s3(&EmberConfig::from_session(&config).s3);
    let config = config.with_extension(stores.clone());
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    match ember_exec::storage::EmberStores::runtime_of(stores) {
        Ok(runtime) => state = state.with_runtime_env(runtime),
        Err(e) => tracing::warn!(error = %e, "tables at object store URLs are unavailable"),
    }
    let state = state
        .with_query_planner(Arc::new(EmberQueryPlanner::new(
            batch_fns.clone(),
            cluster_driver,
        )))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for f in ember_core::ember_functions() {
        ctx.register_udf(f);
    }
    ctx
}

/// Hands the object stores of `ctx` its `ember.s3.*` settings (a no-op unless they
/// changed).
pub(crate) fn sync_store_settings(ctx: &SessionContext) {
    let config = ctx.copied_config();
    if let Some(stores) = config.get_extension::<ember_exec::storage::EmberStores>() {
        stores.configure_s3(&EmberConfig::from_session(&config).s3);
    }
}

/// What runs a session's jobs.
pub(crate) enum Runner {
    /// This process: in-process slots, or a driver with executor processes.
    Engine(Engine),
    /// A driver process, over gRPC.
    Remote(Box<RemoteDriver>),
}

/// Local-mode executors resolve functions through the session itself, so a UDF
/// registered after the session started is visible to the next job.
struct SessionFunctions {
    ctx: SessionContext,
}

impl std::fmt::Debug for SessionFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionFunctions")
    }
}

impl FunctionSource for SessionFunctions {
    fn functions(&self) -> FunctionSet {
        // Read in place: cloning the whole session state per task would copy the
        // catalog and config for nothing.
        FunctionSet::of(&self.ctx.state_ref().read())
    }
}

/// A handle to a running ember session; cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<SessionInner>,
}

pub(crate) struct SessionInner {
    /// The web UI's server, while the session lives.
    ui: Option<crate::ui::UiServer>,
    /// The UI store: what the UI shows, built from the application's events.
    status: Arc<AppStatus>,
    /// Where the events are logged (`ember.eventlog.dir`).
    event_log: Option<Arc<EventLogWriter>>,
    /// `AppEnded` was posted and the event log closed.
    stopped: std::sync::atomic::AtomicBool,
    pub(crate) ctx: SessionContext,
    pub(crate) runner: Runner,
    pub(crate) batch_fns: Arc<BatchFnRegistry>,
    master: Master,
    app_name: String,
    /// The user chose `target_partitions`; otherwise a cluster plans for its cores.
    fixed_partitions: bool,
    /// Client sessions of a driver, kept alive here.
    clients: std::sync::OnceLock<Arc<dyn ClientApi>>,
    /// The id of the next persisted frame.
    next_cache: std::sync::atomic::AtomicU64,
    /// Tables `CACHE TABLE` cached: their frame, and the table they replaced.
    cached_tables: CachedTables,
    /// The Flight SQL server, while the session lives.
    flight_sql: std::sync::OnceLock<crate::flight_sql::FlightSqlServer>,
}

/// Tables `CACHE TABLE` cached, by name: the cached frame's id, and the table provider
/// it stands in for (none for `CACHE TABLE t AS query`).
pub(crate) type CachedTables = parking_lot::Mutex<
    std::collections::HashMap<String, (u64, Option<Arc<dyn datafusion::catalog::TableProvider>>)>,
>;

impl SessionInner {
    fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Runner::Engine(engine) = &self.runner {
            engine.bus().post(AppEvent::AppEnded {
                time_ms: crate::events::now_ms(),
            });
        }
        if let Some(log) = &self.event_log {
            log.close();
        }
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("app_name", &self.inner.app_name)
            .field("master", &self.inner.master)
            .finish()
    }
}

impl Session {
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// A local session with one executor slot per core (`local[*]`).
    pub fn local() -> Result<Session> {
        Session::builder().build()
    }

    /// Where the web UI listens, when the session serves one.
    pub fn ui_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.ui.as_ref().map(|u| u.address)
    }

    /// What the UI shows (local and driver sessions).
    pub(crate) fn app_status(&self) -> Option<&Arc<AppStatus>> {
        self.engine().map(|_| &self.inner.status)
    }

    /// Where the application's events go (local and driver sessions).
    pub(crate) fn bus(&self) -> Option<&Arc<ListenerBus>> {
        self.engine().map(Engine::bus)
    }

    /// Ends the application: posts its end and, with `ember.eventlog.dir` set,
    /// writes out its event log and gives it its final name (`<app-id>.jsonl`).
    /// Jobs can still run afterwards, unlogged. Dropping the last handle does the
    /// same.
    pub fn stop(&self) {
        self.inner.stop();
    }

    /// Where executors register, when this session is a cluster's driver.
    pub fn flight_sql_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.flight_sql.get().map(|s| s.address)
    }

    pub fn driver_address(&self) -> Option<&str> {
        self.engine().and_then(Engine::driver_address)
    }

    /// The persisted frames (`DataFrame::persist`) and where their partitions are
    /// kept: what the UI's Storage page shows.
    pub fn storage(&self) -> Vec<crate::CachedFrameView> {
        self.caches().map(|c| c.views()).unwrap_or_default()
    }

    pub(crate) fn caches(&self) -> Option<&Arc<crate::engine::CacheRegistry>> {
        self.engine().map(Engine::caches)
    }

    /// The remote driver this client session runs its jobs on, if it is one.
    pub(crate) fn remote(&self) -> Option<&RemoteDriver> {
        match &self.inner.runner {
            Runner::Remote(remote) => Some(remote.as_ref()),
            Runner::Engine(_) => None,
        }
    }

    pub(crate) fn cached_tables(&self) -> &CachedTables {
        &self.inner.cached_tables
    }

    pub(crate) fn next_cache_id(&self) -> u64 {
        self.inner
            .next_cache
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn uncache(&self, id: u64) {
        if let Some(engine) = self.engine() {
            engine.uncache(id);
        }
    }

    /// A cluster driver's executors and their processes' peak resident memory, from
    /// their heartbeats (`None` in local mode or for a client).
    pub fn executor_peak_rss(&self) -> Option<Vec<(String, u64)>> {
        match &self.inner.runner {
            Runner::Engine(engine) => engine.executors().map(|e| {
                use crate::events::LiveExecutors;
                e.views()
                    .into_iter()
                    .map(|v| (v.id, v.peak_rss_bytes))
                    .collect()
            }),
            Runner::Remote(_) => None,
        }
    }

    /// Task slots of the executors registered so far, when this session is a driver.
    pub fn cluster_slots(&self) -> Option<usize> {
        self.engine().and_then(Engine::cluster_slots)
    }

    /// Bytes this session's jobs have written to the shuffle so far (a driver's:
    /// every job it ran).
    pub fn shuffle_bytes(&self) -> u64 {
        match &self.inner.runner {
            Runner::Engine(e) => e.shuffle_bytes(),
            Runner::Remote(r) => r.shuffle_bytes(),
        }
    }

    pub(crate) fn engine(&self) -> Option<&Engine> {
        match &self.inner.runner {
            Runner::Engine(e) => Some(e),
            Runner::Remote(_) => None,
        }
    }

    pub fn master(&self) -> &Master {
        &self.inner.master
    }

    /// The DataFusion context: catalog, config, functions.
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// A path (made absolute) or a directory of an object store (`s3://bucket/path`,
    /// `http(s)://`, `file://`), through this session's object stores: the one
    /// registry its tables, writes, checkpoints and file streams all use.
    pub fn dir(&self, location: &str) -> Result<ember_exec::storage::Dir> {
        sync_store_settings(&self.inner.ctx);
        let runtime = self.inner.ctx.runtime_env();
        ember_exec::storage::Dir::parse(location, runtime.object_store_registry.as_ref())?
            .absolute()
    }

    pub fn batch_fns(&self) -> &Arc<BatchFnRegistry> {
        &self.inner.batch_fns
    }

    /// Progress of the stages now running, for progress bars and UIs.
    pub fn progress(&self) -> watch::Receiver<JobProgress> {
        match &self.inner.runner {
            Runner::Engine(engine) => engine.progress(),
            Runner::Remote(remote) => remote.progress(),
        }
    }

    /// Runs a SQL statement. Queries are lazy (a `DataFrame`); DDL such as
    /// `CREATE EXTERNAL TABLE` or `SET` takes effect now (on the driver too, for a
    /// client session).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        if let Some(statement) = crate::dataframe::CacheStatement::parse(sql) {
            Box::pin(self.cache_statement(statement?)).await?;
            // What DDL leaves: no rows, no columns.
            let empty = datafusion::logical_expr::LogicalPlanBuilder::empty(false).build()?;
            let empty = datafusion::dataframe::DataFrame::new(self.inner.ctx.state(), empty);
            return Ok(DataFrame::new(self.clone(), empty).described(sql));
        }
        let df = self.sql_in(&self.inner.ctx, sql).await?;
        Ok(DataFrame::new(self.clone(), df).described(sql))
    }

    /// Parses one SQL statement as [`sql`](Self::sql) does (the session's dialect, the
    /// parser's recursion limit, its work budget and `ember.sql.max_expression_depth`)
    /// without planning or running it. On a thread with the planner's stack.
    pub async fn parse(&self, sql: &str) -> Result<datafusion::sql::parser::Statement> {
        let state = self.inner.ctx.state();
        let sql = sql.to_string();
        on_planning_stack(async move {
            let max_depth = EmberConfig::from_session(state.config()).sql_max_expression_depth;
            let statement = parse_statement(&state, &sql)?;
            check_expression_depth(&statement, max_depth)?;
            Ok(statement)
        })
        .await
    }

    /// Runs SQL in `ctx`: this session's context, or a client's on a driver.
    pub(crate) async fn sql_in(
        &self,
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<datafusion::dataframe::DataFrame> {
        // A `SET ember.s3.*` of an earlier statement applies from here on.
        sync_store_settings(ctx);
        let state = ctx.state();
        let sql_text = sql.to_string();
        let plan = on_planning_stack(async move {
            let started = std::time::Instant::now();
            let max_depth = EmberConfig::from_session(state.config()).sql_max_expression_depth;
            let statement = parse_statement(&state, &sql_text)?;
            check_expression_depth(&statement, max_depth)?;
            let parse_us = started.elapsed().as_micros() as u64;
            let parsed = std::time::Instant::now();
            let plan = state.statement_to_plan(statement).await?;
            let logical_us = parsed.elapsed().as_micros() as u64;
            tracing::debug!(parse_us, logical_us, "statement planned");
            Ok(plan)
        })
        .await?;
        if let Runner::Remote(remote) = &self.inner.runner
            && RemoteDriver::mirrors(&plan)
        {
            remote.execute_sql(ctx, sql).await?;
        }
        let plan = self.run_table_query(ctx, plan).await?;
        Ok(ctx.execute_logical_plan(plan).await?)
    }

    /// `CREATE TABLE .. AS SELECT` runs its query when it is executed; DataFusion would
    /// run it itself, so ember runs the query as a job first and hands DataFusion a
    /// table of the result.
    async fn run_table_query(
        &self,
        ctx: &SessionContext,
        plan: LogicalPlan,
    ) -> Result<LogicalPlan> {
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(mut create)) = plan else {
            return Ok(plan);
        };
        let batches = self.collect_plan_in(ctx, &create.input).await?;
        let schema = Arc::new(create.input.schema().as_arrow().clone());
        let table = MemTable::try_new(schema, vec![batches])?;
        create.input = Arc::new(
            LogicalPlanBuilder::scan(
                create.name.clone(),
                provider_as_source(Arc::new(table)),
                None,
            )?
            .build()?,
        );
        Ok(LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)))
    }

    /// Optimizes a logical plan and plans it physically (DataFusion's planner, with
    /// `target_partitions` = executor slots unless configured otherwise).
    pub async fn create_physical_plan(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        self.create_physical_plan_in(&self.inner.ctx, plan).await
    }

    async fn create_physical_plan_in(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = self.planning_state(ctx)?;
        let plan = plan.clone();
        on_planning_stack(async move { Ok(state.create_physical_plan(&plan).await?) }).await
    }

    /// `ctx`'s state as ember plans with it: the settings its stages need (`SET` may
    /// have changed them since the session started), and as many partitions as slots.
    pub(crate) fn planning_state(&self, ctx: &SessionContext) -> Result<SessionState> {
        let mut state = ctx.state();
        for (k, v) in REQUIRED_DATAFUSION_SETTINGS {
            state.config_mut().options_mut().set(k, v)?;
        }
        if let Some(cores) = self.cluster_slots()
            && !self.inner.fixed_partitions
        {
            state.config_mut().options_mut().execution.target_partitions = cores.max(1);
        }
        Ok(state)
    }

    /// The stage plans ember would run for a logical plan, children first (the final
    /// stage last), before their shuffle reads are resolved.
    pub async fn stage_plans(&self, plan: &LogicalPlan) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
        let physical = self.create_physical_plan(plan).await?;
        crate::engine::stage_plans(physical, self.runtime_filters())
    }

    /// The cross-stage runtime filters jobs get (`ember.runtime_filter.*`).
    fn runtime_filters(&self) -> Option<crate::engine::RuntimeFilters> {
        crate::engine::RuntimeFilters::of(&EmberConfig::from_session(
            &self.context().copied_config(),
        ))
    }

    /// The stage DAG ember would run for a logical plan, as text.
    pub async fn explain_stages(&self, plan: &LogicalPlan) -> Result<String> {
        let physical = self.create_physical_plan(plan).await?;
        let caches = self.caches().map(|c| c.as_ref());
        crate::engine::explain(physical, caches, self.runtime_filters())
    }

    /// A new client session on this driver: same configuration and engine, its own
    /// catalog.
    pub(crate) fn new_client_context(&self, session_id: &str) -> SessionContext {
        let config = self.inner.ctx.copied_config();
        let ctx = new_context(
            config,
            &self.inner.batch_fns,
            matches!(self.inner.master, Master::Driver { .. }),
        );
        // Its own catalog; the driver's runtime (its object stores among it).
        let state = SessionStateBuilder::new_from_existing(ctx.state())
            .with_session_id(session_id.to_string())
            .with_runtime_env(self.inner.ctx.runtime_env())
            .build();
        SessionContext::new_with_state(state)
    }

    pub(crate) fn from_inner(inner: Arc<SessionInner>) -> Session {
        Session { inner }
    }
}

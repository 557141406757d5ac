//! The web UI, the REST API (`/api/v1/...`) and Prometheus `/metrics` of a session
//! that runs jobs (local mode, or a cluster's driver), served over HTTP by axum.
//!
//! ```text
//!  GET /                       the UI (HTML, JS and CSS embedded in the binary)
//!  GET /api/v1/applications    this application
//!  GET /api/v1/jobs[/{id}]     recent jobs; one job with its stage DAG
//!  GET /api/v1/stages[/{job}/{stage}]  stages; one stage with its plan and tasks
//!  GET /api/v1/executors       executors, lost ones included
//!  GET /api/v1/sql             queries with their logical and physical plans
//!  GET /api/v1/streaming       streaming queries with their recent progress
//!  GET /metrics                Prometheus text format
//! ```
//!
//! Everything it shows comes from the UI store ([`status::AppStatus`]), a listener of
//! the application's events. `ember history` ([`history`]) serves the same pages
//! for finished applications by replaying their event logs into the same store.
//!
//! It binds 127.0.0.1 unless told otherwise. With a cluster secret, every request
//! must carry it: `Authorization: Bearer <secret>`, basic auth with the secret as
//! password, or `?token=<secret>` (for a browser).

pub(crate) mod history;
mod info;
pub(crate) mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ember_core::metrics::{Exposition, resident_bytes};
use ember_core::rpc::{Audit, http_secret_check};
use ember_core::{EmberError, Result};
use serde_json::{Value, json};

use crate::stream::Progress;

use crate::events::{ExecutorStatus, ExecutorView};
use status::{AppStatus, StreamInfo};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A streaming query, as the UI and `/metrics` read it.
pub(crate) trait StreamView: Send + Sync {
    /// `{id, run_id, name, active, status, recent_progress}`.
    fn view(&self) -> StreamInfo;
}

/// Where the executors' view comes from.
pub(crate) enum Executors {
    /// In-process slots.
    Local {
        slots: usize,
    },
    Cluster(Arc<dyn crate::events::LiveExecutors>),
    /// A replayed application's, as its events told.
    Replayed,
}

#[derive(Clone)]
struct Ui {
    status: Arc<AppStatus>,
    executors: Arc<Executors>,
    /// The live application's cached frames (none for a replayed one).
    storage: Option<Arc<crate::engine::CacheRegistry>>,
    secret: Option<Arc<str>>,
    audit: Audit,
}

/// The running UI server.
pub struct UiServer {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the server at `bind`; a busy port is followed by the next ones, as Spark's
/// UI does (4040, 4041, ...), up to 16 tries. Needs a tokio runtime.
pub(crate) fn serve(
    bind: &str,
    status: Arc<AppStatus>,
    executors: Executors,
    storage: Option<Arc<crate::engine::CacheRegistry>>,
    secret: Option<String>,
) -> Result<UiServer> {
    let with_secret = secret.is_some();
    let ui = Ui {
        status,
        executors: Arc::new(executors),
        storage,
        secret: secret.map(Arc::from),
        audit: Audit::new("the web UI"),
    };
    let app = app_router(ui.clone()).layer(axum::middleware::from_fn_with_state(ui, authorize));
    start_server(bind, app, with_secret)
}

/// Binds `bind` (trying the next ports when its port is busy, unless it is 0) and
/// serves `app` there.
fn start_server(bind: &str, app: Router, with_secret: bool) -> Result<UiServer> {
    let addr: SocketAddr = bind.parse().map_err(|e| {
        EmberError::Config(format!("UI address '{bind}': {e} (expected HOST:PORT)"))
    })?;
    if !addr.ip().is_loopback() && !with_secret {
        tracing::warn!(%addr, "the UI is open to the network without a secret");
    }
    let mut listener = None;
    let mut last_error = None;
    for i in 0..16u16 {
        let mut a = addr;
        if addr.port() != 0 {
            a.set_port(addr.port().saturating_add(i));
        }
        match std::net::TcpListener::bind(a) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => last_error = Some(e),
        }
        if addr.port() == 0 {
            break;
        }
    }
    let listener = listener.ok_or_else(|| {
        EmberError::io(
            bind,
            last_error.unwrap_or_else(|| std::io::Error::other("no port")),
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| EmberError::io(bind, e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| EmberError::io(bind, e))?;
    let address = listener.local_addr().map_err(|e| EmberError::io(bind, e))?;
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the UI server stopped");
        }
    });
    tracing::info!(%address, "UI listening");
    Ok(UiServer { address, task })
}

/// One application's UI: its page, assets, REST API and metrics.
fn app_router(ui: Ui) -> Router {
    Router::new()
        .route("/", get(|| async { html(INDEX) }))
        .route("/metrics", get(metrics))
        .with_state(ui.clone())
        .merge(assets())
        .nest("/api/v1", api_router(ui))
}

/// The embedded script and style sheet.
fn assets() -> Router {
    Router::new()
        .route(
            "/static/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
}

/// One application's REST API, relative to `/api/v1` (in the history server, also
/// to `/api/v1/applications/{id}`, as Spark's).
fn api_router(ui: Ui) -> Router {
    Router::new()
        .route("/applications", get(applications))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/stages", get(stages))
        .route("/stages/{job}/{stage}", get(stage))
        .route("/executors", get(executors_api))
        .route("/storage", get(storage_api))
        .route("/sql", get(sql))
        .route("/streaming", get(streaming))
        .with_state(ui)
}

fn html(body: &'static str) -> Response {
    asset(body, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Refuses a request without the secret, when there is one.
async fn authorize(State(ui): State<Ui>, request: Request, next: Next) -> Response {
    let Some(secret) = &ui.secret else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not text>"));
    let why = match http_secret_check(authorization, request.uri().query(), secret) {
        Ok(()) => return next.run(request).await,
        Err(why) => why,
    };
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "an unknown peer".to_string(), |c| c.0.to_string());
    ui.audit.refused(&peer, why);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"ember\"")],
        "the ember UI needs the cluster secret (Authorization: Bearer, basic auth, or ?token=)\n",
    )
        .into_response()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "error": what }))).into_response()
}

async fn applications(State(ui): State<Ui>) -> Response {
    let app = ui.status.app();
    axum::Json(json!([{
        "id": app.id,
        "name": app.name,
        "master": app.master,
        "start_ms": app.start_ms,
    }]))
    .into_response()
}

async fn jobs(State(ui): State<Ui>) -> Response {
    axum::Json(ui.status.jobs()).into_response()
}

async fn job(State(ui): State<Ui>, Path(id): Path<u64>) -> Response {
    let Some((job, stages)) = ui.status.job(id) else {
        return not_found(format!("no job {id}"));
    };
    let mut v = serde_json::to_value(&job).expect("serializable");
    v["dag"] = serde_json::to_value(&stages).expect("serializable");
    axum::Json(v).into_response()
}

async fn stages(State(ui): State<Ui>) -> Response {
    axum::Json(ui.status.stages()).into_response()
}

async fn stage(State(ui): State<Ui>, Path((job, stage)): Path<(u64, usize)>) -> Response {
    let Some(s) = ui.status.stage(job, stage) else {
        return not_found(format!("no stage {stage} of job {job}"));
    };
    let mut v = serde_json::to_value(&s).expect("serializable");
    v["plan"] = json!(&*s.plan);
    v["tasks"] = serde_json::to_value(&*s.tasks).expect("serializable");
    axum::Json(v).into_response()
}

/// The executors, with their finished and failed task counts.
/// A per-executor gauge: its name, help, and value.
type PerExecutor = (&'static str, &'static str, fn(&ExecutorView) -> f64);

/// The executors: the cluster's, lost ones included, or the local process's slots.
fn executor_views(ui: &Ui) -> Vec<ExecutorView> {
    match ui.executors.as_ref() {
        Executors::Cluster(c) => c.views(),
        Executors::Replayed => ui.status.executors(),
        Executors::Local { slots } => vec![ExecutorView {
            id: "local".into(),
            address: "in process".into(),
            cores: *slots,
            memory_bytes: resident_bytes().unwrap_or(0),
            peak_rss_bytes: ember_core::metrics::peak_rss_bytes(),
            active_tasks: ui.status.running_tasks(),
            registered_ms: ui.status.app().start_ms,
            last_heartbeat_ms: status::now_ms(),
            status: ExecutorStatus::Active,
            lost_reason: None,
        }],
    }
}

/// The executors with the tasks each finished and failed.
/// The cached frames: partitions kept of all, memory and disk used, and where.
async fn storage_api(State(ui): State<Ui>) -> Response {
    let frames = ui.storage.as_ref().map(|s| s.views()).unwrap_or_default();
    axum::Json(frames).into_response()
}

async fn executors_api(State(ui): State<Ui>) -> Response {
    let views: Vec<Value> = executor_views(&ui)
        .into_iter()
        .map(|e| {
            let (done, failed) = ui.status.executor_tasks(&e.id);
            let mut v = serde_json::to_value(&e).expect("serializable");
            v["completed_tasks"] = json!(done);
            v["failed_tasks"] = json!(failed);
            v
        })
        .collect();
    axum::Json(views).into_response()
}

async fn sql(State(ui): State<Ui>) -> Response {
    axum::Json(ui.status.sql()).into_response()
}

async fn streaming(State(ui): State<Ui>) -> Response {
    axum::Json(ui.status.streams()).into_response()
}

async fn metrics(State(ui): State<Ui>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &ui.status.counters;
    let mut e = Exposition::default();
    e.counter(
        "ember_jobs_total",
        "Jobs that ended, by outcome.",
        &[
            (
                &[("status", "succeeded")],
                c.jobs_succeeded.load(Relaxed) as f64,
            ),
            (&[("status", "failed")], c.jobs_failed.load(Relaxed) as f64),
            (
                &[("status", "cancelled")],
                c.jobs_cancelled.load(Relaxed) as f64,
            ),
        ],
    );
    e.gauge(
        "ember_jobs_running",
        "Jobs running now.",
        &[(&[], ui.status.running_jobs() as f64)],
    );
    e.counter(
        "ember_stages_completed_total",
        "Stages that completed.",
        &[(&[], c.stages_completed.load(Relaxed) as f64)],
    );
    e.counter(
        "ember_tasks_total",
        "Tasks that ended, by outcome.",
        &[
            (
                &[("status", "succeeded")],
                c.tasks_succeeded.load(Relaxed) as f64,
            ),
            (&[("status", "failed")], c.tasks_failed.load(Relaxed) as f64),
        ],
    );
    e.histogram(
        "ember_task_duration_seconds",
        "How long successful tasks ran.",
        &c.task_seconds,
    );
    e.counter(
        "ember_shuffle_write_bytes_total",
        "Bytes map tasks wrote to the shuffle.",
        &[(&[], c.shuffle_bytes.load(Relaxed) as f64)],
    );
    e.counter(
        "ember_task_output_rows_total",
        "Rows tasks produced.",
        &[(&[], c.output_rows.load(Relaxed) as f64)],
    );
    let executors = executor_views(&ui);
    let active: Vec<&ExecutorView> = executors
        .iter()
        .filter(|x| x.status != ExecutorStatus::Lost)
        .collect();
    e.gauge(
        "ember_executors",
        "Executors by state.",
        &[
            (&[("status", "active")], active.len() as f64),
            (
                &[("status", "lost")],
                (executors.len() - active.len()) as f64,
            ),
        ],
    );
    let per_executor: [PerExecutor; 3] = [
        (
            "ember_executor_cores",
            "Task slots of each executor.",
            |x| x.cores as f64,
        ),
        (
            "ember_executor_memory_bytes",
            "Memory of each executor (its limit; in local mode the process's resident memory).",
            |x| x.memory_bytes as f64,
        ),
        (
            "ember_executor_active_tasks",
            "Tasks running on each executor.",
            |x| x.active_tasks as f64,
        ),
    ];
    for (name, help, value) in per_executor {
        let labels: Vec<[(&str, &str); 1]> = active
            .iter()
            .map(|x| [("executor", x.id.as_str())])
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&active)
            .map(|(l, x)| (&l[..], value(x)))
            .collect();
        e.gauge(name, help, &samples);
    }
    e.gauge(
        "ember_process_resident_memory_bytes",
        "Resident memory of this process.",
        &[(&[], resident_bytes().unwrap_or(0) as f64)],
    );
    streaming_metrics(&mut e, &ui.status.streams());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.finish(),
    )
        .into_response()
}

/// Per streaming query: rates, batch duration, watermark lag and state, from its
/// latest progress (typed: a renamed field is a compile error, not an empty metric).
fn streaming_metrics(e: &mut Exposition, streams: &[StreamInfo]) {
    let latest: Vec<(String, &Progress)> = streams
        .iter()
        .filter_map(|s| {
            let name = s.name.clone().unwrap_or_else(|| s.id.clone());
            s.recent_progress.last().map(|p| (name, p))
        })
        .collect();
    let family =
        |e: &mut Exposition, name: &str, help: &str, f: &dyn Fn(&Progress) -> Option<f64>| {
            let samples: Vec<(Vec<(&str, &str)>, f64)> = latest
                .iter()
                .filter_map(|(q, p)| f(p).map(|v| (vec![("query", q.as_str())], v)))
                .collect();
            let refs: Vec<(&[(&str, &str)], f64)> =
                samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            e.gauge(name, help, &refs);
        };
    family(
        e,
        "ember_streaming_input_rows_per_second",
        "Rows per second arriving, in the latest batch.",
        &|p| Some(p.input_rows_per_second),
    );
    family(
        e,
        "ember_streaming_processed_rows_per_second",
        "Rows per second processed, in the latest batch.",
        &|p| Some(p.processed_rows_per_second),
    );
    family(
        e,
        "ember_streaming_batch_duration_seconds",
        "Duration of the latest batch.",
        &|p| Some(p.duration_ms.trigger_execution as f64 / 1000.0),
    );
    family(
        e,
        "ember_streaming_watermark_lag_seconds",
        "How far the watermark is behind the batch's time.",
        &|p| p.watermark_ms.map(|w| (p.timestamp_ms - w) as f64 / 1000.0),
    );
    family(
        e,
        "ember_streaming_state_rows",
        "Rows in the query's state.",
        &|p| Some(p.state.rows_total as f64),
    );
    family(
        e,
        "ember_streaming_source_lag_rows",
        "Records the source held beyond the latest batch (consumer lag).",
        &|p| p.source.lag_rows.map(|l| l as f64),
    );
    family(
        e,
        "ember_streaming_last_batch_id",
        "Id of the latest batch.",
        &|p| Some(p.batch_id as f64),
    );
}

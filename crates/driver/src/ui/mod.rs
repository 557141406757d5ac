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
//! It binds 127.0.0.1 unless told otherwise. With a cluster secret, every request
//! must carry it: `Authorization: Bearer <secret>`, basic auth with the secret as
//! password, or `?token=<secret>` (for a browser).

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

use crate::engine::ExecutorView;
use status::AppStatus;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A streaming query, as the UI and `/metrics` read it.
pub(crate) trait StreamView: Send + Sync {
    /// `{id, run_id, name, active, status, recent_progress}`.
    fn view(&self) -> Value;
}

/// Where the executors' view comes from.
pub(crate) enum Executors {
    /// In-process slots.
    Local {
        slots: usize,
    },
    Cluster(Arc<crate::engine::ClusterExecutors>),
}

#[derive(Clone)]
struct Ui {
    status: Arc<AppStatus>,
    executors: Arc<Executors>,
    app_name: String,
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
    app_name: &str,
    secret: Option<String>,
) -> Result<UiServer> {
    let addr: SocketAddr = bind.parse().map_err(|e| {
        EmberError::Config(format!("UI address '{bind}': {e} (expected HOST:PORT)"))
    })?;
    if !addr.ip().is_loopback() && secret.is_none() {
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
    let ui = Ui {
        status,
        executors: Arc::new(executors),
        app_name: app_name.to_string(),
        secret: secret.map(Arc::from),
        audit: Audit::new("the web UI"),
    };
    let app = Router::new()
        .route("/", get(|| async { html(INDEX) }))
        .route(
            "/static/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route("/api/v1/applications", get(applications))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/stages", get(stages))
        .route("/api/v1/stages/{job}/{stage}", get(stage))
        .route("/api/v1/executors", get(executors_api))
        .route("/api/v1/sql", get(sql))
        .route("/api/v1/streaming", get(streaming))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(ui.clone(), authorize))
        .with_state(ui);
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the UI server stopped");
        }
    });
    tracing::info!(%address, "UI listening");
    Ok(UiServer { address, task })
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
    axum::Json(json!([{
        "id": ui.status.app_id,
        "name": ui.app_name,
        "master": ui.status.master,
        "start_ms": ui.status.started_ms,
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
        Executors::Local { slots } => vec![ExecutorView {
            id: "local".into(),
            address: "in process".into(),
            cores: *slots,
            memory_bytes: resident_bytes().unwrap_or(0),
            active_tasks: ui.status.running_tasks(),
            registered_ms: ui.status.started_ms,
            last_heartbeat_ms: status::now_ms(),
            status: "active",
            lost_reason: None,
        }],
    }
}

/// The executors with the tasks each finished and failed.
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
    let active: Vec<&ExecutorView> = executors.iter().filter(|x| x.status != "lost").collect();
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
/// latest progress.
fn streaming_metrics(e: &mut Exposition, streams: &[Value]) {
    let mut rows: Vec<(String, &Value, usize, i64)> = vec![];
    for s in streams {
        let name = s["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| s["id"].as_str().unwrap_or("").to_string());
        let recent = s["recent_progress"].as_array();
        let total: i64 = recent
            .map(|r| {
                r.iter()
                    .map(|p| p["num_input_rows"].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if let Some(last) = recent.and_then(|r| r.last()) {
            rows.push((name, last, recent.map_or(0, Vec::len), total));
        }
    }
    let family = |e: &mut Exposition, name: &str, help: &str, f: &dyn Fn(&Value) -> Option<f64>| {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = rows
            .iter()
            .filter_map(|(q, p, _, _)| f(p).map(|v| (vec![("query", q.as_str())], v)))
            .collect();
        let refs: Vec<(&[(&str, &str)], f64)> =
            samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        e.gauge(name, help, &refs);
    };
    family(
        e,
        "ember_streaming_input_rows_per_second",
        "Rows per second arriving, in the latest batch.",
        &|p| p["input_rows_per_second"].as_f64(),
    );
    family(
        e,
        "ember_streaming_processed_rows_per_second",
        "Rows per second processed, in the latest batch.",
        &|p| p["processed_rows_per_second"].as_f64(),
    );
    family(
        e,
        "ember_streaming_batch_duration_seconds",
        "Duration of the latest batch.",
        &|p| {
            p["duration_ms"]["trigger_execution"]
                .as_f64()
                .map(|ms| ms / 1000.0)
        },
    );
    family(
        e,
        "ember_streaming_watermark_lag_seconds",
        "How far the watermark is behind the batch's time.",
        &|p| {
            let w = p["watermark_ms"].as_f64()?;
            Some((p["timestamp_ms"].as_f64()? - w) / 1000.0)
        },
    );
    family(
        e,
        "ember_streaming_state_rows",
        "Rows in the query's state.",
        &|p| p["state"]["rows_total"].as_f64(),
    );
    family(
        e,
        "ember_streaming_source_lag_rows",
        "Records the source held beyond the latest batch (consumer lag).",
        &|p| p["source"]["lag_rows"].as_f64(),
    );
    family(
        e,
        "ember_streaming_last_batch_id",
        "Id of the latest batch.",
        &|p| p["batch_id"].as_f64(),
    );
}

//! An executor's Prometheus `/metrics`, served when `metrics_bind` is set: its tasks,
//! their durations, the bytes it wrote to the shuffle, its slots and memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ember_core::Result;
use ember_core::metrics::{Exposition, Histogram, resident_bytes};
use ember_core::rpc::{Audit, http_secret_check};
use ember_exec::task::{TaskOutput, TaskStatus};

use crate::service::RunningTasks;

#[derive(Default)]
pub(crate) struct ExecutorMetrics {
    succeeded: AtomicU64,
    failed: AtomicU64,
    shuffle_bytes: AtomicU64,
    output_rows: AtomicU64,
    task_seconds: Histogram,
}

impl ExecutorMetrics {
    pub(crate) fn task_ended(&self, status: &TaskStatus) {
        match &status.result {
            Ok((output, m)) => {
                self.succeeded.fetch_add(1, Relaxed);
                self.output_rows.fetch_add(m.output_rows, Relaxed);
                self.task_seconds.observe(m.elapsed.as_secs_f64());
                if matches!(output, TaskOutput::Map(_)) {
                    self.shuffle_bytes.fetch_add(m.output_bytes, Relaxed);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// What `/metrics` shows.
struct View {
    metrics: Arc<ExecutorMetrics>,
    running: RunningTasks,
    executor_id: String,
    cores: usize,
    memory_bytes: u64,
}

impl View {
    fn render(&self) -> String {
        let id = [("executor", self.executor_id.as_str())];
        let m = &self.metrics;
        let mut e = Exposition::default();
        e.counter(
            "ember_executor_tasks_total",
            "Tasks this executor ran, by outcome.",
            &[
                (
                    &[
                        ("executor", self.executor_id.as_str()),
                        ("status", "succeeded"),
                    ],
                    m.succeeded.load(Relaxed) as f64,
                ),
                (
                    &[
                        ("executor", self.executor_id.as_str()),
                        ("status", "failed"),
                    ],
                    m.failed.load(Relaxed) as f64,
                ),
            ],
        );
        e.histogram(
            "ember_executor_task_duration_seconds",
            "How long this executor's successful tasks ran.",
            &m.task_seconds,
        );
        e.counter(
            "ember_executor_shuffle_write_bytes_total",
            "Bytes this executor's map tasks wrote to the shuffle.",
            &[(&id, m.shuffle_bytes.load(Relaxed) as f64)],
        );
        e.counter(
            "ember_executor_output_rows_total",
            "Rows this executor's tasks produced.",
            &[(&id, m.output_rows.load(Relaxed) as f64)],
        );
        e.gauge(
            "ember_executor_active_tasks",
            "Tasks running now.",
            &[(&id, self.running.lock().len() as f64)],
        );
        e.gauge(
            "ember_executor_cores",
            "Task slots.",
            &[(&id, self.cores as f64)],
        );
        e.gauge(
            "ember_executor_memory_bytes",
            "Memory the executor offers.",
            &[(&id, self.memory_bytes as f64)],
        );
        e.gauge(
            "ember_process_resident_memory_bytes",
            "Resident memory of this process.",
            &[(&id, resident_bytes().unwrap_or(0) as f64)],
        );
        e.finish()
    }
}

/// Serves `/metrics` at `bind`; returns the address it took.
pub(crate) fn serve(
    bind: SocketAddr,
    metrics: Arc<ExecutorMetrics>,
    running: RunningTasks,
    executor_id: String,
    cores: usize,
    memory_bytes: u64,
    secret: Option<String>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (address, listener) = ember_core::rpc::bind_listener(&bind.to_string())?;
    let view = Arc::new(View {
        metrics,
        running,
        executor_id,
        cores,
        memory_bytes,
    });
    let audit = Audit::new("executor /metrics");
    let app = Router::new().route(
        "/metrics",
        get(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, uri: Uri| {
                let view = view.clone();
                let refused = secret.as_deref().and_then(|secret| {
                    let authorization = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap_or("<not text>"));
                    http_secret_check(authorization, uri.query(), secret).err()
                });
                if let Some(why) = refused {
                    audit.refused(&peer.to_string(), why);
                }
                async move {
                    if refused.is_some() {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Basic realm=\"ember\"")],
                            "executor /metrics needs the cluster secret (Authorization: Bearer, basic auth, or ?token=)\n",
                        )
                            .into_response();
                    }
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        view.render(),
                    )
                        .into_response()
                }
            },
        ),
    );
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(%address, "executor metrics listening");
    Ok((address, task))
}

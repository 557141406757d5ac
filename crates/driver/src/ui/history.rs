//! `ember history`: the web UI and REST API of finished applications, replayed from
//! the event logs in a directory (`ember.eventlog.dir`), as Spark's history server.
//!
//! ```text
//!  GET /                                   the applications, linked to their UIs
//!  GET /api/v1/applications                every application found
//!  GET /api/v1/applications/{id}/jobs ...  one application's REST API (as /api/v1/...)
//!  GET /history/{id}                       one application's UI, as it was live
//! ```
//!
//! Each log is read once, at start, into its own UI store ([`AppStatus`]): the same
//! listener the live UI uses, fed the same events.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ember_core::{EmberError, Result};
use serde_json::json;

use super::status::{AppInfo, AppStatus};
use super::{Executors, Ui, UiServer, api_router, app_router, assets, start_server};
use crate::events::log::{IN_PROGRESS, list_logs, read_log};
use ember_core::rpc::Audit;

/// A replayed application.
struct Replayed {
    app: AppInfo,
    /// The log is still `.inprogress`: the application is running, or crashed.
    in_progress: bool,
    status: Arc<AppStatus>,
}

/// Replays every event log in `dir` and serves their UIs at `bind` (`HOST:PORT`;
/// port 0 picks a free one). Needs a tokio runtime.
pub fn serve_history(dir: &Path, bind: &str) -> Result<UiServer> {
    let apps = Arc::new(replay_dir(dir)?);
    tracing::info!(dir = %dir.display(), applications = apps.len(), "history replayed");
    let mut router = Router::new()
        .route("/", get(index))
        .route("/api/v1/applications", get(applications))
        .with_state(apps.clone())
        .merge(assets());
    for r in apps.iter() {
        let ui = Ui {
            status: r.status.clone(),
            executors: Arc::new(Executors::Replayed),
            storage: None,
            secret: None,
            audit: Audit::new("the history server"),
        };
        router = router
            .nest(
                &format!("/api/v1/applications/{}", r.app.id),
                api_router(ui.clone()),
            )
            .nest(&format!("/history/{}", r.app.id), app_router(ui));
    }
    start_server(bind, router, false)
}

/// The applications of every readable log in `dir`, newest first. A log that cannot
/// be read, or has no usable application id, is skipped with a warning.
fn replay_dir(dir: &Path) -> Result<Vec<Replayed>> {
    if !dir.is_dir() {
        return Err(EmberError::Config(format!(
            "the event log directory {} does not exist",
            dir.display()
        )));
    }
    let mut apps: Vec<Replayed> = vec![];
    for path in list_logs(dir)? {
        let events = match read_log(&path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable event log");
                continue;
            }
        };
        let status = Arc::new(AppStatus::new());
        for e in &events {
            status.apply(e);
        }
        let app = status.app();
        if app.id.is_empty()
            || !app
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            tracing::warn!(file = %path.display(), id = %app.id, "skipping an event log without a usable application id");
            continue;
        }
        if apps.iter().any(|a| a.app.id == app.id) {
            tracing::warn!(file = %path.display(), id = %app.id, "skipping a second event log of the same application");
            continue;
        }
        let in_progress = path.to_string_lossy().ends_with(IN_PROGRESS);
        apps.push(Replayed {
            app,
            in_progress,
            status,
        });
    }
    apps.sort_by_key(|a| std::cmp::Reverse(a.app.start_ms));
    Ok(apps)
}

async fn applications(State(apps): State<Arc<Vec<Replayed>>>) -> Response {
    let list: Vec<_> = apps
        .iter()
        .map(|a| {
            json!({
                "id": a.app.id,
                "name": a.app.name,
                "master": a.app.master,
                "start_ms": a.app.start_ms,
                "end_ms": a.app.end_ms,
                "completed": !a.in_progress,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn index(State(apps): State<Arc<Vec<Replayed>>>) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let rows: String = apps
        .iter()
        .map(|a| {
            format!(
                "<tr><td><a href=\"/history/{id}\">{id}</a></td><td>{name}</td><td>{master}</td><td>{state}</td></tr>",
                id = esc(&a.app.id),
                name = esc(&a.app.name),
                master = esc(&a.app.master),
                state = if a.in_progress { "incomplete" } else { "completed" },
            )
        })
        .collect();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ember history</title>\
         <link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main>\
         <h1>ember history</h1><table><thead><tr><th>Application</th><th>Name</th>\
         <th>Master</th><th>State</th></tr></thead><tbody>{rows}</tbody></table></main></body></html>"
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

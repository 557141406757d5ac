//! The event log and the history server: a finished application's UI, replayed from
//! its log, shows what the live UI showed.

use std::net::SocketAddr;
use std::path::Path;

use ember_driver::{Session, serve_history};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over HTTP/1.0; the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = get(addr, path).await;
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// What must survive the replay, per job: ids, statuses, task counts, and per stage
/// its attempts and tasks.
async fn summary(addr: SocketAddr, api: &str) -> Value {
    let jobs = get_json(addr, &format!("{api}/jobs")).await;
    let mut out = vec![];
    for job in jobs.as_array().expect("a list of jobs") {
        let id = job["id"].as_u64().unwrap();
        let detail = get_json(addr, &format!("{api}/jobs/{id}")).await;
        let mut stages = vec![];
        for stage in detail["dag"].as_array().unwrap() {
            let sid = stage["id"].as_u64().unwrap();
            let s = get_json(addr, &format!("{api}/stages/{id}/{sid}")).await;
            let tasks: Vec<Value> = s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    serde_json::json!([
                        t["partition"],
                        t["attempt"],
                        t["status"],
                        t["executor"],
                        t["rows_out"]
                    ])
                })
                .collect();
            stages.push(serde_json::json!({
                "id": sid,
                "name": s["name"],
                "status": s["status"],
                "attempt": s["attempt"],
                "parents": s["parents"],
                "tasks_total": s["tasks_total"],
                "tasks_done": s["tasks_done"],
                "tasks_failed": s["tasks_failed"],
                "rows_out": s["rows_out"],
                "plan": s["plan"],
                "tasks": tasks,
            }));
        }
        out.push(serde_json::json!({
            "id": id,
            "status": job["status"],
            "description": job["description"],
            "num_tasks": job["num_tasks"],
            "completed_tasks": job["completed_tasks"],
            "failed_tasks": job["failed_tasks"],
            "stages": stages,
        }));
    }
    Value::Array(out)
}

fn logs_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// Runs a two-stage job and a failing one with the event log on; returns the live
/// UI's summary and the application's id.
async fn run_logged_app(dir: &Path) -> (Value, Value, String) {
    let session = Session::builder()
        .master("local[2]")
        .ui("127.0.0.1:0")
        .config("ember.eventlog.dir", dir.to_str().unwrap())
        .config("ember.task.max_failures", "2")
        .build()
        .expect("session");
    let ui = session.ui_address().expect("a UI");
    session
        .sql("SELECT value % 3 AS k, count(*) AS n FROM generate_series(1, 1000) GROUP BY k")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let failing = session
        .sql("SELECT CAST(CONCAT('x', CAST(value AS VARCHAR)) AS BIGINT) FROM generate_series(1, 10)")
        .await;
    if let Ok(df) = failing {
        assert!(df.collect().await.is_err(), "a bad cast fails its job");
    }
    let live = summary(ui, "/api/v1").await;
    let sql = get_json(ui, "/api/v1/sql").await;
    let app = get_json(ui, "/api/v1/applications").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        logs_in(dir),
        vec![format!("{app}.jsonl.inprogress")],
        "the log is in progress while the application runs"
    );
    session.stop();
    (live, sql, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_server_shows_the_jobs_stages_and_tasks_the_live_ui_showed() {
    let dir = tempfile::tempdir().unwrap();
    let (live, live_sql, app) = run_logged_app(dir.path()).await;
    assert_eq!(logs_in(dir.path()), vec![format!("{app}.jsonl")]);
    let jobs = live.as_array().unwrap();
    assert!(!jobs.is_empty(), "{live}");
    assert!(
        jobs.iter()
            .any(|j| j["status"] == "succeeded" && j["stages"].as_array().unwrap().len() >= 2),
        "a job of two stages succeeded: {live}"
    );
    assert!(
        jobs.iter()
            .any(|j| j["status"] == "failed" && j["failed_tasks"].as_u64() > Some(0)),
        "a job failed, with its failed tasks: {live}"
    );

    let history = serve_history(dir.path(), "127.0.0.1:0").expect("history server");
    let addr = history.address;
    let apps = get_json(addr, "/api/v1/applications").await;
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    assert_eq!(apps[0]["id"], app.as_str());
    assert_eq!(apps[0]["completed"], true);

    let replayed = summary(addr, &format!("/api/v1/applications/{app}")).await;
    assert_eq!(replayed, live);
    // The application's own UI, under /history/<app>, serves the same API.
    let under_ui = summary(addr, &format!("/history/{app}/api/v1")).await;
    assert_eq!(under_ui, live);
    let sql = get_json(addr, &format!("/api/v1/applications/{app}/sql")).await;
    assert_eq!(sql, live_sql);
    let executors = get_json(addr, &format!("/api/v1/applications/{app}/executors")).await;
    assert_eq!(executors[0]["id"], "local", "{executors}");
    let (code, page) = get(addr, &format!("/history/{app}")).await;
    assert_eq!(code, 200);
    assert!(page.contains("/static/app.js"), "{page}");
    let (code, index) = get(addr, "/").await;
    assert_eq!(code, 200);
    assert!(index.contains(&format!("/history/{app}")), "{index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_or_truncated_line_in_an_event_log_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _, app) = run_logged_app(dir.path()).await;
    let path = dir.path().join(format!("{app}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // Garbage after the first line, then the log cut in the middle of a line (as a
    // crash leaves it), after its last event.
    lines.insert(1, "{\"event\":\"job_submitted\",\"job\":\"not a number\"}");
    lines.insert(2, "\u{0}garbage\u{7f}");
    let mut damaged = lines.join("\n");
    damaged.push_str("\n{\"event\":\"task_started\",\"task\":{\"job\":1,");
    std::fs::write(&path, damaged).unwrap();
    std::fs::write(dir.path().join("other.jsonl"), "not json at all\n").unwrap();

    let history = serve_history(dir.path(), "127.0.0.1:0").expect("history server");
    let apps = get_json(history.address, "/api/v1/applications").await;
    assert_eq!(
        apps.as_array().unwrap().len(),
        1,
        "a log without an application is skipped: {apps}"
    );
    let replayed = summary(history.address, &format!("/api/v1/applications/{app}")).await;
    assert_eq!(replayed, live);
}

//! The web UI, the REST API and /metrics, with real clients: a plain HTTP client,
//! Prometheus's `promtool`, headless Chromium, and a real InfluxDB (`influxd`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_driver::Session;
use serde_json::Value;

/// `GET path` over HTTP/1.0: (status, body).
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

pub(crate) fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Checks the text with Prometheus's own parser (`promtool check metrics`).
pub(crate) fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one sample line, `name{labels} value`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn tpch_session(ui: &str) -> Session {
    let data = std::env::temp_dir().join("ember-cli-tpch-sf0.1");
    ember_driver::tpch::generate(0.1, &data).unwrap();
    let session = Session::builder()
        .master("local[2]")
        .app_name("ui test")
        .ui(ui)
        .build()
        .unwrap();
    ember_driver::tpch::register_tables(session.context(), &data)
        .await
        .unwrap();
    session
}

#[test]
fn the_rest_api_and_metrics_follow_a_tpch_query() {
    runtime().block_on(async {
        let session = tpch_session("127.0.0.1:0").await;
        let ui = session.ui_address().expect("the UI listens");
        let before = tokio::task::spawn_blocking(move || get(ui, "/metrics").1)
            .await
            .unwrap();
        promtool_accepts(&before);
        let sql = ember_driver::tpch::query(3).unwrap();
        let df = session.sql(&sql).await.unwrap();
        // What the planner says the job is: its stages and their tasks.
        let dag = session.explain_stages(df.logical_plan()).await.unwrap();
        let stages = dag.lines().filter(|l| l.starts_with("Stage ")).count();
        let tasks: usize = dag
            .lines()
            .filter(|l| l.starts_with("Stage "))
            .map(|l| {
                l.split(':')
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert!(stages >= 3, "{dag}");
        df.collect().await.unwrap();
        let (after, jobs, job, sql_page, stage, executors, apps) =
            tokio::task::spawn_blocking(move || {
                let jobs = get_json(ui, "/api/v1/jobs");
                let id = jobs[0]["id"].as_u64().unwrap();
                let job = get_json(ui, &format!("/api/v1/jobs/{id}"));
                let first = job["dag"][0]["id"].as_u64().unwrap();
                let stage = get_json(ui, &format!("/api/v1/stages/{id}/{first}"));
                (
                    get(ui, "/metrics").1,
                    jobs,
                    job,
                    get_json(ui, "/api/v1/sql"),
                    stage,
                    get_json(ui, "/api/v1/executors"),
                    get_json(ui, "/api/v1/applications"),
                )
            })
            .await
            .unwrap();
        assert_eq!(apps[0]["name"], "ui test");
        assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
        assert_eq!(job["status"], "succeeded");
        assert_eq!(job["description"].as_str().unwrap(), sql);
        assert_eq!(job["stages"].as_array().unwrap().len(), stages, "{job}");
        let dag_stages = job["dag"].as_array().unwrap();
        // The planner's task counts, and those adaptive execution ran instead.
        let count = |key: &str| -> usize {
            dag_stages
                .iter()
                .map(|s| s[key].as_u64().unwrap() as usize)
                .sum()
        };
        assert_eq!(count("planned_partitions"), tasks, "{job}");
        let adapted: Vec<_> = dag_stages
            .iter()
            .filter(|s| !s["adaptive"].as_array().unwrap().is_empty())
            .collect();
        assert!(!adapted.is_empty(), "tiny stages are coalesced: {job}");
        let ran = count("partitions");
        assert!(ran < tasks, "{job}");
        assert_eq!(job["num_tasks"].as_u64().unwrap() as usize, ran);
        assert_eq!(job["completed_tasks"].as_u64().unwrap() as usize, ran);
        let tasks = ran;
        let as_run = sql_page[0]["adaptive"].as_array().unwrap();
        assert_eq!(as_run.len(), adapted.len(), "{sql_page}");
        assert!(as_run[0].as_str().unwrap().contains("ShuffleReaderExec"));
        assert!(dag_stages.iter().all(|s| s["status"] == "done"));
        assert!(
            dag_stages
                .iter()
                .any(|s| !s["parents"].as_array().unwrap().is_empty())
        );
        assert_eq!(
            stage["tasks"].as_array().unwrap().len(),
            stage["partitions"].as_u64().unwrap() as usize
        );
        assert!(stage["plan"].as_str().unwrap().contains("Exec"));
        assert!(
            sql_page[0]["physical_plan"]
                .as_str()
                .unwrap()
                .contains("Exec")
        );
        assert_eq!(sql_page[0]["jobs"][0], jobs[0]["id"]);
        assert_eq!(executors[0]["cores"], 2);
        // The counters moved by this job.
        promtool_accepts(&after);
        let jobs_done = "ember_jobs_total{status=\"succeeded\"}";
        assert_eq!(sample(&after, jobs_done), sample(&before, jobs_done) + 1.0);
        let tasks_done = "ember_tasks_total{status=\"succeeded\"}";
        assert_eq!(
            sample(&after, tasks_done) - sample(&before, tasks_done),
            tasks as f64
        );
        assert!(sample(&after, "ember_shuffle_write_bytes_total") > 0.0);
        assert_eq!(
            sample(&after, "ember_task_duration_seconds_count"),
            tasks as f64
        );
        // A job that is not there, and a secret that is not given.
        assert_eq!(get(ui, "/api/v1/jobs/999").0, 404);
    });
}

#[test]
fn the_storage_api_lists_cached_frames_and_their_partitions() {
    runtime().block_on(async {
        let session = tpch_session("127.0.0.1:0").await;
        let ui = session.ui_address().expect("the UI listens");
        let empty = tokio::task::spawn_blocking(move || get_json(ui, "/api/v1/storage"))
            .await
            .unwrap();
        assert_eq!(empty, serde_json::json!([]));
        let frame = session
            .sql("SELECT n_name, n_regionkey FROM nation")
            .await
            .unwrap()
            .cache()
            .unwrap();
        assert_eq!(frame.count().await.unwrap(), 25);
        let frames = tokio::task::spawn_blocking(move || get_json(ui, "/api/v1/storage"))
            .await
            .unwrap();
        let f = &frames[0];
        assert_eq!(f["rows"], 25, "{frames}");
        assert_eq!(f["storage_level"], "MemoryAndDisk", "{frames}");
        assert_eq!(f["cached_partitions"], f["partitions"], "{frames}");
        assert_eq!(f["executors"], serde_json::json!(["local"]), "{frames}");
        assert!(f["memory_bytes"].as_u64().unwrap() > 0, "{frames}");
        frame.unpersist().unwrap();
        let after = tokio::task::spawn_blocking(move || get_json(ui, "/api/v1/storage"))
            .await
            .unwrap();
        assert_eq!(after, serde_json::json!([]));
    });
}

#[test]
fn with_a_secret_the_ui_asks_for_it() {
    runtime().block_on(async {
        let session = Session::builder()
            .master("local[1]")
            .security(ember_core::rpc::Security::with_secret("s3cret").unwrap())
            .ui("127.0.0.1:0")
            .build()
            .unwrap();
        let ui = session.ui_address().unwrap();
        tokio::task::spawn_blocking(move || {
            assert_eq!(get(ui, "/api/v1/jobs").0, 401);
            assert_eq!(get(ui, "/api/v1/jobs?token=wrong").0, 401);
            assert_eq!(get(ui, "/api/v1/jobs?token=s3cret").0, 200);
        })
        .await
        .unwrap();
    });
}

#[test]
fn an_executor_serves_metrics_that_move_with_its_tasks() {
    runtime().block_on(async {
        let driver = Session::builder()
            .master("driver://127.0.0.1:0")
            .build()
            .unwrap();
        let address = driver.driver_address().unwrap().to_string();
        let work = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let _executor = super::cluster::Processes(vec![
            Command::new(env!("CARGO_BIN_EXE_ember"))
                .args(["executor", "--driver", &address, "--cores", "1", "--work-dir"])
                .arg(work.path())
                .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ]);
        let started = Instant::now();
        while driver.cluster_slots() != Some(1) {
            assert!(started.elapsed() < Duration::from_secs(30), "no executor");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        driver
            .sql("SELECT k, count(*) FROM (SELECT a % 5 AS k FROM (SELECT unnest(range(1000)) AS a)) GROUP BY k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = tokio::task::spawn_blocking(move || get(addr, "/metrics").1)
            .await
            .unwrap();
        promtool_accepts(&text);
        let ok = text
            .lines()
            .find(|l| l.starts_with("ember_executor_tasks_total{") && l.contains("succeeded"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap();
        assert!(ok >= 1.0, "{text}");
        assert!(text.contains("ember_executor_task_duration_seconds_count"));
    });
}

#[test]
fn an_executor_with_a_secret_asks_for_it_on_metrics_and_logs_refusals() {
    runtime().block_on(async {
        let security = ember_core::rpc::Security::with_secret("s3cret").unwrap();
        let driver = Session::builder()
            .master("driver://127.0.0.1:0")
            .security(security)
            .build()
            .unwrap();
        let address = driver.driver_address().unwrap().to_string();
        let work = tempfile::tempdir().unwrap();
        let secret_file = work.path().join("secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let log = work.path().join("executor.log");
        let port = super::free_port();
        // The default log level: refusals must show without --log-level.
        let _executor = super::cluster::Processes(vec![
            Command::new(env!("CARGO_BIN_EXE_ember"))
                .args([
                    "executor",
                    "--driver",
                    &address,
                    "--cores",
                    "1",
                    "--work-dir",
                ])
                .arg(work.path())
                .arg("--secret-file")
                .arg(&secret_file)
                .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ]);
        let started = Instant::now();
        while driver.cluster_slots() != Some(1) {
            assert!(started.elapsed() < Duration::from_secs(30), "no executor");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        tokio::task::spawn_blocking(move || {
            assert_eq!(get(addr, "/metrics").0, 401);
            assert_eq!(get(addr, "/metrics?token=wrong").0, 401);
            let (status, text) = get(addr, "/metrics?token=s3cret");
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("ember_executor_tasks_total"), "{text}");
            // A flood of refusals is logged, but only so many lines a minute.
            for _ in 0..100 {
                assert_eq!(get(addr, "/metrics").0, 401);
            }
        })
        .await
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("refused a call with no secret"), "{text}");
        assert!(
            text.contains("refused a call with a wrong secret"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:"), "the peer's address: {text}");
        let lines = text
            .lines()
            .filter(|l| l.contains("refused a call"))
            .count();
        assert_eq!(lines, ember_core::rpc::Audit::BURST as usize, "{text}");
    });
}

/// Headless Chromium's DOM of a page after its scripts ran; saves a screenshot.
fn chromium_dom(url: &str, screenshot: &Path) -> String {
    let run = |extra: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=5000",
                "--window-size=1280,900",
            ])
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs (Debian package chromium; .ci/run installs it)");
        assert!(out.status.success(), "chromium: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[&format!("--screenshot={}", screenshot.display())]);
    run(&["--dump-dom"])
}

#[test]
fn a_browser_shows_the_stage_dag_and_a_streaming_chart() {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&artifacts).unwrap();
    runtime().block_on(async {
        let session = tpch_session("127.0.0.1:0").await;
        let ui = session.ui_address().unwrap();
        // A streaming query with a few batches behind it, still running.
        let dir = tempfile::tempdir().unwrap();
        let stream = session
            .read_stream()
            .rate(2000)
            .unwrap()
            .with_watermark("timestamp", "2 seconds")
            .unwrap()
            .group_by(vec![ember_driver::functions::window(
                ember_driver::col("timestamp"),
                "1 second",
            )])
            .agg(vec![ember_driver::functions::count_all().alias("n")])
            .unwrap()
            .write_stream()
            .query_name("ticks")
            .memory()
            .checkpoint(dir.path().join("cp"))
            .trigger(ember_driver::stream::Trigger::ProcessingTime(
                Duration::from_millis(200),
            ))
            .start()
            .await
            .unwrap();
        // A multi-stage query, running while the browser looks.
        let sql = ember_driver::tpch::query(9).unwrap();
        let running = {
            let session = session.clone();
            tokio::spawn(async move { session.sql(&sql).await?.collect().await })
        };
        while stream.recent_progress().len() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let artifacts = artifacts.clone();
        let (jobs_dom, streaming_dom) = tokio::task::spawn_blocking(move || {
            // The TPC-H job's id, once it is known.
            let started = Instant::now();
            let job = loop {
                let jobs = get_json(ui, "/api/v1/jobs");
                if let Some(j) = jobs
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["stages"].as_array().unwrap().len() > 2)
                {
                    break j["id"].as_u64().unwrap();
                }
                assert!(started.elapsed() < Duration::from_secs(60), "no TPC-H job");
                std::thread::sleep(Duration::from_millis(20));
            };
            (
                chromium_dom(
                    &format!("http://{ui}/#/jobs/{job}"),
                    &artifacts.join("job-dag.png"),
                ),
                chromium_dom(
                    &format!("http://{ui}/#/streaming"),
                    &artifacts.join("streaming.png"),
                ),
            )
        })
        .await
        .unwrap();
        running.await.unwrap().unwrap();
        stream.stop().await.unwrap();
        let stages = jobs_dom.matches("class=\"stage\"").count();
        assert!(stages > 2, "the DAG shows the job's stages:\n{jobs_dom}");
        assert!(jobs_dom.contains("id=\"dag\""));
        assert!(jobs_dom.contains("class=\"edge\""));
        let points: Vec<usize> = streaming_dom
            .match_indices("data-points=\"")
            .filter_map(|(i, m)| streaming_dom[i + m.len()..].split('"').next()?.parse().ok())
            .collect();
        assert!(
            points.iter().any(|p| *p >= 3),
            "a streaming chart has data: {points:?}\n{streaming_dom}"
        );
        assert!(streaming_dom.contains("ticks"));
    });
    assert!(artifacts.join("job-dag.png").exists());
    assert!(artifacts.join("streaming.png").exists());
}

/// An `influxd` (InfluxDB 1.x) on free ports of 127.0.0.1, its data in `dir`; killed
/// when dropped.
struct Influxd {
    child: std::process::Child,
    http: u16,
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_influxd(dir: &Path) -> Influxd {
    let (http, rpc) = (super::free_port(), super::free_port());
    let d = dir.display();
    let config = format!(
        "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
         [meta]\n  dir = \"{d}/meta\"\n\
         [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
         [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n\
         [monitor]\n  store-enabled = false\n"
    );
    std::fs::write(dir.join("influxdb.conf"), config).unwrap();
    let child = Command::new("influxd")
        .arg("run")
        .arg("-config")
        .arg(dir.join("influxdb.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("influxd.log")).unwrap())
        .spawn()
        .expect("influxd runs (Debian package influxdb; .ci/run installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() || get(addr, "/ping").0 != 204 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "influxd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Influxd { child, http }
}

/// An InfluxQL query's first series' values per tag value.
fn influx_query(addr: SocketAddr, q: &str) -> Value {
    let path = format!(
        "/query?db=ember&q={}",
        q.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    get_json(addr, &path)
}

#[test]
fn the_iot_example_writes_its_windows_to_influxdb_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = start_influxd(dir.path());
    let url = format!("http://127.0.0.1:{}", influxd.http);
    let addr: SocketAddr = format!("127.0.0.1:{}", influxd.http).parse().unwrap();
    // The example, built by `cargo test` next to the ember binary.
    let example = Path::new(env!("CARGO_BIN_EXE_ember"))
        .parent()
        .unwrap()
        .join("examples/iot_stream");
    assert!(
        example.exists(),
        "{} is built by cargo test",
        example.display()
    );
    let out = dir.path().join("iot");
    let run = || {
        let o = Command::new(&example)
            .arg(&out)
            .args(["--influxdb", &url])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    let windows = || {
        influx_query(
            addr,
            "SELECT count(avg_temp), mean(avg_temp), max(max_temp) FROM iot GROUP BY device",
        )
    };
    run();
    let first = windows();
    // Ground truth: device d reads 15 + 5d + 0.5 (s % 10) at second s, so each closed
    // 10-second window has the average 17.25 + 5d and the maximum 19.5 + 5d.
    let series = first["results"][0]["series"].as_array().unwrap().clone();
    assert_eq!(series.len(), 4, "{first}");
    for s in &series {
        let d = ["boiler", "fridge", "attic", "garage"]
            .iter()
            .position(|x| s["tags"]["device"] == *x)
            .unwrap() as f64;
        let v = &s["values"][0];
        assert_eq!(v[1], 3, "three closed windows: {s}");
        assert_eq!(v[2].as_f64().unwrap(), 17.25 + 5.0 * d, "{s}");
        assert_eq!(v[3].as_f64().unwrap(), 19.5 + 5.0 * d, "{s}");
    }
    let progress = influx_query(addr, "SELECT count(input_rows) FROM ember_streaming");
    assert!(
        progress["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap()
            > 0,
        "{progress}"
    );
    // Again over the same checkpoints: nothing doubled.
    run();
    assert_eq!(windows(), first);
}

#[test]
fn a_batch_written_twice_to_influxdb_leaves_its_points_once() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = start_influxd(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", influxd.http).parse().unwrap();
    runtime().block_on(async {
        use ember_driver::stream::{InfluxConfig, InfluxSink, Sink};
        let config = InfluxConfig::from_options(
            &[
                ("url", format!("http://{addr}")),
                ("database", "ember".into()),
                ("measurement", "again".into()),
                ("tags", "k".into()),
                ("time", "t".into()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        )
        .unwrap();
        let sink = InfluxSink::new(config).unwrap();
        let batch = arrow::record_batch::RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new(
                    "t",
                    arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        None,
                    ),
                    false,
                ),
                arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Utf8, false),
                arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Float64, false),
            ])),
            vec![
                Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                    1000, 2000, 3000,
                ])),
                Arc::new(arrow::array::StringArray::from(vec!["a", "a", "b"])),
                Arc::new(arrow::array::Float64Array::from(vec![1.0, 2.0, 3.0])),
            ],
        )
        .unwrap();
        // The same batch id twice, as after a restart between write and commit.
        assert_eq!(sink.add_batch(7, vec![batch.clone()]).await.unwrap(), 3);
        assert_eq!(sink.add_batch(7, vec![batch]).await.unwrap(), 3);
    });
    let r = influx_query(addr, "SELECT count(v), sum(v) FROM again");
    assert_eq!(r["results"][0]["series"][0]["values"][0][1], 3, "{r}");
    assert_eq!(r["results"][0]["series"][0]["values"][0][2], 6.0, "{r}");
}

/// Kills the child process it holds when dropped (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ember_history_serves_the_jobs_of_an_ember_sql_run_from_its_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("events");
    let out = crate::ember(&[
        "sql",
        "--master",
        "local[2]",
        "--no-ui",
        "--config",
        &format!("ember.eventlog.dir={}", logs.display()),
        "-e",
        "SELECT value % 3 AS k, count(*) FROM generate_series(1, 100) GROUP BY k",
    ]);
    assert!(out.status.success(), "{out:?}");
    let names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].ends_with(".jsonl"),
        "finished logs lose .inprogress: {names:?}"
    );

    let port = crate::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["history", "--dir", logs.to_str().unwrap(), "--ui-port"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ember history did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let apps = get_json(addr, "/api/v1/applications");
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    assert_eq!(apps[0]["completed"], true, "{apps}");
    let id = apps[0]["id"].as_str().unwrap();
    assert_eq!(format!("{id}.jsonl"), names[0]);
    let jobs = get_json(addr, &format!("/api/v1/applications/{id}/jobs"));
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["status"], "succeeded");
    assert!(jobs[0]["stages"].as_array().unwrap().len() >= 2, "{jobs}");
    assert_eq!(jobs[0]["completed_tasks"], jobs[0]["num_tasks"], "{jobs}");
    let sql = get_json(addr, &format!("/history/{id}/api/v1/sql"));
    assert_eq!(sql[0]["status"], "succeeded", "{sql}");
}

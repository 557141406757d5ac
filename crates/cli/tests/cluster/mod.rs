//! Clusters of real processes: `ember driver`, `ember executor`s and clients.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

use ember_core::rpc::Security;

mod liveness;

/// Waits until `path` has more than `before` lines matching every one of `needles`.
pub(crate) fn wait_for_log(path: &Path, needles: &[&str], before: usize, secs: u64) -> usize {
    let started = Instant::now();
    loop {
        let n = count_log(path, needles);
        if n > before {
            return n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "no new line with {needles:?} in {} after {secs}s:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count_log(path: &Path, needles: &[&str]) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Sends `bytes` that are not HTTP/2 to `port`: the server closes the connection.
fn send_garbage(port: u16) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage \x13\x37")
        .unwrap();
    let mut reply = Vec::new();
    // Closed (or reset) by the server, not left hanging.
    let _ = conn.read_to_end(&mut reply);
}

#[test]
fn a_driver_process_with_a_secret_serves_clients_and_recovers_from_lost_executors() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let work = tempfile::tempdir().unwrap();
        let secret_file = work.path().join("secret");
        std::fs::write(&secret_file, "correct horse battery staple\n").unwrap();
        let wrong_file = work.path().join("wrong");
        std::fs::write(&wrong_file, "wrong").unwrap();
        let secret = secret_file.to_str().unwrap();

        let port = free_port();
        let driver_log = work.path().join("driver.log");
        let mut processes = Processes(vec![
            Command::new(env!("CARGO_BIN_EXE_ember"))
                .args(["--log-level", "info", "driver", "--bind"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--secret-file", secret])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&driver_log).unwrap())
                .spawn()
                .expect("ember driver starts"),
        ]);
        let driver_url = format!("http://127.0.0.1:{port}");
        let master = format!("ember://127.0.0.1:{port}");
        wait_for_log(&driver_log, &["driver listening"], 0, 30);

        let client = ember_driver::Session::builder()
            .master(&master)
            .security(Security::from_file_or_env(Some(&secret_file)).unwrap())
            .build()
            .unwrap();
        ember_driver::tpch::register_tables(client.context(), &data)
            .await
            .unwrap();
        // No executors yet: after the wait, a query is a clear error, not a hang.
        client
            .sql("SET ember.cluster.executor_wait = 1")
            .await
            .unwrap();
        let err = client
            .sql("SELECT count(*) FROM nation")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no executors have registered"),
            "{err}"
        );
        client
            .sql("SET ember.cluster.executor_wait = 60")
            .await
            .unwrap();

        // A client or an executor with the wrong secret is refused, and the driver logs it.
        let intruder = ember_driver::Session::builder()
            .master(&master)
            .security(Security::with_secret("wrong").unwrap())
            .build()
            .unwrap();
        let err = intruder
            .sql("SELECT 1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let refused = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["executor", "--driver", &driver_url, "--work-dir"])
            .arg(work.path().join("intruder"))
            .args(["--secret-file", wrong_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("secret"), "{said}");
        wait_for_log(&driver_log, &["refused a call with a wrong secret"], 0, 10);

        // Three executors with fixed ports, so garbage can be sent to one.
        let executor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for (i, p) in executor_ports.iter().enumerate() {
            let bind = format!("127.0.0.1:{p}");
            let more = start_executors_with(
                &driver_url,
                &work.path().join(format!("e{i}")),
                1,
                &["--secret-file", secret, "--bind", &bind],
            );
            processes.0.extend(std::mem::take(&mut { more }.0));
        }
        let datafusion = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(3),
        );
        ember_driver::tpch::register_tables(&datafusion, &data)
            .await
            .unwrap();
        // All 22 queries give the rows DataFusion gives on its own (compared as sorted
        // lines, so queries without ORDER BY may return rows in any order).
        for q in ember_driver::tpch::QUERY_NUMBERS {
            let sql = ember_driver::tpch::query(q).unwrap();
            let cluster = client.sql(&sql).await.unwrap().collect().await.unwrap();
            let expected = datafusion.sql(&sql).await.unwrap().collect().await.unwrap();
            assert_eq!(sorted_lines(&cluster), sorted_lines(&expected), "q{q}");
        }
        // Garbage to each gRPC port: the connection ends, the process keeps serving
        // (the queries below need both).
        send_garbage(port);
        send_garbage(executor_ports[0]);
        assert!(
            processes
                .0
                .iter_mut()
                .all(|p| p.try_wait().unwrap().is_none())
        );

        // SIGKILL an executor while q18's last stage runs: its map outputs of the stage
        // before are gone, the final task's fetch fails, and lineage recomputes them.
        let sql = ember_driver::tpch::query(18).unwrap();
        let expected = datafusion.sql(&sql).await.unwrap().collect().await.unwrap();
        // How many stages q18 has here (its final stage's id).
        client.sql(&sql).await.unwrap().collect().await.unwrap();
        let log = std::fs::read_to_string(&driver_log).unwrap();
        let last_job = log.lines().rfind(|l| l.contains("job submitted")).unwrap();
        let stages = last_job
            .rsplit("stages=")
            .next()
            .unwrap()
            .trim()
            .to_string();
        client
            .sql(&format!("SET ember.test.delay_tasks = '{stages}:3000'"))
            .await
            .unwrap();
        let final_stage = format!("stage={stages} attempt=0");
        let started = count_log(&driver_log, &["stage started", &final_stage]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || {
            wait_for_log(&log, &["stage started", &final_stage], started, 120)
        })
        .await
        .unwrap();
        // The machine is gone with its disk: readers on this host cannot fall back to
        // the dead executor's files.
        processes.0[1].kill().unwrap();
        processes.0[1].wait().unwrap();
        std::fs::remove_dir_all(work.path().join("e0")).unwrap();
        let rows = job.await.unwrap().expect("q18 survives the lost executor");
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        let log = std::fs::read_to_string(&driver_log).unwrap();
        let recovery = &log[log.rfind("job submitted").unwrap()..];
        assert!(recovery.contains("recomputing"), "{recovery}");

        // SIGTERM an executor while a job runs: it finishes or hands back its tasks,
        // leaves, and the job completes without failing.
        client
            .sql("SET ember.test.delay_tasks = '2:1500'")
            .await
            .unwrap();
        let mark = std::fs::read_to_string(&driver_log).unwrap().len();
        let submitted = count_log(&driver_log, &["job submitted"]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, &["job submitted"], submitted, 60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leaving = processes.0[2].id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &leaving])
                .status()
                .unwrap()
                .success()
        );
        let rows = job
            .await
            .unwrap()
            .expect("the job survives a decommissioned executor");
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        let status = processes.0[2].wait().unwrap();
        assert!(
            status.success(),
            "the executor exits cleanly on SIGTERM: {status}"
        );
        let log = std::fs::read_to_string(&driver_log).unwrap()[mark..].to_string();
        assert!(log.contains("executor leaving"), "{log}");
        assert!(!log.contains("job failed"), "{log}");

        // A client that stops waiting (Ctrl-C, a dropped future) cancels its job on
        // the driver, which frees the executors for the next query.
        client
            .sql("SET ember.test.delay_tasks = '1:60000'")
            .await
            .unwrap();
        let submitted = count_log(&driver_log, &["job submitted"]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, &["job submitted"], submitted, 60))
            .await
            .unwrap();
        job.abort();
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || {
            wait_for_log(&log, &["job failed", "was cancelled"], 0, 30)
        })
        .await
        .unwrap();
        client.sql("SET ember.test.delay_tasks = ''").await.unwrap();
        let n = client
            .sql("SELECT count(*) FROM region")
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(n, 1);
    });
}

fn add_one() -> datafusion::logical_expr::ScalarUDF {
    use arrow::array::AsArray;
    use datafusion::logical_expr::ColumnarValue;
    datafusion::logical_expr::create_udf(
        "add_one",
        vec![arrow::datatypes::DataType::Int64],
        arrow::datatypes::DataType::Int64,
        datafusion::logical_expr::Volatility::Immutable,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let plus: arrow::array::Int64Array = arrays[0]
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| v.map(|v| v + 1))
                .collect();
            Ok(ColumnarValue::Array(std::sync::Arc::new(plus)))
        }),
    )
}

/// A batch function that tags each row with where it ran.
fn tag_with(
    place: &'static str,
) -> impl Fn(
    arrow::record_batch::RecordBatch,
) -> datafusion::error::Result<arrow::record_batch::RecordBatch>
+ Send
+ Sync
+ 'static {
    move |batch| {
        let tags = arrow::array::StringArray::from(vec![place; batch.num_rows()]);
        Ok(arrow::record_batch::RecordBatch::try_new(
            tagged_schema(),
            vec![batch.column(0).clone(), std::sync::Arc::new(tags)],
        )?)
    }
}

fn tagged_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("ran_on", DataType::Utf8, false),
    ]))
}

#[test]
fn a_programs_functions_run_on_its_executors_and_a_lacking_executor_is_refused() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let work = tempfile::tempdir().unwrap();
        let port = free_port();
        let driver_log = work.path().join("driver.log");
        let _driver = Processes(vec![
            Command::new(env!("CARGO_BIN_EXE_ember"))
                .args(["--log-level", "info", "driver", "--bind"])
                .arg(format!("127.0.0.1:{port}"))
                .env_remove("EMBER_SECRET")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&driver_log).unwrap())
                .spawn()
                .expect("ember driver starts"),
        ]);
        wait_for_log(&driver_log, &["driver listening"], 0, 30);
        let driver_url = format!("http://127.0.0.1:{port}");

        // This test program is an executor with its own functions.
        let registry = ember::executor::Registry::new()
            .with_udf(add_one())
            .with_batch_fn("tag", tagged_schema(), tag_with("executor"));
        let config = ember::executor::ExecutorConfig::new(&driver_url, work.path().join("own"));
        let executor = ember::executor::start(config, registry).await.unwrap();

        // The client knows the functions' signatures; their bodies run on executors.
        let client = ember::Session::builder()
            .master(format!("ember://127.0.0.1:{port}"))
            .security(ember::Security::none())
            .build()
            .unwrap();
        client.register_udf(add_one());
        client.register_batch_fn("tag", tagged_schema(), tag_with("client"));
        ember::tpch::register_tables(client.context(), &data)
            .await
            .unwrap();
        let rows = client
            .sql("SELECT add_one(CAST(n_nationkey AS BIGINT)) AS n FROM nation ORDER BY n")
            .await
            .unwrap()
            .map_batches("tag")
            .unwrap()
            .collect()
            .await
            .unwrap();
        let lines = sorted_lines(&rows);
        assert!(
            lines.iter().any(|l| l.contains("| 25 | executor |")),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("client")), "{lines:?}");

        // An executor without them joins: the driver refuses the job up front.
        let registered = count_log(&driver_log, &["executor registered"]);
        let _plain = start_executors(&driver_url, &work.path().join("plain"), 1);
        wait_for_log(&driver_log, &["executor registered"], registered, 30);
        let err = client
            .sql("SELECT add_one(CAST(n_nationkey AS BIGINT)) FROM nation")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'add_one'") && err.contains("does not have"),
            "{err}"
        );
        // Built-in functions still run everywhere.
        let n = client
            .sql("SELECT count(*) FROM nation WHERE upper(n_name) = n_name")
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(n, 1);
        executor.stop();
    });
}

/// A self-signed certificate for 127.0.0.1 and localhost, made by `openssl`.
fn self_signed_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[test]
fn a_tls_cluster_serves_a_cli_client_and_refuses_plain_connections() {
    let work = tempfile::tempdir().unwrap();
    let data = tpch_sf01();
    let (cert, key) = self_signed_cert(work.path());
    let secret = work.path().join("secret");
    std::fs::write(&secret, "tls and a secret").unwrap();
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ];
    let port = free_port();
    let driver_log = work.path().join("driver.log");
    let _driver = Processes(vec![
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["--log-level", "info", "driver", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .args(tls)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&driver_log).unwrap())
            .spawn()
            .expect("ember driver starts"),
    ]);
    wait_for_log(&driver_log, &["driver listening at https://"], 0, 30);
    let _executors =
        start_executors_with(&format!("https://127.0.0.1:{port}"), work.path(), 2, &tls);

    let master = format!("ember://127.0.0.1:{port}");
    let q3 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benchmarks/tpch/q3.sql");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", &master, "--format", "csv"])
        .args([
            "--tls-ca",
            cert.to_str().unwrap(),
            "--secret-file",
            secret.to_str().unwrap(),
        ])
        .arg("--tpch")
        .arg(&data)
        .args(["-f", q3])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rows = String::from_utf8_lossy(&out.stdout);
    assert_eq!(rows.lines().count(), 11, "{rows}");
    assert!(
        rows.lines().nth(1).unwrap().starts_with("223140,"),
        "{rows}"
    );

    // Without TLS a client gets an error, not rows and not a hang.
    let plain = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", &master, "-e", "SELECT 1"])
        .args(["--secret-file", secret.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{plain:?}");
    send_garbage(port);
    // Still serving.
    let again = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "sql",
            "--master",
            &master,
            "-e",
            "SELECT 41 + 1 AS x",
            "--format",
            "csv",
        ])
        .args([
            "--tls-ca",
            cert.to_str().unwrap(),
            "--secret-file",
            secret.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "x\n42\n",
        "{again:?}"
    );
}

/// Kills the processes it holds when dropped, so a failing test leaves none behind.
pub(crate) struct Processes(pub(crate) Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn start_executors(address: &str, work: &Path, n: usize) -> Processes {
    start_executors_with(address, work, n, &[])
}

/// Starts `n` executors with `extra` flags (e.g. a secret file).
fn start_executors_with(address: &str, work: &Path, n: usize, extra: &[&str]) -> Processes {
    Processes(
        (0..n)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_ember"))
                    .args([
                        "executor",
                        "--driver",
                        address,
                        "--cores",
                        "1",
                        "--work-dir",
                    ])
                    .arg(work.join(format!("exec-{i}")))
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("ember executor starts")
            })
            .collect(),
    )
}

#[test]
fn a_query_survives_losing_an_executor_midway() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let driver = ember_driver::Session::builder()
            .master("driver://127.0.0.1:0")
            .config("ember.executor.timeout", "3")
            .config("ember.cluster.executor_wait", "5")
            .build()
            .unwrap();
        ember_driver::tpch::register_tables(driver.context(), &data)
            .await
            .unwrap();
        let address = driver.driver_address().unwrap().to_string();
        let work = tempfile::tempdir().unwrap();
        let mut executors = start_executors(&address, work.path(), 3);
        wait_for_slots(&driver, 3, 60, "executors did not register").await;

        let sql = ember_driver::tpch::query(18).unwrap();
        // Stage 2's tasks wait a second, so every executor is running one when the
        // kill comes: the job cannot finish without recovering the lost task.
        driver
            .sql("SET ember.test.delay_tasks = '2:1000'")
            .await
            .unwrap();
        let query = driver.sql(&sql).await.unwrap();
        let mut progress = driver.progress();
        let job = tokio::spawn(async move { query.collect().await });
        // Once the first shuffle stage is done, kill an executor that holds its output.
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            progress.wait_for(|p| p.stages.iter().any(|s| s.stage == 2 && s.running == 3)),
        )
        .await
        .expect("the query gets past its first stage")
        .unwrap();
        executors.0[0].kill().unwrap();
        let rows = job
            .await
            .unwrap()
            .expect("the query completes without the lost executor");

        let local = ember_driver::Session::builder()
            .master("local[2]")
            .build()
            .unwrap();
        ember_driver::tpch::register_tables(local.context(), &data)
            .await
            .unwrap();
        let expected = local.sql(&sql).await.unwrap().collect().await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&expected)
                .unwrap()
                .to_string()
        );
        // The driver noticed: two executors' slots are left.
        wait_for_slots(&driver, 2, 30, "the lost executor was not noticed").await;

        // Every executor killed during a job: it fails with a clear error after the grace
        // period instead of waiting forever.
        driver
            .sql("SET ember.test.delay_tasks = '1:5000'")
            .await
            .unwrap();
        let query = driver.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for e in &mut executors.0 {
            let _ = e.kill();
        }
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(std::time::Duration::from_secs(60), job)
            .await
            .expect("the job ends")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("every executor was lost"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );

        // A new executor, and the next query succeeds.
        let _new = start_executors(&address, &work.path().join("new"), 1);
        driver.sql("SET ember.test.delay_tasks = ''").await.unwrap();
        let rows = driver.sql(&sql).await.unwrap().collect().await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&expected)
                .unwrap()
                .to_string()
        );
    });
}

fn sorted_lines(batches: &[arrow::record_batch::RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A runtime for tests that run a cluster driver in this process.
fn cluster_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// TPC-H SF 0.1, generated once into a shared temp folder.
fn tpch_sf01() -> std::path::PathBuf {
    let data = std::env::temp_dir().join("ember-cli-tpch-sf0.1");
    ember_driver::tpch::generate(0.1, &data).unwrap();
    data
}

/// Waits until the driver has `slots` executor slots, failing with `what` after `secs`.
async fn wait_for_slots(driver: &ember_driver::Session, slots: usize, secs: u64, what: &str) {
    let waiting = std::time::Instant::now();
    while driver.cluster_slots() != Some(slots) {
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(secs),
            "{what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn a_client_sees_the_stage_progress_of_its_jobs_on_the_driver() {
    cluster_runtime().block_on(async {
        let driver = ember_driver::Session::builder()
            .master("driver://127.0.0.1:0")
            .build()
            .unwrap();
        let address = driver.driver_address().unwrap().to_string();
        let work = tempfile::tempdir().unwrap();
        let _executors = start_executors(&address, work.path(), 1);
        wait_for_slots(&driver, 1, 60, "the executor did not register").await;
        let port = address.rsplit(':').next().unwrap();
        let client = ember_driver::Session::builder()
            .master(format!("ember://127.0.0.1:{port}"))
            .build()
            .unwrap();
        // The first stage's task waits, so the bars have something to show.
        client
            .sql("SET ember.test.delay_tasks = '1:1500'")
            .await
            .unwrap();
        let mut progress = client.progress();
        let query = client
            .sql("SELECT k, count(*) FROM (SELECT a % 5 AS k FROM (SELECT unnest(range(1000)) AS a)) GROUP BY k")
            .await
            .unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            progress.wait_for(|p| p.stages.iter().any(|s| s.total > 0 && s.running > 0)),
        )
        .await
        .expect("the client sees a running stage")
        .unwrap();
        assert_eq!(job.await.unwrap().unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        assert!(client.progress().borrow().stages.is_empty(), "the bars clear at the end");
    });
}

/// `rclone serve webdav` over `root` on a free port of 127.0.0.1, killed on drop.
fn serve_webdav(root: &Path) -> (Processes, String) {
    let port = free_port();
    let child = Command::new("rclone")
        .args(["serve", "webdav", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rclone (Debian package rclone) serves WebDAV");
    let server = Processes(vec![child]);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rclone listens"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

/// A table in an object store is read by the executors themselves: each process
/// makes its own client from the URL (ember's object store registry).
#[test]
fn executors_read_a_table_from_an_object_store() {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("t")).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    for (part, range) in [(0, 0..500i64), (1, 500..1000)] {
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![std::sync::Arc::new(Int64Array::from_iter_values(range))],
        )
        .unwrap();
        let file =
            std::fs::File::create(root.path().join(format!("t/part-{part}.parquet"))).unwrap();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let (_server, url) = serve_webdav(root.path());
    cluster_runtime().block_on(async {
        let driver = ember_driver::Session::builder()
            .master("driver://127.0.0.1:0")
            .build()
            .unwrap();
        let address = driver.driver_address().unwrap().to_string();
        let work = tempfile::tempdir().unwrap();
        let _executors = start_executors(&address, work.path(), 2);
        wait_for_slots(&driver, 2, 60, "the executors did not register").await;
        driver
            .sql(&format!(
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{url}/t/'"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batches = driver
            .sql("SELECT x % 4 AS k, count(*) AS n, sum(x) AS s FROM t GROUP BY x % 4 ORDER BY k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for row in [
            "| 0 | 250 | 124500 |",
            "| 1 | 250 | 124750 |",
            "| 2 | 250 | 125000 |",
            "| 3 | 250 | 125250 |",
        ] {
            assert!(text.contains(row), "{row} in\n{text}");
        }
    });
}

//! Peers that stop answering, and task reports that get lost: every wait is bounded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Processes, cluster_runtime, free_port, sorted_lines, start_driver, start_executors_with,
    tpch_cluster, wait_for_log, wait_for_slots,
};

/// Short keepalives, so a frozen peer is noticed in about 3 s.
const FAST_KEEPALIVE: [&str; 4] = [
    "-c",
    "ember.rpc.keepalive_interval=1",
    "-c",
    "ember.rpc.keepalive_timeout=2",
];

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {}", child.id());
}

/// Thaws the frozen process on drop, so that a failing test's cleanup can kill it.
struct Thaw<'a>(&'a Child);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[test]
fn regression_a_client_errors_naming_the_driver_when_the_driver_stops_answering() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let driver_log = work.path().join("driver.log");
    let driver = start_driver(port, &driver_log, &FAST_KEEPALIVE);
    let driver_url = format!("http://127.0.0.1:{port}");
    let _executors = start_executors_with(&driver_url, work.path(), 1, &FAST_KEEPALIVE);
    wait_for_log(&driver_log, &["executor registered"], 0, 30);

    // A query whose first stage takes 60 s: the client waits on its result stream.
    let client_log = work.path().join("client.log");
    let mut client = Processes(vec![
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["sql", "--master", &format!("ember://127.0.0.1:{port}")])
            .args(FAST_KEEPALIVE)
            .args(["-e", "SET ember.test.delay_tasks = '1:60000'"])
            .args([
                "-e",
                "SELECT k, count(*) FROM (SELECT a % 5 AS k FROM (SELECT unnest(range(1000)) AS a)) GROUP BY k",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&client_log).unwrap())
            .spawn()
            .expect("ember sql starts"),
    ]);
    wait_for_log(&driver_log, &["stage started"], 0, 30);

    signal(&driver.0[0], "-STOP");
    let _thaw = Thaw(&driver.0[0]);
    let frozen = Instant::now();
    let status = loop {
        if let Some(status) = client.0[0].try_wait().unwrap() {
            break status;
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "the client still waits {:?} after the driver froze:\n{}",
            frozen.elapsed(),
            std::fs::read_to_string(&client_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&client_log).unwrap();
    assert!(
        !status.success(),
        "the client succeeded with the driver frozen: {err}\n{}",
        std::fs::read_to_string(&driver_log).unwrap_or_default()
    );
    assert!(
        err.contains(&format!("the driver at {driver_url} stopped answering")),
        "{err}"
    );
}

#[test]
fn regression_a_query_completes_when_an_executor_stops_answering_midway() {
    cluster_runtime().block_on(async {
        let config = [
            ("ember.executor.timeout", "3"),
            ("ember.rpc.keepalive_interval", "1"),
            ("ember.rpc.keepalive_timeout", "2"),
            ("ember.rpc.request_timeout", "3"),
        ];
        let work = tempfile::tempdir().unwrap();
        let (driver, executors) = tpch_cluster(&config, 2, &FAST_KEEPALIVE, work.path()).await;

        let sql = ember_driver::tpch::query(18).unwrap();
        let expected = driver.sql(&sql).await.unwrap().collect().await.unwrap();
        // Stage 2's tasks wait a second, so both executors run one, and hold map
        // output of stage 1, when one of them freezes.
        driver
            .sql("SET ember.test.delay_tasks = '2:1000'")
            .await
            .unwrap();
        let query = driver.sql(&sql).await.unwrap();
        let mut progress = driver.progress();
        let job = tokio::spawn(async move { query.collect().await });
        tokio::time::timeout(
            Duration::from_secs(120),
            progress.wait_for(|p| p.stages.iter().any(|s| s.stage == 2 && s.running == 2)),
        )
        .await
        .expect("the query gets past its first stage")
        .unwrap();
        signal(&executors.0[0], "-STOP");
        let _thaw = Thaw(&executors.0[0]);
        // The frozen executor's socket stays open: the other one's fetches from it
        // fail by keepalive, the driver drops it by its heartbeat timeout, and the lost
        // map output is computed again on the executor left.
        let rows = tokio::time::timeout(Duration::from_secs(90), job)
            .await
            .expect("the query completes instead of waiting on the frozen executor")
            .unwrap()
            .expect("the query completes without the frozen executor");
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        wait_for_slots(&driver, 1, 30, "the frozen executor was not dropped").await;
    });
}

/// A driver session with one executor process, and a query with a shuffle (stage 1
/// writes it, stage 2 reads it).
async fn one_executor_cluster(
    work: &std::path::Path,
) -> (ember_driver::Session, Processes, &'static str) {
    let driver = ember_driver::Session::builder()
        .master("driver://127.0.0.1:0")
        .build()
        .unwrap();
    let address = driver.driver_address().unwrap().to_string();
    let executors = start_executors_with(&address, work, 1, &[]);
    wait_for_slots(&driver, 1, 60, "the executor did not register").await;
    let sql = "SELECT k, count(*) AS n FROM (SELECT a % 5 AS k FROM (SELECT unnest(range(1000)) AS a)) GROUP BY k ORDER BY k";
    (driver, executors, sql)
}

fn counts(rows: &[arrow::record_batch::RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(rows)
        .unwrap()
        .to_string()
}

#[test]
fn regression_a_task_report_that_fails_is_retried_until_the_driver_has_it() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, _executors, sql) = one_executor_cluster(work.path()).await;
        let expected = counts(&driver.sql(sql).await.unwrap().collect().await.unwrap());
        // One attempt per task: had the report been given up on and the task failed
        // over by the heartbeat check instead, the job would fail.
        driver.sql("SET ember.task.max_failures = 1").await.unwrap();
        driver
            .sql("SET ember.test.fail_reports = '1:3'")
            .await
            .unwrap();
        let rows = tokio::time::timeout(Duration::from_secs(30), async {
            driver.sql(sql).await.unwrap().collect().await
        })
        .await
        .expect("the job completes instead of waiting for a lost report")
        .expect("the retried reports arrive");
        assert_eq!(counts(&rows), expected);
    });
}

#[test]
fn regression_a_task_missing_from_heartbeats_runs_again_and_its_job_completes() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, _executors, sql) = one_executor_cluster(work.path()).await;
        let expected = counts(&driver.sql(sql).await.unwrap().collect().await.unwrap());
        // The executor forgets the first attempt of each stage-1 task without a report.
        driver
            .sql("SET ember.test.forget_tasks = '1:1'")
            .await
            .unwrap();
        let started = Instant::now();
        let rows = tokio::time::timeout(Duration::from_secs(30), async {
            driver.sql(sql).await.unwrap().collect().await
        })
        .await
        .expect("the job completes instead of waiting for a forgotten task")
        .expect("the forgotten tasks run again");
        assert_eq!(counts(&rows), expected);
        // Noticed after two heartbeats without it (one a second), not sooner than
        // the launch grace: the retry really came from the heartbeat check.
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    });
}

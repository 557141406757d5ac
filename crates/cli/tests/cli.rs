//! Runs the built `ember` binary the way a user does and checks what it prints.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn ember(args: &[&str]) -> Output {
    run_ember(args, None)
}

fn run_ember(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("stdin accepts input");
    drop(input);
    child.wait_with_output().expect("ember runs")
}

fn sql(args: &[&str]) -> Output {
    let mut all = vec!["sql", "--master", "local[2]"];
    all.extend_from_slice(args);
    ember(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command failed with exactly one `Error: ...` line on stderr, which it returns.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got {out:?}");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err}");
    assert!(lines[0].starts_with("Error: "), "{err}");
    lines[0].to_string()
}

#[test]
fn csv_format_prints_only_the_header_and_rows() {
    let out = sql(&["-e", "SELECT 1+1 AS x", "--format", "csv"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "x\n2\n");
}

#[test]
fn json_format_prints_only_an_array_of_objects() {
    let out = sql(&["-e", "SELECT 1 AS a, 'x' AS b", "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("stdout is JSON");
    assert_eq!(value, serde_json::json!([{ "a": 1, "b": "x" }]));
}

#[test]
fn table_format_prints_an_aligned_table_and_the_row_count() {
    let out = sql(&[
        "-e",
        "SELECT * FROM (VALUES (1, 'one'), (22, 'two')) AS t(n, s)",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("| n  | s   |"), "{text}");
    assert!(text.contains("| 22 | two |"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("2 rows in "),
        "{text}"
    );
}

#[test]
fn a_syntax_error_is_one_line_and_fails() {
    let line = one_line_error(&sql(&["-e", "SELEC 1"]));
    assert!(line.contains("SELEC"), "{line}");
}

#[test]
fn an_unknown_column_is_named_in_the_error() {
    let line = one_line_error(&sql(&["-e", "SELECT nope FROM (SELECT 1 AS a)"]));
    assert!(line.contains("nope"), "{line}");
}

#[test]
fn a_missing_file_or_table_is_named_in_the_error() {
    let line = one_line_error(&sql(&["--table", "t=/nope.parquet", "-e", "SELECT 1"]));
    assert!(line.contains("/nope.parquet"), "{line}");
    let line = one_line_error(&sql(&["-e", "SELECT * FROM missing_table"]));
    assert!(line.contains("missing_table"), "{line}");
}

#[test]
fn a_corrupt_parquet_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    std::fs::write(
        &path,
        b"this is not a parquet file, just some garbage bytes",
    )
    .unwrap();
    let table = format!("t={}", path.display());
    let line = one_line_error(&sql(&["--table", &table, "-e", "SELECT * FROM t"]));
    assert!(line.contains("x.parquet"), "{line}");
    assert!(line.to_lowercase().contains("parquet error"), "{line}");

    let ddl = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}'; SELECT * FROM t",
        path.display()
    );
    let line = one_line_error(&sql(&["-e", &ddl]));
    assert!(line.to_lowercase().contains("parquet"), "{line}");
}

#[test]
fn the_shell_answers_the_next_statement_after_an_error() {
    let input = "SELECT 1 AS a;\nSELECT nope;\nSELECT\n  40 + 2 AS answer;\n";
    let out = run_ember(
        &["sql", "--master", "local[2]", "--format", "csv"],
        Some(input),
    );
    assert_eq!(stdout(&out), "a\n1\nanswer\n42\n");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("Error: ") && err.contains("nope"), "{err}");
    assert!(
        !out.status.success(),
        "piped input with a failed statement exits non-zero"
    );
}

#[test]
fn create_external_table_and_table_flags_register_csv_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("people.csv");
    std::fs::write(&path, "name,age\nada,36\nalan,41\n").unwrap();
    let script = format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');
         SELECT name FROM people WHERE age > 40",
        path.display()
    );
    let out = sql(&["-e", &script, "--format", "csv"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "name\nalan\n");

    // -e and -f run in the order given: the table exists before the file's query.
    let query = dir.path().join("query.sql");
    std::fs::write(&query, "SELECT count(*) AS n FROM people;").unwrap();
    let create = format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
        path.display()
    );
    let query_arg = query.to_str().unwrap();
    let out = sql(&["-e", &create, "-f", query_arg, "--format", "csv"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "n\n2\n");

    let table = format!("people={}", path.display());
    let out = sql(&[
        "--table",
        &table,
        "-e",
        "SELECT sum(age) AS s FROM people",
        "--format",
        "csv",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "s\n77\n");
}

#[test]
fn gen_tpch_writes_eight_tables_that_sql_can_query() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    let data_arg = data.to_str().unwrap();
    let out = ember(&["gen", "tpch", "--sf", "0.01", "--out", data_arg]);
    assert!(out.status.success(), "{out:?}");
    let tables = [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ];
    for table in tables {
        let part = data.join(table).join("part-1.parquet");
        assert!(part.is_file(), "{} is missing", part.display());
    }
    assert!(Path::new(&data.join("_SUCCESS")).is_file());

    let out = sql(&[
        "--tpch",
        data_arg,
        "--format",
        "csv",
        "-e",
        "SELECT count(*) AS n FROM nation; SELECT count(*) AS n FROM lineitem",
    ]);
    assert!(out.status.success(), "{out:?}");
    // tpchgen is deterministic: SF 0.01 has 60175 lineitems.
    assert_eq!(stdout(&out), "n\n25\nn\n60175\n");

    let q1 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benchmarks/tpch/q1.sql");
    let out = sql(&["--tpch", data_arg, "--format", "csv", "-f", q1]);
    assert!(out.status.success(), "{out:?}");
    let csv = stdout(&out);
    assert!(
        csv.starts_with("l_returnflag,l_linestatus,sum_qty,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 5, "a header and 4 groups: {csv}");
    let counted: u64 = csv
        .lines()
        .skip(1)
        .map(|line| line.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        counted, 59307,
        "q1 counts every lineitem shipped by 1998-09-02: {csv}"
    );

    let out = sql(&[
        "--tpch",
        data_arg,
        "-e",
        "\\stages SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stages = stdout(&out);
    assert!(
        stages.contains("Stage 1") && stages.contains("Stage 2"),
        "{stages}"
    );

    let out = ember(&[
        "bench",
        "tpch",
        "--sf",
        "0.01",
        "--data",
        data_arg,
        "--queries",
        "1,6",
        "--master",
        "local[2]",
        "--iterations",
        "1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("bench prints JSON");
    assert_eq!(report["benchmark"], "tpch");
    assert_eq!(report["partitions"], 2);
    let queries = report["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 2);
    assert_eq!(queries[0]["query"], 1);
    assert_eq!(queries[0]["ember"]["rows"], 4);
    assert_eq!(queries[0]["datafusion"]["rows"], 4);
    assert!(queries[1]["ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["total"]["ember_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn config_prints_the_ember_keys_as_a_markdown_table() {
    let out = ember(&["config"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(table.starts_with('|'), "{table}");
    assert!(table.contains("ember."), "{table}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md is readable");
    assert!(
        readme.contains(table.trim()),
        "README.md's config table is stale: paste `ember config`'s output:\n{table}"
    );
}

#[test]
fn ctrl_c_cancels_the_running_query_and_the_shell_answers_the_next() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", "local[1]", "--format", "csv"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    // 900 million joined rows: minutes of work, unless cancelled.
    input
        .write_all(
            b"SELECT count(*) FROM generate_series(1, 30000) a CROSS JOIN generate_series(1, 30000) b \
              WHERE a.value + b.value > 0;\n",
        )
        .unwrap();
    input.flush().unwrap();
    // Wait until the join is burning CPU, so the signal finds the query running.
    let waiting = std::time::Instant::now();
    while cpu_seconds(child.id()) < 1.5 {
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(60),
            "the query never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let started = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    input.write_all(b"SELECT 42 AS answer;\n").unwrap();
    drop(input);
    let out = child.wait_with_output().expect("ember runs");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(stdout(&out).contains("answer\n42\n"), "{}", stdout(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert!(
        !out.status.success(),
        "a cancelled statement counts as failed"
    );
}

/// User + system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    // After the command name, utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Kills the processes it holds when dropped, so a failing test leaves none behind.
struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_driver_and_three_executor_processes_run_all_22_tpch_queries() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let driver = ember_driver::Session::builder()
            .master("driver://127.0.0.1:0")
            .config("ember.cluster.executor_wait", "1")
            .build()
            .unwrap();
        let address = driver
            .driver_address()
            .expect("a driver address")
            .to_string();
        // No executors yet: after the wait, a query is a clear error, not a hang.
        ember_driver::tpch::register_tables(driver.context(), &data)
            .await
            .unwrap();
        let err = driver
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

        let work = tempfile::tempdir().unwrap();
        let _executors = start_executors(&address, work.path(), 3);
        // Started before the executors register, this query waits for them.
        driver
            .sql("SET ember.cluster.executor_wait = 60")
            .await
            .unwrap();
        let first = driver
            .sql("SELECT count(*) AS n FROM nation")
            .await
            .unwrap();
        let first = tokio::spawn(async move { first.collect().await });
        wait_for_slots(&driver, 3, 60, "executors did not register").await;

        let first = first.await.unwrap().unwrap();
        assert_eq!(first.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

        // All 22 queries give the rows DataFusion gives on its own (compared as sorted
        // lines, so queries without ORDER BY may return rows in any order).
        let datafusion = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(3),
        );
        ember_driver::tpch::register_tables(&datafusion, &data)
            .await
            .unwrap();
        for q in ember_driver::tpch::QUERY_NUMBERS {
            let sql = ember_driver::tpch::query(q).unwrap();
            let cluster = driver.sql(&sql).await.unwrap().collect().await.unwrap();
            let expected = datafusion.sql(&sql).await.unwrap().collect().await.unwrap();
            assert_eq!(sorted_lines(&cluster), sorted_lines(&expected), "q{q}");
        }
    });
}

fn start_executors(address: &str, work: &Path, n: usize) -> Processes {
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

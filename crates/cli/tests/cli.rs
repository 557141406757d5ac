//! Runs the built `ember` binary the way a user does and checks what it prints.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod broker;
mod cluster;
mod stream;
mod stream_offsets;
mod ui;

/// A port free on 127.0.0.1 now (the process given it binds it right away).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Python with `packages` (pinned, from the Python package index): a virtualenv
/// `~/.cache/ember/<name>`, made with `python3 -m venv` and pip when `imports` fail in
/// it. `.ci/run` installs python3 and its venv module.
fn python_venv(name: &str, packages: &[&str], imports: &str) -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap();
    let venv = home.join(".cache/ember").join(name);
    let python = venv.join("bin/python3");
    let ready = Command::new(&python)
        .args(["-c", imports])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (.ci/run installs python3 and python3-venv)");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?}");
    }
    python
}

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

/// `ember sql -e` with 10 000 added terms aborted with a stack overflow; deeper
/// statements than the limit are now an error, and nesting past the parser's limit too.
#[test]
fn a_very_long_or_deep_expression_is_a_one_line_error_not_a_crash() {
    let chain = format!("SELECT {}", vec!["1"; 10_000].join("+"));
    let out = sql(&["-e", &chain]);
    let err = one_line_error(&out);
    assert!(err.contains("ember.sql.max_expression_depth"), "{err}");
    let parens = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let out = sql(&["-e", &parens]);
    let err = one_line_error(&out);
    assert!(err.contains("RecursionLimitExceeded"), "{err}");
    let not = format!("SELECT {}true", "NOT ".repeat(10_000));
    one_line_error(&sql(&["-e", &not]));
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
    // Run, its small reduce partitions are read by one task.
    let out = sql(&[
        "--tpch",
        data_arg,
        "-e",
        "\\analyze SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let analyzed = stdout(&out);
    let (planned, as_run) = analyzed
        .split_once("== Stage DAG (as run) ==")
        .unwrap_or_else(|| panic!("{analyzed}"));
    assert!(planned.contains("Stage 2"), "{analyzed}");
    assert!(as_run.contains("coalesced:"), "{analyzed}");
    assert!(
        as_run.contains("ShuffleReaderExec(stage 1, 1 partition)"),
        "{analyzed}"
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
    assert_eq!(queries[0]["baseline"]["rows"], 4);
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

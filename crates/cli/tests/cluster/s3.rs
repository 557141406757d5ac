//! Tables in an S3-compatible store: `s3s-fs`, a real S3 server on 127.0.0.1 that
//! checks request signatures (`.ci/run` installs it). A client writes a table through
//! a cluster (an executor writes the files), reads it back through the cluster (the
//! executors read them), and gets clear errors for a missing bucket, a wrong key and
//! an unreachable endpoint; a streaming query reads new files from a bucket and
//! writes its batches into one, exactly once.

use std::path::PathBuf;
use std::process::Output;

use super::*;

const ACCESS_KEY: &str = "ember-test";
const SECRET_KEY: &str = "ember-test-secret";

/// The `s3s-fs` binary: on the PATH or where `cargo install` puts it.
fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin/s3s-fs"));
    on_path.chain(cargo_home).find(|p| p.is_file()).expect(
        "s3s-fs, an S3 server for the tests: cargo install s3s-fs@0.14.1 --features binary --locked (.ci/run does)",
    )
}

/// A running S3 server whose bucket `ember` exists.
struct S3 {
    _server: Processes,
    endpoint: String,
    _root: tempfile::TempDir,
}

fn serve_s3() -> S3 {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("ember")).unwrap();
    let port = free_port();
    let server = Processes(vec![
        Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts"),
    ]);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "s3s-fs did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    S3 {
        _server: server,
        endpoint: format!("http://127.0.0.1:{port}"),
        _root: root,
    }
}

/// The environment every process reads its S3 client's settings from.
fn s3_env<'a>(endpoint: &'a str, secret: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
}

/// A driver and two executors whose S3 settings are `env`, and its `ember://` URL.
fn s3_cluster(env: &[(&str, &str)], work: &Path) -> ((Processes, Processes), String) {
    let port = free_port();
    let driver_log = work.join("driver.log");
    let driver = start_driver_env(port, &driver_log, &[], env);
    let url = format!("http://127.0.0.1:{port}");
    let executors = start_executors_env(&url, work, 2, &[], env);
    wait_for_log(&driver_log, &["executor registered"], 1, 30);
    ((driver, executors), format!("ember://127.0.0.1:{port}"))
}

/// `ember sql` against `master` with `env`, the statements in `args`.
fn sql(master: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", master, "--format", "csv"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("EMBER_SECRET")
        .output()
        .expect("ember sql runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_table_in_s3_is_written_and_read_back_through_a_cluster() {
    let s3 = serve_s3();
    let env = s3_env(&s3.endpoint, SECRET_KEY);
    let work = tempfile::tempdir().unwrap();
    let (_cluster, master) = s3_cluster(&env, work.path());

    // The job's last task writes the files into the bucket.
    let written = sql(
        &master,
        &env,
        &[
            "-e",
            "COPY (SELECT a AS x, 'n' || CAST(a AS VARCHAR) AS name FROM (SELECT unnest(range(1000)) AS a)) \
             TO 's3://ember/t/' STORED AS PARQUET",
        ],
    );
    assert_eq!(stdout(&written).trim(), "count\n1000");
    // Registered by URL, read by the executors.
    let read = sql(
        &master,
        &env,
        &[
            "--table",
            "t=s3://ember/t/",
            "-e",
            "SELECT count(*) AS n, sum(x) AS s, max(name) AS m FROM t",
        ],
    );
    assert_eq!(stdout(&read).trim(), "n,s,m\n1000,499500,n999");
    // The same through CREATE EXTERNAL TABLE.
    let read = sql(
        &master,
        &env,
        &[
            "-e",
            "CREATE EXTERNAL TABLE u STORED AS PARQUET LOCATION 's3://ember/t/'",
            "-e",
            "SELECT count(*) AS n FROM u WHERE x >= 500",
        ],
    );
    assert_eq!(stdout(&read).trim(), "n\n500");
}

#[test]
fn a_missing_bucket_a_wrong_key_and_an_unreachable_endpoint_are_clear_errors() {
    let s3 = serve_s3();
    let env = s3_env(&s3.endpoint, SECRET_KEY);
    let wrote = sql(
        "local[1]",
        &env,
        &[
            "-e",
            "COPY (SELECT 1 AS x) TO 's3://ember/one/' STORED AS PARQUET",
        ],
    );
    stdout(&wrote);

    let missing = error(&sql(
        "local[1]",
        &env,
        &["--table", "t=s3://no-such-bucket/t/", "-e", "SELECT 1"],
    ));
    assert!(missing.contains("NoSuchBucket"), "{missing}");
    assert!(
        missing.contains("s3://no-such-bucket/t"),
        "names the location: {missing}"
    );

    let wrong = s3_env(&s3.endpoint, "not-the-secret");
    let denied = error(&sql(
        "local[1]",
        &wrong,
        &[
            "--table",
            "t=s3://ember/one/",
            "-e",
            "SELECT count(*) FROM t",
        ],
    ));
    assert!(denied.contains("SignatureDoesNotMatch"), "{denied}");

    let nowhere = s3_env("http://127.0.0.1:1", SECRET_KEY);
    let started = Instant::now();
    let unreachable = error(&sql(
        "local[1]",
        &nowhere,
        &[
            "--table",
            "t=s3://ember/one/",
            "-e",
            "SELECT count(*) FROM t",
        ],
    ));
    assert!(
        unreachable.contains("127.0.0.1:1"),
        "names the endpoint: {unreachable}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an unreachable endpoint fails within its bounded retries, not after minutes"
    );
}

/// `ember stream` against `master` with `env`: new JSON files under `from` (an S3
/// directory) into Parquet files under `to`, checkpointed in `checkpoint`.
fn stream(master: &str, env: &[(&str, &str)], from: &str, to: &str, checkpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["stream", "--master", master, "--trigger", "available-now"])
        .args(["--from", &format!("json:{from}")])
        .args(["--schema", "device STRING, t DOUBLE", "--table", "readings"])
        .args(["--sql", "SELECT device, t * 2 AS t2 FROM readings"])
        .args(["--to", &format!("parquet:{to}"), "--checkpoint", checkpoint])
        .envs(env.iter().copied())
        .env_remove("EMBER_SECRET")
        .output()
        .expect("ember stream runs")
}

#[test]
fn a_stream_reads_new_files_from_s3_and_writes_each_batch_into_s3_once() {
    let s3 = serve_s3();
    let env = s3_env(&s3.endpoint, SECRET_KEY);
    let work = tempfile::tempdir().unwrap();
    let (_cluster, master) = s3_cluster(&env, work.path());

    // Objects of the bucket, put through the server's own directory (whole files,
    // as an upload puts them).
    let bucket = s3._root.path().join("ember");
    std::fs::create_dir_all(bucket.join("in")).unwrap();
    let put = |name: &str, lines: &[&str]| {
        std::fs::write(bucket.join("in").join(name), lines.join("\n")).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // distinct modification times
    };
    put(
        "a.json",
        &[r#"{"device":"a","t":1.5}"#, r#"{"device":"b","t":2.5}"#],
    );
    let (from, to, checkpoint) = ("s3://ember/in", "s3://ember/out", "s3://ember/cp");
    let first = stream(&master, &env, from, to, checkpoint);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // A restart reads only the new file, and writes only its batch.
    put("b.json", &[r#"{"device":"c","t":3.5}"#]);
    let second = stream(&master, &env, from, to, checkpoint);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let read = sql(
        &master,
        &env,
        &[
            "--table",
            "out=s3://ember/out/",
            "-e",
            "SELECT device, t2 FROM out ORDER BY device",
        ],
    );
    assert_eq!(stdout(&read).trim(), "device,t2\na,3.0\nb,5.0\nc,7.0");
    let logged = std::fs::read_dir(bucket.join("out/_ember_metadata"))
        .unwrap()
        .count();
    assert_eq!(logged, 2, "one committed batch per run");
}

/// `ember sql` with no `AWS_*` variables: the S3 settings are ember's options.
fn sql_with_options(master: &str, options: &[String], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command.args(["sql", "--master", master, "--format", "csv"]);
    for option in options {
        command.args(["--config", option]);
    }
    for (key, _) in s3_env("", "") {
        command.env_remove(key);
    }
    command
        .args(args)
        .env_remove("EMBER_SECRET")
        .output()
        .expect("ember sql runs")
}

#[test]
fn s3_settings_given_as_options_reach_the_driver_and_the_executors() {
    let s3 = serve_s3();
    let work = tempfile::tempdir().unwrap();
    // Nobody has the AWS_* variables: the client's options are all there is.
    let (_cluster, master) = s3_cluster(&[], work.path());
    let options: Vec<String> = [
        ("endpoint", s3.endpoint.as_str()),
        ("region", "us-east-1"),
        ("access_key_id", ACCESS_KEY),
        ("secret_access_key", SECRET_KEY),
        ("allow_http", "true"),
    ]
    .iter()
    .map(|(k, v)| format!("ember.s3.{k}={v}"))
    .collect();
    let written = sql_with_options(
        &master,
        &options,
        &[
            "-e",
            "COPY (SELECT unnest(range(100)) AS x) TO 's3://ember/opts/' STORED AS PARQUET",
        ],
    );
    assert_eq!(stdout(&written).trim(), "count\n100");
    let read = sql_with_options(
        &master,
        &options,
        &[
            "--table",
            "t=s3://ember/opts/",
            "-e",
            "SELECT sum(x) AS s FROM t",
        ],
    );
    assert_eq!(stdout(&read).trim(), "s\n4950");

    // In a local session, SET takes effect for the statements after it.
    let set = |key: &str, value: &str| format!("SET ember.s3.{key} = '{value}'");
    let statements = [
        set("endpoint", &s3.endpoint),
        set("region", "us-east-1"),
        set("access_key_id", ACCESS_KEY),
        set("secret_access_key", SECRET_KEY),
        set("allow_http", "true"),
        "CREATE EXTERNAL TABLE o STORED AS PARQUET LOCATION 's3://ember/opts/'".into(),
        "SELECT count(*) AS n FROM o".into(),
    ];
    let mut args = vec![];
    for s in &statements {
        args.extend(["-e", s.as_str()]);
    }
    let local = sql_with_options("local[1]", &[], &args);
    assert!(
        stdout(&local).trim().ends_with("n\n100"),
        "{}",
        stdout(&local)
    );
}

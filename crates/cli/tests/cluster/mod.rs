//! Clusters of real processes: `ember driver`, `ember executor`s and clients.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

use ember_core::rpc::Security;

mod cache;
mod flight_sql;
mod functions;
mod liveness;
mod object_store;
mod progress;
mod recovery;
mod results;
mod s3;
mod secret;
mod tls;

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

/// Starts `ember driver` on 127.0.0.1:`port` with `extra` flags, its log (info) in
/// `log`, and waits until it listens.
pub(crate) fn start_driver(port: u16, log: &Path, extra: &[&str]) -> Processes {
    start_driver_env(port, log, extra, &[])
}

/// [`start_driver`] with environment variables `env` set for the driver.
pub(crate) fn start_driver_env(
    port: u16,
    log: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Processes {
    let driver = Processes(vec![
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["--log-level", "info", "driver", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("EMBER_SECRET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("ember driver starts"),
    ]);
    wait_for_log(log, &["driver listening"], 0, 30);
    driver
}

pub(crate) fn start_executors(address: &str, work: &Path, n: usize) -> Processes {
    start_executors_with(address, work, n, &[])
}

/// Starts `n` executors with `extra` flags (e.g. a secret file).
fn start_executors_with(address: &str, work: &Path, n: usize, extra: &[&str]) -> Processes {
    start_executors_env(address, work, n, extra, &[])
}

/// [`start_executors_with`] with environment variables `env` set for the executors.
fn start_executors_env(
    address: &str,
    work: &Path,
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Processes {
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
                    .envs(env.iter().copied())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("ember executor starts")
            })
            .collect(),
    )
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

/// A driver in this process with `config`, and `n` executor processes (started with
/// `extra` flags, their work dirs in `work`) registered with it.
async fn driver_cluster(
    config: &[(&str, &str)],
    n: usize,
    extra: &[&str],
    work: &Path,
) -> (ember_driver::Session, Processes) {
    let mut builder = ember_driver::Session::builder().master("driver://127.0.0.1:0");
    for (k, v) in config {
        builder = builder.config(*k, *v);
    }
    let driver = builder.build().unwrap();
    let address = driver.driver_address().unwrap().to_string();
    let executors = start_executors_with(&address, work, n, extra);
    wait_for_slots(&driver, n, 60, "executors did not register").await;
    (driver, executors)
}

/// [`driver_cluster`] with TPC-H SF 0.1 registered on the driver.
async fn tpch_cluster(
    config: &[(&str, &str)],
    n: usize,
    extra: &[&str],
    work: &Path,
) -> (ember_driver::Session, Processes) {
    let (driver, executors) = driver_cluster(config, n, extra, work).await;
    ember_driver::tpch::register_tables(driver.context(), &tpch_sf01())
        .await
        .unwrap();
    (driver, executors)
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

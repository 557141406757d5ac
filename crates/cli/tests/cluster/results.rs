//! Results of any size stream through a cluster: stored on the executors, fetched by
//! the driver in chunks and printed by the client as they come.

use std::io::BufRead;

use super::*;

/// A process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

#[test]
fn regression_a_result_partition_larger_than_a_message_streams_to_the_client() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let driver_log = work.path().join("driver.log");
    let driver = start_driver(port, &driver_log, &[]);
    let _executors = start_executors(&format!("http://127.0.0.1:{port}"), work.path(), 2);
    wait_for_log(&driver_log, &["executor registered"], 1, 30);

    // One stage of two tasks: partition 0 holds 280 MB of rows, over the 256 MiB
    // message limit; partition 1 is small and starts 30 s late.
    const BIG: usize = 280_000;
    let client_log = work.path().join("client.log");
    let mut client = Processes(vec![
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["sql", "--master", &format!("ember://127.0.0.1:{port}")])
            .args(["--format", "csv"])
            .args(["-e", "SET ember.test.delay_tasks = '1.1:30000'"])
            .args([
                "-e",
                &format!(
                    "SELECT a AS n, repeat('x', 1000) AS s FROM (SELECT unnest(range({BIG})) AS a) \
                     UNION ALL SELECT a AS n, 'late' AS s FROM (SELECT unnest(range(10)) AS a)"
                ),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&client_log).unwrap())
            .spawn()
            .expect("ember sql starts"),
    ]);
    let stdout = client.0[0].stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let header = lines.next().map(|l| l.unwrap());
    assert_eq!(
        header.as_deref(),
        Some("n,s"),
        "{}",
        std::fs::read_to_string(&client_log).unwrap_or_default()
    );
    let started = Instant::now();
    for i in 1..=BIG {
        let line = lines.next().unwrap_or_else(|| {
            panic!(
                "the result ended after {} rows:\n{}\n{}",
                i - 1,
                std::fs::read_to_string(&client_log).unwrap_or_default(),
                std::fs::read_to_string(&driver_log).unwrap_or_default()
            )
        });
        let line = line.unwrap();
        assert!(
            line.ends_with(&"x".repeat(1000)),
            "row {i}: {}",
            &line[..40.min(line.len())]
        );
    }
    // Every row of the first partition has been printed while the second task still
    // waits: the client did not wait for the whole result.
    assert_eq!(
        count_log(&driver_log, &["stage finished"]),
        0,
        "the first partition's rows came only after the last task ({:?})",
        started.elapsed()
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest.len(), 10, "{rest:?}");
    assert!(rest.iter().all(|l| l.ends_with(",late")), "{rest:?}");
    let status = client.0[0].wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&client_log).unwrap_or_default()
    );
    // The driver never held the result: its peak (about 110 MiB idle in a debug
    // build) stays under the result's size.
    let peak = peak_rss(driver.0[0].id());
    assert!(
        peak < 256 << 20,
        "the driver peaked at {} MiB for a 280 MB result",
        peak >> 20
    );
    eprintln!("driver peak RSS: {} MiB", peak >> 20);
}

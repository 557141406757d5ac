//! `ember broker` with real Kafka clients: kcat (librdkafka) produces and consumes,
//! a kcat consumer group shares partitions and resumes from committed offsets.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `ember broker` process, killed when dropped.
struct BrokerProcess {
    child: Child,
    port: u16,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker(data: &Path, port: u16, extra: &[&str]) -> BrokerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["--log-level", "info", "broker", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ember broker starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    BrokerProcess { child, port }
}

fn kcat() -> Command {
    let mut c = Command::new("kcat");
    c.stdin(Stdio::null());
    c
}

fn bootstrap(b: &BrokerProcess) -> String {
    format!("127.0.0.1:{}", b.port)
}

/// Produces `lines` (`key:value`) with kcat.
fn kcat_produce(b: &BrokerProcess, topic: &str, lines: &str) {
    let mut child = kcat()
        .args([
            "-P",
            "-b",
            &bootstrap(b),
            "-t",
            topic,
            "-K:",
            "-X",
            "acks=all",
        ])
        // The Java client's partitioner (librdkafka's default is CRC32-based).
        .args(["-X", "topic.partitioner=murmur2_random"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat runs (install the kcat package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "kcat -P failed");
}

#[test]
fn kcat_produces_100000_keyed_messages_and_consumes_them_back_in_order_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(
        &dir.path().join("data"),
        free_port(),
        &["--default-partitions", "4"],
    );
    let input: String = (0..100_000)
        .map(|i| format!("key{}:value-{i}\n", i % 50))
        .collect();
    kcat_produce(&broker, "keyed", &input);
    let out = kcat()
        .args(["-C", "-b", &bootstrap(&broker), "-t", "keyed", "-e", "-q"])
        .args(["-o", "beginning", "-f", "%k:%s:%p\n"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_000);
    // Same bytes: every key:value pair came back once.
    let mut sent: Vec<&str> = input.lines().collect();
    let mut got: Vec<String> = lines
        .iter()
        .map(|l| l.rsplit_once(':').unwrap().0.to_string())
        .collect();
    sent.sort_unstable();
    got.sort_unstable();
    assert_eq!(sent, got);
    // Per key: one partition (the Java client's, as ember's partitioner computes it
    // too), values in the order sent.
    let mut per_key: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for l in &lines {
        let mut parts = l.split(':');
        let (key, value, partition) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let n: u64 = value.trim_start_matches("value-").parse().unwrap();
        let entry = per_key
            .entry(key.to_string())
            .or_insert_with(|| (partition.to_string(), vec![]));
        assert_eq!(entry.0, partition, "{key} moved partitions");
        entry.1.push(n);
    }
    assert_eq!(per_key.len(), 50);
    for (key, (partition, values)) in &per_key {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
        let expected = ember_log::partition_for_key(key.as_bytes(), 4);
        assert_eq!(partition, &expected.to_string(), "{key}");
    }
}

/// Runs a kcat group member until it has read to the end of its partitions.
fn group_member(b: &BrokerProcess, group: &str, topic: &str) -> Child {
    kcat()
        .args(["-b", &bootstrap(b), "-G", group, "-e", "-q"])
        .args([
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "auto.commit.interval.ms=100",
        ])
        .args(["-f", "%p %o\n", topic])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn member_output(child: Child) -> Vec<(i32, i64)> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_kcat_group_of_two_splits_the_partitions_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start_broker(&data, port, &["--default-partitions", "4"]);
    let batch = |from: usize| -> String {
        (from..from + 2000)
            .map(|i| format!("k{i}:v{i}\n"))
            .collect()
    };
    kcat_produce(&broker, "shared", &batch(0));
    let a = group_member(&broker, "readers", "shared");
    let b = group_member(&broker, "readers", "shared");
    let (a, b) = (member_output(a), member_output(b));
    let partitions = |m: &[(i32, i64)]| {
        let mut p: Vec<i32> = m.iter().map(|(p, _)| *p).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    assert!(!a.is_empty() && !b.is_empty(), "both members got records");
    let (pa, pb) = (partitions(&a), partitions(&b));
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "{pa:?} and {pb:?} overlap"
    );
    assert_eq!(a.len() + b.len(), 2000);

    // The broker restarts; more records arrive; the group resumes where it left off.
    drop(broker);
    let broker = start_broker(&data, port, &["--default-partitions", "4"]);
    kcat_produce(&broker, "shared", &batch(2000));
    let c = member_output(group_member(&broker, "readers", "shared"));
    assert_eq!(c.len(), 2000, "only the new records");
}

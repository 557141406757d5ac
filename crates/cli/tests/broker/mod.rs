//! `ember broker` with real Kafka clients: kcat (librdkafka) produces and consumes,
//! a kcat consumer group shares partitions and resumes from committed offsets.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

mod groups;

/// An `ember broker` process, killed when dropped.
pub(crate) struct BrokerProcess {
    child: Child,
    port: u16,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_broker(data: &Path, port: u16, extra: &[&str]) -> BrokerProcess {
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

pub(crate) fn bootstrap(b: &BrokerProcess) -> String {
    format!("127.0.0.1:{}", b.port)
}

/// Produces `lines` (`key:value`) with kcat.
pub(crate) fn kcat_produce(b: &BrokerProcess, topic: &str, lines: &str) {
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

#[test]
fn an_acknowledged_message_survives_a_broker_kill_once_and_in_order() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut broker = start_broker(&data, port, &["--default-partitions", "3"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = 20_000u32;
    let acked = runtime.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "60000")
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut deliveries = Vec::new();
        for i in 0..total {
            let key = format!("k{}", i % 30);
            let value = format!("{i}");
            let record = FutureRecord::to("crash").key(&key).payload(&value);
            let delivery = producer.send_result(record).expect("queued");
            let counter = sent.clone();
            deliveries.push(tokio::spawn(async move {
                let outcome = delivery.await.expect("delivery reported");
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                outcome.ok().map(|_| i)
            }));
            if i == total / 4 {
                // Let some acknowledgements arrive, then kill the broker mid-stream.
                while sent.load(std::sync::atomic::Ordering::Relaxed) < 1000 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                broker.child.kill().unwrap();
                broker.child.wait().unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                broker = start_broker(&data, port, &["--default-partitions", "3"]);
            }
        }
        let mut acked = vec![];
        for d in deliveries {
            if let Some(i) = d.await.unwrap() {
                acked.push(i);
            }
        }
        acked
    });
    assert!(
        acked.len() as u32 > total / 2,
        "{} acknowledged",
        acked.len()
    );
    let out = kcat()
        .args(["-C", "-b", &bootstrap(&broker), "-t", "crash", "-e", "-q"])
        .args(["-o", "beginning", "-f", "%k %s\n"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut last_per_key: BTreeMap<String, u32> = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap();
        let n: u32 = value.parse().unwrap();
        assert!(seen.insert(n), "message {n} is there twice");
        if let Some(prev) = last_per_key.insert(key.to_string(), n) {
            assert!(prev < n, "{key}: {n} after {prev}");
        }
    }
    for i in &acked {
        assert!(seen.contains(i), "acknowledged message {i} is missing");
    }
}

/// Sends one framed request and returns the response frame (without its size).
fn roundtrip(conn: &mut std::net::TcpStream, frame: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    conn.write_all(&(frame.len() as i32).to_be_bytes())?;
    conn.write_all(frame)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    conn.read_exact(&mut body)?;
    Ok(body)
}

#[test]
fn garbage_closes_only_its_connection_and_unsupported_requests_get_an_error_code() {
    use kafka_protocol::messages::{
        ApiKey, RequestHeader, ResponseHeader, SaslHandshakeRequest, SaslHandshakeResponse,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"), free_port(), &[]);
    let address = ("127.0.0.1", broker.port);
    // Garbage: the broker closes the connection (read returns 0 or an error).
    let mut bad = std::net::TcpStream::connect(address).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"\xff\xff\xff\x7fnot kafka at all").unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(std::io::Read::read(&mut bad, &mut buf), Ok(0) | Err(_));
    assert!(closed, "the garbage connection was closed");

    // A request the broker does not serve (SASL) gets Kafka's error code.
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = bytes::BytesMut::new();
    let version = 1;
    RequestHeader::default()
        .with_request_api_key(ApiKey::SaslHandshake as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(
            &mut frame,
            ApiKey::SaslHandshake.request_header_version(version),
        )
        .unwrap();
    SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str("PLAIN"))
        .encode(&mut frame, version)
        .unwrap();
    let mut body = bytes::Bytes::from(roundtrip(&mut conn, &frame).unwrap());
    let header = ResponseHeader::decode(
        &mut body,
        ApiKey::SaslHandshake.response_header_version(version),
    )
    .unwrap();
    assert_eq!(header.correlation_id, 7);
    let response = SaslHandshakeResponse::decode(&mut body, version).unwrap();
    assert_eq!(response.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");

    // Other connections were never affected.
    kcat_produce(&broker, "fine", "a:1\n");
    let out = kcat()
        .args(["-C", "-b", &bootstrap(&broker), "-t", "fine", "-e", "-q"])
        .args(["-o", "beginning", "-f", "%s\n"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    assert!(log.contains("garbage"), "{log}");
}

fn ember_tool(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_console_tools_create_describe_produce_consume_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_broker(&data, free_port(), &["--auto-create-topics", "false"]);
    let server = bootstrap(&broker);
    let tool = |args: &[&str], stdin: &str| {
        let mut all = vec![args[0], "--bootstrap-server", &server];
        all.extend_from_slice(&args[1..]);
        let out = ember_tool(&all, stdin);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    tool(
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=60000",
        ],
        "",
    );
    let meta = std::fs::read_to_string(data.join("orders/topic.json")).unwrap();
    assert!(meta.contains("\"retention_ms\": 60000"), "{meta}");
    assert_eq!(tool(&["topics", "list"], ""), "orders\n");
    let lines: String = (0..30)
        .map(|i| format!("user{}:order-{i}\n", i % 4))
        .collect();
    tool(
        &["produce", "--topic", "orders", "--key-separator", ":"],
        &lines,
    );
    let described = tool(&["topics", "describe", "orders"], "");
    assert!(described.contains("partitions 3"), "{described}");
    let consumed = tool(
        &[
            "consume",
            "--topic",
            "orders",
            "--from-beginning",
            "--exit-at-end",
            "--print-key",
            "--key-separator",
            ":",
        ],
        "",
    );
    let mut got: Vec<&str> = consumed.lines().collect();
    let mut sent: Vec<&str> = lines.lines().collect();
    got.sort_unstable();
    sent.sort_unstable();
    assert_eq!(got, sent);
    // Without auto-creation, producing to a missing topic is an error.
    let out = ember_tool(
        &["produce", "--bootstrap-server", &server, "--topic", "nope"],
        "x\n",
    );
    assert!(!out.status.success());
    tool(&["topics", "delete", "orders"], "");
    assert_eq!(tool(&["topics", "list"], ""), "");
    assert!(!data.join("orders").exists());
}

#[test]
fn a_segment_damaged_while_the_broker_was_down_is_cut_back_and_the_log_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start_broker(&data, port, &[]);
    let lines: String = (0..500).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat_produce(&broker, "fragile", &lines);
    drop(broker); // SIGKILL
    let segment = data.join("fragile/0/00000000000000000000.log");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(b"\x00\x00\x00\x00\x00\x00\x01\xf4\x00\x00\x00\x40torn write")
        .unwrap();
    drop(file);
    let broker = start_broker(&data, port, &[]);
    let out = kcat()
        .args(["-C", "-b", &bootstrap(&broker), "-t", "fragile", "-e", "-q"])
        .args(["-o", "beginning", "-f", "%s\n"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 500);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("recovered a segment"))
        .unwrap_or_else(|| panic!("no recovery line in:\n{log}"));
    assert!(line.contains("00000000000000000000.log"), "{line}");
    assert!(line.contains("first_dropped_offset=500"), "{line}");
}

#[test]
fn ember_stream_copies_a_topic_to_parquet_exactly_once_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"), free_port(), &[]);
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint");
    let stream = || {
        let o = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["stream", "--from"])
            .arg(format!("kafka:{}:sensor", bootstrap(&broker)))
            .args([
                "--sql",
                "SELECT CAST(value AS VARCHAR) AS reading, \"offset\" FROM events",
                "--to",
            ])
            .arg(format!("parquet:{}", out.display()))
            .arg("--checkpoint")
            .arg(&checkpoint)
            .args(["--master", "local[2]"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stderr).unwrap()
    };
    let rows = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let session = ember_driver::Session::builder()
                .master("local[1]")
                .build()
                .unwrap();
            session
                .read()
                .parquet(out.to_str().unwrap())
                .await
                .unwrap()
                .count()
                .await
                .unwrap()
        })
    };
    let lines: String = (0..50).map(|i| format!("k:{i}\n")).collect();
    kcat_produce(&broker, "sensor", &lines);
    let said = stream();
    assert!(said.contains("batch 0: 50 rows in, 50 rows out"), "{said}");
    assert_eq!(rows(), 50);
    // Nothing new: nothing written again.
    stream();
    assert_eq!(rows(), 50);
    kcat_produce(&broker, "sensor", "k:50\nk:51\n");
    let said = stream();
    assert!(said.contains("batch 1: 2 rows in"), "{said}");
    assert_eq!(rows(), 52);
}

#[test]
fn the_broker_serves_metrics_of_its_traffic_and_each_groups_lag() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let broker = start_broker(
        &dir.path().join("data"),
        free_port(),
        &[
            "--default-partitions",
            "2",
            "--metrics-bind",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let lines: String = (0..50).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat_produce(&broker, "metered", &lines);
    let reader = group_member(&broker, "dashboards", "metered");
    assert_eq!(member_output(reader).len(), 50);
    kcat_produce(&broker, "metered", "a:1\nb:2\nc:3\n");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let (status, text) = super::ui::get(addr, "/metrics");
    assert_eq!(status, 200);
    super::ui::promtool_accepts(&text);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value("ember_broker_bytes_in_total") > 50.0 * 4.0, "{text}");
    assert!(value("ember_broker_bytes_out_total") > 50.0 * 4.0, "{text}");
    assert_eq!(
        value("ember_broker_consumer_lag{group=\"dashboards\""),
        3.0,
        "the three records produced after the group read: {text}"
    );
}

#[test]
fn an_unreachable_broker_is_an_error_not_a_hang() {
    // A port nothing listens on: the console tool gives up with the address.
    let port = free_port();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["topics", "--bootstrap-server"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("connecting to 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

/// kafka-python, a pure-Python client: ListOffsets with the max-timestamp sentinel
/// finds the record with the largest timestamp, and two members of a group polled in
/// turn from one thread keep one generation (a member rejoining with unchanged
/// metadata gets the current one back) and commit without a rebalance error.
#[test]
fn kafka_python_lists_max_timestamp_offsets_and_keeps_a_stable_group() {
    let python = crate::python_venv(
        "kafka-python-venv-3.0.12",
        &["kafka-python==3.0.12"],
        "import kafka",
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(
        &dir.path().join("data"),
        free_port(),
        &["--default-partitions", "4"],
    );
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/broker/kafka_python_client.py"
        ))
        .arg(bootstrap(&broker))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka-python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["max_timestamp"], summary["expected"], "{summary}");
    assert_eq!(
        summary["commit_failures"],
        serde_json::json!([]),
        "{summary}"
    );
    let generations = summary["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 1, "{summary}");
    assert_ne!(generations[0], "None", "{summary}");
    assert_eq!(
        summary["partitions"],
        serde_json::json!([2, 2]),
        "{summary}"
    );
}

//! `ember stream` processes killed with SIGKILL at random moments and started again:
//! a windowed count into the Parquet sink comes out exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_log::{Durability, KeyHash, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

const EVENTS: usize = 200_000;
const KEYS: usize = 50;
/// 2026-01-01T00:00:00Z; one event every 5 ms of event time.
const BASE_MS: i64 = 1_767_225_600_000;
const STEP_MS: i64 = 5;
const WINDOW_MS: i64 = 10_000;

/// The events' windowed count per key, which the sink must hold exactly.
fn ground_truth() -> BTreeMap<(i64, String), i64> {
    let mut counts = BTreeMap::new();
    for i in 0..EVENTS {
        let ts = BASE_MS + i as i64 * STEP_MS;
        *counts
            .entry((ts - ts % WINDOW_MS, format!("k{}", i % KEYS)))
            .or_insert(0) += 1;
    }
    counts
}

/// 200 000 keyed JSON events in an embedded log, then one far later event whose
/// watermark closes every window before it.
fn write_events(dir: &Path) {
    let log = Log::open(
        dir,
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    log.create_topic("events", 4, None).unwrap();
    let producer = Producer::new(
        log.clone(),
        ProducerConfig {
            partitioner: Arc::new(KeyHash::default()),
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let send = |key: String, ts: i64| {
        let json = format!(r#"{{"key":"{key}","ts":{ts}}}"#);
        producer
            .send(ProducerRecord::new("events", json).key(key))
            .unwrap();
    };
    for i in 0..EVENTS {
        send(format!("k{}", i % KEYS), BASE_MS + i as i64 * STEP_MS);
    }
    send("end".into(), BASE_MS + 10_000_000);
    producer.flush();
    log.maintain().unwrap();
}

const SQL: &str = "SELECT w['start'] AS window_start, key, n FROM (\
    SELECT window(ts, '10 seconds') AS w, key, count(*) AS n FROM (\
      SELECT j['key'] AS key, j['ts'] AS ts FROM (\
        SELECT from_json(value, 'key STRING, ts TIMESTAMP', 'FAILFAST') AS j FROM events)) \
    WHERE with_watermark(ts, '5 seconds') \
    GROUP BY window(ts, '10 seconds'), key)";

fn ember_stream(
    log: &Path,
    out: &Path,
    checkpoint: &Path,
    master: &str,
    per_batch: u32,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.arg("stream")
        .arg("--from")
        .arg(format!("log:{}:events", log.display()))
        .args(["--sql", SQL, "--to"])
        .arg(format!("parquet:{}", out.display()))
        .arg("--checkpoint")
        .arg(checkpoint)
        .args(["--trigger", "available-now", "--max-offsets-per-trigger"])
        .arg(per_batch.to_string())
        .args(["--master", master])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// What the Parquet sink committed, as (window start, key) → count; a window written
/// twice fails here.
fn sink_contents(out: &Path) -> BTreeMap<(i64, String), i64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = ember_driver::Session::builder()
            .master("local[1]")
            .build()
            .unwrap();
        let batches = query_parquet(
            &session,
            out,
            "SELECT CAST(window_start AS BIGINT) AS s, key, n FROM out",
        )
        .await;
        let mut contents = BTreeMap::new();
        for b in batches {
            use arrow::array::AsArray;
            use arrow::datatypes::Int64Type;
            let s = b.column(0).as_primitive::<Int64Type>();
            let k = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
            let k = k.as_string::<i32>();
            let n = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let key = (s.value(i), k.value(i).to_string());
                assert!(
                    contents.insert(key.clone(), n.value(i)).is_none(),
                    "window {key:?} written twice"
                );
            }
        }
        contents
    })
}

/// A small generator for kill moments; the seed is printed so a failure can be rerun.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Runs `ember stream`, SIGKILLs it at `kills` random moments, then lets a last run
/// finish; `midway(run)` is called halfway to each kill, and early in the last run.
/// Returns how many runs the kill cut short.
fn run_with_kills(
    stream: impl Fn() -> Command,
    kills: usize,
    rng: &mut Lcg,
    midway: &mut dyn FnMut(usize),
) -> usize {
    let mut cut_short = 0;
    for run in 0..=kills {
        let mut child: Child = stream().spawn().expect("ember stream starts");
        let last = run == kills;
        let wait = Duration::from_millis(300 + rng.below(1200));
        let started = Instant::now();
        let mut called = false;
        while last || started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if !called && started.elapsed() >= wait / 2 {
                midway(run);
                called = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !last && child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            cut_short += 1;
        }
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let batch = said.lines().rfind(|l| l.starts_with("batch"));
        eprintln!("run {run} ({wait:?}): {}", batch.unwrap_or("(no batch)"));
        if last {
            assert!(out.status.success(), "{said}");
        }
    }
    cut_short
}

#[test]
fn a_windowed_count_survives_sigkills_of_the_driver_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out, checkpoint) = (
        dir.path().join("log"),
        dir.path().join("out"),
        dir.path().join("checkpoint"),
    );
    write_events(&log);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill moments from seed {seed}");
    let mut rng = Lcg(seed);
    let cut_short = run_with_kills(
        || ember_stream(&log, &out, &checkpoint, "local[2]", 1000),
        4,
        &mut rng,
        &mut |_| {},
    );
    assert!(cut_short >= 2, "only {cut_short} kills landed mid-run");
    let truth = ground_truth();
    let got = sink_contents(&out);
    assert_eq!(got.len(), truth.len(), "windows in the sink");
    assert!(
        got == truth,
        "the sink's counts differ from the ground truth"
    );
    // Nothing left to do: another run writes nothing.
    let said = ember_stream(&log, &out, &checkpoint, "local[2]", 1000)
        .output()
        .unwrap();
    assert!(said.status.success());
    assert_eq!(sink_contents(&out), truth);
}

#[test]
fn a_windowed_count_on_a_cluster_survives_losing_executors_exactly_once() {
    use super::cluster::{Processes, start_executors, wait_for_log};
    let dir = tempfile::tempdir().unwrap();
    let (log, out, checkpoint) = (
        dir.path().join("log"),
        dir.path().join("out"),
        dir.path().join("checkpoint"),
    );
    write_events(&log);
    let port = super::free_port();
    let driver_log = dir.path().join("driver.log");
    let _driver = Processes(vec![
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["--log-level", "info", "driver", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&driver_log).unwrap())
            .spawn()
            .expect("ember driver starts"),
    ]);
    wait_for_log(&driver_log, &["driver listening"], 0, 30);
    let address = format!("http://127.0.0.1:{port}");
    let mut executors = vec![start_executors(&address, &dir.path().join("work-a"), 2)];
    let master = format!("ember://127.0.0.1:{port}");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill moments from seed {seed}");
    let mut rng = Lcg(seed);
    // Each time: the query process is killed, and so is an executor, which a new one
    // replaces; the last run finishes with one executor lost mid-run too.
    let mut generation = 0;
    let mut lose_an_executor = |_| {
        generation += 1;
        let _ = executors[0].0[0].kill();
        executors.push(start_executors(
            &address,
            &dir.path().join(format!("work-{generation}")),
            1,
        ));
        executors.swap_remove(0);
    };
    run_with_kills(
        || ember_stream(&log, &out, &checkpoint, &master, 10_000),
        2,
        &mut rng,
        &mut lose_an_executor,
    );
    let truth = ground_truth();
    let got = sink_contents(&out);
    assert_eq!(got.len(), truth.len(), "windows in the sink");
    assert!(
        got == truth,
        "the sink's counts differ from the ground truth"
    );
}

/// The windowed count of `SQL` over a source, in a `local[2]` session, as sorted
/// lines.
async fn windowed_counts(
    source: Arc<dyn ember_driver::stream::Source>,
    name: &str,
    checkpoint: &Path,
) -> Vec<String> {
    let session = ember_driver::Session::builder()
        .master("local[2]")
        .build()
        .unwrap();
    session.read_stream().register("events", source).unwrap();
    let q = session
        .sql(SQL)
        .await
        .unwrap()
        .write_stream()
        .query_name(name)
        .memory()
        .checkpoint(checkpoint)
        .trigger(ember_driver::stream::Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    q.await_termination(None).await.unwrap();
    let batches = session
        .sql(&format!(
            "SELECT CAST(CAST(window_start AS BIGINT) AS VARCHAR) || ' ' || key || ' ' || CAST(n AS VARCHAR) FROM {name}"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut lines: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            use arrow::array::AsArray;
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_string::<i32>().clone();
            (0..b.num_rows()).map(move |i| c.value(i).to_string())
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_kafka_source_on_a_kcat_fed_broker_agrees_with_the_log_source() {
    use super::broker::{bootstrap, kcat_produce, start_broker};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lines: String = (0..5000)
        .map(|i| {
            let key = format!("k{}", i % KEYS);
            format!(
                "{key}:{{\"key\":\"{key}\",\"ts\":{}}}\n",
                BASE_MS + i as i64 * 20
            )
        })
        .chain([format!(
            "end:{{\"key\":\"end\",\"ts\":{}}}\n",
            BASE_MS + 10_000_000
        )])
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let over_kafka = {
        let broker = start_broker(&data, super::free_port(), &["--default-partitions", "3"]);
        kcat_produce(&broker, "events", &lines);
        let source =
            ember_driver::stream::KafkaSource::new(&bootstrap(&broker), vec!["events".into()])
                .max_offsets_per_trigger(700)
                .unwrap();
        rt.block_on(windowed_counts(
            Arc::new(source),
            "over_kafka",
            &dir.path().join("cp-kafka"),
        ))
        // The broker stops here, and leaves its log directory to the next reader.
    };
    let log = Log::open(&data, LogConfig::default()).unwrap();
    let source = ember_driver::stream::LogSource::new(log, vec!["events".into()])
        .max_offsets_per_trigger(700)
        .unwrap();
    let in_process = rt.block_on(windowed_counts(
        Arc::new(source),
        "in_process",
        &dir.path().join("cp-log"),
    ));
    // 5000 events 20 ms apart: 100 s, ten 10-second windows of each key, all closed.
    assert_eq!(over_kafka.len(), 10 * KEYS);
    assert!(
        over_kafka.iter().all(|l| l.ends_with(" 10")),
        "{over_kafka:?}"
    );
    assert_eq!(over_kafka, in_process);
}

#[test]
fn the_kafka_source_reads_librdkafkas_mock_cluster_exactly_once_across_restarts() {
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A Kafka implementation nobody here wrote: librdkafka's, on a real TCP port.
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic("readings", 4, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let send = |from: usize, to: usize| {
            let producer = producer.clone();
            async move {
                for i in from..to {
                    let key = format!("k{}", i % 10);
                    let value = format!("r{i}");
                    producer
                        .send(
                            FutureRecord::to("readings").key(&key).payload(&value),
                            Duration::from_secs(10),
                        )
                        .await
                        .unwrap();
                }
            }
        };
        let session = ember_driver::Session::builder().master("local[2]").build().unwrap();
        let run = || async {
            let source = ember_driver::stream::KafkaSource::new(&bootstrap, vec!["readings".into()])
                .max_offsets_per_trigger(70)
                .unwrap();
            let q = session
                .read_stream()
                .source(Arc::new(source))
                .unwrap()
                .select_expr(&["CAST(value AS VARCHAR) AS v", "\"partition\" AS p", "\"offset\" AS o"])
                .unwrap()
                .write_stream()
                .parquet(dir.path().join("out"))
                .checkpoint(dir.path().join("cp"))
                .trigger(ember_driver::stream::Trigger::AvailableNow)
                .start()
                .await
                .unwrap();
            q.await_termination(None).await.unwrap();
            q.recent_progress().len()
        };
        send(0, 300).await;
        assert!(run().await >= 4, "several batches");
        send(300, 500).await;
        assert!(run().await >= 2);
        let batches = query_parquet(
            &session,
            &dir.path().join("out"),
            "SELECT count(*), count(DISTINCT v), count(DISTINCT CAST(p AS VARCHAR) || '-' || CAST(o AS VARCHAR)) FROM out",
        )
        .await;
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let b = &batches[0];
        let counts: Vec<i64> = (0..3)
            .map(|c| b.column(c).as_primitive::<Int64Type>().value(0))
            .collect();
        assert_eq!(counts, vec![500, 500, 500], "every record exactly once");
    });
}

#[test]
fn on_a_cluster_the_executors_read_the_kafka_ranges_themselves() {
    use super::broker::{bootstrap, kcat_produce, start_broker};
    use super::cluster::start_executors;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(
        &dir.path().join("data"),
        super::free_port(),
        &["--default-partitions", "3"],
    );
    let lines: String = (0..300).map(|i| format!("k{}:v{i}\n", i % 10)).collect();
    kcat_produce(&broker, "wide", &lines);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = {
        let _guard = rt.enter();
        ember_driver::Session::builder()
            .master("driver://127.0.0.1:0")
            .ui("127.0.0.1:0")
            .build()
            .unwrap()
    };
    let address = driver.driver_address().unwrap().to_string();
    let ui = driver.ui_address().unwrap();
    let _executors = start_executors(&address, &dir.path().join("work"), 2);
    let started = Instant::now();
    while driver.cluster_slots() != Some(2) {
        assert!(started.elapsed() < Duration::from_secs(30), "executors");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("stream")
        .arg("--from")
        .arg(format!("kafka:{}:wide", bootstrap(&broker)))
        .args([
            "--sql",
            "SELECT CAST(value AS VARCHAR) AS v FROM events",
            "--to",
        ])
        .arg(format!("parquet:{}", dir.path().join("out").display()))
        .arg("--checkpoint")
        .arg(dir.path().join("cp"))
        .args(["--no-ui", "--master"])
        .arg(format!("ember://{}", address.split("://").nth(1).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch 0: 300 rows in, 300 rows out"));
    // The driver ran a stage that scans the three partition ranges, on the executors.
    tasks_on_executors(ui, "KafkaScanExec: 3 ranges", 3);
    // A streaming aggregation keeps its state partitions on the executors: each
    // task loads and writes its own, and new executors pick them up.
    let count = |cp: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("stream")
            .arg("--from")
            .arg(format!("kafka:{}:wide", bootstrap(&broker)))
            .args([
                "--sql",
                "SELECT CAST(key AS VARCHAR) AS k, count(*) AS n FROM events GROUP BY CAST(key AS VARCHAR)",
                "--output-mode",
                "update",
                "--to",
            ])
            .arg(format!("parquet:{}", dir.path().join("counts").display()))
            .arg("--checkpoint")
            .arg(dir.path().join(cp))
            .args(["--no-ui", "--master"])
            .arg(format!("ember://{}", address.split("://").nth(1).unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = count("counts-cp");
    assert!(
        first.contains("batch 0: 300 rows in, 10 rows out"),
        "{first}"
    );
    // One task per state partition.
    tasks_on_executors(ui, "StatefulExec: aggregation, batch=0, partitions=4", 4);
    let state = dir.path().join("counts-cp/state/0");
    for p in 0..4 {
        assert!(
            state.join(format!("{p}/0.snapshot")).exists(),
            "partition {p}"
        );
    }
    // New executors, with nothing in memory, load the partitions from the store.
    drop(_executors);
    let _executors = start_executors(&address, &dir.path().join("work-2"), 2);
    kcat_produce(&broker, "wide", &lines);
    let second = count("counts-cp");
    assert!(
        second.contains("batch 1: 300 rows in, 10 rows out"),
        "{second}"
    );
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    let totals = rt2.block_on(async {
        let session = ember_driver::Session::builder()
            .master("local[1]")
            .build()
            .unwrap();
        let batches = query_parquet(
            &session,
            &dir.path().join("counts"),
            "SELECT CAST(max(n) AS VARCHAR) AS top, count(*) AS rows FROM out",
        )
        .await;
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    });
    assert!(totals.contains("| 60  | 20   |"), "{totals}");
    // A stream-stream join keeps its rows on the executors too: both sides are
    // hashed on the join key into the state's partitions.
    let matches = rt.block_on(stream_join_on(&driver, &dir.path().join("join-cp")));
    assert_eq!(matches, vec!["a 0-10", "b 5-12"]);
    tasks_on_executors(
        ui,
        "StreamJoinExec: inner, keys=1, batch=0, partitions=4",
        4,
    );
    drop(driver);
}

/// `sql` over the Parquet files a sink committed under `dir`, as the view `out`.
async fn query_parquet(
    session: &ember_driver::Session,
    dir: &Path,
    sql: &str,
) -> Vec<arrow::record_batch::RecordBatch> {
    session
        .read()
        .parquet(dir.to_str().unwrap())
        .await
        .unwrap()
        .create_or_replace_temp_view("out")
        .unwrap();
    session.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Checks, through the driver's REST API, that the first stage whose plan contains
/// `text` ran `n` tasks, all on executors.
fn tasks_on_executors(ui: std::net::SocketAddr, text: &str, n: usize) {
    let stages = super::ui::get_json(ui, "/api/v1/stages");
    let stage = stages
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| {
            let detail =
                super::ui::get_json(ui, &format!("/api/v1/stages/{}/{}", s["job"], s["id"]));
            detail["plan"]
                .as_str()
                .unwrap()
                .contains(text)
                .then_some(detail)
        })
        .unwrap_or_else(|| panic!("a stage runs {text}"));
    let tasks = stage["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), n, "{text}: {tasks:?}");
    assert!(
        tasks
            .iter()
            .all(|t| t["executor"].as_str().unwrap().starts_with("exec-")),
        "{tasks:?}"
    );
}

/// Impressions and clicks of ads, joined when a click comes within 10 s of its
/// impression, on `session`: the matches as `ad impression-click` (seconds).
async fn stream_join_on(session: &ember_driver::Session, checkpoint: &Path) -> Vec<String> {
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use ember_driver::functions::{col, lit};
    let side = |time: &str, rows: &[(&str, i64)]| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ad", DataType::Utf8, false),
            Field::new(
                time,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.1 * 1000),
                )),
            ],
        )
        .unwrap()
    };
    let impressions = ember_driver::stream::MemoryStream::new(side("it", &[]).schema());
    let clicks = ember_driver::stream::MemoryStream::new(side("ct", &[]).schema());
    impressions
        .add_data(side("it", &[("a", 0), ("b", 5), ("c", 6)]))
        .unwrap();
    clicks
        .add_data(side("ct", &[("a", 10), ("b", 12), ("c", 30)]))
        .unwrap();
    let stream = |s: &Arc<ember_driver::stream::MemoryStream>, time: &str, alias: &str| {
        session
            .read_stream()
            .source(s.clone())
            .unwrap()
            .with_watermark(time, "10 seconds")
            .unwrap()
            .alias(alias)
            .unwrap()
    };
    let ten = lit(datafusion::common::ScalarValue::new_interval_mdn(
        0,
        0,
        10_000_000_000,
    ));
    let q = stream(&impressions, "it", "i")
        .join_on(
            &stream(&clicks, "ct", "c"),
            vec![
                col("i.ad").eq(col("c.ad")),
                col("c.ct").between(col("i.it"), col("i.it") + ten),
            ],
            ember_driver::JoinType::Inner,
        )
        .unwrap()
        .select_expr(&[
            "i.ad || ' ' || CAST(CAST(i.it AS BIGINT) / 1000 AS VARCHAR) || '-' || CAST(CAST(c.ct AS BIGINT) / 1000 AS VARCHAR) AS m",
        ])
        .unwrap()
        .write_stream()
        .query_name("ad_matches")
        .memory()
        .checkpoint(checkpoint)
        .trigger(ember_driver::stream::Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    q.await_termination(None).await.unwrap();
    let batches = session
        .sql("SELECT m FROM ad_matches ORDER BY m")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let m = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            let m = arrow::array::AsArray::as_string::<i32>(&m).clone();
            (0..arrow::array::Array::len(&m)).map(move |i| m.value(i).to_string())
        })
        .collect()
}

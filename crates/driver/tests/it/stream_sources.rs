//! Streaming sources: the Kafka source over the wire (pattern, assignment, starting
//! offsets), JSON and CSV values, retention's data loss, the rate source and file
//! streams.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::Trigger;
use ember_log::{Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

use super::stream::{count, log_with, send};

#[tokio::test]
async fn the_kafka_source_reads_an_ember_broker_over_the_wire() {
    use ember_log::broker::{Broker, BrokerConfig};
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 120);
    let broker = Broker::start(
        log.clone(),
        BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let bootstrap = broker.address.to_string();
    let session = Session::builder().master("local[2]").build().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let run = |name: &'static str| {
        let source = ember_driver::stream::KafkaSource::new(&bootstrap, vec!["events".into()])
            .max_offsets_per_trigger(50)
            .unwrap();
        let df = session
            .read_stream()
            .source(Arc::new(source))
            .unwrap()
            .select_expr(&["CAST(key AS VARCHAR) AS k", "CAST(value AS VARCHAR) AS v"])
            .unwrap();
        let checkpoint = checkpoint.clone();
        async move {
            let q = df
                .write_stream()
                .query_name(name)
                .memory()
                .checkpoint(&checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap();
            q.await_termination(Some(Duration::from_secs(60)))
                .await
                .unwrap();
            q.recent_progress()
        }
    };
    // 120 records, at most 50 per batch over 3 partitions (16 of each partition's
    // 40): three batches, each behind the partitions' ends by what the later ones
    // read.
    let progress = run("first").await;
    assert!(progress.len() >= 3, "{} batches", progress.len());
    let lags: Vec<Option<i64>> = progress.iter().map(|p| p.source.lag_rows).collect();
    assert_eq!(lags, vec![Some(72), Some(24), Some(0)]);
    assert_eq!(count(&session, "SELECT count(*) FROM first").await, 120);
    assert_eq!(
        count(
            &session,
            "SELECT count(DISTINCT v) FROM first WHERE k LIKE 'k%'"
        )
        .await,
        120
    );
    send(&producer, 120, 10);
    run("second").await;
    assert_eq!(count(&session, "SELECT count(*) FROM second").await, 10);
    broker.stop();
}

#[tokio::test]
async fn csv_values_parse_into_columns_and_bad_lines_are_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 0);
    for v in ["a,20.5", "b,not a number", "c,31"] {
        producer
            .send(ProducerRecord::new("events", v).partition(0))
            .unwrap();
    }
    producer.flush();
    let session = Session::builder().master("local[1]").build().unwrap();
    let q = session
        .read_stream()
        .log(log, &["events"])
        .unwrap()
        .select_expr(&["value"])
        .unwrap()
        .parse_csv("value", "device STRING, temperature DOUBLE", "PERMISSIVE")
        .unwrap()
        .write_stream()
        .query_name("csv")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    q.await_termination(None).await.unwrap();
    assert_eq!(
        count(&session, "SELECT count(*) FROM csv WHERE temperature > 20").await,
        2
    );
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM csv WHERE _corrupt_record = 'b,not a number'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn json_values_parse_with_each_bad_record_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 0);
    for (i, v) in [
        r#"{"device":"a","temperature":20.5}"#,
        "garbage{",
        r#"{"device":"b","temperature":31.0}"#,
    ]
    .iter()
    .enumerate()
    {
        producer
            .send(
                ProducerRecord::new("events", v.to_string())
                    .partition(0)
                    .key(format!("{i}")),
            )
            .unwrap();
    }
    producer.flush();
    let session = Session::builder().master("local[2]").build().unwrap();
    let run = |mode: &'static str, name: &'static str| {
        let df = session
            .read_stream()
            .log(log.clone(), &["events"])
            .unwrap()
            .select_expr(&["value"])
            .unwrap()
            .parse_json("value", "device STRING, temperature DOUBLE", mode)
            .unwrap();
        let checkpoint = dir.path().join(name);
        async move {
            let q = df
                .write_stream()
                .query_name(name)
                .memory()
                .checkpoint(checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap();
            q.await_termination(None).await
        }
    };
    run("PERMISSIVE", "permissive").await.unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM permissive").await, 3);
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM permissive WHERE _corrupt_record = 'garbage{'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM permissive WHERE temperature > 30 AND device = 'b'"
        )
        .await,
        1
    );
    run("DROPMALFORMED", "dropped").await.unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM dropped").await, 2);
    let err = run("FAILFAST", "failed").await.unwrap_err().to_string();
    assert!(err.contains("garbage{"), "{err}");
}

#[tokio::test]
async fn offsets_lost_to_retention_fail_the_query_or_are_skipped_and_counted() {
    use ember_driver::stream::LogSource;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path().join("log"),
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let small = ember_log::TopicConfig {
        segment_bytes: 4096,
        retention_bytes: Some(4096),
        ..ember_log::TopicConfig::default()
    };
    log.create_topic("events", 1, Some(small)).unwrap();
    let producer = Producer::new(log.clone(), ProducerConfig::default()).unwrap();
    let send = |n: usize| {
        for i in 0..n {
            producer
                .send(ProducerRecord::new("events", format!("{i:0>100}")))
                .unwrap();
        }
        producer.flush();
    };
    send(100);
    // The same log through the Kafka protocol: its batches are read by the tasks.
    let broker = ember_log::broker::Broker::start(
        log.clone(),
        ember_log::broker::BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let bootstrap = broker.address.to_string();
    let session = Session::builder().master("local[1]").build().unwrap();
    let start = |kafka: bool, fail: bool, trigger: Trigger| {
        let source: Arc<dyn ember_driver::stream::Source> = if kafka {
            Arc::new(
                ember_driver::stream::KafkaSource::new(&bootstrap, vec!["events".into()])
                    .max_offsets_per_trigger(10)
                    .unwrap()
                    .fail_on_data_loss(fail),
            )
        } else {
            Arc::new(
                LogSource::new(log.clone(), vec!["events".into()])
                    .max_offsets_per_trigger(10)
                    .unwrap()
                    .fail_on_data_loss(fail),
            )
        };
        let name = format!(
            "{}_{}",
            if kafka { "kafka" } else { "log" },
            if fail { "strict" } else { "lenient" }
        );
        session
            .read_stream()
            .source(source)
            .unwrap()
            .write_stream()
            .query_name(&name)
            .memory()
            .checkpoint(dir.path().join(&name))
            .trigger(trigger)
            .start()
    };
    for kafka in [false, true] {
        for fail in [true, false] {
            let q = start(kafka, fail, Trigger::Once).await.unwrap();
            q.await_termination(None).await.unwrap();
        }
    }
    // Retention deletes the segments holding offsets 10.. before the queries read them.
    send(200);
    log.maintain().unwrap();
    let earliest = log.partition("events", 0).unwrap().start_offset();
    assert!(earliest > 20, "retention deleted old segments ({earliest})");

    for kafka in [false, true] {
        let q = start(kafka, true, Trigger::AvailableNow).await.unwrap();
        let err = q.await_termination(None).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("events-0 offsets 10..{earliest} were deleted")),
            "kafka: {kafka}: {err}"
        );
        let q = start(kafka, false, Trigger::AvailableNow).await.unwrap();
        q.await_termination(None).await.unwrap();
        let lost: u64 = q
            .recent_progress()
            .iter()
            .map(|p| p.source.offsets_lost)
            .sum();
        assert_eq!(lost, (earliest - 10) as u64, "kafka: {kafka}");
        // The restarted query's memory table holds what it read: all that was left.
        let table = if kafka {
            "kafka_lenient"
        } else {
            "log_lenient"
        };
        assert_eq!(
            count(&session, &format!("SELECT count(*) FROM {table}")).await,
            300 - earliest,
            "kafka: {kafka}"
        );
    }
    broker.stop();
}

#[tokio::test]
async fn the_rate_source_counts_up_at_its_rate_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::builder().master("local[1]").build().unwrap();
    let q = session
        .read_stream()
        .rate(1000)
        .unwrap()
        .write_stream()
        .query_name("ticks")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    q.stop().await.unwrap();
    let n = count(&session, "SELECT count(*) FROM ticks").await;
    assert!(
        (100..=1000).contains(&n),
        "{n} rows in about 0.4 s at 1000/s"
    );
    // Values 0..n, each once, one millisecond apart.
    assert_eq!(
        count(
            &session,
            "SELECT count(DISTINCT value) FROM ticks WHERE value < (SELECT count(*) FROM ticks)"
        )
        .await,
        n
    );
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM ticks WHERE CAST(timestamp AS BIGINT) - value <> (SELECT min(CAST(timestamp AS BIGINT)) FROM ticks)"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn the_kafka_source_subscribes_by_pattern_or_by_assignment() {
    use ember_driver::stream::KafkaSource;
    use ember_log::broker::{Broker, BrokerConfig};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), LogConfig::default()).unwrap();
    let producer = Producer::new(log.clone(), ProducerConfig::default()).unwrap();
    for topic in ["metrics-a", "metrics-b", "other"] {
        log.create_topic(topic, 2, None).unwrap();
        for p in 0..2 {
            for i in 0..5 {
                producer
                    .send(ProducerRecord::new(topic, format!("{i}")).partition(p))
                    .unwrap();
            }
        }
    }
    producer.flush();
    let broker = Broker::start(
        log.clone(),
        BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let bootstrap = broker.address.to_string();
    let session = Session::builder().master("local[1]").build().unwrap();
    let run = |source: KafkaSource, name: &'static str| {
        let df = session.read_stream().source(Arc::new(source)).unwrap();
        let checkpoint = dir.path().join(name);
        async move {
            df.write_stream()
                .query_name(name)
                .memory()
                .checkpoint(checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap()
                .await_termination(None)
                .await
                .unwrap();
        }
    };
    run(
        KafkaSource::new(&bootstrap, vec![])
            .subscribe_pattern("metrics-.*")
            .unwrap(),
        "by_pattern",
    )
    .await;
    run(
        KafkaSource::new(&bootstrap, vec![]).assign(&[("metrics-a", 1), ("other", 0)]),
        "assigned",
    )
    .await;
    let sql = |t: &str| {
        format!(
            "SELECT count(*) * 100 + count(DISTINCT topic || CAST(\"partition\" AS VARCHAR)) FROM {t} WHERE topic <> 'x'"
        )
    };
    // 4 partitions of 5 records; then 2 partitions of 5.
    assert_eq!(count(&session, &sql("by_pattern")).await, 2004);
    assert_eq!(count(&session, &sql("assigned")).await, 1002);
    assert!(
        KafkaSource::new(&bootstrap, vec![])
            .subscribe_pattern("(")
            .is_err()
    );
    // Spark's JSON of starting offsets: partition 0 from offset 3, partition 1 from
    // its latest (-1), so only p0's last two records.
    let starting =
        ember_driver::stream::StartingOffsets::parse(r#"{"metrics-a": {"0": 3, "1": -1}}"#)
            .unwrap();
    run(
        KafkaSource::new(&bootstrap, vec!["metrics-a".into()]).starting_offsets(starting),
        "from_json_offsets",
    )
    .await;
    assert_eq!(count(&session, &sql("from_json_offsets")).await, 201);
    for bad in [
        r#"{"t": 3}"#,
        r#"{"t": {"x": 1}}"#,
        r#"{"t": {"0": -5}}"#,
        "soonest",
    ] {
        let err = ember_driver::stream::StartingOffsets::parse(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("starting offsets"), "{err}");
    }
}

#[tokio::test]
async fn a_directory_of_files_streams_its_new_files_once() {
    use ember_driver::stream::FileSource;
    use ember_exec::storage::Dir;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Writers move complete files in; names starting with `_` or `.` are not data.
    let drop_file = |name: &str, lines: &[&str]| {
        let tmp = dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, lines.join("\n")).unwrap();
        std::fs::rename(&tmp, input.join(name)).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // distinct modification times
    };
    drop_file(
        "a.json",
        &[r#"{"device":"a","t":1.5}"#, r#"{"device":"b","t":2.5}"#],
    );
    drop_file("b.json", &[r#"{"device":"c","t":3.5}"#]);
    std::fs::write(input.join("_SUCCESS"), "").unwrap();
    let session = Session::builder().master("local[1]").build().unwrap();
    let start = || {
        let source = FileSource::json(Dir::Local(input.clone()), "device STRING, t DOUBLE")
            .unwrap()
            .max_files_per_trigger(1);
        session
            .read_stream()
            .source(Arc::new(source))
            .unwrap()
            .write_stream()
            .parquet(dir.path().join("out"))
            .checkpoint(dir.path().join("cp"))
            .trigger(Trigger::AvailableNow)
            .start()
    };
    let q = start().await.unwrap();
    q.await_termination(None).await.unwrap();
    assert_eq!(q.recent_progress().len(), 2, "one file per batch");
    drop_file("c.json", &[r#"{"device":"d","t":4.5}"#, "not json"]);
    drop_file("d.json", &[r#"{"device":"e","t":5.5}"#]);
    // A bad line fails the batch, naming the file; the rows before it are not lost.
    let err = start()
        .await
        .unwrap()
        .await_termination(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.json"), "{err}");
    std::fs::remove_file(input.join("c.json")).unwrap();
    drop_file("c.json", &[r#"{"device":"d","t":4.5}"#]);
    start()
        .await
        .unwrap()
        .await_termination(None)
        .await
        .unwrap();
    let out = session
        .read()
        .parquet(dir.path().join("out").to_str().unwrap())
        .await
        .unwrap();
    out.create_or_replace_temp_view("out").unwrap();
    assert_eq!(
        count(
            &session,
            "SELECT count(*) * 100 + count(DISTINCT device) FROM out"
        )
        .await,
        505
    );
}

//! A source whose offsets went back, or lie past its end: the topic deleted and
//! re-created with fewer records, or a starting offset past the end. With
//! `fail_on_data_loss` (the default) the query fails naming the partition and the
//! offsets; without it, it reads the partition again from its earliest offset,
//! every new record once, and counts the loss in its progress. Never a negative
//! row count, never records silently skipped.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::{KafkaSource, LogSource, Source, StartingOffsets, Trigger};
use ember_log::broker::{Broker, BrokerConfig};
use ember_log::{Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

use super::stream::count;

fn open_log(dir: &std::path::Path) -> Arc<Log> {
    Log::open(
        dir,
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap()
}

/// `n` records `{prefix}-{i}` to partition 0 of `events` (a new producer: the topic
/// may be new).
fn produce(log: &Arc<Log>, prefix: &str, n: usize) {
    let producer = Producer::new(log.clone(), ProducerConfig::default()).unwrap();
    for i in 0..n {
        producer
            .send(ProducerRecord::new("events", format!("{prefix}-{i}")).partition(0))
            .unwrap();
    }
    producer.flush();
}

fn source(kafka: Option<&str>, log: &Arc<Log>, fail: bool) -> Arc<dyn Source> {
    match kafka {
        Some(bootstrap) => Arc::new(
            KafkaSource::new(bootstrap, vec!["events".into()])
                .max_offsets_per_trigger(30)
                .unwrap()
                .fail_on_data_loss(fail),
        ),
        None => Arc::new(
            LogSource::new(log.clone(), vec!["events".into()])
                .max_offsets_per_trigger(30)
                .unwrap()
                .fail_on_data_loss(fail),
        ),
    }
}

#[tokio::test]
async fn a_topic_deleted_and_recreated_with_fewer_records_fails_or_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir.path().join("log"));
    log.create_topic("events", 1, None).unwrap();
    produce(&log, "old", 100);
    let broker = Broker::start(
        log.clone(),
        BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let bootstrap = broker.address.to_string();
    let session = Session::builder().master("local[2]").build().unwrap();
    let start = |kafka: bool, fail: bool, run: &str, trigger: Trigger| {
        let source = source(kafka.then_some(bootstrap.as_str()), &log, fail);
        let checkpoint = dir.path().join(format!("cp-{kafka}-{fail}"));
        let name = format!("{}_{}_{run}", if kafka { "kafka" } else { "log" }, fail);
        let df = session.read_stream().source(source).unwrap();
        async move {
            df.write_stream()
                .query_name(&name)
                .memory()
                .checkpoint(checkpoint)
                .trigger(trigger)
                .start()
                .await
                .unwrap()
        }
    };
    // Every query reads the first topic's 100 records.
    for kafka in [false, true] {
        for fail in [true, false] {
            let q = start(kafka, fail, "first", Trigger::AvailableNow).await;
            q.await_termination(None).await.unwrap();
            let rows: u64 = q.recent_progress().iter().map(|p| p.num_input_rows).sum();
            assert_eq!(rows, 100, "kafka: {kafka}, fail: {fail}");
        }
    }
    log.delete_topic("events").unwrap();
    log.create_topic("events", 1, None).unwrap();
    produce(&log, "new", 40);

    for kafka in [false, true] {
        // The default fails, naming the partition and both offsets, and the option.
        let q = start(kafka, true, "second", Trigger::AvailableNow).await;
        let err = q.await_termination(None).await.unwrap_err().to_string();
        assert!(
            err.contains("events-0 ends at offset 40, before offset 100")
                && err.contains("--fail-on-data-loss false"),
            "kafka: {kafka}: {err}"
        );
        assert!(q.recent_progress().is_empty(), "kafka: {kafka}");

        // Without it: every new record, once, from offset 0, and the loss counted
        // (as a processing-time query, which used to wait at offset 100 for ever).
        let q = start(
            kafka,
            false,
            "second",
            Trigger::ProcessingTime(Duration::from_millis(20)),
        )
        .await;
        q.process_all_available().await.unwrap();
        q.stop().await.unwrap();
        let progress = q.recent_progress();
        let events: u64 = progress.iter().map(|p| p.source.data_loss_events).sum();
        assert_eq!(events, 1, "kafka: {kafka}");
        assert_eq!(progress[0].source.start_offset.get("events", 0), Some(0));
        let rows: u64 = progress.iter().map(|p| p.num_input_rows).sum();
        assert_eq!(rows, 40, "kafka: {kafka}");
        let table = format!("{}_false_second", if kafka { "kafka" } else { "log" });
        let sql = format!(
            "SELECT count(*) * 1000 + count(DISTINCT value) FROM {table} WHERE CAST(value AS VARCHAR) LIKE 'new-%'"
        );
        assert_eq!(count(&session, &sql).await, 40_040, "kafka: {kafka}");

        // Started again, it stands at the new topic's end: nothing read twice.
        let q = start(kafka, false, "third", Trigger::AvailableNow).await;
        q.await_termination(None).await.unwrap();
        assert!(q.recent_progress().is_empty(), "kafka: {kafka}");
    }
    broker.stop();
}

#[tokio::test]
async fn starting_offsets_past_the_end_fail_or_start_from_the_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir.path().join("log"));
    log.create_topic("events", 1, None).unwrap();
    produce(&log, "r", 5);
    let broker = Broker::start(
        log.clone(),
        BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let bootstrap = broker.address.to_string();
    let session = Session::builder().master("local[1]").build().unwrap();
    let past_end = StartingOffsets::parse(r#"{"events": {"0": 2000000}}"#).unwrap();
    for kafka in [false, true] {
        for fail in [true, false] {
            let source: Arc<dyn Source> = if kafka {
                Arc::new(
                    KafkaSource::new(&bootstrap, vec!["events".into()])
                        .starting_offsets(past_end.clone())
                        .fail_on_data_loss(fail),
                )
            } else {
                Arc::new(
                    LogSource::new(log.clone(), vec!["events".into()])
                        .starting_offsets(past_end.clone())
                        .fail_on_data_loss(fail),
                )
            };
            let name = format!("past_end_{kafka}_{fail}");
            let q = session
                .read_stream()
                .source(source)
                .unwrap()
                .write_stream()
                .query_name(&name)
                .memory()
                .checkpoint(dir.path().join(&name))
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap();
            let ended = q.await_termination(None).await;
            if fail {
                let err = ended.unwrap_err().to_string();
                assert!(
                    err.contains("events-0 ends at offset 5, before offset 2000000"),
                    "kafka: {kafka}: {err}"
                );
                continue;
            }
            ended.unwrap();
            let progress = q.recent_progress();
            let rows: u64 = progress.iter().map(|p| p.num_input_rows).sum();
            let events: u64 = progress.iter().map(|p| p.source.data_loss_events).sum();
            assert_eq!((rows, events), (5, 1), "kafka: {kafka}");
            let sql = format!("SELECT count(*) FROM {name}");
            assert_eq!(count(&session, &sql).await, 5, "kafka: {kafka}");
        }
    }
    broker.stop();
}

#[tokio::test]
async fn max_offsets_per_trigger_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    for max in [0, -5] {
        let err = LogSource::new(log.clone(), vec!["events".into()])
            .max_offsets_per_trigger(max)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("max_offsets_per_trigger {max}")),
            "{err}"
        );
        let err = KafkaSource::new("127.0.0.1:9092", vec!["events".into()])
            .max_offsets_per_trigger(max)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be at least 1"), "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_kafka_sink_is_called_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir.path().join("log"));
    log.create_topic("events", 1, None).unwrap();
    produce(&log, "r", 3);
    let session = Session::builder().master("local[1]").build().unwrap();
    let q = session
        .read_stream()
        .log(log, &["events"])
        .unwrap()
        .select_expr(&["value"])
        .unwrap()
        .write_stream()
        .kafka("127.0.0.1:1", "out")
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    let err = q.await_termination(None).await.unwrap_err().to_string();
    assert!(err.contains("kafka sink: 127.0.0.1:1"), "{err}");
    assert!(!err.contains("kafka source"), "{err}");
}

//! Micro-batch streaming over the embedded log: batches, the checkpoint's
//! exactly-once restart, triggers, and the errors `start()` gives.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::{OutputMode, Trigger};
use ember_log::{Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord, RoundRobin};
use parking_lot::Mutex;

pub(crate) fn log_with(dir: &std::path::Path, records: usize) -> (Arc<Log>, Arc<Producer>) {
    let log = Log::open(
        dir,
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    log.create_topic("events", 3, None).unwrap();
    let producer = Producer::new(
        log.clone(),
        ProducerConfig {
            partitioner: Arc::new(RoundRobin::default()),
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    send(&producer, 0, records);
    (log, producer)
}

pub(crate) fn send(producer: &Producer, from: usize, n: usize) {
    for i in from..from + n {
        producer
            .send(
                ProducerRecord::new("events", format!("{i}"))
                    .key(format!("k{}", i % 7))
                    .header("origin", format!("test-{i}")),
            )
            .unwrap();
    }
    producer.flush();
}

pub(crate) async fn count(session: &Session, sql: &str) -> i64 {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    let column = batches[0].column(0);
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(column).value(0)
}

#[tokio::test]
async fn a_filtered_stream_reaches_a_memory_table_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 1000);
    let session = Session::builder().master("local[2]").build().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let query = |session: &Session| {
        let df = session
            .read_stream()
            .log(log.clone(), &["events"])
            .unwrap()
            .select_expr(&["CAST(value AS VARCHAR) AS v", "partition", "offset"])
            .unwrap()
            .filter_expr("CAST(v AS BIGINT) % 2 = 0")
            .unwrap();
        df.write_stream()
            .query_name("evens")
            .memory()
            .checkpoint(&checkpoint)
            .trigger(Trigger::AvailableNow)
    };
    let first = query(&session).start().await.unwrap();
    assert!(
        first
            .await_termination(Some(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert_eq!(count(&session, "SELECT count(*) FROM evens").await, 500);
    let progress = first.last_progress().unwrap();
    assert_eq!(progress.num_input_rows, 1000);
    assert_eq!(progress.sink.num_output_rows, 500);
    let id = first.id().to_string();
    drop(first);

    // More data; the same checkpoint: only the new rows are read.
    send(&producer, 1000, 300);
    let session2 = Session::builder().master("local[2]").build().unwrap();
    let second = query(&session2).start().await.unwrap();
    assert!(
        second
            .await_termination(Some(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert_eq!(second.id(), id, "the query keeps its id across restarts");
    assert_eq!(count(&session2, "SELECT count(*) FROM evens").await, 150);
    let p = second.last_progress().unwrap();
    assert_eq!(p.batch_id, 1);
    assert_eq!(
        p.source
            .start_offset
            .rows_until(&p.source.end_offset)
            .unwrap(),
        300
    );
}

#[tokio::test]
async fn an_uncommitted_batch_runs_again_with_the_same_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 90);
    let session = Session::builder().master("local[2]").build().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let seen: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let start = |fail_batch: Option<u64>| {
        let seen = seen.clone();
        session
            .read_stream()
            .log(log.clone(), &["events"])
            .unwrap()
            .write_stream()
            .checkpoint(&checkpoint)
            .trigger(Trigger::AvailableNow)
            .foreach_batch(move |df, batch_id| {
                let seen = seen.clone();
                async move {
                    let rows = df.count().await?;
                    seen.lock().push((batch_id, rows));
                    if Some(batch_id) == fail_batch {
                        return Err(ember_driver::EmberError::Internal("sink down".into()));
                    }
                    Ok(())
                }
            })
            .start()
    };
    let q = start(None).await.unwrap();
    q.await_termination(None).await.unwrap();
    drop(q);
    send(&producer, 90, 60);
    // The sink fails on batch 1: the query fails, batch 1 stays uncommitted.
    let q = start(Some(1)).await.unwrap();
    let err = q.await_termination(None).await.unwrap_err().to_string();
    assert!(err.contains("sink down"), "{err}");
    drop(q);
    send(&producer, 150, 30);
    let q = start(None).await.unwrap();
    q.await_termination(None).await.unwrap();
    // Batch 1 again, with exactly its 60 rows; then the 30 new ones as batch 2.
    assert_eq!(*seen.lock(), vec![(0, 90), (1, 60), (1, 60), (2, 30)]);
}

#[tokio::test]
async fn a_running_query_picks_up_new_records_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 10);
    let session = Session::builder().master("local[2]").build().unwrap();
    let q = session
        .read_stream()
        .log(log.clone(), &["events"])
        .unwrap()
        .write_stream()
        .query_name("live")
        .memory()
        .checkpoint(dir.path().join("checkpoint"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    q.process_all_available().await.unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM live").await, 10);
    send(&producer, 10, 25);
    q.process_all_available().await.unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM live").await, 35);
    // Each record's headers are a list of {key, value}.
    assert_eq!(
        count(
            &session,
            "SELECT count(*) FROM live WHERE headers[1]['key'] = 'origin' AND CAST(headers[1]['value'] AS VARCHAR) = 'test-' || CAST(value AS VARCHAR)"
        )
        .await,
        35
    );
    assert!(q.is_active());
    assert!(q.recent_progress().len() >= 2);
    q.stop().await.unwrap();
    assert!(!q.is_active());
    assert_eq!(q.status().message, "Stopped");
}

#[tokio::test]
async fn start_refuses_what_it_cannot_run_and_a_second_query_on_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _producer) = log_with(&dir.path().join("log"), 5);
    let session = Session::builder().master("local[2]").build().unwrap();
    let stream = session.read_stream().log(log.clone(), &["events"]).unwrap();
    let checkpoint = dir.path().join("checkpoint");
    // An aggregation's groups are never final without a watermark and a window, so
    // Append (the default) is refused, as in Spark.
    let agg = stream
        .group_by(vec![ember_driver::col("partition")])
        .count()
        .unwrap();
    let err = agg
        .write_stream()
        .memory()
        .checkpoint(&checkpoint)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("needs with_watermark"), "{err}");
    let err = stream
        .write_stream()
        .memory()
        .output_mode(OutputMode::Complete)
        .checkpoint(&checkpoint)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Complete output mode"), "{err}");
    // A batch action on a stream says how to run it.
    let err = stream.collect().await.unwrap_err().to_string();
    assert!(err.contains("write_stream().start()"), "{err}");
    // Two queries, one checkpoint directory.
    let running = stream
        .write_stream()
        .memory()
        .checkpoint(&checkpoint)
        .trigger(Trigger::ProcessingTime(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    let err = stream
        .write_stream()
        .console()
        .checkpoint(&checkpoint)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another streaming query"), "{err}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_parquet_sink_writes_each_batch_once_and_readers_see_only_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let (log, producer) = log_with(&dir.path().join("log"), 200);
    let session = Session::builder().master("local[2]").build().unwrap();
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint");
    let run = || async {
        let q = session
            .read_stream()
            .log(log.clone(), &["events"])
            .unwrap()
            .select_expr(&["CAST(value AS VARCHAR) AS v", "offset"])
            .unwrap()
            .write_stream()
            .parquet(&out)
            .checkpoint(&checkpoint)
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        q.await_termination(None).await.unwrap();
    };
    run().await;
    // A crash after the sink wrote batch 0 but before its commit: the re-run must not
    // add its rows again.
    std::fs::remove_file(checkpoint.join("commits/0")).unwrap();
    // And a file a crashed batch left half-written, listed nowhere.
    std::fs::write(out.join("part-999999-0.parquet"), b"torn").unwrap();
    send(&producer, 200, 50);
    run().await;
    let rows = session
        .read()
        .parquet(out.to_str().unwrap())
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(rows, 250);
}

#[tokio::test]
async fn a_memory_stream_feeds_a_query_batch_by_batch() {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("reading", DataType::Int64, false),
    ]));
    let rows = |devices: Vec<&str>, readings: Vec<i64>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(devices)),
                Arc::new(Int64Array::from(readings)),
            ],
        )
        .unwrap()
    };
    let stream = ember_driver::stream::MemoryStream::new(schema.clone());
    stream.add_data(rows(vec!["a", "b"], vec![1, 50])).unwrap();
    let session = Session::builder().master("local[1]").build().unwrap();
    session
        .read_stream()
        .register("readings", stream.clone())
        .unwrap();
    let q = session
        .sql("SELECT device, reading * 2 AS doubled FROM readings WHERE reading > 10")
        .await
        .unwrap()
        .write_stream()
        .query_name("high")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(20)))
        .start()
        .await
        .unwrap();
    q.process_all_available().await.unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM high").await, 1);
    stream
        .add_data(rows(vec!["c", "d", "e"], vec![11, 2, 99]))
        .unwrap();
    q.process_all_available().await.unwrap();
    assert_eq!(
        count(&session, "SELECT sum(doubled) FROM high").await,
        100 + 22 + 198
    );
    // Rows of another shape are refused.
    let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let bad = RecordBatch::try_new(other, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
    assert!(stream.add_data(bad).is_err());
    q.stop().await.unwrap();
}

#[tokio::test]
async fn log_and_kafka_sinks_write_rows_as_keyed_records() {
    use ember_log::broker::{Broker, BrokerConfig};
    let dir = tempfile::tempdir().unwrap();
    let (input, producer) = log_with(&dir.path().join("in"), 0);
    for i in 0..100 {
        producer
            .send(ProducerRecord::new("events", format!("reading {i}")).key(format!("d{}", i % 5)))
            .unwrap();
    }
    producer.flush();
    let output = Log::open(dir.path().join("out"), LogConfig::default()).unwrap();
    output.create_topic("copies", 3, None).unwrap();
    let broker = Broker::start(
        output.clone(),
        BrokerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    output.create_topic("wire", 3, None).unwrap();
    let session = Session::builder().master("local[1]").build().unwrap();
    let upper = || {
        session
            .read_stream()
            .log(input.clone(), &["events"])
            .unwrap()
            .select_expr(&["key", "upper(CAST(value AS VARCHAR)) AS value"])
            .unwrap()
    };
    let to_log = upper()
        .write_stream()
        .log(output.clone(), "copies")
        .unwrap()
        .checkpoint(dir.path().join("cp-log"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    to_log.await_termination(None).await.unwrap();
    let to_kafka = upper()
        .write_stream()
        .kafka(&broker.address.to_string(), "wire")
        .checkpoint(dir.path().join("cp-kafka"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    to_kafka.await_termination(None).await.unwrap();
    for topic in ["copies", "wire"] {
        let mut seen = vec![];
        for p in 0..3 {
            let end = output.partition(topic, p).unwrap().end_offset();
            for r in ember_log::read_range(&output, topic, p, 0, end).unwrap() {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                // Same key, same partition: the Java producer's murmur2 choice.
                assert_eq!(
                    ember_log::partition_for_key(key.as_bytes(), 3) as i32,
                    p,
                    "{topic}"
                );
                assert_eq!(r.headers[0].0, "ember.batch");
                seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        seen.sort();
        let mut want: Vec<String> = (0..100).map(|i| format!("READING {i}")).collect();
        want.sort();
        assert_eq!(seen, want, "{topic}");
    }
    // A query without a value column is refused with the columns it has.
    let err = session
        .read_stream()
        .log(input.clone(), &["events"])
        .unwrap()
        .select_expr(&["key"])
        .unwrap()
        .write_stream()
        .log(output.clone(), "copies")
        .unwrap()
        .checkpoint(dir.path().join("cp-bad"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap()
        .await_termination(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs a 'value' column; the query gives key"),
        "{err}"
    );
}

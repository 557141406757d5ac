//! Micro-batch streaming over the embedded log: batches, the checkpoint's
//! exactly-once restart, triggers, and the errors `start()` gives.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::{OutputMode, Trigger};
use ember_log::{Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord, RoundRobin};
use parking_lot::Mutex;

fn log_with(dir: &std::path::Path, records: usize) -> (Arc<Log>, Arc<Producer>) {
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

fn send(producer: &Producer, from: usize, n: usize) {
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

async fn count(session: &Session, sql: &str) -> i64 {
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
    assert_eq!(p.source.start_offset.rows_until(&p.source.end_offset), 300);
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
            .max_offsets_per_trigger(50);
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
            q.recent_progress().len()
        }
    };
    // 120 records, at most 50 per batch over 3 partitions (17 each): several batches.
    let batches = run("first").await;
    assert!(batches >= 3, "{batches} batches");
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

/// Sensor readings: (device, event time in seconds, temperature).
fn readings(rows: &[(&str, i64, f64)]) -> arrow::record_batch::RecordBatch {
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    arrow::record_batch::RecordBatch::try_new(
        readings_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.1 * 1000),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

fn readings_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("temp", DataType::Float64, false),
    ]))
}

/// 10-second windows per device with a 5-second watermark: count and average.
fn tumbling_counts(stream: ember_driver::DataFrame) -> ember_driver::DataFrame {
    use ember_driver::functions::{avg, col, count_all, get_field, window};
    stream
        .with_watermark("ts", "5 seconds")
        .unwrap()
        .group_by(vec![
            window(col("ts"), "10 seconds").alias("w"),
            col("device"),
        ])
        .agg(vec![
            count_all().alias("n"),
            avg(col("temp")).alias("avg_temp"),
        ])
        .unwrap()
        .select(vec![
            get_field(col("w"), "start").alias("window_start"),
            get_field(col("w"), "end").alias("window_end"),
            col("device"),
            col("n"),
            col("avg_temp"),
        ])
        .unwrap()
}

/// The memory table's rows as `start-end device count avg` lines, sorted.
async fn windows(session: &Session, table: &str) -> Vec<String> {
    let sql = format!(
        "SELECT CAST(CAST(window_start AS BIGINT) / 1000 AS VARCHAR) || '-' || CAST(CAST(window_end AS BIGINT) / 1000 AS VARCHAR) || ' ' || device || ' ' || CAST(n AS VARCHAR) || ' ' || CAST(avg_temp AS VARCHAR) FROM {table}"
    );
    lines(session, &sql).await
}

#[tokio::test]
async fn windows_with_a_watermark_give_the_known_answers_in_each_output_mode() {
    // 10 s tumbling windows, 5 s watermark delay. Batch 2 has an out-of-order row
    // (a@8, still on time) and a late one (a@2, behind the watermark of 7: dropped).
    let batches = [
        readings(&[("a", 1, 10.0), ("a", 3, 20.0), ("b", 12, 5.0)]),
        readings(&[("a", 8, 30.0), ("a", 2, 99.0), ("b", 25, 1.0)]),
        readings(&[("c", 40, 7.0)]),
    ];
    let expected: [(OutputMode, [Vec<&str>; 3]); 3] = [
        (
            OutputMode::Append,
            [
                vec![],
                vec!["0-10 a 3 20.0", "10-20 b 1 5.0"],
                vec!["0-10 a 3 20.0", "10-20 b 1 5.0", "20-30 b 1 1.0"],
            ],
        ),
        (
            OutputMode::Update,
            [
                vec!["0-10 a 2 15.0", "10-20 b 1 5.0"],
                vec![
                    "0-10 a 2 15.0",
                    "0-10 a 3 20.0",
                    "10-20 b 1 5.0",
                    "20-30 b 1 1.0",
                ],
                vec![
                    "0-10 a 2 15.0",
                    "0-10 a 3 20.0",
                    "10-20 b 1 5.0",
                    "20-30 b 1 1.0",
                    "40-50 c 1 7.0",
                ],
            ],
        ),
        (
            OutputMode::Complete,
            [
                vec!["0-10 a 2 15.0", "10-20 b 1 5.0"],
                vec!["0-10 a 3 20.0", "10-20 b 1 5.0", "20-30 b 1 1.0"],
                vec![
                    "0-10 a 3 20.0",
                    "10-20 b 1 5.0",
                    "20-30 b 1 1.0",
                    "40-50 c 1 7.0",
                ],
            ],
        ),
    ];
    for (mode, per_batch) in expected {
        let dir = tempfile::tempdir().unwrap();
        let stream = ember_driver::stream::MemoryStream::new(readings_schema());
        let session = Session::builder().master("local[1]").build().unwrap();
        let q = tumbling_counts(session.read_stream().source(stream.clone()).unwrap())
            .write_stream()
            .query_name("w")
            .memory()
            .output_mode(mode)
            .checkpoint(dir.path().join("cp"))
            .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
            .start()
            .await
            .unwrap();
        for (batch, want) in batches.iter().zip(per_batch) {
            stream.add_data(batch.clone()).unwrap();
            q.process_all_available().await.unwrap();
            assert_eq!(windows(&session, "w").await, want, "{mode:?}");
        }
        let late: usize = q
            .recent_progress()
            .iter()
            .map(|p| p.late_rows_dropped)
            .sum();
        assert_eq!(late, 1, "{mode:?}");
        q.stop().await.unwrap();
    }
}

#[tokio::test]
async fn window_state_survives_a_restart_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let stream = ember_driver::stream::MemoryStream::new(readings_schema());
    let start = |session: &Session| {
        tumbling_counts(session.read_stream().source(stream.clone()).unwrap())
            .write_stream()
            .query_name("w")
            .memory()
            .checkpoint(dir.path().join("cp"))
            .trigger(Trigger::AvailableNow)
            .start()
    };
    let session = Session::builder().master("local[1]").build().unwrap();
    stream
        .add_data(readings(&[("a", 1, 10.0), ("a", 3, 20.0)]))
        .unwrap();
    start(&session)
        .await
        .unwrap()
        .await_termination(None)
        .await
        .unwrap();
    assert!(
        windows(&session, "w").await.is_empty(),
        "window 0-10 still open"
    );
    // A new run: the open window's partial state comes from the checkpoint.
    stream
        .add_data(readings(&[("a", 9, 30.0), ("b", 30, 1.0)]))
        .unwrap();
    let session = Session::builder().master("local[1]").build().unwrap();
    let q = start(&session).await.unwrap();
    q.await_termination(None).await.unwrap();
    assert_eq!(windows(&session, "w").await, vec!["0-10 a 3 20.0"]);
    let p = q.last_progress().unwrap();
    assert_eq!(p.state.rows_total, 1, "20-30 b stays open");
    assert_eq!(
        p.watermark_ms,
        Some(-2000),
        "the watermark batch 1 reached (3 s - 5 s)"
    );
}

/// The rows of a query over the session, as sorted strings.
async fn lines(session: &Session, sql: &str) -> Vec<String> {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = arrow::array::AsArray::as_string::<i32>(&c).clone();
            (0..arrow::array::Array::len(&c))
                .map(move |i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

/// `start-end device n` for a table with a window struct `w`, a device and a count.
async fn window_counts(session: &Session, table: &str) -> Vec<String> {
    lines(
        session,
        &format!(
            "SELECT CAST(CAST(w['start'] AS BIGINT) / 1000 AS VARCHAR) || '-' || CAST(CAST(w['end'] AS BIGINT) / 1000 AS VARCHAR) || ' ' || device || ' ' || CAST(n AS VARCHAR) FROM {table}"
        ),
    )
    .await
}

#[tokio::test]
async fn sliding_and_session_windows_give_the_known_answers() {
    use ember_driver::functions::{col, count_all, session_window, sliding_window};
    // Batch 1 moves the watermark to 12 - 5 = 7, batch 2 to 25. a@8 is on time in
    // batch 2 and joins a's sessions [1, 9) and [12, 17) into one.
    let batches = [
        readings(&[("a", 1, 0.0), ("a", 4, 0.0), ("a", 12, 0.0), ("b", 2, 0.0)]),
        readings(&[("a", 8, 0.0), ("a", 30, 0.0)]),
    ];
    let cases = [
        (
            sliding_window(col("ts"), "10 seconds", "5 seconds"),
            vec![
                vec!["-5-5 a 2", "-5-5 b 1"],
                vec![
                    "-5-5 a 2",
                    "-5-5 b 1",
                    "0-10 a 3",
                    "0-10 b 1",
                    "10-20 a 1",
                    "5-15 a 2",
                ],
            ],
        ),
        (
            session_window(col("ts"), "5 seconds"),
            vec![vec!["2-7 b 1"], vec!["1-17 a 4", "2-7 b 1"]],
        ),
    ];
    for (window, per_batch) in cases {
        let dir = tempfile::tempdir().unwrap();
        let stream = ember_driver::stream::MemoryStream::new(readings_schema());
        let session = Session::builder().master("local[1]").build().unwrap();
        let q = session
            .read_stream()
            .source(stream.clone())
            .unwrap()
            .with_watermark("ts", "5 seconds")
            .unwrap()
            .group_by(vec![window.alias("w"), col("device")])
            .agg(vec![count_all().alias("n")])
            .unwrap()
            .write_stream()
            .query_name("w")
            .memory()
            .checkpoint(dir.path().join("cp"))
            .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
            .start()
            .await
            .unwrap();
        for (batch, want) in batches.iter().zip(per_batch) {
            stream.add_data(batch.clone()).unwrap();
            q.process_all_available().await.unwrap();
            assert_eq!(window_counts(&session, "w").await, want);
        }
        q.stop().await.unwrap();
    }
}

#[tokio::test]
async fn streaming_sql_aggregates_by_key_and_by_window() {
    let dir = tempfile::tempdir().unwrap();
    let stream = ember_driver::stream::MemoryStream::new(readings_schema());
    let session = Session::builder().master("local[2]").build().unwrap();
    session.read_stream().register("r", stream.clone()).unwrap();
    // Per key, no window: every batch replaces the table with the totals so far.
    let totals = session
        .sql("SELECT device, count(*) AS n, max(temp) AS hottest, sum(temp) AS total FROM r GROUP BY device ORDER BY device")
        .await
        .unwrap()
        .write_stream()
        .query_name("totals")
        .memory()
        .output_mode(OutputMode::Complete)
        .checkpoint(dir.path().join("totals"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    // By window, with the watermark in SQL.
    let windows = session
        .sql("SELECT window(ts, '10 seconds') AS w, device, count(*) AS n FROM r WHERE with_watermark(ts, '5 seconds') AND temp > 0 GROUP BY window(ts, '10 seconds'), device")
        .await
        .unwrap()
        .write_stream()
        .query_name("windows")
        .memory()
        .checkpoint(dir.path().join("windows"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    let totals_sql = "SELECT device || ' ' || CAST(n AS VARCHAR) || ' ' || CAST(hottest AS VARCHAR) || ' ' || CAST(total AS VARCHAR) FROM totals";
    stream
        .add_data(readings(&[("a", 1, 10.0), ("b", 2, 5.0), ("a", 3, 20.0)]))
        .unwrap();
    totals.process_all_available().await.unwrap();
    windows.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, totals_sql).await,
        vec!["a 2 20.0 30.0", "b 1 5.0 5.0"]
    );
    assert!(window_counts(&session, "windows").await.is_empty());
    stream
        .add_data(readings(&[("a", 21, 1.0), ("c", 22, -1.0)]))
        .unwrap();
    totals.process_all_available().await.unwrap();
    windows.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, totals_sql).await,
        vec!["a 3 20.0 31.0", "b 1 5.0 5.0", "c 1 -1.0 -1.0"]
    );
    // The watermark is 16 now: window 0-10 is final; c's row was filtered out.
    assert_eq!(
        window_counts(&session, "windows").await,
        vec!["0-10 a 2", "0-10 b 1"]
    );
    assert_eq!(windows.last_progress().unwrap().watermark_ms, Some(-2000));
    totals.stop().await.unwrap();
    windows.stop().await.unwrap();
}

#[tokio::test]
async fn drop_duplicates_forgets_keys_the_watermark_passed() {
    let dir = tempfile::tempdir().unwrap();
    let stream = ember_driver::stream::MemoryStream::new(readings_schema());
    let session = Session::builder().master("local[1]").build().unwrap();
    let q = session
        .read_stream()
        .source(stream.clone())
        .unwrap()
        .with_watermark("ts", "5 seconds")
        .unwrap()
        .drop_duplicates(Some(&["device"]))
        .unwrap()
        .write_stream()
        .query_name("firsts")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    let sql = "SELECT device || '@' || CAST(CAST(ts AS BIGINT) / 1000 AS VARCHAR) FROM firsts";
    // x@3 repeats x in the batch; x@4 in the next. y@20 moves the watermark to 15,
    // which forgets x and y@2: x@16 is new again, y@3 is late.
    let batches = [
        readings(&[("x", 1, 0.0), ("y", 2, 0.0), ("x", 3, 0.0)]),
        readings(&[("x", 4, 0.0), ("z", 20, 0.0)]),
        readings(&[("x", 16, 0.0), ("y", 3, 0.0)]),
    ];
    for batch in batches {
        stream.add_data(batch).unwrap();
        q.process_all_available().await.unwrap();
    }
    assert_eq!(
        lines(&session, sql).await,
        vec!["x@1", "x@16", "y@2", "z@20"]
    );
    let p = q.recent_progress();
    assert_eq!(p.iter().map(|p| p.late_rows_dropped).sum::<usize>(), 1);
    assert_eq!(p.last().unwrap().state.rows_total, 2, "x@16 and z@20");
    q.stop().await.unwrap();
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
    let session = Session::builder().master("local[1]").build().unwrap();
    let start = |fail: bool, trigger: Trigger| {
        let source = LogSource::new(log.clone(), vec!["events".into()])
            .max_offsets_per_trigger(10)
            .fail_on_data_loss(fail);
        session
            .read_stream()
            .source(Arc::new(source))
            .unwrap()
            .write_stream()
            .query_name(if fail { "strict" } else { "lenient" })
            .memory()
            .checkpoint(dir.path().join(format!("cp-{fail}")))
            .trigger(trigger)
            .start()
    };
    for fail in [true, false] {
        let q = start(fail, Trigger::Once).await.unwrap();
        q.await_termination(None).await.unwrap();
    }
    // Retention deletes the segments holding offsets 10.. before the queries read them.
    send(200);
    log.maintain().unwrap();
    let earliest = log.partition("events", 0).unwrap().start_offset();
    assert!(earliest > 20, "retention deleted old segments ({earliest})");

    let q = start(true, Trigger::AvailableNow).await.unwrap();
    let err = q.await_termination(None).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("events-0 offsets 10..{earliest} were deleted")),
        "{err}"
    );
    let q = start(false, Trigger::AvailableNow).await.unwrap();
    q.await_termination(None).await.unwrap();
    let lost: i64 = q
        .recent_progress()
        .iter()
        .map(|p| p.source.offsets_lost)
        .sum();
    assert_eq!(lost, earliest - 10);
    // The restarted query's memory table holds what it read: all that was left.
    assert_eq!(
        count(&session, "SELECT count(*) FROM lenient").await,
        300 - earliest
    );
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
}

#[tokio::test]
async fn a_directory_of_files_streams_its_new_files_once() {
    use ember_driver::stream::FileSource;
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
        let source = FileSource::json(&input, "device STRING, t DOUBLE")
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

/// `(key, event time in seconds)` rows of a schema `{name} STRING, {time} TIMESTAMP`.
fn events(key: &str, time: &str, rows: &[(&str, i64)]) -> arrow::record_batch::RecordBatch {
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    arrow::record_batch::RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(key, DataType::Utf8, false),
            Field::new(
                time,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.1 * 1000),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn two_streams_join_within_a_time_bound_and_forget_what_cannot_match() {
    use ember_driver::JoinType;
    use ember_driver::functions::{col, lit};
    let dir = tempfile::tempdir().unwrap();
    let impressions = ember_driver::stream::MemoryStream::new(events("ad", "it", &[]).schema());
    let clicks = ember_driver::stream::MemoryStream::new(events("ad", "ct", &[]).schema());
    let session = Session::builder().master("local[1]").build().unwrap();
    let i = session
        .read_stream()
        .source(impressions.clone())
        .unwrap()
        .with_watermark("it", "10 seconds")
        .unwrap()
        .alias("i")
        .unwrap();
    let c = session
        .read_stream()
        .source(clicks.clone())
        .unwrap()
        .with_watermark("ct", "10 seconds")
        .unwrap()
        .alias("c")
        .unwrap();
    // A click matches an impression of its ad within 20 seconds after it.
    let twenty = lit(datafusion::common::ScalarValue::new_interval_mdn(
        0,
        0,
        20_000_000_000,
    ));
    let start = || {
        i.join_on(
            &c,
            vec![
                col("i.ad").eq(col("c.ad")),
                col("c.ct").between(col("i.it"), col("i.it") + twenty.clone()),
            ],
            JoinType::Inner,
        )
        .unwrap()
        .select_expr(&[
            "i.ad || ' ' || CAST(CAST(i.it AS BIGINT) / 1000 AS VARCHAR) || '-' || CAST(CAST(c.ct AS BIGINT) / 1000 AS VARCHAR) AS m",
        ])
        .unwrap()
        .write_stream()
        .query_name("matches")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
        .start()
    };
    let q = start().await.unwrap();
    let step = |imp: &[(&str, i64)], clk: &[(&str, i64)]| {
        if !imp.is_empty() {
            impressions.add_data(events("ad", "it", imp)).unwrap();
        }
        if !clk.is_empty() {
            clicks.add_data(events("ad", "ct", clk)).unwrap();
        }
    };
    step(&[("a", 0), ("b", 5)], &[]);
    q.process_all_available().await.unwrap();
    // b's click comes 25 s after its impression: too late to match.
    step(&[], &[("a", 10), ("b", 30)]);
    q.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, "SELECT m FROM matches").await,
        vec!["a 0-10"]
    );
    // A restart: the kept impressions come back from the checkpoint's state.
    q.stop().await.unwrap();
    let q = start().await.unwrap();
    step(&[("c", 40)], &[("c", 45), ("a", 15)]);
    q.process_all_available().await.unwrap();
    // The watermark is now min(40, 45) - 10 = 30: impressions before 10 s and clicks
    // before 30 s can match nothing more and are gone; a click at 25 s is late.
    let kept = q.last_progress().unwrap().state.rows_total;
    step(&[], &[("a", 25)]);
    q.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, "SELECT m FROM matches").await,
        vec!["a 0-15", "c 40-45"],
        "the restarted query's table"
    );
    assert_eq!(kept, 3, "c@40 on the left, b@30 and c@45 on the right");
    let late: usize = q
        .recent_progress()
        .iter()
        .map(|p| p.late_rows_dropped)
        .sum();
    assert_eq!(late, 1);
    q.stop().await.unwrap();
    // Append only, and the sides need their watermarks.
    let err = session
        .read_stream()
        .source(impressions.clone())
        .unwrap()
        .alias("i")
        .unwrap()
        .join_on(&c, vec![col("i.ad").eq(col("c.ad"))], JoinType::Inner)
        .unwrap()
        .write_stream()
        .memory()
        .checkpoint(dir.path().join("cp2"))
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("with_watermark on its left side"), "{err}");
}

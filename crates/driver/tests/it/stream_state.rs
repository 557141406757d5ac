//! Stateful streaming: windows with watermarks in every output mode, sliding and
//! session windows, SQL aggregations and deduplication, on hand-made event sequences
//! with known answers; and their state in an object store.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::{OutputMode, Trigger};

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
    let p = q.recent_progress();
    assert_eq!(p.last().unwrap().state.rows_total, 1, "30-40 b stays open");
    // Batch 2 read the rows at the watermark batch 0 reached (3 s - 5 s); batch 3,
    // without new rows, emitted the window at the watermark batch 2 reached (30 - 5).
    let marks: Vec<_> = p
        .iter()
        .map(|p| (p.batch_id, p.num_input_rows, p.watermark_ms))
        .collect();
    assert_eq!(marks, vec![(2, 2, Some(-2000)), (3, 0, Some(25_000))]);
}

/// The rows of a query over the session, as sorted strings.
pub(crate) async fn lines(session: &Session, sql: &str) -> Vec<String> {
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
    // They came out of a batch without new rows, run because the watermark moved.
    let last = windows.last_progress().unwrap();
    assert_eq!((last.num_input_rows, last.watermark_ms), (0, Some(16_000)));
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

/// `rclone serve webdav` over a directory, on a free port of 127.0.0.1.
pub(crate) struct WebDav {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Drop for WebDav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn serve_webdav(root: &std::path::Path) -> WebDav {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("rclone")
        .args(["serve", "webdav", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rclone (Debian package rclone) serves WebDAV");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rclone listens"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    WebDav {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn a_checkpoint_in_an_object_store_keeps_offsets_and_state_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let dav = serve_webdav(root.path());
    let checkpoint = format!("{}/queries/w", dav.url);
    let stream = ember_driver::stream::MemoryStream::new(readings_schema());
    let start = |session: &Session, trigger| {
        tumbling_counts(session.read_stream().source(stream.clone()).unwrap())
            .write_stream()
            .query_name("w")
            .memory()
            .checkpoint(&checkpoint)
            .trigger(trigger)
            .start()
    };
    stream
        .add_data(readings(&[("a", 1, 10.0), ("a", 3, 20.0), ("b", 4, 1.0)]))
        .unwrap();
    let session = Session::builder().master("local[2]").build().unwrap();
    let every = Trigger::ProcessingTime(Duration::from_millis(10));
    let q = start(&session, every).await.unwrap();
    q.process_all_available().await.unwrap();
    // The lease in the store keeps a second query off the directory meanwhile.
    let err = start(&session, every).await.err().map(|e| e.to_string());
    q.stop().await.unwrap();
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("another streaming query")),
        "{err:?}"
    );
    assert!(windows(&session, "w").await.is_empty(), "0-10 is open");
    let stored = |rel: &str| root.path().join("queries/w").join(rel).exists();
    assert!(stored("metadata") && stored("offsets/0") && stored("commits/0"));
    assert!(stored("state/0/_layout"));
    assert!(
        (0..4).all(|p| stored(&format!("state/0/{p}/0.snapshot"))),
        "each partition's version 0 is in the store"
    );
    assert!(!stored("lock"), "a stopped query gives its lease up");
    // A restart: the open window's partial counts come back from the store. (Named
    // by another host name, the directory is new to this process's memory, so its
    // tasks read the state from the store, as another process's would.)
    stream
        .add_data(readings(&[("a", 9, 30.0), ("c", 30, 5.0)]))
        .unwrap();
    let checkpoint = checkpoint.replace("127.0.0.1", "localhost");
    let start = |session: &Session, trigger| {
        tumbling_counts(session.read_stream().source(stream.clone()).unwrap())
            .write_stream()
            .query_name("w")
            .memory()
            .checkpoint(&checkpoint)
            .trigger(trigger)
            .start()
    };
    let session = Session::builder().master("local[2]").build().unwrap();
    let q = start(&session, Trigger::AvailableNow).await.unwrap();
    q.await_termination(None).await.unwrap();
    assert_eq!(
        windows(&session, "w").await,
        vec!["0-10 a 3 20.0", "0-10 b 1 1.0"]
    );
    // A bad location is an error that names it, before anything runs.
    let err = tumbling_counts(session.read_stream().source(stream.clone()).unwrap())
        .write_stream()
        .memory()
        .checkpoint("ftp://127.0.0.1/cp")
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("ftp://127.0.0.1/cp") && err.contains("not supported"),
        "{err}"
    );
}

//! Stream-stream joins: inner joins within a time bound, outer joins that emit the
//! rows that never matched, and JSON streams of the log, on hand-made events with
//! known answers.

use std::sync::Arc;
use std::time::Duration;

use ember_driver::Session;
use ember_driver::stream::{OutputMode, Trigger};

use super::stream_state::lines;

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
    // The next batch's watermark is min(40, 45) - 10 = 30: a click at 25 s is late,
    // and impressions before 10 s and clicks before 30 s, which can match nothing
    // more, are gone.
    step(&[], &[("a", 25)]);
    q.process_all_available().await.unwrap();
    let kept = q.last_progress().unwrap().state.rows_total;
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

#[tokio::test]
async fn json_streams_from_the_log_join_as_the_readme_shows() {
    use datafusion::common::ScalarValue;
    use ember_driver::JoinType;
    use ember_driver::functions::{col, lit};
    use ember_log::{Log, LogConfig, Producer, ProducerConfig, ProducerRecord};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), LogConfig::default()).unwrap();
    log.create_topic("impressions", 2, None).unwrap();
    log.create_topic("clicks", 2, None).unwrap();
    let producer = Producer::new(log.clone(), ProducerConfig::default()).unwrap();
    let send = |topic: &str, json: String| {
        producer.send(ProducerRecord::new(topic, json)).unwrap();
    };
    for (ad, it) in [("a", 0), ("b", 1000), ("c", 2000)] {
        send("impressions", format!(r#"{{"ad":"{ad}","it":{it}}}"#));
    }
    // a is clicked in time, b too late, c twice; one click is garbage.
    for (ad, ct) in [("a", 5000), ("b", 30000), ("c", 3000), ("c", 9000)] {
        send("clicks", format!(r#"{{"ad":"{ad}","ct":{ct}}}"#));
    }
    send("clicks", "not json".into());
    producer.flush();
    let session = Session::builder().master("local[2]").build().unwrap();
    let impressions = session
        .read_stream()
        .log(log.clone(), &["impressions"])
        .unwrap()
        .parse_json("value", "ad STRING, it TIMESTAMP", "DROPMALFORMED")
        .unwrap()
        .with_watermark("it", "10 seconds")
        .unwrap()
        .alias("i")
        .unwrap();
    let clicks = session
        .read_stream()
        .log(log.clone(), &["clicks"])
        .unwrap()
        .parse_json("value", "ad STRING, ct TIMESTAMP", "DROPMALFORMED")
        .unwrap()
        .with_watermark("ct", "10 seconds")
        .unwrap()
        .alias("c")
        .unwrap();
    let twenty_seconds = lit(ScalarValue::new_interval_mdn(0, 0, 20_000_000_000));
    let q = impressions
        .join_on(
            &clicks,
            vec![
                col("i.ad").eq(col("c.ad")),
                col("c.ct").between(col("i.it"), col("i.it") + twenty_seconds),
            ],
            JoinType::Inner,
        )
        .unwrap()
        .select_expr(&["i.ad || ' ' || CAST(CAST(c.ct AS BIGINT) AS VARCHAR) AS m"])
        .unwrap()
        .write_stream()
        .query_name("clicked")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    q.await_termination(None).await.unwrap();
    assert_eq!(
        lines(&session, "SELECT m FROM clicked").await,
        vec!["a 5000", "c 3000", "c 9000"]
    );
}

#[tokio::test]
async fn a_full_outer_join_emits_the_rows_that_never_matched_once_the_watermark_passes() {
    use ember_driver::JoinType;
    use ember_driver::functions::{col, lit};
    let dir = tempfile::tempdir().unwrap();
    let impressions = ember_driver::stream::MemoryStream::new(events("ad", "it", &[]).schema());
    let clicks = ember_driver::stream::MemoryStream::new(events("ad", "ct", &[]).schema());
    let session = Session::builder().master("local[2]").build().unwrap();
    let side = |s: &Arc<ember_driver::stream::MemoryStream>, time: &str, alias: &str| {
        session
            .read_stream()
            .source(s.clone())
            .unwrap()
            .with_watermark(time, "10 seconds")
            .unwrap()
            .alias(alias)
            .unwrap()
    };
    let twenty = lit(datafusion::common::ScalarValue::new_interval_mdn(
        0,
        0,
        20_000_000_000,
    ));
    let joined = |join_type: JoinType, condition: Vec<ember_driver::functions::Expr>| {
        side(&impressions, "it", "i")
            .join_on(&side(&clicks, "ct", "c"), condition, join_type)
            .unwrap()
            .select_expr(&[
                "COALESCE(i.ad, c.ad) || ' ' || COALESCE(CAST(CAST(i.it AS BIGINT) / 1000 AS VARCHAR), 'none') || '-' || COALESCE(CAST(CAST(c.ct AS BIGINT) / 1000 AS VARCHAR), 'none') AS m",
            ])
            .unwrap()
    };
    let within = || {
        vec![
            col("i.ad").eq(col("c.ad")),
            col("c.ct").between(col("i.it"), col("i.it") + twenty.clone()),
        ]
    };
    let q = joined(JoinType::Full, within())
        .write_stream()
        .query_name("all_ads")
        .memory()
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    // a matches; b's impression and d's click never do.
    impressions
        .add_data(events("ad", "it", &[("a", 0), ("b", 5)]))
        .unwrap();
    clicks
        .add_data(events("ad", "ct", &[("a", 10), ("d", 8)]))
        .unwrap();
    q.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, "SELECT m FROM all_ads").await,
        vec!["a 0-10"]
    );
    // The watermark reaches min(50, 55) - 10 = 40: b (5 + 20 < 40) and d (8 < 40)
    // can match nothing more, and come out with nulls.
    impressions
        .add_data(events("ad", "it", &[("c", 50)]))
        .unwrap();
    clicks.add_data(events("ad", "ct", &[("c", 55)])).unwrap();
    q.process_all_available().await.unwrap();
    assert_eq!(
        lines(&session, "SELECT m FROM all_ads").await,
        vec!["a 0-10", "b 5-none", "c 50-55", "d none-8"]
    );
    q.stop().await.unwrap();
    // An outer side needs a bound that ends its rows' wait for a match.
    let err = joined(
        JoinType::Left,
        vec![col("i.ad").eq(col("c.ad")), col("c.ct").gt_eq(col("i.it"))],
    )
    .write_stream()
    .memory()
    .output_mode(OutputMode::Append)
    .checkpoint(dir.path().join("cp2"))
    .start()
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("needs an upper bound"), "{err}");
}

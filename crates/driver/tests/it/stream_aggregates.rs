//! Streaming aggregation on DataFusion's accumulators: every family of aggregate
//! function gives over a stream, batch by batch and across a restart from the
//! checkpoint, exactly what the same SQL gives over the same rows as a table.

use std::sync::Arc;

use arrow::array::{
    Decimal128Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ember_driver::Session;
use ember_driver::stream::{MemoryStream, OutputMode, Trigger};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("x", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(15, 2), false),
        Field::new("f", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Rows `from..to`: three keys, nullable small integers, decimal amounts large
/// enough that summing them as f64 loses cents, floats, one row per second.
fn rows(from: i64, to: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..to).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| ["a", "b", "c"][(i % 3) as usize]),
            )),
            Arc::new(Int64Array::from_iter(
                ids.iter().map(|i| (i % 7 != 0).then_some(i * 37 % 50)),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(
                    ids.iter()
                        .map(|&i| (i as i128 * 982_451_653) % 10_000_000_000_000),
                )
                .with_precision_and_scale(15, 2)
                .unwrap(),
            ),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| (i as f64 * 0.37).sin() * 100.0),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                ids.iter().map(|i| i * 1000),
            )),
        ],
    )
    .unwrap()
}

/// Every row of the batches as `v1|v2|..`, sorted.
fn row_strings(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// The aggregations, one per family of functions. Floating-point statistics are
/// rounded, and the t-digest's percentile truncated: their last bits (the digest's
/// interpolation) depend on the order partial states merge in, in a batch query's
/// partitions as much as in a stream's batches.
const QUERIES: &[(&str, &str)] = &[
    (
        "exact",
        "SELECT k, sum(amount) AS s, avg(amount) AS a, min(amount) AS lo, max(amount) AS hi, count(*) AS n, count(x) AS nx, sum(x) AS sx, avg(x) AS ax, min(f) AS fmin, max(f) AS fmax, sum(amount * 3) AS s3 FROM {t} GROUP BY k",
    ),
    (
        "statistics",
        "SELECT k, round(stddev(f), 6) AS sd, round(var_pop(x), 6) AS vp, round(corr(f, CAST(x AS DOUBLE)), 6) AS r, round(covar_samp(f, x), 6) AS cv, median(x) AS med, round(stddev_pop(amount) / 1000000, 3) AS sda FROM {t} GROUP BY k",
    ),
    (
        "sketches_and_ordered",
        "SELECT k, approx_distinct(x) AS ad, CAST(approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY x) AS BIGINT) AS p50, array_agg(x ORDER BY ts) AS xs, first_value(x ORDER BY ts) AS fv, last_value(f ORDER BY ts) AS lv FROM {t} GROUP BY k",
    ),
    (
        "distinct_filter_bits",
        "SELECT k, count(DISTINCT x) AS dx, sum(DISTINCT x) AS sdx, count(*) FILTER (WHERE x > 25) AS big, bool_and(x > 3) AS ba, bool_or(x > 48) AS bo, bit_xor(x) AS bx, string_agg(CAST(x AS VARCHAR), ',' ORDER BY ts) AS xs FROM {t} GROUP BY k",
    ),
    (
        "user_defined",
        "SELECT k, sum_squares(x) AS ss FROM {t} GROUP BY k",
    ),
    (
        "windowed",
        "SELECT window(ts, '10 seconds') AS w, k, sum(amount) AS s, round(stddev(f), 6) AS sd, count(DISTINCT x) AS dx, array_agg(x ORDER BY ts) AS xs FROM {t} GROUP BY window(ts, '10 seconds'), k",
    ),
];

/// Runs each query over a stream fed in four batches (restarting the queries from
/// their checkpoints in a new session halfway) and over the same rows as a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregate_function_family_gives_over_a_stream_what_it_gives_over_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let parts: Vec<RecordBatch> = (0..4).map(|b| rows(b * 1500, (b + 1) * 1500)).collect();
    let session = || {
        let s = Session::builder().master("local[2]").build().unwrap();
        s.register_udaf(crate::dataframe::udfs::sum_squares());
        s.read_stream().register("s", stream.clone()).unwrap();
        s
    };
    let start = |s: Session, name: &'static str, sql: String| {
        let checkpoint = dir.path().join(name);
        async move {
            s.sql(&sql)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .write_stream()
                .query_name(name)
                .memory()
                .output_mode(OutputMode::Complete)
                .checkpoint(checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .await_termination(None)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    };
    for (i, part) in parts.iter().enumerate() {
        stream.add_data(part.clone()).unwrap();
        // Batches 0 and 1 in one session, 2 and 3 in another: the state of the
        // first comes back from the checkpoint.
        if i == 1 || i == 3 {
            let s = session();
            for (name, sql) in QUERIES {
                start(s.clone(), name, sql.replace("{t}", "s")).await;
            }
            if i == 3 {
                s.create_dataframe(parts.clone())
                    .unwrap()
                    .create_or_replace_temp_view("t")
                    .unwrap();
                for (name, sql) in QUERIES {
                    let streamed = s
                        .sql(&format!("SELECT * FROM {name}"))
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap();
                    let batch = s
                        .sql(&sql.replace("{t}", "t"))
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap();
                    let (streamed, batch) = (row_strings(&streamed), row_strings(&batch));
                    assert!(!batch.is_empty(), "{name}: no rows");
                    assert_eq!(streamed, batch, "{name}: stream and table differ");
                }
            }
        }
    }
}

/// The measure: a decimal sum over many rows is exact, to the cent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decimal_sum_over_a_stream_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let s = Session::builder().master("local[2]").build().unwrap();
    s.read_stream().register("s", stream.clone()).unwrap();
    let mut want = [0i128; 3];
    for b in 0..10 {
        let part = rows(b * 10_000, (b + 1) * 10_000);
        for i in b * 10_000..(b + 1) * 10_000 {
            want[(i % 3) as usize] += (i as i128 * 982_451_653) % 10_000_000_000_000;
        }
        stream.add_data(part).unwrap();
    }
    s.sql("SELECT k, sum(amount) AS s FROM s GROUP BY k")
        .await
        .unwrap()
        .write_stream()
        .query_name("sums")
        .memory()
        .output_mode(OutputMode::Update)
        .checkpoint(dir.path().join("cp"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap()
        .await_termination(None)
        .await
        .unwrap();
    let got = s
        .sql("SELECT k, CAST(s * 100 AS DECIMAL(38, 0)) FROM sums")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let got = row_strings(&got);
    let want: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(want)
        .map(|(k, cents)| format!("{k}|{cents}"))
        .collect();
    assert_eq!(got, want);
}

/// The state's partition count is fixed by the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_state_partition_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    stream.add_data(rows(0, 100)).unwrap();
    let run = |partitions: &'static str| {
        let stream = stream.clone();
        let checkpoint = dir.path().join("cp");
        async move {
            let s = Session::builder()
                .master("local[2]")
                .config("ember.streaming.state.partitions", partitions)
                .build()
                .unwrap();
            s.read_stream().register("s", stream).unwrap();
            let q = s
                .sql("SELECT k, count(*) AS n FROM s GROUP BY k")
                .await
                .unwrap()
                .write_stream()
                .query_name("n")
                .memory()
                .output_mode(OutputMode::Complete)
                .checkpoint(checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await?;
            q.await_termination(None).await?;
            let n = s
                .sql("SELECT sum(n) FROM n")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            Ok::<_, ember_driver::EmberError>(row_strings(&n))
        }
    };
    assert_eq!(run("3").await.unwrap(), vec!["100"]);
    stream.add_data(rows(100, 150)).unwrap();
    let err = run("5").await.unwrap_err().to_string();
    assert!(
        err.contains("over 3 partitions") && err.contains("ember.streaming.state.partitions"),
        "{err}"
    );
    assert_eq!(run("3").await.unwrap(), vec!["150"]);
}

/// An aggregation's checkpoint written before groups kept accumulator states is
/// refused with a message that says why, instead of misreading its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_checkpoint_in_the_old_state_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    stream.add_data(rows(0, 30)).unwrap();
    let run = || {
        let stream = stream.clone();
        let checkpoint = dir.path().join("cp");
        async move {
            let s = Session::builder().master("local[1]").build().unwrap();
            s.read_stream().register("s", stream).unwrap();
            s.sql("SELECT k, sum(amount) AS total FROM s GROUP BY k")
                .await
                .unwrap()
                .write_stream()
                .query_name("totals")
                .memory()
                .output_mode(OutputMode::Update)
                .checkpoint(checkpoint)
                .trigger(Trigger::AvailableNow)
                .start()
                .await?
                .await_termination(None)
                .await
        }
    };
    run().await.unwrap();
    let layout = dir.path().join("cp/state/0/_layout");
    assert!(layout.exists(), "{}", layout.display());
    // What an older ember recorded: 24 bytes of i64/f64 sums per aggregate.
    std::fs::write(&layout, "hash of the key columns over 4 partitions").unwrap();
    let err = run().await.unwrap_err().to_string();
    assert!(
        err.contains("accumulator states") && err.contains("new checkpoint"),
        "{err}"
    );
}

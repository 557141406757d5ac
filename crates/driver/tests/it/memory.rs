//! Bounded memory: tasks share one pool sized from `ember.executor.memory`; what does
//! not fit spills, hash joins that do not fit run as sort-merge joins, and what
//! cannot run within the pool fails naming the operator.

use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;
use ember_driver::Session;

/// A local session whose `slots` share a pool of 70% of 64 MiB.
fn small_session(slots: usize, config: &[(&str, &str)]) -> Session {
    let mut b = Session::builder()
        .master(format!("local[{slots}]"))
        .config("ember.executor.memory", "64m");
    for (k, v) in config {
        b = b.config(*k, *v);
    }
    b.build().expect("session")
}

fn ints(batches: &[RecordBatch]) -> Vec<i64> {
    let row = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    (0..row.num_columns())
        .map(|c| {
            let a = row
                .column(c)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            assert!(!a.is_null(0));
            a.value(0)
        })
        .collect()
}

/// Two tables of `rows` rows, each with a 100-byte string per row (about 100 MB each
/// in memory), keyed 0..rows.
async fn wide_tables(session: &Session, rows: i64) {
    for t in ["a", "b"] {
        session
            .sql(&format!(
                "CREATE OR REPLACE TABLE {t} AS SELECT value AS k, repeat('x', 100) AS s FROM generate_series(0, {}) ",
                rows - 1
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_larger_than_the_pool_spills_and_gives_the_answer() {
    let session = small_session(2, &[]);
    let rows: i64 = 3_000_000;
    // 3 M groups, each with a string key: far more than the pool holds at once.
    let sql = format!(
        "SELECT count(*), sum(c) FROM (SELECT concat('key-', value) AS k, count(*) AS c \
         FROM generate_series(1, {rows}) GROUP BY k)"
    );
    let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
    assert_eq!(ints(&batches), [rows, rows]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_join_whose_build_side_does_not_fit_runs_as_a_sort_merge_join() {
    // One task at a time sorts both sides in the small pool, each sort holding back
    // 1 MiB (not 10) for merging its spills.
    let session = small_session(
        1,
        &[
            (
                "datafusion.execution.sort_spill_reservation_bytes",
                "1048576",
            ),
            ("datafusion.execution.target_partitions", "2"),
        ],
    );
    let rows: i64 = 1_000_000;
    wide_tables(&session, rows).await;
    let batches = session
        .sql("SELECT count(*), sum(length(a.s) + length(b.s)) FROM a JOIN b ON a.k = b.k")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("the join failed instead of falling back: {e}"));
    assert_eq!(ints(&batches), [rows, rows * 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_cannot_fit_fails_naming_the_operator_and_the_pool() {
    // A broadcast build side (every task holds all of it) of about 100 MB cannot
    // spill, and there is no other way to run it.
    let session = small_session(
        2,
        &[
            (
                "datafusion.optimizer.hash_join_single_partition_threshold",
                "1000000000000",
            ),
            (
                "datafusion.optimizer.hash_join_single_partition_threshold_rows",
                "1000000000000",
            ),
        ],
    );
    wide_tables(&session, 1_000_000).await;
    let err = session
        .sql("SELECT count(*), sum(length(a.s) + length(b.s)) FROM a JOIN b ON a.k = b.k")
        .await
        .unwrap()
        .collect()
        .await
        .expect_err("a 100 MB build side does not fit a 45 MB pool");
    let message = err.to_string();
    assert!(message.contains("Resources exhausted"), "{message}");
    assert!(
        message.contains("HashJoinInput"),
        "names the operator: {message}"
    );
    assert!(message.contains("44.8 MB"), "names the pool: {message}");
}

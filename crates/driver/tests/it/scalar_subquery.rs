//! Uncorrelated scalar subqueries run first and enter their query as literals
//! (`ember.sql.scalar_subqueries_first`): answers and column names stay DataFusion's,
//! more than one row is an error, and the value reaches the scans.

use datafusion::prelude::SessionContext;
use ember_driver::Session;

use super::runtime_filter::{assert_same_answers, register, write_tables};

const QUERIES: &[&str] = &[
    // As TPC-DS writes its joins: DataFusion joins the subquery above the join.
    "SELECT count(*), sum(f.v) FROM fact f, dim d
       WHERE f.k_int = d.k_int AND d.d_id = (SELECT max(d_id) FROM dim WHERE flag AND k_int IS NOT NULL)",
    "SELECT count(*), sum(f.v) FROM fact f, dim d WHERE f.k_int = d.k_int AND d.d_id = (SELECT max(d_id) - 1 FROM dim)",
    "SELECT count(*) FROM fact WHERE k_dec > (SELECT avg(k_dec) FROM dim)",
    "SELECT count(*) FROM fact WHERE k_date = (SELECT min(k_date) FROM dim WHERE d_id > 10)",
    // No row: NULL, which equals nothing.
    "SELECT count(*) FROM fact WHERE k_str = (SELECT k_str FROM dim WHERE d_id = -1)",
    // In the select list, unnamed and named.
    "SELECT (SELECT count(*) FROM dim WHERE flag) AS c, (SELECT max(k_str) FROM dim), count(*) AS n FROM fact",
    // Nested: the inner one runs with the outer.
    "SELECT count(*) FROM fact WHERE v < (SELECT avg(v) FROM fact WHERE k_int < (SELECT avg(k_int) FROM dim))",
    // Inside a correlated subquery, and a correlated one left to DataFusion.
    "SELECT count(*) FROM dim d WHERE EXISTS (SELECT 1 FROM fact f WHERE f.k_int = d.k_int AND f.v = (SELECT max(v) FROM fact))",
    "SELECT count(*) FROM dim d WHERE d.k_int > (SELECT avg(f.k_int) FROM fact f WHERE f.v = d.d_id % 13)",
    "SELECT k_int, count(*) FROM fact GROUP BY k_int
       HAVING count(*) > (SELECT avg(c) FROM (SELECT count(*) AS c FROM fact GROUP BY k_int)) ORDER BY k_int",
    "SELECT d_id, CASE WHEN d_id > (SELECT avg(d_id) FROM dim) THEN 'hi' ELSE 'lo' END FROM dim ORDER BY d_id LIMIT 5",
    "SELECT count(*) FROM fact WHERE k_int IN (SELECT k_int FROM dim WHERE d_id < (SELECT min(d_id) + 50 FROM dim))",
];

fn session(first: bool, partitioned: bool) -> Session {
    let mut b = Session::builder()
        .master("local[2]")
        .config("datafusion.execution.target_partitions", "2")
        .config("ember.sql.scalar_subqueries_first", first.to_string())
        .config("ember.shuffle.memory_budget", "0")
        // These tables are small: filter every scan.
        .config("ember.runtime_filter.min_probe_rows", "0");
    if partitioned {
        b = b
            .config(
                "datafusion.optimizer.hash_join_single_partition_threshold",
                "0",
            )
            .config(
                "datafusion.optimizer.hash_join_single_partition_threshold_rows",
                "0",
            );
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_subqueries_run_first_keep_every_answer_and_name() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let baseline = SessionContext::new();
    register(&baseline, dir.path()).await;
    for first in [true, false] {
        let ember = session(first, false);
        register(ember.context(), dir.path()).await;
        let label = format!("scalar subqueries first: {first}");
        assert_same_answers(&ember, &baseline, QUERIES, &label).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_subquery_of_more_than_one_row_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let ember = session(true, false);
    register(ember.context(), dir.path()).await;
    let err = ember
        .sql("SELECT count(*) FROM dim WHERE d_id = (SELECT d_id FROM dim WHERE d_id < 5)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one row"), "{err}");
    assert!(err.contains("Projection: dim.d_id"), "{err}");
    // No row is NULL (DataFusion's join of it answers false under an aggregate).
    let got = ember
        .sql("SELECT count(*), (SELECT k_str FROM dim WHERE d_id = -1) IS NULL FROM fact")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&got)
        .unwrap()
        .to_string();
    assert!(text.contains("| 20000    | true"), "{text}");
    // The session still runs queries.
    let rows = ember
        .sql("SELECT count(*) FROM dim")
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// With the subquery's value known, the filter reaches `dim`'s scan, and a `dim` of
/// one row prunes `fact` before it is shuffled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subquerys_value_reaches_the_scans_before_the_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    // No filter in the subquery: joined in, it makes no runtime filter of its own.
    let sql = QUERIES[1];
    let mut shuffled = Vec::new();
    let mut answers = Vec::new();
    for first in [true, false] {
        let ember = session(first, true);
        register(ember.context(), dir.path()).await;
        answers.push(ember.sql(sql).await.unwrap().collect().await.unwrap());
        shuffled.push(ember.shuffle_bytes() as f64);
    }
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&answers[0])
            .unwrap()
            .to_string(),
        arrow::util::pretty::pretty_format_batches(&answers[1])
            .unwrap()
            .to_string()
    );
    assert!(
        shuffled[0] < shuffled[1] * 0.25,
        "shuffled with the subquery first {} bytes, joined in {}",
        shuffled[0],
        shuffled[1]
    );
}

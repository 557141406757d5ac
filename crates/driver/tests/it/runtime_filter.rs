//! Cross-stage runtime filters: a join's build stage prunes its probe side's scan in
//! an earlier stage. They must never change an answer (null keys, outer, semi and anti
//! joins, several key types), and they must cut what the probe side shuffles.

use std::path::Path;

use datafusion::prelude::SessionContext;
use ember_driver::{Session, answers};

/// `fact` (20 000 rows) and `dim` (1 000 rows) as Parquet under `dir`, with null keys
/// on both sides and keys of four types; `dim.flag` holds for a tenth of its rows (and
/// for its null keys).
pub(crate) async fn write_tables(dir: &Path) {
    let ctx = SessionContext::new();
    let fact = format!(
        "COPY (SELECT value AS id,
                CASE WHEN value % 97 = 0 THEN NULL ELSE CAST(value % 1000 AS INT) END AS k_int,
                CASE WHEN value % 89 = 0 THEN NULL ELSE 's' || (value % 500) END AS k_str,
                CAST(DATE '2020-01-01' + CAST(value % 300 AS INT) AS DATE) AS k_date,
                CAST((value % 200) / 4.0 AS DECIMAL(10, 2)) AS k_dec,
                value % 13 AS v
              FROM generate_series(1, 20000))
         TO '{}/fact/' STORED AS PARQUET",
        dir.display()
    );
    let dim = format!(
        "COPY (SELECT value AS d_id,
                CASE WHEN value % 101 = 0 THEN NULL ELSE CAST(value AS INT) END AS k_int,
                's' || value AS k_str,
                CAST(DATE '2020-01-01' + CAST(value AS INT) AS DATE) AS k_date,
                CAST(value / 4.0 AS DECIMAL(10, 2)) AS k_dec,
                value % 10 = 3 OR value % 101 = 0 AS flag
              FROM generate_series(0, 999))
         TO '{}/dim/' STORED AS PARQUET",
        dir.display()
    );
    // More keys than a runtime filter lists: a bloom filter of them.
    let big = format!(
        "COPY (SELECT CAST(value * 3 AS INT) AS k_int, value AS b
              FROM generate_series(0, 20000))
         TO '{}/big/' STORED AS PARQUET",
        dir.display()
    );
    for sql in [fact, dim, big] {
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
}

pub(crate) async fn register(ctx: &SessionContext, dir: &Path) {
    for t in ["fact", "dim", "big"] {
        let sql = format!(
            "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/{t}/'",
            dir.display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
}

const QUERIES: &[&str] = &[
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_int = d.k_int WHERE d.flag",
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_str = d.k_str WHERE d.flag",
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_date = d.k_date WHERE d.flag",
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_dec = d.k_dec WHERE d.flag",
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_int = d.k_int AND f.k_str = d.k_str WHERE d.flag",
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k_int = d.k_int WHERE d.k_int < 0",
    "SELECT count(*), count(d.k_int), sum(f.v) FROM fact f LEFT JOIN (SELECT * FROM dim WHERE flag) d ON f.k_int = d.k_int",
    "SELECT count(*), count(d.k_int), sum(f.v) FROM (SELECT * FROM dim WHERE flag) d RIGHT JOIN fact f ON f.k_int = d.k_int",
    "SELECT count(*), count(d.k_int), count(f.k_int) FROM fact f FULL JOIN (SELECT * FROM dim WHERE flag) d ON f.k_int = d.k_int",
    "SELECT count(*), sum(v) FROM fact WHERE k_int IN (SELECT k_int FROM dim WHERE flag)",
    "SELECT count(*), sum(v) FROM fact WHERE k_int NOT IN (SELECT k_int FROM dim WHERE flag)",
    "SELECT count(*), sum(v) FROM fact WHERE k_int NOT IN (SELECT k_int FROM dim WHERE flag AND k_int IS NOT NULL)",
    "SELECT count(*), sum(v) FROM fact f WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.flag AND d.k_int = f.k_int)",
    "SELECT count(*), sum(d.d_id) FROM dim d WHERE EXISTS (SELECT 1 FROM fact f WHERE f.k_int = d.k_int AND f.v = 5)",
    "SELECT a.k_int, a.s FROM (SELECT k_int, sum(v) AS s FROM fact GROUP BY k_int) a JOIN dim d ON a.k_int = d.k_int WHERE d.flag ORDER BY a.k_int",
    "SELECT count(*) FROM (SELECT k_int FROM fact UNION ALL SELECT k_int FROM fact WHERE v = 1) u JOIN dim d ON u.k_int = d.k_int WHERE d.flag",
    "SELECT d.k_int, count(*) FROM fact f JOIN dim d ON f.k_int = d.k_int WHERE d.flag GROUP BY d.k_int ORDER BY 2 DESC, 1 LIMIT 5",
    "SELECT count(*), sum(f.v) FROM fact f JOIN big b ON f.k_int = b.k_int WHERE b.b < 15000",
    "SELECT count(*), count(b.b) FROM fact f LEFT JOIN big b ON f.k_int = b.k_int",
    "SELECT count(*) FROM fact WHERE k_int IN (SELECT k_int FROM big WHERE b % 2 = 1)",
    "SELECT count(*) FROM fact WHERE k_int NOT IN (SELECT k_int FROM big)",
];

/// Joins as `Partitioned` (both sides shuffled): the build side is a stage of its own.
const PARTITIONED: (&str, &str) = (
    "datafusion.optimizer.hash_join_single_partition_threshold",
    "0",
);

const PARTITIONED_ROWS: (&str, &str) = (
    "datafusion.optimizer.hash_join_single_partition_threshold_rows",
    "0",
);

fn session(filters: bool, partitioned: bool) -> Session {
    let mut b = Session::builder()
        .master("local[2]")
        .config("datafusion.execution.target_partitions", "2")
        .config("ember.runtime_filter.enabled", filters.to_string())
        // These tables are small: filter every scan.
        .config("ember.runtime_filter.min_probe_rows", "0");
    if partitioned {
        b = b
            .config(PARTITIONED.0, PARTITIONED.1)
            .config(PARTITIONED_ROWS.0, PARTITIONED_ROWS.1);
    }
    b.build().unwrap()
}

/// Runs each of `queries` in `ember` and `baseline` and fails at the first answer or
/// column name that differs.
pub(crate) async fn assert_same_answers(
    ember: &Session,
    baseline: &SessionContext,
    queries: &[&str],
    label: &str,
) {
    let names = |b: &[arrow::record_batch::RecordBatch]| {
        b.first().map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        })
    };
    for sql in queries {
        let expected = baseline.sql(sql).await.unwrap().collect().await.unwrap();
        let got = ember.sql(sql).await.unwrap().collect().await.unwrap();
        if let Some(diff) = answers::difference(answers::is_ordered(sql), &got, &expected).unwrap()
        {
            panic!("{sql} ({label}): {diff}");
        }
        assert_eq!(names(&got), names(&expected), "{sql} ({label})");
    }
}

/// A session whose joins are all partitioned, filtering probe scans of at least
/// `min_rows` rows.
fn partitioned_session(min_rows: &str) -> Session {
    Session::builder()
        .master("local[2]")
        .config("datafusion.execution.target_partitions", "2")
        .config("ember.runtime_filter.min_probe_rows", min_rows)
        .config(PARTITIONED.0, PARTITIONED.1)
        .config(PARTITIONED_ROWS.0, PARTITIONED_ROWS.1)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_filters_never_change_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let baseline = SessionContext::new();
    register(&baseline, dir.path()).await;
    for partitioned in [true, false] {
        let ember = session(true, partitioned);
        register(ember.context(), dir.path()).await;
        let label = format!("partitioned joins: {partitioned}");
        assert_same_answers(&ember, &baseline, QUERIES, &label).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_build_side_cuts_what_the_probe_side_shuffles() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    // A listed build side (a tenth of dim's keys), and a bloom filter's (a third of
    // fact's keys are multiples of 3).
    for (sql, most) in [(QUERIES[0], 0.25), (QUERIES[17], 0.8)] {
        let mut shuffled = Vec::new();
        for filters in [true, false] {
            // Map outputs in files: their bytes follow their rows.
            let ember = Session::builder()
                .master("local[2]")
                .config("datafusion.execution.target_partitions", "2")
                .config("ember.runtime_filter.enabled", filters.to_string())
                .config("ember.shuffle.memory_budget", "0")
                .config("ember.runtime_filter.min_probe_rows", "0")
                .config(PARTITIONED.0, PARTITIONED.1)
                .config(PARTITIONED_ROWS.0, PARTITIONED_ROWS.1)
                .build()
                .unwrap();
            register(ember.context(), dir.path()).await;
            let df = ember.sql(sql).await.unwrap();
            let stages = ember.explain_stages(df.logical_plan()).await.unwrap();
            assert_eq!(
                stages.contains("runtime filter: k_int in keys k_int of stage"),
                filters,
                "{stages}"
            );
            df.collect().await.unwrap();
            shuffled.push(ember.shuffle_bytes() as f64);
        }
        assert!(
            shuffled[0] < shuffled[1] * most,
            "{sql}: shuffled with filters {} bytes, without {}",
            shuffled[0],
            shuffled[1]
        );
    }
}

/// A probe scan under `ember.runtime_filter.min_probe_rows` rows does not wait for its
/// build side (fact has 20 000 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_probe_scan_does_not_wait_for_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    for (min_rows, waits) in [("20001", false), ("20000", true)] {
        let ember = partitioned_session(min_rows);
        register(ember.context(), dir.path()).await;
        let df = ember.sql(QUERIES[0]).await.unwrap();
        let stages = ember.explain_stages(df.logical_plan()).await.unwrap();
        assert_eq!(
            stages.contains("waits for stages"),
            waits,
            "{min_rows}: {stages}"
        );
        assert_eq!(
            stages.contains("runtime filter: k_int in keys k_int of stage"),
            waits,
            "{min_rows}: {stages}"
        );
    }
}

/// A small probe scan keeps its wait when its stage, filtered, filters a scan over
/// `ember.runtime_filter.min_probe_rows` in turn: dim filters fact (20 000 rows), whose
/// keys filter big (20 001 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_probe_scan_waits_when_it_filters_a_big_one_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let sql = "SELECT count(*) FROM big b JOIN
                 (SELECT f.k_int FROM fact f JOIN dim d ON f.k_int = d.k_int WHERE d.flag) x
               ON b.k_int = x.k_int";
    let mut dags = Vec::new();
    for min_rows in ["20001", "20002"] {
        let ember = partitioned_session(min_rows);
        register(ember.context(), dir.path()).await;
        let df = ember.sql(sql).await.unwrap();
        dags.push(ember.explain_stages(df.logical_plan()).await.unwrap());
    }
    // fact waits for dim, and big for fact; with big under the threshold, neither.
    assert_eq!(
        dags[0].matches("waits for stages").count(),
        2,
        "{}",
        dags[0]
    );
    assert_eq!(dags[0].matches("runtime filter:").count(), 2, "{}", dags[0]);
    assert!(!dags[1].contains("runtime filter:"), "{}", dags[1]);
}

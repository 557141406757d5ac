//! Adaptive execution: stages planned again from their inputs' real sizes. Coalesced,
//! split and broadcast tasks must never change an answer, and each rewrite must
//! happen where it applies (and show in `explain` after the run).

use std::path::Path;

use datafusion::prelude::SessionContext;
use ember_driver::{ExplainMode, Session, answers};

/// `fact` (48 000 rows in 8 files) whose key 7 holds six rows in ten (null keys too),
/// and `dim` (1 000 rows, keys 0..999, `flag` on a tenth of them), as Parquet.
async fn write_tables(dir: &Path) {
    let ctx = SessionContext::new();
    for file in 0..8 {
        let sql = format!(
            "COPY (SELECT value AS id,
                    CASE WHEN value % 10 < 6 THEN 7
                         WHEN value % 53 = 0 THEN NULL
                         ELSE CAST(value % 1000 AS INT) END AS k,
                    value % 13 AS v,
                    'row-' || value AS s
                  FROM generate_series({}, {}))
             TO '{}/fact/part-{file}.parquet' STORED AS PARQUET",
            file * 6000,
            file * 6000 + 5999,
            dir.display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
    let dim = format!(
        "COPY (SELECT CAST(value AS INT) AS k, value % 10 = 3 OR value = 7 AS flag,
                'name-' || value AS name
              FROM generate_series(0, 999))
         TO '{}/dim/' STORED AS PARQUET",
        dir.display()
    );
    ctx.sql(&dim).await.unwrap().collect().await.unwrap();
}

async fn register(ctx: &SessionContext, dir: &Path) {
    for t in ["fact", "dim"] {
        let sql = format!(
            "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/{t}/'",
            dir.display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
}

const QUERIES: &[&str] = &[
    "SELECT count(*), sum(f.v) FROM fact f JOIN dim d ON f.k = d.k",
    "SELECT d.flag, count(*), sum(f.v) FROM fact f JOIN dim d ON f.k = d.k GROUP BY d.flag ORDER BY 1",
    "SELECT f.k, count(*), sum(f.v) FROM fact f JOIN dim d ON f.k = d.k GROUP BY f.k ORDER BY 2 DESC, 1 LIMIT 7",
    "SELECT count(*), count(d.k), sum(f.v) FROM fact f LEFT JOIN dim d ON f.k = d.k AND d.flag",
    "SELECT count(*), count(f.k), count(d.k) FROM dim d LEFT JOIN fact f ON f.k = d.k AND f.v = 3",
    "SELECT count(*), count(d.k), count(f.k) FROM fact f FULL JOIN (SELECT * FROM dim WHERE flag) d ON f.k = d.k",
    "SELECT count(*), sum(v) FROM fact WHERE k IN (SELECT k FROM dim WHERE flag)",
    "SELECT count(*), sum(v) FROM fact WHERE k NOT IN (SELECT k FROM dim WHERE flag)",
    "SELECT count(*), sum(f.v) FROM fact f WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.flag AND d.k = f.k)",
    "SELECT count(*) FROM dim d WHERE EXISTS (SELECT 1 FROM fact f WHERE f.k = d.k AND f.v = 5)",
    "SELECT k, count(*), min(s), max(s) FROM fact GROUP BY k ORDER BY 2 DESC, 1 LIMIT 10",
    "SELECT a.k, a.n, b.n FROM (SELECT k, count(*) AS n FROM fact GROUP BY k) a JOIN (SELECT k, count(*) AS n FROM fact WHERE v < 4 GROUP BY k) b ON a.k = b.k ORDER BY a.n DESC, a.k LIMIT 5",
    "SELECT f.id, f.s, d.name FROM fact f JOIN dim d ON f.k = d.k WHERE f.id % 997 = 0 ORDER BY f.id",
];

/// Joins as `Partitioned` (both sides shuffled into hash partitions).
const PARTITIONED: [(&str, &str); 2] = [
    (
        "datafusion.optimizer.hash_join_single_partition_threshold",
        "0",
    ),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold_rows",
        "0",
    ),
];

/// Settings that make each rewrite happen on these small tables.
const SKEW: [(&str, &str); 4] = [
    ("ember.adaptive.broadcast_bytes", "0"),
    ("ember.adaptive.skew_bytes", "1k"),
    ("ember.adaptive.skew_factor", "2"),
    ("ember.adaptive.advisory_partition_bytes", "16k"),
];
const BROADCAST: [(&str, &str); 1] = [("ember.adaptive.broadcast_bytes", "1g")];
const OFF: [(&str, &str); 1] = [("ember.adaptive.enabled", "false")];

async fn session(dir: &Path, settings: &[(&str, &str)]) -> Session {
    let mut b = Session::builder()
        .master("local[2]")
        .config("datafusion.execution.target_partitions", "8");
    for (k, v) in PARTITIONED.iter().chain(settings) {
        b = b.config(*k, *v);
    }
    let s = b.build().unwrap();
    register(s.context(), dir).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_execution_never_changes_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let baseline = SessionContext::new();
    register(&baseline, dir.path()).await;
    let settings: [(&str, &[(&str, &str)]); 4] = [
        ("defaults", &[]),
        ("skew", &SKEW),
        ("broadcast", &BROADCAST),
        ("off", &OFF),
    ];
    for (name, settings) in settings {
        let ember = session(dir.path(), settings).await;
        for sql in QUERIES {
            let expected = baseline.sql(sql).await.unwrap().collect().await.unwrap();
            let got = ember.sql(sql).await.unwrap().collect().await.unwrap();
            if let Some(diff) =
                answers::difference(answers::is_ordered(sql), &got, &expected).unwrap()
            {
                panic!("{sql} (adaptive settings: {name}): {diff}");
            }
        }
    }
}

/// The `== Stage DAG (as run) ==` section of `explain` after running `sql`.
async fn as_run(ember: &Session, sql: &str) -> String {
    let text = ember
        .sql(sql)
        .await
        .unwrap()
        .explain(ExplainMode::Analyze)
        .await
        .unwrap();
    let (_, run) = text
        .split_once("== Stage DAG (as run) ==")
        .unwrap_or_else(|| panic!("no as-run section in {text}"));
    run.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_are_coalesced_split_and_broadcast_from_real_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path()).await;
    let count_by_key = QUERIES[10];
    let join = QUERIES[1];

    // Eight small reduce partitions of an aggregation become one task.
    let ember = session(dir.path(), &[]).await;
    let run = as_run(&ember, count_by_key).await;
    assert!(run.contains("coalesced: 8 reduce partitions"), "{run}");
    assert!(run.contains("1 task (planned 8)"), "{run}");

    // The join's partition of key 7 is split between several tasks, each reading the
    // build side's partition whole.
    let ember = session(dir.path(), &SKEW).await;
    let run = as_run(&ember, join).await;
    assert!(run.contains("skewed partition"), "{run}");
    let split: usize = run
        .split("split into ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no split count in {run}"));
    assert!(split >= 2, "{run}");
    assert!(run.contains("HashJoinExec(Partitioned)"), "{run}");
    // An aggregation by the join key above the join keeps the partition whole.
    let run = as_run(&ember, QUERIES[2]).await;
    assert!(!run.contains("skewed partition"), "{run}");

    // A small build side turns the join into a broadcast join over the probe side's
    // map outputs.
    let ember = session(dir.path(), &BROADCAST).await;
    let run = as_run(&ember, join).await;
    assert!(run.contains("broadcast join: the build side"), "{run}");
    assert!(run.contains("HashJoinExec(CollectLeft)"), "{run}");
    // A full join emits unmatched build rows: it stays partitioned.
    let run = as_run(&ember, QUERIES[5]).await;
    assert!(!run.contains("broadcast join"), "{run}");

    // Off, everything runs as planned.
    let ember = session(dir.path(), &OFF).await;
    for sql in [count_by_key, join] {
        let run = as_run(&ember, sql).await;
        assert_eq!(run.trim(), "every stage ran as planned", "{sql}");
    }
}

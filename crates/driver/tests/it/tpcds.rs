//! TPC-DS: the 99 queries (at SF 0.01 unless `$EMBER_TPCDS_SF` says otherwise) through
//! ember's stages and shuffles, checked row by row against DataFusion run directly on
//! the same files. The data and the queries come from `benchmarks/tpcds/generate.py`
//! (DuckDB's dsdgen and dsqgen, from Python packages it installs when missing),
//! through `ember_driver::tpcds`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datafusion::prelude::{SessionConfig, SessionContext};
use ember_driver::{Session, answers, tpcds};

use super::tpch::assert_same_rows;

/// The scale factor: 0.01, or `$EMBER_TPCDS_SF` (`EMBER_TPCDS_SF=1 cargo test --release
/// -p ember-driver --test it -- tpcds` checks all 99 queries at SF 1).
fn scale_factor() -> String {
    std::env::var("EMBER_TPCDS_SF").unwrap_or_else(|_| "0.01".into())
}

/// The data and queries, generated once per test process (the script takes a lock,
/// so test processes racing into the folder take turns).
fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let sf = scale_factor();
        let dir = std::env::temp_dir().join(format!("ember-it-tpcds-sf{sf}"));
        let sf: f64 = sf.parse().expect("EMBER_TPCDS_SF is a number");
        tpcds::generate(sf, &dir).expect("generating TPC-DS data");
        dir
    })
}

async fn check_all_queries(master: &str, partitions: usize) {
    let dir = data_dir();
    let session = Session::builder()
        .master(master)
        .config(
            "datafusion.execution.target_partitions",
            partitions.to_string(),
        )
        .build()
        .unwrap();
    tpcds::register_tables(session.context(), dir)
        .await
        .unwrap();
    let baseline =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    tpcds::register_tables(&baseline, dir).await.unwrap();
    for q in tpcds::QUERY_NUMBERS {
        let sql = tpcds::query(dir, q).unwrap();
        let df = baseline.sql(&sql).await.unwrap().collect().await;
        let df = df.unwrap_or_else(|e| panic!("q{q}: DataFusion alone fails: {e}"));
        let ember = session.sql(&sql).await.unwrap().collect().await;
        let ember = ember.unwrap_or_else(|e| panic!("q{q} {master}: {e}"));
        let ordered = answers::is_ordered(&sql);
        assert_same_rows(q, master, ordered, &ember, &df);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcds_matches_datafusion_with_two_slots() {
    check_all_queries("local[2]", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcds_matches_datafusion_with_three_slots() {
    check_all_queries("local[3]", 3).await;
}

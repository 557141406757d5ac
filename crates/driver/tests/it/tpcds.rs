//! TPC-DS: the 99 queries (at SF 0.01 unless `$EMBER_TPCDS_SF` says otherwise) through
//! ember's stages and shuffles, checked row by row against DataFusion run directly on
//! the same files. The data and the queries come from `benchmarks/tpcds/generate.py`
//! (DuckDB's dsdgen and dsqgen, from Python packages it installs when missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use ember_driver::Session;

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
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benchmarks/tpcds/generate.py");
        let out = Command::new("python3")
            .arg(&script)
            .args(["--sf", &sf, "--out"])
            .arg(&dir)
            .output()
            .expect("python3 runs benchmarks/tpcds/generate.py");
        assert!(
            out.status.success(),
            "generating TPC-DS data: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn tables(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "queries" && !n.starts_with('.') && !n.starts_with('_'))
        .collect();
    names.sort();
    names
}

async fn register(ctx: &SessionContext, dir: &Path) {
    for table in tables(dir) {
        let url = format!("{}/", dir.join(&table).display());
        ctx.register_parquet(&table, &url, ParquetReadOptions::default())
            .await
            .unwrap();
    }
}

async fn check_all_queries(master: &str, partitions: usize) {
    let dir = data_dir();
    assert_eq!(tables(dir).len(), 24, "TPC-DS has 24 tables");
    let session = Session::builder()
        .master(master)
        .config(
            "datafusion.execution.target_partitions",
            partitions.to_string(),
        )
        .build()
        .unwrap();
    register(session.context(), dir).await;
    let baseline =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    register(&baseline, dir).await;
    for q in 1..=99 {
        let sql = std::fs::read_to_string(dir.join(format!("queries/q{q}.sql"))).unwrap();
        let df = baseline.sql(&sql).await.unwrap().collect().await;
        let df = df.unwrap_or_else(|e| panic!("q{q}: DataFusion alone fails: {e}"));
        let ember = session.sql(&sql).await.unwrap().collect().await;
        let ember = ember.unwrap_or_else(|e| panic!("q{q} {master}: {e}"));
        let ordered = sql.to_lowercase().contains("order by");
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

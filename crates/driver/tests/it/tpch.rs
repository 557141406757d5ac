//! TPC-H at SF 0.1 through ember's stages and shuffles, checked row by row against
//! DataFusion run directly on the same files; golden stage DAGs; the plan codec on
//! every stage of every query.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::displayable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_driver::{Session, answers, tpch};
use ember_exec::batch_fn::BatchFnRegistry;
use ember_exec::codec::{EmberCodec, decode_plan, encode_plan};

const SF: f64 = 0.1;

/// The SF 0.1 data, generated once per test process.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ember-it-tpch-sf{SF}"));
        tpch::generate(SF, &dir).expect("generate TPC-H data");
        dir
    })
}

/// Compares result sets: in order when the query orders its output, as multisets otherwise.
pub(super) fn assert_same_rows(
    query: usize,
    label: &str,
    ordered: bool,
    ember: &[RecordBatch],
    df: &[RecordBatch],
) {
    if let Some(diff) = answers::difference(ordered, ember, df).unwrap() {
        panic!("q{query} {label}: ember's answer differs from DataFusion's: {diff}");
    }
}

async fn check_all_queries(label: &str, master: &str, partitions: usize, config: &[(&str, &str)]) {
    let dir = data_dir();
    let mut builder = Session::builder().master(master).config(
        "datafusion.execution.target_partitions",
        partitions.to_string(),
    );
    for (k, v) in config {
        builder = builder.config(*k, *v);
    }
    let session = builder.build().unwrap();
    tpch::register_tables(session.context(), dir).await.unwrap();
    let baseline =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    tpch::register_tables(&baseline, dir).await.unwrap();
    for q in tpch::QUERY_NUMBERS {
        let sql = tpch::query(q).unwrap();
        let ordered = answers::is_ordered(&sql);
        let ember = session.sql(&sql).await.unwrap().collect().await;
        let ember = ember.unwrap_or_else(|e| panic!("q{q} {label}: {e}"));
        let df = baseline.sql(&sql).await.unwrap().collect().await.unwrap();
        assert_same_rows(q, label, ordered, &ember, &df);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_matches_datafusion_with_one_slot() {
    check_all_queries("local[1]", "local[1]", 1, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_matches_datafusion_with_four_slots() {
    check_all_queries("local[4]", "local[4]", 4, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_matches_datafusion_with_seven_partitions_through_disk_shuffle() {
    // An odd partition count and every map output on disk: partitioning bugs and file
    // format bugs both show up as wrong rows.
    let config = [("ember.shuffle.memory_budget", "0")];
    check_all_queries("7 partitions, disk shuffle", "local[3]", 7, &config).await;
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stages")
}

/// Stage DAGs of all 22 queries at 4 partitions, against reviewed golden files.
/// `EMBER_BLESS=1` rewrites them after an intended planner change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_stage_dags_match_golden_files() {
    // Every probe scan filtered, as at scale factors where the scans are big.
    let session = Session::builder()
        .master("local[4]")
        .config("ember.runtime_filter.min_probe_rows", "0")
        .build()
        .unwrap();
    tpch::register_tables(session.context(), data_dir())
        .await
        .unwrap();
    let bless = std::env::var("EMBER_BLESS").is_ok_and(|v| v == "1");
    let mut mismatches = Vec::new();
    for q in tpch::QUERY_NUMBERS {
        let df = session.sql(&tpch::query(q).unwrap()).await.unwrap();
        let dag = session.explain_stages(df.logical_plan()).await.unwrap();
        let path = golden_dir().join(format!("q{q}.txt"));
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &dag).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with EMBER_BLESS=1 to create it)",
                path.display()
            )
        });
        if golden != dag {
            mismatches.push(format!(
                "q{q}: {}\n--- golden\n{golden}--- now\n{dag}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "stage DAGs changed:\n{}",
        mismatches.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_codec_round_trips_every_stage_of_every_query() {
    let session = Session::builder().master("local[4]").build().unwrap();
    tpch::register_tables(session.context(), data_dir())
        .await
        .unwrap();
    let codec = EmberCodec::new(Arc::new(BatchFnRegistry::default()));
    let task_ctx = session.context().task_ctx();
    let mut stages = 0;
    for q in tpch::QUERY_NUMBERS {
        let df = session.sql(&tpch::query(q).unwrap()).await.unwrap();
        for plan in session.stage_plans(df.logical_plan()).await.unwrap() {
            let before = displayable(plan.as_ref()).indent(true).to_string();
            let bytes = encode_plan(plan, &codec).unwrap_or_else(|e| panic!("q{q}: encode: {e}"));
            let decoded = decode_plan(&bytes, &task_ctx, &codec)
                .unwrap_or_else(|e| panic!("q{q}: decode: {e}"));
            let after = displayable(decoded.as_ref()).indent(true).to_string();
            assert_eq!(before, after, "q{q}: stage plan changed in the round trip");
            stages += 1;
        }
    }
    assert!(stages > 22 * 2, "only {stages} stages");
}

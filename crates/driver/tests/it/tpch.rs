//! TPC-H at SF 0.1 through ember's stages and shuffles, checked row by row against
//! DataFusion run directly on the same files; golden stage DAGs; the plan codec on
//! every stage of every query.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, Float32Array, Float64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::physical_plan::displayable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_driver::{Session, tpch};
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

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Float(f64),
    Text(String),
}

pub(super) fn rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| match c.data_type() {
                    DataType::Float64 if c.is_valid(r) => {
                        Cell::Float(c.as_any().downcast_ref::<Float64Array>().unwrap().value(r))
                    }
                    DataType::Float32 if c.is_valid(r) => Cell::Float(
                        c.as_any().downcast_ref::<Float32Array>().unwrap().value(r) as f64,
                    ),
                    _ => Cell::Text(f.value(r).to_string()),
                })
                .collect();
            out.push(row);
        }
    }
    out
}

fn sort_key(row: &[Cell]) -> String {
    row.iter()
        .map(|c| match c {
            Cell::Float(f) => format!("{f:.2}"),
            Cell::Text(t) => t.clone(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn same_row(a: &[Cell], b: &[Cell]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Cell::Float(x), Cell::Float(y)) => {
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
            }
            _ => x == y,
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
    let (mut e, mut d) = (rows(ember), rows(df));
    assert_eq!(e.len(), d.len(), "q{query} {label}: row count");
    if !ordered {
        e.sort_by_key(|r| sort_key(r));
        d.sort_by_key(|r| sort_key(r));
    }
    for (i, (a, b)) in e.iter().zip(&d).enumerate() {
        assert!(
            same_row(a, b),
            "q{query} {label}: row {i} differs:\n ember:      {a:?}\n datafusion: {b:?}"
        );
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
        let ordered = sql.to_lowercase().contains("order by");
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
    let session = Session::builder().master("local[4]").build().unwrap();
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

//! A TPC-H query on generated data: its stage DAG, then its result.
//!
//! ```text
//! cargo run -p ember-cli --example tpch [-- QUERY [DATA_DIR [SF]]]
//! ```
//!
//! QUERY defaults to 1. Without DATA_DIR, SF 0.01 (default) is generated into a
//! temporary directory; with it, data is generated there once and reused.

use anyhow::{Context, Result};
use arrow::util::pretty::pretty_format_batches;
use ember_driver::{Session, tpch};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let query: usize = match args.first() {
        Some(q) => q
            .parse()
            .with_context(|| format!("QUERY must be 1 to 22, got '{q}'"))?,
        None => 1,
    };
    let sf: f64 = match args.get(2) {
        Some(sf) => sf
            .parse()
            .with_context(|| format!("SF must be a number, got '{sf}'"))?,
        None => 0.01,
    };
    let sql = tpch::query(query)?;

    let tmp = tempfile::tempdir()?;
    let dir = args.get(1).map_or(tmp.path().to_path_buf(), Into::into);
    let gen_dir = dir.clone();
    tokio::task::spawn_blocking(move || tpch::generate(sf, &gen_dir)).await??;

    let session = Session::builder().master("local[2]").build()?;
    tpch::register_tables(session.context(), &dir).await?;

    let df = session.sql(&sql).await?;
    println!("TPC-H Q{query} at SF {sf}\n\n{}\n", sql.trim());
    println!(
        "== Stage DAG ==\n{}",
        session.explain_stages(df.logical_plan()).await?
    );
    let batches = df.collect().await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("{}", pretty_format_batches(&batches)?);
    println!("{rows} rows");
    Ok(())
}

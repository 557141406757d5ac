//! `ember gen`: benchmark data generation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use ember_driver::tpch;

#[derive(Debug, clap::Subcommand)]
pub enum GenCommand {
    /// The 8 TPC-H tables as Parquet, one directory per table (skipped if DIR already
    /// holds this scale factor).
    Tpch {
        /// Scale factor: 1 is about 1 GB of raw data (6M lineitem rows).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub async fn run(command: GenCommand) -> Result<()> {
    match command {
        GenCommand::Tpch { sf, out } => {
            let start = Instant::now();
            generate_tpch(sf, out.clone()).await?;
            eprintln!(
                "TPC-H SF {sf} in {} ({:.1}s)",
                out.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// Generates TPC-H data off the async runtime (it is CPU-bound and blocking).
pub async fn generate_tpch(sf: f64, dir: PathBuf) -> Result<()> {
    let shown = dir.display().to_string();
    tokio::task::spawn_blocking(move || tpch::generate(sf, &dir))
        .await?
        .with_context(|| format!("generating TPC-H SF {sf} into {shown}"))
}

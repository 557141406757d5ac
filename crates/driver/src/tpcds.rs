//! TPC-DS for `ember bench tpcds` and the tests: the 24 tables and 99 queries that
//! `benchmarks/tpcds/generate.py` writes (DuckDB's dsdgen and dsqgen, from Python
//! packages the script installs into a virtualenv of its own when missing).
//!
//! A generated directory holds `<table>/part-1.parquet` for each table,
//! `queries/qN.sql` for N in 1..=99, and `_SUCCESS` (`sf=<SF>`), written last.

use std::path::Path;
use std::process::Command;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::{EmberError, Result};

/// The query numbers, 1 to 99.
pub const QUERY_NUMBERS: std::ops::RangeInclusive<usize> = 1..=99;

/// The generator, carried in the binary so that it runs from anywhere.
const GENERATOR: &str = include_str!("../../../benchmarks/tpcds/generate.py");

/// Whether `dir` holds complete data at scale factor `sf`.
pub fn is_generated(sf: f64, dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("_SUCCESS"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("sf=")?.parse::<f64>().ok())
        .is_some_and(|there| there == sf)
}

/// Generates the data and queries into `dir` with `python3` (a few minutes at
/// SF 1, the first time also installing DuckDB's packages).
pub fn generate(sf: f64, dir: &Path) -> Result<()> {
    let script =
        std::env::temp_dir().join(format!("ember-tpcds-generate-{}.py", std::process::id()));
    std::fs::write(&script, GENERATOR).map_err(|e| EmberError::io(script.display(), e))?;
    let out = Command::new("python3")
        .arg(&script)
        .args(["--sf", &sf.to_string(), "--out"])
        .arg(dir)
        .output();
    let _ = std::fs::remove_file(&script);
    let out = out.map_err(|e| EmberError::io("python3 (the TPC-DS generator)", e))?;
    if !out.status.success() {
        return Err(EmberError::Config(format!(
            "generating TPC-DS SF {sf} into {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The tables of a generated directory, sorted.
pub fn tables(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EmberError::io(dir.display(), e))?;
    let mut names = vec![];
    for entry in entries {
        let entry = entry.map_err(|e| EmberError::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && name != "queries" && !name.starts_with(['.', '_']) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Registers the tables of a generated directory as Parquet listing tables.
pub async fn register_tables(ctx: &SessionContext, dir: &Path) -> Result<()> {
    let tables = tables(dir)?;
    if tables.len() != 24 {
        return Err(EmberError::Config(format!(
            "{} is not a TPC-DS data directory: it has {} of the 24 tables (generate it with `python3 benchmarks/tpcds/generate.py --sf 1 --out {}`)",
            dir.display(),
            tables.len(),
            dir.display()
        )));
    }
    for table in tables {
        // A trailing slash makes DataFusion treat the path as a directory of files.
        let url = format!("{}/", dir.join(&table).display());
        ctx.register_parquet(&table, &url, ParquetReadOptions::default())
            .await?;
    }
    Ok(())
}

/// Query `n`'s SQL, as the generator rendered it.
pub fn query(dir: &Path, n: usize) -> Result<String> {
    let path = dir.join(format!("queries/q{n}.sql"));
    std::fs::read_to_string(&path).map_err(|e| EmberError::io(path.display(), e))
}

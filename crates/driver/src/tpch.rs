//! TPC-H: data generation, table registration and the 22 queries.
//!
//! [`generate`] writes the 8 tables as Parquet with `tpchgen-arrow`, one directory per
//! table, split into parts of about [`ROWS_PER_FILE`] rows so that scans of the big
//! tables parallelise across executor slots:
//!
//! ```text
//! DIR/
//!   _SUCCESS                 "sf=1" (written last: a directory without it is incomplete)
//!   lineitem/part-1.parquet  ... part-6.parquet
//!   orders/part-1.parquet    part-2.parquet
//!   nation/part-1.parquet
//!   ...
//! ```
//!
//! Column types are the ones the queries expect: keys `Int64`, money and quantities
//! `Decimal128(15, 2)`, dates `Date32`, text `Utf8View`.
//!
//! [`query`] returns the text of the queries kept in `benchmarks/tpch/qN.sql`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::record_batch::RecordBatchReader;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ember_core::{EmberError, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The 8 TPC-H tables, smallest first.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// The numbers of the TPC-H queries [`query`] knows.
pub const QUERY_NUMBERS: [usize; 22] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
];

/// Target rows per Parquet file; big tables are split into this many-row parts.
pub const ROWS_PER_FILE: f64 = 1_000_000.0;

/// Rows per Parquet row group: small enough that one file still splits across slots.
const ROWS_PER_ROW_GROUP: usize = 128 * 1024;

/// Name of the marker written once every table of a scale factor is complete.
const SUCCESS: &str = "_SUCCESS";
/// Held (`flock`) by the one generator writing into a folder.
const LOCK: &str = ".ember-generate.lock";

const QUERIES: [&str; 22] = [
    include_str!("../../../benchmarks/tpch/q1.sql"),
    include_str!("../../../benchmarks/tpch/q2.sql"),
    include_str!("../../../benchmarks/tpch/q3.sql"),
    include_str!("../../../benchmarks/tpch/q4.sql"),
    include_str!("../../../benchmarks/tpch/q5.sql"),
    include_str!("../../../benchmarks/tpch/q6.sql"),
    include_str!("../../../benchmarks/tpch/q7.sql"),
    include_str!("../../../benchmarks/tpch/q8.sql"),
    include_str!("../../../benchmarks/tpch/q9.sql"),
    include_str!("../../../benchmarks/tpch/q10.sql"),
    include_str!("../../../benchmarks/tpch/q11.sql"),
    include_str!("../../../benchmarks/tpch/q12.sql"),
    include_str!("../../../benchmarks/tpch/q13.sql"),
    include_str!("../../../benchmarks/tpch/q14.sql"),
    include_str!("../../../benchmarks/tpch/q15.sql"),
    include_str!("../../../benchmarks/tpch/q16.sql"),
    include_str!("../../../benchmarks/tpch/q17.sql"),
    include_str!("../../../benchmarks/tpch/q18.sql"),
    include_str!("../../../benchmarks/tpch/q19.sql"),
    include_str!("../../../benchmarks/tpch/q20.sql"),
    include_str!("../../../benchmarks/tpch/q21.sql"),
    include_str!("../../../benchmarks/tpch/q22.sql"),
];

/// The SQL text of TPC-H query `n` (1 to 22), one statement.
pub fn query(n: usize) -> Result<String> {
    n.checked_sub(1)
        .and_then(|i| QUERIES.get(i))
        .map(|q| q.to_string())
        .ok_or_else(|| {
            EmberError::Config(format!("no TPC-H query {n}: queries are numbered 1 to 22"))
        })
}

/// Approximate row count of `table` at scale factor `sf` (TPC-H spec, section 4.2.5).
fn approx_rows(table: &str, sf: f64) -> f64 {
    let per_sf = match table {
        "region" | "nation" => return 25.0,
        "supplier" => 10_000.0,
        "customer" => 150_000.0,
        "part" => 200_000.0,
        "partsupp" => 800_000.0,
        "orders" => 1_500_000.0,
        _ => 6_000_000.0, // lineitem: about 4 per order
    };
    per_sf * sf
}

/// How many files `table` is split into at scale factor `sf`.
fn file_count(table: &str, sf: f64) -> usize {
    ((approx_rows(table, sf) / ROWS_PER_FILE).ceil() as usize).max(1)
}

fn success_contents(sf: f64) -> String {
    format!("sf={sf}\n")
}

/// Whether `dir` holds a complete data set generated for scale factor `sf`.
pub fn is_generated(sf: f64, dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(SUCCESS)).is_ok_and(|s| s == success_contents(sf))
}

/// Writes the 8 TPC-H tables at scale factor `sf` into `dir` as Parquet
/// (`dir/<table>/part-N.parquet`), unless `dir` already holds them for that `sf`.
///
/// Blocking and CPU-heavy (it uses every core): call it from `spawn_blocking` in
/// async code.
pub fn generate(sf: f64, dir: &Path) -> Result<()> {
    if !(sf > 0.0 && sf.is_finite()) {
        return Err(EmberError::Config(format!(
            "invalid TPC-H scale factor {sf}: expected a number > 0"
        )));
    }
    if is_generated(sf, dir) {
        tracing::info!(sf, dir = %dir.display(), "TPC-H data already generated");
        return Ok(());
    }
    // Two threads or processes generating into one folder take turns: the second
    // waits for the first, then finds the data there.
    std::fs::create_dir_all(dir).map_err(|e| EmberError::io(dir.display(), e))?;
    let lock_path = dir.join(LOCK);
    let lock = File::create(&lock_path).map_err(|e| EmberError::io(lock_path.display(), e))?;
    lock.lock()
        .map_err(|e| EmberError::io(lock_path.display(), e))?;
    if is_generated(sf, dir) {
        tracing::info!(sf, dir = %dir.display(), "TPC-H data generated by another process");
        return Ok(());
    }
    let marker = dir.join(SUCCESS);
    remove_if_exists(&marker)?;
    let mut jobs = Vec::new();
    for table in TABLES {
        let table_dir = dir.join(table);
        std::fs::create_dir_all(&table_dir).map_err(|e| EmberError::io(table_dir.display(), e))?;
        let parts = file_count(table, sf);
        remove_stale_parts(&table_dir, parts)?;
        for part in 1..=parts {
            jobs.push(Part {
                table,
                sf,
                part,
                parts,
                path: table_dir.join(part_name(part)),
            });
        }
    }
    // Biggest parts first, so that the last thread to finish is not stuck with one.
    jobs.sort_by(|a, b| {
        let rows = |p: &Part| approx_rows(p.table, p.sf) / p.parts as f64;
        rows(b).total_cmp(&rows(a))
    });

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()) {
            scope.spawn(|| {
                while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = job.write() {
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                        // Make the other threads stop after their current part.
                        next.store(jobs.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let tmp = unique_temp_name(&marker);
    std::fs::write(&tmp, success_contents(sf)).map_err(|e| EmberError::io(tmp.display(), e))?;
    std::fs::rename(&tmp, &marker).map_err(|e| EmberError::io(marker.display(), e))
}

/// A hidden sibling of `path` that no other writer, in this process or another, uses.
fn unique_temp_name(path: &Path) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    path.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(EmberError::io(path.display(), e))
        }
        _ => Ok(()),
    }
}

fn part_name(part: usize) -> String {
    format!("part-{part}.parquet")
}

/// Removes the `*.parquet` files beyond `parts` that a run at another scale factor
/// left, so that the table is exactly the parts written now. Parts that will be
/// rewritten stay: each is replaced atomically, so that two processes generating
/// the same data never see a half-written file.
fn remove_stale_parts(table_dir: &Path, parts: usize) -> Result<()> {
    let expected: Vec<String> = (1..=parts).map(part_name).collect();
    let entries =
        std::fs::read_dir(table_dir).map_err(|e| EmberError::io(table_dir.display(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| EmberError::io(table_dir.display(), e))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".parquet") && !expected.iter().any(|e| e == name) {
            remove_if_exists(&path)?;
        }
    }
    Ok(())
}

/// One file to write: part `part` of `parts` of `table`.
struct Part {
    table: &'static str,
    sf: f64,
    part: usize,
    parts: usize,
    path: PathBuf,
}

impl Part {
    fn reader(&self) -> Box<dyn RecordBatchReader + Send> {
        let (sf, part, parts) = (self.sf, self.part as i32, self.parts as i32);
        match self.table {
            "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts))),
            "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts))),
            "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts))),
            "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts))),
            "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts))),
            "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts))),
            "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts))),
            _ => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts))),
        }
    }

    /// Writes the part to a hidden temporary file (which listing tables ignore), then
    /// renames it into place.
    fn write(&self) -> Result<()> {
        let path = self.path.display();
        let tmp = unique_temp_name(&self.path);
        let reader = self.reader();
        let file = File::create(&tmp).map_err(|e| EmberError::io(tmp.display(), e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
            .build();
        let parquet_err =
            |e: parquet::errors::ParquetError| EmberError::Internal(format!("writing {path}: {e}"));
        let mut writer =
            ArrowWriter::try_new(file, reader.schema(), Some(props)).map_err(parquet_err)?;
        let mut rows = 0;
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows();
            writer.write(&batch).map_err(parquet_err)?;
        }
        writer.close().map_err(parquet_err)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| EmberError::io(&path, e))?;
        tracing::debug!(
            table = self.table,
            part = self.part,
            rows,
            "wrote TPC-H part"
        );
        Ok(())
    }
}

/// Registers the 8 tables of a [`generate`]d directory as Parquet listing tables.
pub async fn register_tables(ctx: &SessionContext, dir: &Path) -> Result<()> {
    for table in TABLES {
        let table_dir = dir.join(table);
        if !table_dir.is_dir() {
            return Err(EmberError::Config(format!(
                "{} is not a TPC-H data directory: {} is missing (generate it with `ember gen tpch --out {}`)",
                dir.display(),
                table_dir.display(),
                dir.display()
            )));
        }
        // A trailing slash makes DataFusion treat the path as a directory of files.
        let url = format!("{}/", table_dir.display());
        ctx.register_parquet(table, &url, ParquetReadOptions::default())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_numbers_cover_every_embedded_query() {
        for n in QUERY_NUMBERS {
            assert!(query(n).unwrap().to_lowercase().contains("select"), "q{n}");
        }
        assert!(query(0).is_err());
        assert!(query(23).is_err());
    }

    #[test]
    fn big_tables_split_into_parts_of_about_a_million_rows() {
        assert_eq!(file_count("lineitem", 1.0), 6);
        assert_eq!(file_count("orders", 1.0), 2);
        assert_eq!(file_count("nation", 100.0), 1);
        assert_eq!(file_count("lineitem", 0.01), 1);
    }

    #[test]
    fn generators_racing_into_one_empty_folder_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("tpch");
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| generate(0.001, &data)))
                .collect();
            for run in runs {
                run.join().unwrap().unwrap();
            }
        });
        assert!(is_generated(0.001, &data));
        for table in TABLES {
            let files: Vec<_> = std::fs::read_dir(data.join(table))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                files.iter().all(|f| f.starts_with("part-")),
                "{table}: {files:?}"
            );
        }
    }

    #[tokio::test]
    async fn generated_tables_have_the_types_the_queries_expect() {
        use arrow::datatypes::DataType;
        let dir = tempfile::tempdir().unwrap();
        generate(0.001, dir.path()).unwrap();
        assert!(is_generated(0.001, dir.path()));
        assert!(!is_generated(0.01, dir.path()));
        let ctx = SessionContext::new();
        register_tables(&ctx, dir.path()).await.unwrap();
        let lineitem = ctx.table("lineitem").await.unwrap();
        let schema = lineitem.schema();
        let ty = |c: &str| {
            schema
                .field_with_unqualified_name(c)
                .unwrap()
                .data_type()
                .clone()
        };
        assert_eq!(ty("l_shipdate"), DataType::Date32);
        assert_eq!(ty("l_extendedprice"), DataType::Decimal128(15, 2));
        assert_eq!(ty("l_quantity"), DataType::Decimal128(15, 2));
        let batches = ctx
            .sql(&query(1).unwrap())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 4, "q1 has one row per (returnflag, linestatus)");
    }
}

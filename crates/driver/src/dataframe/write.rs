//! `df.write()`: the `DataFrameWriter` for Parquet, CSV and JSON lines.
//!
//! The rows are computed by an ember job ([`DataFrame::collect`]); the collected
//! batches are then written by DataFusion's file writers from an in-memory table.
//! The output path is a directory of files named `<write id>_<n>.<ext>`, so appends
//! never overwrite earlier files; with `partition_by` it holds hive-style
//! `col=value/` subdirectories and the partition columns are not stored in the files.
//! Paths are local file system paths.

use std::io::ErrorKind;
use std::sync::Arc;

use datafusion::common::config::{CsvOptions, JsonOptions, TableParquetOptions};
use datafusion::dataframe::DataFrameWriteOptions;
use ember_core::{EmberError, Result};
use ember_exec::storage::Dir;

use super::DataFrame;
use super::create::mem_table;
use super::options::Options;

/// What to do when the output path already holds data, as in Spark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SaveMode {
    /// Fail, naming the path (the default).
    #[default]
    ErrorIfExists,
    /// Add new files next to the existing ones.
    Append,
    /// Remove the existing path, then write.
    Overwrite,
    /// Write nothing, successfully.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Csv,
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    fn known_options(self) -> &'static [&'static str] {
        match self {
            Format::Parquet => &["compression"],
            Format::Csv => &["header", "delimiter", "sep", "quote", "escape"],
            Format::Json => &[],
        }
    }
}

/// Builder for writing a frame's rows to files, like Spark's `DataFrameWriter`.
///
/// Parquet options: `compression` (e.g. `zstd(3)`, `snappy`, `uncompressed`).
/// CSV options: `header` (default `false`, as in Spark), `delimiter` (alias `sep`),
/// `quote`, `escape`. JSON has none.
#[derive(Debug, Clone)]
pub struct DataFrameWriter {
    df: DataFrame,
    mode: SaveMode,
    partition_by: Vec<String>,
    options: Options,
}

impl DataFrame {
    /// Starts writing this frame's rows: `df.write().mode(SaveMode::Overwrite).parquet(p)`.
    pub fn write(&self) -> DataFrameWriter {
        DataFrameWriter {
            df: self.clone(),
            mode: SaveMode::default(),
            partition_by: vec![],
            options: Options::default(),
        }
    }
}

impl DataFrameWriter {
    pub fn mode(mut self, mode: SaveMode) -> Self {
        self.mode = mode;
        self
    }

    /// Writes one `col=value/` directory level per column, in this order.
    pub fn partition_by(mut self, columns: &[&str]) -> Self {
        self.partition_by = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Sets a format option; keys are case-insensitive.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.set(key, &value.to_string());
        self
    }

    pub async fn parquet(self, path: &str) -> Result<()> {
        self.save(path, Format::Parquet).await
    }

    pub async fn csv(self, path: &str) -> Result<()> {
        self.save(path, Format::Csv).await
    }

    /// Writes JSON lines: one object per row.
    pub async fn json(self, path: &str) -> Result<()> {
        self.save(path, Format::Json).await
    }

    async fn save(self, path: &str, format: Format) -> Result<()> {
        // Everything that can be checked without running the job is checked first.
        self.options
            .check_known(format.name(), format.known_options())?;
        let schema = self.df.df.schema();
        for column in &self.partition_by {
            schema.qualified_field_with_unqualified_name(column)?;
        }
        // A path, or a directory in an object store (through the session's registry).
        let stores = self.df.session().context().runtime_env();
        let target = Dir::parse(path, stores.object_store_registry.as_ref())?;
        let exists = match &target {
            Dir::Local(_) => has_data(path).await?,
            Dir::Store { .. } => !target.list().await?.is_empty(),
        };
        match self.mode {
            SaveMode::ErrorIfExists if exists => {
                return Err(EmberError::io(
                    path,
                    std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        "path already exists and is not empty \
                         (use SaveMode::Overwrite or SaveMode::Append)",
                    ),
                ));
            }
            SaveMode::Ignore if exists => return Ok(()),
            _ => {}
        }

        // Compute before deleting anything: the frame may read the path it overwrites.
        let batches = self.df.collect().await?;
        if self.mode == SaveMode::Overwrite {
            target.remove_all().await?;
        }
        if let Dir::Local(_) = target {
            tokio::fs::create_dir_all(path)
                .await
                .map_err(|e| EmberError::io(path, e))?;
        }

        let session = self.df.session();
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.df.schema());
        let slots = session.context().copied_config().target_partitions();
        let rows = session
            .context()
            .read_table(Arc::new(mem_table(schema, batches, slots)?))?;
        let write_options = DataFrameWriteOptions::new()
            .with_single_file_output(false)
            .with_partition_by(self.partition_by.clone());
        match format {
            Format::Parquet => {
                rows.write_parquet(path, write_options, Some(self.parquet_options()))
                    .await?
            }
            Format::Csv => {
                rows.write_csv(path, write_options, Some(self.csv_options()?))
                    .await?
            }
            Format::Json => {
                rows.write_json(path, write_options, Some(JsonOptions::default()))
                    .await?
            }
        };
        Ok(())
    }

    fn parquet_options(&self) -> TableParquetOptions {
        let mut options = TableParquetOptions::default();
        if let Some(c) = self.options.string(&["compression"]) {
            options.global.compression = Some(c);
        }
        options
    }

    fn csv_options(&self) -> Result<CsvOptions> {
        let mut options = CsvOptions {
            has_header: Some(self.options.bool(&["header"])?.unwrap_or(false)),
            ..CsvOptions::default()
        };
        if let Some(d) = self.options.byte(&["delimiter", "sep"])? {
            options.delimiter = d;
        }
        if let Some(q) = self.options.byte(&["quote"])? {
            options.quote = q;
        }
        options.escape = self.options.byte(&["escape"])?;
        Ok(options)
    }
}

/// Whether `path` is a file, or a directory with at least one entry.
async fn has_data(path: &str) -> Result<bool> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(EmberError::io(path, e)),
    };
    if !meta.is_dir() {
        return Ok(true);
    }
    let mut entries = tokio::fs::read_dir(path)
        .await
        .map_err(|e| EmberError::io(path, e))?;
    Ok(entries
        .next_entry()
        .await
        .map_err(|e| EmberError::io(path, e))?
        .is_some())
}

//! `df.write()`: the `DataFrameWriter` for Parquet, CSV and JSON lines.
//!
//! A write is an ember job whose last stage writes the files, on an executor (as
//! `COPY .. TO` does): the rows never pass through the driver. The output path (a
//! local path, or `s3://bucket/path`, `http(s)://` WebDAV, `file://`) is a directory
//! of files named `<write id>_<n>.<ext>`, so appends never overwrite earlier files;
//! with `partition_by` it holds hive-style `col=value/` subdirectories and the
//! partition columns are not stored in the files.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;

use datafusion::common::config::{CsvOptions, JsonOptions, TableParquetOptions};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::file_format::csv::CsvFormatFactory;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::file_format::json::JsonFormatFactory;
use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
use datafusion::logical_expr::LogicalPlanBuilder;
use ember_core::{EmberError, Result};
use ember_exec::storage::Dir;

use super::DataFrame;
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
        let target = self.df.session().dir(path)?;
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

        // What an overwrite replaces is listed before the job runs, and deleted
        // only after it has written the new files: the frame may read the path it
        // overwrites, and a failed job leaves the old files.
        let replaced = match (&target, self.mode) {
            (Dir::Local(file), SaveMode::Overwrite) if file.is_file() => {
                target.remove_all().await?;
                vec![]
            }
            (_, SaveMode::Overwrite) => target.files_under().await?,
            _ => vec![],
        };
        if let Dir::Local(_) = target {
            tokio::fs::create_dir_all(path)
                .await
                .map_err(|e| EmberError::io(path, e))?;
        }
        let format: Arc<dyn FileFormatFactory> = match format {
            Format::Parquet => Arc::new(ParquetFormatFactory::new_with_options(
                self.parquet_options(),
            )),
            Format::Csv => Arc::new(CsvFormatFactory::new_with_options(self.csv_options()?)),
            Format::Json => Arc::new(JsonFormatFactory::new_with_options(JsonOptions::default())),
        };
        // A directory of files named `<write id>_<n>.<ext>`, however the path ends.
        let sink_options = HashMap::from([("single_file_output".to_string(), "false".to_string())]);
        let plan = LogicalPlanBuilder::copy_to(
            self.df.df.logical_plan().clone(),
            // Local paths absolute: the files are written where the tasks run.
            target.to_string(),
            format_as_file_type(format),
            sink_options,
            self.partition_by.clone(),
        )?
        .build()?;
        self.df.session().collect_plan(&plan).await?;
        for file in &replaced {
            target.delete(file).await?;
        }
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

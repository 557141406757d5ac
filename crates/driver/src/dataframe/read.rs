//! `session.read()`: the `DataFrameReader` for CSV, JSON lines and Parquet.
//!
//! Reading only plans a scan (and infers the schema unless one is given); the rows are
//! read when an action runs. A path may be a file, a directory of files with the
//! format's extension, a glob, or an object-store URL. Local paths are checked up
//! front so a typo fails with the path in the message rather than as an empty table.

use arrow::datatypes::SchemaRef;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use ember_core::{EmberError, Result};

use super::DataFrame;
use super::options::Options;
use crate::session::Session;

const CSV_OPTIONS: &[&str] = &[
    "header",
    "delimiter",
    "sep",
    "quote",
    "escape",
    "comment",
    "schema_infer_max_records",
];
const JSON_OPTIONS: &[&str] = &["schema_infer_max_records"];
const PARQUET_OPTIONS: &[&str] = &[];

impl Session {
    /// Starts reading files: `session.read().option("header", "true").csv(path)`.
    pub fn read(&self) -> DataFrameReader {
        crate::session::sync_store_settings(self.context());
        DataFrameReader {
            session: self.clone(),
            options: Options::default(),
            schema: None,
        }
    }
}

/// Builder for file sources, like Spark's `DataFrameReader`.
///
/// CSV options: `header` (default `false`, as in Spark), `delimiter` (alias `sep`,
/// default `,`), `quote`, `escape`, `comment`, `schema_infer_max_records`.
/// JSON (one object per line) options: `schema_infer_max_records`. Parquet has none.
#[derive(Debug, Clone)]
pub struct DataFrameReader {
    session: Session,
    options: Options,
    schema: Option<SchemaRef>,
}

impl DataFrameReader {
    /// Sets a format option; keys are case-insensitive.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.set(key, &value.to_string());
        self
    }

    /// Uses `schema` instead of inferring one from the files.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Reads CSV file(s).
    pub async fn csv(self, path: &str) -> Result<DataFrame> {
        self.options.check_known("csv", CSV_OPTIONS)?;
        let kind = check_path(path).await?;
        let mut opts =
            CsvReadOptions::new().has_header(self.options.bool(&["header"])?.unwrap_or(false));
        if let Some(d) = self.options.byte(&["delimiter", "sep"])? {
            opts = opts.delimiter(d);
        }
        if let Some(q) = self.options.byte(&["quote"])? {
            opts = opts.quote(q);
        }
        opts.escape = self.options.byte(&["escape"])?;
        opts.comment = self.options.byte(&["comment"])?;
        if let Some(n) = self.options.usize(&["schema_infer_max_records"])? {
            opts.schema_infer_max_records = n;
        }
        if kind == PathKind::File {
            opts.file_extension = "";
        }
        opts.schema = self.schema.as_deref();
        let df = self.session.context().read_csv(path, opts).await?;
        Ok(DataFrame::new(self.session.clone(), df))
    }

    /// Reads JSON lines file(s): one JSON object per line.
    pub async fn json(self, path: &str) -> Result<DataFrame> {
        self.options.check_known("json", JSON_OPTIONS)?;
        let kind = check_path(path).await?;
        let mut opts = JsonReadOptions::default();
        if let Some(n) = self.options.usize(&["schema_infer_max_records"])? {
            opts.schema_infer_max_records = n;
        }
        if kind == PathKind::File {
            opts.file_extension = "";
        }
        opts.schema = self.schema.as_deref();
        if let Some(files) = self.committed_files(path, kind).await? {
            opts.file_extension = "";
            let df = self.session.context().read_json(files, opts).await?;
            return Ok(DataFrame::new(self.session.clone(), df));
        }
        let df = self.session.context().read_json(path, opts).await?;
        Ok(DataFrame::new(self.session.clone(), df))
    }

    /// Reads Parquet file(s).
    pub async fn parquet(self, path: &str) -> Result<DataFrame> {
        self.options.check_known("parquet", PARQUET_OPTIONS)?;
        let kind = check_path(path).await?;
        let mut opts = ParquetReadOptions::default();
        if kind == PathKind::File {
            opts.file_extension = "";
        }
        opts.schema = self.schema.as_deref();
        if let Some(files) = self.committed_files(path, kind).await? {
            opts.file_extension = "";
            let df = self.session.context().read_parquet(files, opts).await?;
            return Ok(DataFrame::new(self.session.clone(), df));
        }
        let df = self.session.context().read_parquet(path, opts).await?;
        Ok(DataFrame::new(self.session.clone(), df))
    }
}

impl DataFrameReader {
    /// When `path` is a streaming file sink's directory (local or in an object
    /// store), the files of its committed batches: only those are its rows.
    async fn committed_files(&self, path: &str, kind: PathKind) -> Result<Option<Vec<String>>> {
        if kind == PathKind::File || path.contains(['*', '?', '[']) {
            return Ok(None);
        }
        let dir = self.session.dir(path)?;
        match crate::stream::committed_files(&dir).await? {
            Some(files) if files.is_empty() => Err(EmberError::Config(format!(
                "{path} holds no committed streaming output yet"
            ))),
            files => Ok(files),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    File,
    Directory,
    /// A URL or a glob: left for DataFusion's listing to resolve.
    Other,
}

/// Whether a local path is a file or a directory; an error naming the path if it is
/// neither.
async fn check_path(path: &str) -> Result<PathKind> {
    if path.contains("://") || path.contains(['*', '?', '[']) {
        return Ok(PathKind::Other);
    }
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_dir() => Ok(PathKind::Directory),
        Ok(_) => Ok(PathKind::File),
        Err(e) => Err(EmberError::io(path, e)),
    }
}

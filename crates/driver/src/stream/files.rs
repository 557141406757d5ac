//! A directory of files as a stream: `read_stream().json(dir, schema)`, `.csv(..)`,
//! `.parquet(dir)`. Each batch reads the files that appeared since the last one, at
//! most `max_files_per_trigger`, oldest first. The directory is a path or a directory
//! of an object store (`s3://bucket/path`, `http(s)://` WebDAV, `file://`).
//!
//! The source's offset is `files/0`: how many of the directory's files, ordered by
//! modification time then name, the query has read. Writers should move complete
//! files into the directory (a file written in place could be read half-written;
//! an object store's PUT is whole); names starting with `.` or `_` are skipped, as
//! Spark does.

use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
use ember_exec::storage::Dir;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::source::{Offsets, Source};

const FILES: &str = "files";

/// The files' format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Json,
    /// CSV, with or without a header line.
    Csv {
        header: bool,
    },
    Parquet,
}

#[derive(Debug)]
pub struct FileSource {
    dir: Dir,
    kind: FileKind,
    schema: SchemaRef,
    max_files_per_trigger: Option<usize>,
}

impl FileSource {
    /// JSON-lines files with `schema` (`"device STRING, ts TIMESTAMP, t DOUBLE"`).
    pub fn json(dir: Dir, schema: &str) -> Result<FileSource> {
        Self::with_schema(dir, FileKind::Json, schema)
    }

    /// CSV files with `schema`, in its column order.
    pub fn csv(dir: Dir, schema: &str, header: bool) -> Result<FileSource> {
        Self::with_schema(dir, FileKind::Csv { header }, schema)
    }

    /// Parquet files; the schema is the first file's.
    pub async fn parquet(dir: Dir) -> Result<FileSource> {
        let mut source = FileSource {
            dir,
            kind: FileKind::Parquet,
            schema: Arc::new(arrow::datatypes::Schema::empty()),
            max_files_per_trigger: None,
        };
        let first = source.files().await?.into_iter().next().ok_or_else(|| {
            EmberError::Config(format!(
                "the Parquet file stream {} has no file yet to take its schema from",
                source.dir
            ))
        })?;
        let bytes = source.read_bytes(&first).await?;
        source.schema = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| source.bad_file(&first, e))?
            .schema()
            .clone();
        Ok(source)
    }

    fn with_schema(dir: Dir, kind: FileKind, schema: &str) -> Result<FileSource> {
        let fields = ember_core::json::parse_schema(schema)?;
        Ok(FileSource {
            dir,
            kind,
            schema: Arc::new(arrow::datatypes::Schema::new(fields)),
            max_files_per_trigger: None,
        })
    }

    /// At most `n` new files per batch.
    pub fn max_files_per_trigger(mut self, n: usize) -> Self {
        self.max_files_per_trigger = Some(n.max(1));
        self
    }

    /// The names of the directory's data files, oldest first.
    async fn files(&self) -> Result<Vec<String>> {
        let mut files: Vec<_> = self
            .dir
            .list_files()
            .await?
            .into_iter()
            .filter(|f| !f.name.starts_with('.') && !f.name.starts_with('_'))
            .map(|f| (f.modified, f.name))
            .collect();
        files.sort();
        Ok(files.into_iter().map(|(_, name)| name).collect())
    }

    async fn read_bytes(&self, name: &str) -> Result<bytes::Bytes> {
        match self.dir.read(name).await? {
            Some(bytes) => Ok(bytes.into()),
            None => Err(EmberError::Internal(format!(
                "file stream {}: the file {name} was removed before it was read",
                self.dir
            ))),
        }
    }

    async fn read_file(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self.read_bytes(name).await?;
        let bad = |e: &dyn std::fmt::Display| self.bad_file(name, e);
        let batches: Vec<RecordBatch> = match self.kind {
            FileKind::Parquet => ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(|e| bad(&e))?
                .build()
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(&e))?,
            FileKind::Json => arrow::json::ReaderBuilder::new(self.schema.clone())
                .build(Cursor::new(bytes))
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(&e))?,
            FileKind::Csv { header } => arrow::csv::ReaderBuilder::new(self.schema.clone())
                .with_header(header)
                .build(Cursor::new(bytes))
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(&e))?,
        };
        for b in &batches {
            if b.schema().fields() != self.schema.fields() {
                return Err(EmberError::Config(format!(
                    "file stream: {} has columns ({}), not the stream's ({})",
                    self.dir.join(name),
                    b.schema(),
                    self.schema
                )));
            }
        }
        Ok(batches)
    }

    fn bad_file(&self, name: &str, e: impl std::fmt::Display) -> EmberError {
        EmberError::Decode {
            what: "a file of a file stream",
            message: format!("{}: {e}", self.dir.join(name)),
        }
    }
}

fn at(n: usize) -> Offsets {
    let mut o = Offsets::default();
    o.set(FILES, 0, n as i64);
    o
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn initial(&self) -> Result<Offsets> {
        Ok(at(0))
    }

    async fn latest(&self, start: &Offsets) -> Result<Offsets> {
        let from = start.get(FILES, 0).unwrap_or(0).max(0) as usize;
        let there = self.files().await?.len().max(from);
        Ok(at(match self.max_files_per_trigger {
            Some(max) => there.min(from + max),
            None => there,
        }))
    }

    async fn available(&self) -> Result<Offsets> {
        Ok(at(self.files().await?.len()))
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let from = start.get(FILES, 0).unwrap_or(0).max(0) as usize;
        let to = end.get(FILES, 0).unwrap_or(0).max(0) as usize;
        let files = self.files().await?;
        if to > files.len() {
            return Err(EmberError::Internal(format!(
                "file stream {}: the batch reads files {from}..{to}, but only {} are there (were files removed?)",
                self.dir,
                files.len()
            )));
        }
        let mut batches = vec![];
        for name in &files[from..to] {
            batches.extend(self.read_file(name).await?);
        }
        Ok(batches)
    }

    fn describe(&self) -> String {
        format!("files[{}]", self.dir)
    }
}

//! A directory of files as a stream: `read_stream().json(dir, schema)`, `.csv(..)`,
//! `.parquet(dir)`. Each batch reads the files that appeared since the last one, at
//! most `max_files_per_trigger`, oldest first.
//!
//! The source's offset is `files/0`: how many of the directory's files, ordered by
//! modification time then name, the query has read. Writers should move complete
//! files into the directory (a file written in place could be read half-written);
//! names starting with `.` or `_` are skipped, as Spark does.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
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
    dir: PathBuf,
    kind: FileKind,
    schema: SchemaRef,
    max_files_per_trigger: Option<usize>,
}

fn io(path: &Path, e: std::io::Error) -> EmberError {
    EmberError::io(path.display(), e)
}

impl FileSource {
    /// JSON-lines files with `schema` (`"device STRING, ts TIMESTAMP, t DOUBLE"`).
    pub fn json(dir: impl Into<PathBuf>, schema: &str) -> Result<FileSource> {
        Self::with_schema(dir.into(), FileKind::Json, schema)
    }

    /// CSV files with `schema`, in its column order.
    pub fn csv(dir: impl Into<PathBuf>, schema: &str, header: bool) -> Result<FileSource> {
        Self::with_schema(dir.into(), FileKind::Csv { header }, schema)
    }

    /// Parquet files; the schema is the first file's.
    pub fn parquet(dir: impl Into<PathBuf>) -> Result<FileSource> {
        let dir = dir.into();
        let mut source = FileSource {
            dir,
            kind: FileKind::Parquet,
            schema: Arc::new(arrow::datatypes::Schema::empty()),
            max_files_per_trigger: None,
        };
        let first = source.files()?.into_iter().next().ok_or_else(|| {
            EmberError::Config(format!(
                "the Parquet file stream {} has no file yet to take its schema from",
                source.dir.display()
            ))
        })?;
        let file = File::open(&first).map_err(|e| io(&first, e))?;
        source.schema = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| bad_file(&first, e))?
            .schema()
            .clone();
        Ok(source)
    }

    fn with_schema(dir: PathBuf, kind: FileKind, schema: &str) -> Result<FileSource> {
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

    /// The directory's data files, oldest first.
    fn files(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        let mut files = vec![];
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().map_err(|e| io(&entry.path(), e))?;
            files.push((modified, name.into_owned(), entry.path()));
        }
        files.sort();
        Ok(files.into_iter().map(|(_, _, path)| path).collect())
    }

    fn read_file(&self, path: &Path) -> Result<Vec<RecordBatch>> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let batches: Vec<RecordBatch> = match self.kind {
            FileKind::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bad_file(path, e))?
                .build()
                .map_err(|e| bad_file(path, e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad_file(path, e))?,
            FileKind::Json => arrow::json::ReaderBuilder::new(self.schema.clone())
                .build(BufReader::new(file))
                .map_err(|e| bad_file(path, e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad_file(path, e))?,
            FileKind::Csv { header } => arrow::csv::ReaderBuilder::new(self.schema.clone())
                .with_header(header)
                .build(file)
                .map_err(|e| bad_file(path, e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad_file(path, e))?,
        };
        for b in &batches {
            if b.schema().fields() != self.schema.fields() {
                return Err(EmberError::Config(format!(
                    "file stream: {} has columns ({}), not the stream's ({})",
                    path.display(),
                    b.schema(),
                    self.schema
                )));
            }
        }
        Ok(batches)
    }
}

fn bad_file(path: &Path, e: impl std::fmt::Display) -> EmberError {
    EmberError::Decode {
        what: "a file of a file stream",
        message: format!("{}: {e}", path.display()),
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
        let there = self.files()?.len().max(from);
        Ok(at(match self.max_files_per_trigger {
            Some(max) => there.min(from + max),
            None => there,
        }))
    }

    async fn available(&self) -> Result<Offsets> {
        Ok(at(self.files()?.len()))
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let from = start.get(FILES, 0).unwrap_or(0).max(0) as usize;
        let to = end.get(FILES, 0).unwrap_or(0).max(0) as usize;
        let files = self.files()?;
        if to > files.len() {
            return Err(EmberError::Internal(format!(
                "file stream {}: the batch reads files {from}..{to}, but only {} are there (were files removed?)",
                self.dir.display(),
                files.len()
            )));
        }
        let mut batches = vec![];
        for path in &files[from..to] {
            batches.extend(self.read_file(path)?);
        }
        Ok(batches)
    }

    fn describe(&self) -> String {
        format!("files[{}]", self.dir.display())
    }
}

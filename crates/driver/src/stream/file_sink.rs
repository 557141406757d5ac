//! The file sink: each batch's rows as a file in a directory, local or in an object
//! store (`s3://bucket/path`, `http(s)://` WebDAV, `file://`), exactly once per batch.

use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
use ember_exec::storage::Dir;

use super::sink::Sink;

/// File formats of the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    /// JSON lines.
    Json,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
        }
    }
}

/// Files in a directory, one per batch that has rows, with a log of committed
/// batches in `<dir>/_ember_metadata/<batch>` listing their files. Readers of the
/// directory (`session.read().parquet(dir)`) see only listed files: a batch cut short
/// by a crash leaves files nobody reads, and its re-run writes it again.
///
/// Each file is written whole (through a renamed temporary file locally, by one PUT
/// in an object store), then the batch's log entry, so a listed file is complete.
pub struct FileSink {
    dir: Dir,
    format: FileFormat,
}

/// Where the committed batches are listed.
pub const METADATA_DIR: &str = "_ember_metadata";

#[derive(serde::Serialize, serde::Deserialize)]
struct BatchFiles {
    files: Vec<String>,
}

impl FileSink {
    /// Files under `dir`, resolved through the session's object stores (see
    /// [`Dir::parse`]).
    pub fn new(dir: Dir, format: FileFormat) -> Self {
        FileSink { dir, format }
    }

    /// The batch's rows in the sink's format, or none when it has no rows.
    fn encode(&self, batches: &[RecordBatch]) -> Result<Option<Vec<u8>>> {
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Ok(None);
        };
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let bad = |e: &dyn std::fmt::Display| {
            EmberError::Internal(format!("encoding a batch for {}: {e}", self.dir))
        };
        let mut out = vec![];
        match self.format {
            FileFormat::Parquet => {
                let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None)
                    .map_err(|e| bad(&e))?;
                for b in batches {
                    w.write(b).map_err(|e| bad(&e))?;
                }
                w.close().map_err(|e| bad(&e))?;
            }
            FileFormat::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
        }
        Ok(Some(out))
    }
}

/// The files of the committed batches under a file sink's directory (paths, or URLs
/// in an object store), if it is one: none when it has no log of committed batches.
pub async fn committed_files(dir: &Dir) -> Result<Option<Vec<String>>> {
    let log = dir.join(METADATA_DIR);
    let mut batches: Vec<u64> = log
        .list()
        .await?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    if batches.is_empty() {
        return Ok(None);
    }
    batches.sort_unstable();
    let mut files = vec![];
    for batch in batches {
        let name = batch.to_string();
        let Some(bytes) = log.read(&name).await? else {
            continue;
        };
        let listed: BatchFiles =
            serde_json::from_slice(&bytes).map_err(|e| EmberError::Decode {
                what: "a file sink's metadata log",
                message: format!("{}: {e}", log.join(&name)),
            })?;
        files.extend(listed.files.iter().map(|f| dir.join(f).to_string()));
    }
    Ok(Some(files))
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let log = self.dir.join(METADATA_DIR);
        let marker = batch_id.to_string();
        if log.read(&marker).await?.is_some() {
            tracing::info!(batch = batch_id, dir = %self.dir, "batch already written; skipped");
            return Ok(0);
        }
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let this = FileSink {
            dir: self.dir.clone(),
            format: self.format,
        };
        let encoded = tokio::task::spawn_blocking(move || this.encode(&batches))
            .await
            .map_err(|e| EmberError::Internal(e.to_string()))??;
        let mut files = vec![];
        if let Some(bytes) = encoded {
            // A file of a batch cut short by a crash is never listed; the re-run's
            // name differs, so it never replaces a file a reader may have open.
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let name = format!("part-{batch_id:06}-{nonce:x}.{}", self.format.extension());
            self.dir.create().await?;
            self.dir.write(&name, bytes).await?;
            files.push(name);
        }
        let listing = serde_json::to_vec(&BatchFiles { files }).expect("serializable");
        log.create().await?;
        log.write(&marker, listing).await?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!("files[{}]", self.dir)
    }
}

//! Where a streaming query's results go. A sink gets each batch with its id; a sink
//! that remembers ids (memory) skips a batch it already has, so a batch run again
//! after a restart is not written twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use ember_core::Result;
use parking_lot::Mutex;

use crate::dataframe::DataFrame;
use crate::session::Session;

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Writes batch `batch_id`'s rows; returns how many were written.
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize>;
    fn describe(&self) -> String;
}

/// Keeps every row in memory, as a table `name` the session can query with SQL.
pub struct MemorySink {
    name: String,
    session: Session,
    /// Complete mode: each batch is the whole result and replaces the table.
    replace: bool,
    state: Mutex<(Option<u64>, Vec<RecordBatch>)>,
}

impl MemorySink {
    pub fn new(session: Session, name: &str, replace: bool) -> Self {
        MemorySink {
            name: name.to_string(),
            session,
            replace,
            state: Mutex::new((None, vec![])),
        }
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let all = {
            let mut state = self.state.lock();
            if state.0.is_some_and(|last| batch_id <= last) {
                tracing::info!(batch = batch_id, sink = %self.name, "batch already written; skipped");
                return Ok(0);
            }
            state.0 = Some(batch_id);
            let schema = batches.first().map(|b| b.schema());
            if self.replace {
                state.1.clear();
            }
            state
                .1
                .extend(batches.into_iter().filter(|b| b.num_rows() > 0));
            (schema, state.1.clone())
        };
        let (Some(schema), all) = all else {
            return Ok(rows);
        };
        let table = MemTable::try_new(schema, vec![all])?;
        let ctx = self.session.context();
        ctx.deregister_table(self.name.as_str())?;
        ctx.register_table(self.name.as_str(), Arc::new(table))?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!("memory[{}]", self.name)
    }
}

/// Prints each batch as a table.
pub struct ConsoleSink;

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let table = arrow::util::pretty::pretty_format_batches(&batches)?;
        println!(
            "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n{table}"
        );
        Ok(rows)
    }

    fn describe(&self) -> String {
        "console".into()
    }
}

type BatchFn =
    dyn Fn(DataFrame, u64) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync;

/// Hands each batch to a function as a DataFrame with its batch id (the function
/// makes its writes idempotent by that id).
pub struct ForeachBatchSink {
    session: Session,
    f: Box<BatchFn>,
}

impl ForeachBatchSink {
    pub fn new<F, Fut>(session: Session, f: F) -> Self
    where
        F: Fn(DataFrame, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        ForeachBatchSink {
            session,
            f: Box::new(move |df, id| Box::pin(f(df, id))),
        }
    }
}

#[async_trait::async_trait]
impl Sink for ForeachBatchSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let df = self.session.create_dataframe(batches)?;
        (self.f)(df, batch_id).await?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        "foreach_batch".into()
    }
}

/// File formats of the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    /// JSON lines.
    Json,
}

/// Files in a directory, one or more per batch, with a log of committed batches in
/// `<dir>/_ember_metadata/<batch>` listing their files. Readers of the directory
/// (`session.read().parquet(dir)`) see only listed files: a batch cut short by a
/// crash leaves files nobody reads, and its re-run writes it again.
pub struct FileSink {
    dir: std::path::PathBuf,
    format: FileFormat,
}

/// Where the committed batches are listed.
pub const METADATA_DIR: &str = "_ember_metadata";

#[derive(serde::Serialize, serde::Deserialize)]
struct BatchFiles {
    files: Vec<String>,
}

impl FileSink {
    pub fn new(dir: impl Into<std::path::PathBuf>, format: FileFormat) -> Self {
        FileSink {
            dir: dir.into(),
            format,
        }
    }

    fn write(&self, batch_id: u64, batches: &[RecordBatch]) -> Result<Vec<String>> {
        let io =
            |p: &std::path::Path, e: std::io::Error| ember_core::EmberError::io(p.display(), e);
        std::fs::create_dir_all(self.dir.join(METADATA_DIR)).map_err(|e| io(&self.dir, e))?;
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Ok(vec![]);
        };
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(vec![]);
        }
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let ext = match self.format {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
        };
        let name = format!("part-{batch_id:06}-{nonce:x}.{ext}");
        let path = self.dir.join(&name);
        let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        match self.format {
            FileFormat::Parquet => {
                let mut w =
                    parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(|e| {
                        ember_core::EmberError::Internal(format!("{}: {e}", path.display()))
                    })?;
                for b in batches {
                    w.write(b).map_err(|e| {
                        ember_core::EmberError::Internal(format!("{}: {e}", path.display()))
                    })?;
                }
                w.close().map_err(|e| {
                    ember_core::EmberError::Internal(format!("{}: {e}", path.display()))
                })?;
            }
            FileFormat::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(file);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
        }
        Ok(vec![name])
    }
}

/// The files of the committed batches under a file sink's directory, if it is one.
pub fn committed_files(dir: &std::path::Path) -> Result<Option<Vec<std::path::PathBuf>>> {
    let meta = dir.join(METADATA_DIR);
    let entries = match std::fs::read_dir(&meta) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ember_core::EmberError::io(meta.display(), e)),
    };
    let mut batches: Vec<(u64, std::path::PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().to_str()?.parse().ok()?, e.path()))
        })
        .collect();
    batches.sort();
    let mut files = vec![];
    for (_, path) in batches {
        let bytes =
            std::fs::read(&path).map_err(|e| ember_core::EmberError::io(path.display(), e))?;
        let listed: BatchFiles =
            serde_json::from_slice(&bytes).map_err(|e| ember_core::EmberError::Decode {
                what: "a file sink's metadata log",
                message: format!("{}: {e}", path.display()),
            })?;
        files.extend(listed.files.into_iter().map(|f| dir.join(f)));
    }
    Ok(Some(files))
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let marker = self.dir.join(METADATA_DIR).join(batch_id.to_string());
        if marker.exists() {
            tracing::info!(batch = batch_id, dir = %self.dir.display(), "batch already written; skipped");
            return Ok(0);
        }
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let this = FileSink {
            dir: self.dir.clone(),
            format: self.format,
        };
        tokio::task::spawn_blocking(move || -> Result<()> {
            let files = this.write(batch_id, &batches)?;
            let listing = serde_json::to_vec(&BatchFiles { files }).expect("serializable");
            let tmp = marker.with_extension("tmp");
            std::fs::create_dir_all(this.dir.join(METADATA_DIR))
                .map_err(|e| ember_core::EmberError::io(this.dir.display(), e))?;
            std::fs::write(&tmp, listing)
                .map_err(|e| ember_core::EmberError::io(tmp.display(), e))?;
            std::fs::rename(&tmp, &marker)
                .map_err(|e| ember_core::EmberError::io(marker.display(), e))
        })
        .await
        .map_err(|e| ember_core::EmberError::Internal(e.to_string()))??;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!("files[{}]", self.dir.display())
    }
}

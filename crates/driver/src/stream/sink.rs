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

//! Micro-batch streaming (DESIGN.md §5): a streaming DataFrame reads a source such as
//! the embedded log; `write_stream().start()` runs it batch after batch.
//!
//! ```text
//!  latest offsets ─▶ offsets/<n> written ─▶ read [start, end) ─▶ the query's plan over
//!  those rows ─▶ sink (batch n) ─▶ commits/<n> written ─▶ next batch from end
//!  restart: offsets/<n> without commits/<n> ─▶ batch n again, same ranges
//! ```
//!
//! A streaming DataFrame is an ordinary one whose plan scans a [`StreamTable`]; every
//! stateless operator and SQL over it works, joins with static tables included. Each
//! batch replaces that scan with the batch's rows, or for a Kafka source with a scan of
//! its offset ranges that the tasks read themselves, and runs the plan as a job.
//! One aggregation (`group_by(..).agg(..)` or SQL `GROUP BY`, by keys and by an
//! event-time `window`/`session_window`) or one deduplication per query keeps state
//! across batches, with `with_watermark` (see `stateful.rs`, and `state.rs` for the
//! store). Sinks include InfluxDB (`influx.rs`); a directory of files is a source too
//! (`files.rs`). Two streams join with state on both sides (`join.rs`). [`MemoryStream`]
//! feeds a query from the program (tests, examples).

mod checkpoint;
mod file_sink;
mod files;
mod influx;
mod join;
mod kafka;
mod log_sink;
mod memory;
mod query;
mod rate;
mod runner;
mod sink;
mod source;
mod stateful;

use std::sync::Arc;

use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use ember_core::Result;
use ember_log::Log;

// The checkpoint's file contents, for the fuzzer; the checkpoint itself is internal.
pub use checkpoint::{BatchRange, Commit};
pub use file_sink::{FileFormat, FileSink, METADATA_DIR, committed_files};
pub use files::{FileKind, FileSource};
pub use influx::{InfluxConfig, InfluxSink, InfluxWriter};
pub use kafka::{KafkaRangeTable, KafkaSource};
pub use log_sink::{KafkaSink, LogSink};
pub use memory::MemoryStream;
pub use query::{
    DataStreamWriter, Durations, OutputMode, Progress, SinkProgress, SourceProgress, StateProgress,
    Status, StreamingQuery, Trigger,
};
pub use rate::RateSource;
pub use sink::Sink;
pub use source::{LogSource, Offsets, Source, StartingOffsets, kafka_schema};
pub use stateful::Watermark;
pub(crate) use stateful::{StatefulNode, StatefulPlanner};

use crate::dataframe::DataFrame;
use crate::session::Session;

/// The stand-in for a stream in a plan: each micro-batch swaps it for its rows.
#[derive(Debug)]
pub struct StreamTable {
    pub(crate) source: Arc<dyn Source>,
}

#[async_trait::async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "{} is a stream: run it with write_stream().start()",
            self.source.describe()
        )))
    }
}

/// `session.read_stream()`: where a streaming DataFrame reads from.
pub struct DataStreamReader {
    session: Session,
}

impl Session {
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader {
            session: self.clone(),
        }
    }
}

impl DataStreamReader {
    /// The embedded log's `topics`, from the earliest offsets.
    pub fn log(self, log: Arc<Log>, topics: &[&str]) -> Result<DataFrame> {
        let topics = topics.iter().map(|t| t.to_string()).collect();
        self.source(Arc::new(LogSource::new(log, topics)))
    }

    /// Kafka topics from `bootstrap_servers` (`host:port,...`), from the earliest
    /// offsets; configure a [`KafkaSource`] and use [`source`](Self::source) for more.
    pub fn kafka(self, bootstrap_servers: &str, topics: &[&str]) -> Result<DataFrame> {
        let topics = topics.iter().map(|t| t.to_string()).collect();
        self.source(Arc::new(KafkaSource::new(bootstrap_servers, topics)))
    }

    /// New JSON-lines files in `dir` (a path or an object store's directory), with
    /// `schema` (`"a STRING, b DOUBLE"`); see [`FileSource`] for `max_files_per_trigger`.
    pub fn json(self, dir: &str, schema: &str) -> Result<DataFrame> {
        let dir = self.session.dir(dir)?;
        self.source(Arc::new(FileSource::json(dir, schema)?))
    }

    /// New CSV files in `dir` (with a header line), with `schema`.
    pub fn csv(self, dir: &str, schema: &str) -> Result<DataFrame> {
        let dir = self.session.dir(dir)?;
        self.source(Arc::new(FileSource::csv(dir, schema, true)?))
    }

    /// New Parquet files in `dir` (the schema is the first file's).
    pub async fn parquet(self, dir: &str) -> Result<DataFrame> {
        let dir = self.session.dir(dir)?;
        self.source(Arc::new(FileSource::parquet(dir).await?))
    }

    /// Spark's rate source: `timestamp` and `value` columns, `rows_per_second` rows a
    /// second from when the query first starts.
    pub fn rate(self, rows_per_second: u64) -> Result<DataFrame> {
        self.source(Arc::new(RateSource::new(rows_per_second)?))
    }

    /// Registers a source as table `name`, for streaming SQL
    /// (`session.sql("SELECT .. FROM name")` is then a streaming DataFrame).
    pub fn register(self, name: &str, source: Arc<dyn Source>) -> Result<()> {
        let ctx = self.session.context();
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::new(StreamTable { source }))?;
        Ok(())
    }

    /// Any source (for example a configured [`LogSource`] or [`KafkaSource`]).
    pub fn source(self, source: Arc<dyn Source>) -> Result<DataFrame> {
        let name = source.describe();
        let table = Arc::new(StreamTable { source });
        let plan = LogicalPlanBuilder::scan(
            name,
            datafusion::datasource::provider_as_source(table),
            None,
        )?
        .build()?;
        let df = datafusion::dataframe::DataFrame::new(self.session.context().state(), plan);
        Ok(DataFrame::new(self.session.clone(), df))
    }
}

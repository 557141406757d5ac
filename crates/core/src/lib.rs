//! ember-core: what the driver and the executors share.
//!
//! - [`config`]: the typed `ember.*` configuration (a DataFusion config extension).
//! - [`error`]: the crate's error type; errors that cross the scheduler say whether
//!   they are retryable.
//! - [`shuffle`]: the exchange operators that cut a physical plan into stages
//!   (`ShuffleWriterExec`, `UnresolvedShuffleExec`, `ShuffleReaderExec`) and the
//!   on-disk / in-memory shuffle storage they use.
//! - [`codec`]: the `datafusion-proto` extension codec, so every stage plan travels as
//!   bytes, in local mode as in a cluster.
//! - [`task`]: task identities, definitions and typed results, and [`task::run_task`],
//!   which decodes and runs one task wherever it is executed.
//! - [`cancel`]: stopping a killed task at its next batch.
//! - [`stateful`]: streaming aggregation and deduplication as tasks, one per state
//!   partition, and the versioned state store they keep in the checkpoint.
//! - [`storage`]: checkpoint directories, local or in an object store (WebDAV, S3).
//! - [`ipc`]: the one hardened decoder of Arrow IPC streams from outside the process.
//! - [`batch_fn`]: named RecordBatch functions (`map_batches`), the MapReduce-style
//!   escape hatch.
//! - [`proto`]: the generated gRPC code of `proto/ember.proto`; [`convert`] turns task
//!   definitions and results into its messages and back.

pub mod batch_fn;
pub mod cancel;
pub mod codec;
pub mod config;
pub mod convert;
pub mod error;
pub mod event_time;
pub mod ipc;
pub mod json;
pub mod kafka_scan;
pub mod metrics;
pub mod proto;
pub mod rpc;
pub mod shuffle;
pub mod stateful;
pub mod storage;
pub mod task;

pub use config::EmberConfig;
pub use error::{EmberError, Result};

/// The version of the driver/executor protocol, sent when an executor registers.
pub const PROTOCOL_VERSION: u32 = 1;

/// ember's own SQL functions, present in every session and on every executor.
pub fn ember_functions() -> Vec<datafusion::logical_expr::ScalarUDF> {
    let mut functions = vec![
        json::parse_udf(json::Format::Json),
        json::parse_udf(json::Format::Csv),
    ];
    functions.extend(event_time::event_time_udfs());
    functions
}

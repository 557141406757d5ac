//! ember-exec: the execution layer that local mode and executors share.
//!
//! - [`task`]: [`task::run_task`] decodes and runs one task in the [`task::TaskEnv`]
//!   its executor provides (the task vocabulary is `ember_core::task`, re-exported).
//! - [`shuffle`]: the exchange operators that cut a physical plan into stages
//!   (`ShuffleWriterExec`, `UnresolvedShuffleExec`, `ShuffleReaderExec`) and the
//!   on-disk / in-memory shuffle storage they use.
//! - [`codec`]: the `datafusion-proto` extension codec of ember's operators, so every
//!   stage plan travels as bytes, in local mode as in a cluster.
//! - [`cancel`]: stopping a killed task at its next batch.
//! - [`stateful`]: streaming aggregation, deduplication and stream-stream joins as
//!   tasks, one per state partition, and the versioned state store they keep in the
//!   checkpoint.
//! - [`kafka_scan`]: a streaming batch's Kafka offset ranges, read by the tasks.
//! - [`memory`]: an executor's one memory pool (sized from its memory) and spill
//!   directory, shared by its task slots.
//! - [`storage`]: checkpoint directories, local or in an object store (WebDAV, S3).
//! - [`batch_fn`]: named RecordBatch functions (`map_batches`), the MapReduce-style
//!   escape hatch.
//!
//! `ember-core` holds the vocabulary all of this speaks (config, errors, ids, plan
//! bytes, the protocol); its modules are used here under their own names.

pub mod batch_fn;
pub mod cancel;
pub mod codec;
pub mod kafka_scan;
pub mod key_filter;
pub mod memory;
pub mod shuffle;
pub mod stateful;
pub mod storage;
pub mod task;

use ember_core::{EmberError, Result};
use ember_core::{config, convert, error, event_time, ipc, proto, rpc};

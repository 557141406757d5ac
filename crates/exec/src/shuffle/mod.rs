//! The shuffle: how one stage's output reaches the next.
//!
//! ```text
//!   stage 1 (map side)                         stage 2 (reduce side)
//!   ┌───────────────────────┐                  ┌────────────────────────────┐
//!   │ ShuffleWriterExec     │  map outputs     │ ...                        │
//!   │   (hash / none)       │ ───────────────▶ │ ShuffleReaderExec          │
//!   │   └── stage plan      │  one data file + │  (was UnresolvedShuffleExec│
//!   └───────────────────────┘  index per task, │   until stage 1 finished)  │
//!                              or memory       └────────────────────────────┘
//! ```
//!
//! A map task runs its stage plan for one input partition and splits the rows into the
//! exchange's output partitions ([`ShuffleWriterExec`]). Below the session's memory
//! budget the output stays in memory ([`MemoryShuffleStore`]); otherwise it is written as
//! ONE Arrow IPC data file per map task, each output partition a contiguous IPC stream,
//! plus an index of partition byte ranges. The planner leaves an
//! [`UnresolvedShuffleExec`] where the child stage's data will be read; when the child
//! stage has finished, the scheduler replaces it by a [`ShuffleReaderExec`] that knows
//! every map output's location.

mod facts;
mod fetch;
mod format;
mod reader;
mod store;
mod unresolved;
mod writer;

pub use ember_core::shuffle::{
    MapOutput, MapOutputKey, PartitionLocation, PartitionStats, ShuffleData,
};
pub use facts::{after_hash_exchange, after_passthrough};
pub use fetch::{CHUNK_BYTES, serve_partition};
pub use format::{ipc_write_options, read_index};
pub use reader::ShuffleReaderExec;
pub use store::{MemoryShuffleStore, ShuffleEnv};
pub use unresolved::UnresolvedShuffleExec;
pub use writer::ShuffleWriterExec;

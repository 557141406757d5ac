//! Stateful streaming operators as they run in tasks: aggregation and deduplication,
//! one task per state partition.
//!
//! ```text
//!  batch plan's rows ─▶ hash exchange on the operator's keys (P partitions)
//!    ─▶ StatefulExec, partition p (wherever the task runs):
//!         load p's state at version n-1 (kept in memory from the batch before, or
//!         read from the checkpoint's store)
//!       ─▶ drop rows older than the batch's watermark (counted as late)
//!       ─▶ fold ─▶ emit per output mode ─▶ evict what the watermark closed
//!       ─▶ write p's version n, with the batch's statistics
//!    ─▶ the plan above the operator ─▶ the query's sink
//! ```
//!
//! The watermark a batch uses is the one the batches before it reached; the query
//! reads each partition's largest event time from the statistics to move it on.
//! A batch emits and evicts what its own watermark closes (Spark's rule), so a
//! window that a batch's rows close comes out of the next batch, which the query runs
//! without new data when none comes.
//!
//! - [`store`]: the versioned, partitioned store.
//! - `aggregate.rs`: any aggregate function, on DataFusion's accumulators (their
//!   intermediate state per group), by keys and at most one tumbling, sliding or
//!   session window.
//! - `dedup.rs`: the first row of each key passes.
//! - [`exec`]: [`StatefulExec`](exec::StatefulExec), the physical operator, and its
//!   in-memory cache of partitions.

use std::collections::{BTreeMap, HashMap};

use arrow::array::Array;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::execution::object_store::ObjectStoreRegistry;
use serde::{Deserialize, Serialize};

use crate::event_time::{WindowKind, event_times};
use crate::{EmberError, Result};

mod aggregate;
mod dedup;
pub mod exec;
pub mod join;
pub mod store;

pub use aggregate::Aggregates;
use aggregate::{AggregateOp, GroupState, split_key};
use dedup::DedupOp;
use store::{Change, Entries, Snapshot};

/// Which rows a batch hands to the sink (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputMode {
    Append,
    Update,
    Complete,
}

/// A partitioned stateful operator, as the query plans it and its tasks run it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpConfig {
    /// Group by `keys` plain keys and at most one window (at `window_position` among
    /// the group columns), folding `aggregates` functions (the operator carries
    /// them as DataFusion planned them: [`Aggregates`]).
    Aggregate {
        window: Option<WindowKind>,
        window_position: Option<usize>,
        keys: usize,
        aggregates: usize,
    },
    /// The first row of each key passes: the input is the row's `columns`, then
    /// `keys` key columns.
    Dedup { keys: usize, columns: usize },
    /// A stream-stream join on `keys` equal keys: each side's event-time column, the
    /// bounds on `t_right - t_left` (ms) its condition sets, and which sides are
    /// outer (their rows that never matched come out, with nulls, once evicted).
    Join {
        keys: usize,
        times: [String; 2],
        lower: Option<i64>,
        upper: Option<i64>,
        #[serde(default)]
        outer: [bool; 2],
    },
}

impl OpConfig {
    /// The input columns the state is partitioned by (after the event time, if any).
    pub fn key_columns(&self, event_time: bool) -> std::ops::Range<usize> {
        let first = usize::from(event_time);
        match self {
            OpConfig::Aggregate { window, keys, .. } => {
                let from = first + usize::from(window.is_some());
                from..from + keys
            }
            OpConfig::Dedup { keys, columns } => first + columns..first + columns + keys,
            // A join's keys are expressions of each side (`StreamJoinExec::keys`).
            OpConfig::Join { .. } => 0..0,
        }
    }

    /// Whether the state is spread over partitions by key (else it is one).
    pub fn keyed(&self, event_time: bool) -> bool {
        match self {
            OpConfig::Join { keys, .. } => *keys > 0,
            _ => !self.key_columns(event_time).is_empty(),
        }
    }

    pub fn windowed(&self) -> bool {
        matches!(
            self,
            OpConfig::Aggregate {
                window: Some(_),
                ..
            }
        )
    }
}

/// What one batch of a stateful operator needs, in the query process and in its
/// tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatefulConfig {
    pub op: OpConfig,
    /// Whether the input's first column is the watermark's event time.
    pub event_time: bool,
    pub mode: OutputMode,
    /// The operator's state directory: an absolute path (tasks may run elsewhere) or
    /// an object store's URL (see [`crate::storage`]).
    pub state_dir: String,
    pub partitions: usize,
    pub snapshot_every: u64,
    /// The query's id (its checkpoint's): a directory made again for a new query
    /// is not the old one's, for the partitions a process keeps in memory.
    #[serde(default)]
    pub query_id: String,
    /// The batch: version `batch_id` of the state is written.
    pub batch_id: u64,
    /// The batch's watermark (ms).
    pub watermark_ms: Option<i64>,
}

impl StatefulConfig {
    /// How keys are spread over the partitions (and, for an aggregation, what a
    /// group's state is), recorded with the state.
    pub fn layout(&self) -> String {
        let layout = format!(
            "hash of the key columns over {} partitions",
            self.partitions
        );
        match self.op {
            OpConfig::Aggregate { .. } => {
                format!("{layout}; groups keep DataFusion accumulator states")
            }
            _ => layout,
        }
    }

    /// A configuration that came over the wire says what a task can run.
    pub(crate) fn check(&self) -> Result<()> {
        if self.partitions == 0 || self.state_dir.is_empty() {
            return Err(EmberError::Decode {
                what: "a stateful operator's configuration",
                message: format!(
                    "{} partitions in '{}': needs at least one, and a state directory",
                    self.partitions, self.state_dir
                ),
            });
        }
        Ok(())
    }

    /// What a process keeps this operator's partitions in memory under.
    pub(crate) fn cache_key(&self) -> String {
        format!("{} {}", self.query_id, self.state_dir)
    }

    /// The operator's state store; an object store's client comes from (or goes
    /// into) `stores`, the runtime's registry.
    pub fn store(&self, stores: &dyn ObjectStoreRegistry) -> Result<store::StateStore> {
        Ok(store::StateStore::new(
            crate::storage::Dir::parse(&self.state_dir, stores)?,
            self.snapshot_every,
        ))
    }
}

/// The operator, with the types of its columns.
#[derive(Debug)]
pub(crate) enum Op {
    Aggregate(AggregateOp),
    Dedup(DedupOp),
}

/// An operator's state in memory.
pub(crate) enum OpState {
    Aggregate {
        groups: HashMap<Box<[u8]>, GroupState>,
        /// Session windows: each key's sessions, start → end.
        sessions: HashMap<Box<[u8]>, BTreeMap<i64, i64>>,
    },
    Dedup {
        /// Key → its event time (`i64::MAX` without a watermark).
        seen: HashMap<Box<[u8]>, i64>,
    },
    Join(join::Kept),
}

/// What one batch did to a partition's state.
pub(crate) struct Processed {
    pub rows: RecordBatch,
    pub late_rows: usize,
    pub max_event_time: Option<i64>,
    pub changes: Vec<Change>,
    pub rows_total: usize,
    pub rows_updated: usize,
    pub rows_removed: usize,
}

fn converter(types: &[DataType]) -> Result<Option<RowConverter>> {
    if types.is_empty() {
        return Ok(None);
    }
    Ok(Some(RowConverter::new(
        types.iter().map(|t| SortField::new(t.clone())).collect(),
    )?))
}

impl Op {
    pub(crate) fn new(
        config: &StatefulConfig,
        aggregates: &Aggregates,
        input: &Schema,
        output: &Schema,
    ) -> Result<Op> {
        let first = usize::from(config.event_time);
        let expected = match config.op {
            OpConfig::Aggregate { aggregates, .. } => aggregates,
            _ => 0,
        };
        if aggregates.len() != expected {
            return Err(EmberError::Decode {
                what: "a stateful operator",
                message: format!(
                    "{} aggregate functions where its configuration names {expected}",
                    aggregates.len()
                ),
            });
        }
        Ok(match &config.op {
            OpConfig::Aggregate {
                window,
                window_position,
                keys,
                ..
            } => Op::Aggregate(AggregateOp::new(
                *window,
                *window_position,
                *keys,
                aggregates,
                first,
                input,
                output,
            )?),
            OpConfig::Dedup { keys, columns } => {
                Op::Dedup(DedupOp::new(*keys, *columns, first, input)?)
            }
            OpConfig::Join { .. } => {
                return Err(EmberError::Internal(
                    "a stream-stream join runs as StreamJoinExec".into(),
                ));
            }
        })
    }

    /// The state from the store's entries.
    pub(crate) fn load(&self, entries: Entries) -> Result<OpState> {
        match self {
            Op::Aggregate(op) => {
                let mut groups = HashMap::with_capacity(entries.len());
                let mut sessions: HashMap<Box<[u8]>, BTreeMap<i64, i64>> = HashMap::new();
                for (k, v) in entries {
                    if k.len() < 16 {
                        return Err(EmberError::Decode {
                            what: "a streaming aggregation's state",
                            message: format!("a key of {} bytes", k.len()),
                        });
                    }
                    let (start, end, key) = split_key(&k);
                    if matches!(op.window, Some(WindowKind::Session { .. })) {
                        sessions.entry(key.into()).or_default().insert(start, end);
                    }
                    groups.insert(k, op.decode(&v)?);
                }
                Ok(OpState::Aggregate { groups, sessions })
            }
            Op::Dedup(_) => {
                let mut seen = HashMap::with_capacity(entries.len());
                for (k, v) in entries {
                    let t = <[u8; 8]>::try_from(v.as_slice()).map_err(|_| EmberError::Decode {
                        what: "a streaming deduplication's state",
                        message: format!("a value of {} bytes", v.len()),
                    })?;
                    seen.insert(k, i64::from_le_bytes(t));
                }
                Ok(OpState::Dedup { seen })
            }
        }
    }

    /// Every entry, for a snapshot.
    pub(crate) fn entries(state: &OpState) -> Result<Snapshot> {
        Ok(match state {
            OpState::Aggregate { groups, .. } => groups
                .iter()
                .map(|(k, s)| Ok((k.clone(), AggregateOp::encode(s)?)))
                .collect::<Result<_>>()?,
            OpState::Dedup { seen } => seen
                .iter()
                .map(|(k, t)| (k.clone(), t.to_le_bytes().to_vec()))
                .collect(),
            OpState::Join(kept) => join::entries(kept)?,
        })
    }

    /// Folds a batch's rows (the batch plan's output) into the state, then emits per
    /// output mode and evicts what the batch's watermark closed.
    pub(crate) fn process(
        &self,
        state: &mut OpState,
        input: &[RecordBatch],
        config: &StatefulConfig,
        output: &SchemaRef,
    ) -> Result<Processed> {
        let watermark = config.watermark_ms;
        let mut late = 0;
        let mut max_time: Option<i64> = None;
        let mut masks = Vec::with_capacity(input.len());
        for batch in input {
            if !config.event_time {
                masks.push(None);
                continue;
            }
            let times = event_times(batch.column(0))?;
            let mask: Vec<bool> = (0..batch.num_rows())
                .map(|r| {
                    if times.is_null(r) {
                        return false;
                    }
                    let t = times.value(r);
                    if watermark.is_some_and(|w| t < w) {
                        late += 1;
                        return false;
                    }
                    max_time = Some(max_time.map_or(t, |m| m.max(t)));
                    true
                })
                .collect();
            masks.push(Some(mask));
        }
        let rows = Rows {
            input,
            masks: &masks,
            first: usize::from(config.event_time),
        };
        let mut out = match (self, state) {
            (Op::Aggregate(op), OpState::Aggregate { groups, sessions }) => {
                op.fold(groups, sessions, &rows, watermark, config.mode, output)?
            }
            (Op::Dedup(op), OpState::Dedup { seen }) => op.fold(seen, &rows, watermark, output)?,
            _ => unreachable!("state made for its operator"),
        };
        out.late_rows = late;
        out.max_event_time = max_time;
        Ok(out)
    }
}

/// A batch's rows as the operator sees them: which are on time, and where its own
/// columns start (after the event time, if any).
pub(super) struct Rows<'a> {
    input: &'a [RecordBatch],
    masks: &'a [Option<Vec<bool>>],
    first: usize,
}

impl Rows<'_> {
    fn on_time(&self, batch: usize, row: usize) -> bool {
        self.masks[batch].as_ref().is_none_or(|m| m[row])
    }
}

/// The key columns of a batch in arrow's row format (empty rows without keys).
fn key_rows(
    converter: &Option<RowConverter>,
    batch: &RecordBatch,
    from: usize,
    count: usize,
) -> Result<Option<arrow::row::Rows>> {
    match converter {
        None => Ok(None),
        Some(c) => Ok(Some(
            c.convert_columns(&batch.columns()[from..from + count])?,
        )),
    }
}

fn row_bytes(rows: &Option<arrow::row::Rows>, i: usize) -> &[u8] {
    rows.as_ref().map_or(&[], |r| r.row(i).data())
}

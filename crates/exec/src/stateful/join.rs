//! Stream-stream inner joins as tasks, one per state partition: both sides are hashed
//! on the join keys, and the task of partition `p` keeps the rows of both sides that
//! may still match.
//!
//! ```text
//!  batch n, partition p:  new left ⋈ (kept right + new right)  ∪  kept left ⋈ new right
//!  then:                  kept += new;  evict what the batch's watermark and the
//!                         time bound rule out
//! ```
//!
//! The join condition's time bound, such as `r.t BETWEEN l.t AND l.t + INTERVAL '1
//! minute'`, says how long a row can still match: a left row goes once
//! `t_l + upper < watermark`, a right row once `t_r - lower < watermark`. Without a
//! bound on one side, that side's rows are kept. The state holds one entry per (side,
//! batch): that batch's kept rows of the partition, as Arrow IPC.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::joins::utils::ColumnIndex;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use super::store::{BatchStats, Change, Entries, Snapshot};
use super::{OpConfig, OpState, StatefulConfig};
use crate::event_time::event_times;
use crate::{EmberError, Result};

/// Each side's kept rows of a partition, by the batch that brought them.
#[derive(Default)]
pub(crate) struct Kept {
    sides: [BTreeMap<u64, KeptRows>; 2],
}

/// One batch's kept rows of a side (its columns, then whether each row matched), and
/// an index of their keys, made when first needed and kept while the process holds
/// the partition: a batch probes the kept rows with its new ones, without going
/// over all of them.
pub(crate) struct KeptRows {
    rows: RecordBatch,
    index: Option<KeyIndex>,
    /// The oldest event time among the rows (none if not known yet): a batch whose
    /// oldest row the watermark keeps is not looked at for eviction.
    oldest: Option<i64>,
}

/// Rows by their join key (arrow's row format); rows with a null key are in none.
/// Without keys (a join on a time bound only) every row is under the empty key.
struct KeyIndex {
    keys: Option<arrow::row::Rows>,
    rows: HashMap<Box<[u8]>, Vec<u32>>,
}

impl KeyIndex {
    fn key(&self, row: usize) -> &[u8] {
        self.keys.as_ref().map_or(&[], |k| k.row(row).data())
    }

    fn matches(&self, key: &[u8]) -> &[u32] {
        self.rows.get(key).map_or(&[], |v| v.as_slice())
    }

    /// Whether row `row` has a key that can match (no null in it).
    fn keyed(&self, row: usize) -> bool {
        self.rows
            .get(self.key(row))
            .is_some_and(|v| v.binary_search(&(row as u32)).is_ok())
    }
}

/// A stream-stream inner join of `left` and `right`, each hash-partitioned on its
/// side of `on` into the state's partitions (or gathered into one without keys).
#[derive(Debug, Clone)]
pub struct StreamJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    /// The rest of the condition, over the joined columns (left's, then right's).
    filter: Option<Arc<dyn PhysicalExpr>>,
    config: StatefulConfig,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Each side's event-time column.
    times: [usize; 2],
}

/// A join condition's filter as DataFusion's joins keep it (over an intermediate
/// batch of some columns of each side), rewritten over all the joined columns.
pub fn joined_filter(
    expression: &Arc<dyn PhysicalExpr>,
    indices: &[ColumnIndex],
    left_width: usize,
    joined: &Schema,
) -> DFResult<Arc<dyn PhysicalExpr>> {
    expression
        .clone()
        .transform(|e| {
            let Some(c) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            let at = indices.get(c.index()).ok_or_else(|| {
                DataFusionError::Internal(format!("join filter column {c} out of range"))
            })?;
            let index = match at.side {
                datafusion::common::JoinSide::Right => left_width + at.index,
                _ => at.index,
            };
            Ok(Transformed::yes(
                Arc::new(Column::new(joined.field(index).name(), index)) as Arc<dyn PhysicalExpr>,
            ))
        })
        .map(|t| t.data)
}

fn side_time(config: &StatefulConfig, schema: &Schema, side: usize) -> Result<usize> {
    let OpConfig::Join { times, .. } = &config.op else {
        return Err(EmberError::Internal("a join's configuration".into()));
    };
    schema.index_of(&times[side]).map_err(|_| {
        EmberError::Config(format!(
            "stream-stream join: the watermark column '{}' is not an output of its side ({schema})",
            times[side]
        ))
    })
}

impl StreamJoinExec {
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        config: StatefulConfig,
        schema: SchemaRef,
    ) -> Result<StreamJoinExec> {
        config.check()?;
        let times = [
            side_time(&config, &left.schema(), 0)?,
            side_time(&config, &right.schema(), 1)?,
        ];
        if left.schema().fields().len() + right.schema().fields().len() != schema.fields().len() {
            return Err(EmberError::Internal(format!(
                "a stream-stream join's output ({schema}) is not its sides' columns"
            )));
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(config.partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(StreamJoinExec {
            left,
            right,
            on,
            filter,
            config,
            schema,
            properties: Arc::new(properties),
            times,
        })
    }

    pub fn config(&self) -> &StatefulConfig {
        &self.config
    }

    pub fn filter(&self) -> Option<&Arc<dyn PhysicalExpr>> {
        self.filter.as_ref()
    }

    /// Each side's key expressions, to hash its rows by.
    pub fn keys(&self, side: usize) -> Vec<Arc<dyn PhysicalExpr>> {
        self.on
            .iter()
            .map(|(l, r)| if side == 0 { l.clone() } else { r.clone() })
            .collect()
    }
}

impl DisplayAs for StreamJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match &self.config.op {
            OpConfig::Join { outer, .. } => match outer {
                [false, false] => "inner",
                [true, false] => "left outer",
                [false, true] => "right outer",
                [true, true] => "full outer",
            },
            _ => "?",
        };
        write!(
            f,
            "StreamJoinExec: {kind}, keys={}, batch={}, partitions={}",
            self.on.len(),
            self.config.batch_id,
            self.config.partitions
        )
    }
}

/// Every column nullable: kept rows are rebuilt in one schema whatever the
/// nullability the side's rows came with.
fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn entry_key(side: usize, batch: u64) -> Box<[u8]> {
    let mut k = vec![side as u8];
    k.extend_from_slice(&batch.to_be_bytes());
    k.into()
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    crate::convert::ipc_stream(&batch.schema(), std::slice::from_ref(batch))
}

pub(crate) fn load(entries: Entries) -> Result<OpState> {
    let mut kept = Kept::default();
    for (k, v) in entries {
        match k.first() {
            Some(&side @ (0 | 1)) if k.len() == 9 => {
                let batch = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                let (schema, batches) =
                    crate::convert::read_ipc_stream(&v, "a stream-stream join's state")?;
                if schema.fields().last().is_none_or(|f| {
                    f.name() != MATCHED || f.data_type() != &arrow::datatypes::DataType::Boolean
                }) {
                    return Err(EmberError::Decode {
                        what: "a stream-stream join's state",
                        message: format!(
                            "kept rows of batch {batch} without their '{MATCHED}' flags ({schema})"
                        ),
                    });
                }
                let rows = arrow::compute::concat_batches(&schema, &batches)?;
                kept.sides[side as usize].insert(
                    batch,
                    KeptRows {
                        rows,
                        index: None,
                        oldest: None,
                    },
                );
            }
            _ => {
                return Err(EmberError::Decode {
                    what: "a stream-stream join's state",
                    message: format!("an entry with key {k:?}"),
                });
            }
        }
    }
    Ok(OpState::Join(kept))
}

pub(crate) fn entries(kept: &Kept) -> Result<Snapshot> {
    let mut out = vec![];
    for (side, batches) in kept.sides.iter().enumerate() {
        for (b, kept) in batches {
            out.push((entry_key(side, *b), encode(&kept.rows)?));
        }
    }
    Ok(out)
}

/// The rows of one side at or after `watermark`: the rows, how many were late, the
/// largest event time kept.
fn on_time(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    time: usize,
    watermark: Option<i64>,
) -> Result<(RecordBatch, usize, Option<i64>)> {
    // The side's columns, and a matched flag (false) for the new rows.
    let batches = batches
        .iter()
        .map(|b| {
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(BooleanArray::from(vec![false; b.num_rows()])));
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let all = arrow::compute::concat_batches(schema, &batches)?;
    let times = event_times(all.column(time))?;
    let mut late = 0;
    let mut max = None;
    let keep: BooleanArray = (0..all.num_rows())
        .map(|r| {
            let ok = times.is_valid(r) && watermark.is_none_or(|w| times.value(r) >= w);
            if ok {
                max = Some(max.map_or(times.value(r), |m: i64| m.max(times.value(r))));
            } else {
                late += 1;
            }
            Some(ok)
        })
        .collect();
    Ok((arrow::compute::filter_record_batch(&all, &keep)?, late, max))
}

impl StreamJoinExec {
    /// The index of a side's rows (its columns, then the matched flag) by key.
    fn index(&self, side: usize, rows: &RecordBatch) -> Result<KeyIndex> {
        let exprs = self.keys(side);
        let mut index: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        if exprs.is_empty() {
            index.insert(Box::from(&[][..]), (0..rows.num_rows() as u32).collect());
            return Ok(KeyIndex {
                keys: None,
                rows: index,
            });
        }
        let columns = side_columns(rows)?;
        let keys: Vec<ArrayRef> = exprs
            .iter()
            .map(|e| e.evaluate(&columns)?.into_array(columns.num_rows()))
            .collect::<DFResult<_>>()?;
        let converter = RowConverter::new(
            keys.iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        let converted = converter.convert_columns(&keys)?;
        for r in 0..columns.num_rows() {
            if keys.iter().all(|c| c.is_valid(r)) {
                index
                    .entry(converted.row(r).data().into())
                    .or_default()
                    .push(r as u32);
            }
        }
        Ok(KeyIndex {
            keys: Some(converted),
            rows: index,
        })
    }
}

/// A side's columns, without the matched flag that kept rows end with.
fn side_columns(rows: &RecordBatch) -> Result<RecordBatch> {
    let width = rows.num_columns() - 1;
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(rows.schema().fields()[..width].to_vec())),
        rows.columns()[..width].to_vec(),
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
    )?)
}

impl StreamJoinExec {
    /// Joins one partition's new rows with its kept ones, keeps the new rows, evicts
    /// what can no longer match (emitting, for an outer side, the rows that never
    /// matched), and writes the partition's new version.
    async fn run_partition(
        &self,
        context: &TaskContext,
        partition: usize,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let config = &self.config;
        let OpConfig::Join {
            lower,
            upper,
            outer,
            ..
        } = &config.op
        else {
            return Err(EmberError::Internal("a join's configuration".into()));
        };
        let state = super::exec::state_before(config, context, partition, load).await?;
        let OpState::Join(mut kept) = state else {
            return Err(EmberError::Internal("a join's state".into()));
        };
        let watermark = config.watermark_ms;
        let schemas = [
            kept_schema(&self.left.schema()),
            kept_schema(&self.right.schema()),
        ];
        let (new_l, late_l, max_l) = on_time(&schemas[0], &left, self.times[0], watermark)?;
        let (new_r, late_r, max_r) = on_time(&schemas[1], &right, self.times[1], watermark)?;
        for side in 0..2 {
            for kept in kept.sides[side].values_mut() {
                if kept.index.is_none() {
                    kept.index = Some(self.index(side, &kept.rows)?);
                }
            }
        }
        let new = [new_l, new_r];
        let new_index = [self.index(0, &new[0])?, self.index(1, &new[1])?];
        let (joined, matched) = self.join(&kept, &new, &new_index)?;
        let mut out = vec![joined];
        // The rows that matched now remember it; the new rows are kept.
        let mut changes: Vec<Change> = vec![];
        let mut added = 0;
        for (side, (new, index)) in new.into_iter().zip(new_index).enumerate() {
            let mut flags = matched[side].iter();
            for (b, kept) in kept.sides[side].iter_mut() {
                let now = flags.next().expect("one per kept batch");
                if let Some(marked) = mark(&kept.rows, now)? {
                    changes.push((entry_key(side, *b), Some(encode(&marked)?)));
                    kept.rows = marked;
                }
            }
            if new.num_rows() > 0 {
                let now = flags.next().expect("and one for the new rows");
                let rows = mark(&new, now)?.unwrap_or(new);
                added += rows.num_rows();
                changes.push((entry_key(side, config.batch_id), Some(encode(&rows)?)));
                kept.sides[side].insert(
                    config.batch_id,
                    KeptRows {
                        rows,
                        index: Some(index),
                        oldest: None,
                    },
                );
            }
        }
        // Evict what the batch's watermark rules out.
        let mut removed = 0;
        if let Some(w) = watermark {
            // A left row matches right rows with t_r <= t_l + upper; future right rows
            // have t_r >= w. A right row matches left rows with t_l <= t_r - lower.
            let limits = [upper.map(|u| w - u), lower.map(|l| w + l)];
            for (side, limit) in limits.into_iter().enumerate() {
                let Some(limit) = limit else { continue };
                let batches: Vec<u64> = kept.sides[side].keys().copied().collect();
                for b in batches {
                    let entry = kept.sides[side].get_mut(&b).expect("listed");
                    if entry.oldest.is_some_and(|t| t >= limit) {
                        continue;
                    }
                    let rows = &entry.rows;
                    let times = event_times(rows.column(self.times[side]))?;
                    let keep: BooleanArray = (0..rows.num_rows())
                        .map(|r| Some(times.is_valid(r) && times.value(r) >= limit))
                        .collect();
                    if keep.true_count() == rows.num_rows() {
                        entry.oldest = arrow::compute::min(&times);
                        continue;
                    }
                    removed += rows.num_rows() - keep.true_count();
                    if outer[side] {
                        out.push(self.unmatched(side, rows, &keep)?);
                    }
                    let left_over = arrow::compute::filter_record_batch(rows, &keep)?;
                    changes.retain(|(k, _)| k.as_ref() != entry_key(side, b).as_ref());
                    if left_over.num_rows() == 0 {
                        kept.sides[side].remove(&b);
                        changes.push((entry_key(side, b), None));
                    } else {
                        changes.push((entry_key(side, b), Some(encode(&left_over)?)));
                        kept.sides[side].insert(
                            b,
                            KeptRows {
                                rows: left_over,
                                index: None,
                                oldest: None,
                            },
                        );
                    }
                }
            }
        }
        let total = kept
            .sides
            .iter()
            .flat_map(|s| s.values())
            .map(|b| b.rows.num_rows())
            .sum();
        let stats = BatchStats {
            late_rows: late_l + late_r,
            max_event_time: None,
            max_event_times: vec![max_l, max_r],
            rows_total: total,
            rows_updated: added,
            rows_removed: removed,
        };
        super::exec::save(
            config,
            context,
            partition,
            OpState::Join(kept),
            changes,
            &stats,
        )
        .await?;
        Ok(arrow::compute::concat_batches(&self.schema, &out)?)
    }

    /// The evicted rows of an outer side (those `keep` drops) that never matched,
    /// with nulls for the other side's columns.
    fn unmatched(
        &self,
        side: usize,
        rows: &RecordBatch,
        keep: &BooleanArray,
    ) -> Result<RecordBatch> {
        let width = rows.num_columns() - 1;
        let flags = rows.column(width).as_any().downcast_ref::<BooleanArray>();
        let emit: BooleanArray = (0..rows.num_rows())
            .map(|r| Some(!keep.value(r) && !flags.is_some_and(|f| f.value(r))))
            .collect();
        let rows = arrow::compute::filter_record_batch(rows, &emit)?;
        let n = rows.num_rows();
        let others = if side == 0 { &self.right } else { &self.left };
        let nulls: Vec<ArrayRef> = others
            .schema()
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), n))
            .collect();
        let own = rows.columns()[..width].to_vec();
        let columns = if side == 0 {
            own.into_iter().chain(nulls).collect()
        } else {
            nulls.into_iter().chain(own).collect()
        };
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// The pairs of rows that match where at least one row is new: the new rows of
    /// each side probe the other side's kept and new rows by key. Returns the join's
    /// output rows, and for each side, batch by batch (the kept ones in order, then
    /// the new rows), which rows matched.
    fn join(
        &self,
        kept: &Kept,
        new: &[RecordBatch; 2],
        new_index: &[KeyIndex; 2],
    ) -> Result<(RecordBatch, [Vec<Vec<bool>>; 2])> {
        // Each side's row sources: its kept batches in order, then its new rows.
        let sources: [Vec<(&RecordBatch, &KeyIndex)>; 2] = [0, 1].map(|side| {
            kept.sides[side]
                .values()
                .map(|k| (&k.rows, k.index.as_ref().expect("indexed above")))
                .chain(std::iter::once((&new[side], &new_index[side])))
                .collect()
        });
        let newest = [sources[0].len() - 1, sources[1].len() - 1];
        // (source, row) pairs of the left and right rows that meet.
        let (mut lp, mut rp) = (vec![], vec![]);
        for (probe, other) in [(0, 1), (1, 0)] {
            let (_, probe_index) = sources[probe][newest[probe]];
            for (s, (_, index)) in sources[other].iter().enumerate() {
                // New with new once: when the left rows probe.
                if probe == 1 && s == newest[other] {
                    continue;
                }
                for row in 0..new[probe].num_rows() {
                    if !probe_index.keyed(row) {
                        continue;
                    }
                    for &m in index.matches(probe_index.key(row)) {
                        let (mine, theirs) = ((newest[probe], row), (s, m as usize));
                        let (l, r) = if probe == 0 {
                            (mine, theirs)
                        } else {
                            (theirs, mine)
                        };
                        lp.push(l);
                        rp.push(r);
                    }
                }
            }
        }
        let columns = |side: usize, pairs: &[(usize, usize)]| -> Result<Vec<ArrayRef>> {
            let width = new[side].num_columns() - 1;
            (0..width)
                .map(|c| {
                    let arrays: Vec<&dyn Array> = sources[side]
                        .iter()
                        .map(|(b, _)| b.column(c).as_ref())
                        .collect();
                    Ok(arrow::compute::interleave(&arrays, pairs)?)
                })
                .collect()
        };
        let mut joined = RecordBatch::try_new_with_options(
            nullable(&self.schema),
            columns(0, &lp)?
                .into_iter()
                .chain(columns(1, &rp)?)
                .collect(),
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(lp.len())),
        )?;
        if let Some(f) = &self.filter {
            let mask = f.evaluate(&joined)?.into_array(joined.num_rows())?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| EmberError::Internal("a join filter's result".into()))?;
            // A null is no match (`filter` drops it).
            joined = arrow::compute::filter_record_batch(&joined, mask)?;
            let kept = |pairs: Vec<(usize, usize)>| -> Vec<(usize, usize)> {
                pairs
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask.is_valid(*i) && mask.value(*i))
                    .map(|(_, p)| p)
                    .collect()
            };
            lp = kept(lp);
            rp = kept(rp);
        }
        let mut matched = [0, 1].map(|side| {
            sources[side]
                .iter()
                .map(|(b, _)| vec![false; b.num_rows()])
                .collect::<Vec<_>>()
        });
        for (side, pairs) in [(0, &lp), (1, &rp)] {
            for &(s, row) in pairs {
                matched[side][s][row] = true;
            }
        }
        let joined = RecordBatch::try_new_with_options(
            self.schema.clone(),
            joined.columns().to_vec(),
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(joined.num_rows())),
        )?;
        Ok((joined, matched))
    }
}

/// A side's kept rows: its columns, all nullable, and whether the row matched.
fn kept_schema(side: &Schema) -> SchemaRef {
    let mut fields: Vec<arrow::datatypes::FieldRef> = nullable(side).fields().to_vec();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        MATCHED,
        arrow::datatypes::DataType::Boolean,
        false,
    )));
    Arc::new(Schema::new(fields))
}

/// The rows with `now` matches added to their matched flags, if any flag changes.
fn mark(rows: &RecordBatch, now: &[bool]) -> Result<Option<RecordBatch>> {
    let last = rows.num_columns() - 1;
    let flags = rows
        .column(last)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| EmberError::Internal("a join's matched flags".into()))?;
    if !now.iter().enumerate().any(|(i, m)| *m && !flags.value(i)) {
        return Ok(None);
    }
    let merged: BooleanArray = (0..rows.num_rows())
        .map(|i| Some(flags.value(i) || now[i]))
        .collect();
    let mut columns = rows.columns().to_vec();
    columns[last] = Arc::new(merged);
    Ok(Some(RecordBatch::try_new(rows.schema(), columns)?))
}

const MATCHED: &str = "__ember_matched";

impl ExecutionPlan for StreamJoinExec {
    fn name(&self) -> &str {
        "StreamJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    /// The stage planner partitions both sides into the state's partitions.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution; 2]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        for (l, r) in &self.on {
            for e in [l, r] {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        match &self.filter {
            Some(e) => f(e),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let [left, right] = <[Arc<dyn ExecutionPlan>; 2]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("StreamJoinExec takes two inputs".into()))?;
        Ok(Arc::new(StreamJoinExec {
            left,
            right,
            ..self.as_ref().clone()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition >= self.config.partitions {
            return Err(DataFusionError::Internal(format!(
                "StreamJoinExec has {} partitions, not {}",
                self.config.partitions,
                partition + 1
            )));
        }
        let left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context.clone())?;
        let this = self.clone();
        let rows = async move {
            let left = datafusion::physical_plan::common::collect(left).await?;
            let right = datafusion::physical_plan::common::collect(right).await?;
            this.run_partition(&context, partition, left, right)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(rows),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_rows_without_their_matched_flags_are_an_error_not_a_panic() {
        use arrow::array::Int64Array;
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "t",
            arrow::datatypes::DataType::Int64,
            true,
        )]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let entries: Entries = [(entry_key(0, 7), encode(&batch).unwrap())].into();
        let err = load(entries).err().expect("refused").to_string();
        assert!(err.contains("batch 7") && err.contains(MATCHED), "{err}");
        let garbage: Entries = [(entry_key(1, 3), b"not arrow".to_vec())].into();
        assert!(load(garbage).is_err());
    }
}

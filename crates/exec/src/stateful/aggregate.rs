//! Streaming aggregation on DataFusion's own accumulators: each group (window and
//! keys) keeps its aggregates' intermediate state — what `GroupsAccumulator::state`
//! gives and `merge_batch` takes back — so every aggregate function the session
//! knows (decimals of any precision, `stddev`, `approx_distinct`, `array_agg`,
//! `count(DISTINCT ..)`, user-defined ones) folds over a stream exactly as it does
//! over the same rows in a batch.
//!
//! ```text
//!  a batch's on-time rows ─▶ their groups (a sliding window's row is in several,
//!  session windows merged first) ─▶ one accumulator per aggregate over the touched
//!  groups: merge_batch(their saved states) + update_batch(the rows) ─▶ state()
//!  saved per group ─▶ emitted groups: merge_batch(states) ─▶ evaluate()
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array, new_empty_array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use prost::Message;

use super::{OutputMode, Processed, Rows, converter, key_rows, row_bytes};
use crate::event_time::{WindowKind, event_times, window_array};
use crate::{EmberError, Result};

/// The aggregate functions of a streaming aggregation, as DataFusion planned them
/// over the operator's input columns, with their `FILTER` clauses.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    pub exprs: Vec<Arc<AggregateFunctionExpr>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

impl Aggregates {
    /// The aggregates as a plan the plan codec carries: an `AggregateExec` without
    /// groups over an empty scan of the operator's input.
    pub fn carrier(&self, input: SchemaRef) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(AggregateExec::try_new(
            AggregateMode::Single,
            PhysicalGroupBy::new_single(vec![]),
            self.exprs.clone(),
            self.filters.clone(),
            Arc::new(EmptyExec::new(input.clone())),
            input,
        )?))
    }

    /// The aggregates a [`Aggregates::carrier`] plan holds.
    pub fn from_carrier(plan: &Arc<dyn ExecutionPlan>) -> Result<Aggregates> {
        let agg = plan
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| EmberError::Decode {
                what: "a streaming aggregation's functions",
                message: format!("an {} where an AggregateExec carries them", plan.name()),
            })?;
        Ok(Aggregates {
            exprs: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
        })
    }

    pub fn len(&self) -> usize {
        self.exprs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }
}

/// One aggregate function of the operator.
#[derive(Debug)]
struct AggFn {
    expr: Arc<AggregateFunctionExpr>,
    /// What `update_batch` takes: its arguments, then its ordering's expressions
    /// (as DataFusion's own aggregation passes them).
    args: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Its intermediate state's fields, from `first` on in a group's state.
    state: Vec<FieldRef>,
    first: usize,
    output: DataType,
}

impl AggFn {
    fn accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.expr.groups_accumulator_supported() {
            return Ok(self.expr.create_groups_accumulator()?);
        }
        let expr = self.expr.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            expr.create_accumulator()
        })))
    }

    /// The state arrays of `states` (one group each), for `merge_batch`.
    fn state_arrays(&self, states: &[&GroupState]) -> Result<Vec<ArrayRef>> {
        self.state
            .iter()
            .enumerate()
            .map(|(f, field)| {
                if states.is_empty() {
                    return Ok(new_empty_array(field.data_type()));
                }
                Ok(ScalarValue::iter_to_array(
                    states.iter().map(|s| s[self.first + f].clone()),
                )?)
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct AggregateOp {
    pub(super) window: Option<WindowKind>,
    /// Where the window goes among the group columns.
    window_position: Option<usize>,
    key_types: Vec<DataType>,
    aggs: Vec<AggFn>,
    /// The number of state values per group, over all aggregates.
    width: usize,
}

/// A group's intermediate state: each aggregate's state fields, one after another.
pub(crate) type GroupState = Box<[ScalarValue]>;

impl AggregateOp {
    /// The operator `config` describes, over the batch plan's `input` columns
    /// (the event time if any, the window time if any, the keys, the aggregates'
    /// inputs), emitting `output`'s columns (the groups, then the aggregates).
    pub(super) fn new(
        window: Option<WindowKind>,
        window_position: Option<usize>,
        keys: usize,
        aggregates: &Aggregates,
        first: usize,
        input: &Schema,
        output: &Schema,
    ) -> Result<AggregateOp> {
        let offset = first + usize::from(window.is_some());
        let groups = keys + usize::from(window.is_some());
        if input.fields().len() < offset + keys
            || output.fields().len() != groups + aggregates.len()
            || aggregates.filters.len() != aggregates.len()
        {
            return Err(EmberError::Decode {
                what: "a streaming aggregation",
                message: format!(
                    "{keys} keys and {} aggregates do not fit input ({input}) and output ({output})",
                    aggregates.len()
                ),
            });
        }
        let mut aggs = vec![];
        let mut width = 0;
        for (j, (expr, filter)) in aggregates.exprs.iter().zip(&aggregates.filters).enumerate() {
            let state = expr.state_fields()?;
            let mut args = expr.expressions();
            args.extend(expr.order_bys().iter().map(|o| o.expr.clone()));
            aggs.push(AggFn {
                expr: expr.clone(),
                args,
                filter: filter.clone(),
                first: width,
                output: output.field(groups + j).data_type().clone(),
                state,
            });
            width += aggs[j].state.len();
        }
        Ok(AggregateOp {
            window,
            window_position,
            key_types: (0..keys)
                .map(|i| input.field(offset + i).data_type().clone())
                .collect(),
            aggs,
            width,
        })
    }

    /// A group's state as stored: a format byte, then each value as datafusion-proto
    /// encodes a scalar, length-delimited.
    pub(super) fn encode(state: &[ScalarValue]) -> Result<Vec<u8>> {
        let mut out = vec![STATE_FORMAT];
        for value in state {
            datafusion_proto::protobuf::ScalarValue::try_from(value)
                .map_err(|e| EmberError::Internal(format!("encoding an aggregate state: {e}")))?
                .encode_length_delimited(&mut out)
                .map_err(|e| EmberError::Internal(format!("encoding an aggregate state: {e}")))?;
        }
        Ok(out)
    }

    pub(super) fn decode(&self, bytes: &[u8]) -> Result<GroupState> {
        let bad = |message: String| EmberError::Decode {
            what: "a streaming aggregation's state",
            message,
        };
        let Some((&format, mut rest)) = bytes.split_first() else {
            return Err(bad("an empty entry".into()));
        };
        if format != STATE_FORMAT {
            return Err(bad(format!(
                "an entry in format {format}, not {STATE_FORMAT} (the accumulators' states)"
            )));
        }
        let mut values = Vec::with_capacity(self.width);
        while !rest.is_empty() {
            let proto = datafusion_proto::protobuf::ScalarValue::decode_length_delimited(&mut rest)
                .map_err(|e| bad(format!("value {}: {e}", values.len())))?;
            values.push(
                ScalarValue::try_from(&proto)
                    .map_err(|e| bad(format!("value {}: {e}", values.len())))?,
            );
        }
        if values.len() != self.width {
            return Err(bad(format!(
                "{} values, expected {} for these aggregates",
                values.len(),
                self.width
            )));
        }
        for f in &self.aggs {
            for (i, field) in f.state.iter().enumerate() {
                let value = &values[f.first + i];
                if &value.data_type() != field.data_type() {
                    return Err(bad(format!(
                        "{}'s state field {} is a {}, expected {}",
                        f.expr.name(),
                        field.name(),
                        value.data_type(),
                        field.data_type()
                    )));
                }
            }
        }
        Ok(values.into_boxed_slice())
    }
}

/// The format byte of a group's stored state.
const STATE_FORMAT: u8 = 1;

/// Window bounds as bytes that sort like the numbers.
fn ordered(x: i64) -> [u8; 8] {
    ((x as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// A group's key: window start and end (0 without a window), then the key columns
/// in arrow's row format.
fn group_key(start: i64, end: i64, key: &[u8]) -> Box<[u8]> {
    let mut buf = Vec::with_capacity(16 + key.len());
    write_group_key(&mut buf, start, end, key);
    buf.into_boxed_slice()
}

fn write_group_key(buf: &mut Vec<u8>, start: i64, end: i64, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&ordered(start));
    buf.extend_from_slice(&ordered(end));
    buf.extend_from_slice(key);
}

pub(super) fn split_key(key: &[u8]) -> (i64, i64, &[u8]) {
    (unordered(&key[..8]), unordered(&key[8..16]), &key[16..])
}

/// The groups a batch touches, in the order first seen, and which rows go to which.
#[derive(Default)]
struct Assignment {
    groups: Vec<Box<[u8]>>,
    index: HashMap<Box<[u8]>, usize>,
    /// Per input batch: row numbers, and each one's group (a row may repeat).
    rows: Vec<(Vec<u32>, Vec<usize>)>,
    /// The key being looked up, so that a row of a known group allocates nothing.
    scratch: Vec<u8>,
}

impl Assignment {
    fn group(&mut self, key: Box<[u8]>) -> usize {
        if let Some(&g) = self.index.get(&key) {
            return g;
        }
        self.groups.push(key.clone());
        self.index.insert(key, self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// Adds a row to the group of window `start`..`end` and `key`.
    fn add_to(&mut self, batch: usize, row: usize, start: i64, end: i64, key: &[u8]) {
        let mut scratch = std::mem::take(&mut self.scratch);
        write_group_key(&mut scratch, start, end, key);
        let g = match self.index.get(scratch.as_slice()) {
            Some(&g) => g,
            None => self.group(scratch.as_slice().into()),
        };
        self.scratch = scratch;
        self.push(batch, row, g);
    }

    fn push(&mut self, batch: usize, row: usize, group: usize) {
        let (rows, groups) = &mut self.rows[batch];
        rows.push(row as u32);
        groups.push(group);
    }
}

/// A session window's row, placed once the batch's sessions are merged.
struct SessionRow {
    batch: usize,
    row: usize,
    time: i64,
    key: Box<[u8]>,
}

impl AggregateOp {
    /// Folds a batch's on-time rows, emits per output mode, and evicts the groups
    /// whose window the batch's `watermark` passed (Spark's rule: what a batch closes
    /// is emitted by the batch after it, which runs without new data if none comes).
    pub(super) fn fold(
        &self,
        groups: &mut HashMap<Box<[u8]>, GroupState>,
        sessions: &mut HashMap<Box<[u8]>, BTreeMap<i64, i64>>,
        rows: &Rows,
        watermark: Option<i64>,
        mode: OutputMode,
        output: &SchemaRef,
    ) -> Result<Processed> {
        let converter = converter(&self.key_types)?;
        let mut touched: HashSet<Box<[u8]>> = HashSet::new();
        let mut assigned = Assignment {
            rows: vec![Default::default(); rows.input.len()],
            ..Default::default()
        };
        let mut session_rows = vec![];
        let window_col = rows.first;
        let keys_from = rows.first + usize::from(self.window.is_some());
        for (b, batch) in rows.input.iter().enumerate() {
            let keys = key_rows(&converter, batch, keys_from, self.key_types.len())?;
            let times = match self.window {
                Some(_) => Some(event_times(batch.column(window_col))?),
                None => None,
            };
            for r in 0..batch.num_rows() {
                if !rows.on_time(b, r) {
                    continue;
                }
                let key = row_bytes(&keys, r);
                match (self.window, &times) {
                    (None, _) => assigned.add_to(b, r, 0, 0, key),
                    (Some(_), Some(t)) if t.is_null(r) => {}
                    (Some(WindowKind::Sliding { length, slide }), Some(t)) => {
                        let t = t.value(r);
                        let mut start = t - t.rem_euclid(slide);
                        while start + length > t {
                            assigned.add_to(b, r, start, start + length, key);
                            start -= slide;
                        }
                    }
                    (Some(WindowKind::Session { gap }), Some(t)) => {
                        let time = t.value(r);
                        merge_session(sessions, key, time, gap, &mut touched);
                        session_rows.push(SessionRow {
                            batch: b,
                            row: r,
                            time,
                            key: key.into(),
                        });
                    }
                    (Some(_), None) => unreachable!("times read with a window"),
                }
            }
        }
        // Each session row goes to the session its time ended up in; a session that
        // a merge absorbed gives its state to the one that took it in.
        let mut absorbed = vec![];
        for s in session_rows {
            let (start, end) = session_of(sessions, &s.key, s.time);
            assigned.add_to(s.batch, s.row, start, end, &s.key);
        }
        for old in &touched {
            if assigned.index.contains_key(old) {
                continue;
            }
            if let Some(state) = groups.remove(old) {
                let (start, _, key) = split_key(old);
                let (s, e) = session_of(sessions, key, start);
                absorbed.push((assigned.group(group_key(s, e, key)), state));
            }
        }
        let mut before: Vec<(usize, GroupState)> = assigned
            .groups
            .iter()
            .enumerate()
            .filter_map(|(g, k)| groups.remove(k).map(|state| (g, state)))
            .collect();
        before.extend(absorbed);
        let states = self.accumulate(&assigned, &before, rows.input)?;
        for (k, state) in assigned.groups.iter().zip(states) {
            groups.insert(k.clone(), state);
            touched.insert(k.clone());
        }
        // What the batch's watermark closes.
        let closed =
            |k: &[u8]| self.window.is_some() && watermark.is_some_and(|w| split_key(k).1 <= w);
        let mut emit: Vec<&[u8]> = match mode {
            OutputMode::Complete => groups.keys().map(|k| k.as_ref()).collect(),
            OutputMode::Update => touched
                .iter()
                .filter(|k| groups.contains_key(k.as_ref()))
                .map(|k| k.as_ref())
                .collect(),
            OutputMode::Append => groups
                .keys()
                .filter(|k| closed(k))
                .map(|k| k.as_ref())
                .collect(),
        };
        emit.sort_unstable();
        let out_rows = self.rows(&emit, groups, &converter, output)?;
        let updated = touched
            .iter()
            .filter(|k| groups.contains_key(k.as_ref()))
            .count();
        let mut removed = 0;
        if mode != OutputMode::Complete {
            let evicted: Vec<Box<[u8]>> = groups.keys().filter(|k| closed(k)).cloned().collect();
            for k in evicted {
                groups.remove(&k);
                let (start, _, key) = split_key(&k);
                if let Some(index) = sessions.get_mut(key) {
                    index.remove(&start);
                    if index.is_empty() {
                        sessions.remove(key);
                    }
                }
                touched.insert(k);
                removed += 1;
            }
        }
        let changes = touched
            .into_iter()
            .map(|k| {
                let v = groups.get(&k).map(|s| AggregateOp::encode(s)).transpose()?;
                Ok((k, v))
            })
            .collect::<Result<_>>()?;
        Ok(Processed {
            rows: out_rows,
            late_rows: 0,
            max_event_time: None,
            changes,
            rows_total: groups.len(),
            rows_updated: updated,
            rows_removed: removed,
        })
    }

    /// The new state of each assigned group: its state `before` (several for a
    /// session that absorbed others) merged with its rows of `input`.
    fn accumulate(
        &self,
        assigned: &Assignment,
        before: &[(usize, GroupState)],
        input: &[RecordBatch],
    ) -> Result<Vec<GroupState>> {
        let n = assigned.groups.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(self.width); n];
        let before_groups: Vec<usize> = before.iter().map(|(g, _)| *g).collect();
        let before_states: Vec<&GroupState> = before.iter().map(|(_, s)| s).collect();
        // Per batch, once for every aggregate: which rows to take (none when the
        // batch's rows go in order, each once).
        let picks: Vec<Option<UInt32Array>> = input
            .iter()
            .zip(&assigned.rows)
            .map(|(batch, (rows, _))| {
                let whole = rows.len() == batch.num_rows()
                    && rows.iter().enumerate().all(|(i, r)| *r as usize == i);
                (!whole).then(|| UInt32Array::from(rows.clone()))
            })
            .collect();
        for f in &self.aggs {
            let mut acc = f.accumulator()?;
            if !before.is_empty() {
                acc.merge_batch(&f.state_arrays(&before_states)?, &before_groups, n)?;
            }
            for ((batch, (rows, groups)), indices) in input.iter().zip(&assigned.rows).zip(&picks) {
                if rows.is_empty() {
                    continue;
                }
                let pick = |array: ArrayRef| -> Result<ArrayRef> {
                    Ok(match indices {
                        None => array,
                        Some(indices) => take(&array, indices, None)?,
                    })
                };
                let values = f
                    .args
                    .iter()
                    .map(|e| pick(e.evaluate(batch)?.into_array(batch.num_rows())?))
                    .collect::<Result<Vec<_>>>()?;
                let filter = match &f.filter {
                    Some(e) => {
                        let mask = pick(e.evaluate(batch)?.into_array(batch.num_rows())?)?;
                        Some(
                            mask.as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| {
                                    EmberError::Internal(format!(
                                        "{}'s FILTER gave a {}, not booleans",
                                        f.expr.name(),
                                        mask.data_type()
                                    ))
                                })?,
                        )
                    }
                    None => None,
                };
                acc.update_batch(&values, groups, filter.as_ref(), n)?;
            }
            let arrays = acc.state(EmitTo::All)?;
            for (g, state) in states.iter_mut().enumerate() {
                for array in &arrays {
                    state.push(ScalarValue::try_from_array(array, g)?);
                }
            }
        }
        Ok(states.into_iter().map(Vec::into_boxed_slice).collect())
    }

    /// The emitted groups as the aggregation's output rows.
    fn rows(
        &self,
        emit: &[&[u8]],
        groups: &HashMap<Box<[u8]>, GroupState>,
        converter: &Option<RowConverter>,
        output: &SchemaRef,
    ) -> Result<RecordBatch> {
        let mut keys: Vec<ArrayRef> = match converter {
            Some(c) => {
                let parser = c.parser();
                c.convert_rows(emit.iter().map(|k| parser.parse(split_key(k).2)))?
            }
            None => vec![],
        };
        keys.reverse();
        let mut columns: Vec<ArrayRef> = vec![];
        let group_count = self.key_types.len() + usize::from(self.window.is_some());
        for i in 0..group_count {
            if Some(i) == self.window_position {
                let (starts, ends) = emit
                    .iter()
                    .map(|k| {
                        let (s, e, _) = split_key(k);
                        (Some(s), Some(e))
                    })
                    .unzip();
                columns.push(window_array(starts, ends));
            } else {
                columns.push(keys.pop().expect("one array per key"));
            }
        }
        let states: Vec<&GroupState> = emit.iter().map(|k| &groups[*k]).collect();
        let all: Vec<usize> = (0..states.len()).collect();
        for f in &self.aggs {
            let array = if states.is_empty() {
                new_empty_array(&f.output)
            } else {
                let mut acc = f.accumulator()?;
                acc.merge_batch(&f.state_arrays(&states)?, &all, states.len())?;
                acc.evaluate(EmitTo::All)?
            };
            columns.push(if array.data_type() == &f.output {
                array
            } else {
                cast(&array, &f.output)?
            });
        }
        Ok(RecordBatch::try_new_with_options(
            output.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(emit.len())),
        )?)
    }
}

/// Adds a row at `time` to `key`'s sessions: `[time, time + gap)` merges with every
/// session it overlaps. The sessions merged away are added to `touched`.
fn merge_session(
    sessions: &mut HashMap<Box<[u8]>, BTreeMap<i64, i64>>,
    key: &[u8],
    time: i64,
    gap: i64,
    touched: &mut HashSet<Box<[u8]>>,
) {
    let (mut start, mut end) = (time, time + gap);
    let index = sessions.entry(key.into()).or_default();
    while let Some((&s, &e)) = index.range(..end).next_back() {
        if e <= start {
            break;
        }
        index.remove(&s);
        touched.insert(group_key(s, e, key));
        start = start.min(s);
        end = end.max(e);
    }
    index.insert(start, end);
}

/// The session of `key` that holds `time`.
fn session_of(
    sessions: &HashMap<Box<[u8]>, BTreeMap<i64, i64>>,
    key: &[u8],
    time: i64,
) -> (i64, i64) {
    sessions
        .get(key)
        .and_then(|index| index.range(..=time).next_back())
        .map(|(&s, &e)| (s, e))
        .expect("a session holds every time merged into it")
}

//! Streaming aggregation: partial aggregates per group (window and keys), folded
//! batch by batch, emitted per output mode, evicted once the watermark closes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};

use super::{OutputMode, Processed, Rows, converter, key_rows, row_bytes};
use crate::event_time::{WindowKind, event_times, window_array};
use crate::{EmberError, Result};

/// An aggregate function a streaming aggregation folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggKind {
    CountRows,
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

#[derive(Debug, Clone)]
pub(super) struct AggFn {
    kind: AggKind,
    /// Whether the argument is folded as f64 (floats, decimals) or i64.
    float: bool,
    output: DataType,
}

#[derive(Debug)]
pub struct AggregateOp {
    pub(super) window: Option<WindowKind>,
    /// Where the window goes among the group columns.
    window_position: Option<usize>,
    key_types: Vec<DataType>,
    pub(super) aggs: Vec<AggFn>,
}

impl AggregateOp {
    /// The operator `config` describes, over the batch plan's `input` columns
    /// (the event time if any, the window time if any, the keys, the arguments),
    /// emitting `output`'s columns (the groups, then the aggregates).
    pub(super) fn new(
        window: Option<WindowKind>,
        window_position: Option<usize>,
        keys: usize,
        aggs: &[(AggKind, bool)],
        first: usize,
        input: &Schema,
        output: &Schema,
    ) -> Result<AggregateOp> {
        let offset = first + usize::from(window.is_some());
        let groups = keys + usize::from(window.is_some());
        if input.fields().len() < offset + keys || output.fields().len() != groups + aggs.len() {
            return Err(EmberError::Decode {
                what: "a streaming aggregation",
                message: format!(
                    "{keys} keys and {} aggregates do not fit input ({input}) and output ({output})",
                    aggs.len()
                ),
            });
        }
        Ok(AggregateOp {
            window,
            window_position,
            key_types: (0..keys)
                .map(|i| input.field(offset + i).data_type().clone())
                .collect(),
            aggs: aggs
                .iter()
                .enumerate()
                .map(|(j, (kind, float))| AggFn {
                    kind: *kind,
                    float: *float,
                    output: output.field(groups + j).data_type().clone(),
                })
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Acc {
    n: i64,
    i: i64,
    f: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Partial {
    rows: i64,
    accs: Vec<Acc>,
}

/// An argument column, ready to fold.
enum Values {
    None,
    Int(Int64Array),
    Float(Float64Array),
    /// Counted only: non-null or not.
    Any(ArrayRef),
}

impl Partial {
    fn new(n: usize) -> Partial {
        Partial {
            rows: 0,
            accs: vec![Acc::default(); n],
        }
    }

    fn add(&mut self, fns: &[AggFn], values: &[Values], row: usize) {
        self.rows += 1;
        for ((acc, f), v) in self.accs.iter_mut().zip(fns).zip(values) {
            let (i, x) = match v {
                Values::None => continue,
                Values::Any(a) => {
                    acc.n += i64::from(a.is_valid(row));
                    continue;
                }
                Values::Int(a) if a.is_valid(row) => (a.value(row), a.value(row) as f64),
                Values::Float(a) if a.is_valid(row) => (0, a.value(row)),
                _ => continue,
            };
            let first = acc.n == 0;
            acc.n += 1;
            match f.kind {
                AggKind::Sum | AggKind::Avg => {
                    acc.i = acc.i.wrapping_add(i);
                    acc.f += x;
                }
                AggKind::Min => {
                    acc.i = if first { i } else { acc.i.min(i) };
                    acc.f = if first { x } else { acc.f.min(x) };
                }
                AggKind::Max => {
                    acc.i = if first { i } else { acc.i.max(i) };
                    acc.f = if first { x } else { acc.f.max(x) };
                }
                AggKind::Count | AggKind::CountRows => {}
            }
        }
    }

    fn merge(&mut self, fns: &[AggFn], other: &Partial) {
        self.rows += other.rows;
        for ((acc, f), o) in self.accs.iter_mut().zip(fns).zip(&other.accs) {
            if o.n == 0 {
                continue;
            }
            let first = acc.n == 0;
            acc.n += o.n;
            match f.kind {
                AggKind::Sum | AggKind::Avg => {
                    acc.i = acc.i.wrapping_add(o.i);
                    acc.f += o.f;
                }
                AggKind::Min => {
                    acc.i = if first { o.i } else { acc.i.min(o.i) };
                    acc.f = if first { o.f } else { acc.f.min(o.f) };
                }
                AggKind::Max => {
                    acc.i = if first { o.i } else { acc.i.max(o.i) };
                    acc.f = if first { o.f } else { acc.f.max(o.f) };
                }
                AggKind::Count | AggKind::CountRows => {}
            }
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 24 * self.accs.len());
        out.extend_from_slice(&self.rows.to_le_bytes());
        for a in &self.accs {
            out.extend_from_slice(&a.n.to_le_bytes());
            out.extend_from_slice(&a.i.to_le_bytes());
            out.extend_from_slice(&a.f.to_le_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8], n: usize) -> Result<Partial> {
        if bytes.len() != 8 + 24 * n {
            return Err(EmberError::Decode {
                what: "a streaming aggregation's state",
                message: format!(
                    "an entry of {} bytes, expected {} for {n} aggregates",
                    bytes.len(),
                    8 + 24 * n
                ),
            });
        }
        let word = |at: usize| <[u8; 8]>::try_from(&bytes[at..at + 8]).expect("8 bytes");
        Ok(Partial {
            rows: i64::from_le_bytes(word(0)),
            accs: (0..n)
                .map(|k| Acc {
                    n: i64::from_le_bytes(word(8 + 24 * k)),
                    i: i64::from_le_bytes(word(16 + 24 * k)),
                    f: f64::from_le_bytes(word(24 + 24 * k)),
                })
                .collect(),
        })
    }
}

/// Window bounds as bytes that sort like the numbers.
fn ordered(x: i64) -> [u8; 8] {
    ((x as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// A group's key: window start and end (0 without a window), then the key columns
/// in arrow's row format.
fn group_key(buf: &mut Vec<u8>, start: i64, end: i64, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&ordered(start));
    buf.extend_from_slice(&ordered(end));
    buf.extend_from_slice(key);
}

pub(super) fn split_key(key: &[u8]) -> (i64, i64, &[u8]) {
    (unordered(&key[..8]), unordered(&key[8..16]), &key[16..])
}

impl AggregateOp {
    /// Folds a batch's on-time rows, emits per output mode, and evicts the groups
    /// whose window the batch's `watermark` passed (Spark's rule: what a batch closes
    /// is emitted by the batch after it, which runs without new data if none comes).
    pub(super) fn fold(
        &self,
        groups: &mut HashMap<Box<[u8]>, Partial>,
        sessions: &mut HashMap<Box<[u8]>, BTreeMap<i64, i64>>,
        rows: &Rows,
        watermark: Option<i64>,
        mode: OutputMode,
        output: &SchemaRef,
    ) -> Result<Processed> {
        let converter = converter(&self.key_types)?;
        let n = self.aggs.len();
        let mut touched: HashSet<Box<[u8]>> = HashSet::new();
        let mut buf = Vec::with_capacity(64);
        let window_col = rows.first;
        let keys_from = rows.first + usize::from(self.window.is_some());
        let args_from = keys_from + self.key_types.len();
        for (b, batch) in rows.input.iter().enumerate() {
            let keys = key_rows(&converter, batch, keys_from, self.key_types.len())?;
            let times = match self.window {
                Some(_) => Some(event_times(batch.column(window_col))?),
                None => None,
            };
            let mut next_arg = args_from;
            let values: Vec<Values> = self
                .aggs
                .iter()
                .map(|f| {
                    if f.kind == AggKind::CountRows {
                        return Ok(Values::None);
                    }
                    let column = batch.column(next_arg).clone();
                    next_arg += 1;
                    Ok(match (f.kind, f.float) {
                        (AggKind::Count, _) => Values::Any(column),
                        (_, true) => Values::Float(
                            cast(&column, &DataType::Float64)?
                                .as_primitive::<Float64Type>()
                                .clone(),
                        ),
                        (_, false) => Values::Int(
                            cast(&column, &DataType::Int64)?
                                .as_primitive::<Int64Type>()
                                .clone(),
                        ),
                    })
                })
                .collect::<Result<_>>()?;
            for r in 0..batch.num_rows() {
                if !rows.on_time(b, r) {
                    continue;
                }
                let key = row_bytes(&keys, r);
                let mut fold = |buf: &Vec<u8>, touched: &mut HashSet<Box<[u8]>>| {
                    match groups.get_mut(buf.as_slice()) {
                        Some(p) => p.add(&self.aggs, &values, r),
                        None => {
                            let mut p = Partial::new(n);
                            p.add(&self.aggs, &values, r);
                            groups.insert(buf.as_slice().into(), p);
                        }
                    }
                    if !touched.contains(buf.as_slice()) {
                        touched.insert(buf.as_slice().into());
                    }
                };
                match (self.window, &times) {
                    (None, _) => {
                        group_key(&mut buf, 0, 0, key);
                        fold(&buf, &mut touched);
                    }
                    (Some(_), Some(t)) if t.is_null(r) => {}
                    (Some(WindowKind::Sliding { length, slide }), Some(t)) => {
                        let t = t.value(r);
                        let mut start = t - t.rem_euclid(slide);
                        while start + length > t {
                            group_key(&mut buf, start, start + length, key);
                            fold(&buf, &mut touched);
                            start -= slide;
                        }
                    }
                    (Some(WindowKind::Session { gap }), Some(t)) => {
                        let t = t.value(r);
                        let mut p = Partial::new(n);
                        p.add(&self.aggs, &values, r);
                        let (mut start, mut end) = (t, t + gap);
                        let index = sessions.entry(key.into()).or_default();
                        // Merge every session this row's [t, t + gap) overlaps.
                        while let Some((&s, &e)) = index.range(..end).next_back() {
                            if e <= start {
                                break;
                            }
                            index.remove(&s);
                            group_key(&mut buf, s, e, key);
                            if let Some(old) = groups.remove(buf.as_slice()) {
                                p.merge(&self.aggs, &old);
                            }
                            touched.insert(buf.as_slice().into());
                            start = start.min(s);
                            end = end.max(e);
                        }
                        index.insert(start, end);
                        group_key(&mut buf, start, end, key);
                        groups.insert(buf.as_slice().into(), p);
                        touched.insert(buf.as_slice().into());
                    }
                    (Some(_), None) => unreachable!("times read with a window"),
                }
            }
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
                let v = groups.get(&k).map(Partial::encode);
                (k, v)
            })
            .collect();
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

    /// The emitted groups as the aggregation's output rows.
    fn rows(
        &self,
        emit: &[&[u8]],
        groups: &HashMap<Box<[u8]>, Partial>,
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
        let partials: Vec<&Partial> = emit.iter().map(|k| &groups[*k]).collect();
        for (j, f) in self.aggs.iter().enumerate() {
            let acc = |p: &Partial| p.accs[j];
            let array: ArrayRef = match (f.kind, f.float) {
                (AggKind::CountRows, _) => Arc::new(Int64Array::from_iter_values(
                    partials.iter().map(|p| p.rows),
                )),
                (AggKind::Count, _) => Arc::new(Int64Array::from_iter_values(
                    partials.iter().map(|p| acc(p).n),
                )),
                (AggKind::Avg, _) => Arc::new(Float64Array::from_iter(partials.iter().map(|p| {
                    let a = acc(p);
                    (a.n > 0).then(|| if f.float { a.f } else { a.i as f64 } / a.n as f64)
                }))),
                (_, true) => Arc::new(Float64Array::from_iter(
                    partials.iter().map(|p| (acc(p).n > 0).then(|| acc(p).f)),
                )),
                (_, false) => Arc::new(Int64Array::from_iter(
                    partials.iter().map(|p| (acc(p).n > 0).then(|| acc(p).i)),
                )),
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

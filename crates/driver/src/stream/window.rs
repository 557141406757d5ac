//! Windowed aggregation over a stream, with a watermark and state kept across
//! batches: tumbling event-time windows per key, `count`, `sum`, `min`, `max`, `avg`.
//!
//! ```text
//!  batch rows ─▶ drop rows older than the watermark (counted as late)
//!             ─▶ fold into state: (window, keys) → partial aggregates
//!             ─▶ emit per output mode, evict windows the watermark has passed
//!             ─▶ state/<batch> written before the batch commits
//! ```
//!
//! The watermark a batch uses is the one the batches before it reached (the largest
//! event time seen minus the delay), stored with the batch's offsets, so a batch run
//! again after a restart drops and emits exactly what it did the first time.
//! Append emits a window once, when the watermark passes its end; Update emits the
//! windows a batch changed; Complete emits every window, every batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use ember_core::{EmberError, Result};

use super::query::OutputMode;

/// One aggregate of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    Sum(String),
    Min(String),
    Max(String),
    Avg(String),
}

/// What to aggregate: `stream.window_agg("ts", 10 s, 5 s).key("device").avg("t", "avg_t")`.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub time_column: String,
    pub length: Duration,
    pub watermark_delay: Duration,
    pub keys: Vec<String>,
    pub aggregates: Vec<(Aggregate, String)>,
}

/// Partial aggregates of one window and key.
#[derive(Debug, Clone, Default, PartialEq)]
struct Partial {
    count: i64,
    sums: Vec<f64>,
    counts: Vec<i64>,
    mins: Vec<f64>,
    maxs: Vec<f64>,
}

/// A query's aggregation state: every open window.
#[derive(Debug, Default)]
pub struct WindowState {
    groups: BTreeMap<GroupKeyOrd, Partial>,
    /// Largest event time seen (ms), for the next watermark.
    pub max_event_time: Option<i64>,
}

/// Group keys in window order (ScalarValue orders within a type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKeyOrd(i64, Vec<OrdScalar>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct OrdScalar(ScalarValue);

impl PartialOrd for OrdScalar {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdScalar {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or_else(|| format!("{:?}", self.0).cmp(&format!("{:?}", other.0)))
    }
}

/// What one batch produced.
pub struct WindowOutput {
    pub rows: RecordBatch,
    pub late_rows: usize,
    pub state_rows: usize,
    pub state_rows_updated: usize,
    pub state_rows_removed: usize,
}

impl WindowSpec {
    fn length_ms(&self) -> i64 {
        self.length.as_millis().max(1) as i64
    }

    /// The watermark after a batch that saw `max_event_time`.
    pub fn watermark(&self, max_event_time: Option<i64>) -> Option<i64> {
        max_event_time.map(|t| t - self.watermark_delay.as_millis() as i64)
    }

    /// The rows this aggregation emits: window start and end, the keys, the values.
    pub fn output_schema(&self, input: &Schema) -> Result<SchemaRef> {
        let mut fields = vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ];
        for k in &self.keys {
            let f = input.field_with_name(k).map_err(|_| {
                EmberError::Config(format!("window_agg: no key column '{k}' in the stream"))
            })?;
            fields.push(Field::new(k, f.data_type().clone(), true));
        }
        for (agg, alias) in &self.aggregates {
            let ty = match agg {
                Aggregate::Count => DataType::Int64,
                _ => DataType::Float64,
            };
            fields.push(Field::new(alias, ty, true));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Folds a batch's rows into `state` and returns what to emit. `watermark` is the
    /// one this batch uses (from earlier batches).
    pub fn process(
        &self,
        state: &mut WindowState,
        input: &[RecordBatch],
        watermark: Option<i64>,
        mode: OutputMode,
        input_schema: &Schema,
    ) -> Result<WindowOutput> {
        let n = self.aggregates.len();
        let mut late = 0;
        let mut touched: Vec<GroupKeyOrd> = vec![];
        for batch in input {
            let time = event_times(batch, &self.time_column)?;
            let keys: Vec<ArrayRef> = self
                .keys
                .iter()
                .map(|k| column(batch, k))
                .collect::<Result<_>>()?;
            let values: Vec<Option<Float64Array>> = self
                .aggregates
                .iter()
                .map(|(a, _)| match a {
                    Aggregate::Count => Ok(None),
                    Aggregate::Sum(c)
                    | Aggregate::Min(c)
                    | Aggregate::Max(c)
                    | Aggregate::Avg(c) => {
                        let array = cast(&column(batch, c)?, &DataType::Float64)?;
                        Ok(Some(
                            array
                                .as_primitive::<arrow::datatypes::Float64Type>()
                                .clone(),
                        ))
                    }
                })
                .collect::<Result<_>>()?;
            for row in 0..batch.num_rows() {
                if time.is_null(row) {
                    continue;
                }
                let t = time.value(row);
                if watermark.is_some_and(|w| t < w) {
                    late += 1;
                    continue;
                }
                state.max_event_time = Some(state.max_event_time.map_or(t, |m| m.max(t)));
                let start = t - t.rem_euclid(self.length_ms());
                let key = GroupKeyOrd(
                    start,
                    keys.iter()
                        .map(|k| ScalarValue::try_from_array(k, row).map(OrdScalar))
                        .collect::<datafusion::error::Result<_>>()?,
                );
                let p = state.groups.entry(key.clone()).or_insert_with(|| Partial {
                    count: 0,
                    sums: vec![0.0; n],
                    counts: vec![0; n],
                    mins: vec![f64::INFINITY; n],
                    maxs: vec![f64::NEG_INFINITY; n],
                });
                p.count += 1;
                for (i, v) in values.iter().enumerate() {
                    if let Some(v) = v
                        && !v.is_null(row)
                    {
                        let x = v.value(row);
                        p.sums[i] += x;
                        p.counts[i] += 1;
                        p.mins[i] = p.mins[i].min(x);
                        p.maxs[i] = p.maxs[i].max(x);
                    }
                }
                touched.push(key);
            }
        }
        touched.sort();
        touched.dedup();
        let updated = touched.len();
        // The watermark after this batch decides which windows are final.
        let next = self.watermark(state.max_event_time);
        let closed = |k: &GroupKeyOrd| next.is_some_and(|w| k.0 + self.length_ms() <= w);
        let emit: Vec<GroupKeyOrd> = match mode {
            OutputMode::Complete => state.groups.keys().cloned().collect(),
            OutputMode::Update => touched,
            OutputMode::Append => state.groups.keys().filter(|k| closed(k)).cloned().collect(),
        };
        let rows = self.rows(&emit, &state.groups, input_schema)?;
        let before = state.groups.len();
        if mode != OutputMode::Complete {
            state.groups.retain(|k, _| !closed(k));
        }
        Ok(WindowOutput {
            rows,
            late_rows: late,
            state_rows: state.groups.len(),
            state_rows_updated: updated,
            state_rows_removed: before - state.groups.len(),
        })
    }

    fn rows(
        &self,
        keys: &[GroupKeyOrd],
        groups: &BTreeMap<GroupKeyOrd, Partial>,
        input_schema: &Schema,
    ) -> Result<RecordBatch> {
        let schema = self.output_schema(input_schema)?;
        let len = self.length_ms();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(
                keys.iter().map(|k| k.0),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                keys.iter().map(|k| k.0 + len),
            )),
        ];
        for (i, name) in self.keys.iter().enumerate() {
            let ty = schema
                .field_with_name(name)
                .expect("in schema")
                .data_type()
                .clone();
            let values: Vec<ScalarValue> = keys.iter().map(|k| k.1[i].0.clone()).collect();
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(&ty)
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        for (i, (agg, _)) in self.aggregates.iter().enumerate() {
            let partial = |k: &GroupKeyOrd| &groups[k];
            columns.push(match agg {
                Aggregate::Count => Arc::new(Int64Array::from_iter_values(
                    keys.iter().map(|k| partial(k).count),
                )),
                Aggregate::Sum(_) => Arc::new(Float64Array::from_iter(
                    keys.iter()
                        .map(|k| (partial(k).counts[i] > 0).then(|| partial(k).sums[i])),
                )),
                Aggregate::Min(_) => Arc::new(Float64Array::from_iter(
                    keys.iter()
                        .map(|k| (partial(k).counts[i] > 0).then(|| partial(k).mins[i])),
                )),
                Aggregate::Max(_) => Arc::new(Float64Array::from_iter(
                    keys.iter()
                        .map(|k| (partial(k).counts[i] > 0).then(|| partial(k).maxs[i])),
                )),
                Aggregate::Avg(_) => Arc::new(Float64Array::from_iter(keys.iter().map(|k| {
                    let p = partial(k);
                    (p.counts[i] > 0).then(|| p.sums[i] / p.counts[i] as f64)
                }))),
            });
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// The state as JSON, for the checkpoint (`state/<batch>`).
    pub fn save(&self, state: &WindowState) -> Result<Vec<u8>> {
        let groups: Vec<serde_json::Value> = state
            .groups
            .iter()
            .map(|(k, p)| {
                serde_json::json!({
                    "start": k.0,
                    "keys": k.1.iter().map(|s| scalar_json(&s.0)).collect::<Vec<_>>(),
                    "count": p.count, "sums": p.sums, "counts": p.counts,
                    "mins": p.mins.iter().map(|m| finite(*m)).collect::<Vec<_>>(),
                    "maxs": p.maxs.iter().map(|m| finite(*m)).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(serde_json::to_vec(&serde_json::json!({
            "max_event_time": state.max_event_time,
            "groups": groups,
        }))
        .expect("serializable"))
    }

    /// Reads a state written by [`save`](Self::save).
    pub fn load(&self, bytes: &[u8], input_schema: &Schema) -> Result<WindowState> {
        let bad = |m: String| EmberError::Decode {
            what: "a streaming aggregation's state",
            message: m,
        };
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let key_types: Vec<DataType> = self
            .keys
            .iter()
            .map(|k| {
                input_schema
                    .field_with_name(k)
                    .map(|f| f.data_type().clone())
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut state = WindowState {
            max_event_time: v["max_event_time"].as_i64(),
            ..Default::default()
        };
        let floats = |x: &serde_json::Value, default: f64| -> Vec<f64> {
            x.as_array()
                .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(default)).collect())
                .unwrap_or_default()
        };
        for g in v["groups"].as_array().cloned().unwrap_or_default() {
            let keys = g["keys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .zip(&key_types)
                .map(|(j, ty)| scalar_from_json(j, ty).map(OrdScalar))
                .collect::<Result<Vec<_>>>()?;
            let start = g["start"]
                .as_i64()
                .ok_or_else(|| bad("a group without start".into()))?;
            state.groups.insert(
                GroupKeyOrd(start, keys),
                Partial {
                    count: g["count"].as_i64().unwrap_or(0),
                    sums: floats(&g["sums"], 0.0),
                    counts: g["counts"]
                        .as_array()
                        .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(0)).collect())
                        .unwrap_or_default(),
                    mins: floats(&g["mins"], f64::INFINITY),
                    maxs: floats(&g["maxs"], f64::NEG_INFINITY),
                },
            );
        }
        Ok(state)
    }
}

fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    if s.is_null() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_string())
    }
}

fn scalar_from_json(v: &serde_json::Value, ty: &DataType) -> Result<ScalarValue> {
    match v.as_str() {
        None => Ok(ScalarValue::try_from(ty)?),
        Some(s) => Ok(ScalarValue::try_from_string(s.to_string(), ty)?),
    }
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| EmberError::Config(format!("window_agg: no column '{name}' in the stream")))
}

/// The event-time column as milliseconds.
fn event_times(batch: &RecordBatch, name: &str) -> Result<TimestampMillisecondArray> {
    let c = column(batch, name)?;
    let ms = cast(&c, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(|e| {
        EmberError::Config(format!(
            "window_agg: time column '{name}' ({}) is not a timestamp: {e}",
            c.data_type()
        ))
    })?;
    Ok(ms
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .clone())
}

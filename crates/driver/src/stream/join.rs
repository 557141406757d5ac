//! Stream-stream inner joins, as Spark runs them: each side's rows are kept as state
//! until no future row of the other side can match them.
//!
//! ```text
//!  batch n:  new left ⋈ (kept right + new right)   ∪   kept left ⋈ new right
//!  then:     kept += new;  evict what the watermark and the time bound rule out
//! ```
//!
//! Each side needs `with_watermark`; the query's watermark is the smaller of the two
//! (a side's largest event time seen minus its delay). Rows older than it are late:
//! dropped and counted. The join condition's time bound, such as
//! `r.t BETWEEN l.t AND l.t + INTERVAL '1 minute'`, says how long a row can still
//! match: a left row goes once `t_l + upper < watermark`, a right row once
//! `t_r - lower < watermark`. Without a bound on one side, that side's state is kept.
//! State is one entry per (side, batch) holding that batch's kept rows as Arrow IPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{BinaryExpr, Expr, Join, LogicalPlan, LogicalPlanBuilder, Operator};
use ember_core::event_time::event_times;
use ember_core::{EmberError, Result};

use super::stateful::Watermark;
use ember_core::stateful::store::{Change, Entries, Snapshot};

/// A side of the join.
pub struct Side {
    /// The side's plan over its stream, run per batch.
    pub plan: LogicalPlan,
    /// Its watermark column (in its output) and delay.
    pub watermark: Watermark,
    time_index: usize,
    schema: SchemaRef,
}

pub struct JoinOp {
    /// The join node; its inputs are replaced by each batch's rows.
    node: LogicalPlan,
    pub left: Side,
    pub right: Side,
    /// Bounds on `t_right - t_left`, in ms, from the join condition.
    lower: Option<i64>,
    upper: Option<i64>,
}

/// Kept rows of both sides, and each side's largest event time so far.
#[derive(Default)]
pub struct JoinState {
    kept: [BTreeMap<u64, RecordBatch>; 2],
    max_time: [Option<i64>; 2],
}

/// What one batch of a join did.
pub struct JoinBatch {
    /// The plan that joins the batch's rows with the kept ones (the join's schema).
    pub plan: LogicalPlan,
    pub late_rows: usize,
    pub next_watermark: Option<i64>,
}

impl Side {
    fn new(plan: LogicalPlan, watermark: Watermark) -> Result<Side> {
        // Every column nullable: the rows a side's job returns may say otherwise than
        // its logical plan, and kept rows are rebuilt in this one schema.
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(
            plan.schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let time_index = plan
            .schema()
            .fields()
            .iter()
            .position(|f| f.name() == &watermark.column)
            .ok_or_else(|| {
                EmberError::Config(format!(
                    "stream-stream join: the watermark column '{}' is not an output of its side",
                    watermark.column
                ))
            })?;
        Ok(Side {
            plan,
            watermark,
            time_index,
            schema,
        })
    }

    /// The rows at or after `watermark`; how many were late.
    fn on_time(
        &self,
        batches: &[RecordBatch],
        watermark: Option<i64>,
    ) -> Result<(RecordBatch, usize, Option<i64>)> {
        let batches = batches
            .iter()
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let all = arrow::compute::concat_batches(&self.schema, &batches)?;
        let times = event_times(all.column(self.time_index))?;
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
}

/// `t ± interval`, as (column, offset in ms).
fn time_term(e: &Expr) -> Option<(Column, i64)> {
    match e {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::Cast(c) => time_term(&c.expr),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (name, base) = time_term(left)?;
            let ms = interval_ms(right)?;
            match op {
                Operator::Plus => Some((name, base + ms)),
                Operator::Minus => Some((name, base - ms)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn interval_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i.days as i64 * 86_400_000 + i.milliseconds as i64)
        }
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => Some(s * 1000),
        ScalarValue::DurationMicrosecond(Some(us)) => Some(us / 1000),
        ScalarValue::DurationNanosecond(Some(ns)) => Some(ns / 1_000_000),
        _ => None,
    }
}

/// Bounds on `t_r - t_l` that a condition's conjuncts give: (lower, upper).
fn time_bounds(
    condition: Option<&Expr>,
    left_time: &Column,
    right_time: &Column,
) -> (Option<i64>, Option<i64>) {
    let (mut lower, mut upper): (Option<i64>, Option<i64>) = (None, None);
    let mut add = |a: &Expr, op: Operator, b: &Expr| {
        // a op b, with a and b each `time ± c`.
        let (Some((na, ca)), Some((nb, cb))) = (time_term(a), time_term(b)) else {
            return;
        };
        // Orient as t_r - t_l (op) k.
        let (op, k) = if &na == right_time && &nb == left_time {
            (op, cb - ca)
        } else if &na == left_time && &nb == right_time {
            match op.swap() {
                Some(swapped) => (swapped, ca - cb),
                None => return,
            }
        } else {
            return;
        };
        match op {
            Operator::LtEq | Operator::Lt => upper = Some(upper.map_or(k, |u| u.min(k))),
            Operator::GtEq | Operator::Gt => lower = Some(lower.map_or(k, |l| l.max(k))),
            _ => {}
        }
    };
    let Some(condition) = condition else {
        return (None, None);
    };
    for c in datafusion::logical_expr::utils::split_conjunction(condition) {
        match c {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => add(left, *op, right),
            Expr::Between(b) if !b.negated => {
                add(&b.expr, Operator::GtEq, &b.low);
                add(&b.expr, Operator::LtEq, &b.high);
            }
            _ => {}
        }
    }
    (lower, upper)
}

/// A scan of `batch`, projected to exactly `like`'s columns (qualifiers and names).
fn rows_as(like: &LogicalPlan, batch: RecordBatch) -> Result<LogicalPlan> {
    let fields: Vec<arrow::datatypes::Field> = like
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.as_ref()
                .clone()
                .with_name(format!("c{i}"))
                .with_nullable(true)
        })
        .collect();
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
    let table = MemTable::try_new(schema, vec![vec![batch]])?;
    let exprs: Vec<Expr> = like
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::new(Some("__ember_rows"), format!("c{i}")))
                .alias_qualified(q.cloned(), f.name())
        })
        .collect();
    Ok(
        LogicalPlanBuilder::scan("__ember_rows", provider_as_source(Arc::new(table)), None)?
            .project(exprs)?
            .build()?,
    )
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut bytes = vec![];
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<RecordBatch> {
    let (schema, batches) =
        ember_core::convert::read_ipc_stream(bytes, "a stream-stream join's state")?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

fn key(side: usize, batch: u64) -> Box<[u8]> {
    let mut k = vec![side as u8];
    k.extend_from_slice(&batch.to_be_bytes());
    k.into()
}

const MAX_KEY: [u8; 2] = [2, 0];

impl JoinOp {
    /// The join node of a stream-stream join, with each side's watermark.
    pub fn plan(
        join: &Join,
        node: &LogicalPlan,
        left: Watermark,
        right: Watermark,
    ) -> Result<JoinOp> {
        if join.join_type != datafusion::logical_expr::JoinType::Inner {
            return Err(EmberError::NotSupported(format!(
                "{} stream-stream joins (inner joins are)",
                join.join_type
            )));
        }
        let column = |plan: &LogicalPlan, name: &str| -> Result<Column> {
            let (q, f) = plan.schema().qualified_field_with_unqualified_name(name)?;
            Ok(Column::from((q, f)))
        };
        let (lower, upper) = time_bounds(
            join.filter.as_ref(),
            &column(&join.left, &left.column)?,
            &column(&join.right, &right.column)?,
        );
        if lower.is_none() || upper.is_none() {
            tracing::warn!(
                lower,
                upper,
                "a stream-stream join without a time bound on both sides keeps state that grows"
            );
        }
        Ok(JoinOp {
            node: node.clone(),
            left: Side::new(join.left.as_ref().clone(), left)?,
            right: Side::new(join.right.as_ref().clone(), right)?,
            lower,
            upper,
        })
    }

    pub fn load(&self, entries: Entries) -> Result<JoinState> {
        let mut state = JoinState::default();
        for (k, v) in entries {
            match k.first() {
                Some(&side @ (0 | 1)) if k.len() == 9 => {
                    let batch = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                    state.kept[side as usize].insert(batch, decode(&v)?);
                }
                Some(2) => {
                    let word = |at: usize| {
                        v.get(at..at + 8)
                            .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                    };
                    state.max_time = [
                        word(0).filter(|_| v.get(16) == Some(&1)),
                        word(8).filter(|_| v.get(17) == Some(&1)),
                    ];
                }
                _ => {
                    return Err(EmberError::Decode {
                        what: "a stream-stream join's state",
                        message: format!("an entry with key {k:?}"),
                    });
                }
            }
        }
        Ok(state)
    }

    fn max_entry(state: &JoinState) -> Vec<u8> {
        let mut v = vec![0u8; 18];
        for (i, m) in state.max_time.iter().enumerate() {
            v[i * 8..i * 8 + 8].copy_from_slice(&m.unwrap_or(0).to_le_bytes());
            v[16 + i] = u8::from(m.is_some());
        }
        v
    }

    pub fn entries(&self, state: &JoinState) -> Result<Snapshot> {
        let mut out = vec![(Box::from(&MAX_KEY[..]), Self::max_entry(state))];
        for side in 0..2 {
            for (b, rows) in &state.kept[side] {
                out.push((key(side, *b), encode(rows)?));
            }
        }
        Ok(out)
    }

    /// Takes the batch's rows of both sides: drops late ones, plans the join of the
    /// new rows with the kept ones, then keeps the new rows and evicts what can no
    /// longer match. Returns the plan and the state's changes.
    pub fn process(
        &self,
        state: &mut JoinState,
        batch_id: u64,
        left: &[RecordBatch],
        right: &[RecordBatch],
        watermark: Option<i64>,
    ) -> Result<(JoinBatch, Vec<Change>)> {
        let (new_left, late_l, max_l) = self.left.on_time(left, watermark)?;
        let (new_right, late_r, max_r) = self.right.on_time(right, watermark)?;
        let kept = |side: &Side, kept: &BTreeMap<u64, RecordBatch>| -> Result<RecordBatch> {
            let all: Vec<RecordBatch> = kept.values().cloned().collect();
            Ok(arrow::compute::concat_batches(&side.schema, &all)?)
        };
        let old_left = kept(&self.left, &state.kept[0])?;
        let old_right = kept(&self.right, &state.kept[1])?;
        let all_right =
            arrow::compute::concat_batches(&self.right.schema, [&old_right, &new_right])?;
        let join = |l: RecordBatch, r: RecordBatch| -> Result<LogicalPlan> {
            let inputs = vec![rows_as(&self.left.plan, l)?, rows_as(&self.right.plan, r)?];
            Ok(self.node.with_new_exprs(self.node.expressions(), inputs)?)
        };
        let plan = LogicalPlanBuilder::from(join(new_left.clone(), all_right)?)
            .union(join(old_left, new_right.clone())?)?
            .build()?;
        // Keep the new rows; move the watermark; evict.
        for (side, (rows, max)) in [(new_left, max_l), (new_right, max_r)]
            .into_iter()
            .enumerate()
        {
            if rows.num_rows() > 0 {
                state.kept[side].insert(batch_id, rows);
            }
            if let Some(m) = max {
                state.max_time[side] = Some(state.max_time[side].map_or(m, |x| x.max(m)));
            }
        }
        let side_wm = |side: usize, delay: i64| state.max_time[side].map(|t| t - delay);
        let next = match (
            side_wm(0, self.left.watermark.delay_ms),
            side_wm(1, self.right.watermark.delay_ms),
        ) {
            (Some(a), Some(b)) => Some(watermark.map_or(a.min(b), |w| w.max(a.min(b)))),
            _ => watermark,
        };
        let mut changes: Vec<Change> =
            vec![(Box::from(&MAX_KEY[..]), Some(Self::max_entry(state)))];
        for side in 0..2 {
            if let Some(rows) = state.kept[side].get(&batch_id) {
                changes.push((key(side, batch_id), Some(encode(rows)?)));
            }
        }
        if let Some(w) = next {
            // A left row matches right rows with t_r <= t_l + upper; future right rows
            // have t_r >= w. A right row matches left rows with t_l <= t_r - lower.
            let limits = [self.upper.map(|u| w - u), self.lower.map(|l| w + l)];
            for side in 0..2 {
                let (Some(limit), time_index) = (
                    limits[side],
                    [self.left.time_index, self.right.time_index][side],
                ) else {
                    continue;
                };
                let batches: Vec<u64> = state.kept[side].keys().copied().collect();
                for b in batches {
                    let rows = &state.kept[side][&b];
                    let times = event_times(rows.column(time_index))?;
                    let keep: BooleanArray = (0..rows.num_rows())
                        .map(|r| Some(times.is_valid(r) && times.value(r) >= limit))
                        .collect();
                    if keep.true_count() == rows.num_rows() {
                        continue;
                    }
                    let left_over = arrow::compute::filter_record_batch(rows, &keep)?;
                    if left_over.num_rows() == 0 {
                        state.kept[side].remove(&b);
                        changes.push((key(side, b), None));
                    } else {
                        changes.push((key(side, b), Some(encode(&left_over)?)));
                        state.kept[side].insert(b, left_over);
                    }
                }
            }
        }
        Ok((
            JoinBatch {
                plan,
                late_rows: late_l + late_r,
                next_watermark: next,
            },
            changes,
        ))
    }

    /// Rows kept on both sides.
    pub fn rows(state: &JoinState) -> usize {
        state
            .kept
            .iter()
            .flat_map(|k| k.values())
            .map(|b| b.num_rows())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn time_bounds_come_from_between_and_comparisons() {
        let minute = lit(ScalarValue::new_interval_mdn(0, 0, 60_000_000_000));
        let (l, r) = (
            Column::from_qualified_name("l.t"),
            Column::from_qualified_name("r.t"),
        );
        let c = col("r.t").between(col("l.t"), col("l.t") + minute.clone());
        assert_eq!(time_bounds(Some(&c), &l, &r), (Some(0), Some(60_000)));
        let c = col("l.t")
            .gt_eq(col("r.t") - minute)
            .and(col("r.t").lt(col("l.t")));
        assert_eq!(time_bounds(Some(&c), &l, &r), (None, Some(0)));
        let c = col("r.t").gt(col("r.t"));
        assert_eq!(time_bounds(Some(&c), &l, &r), (None, None));
    }
}

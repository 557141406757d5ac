//! Planning stream-stream inner joins, as Spark runs them: each side's rows are kept
//! as state until no future row of the other side can match them. The tasks of
//! `ember_exec::stateful::join` run them, one per state partition.
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

use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::optimizer::{OptimizerContext, OptimizerRule};
use ember_core::{EmberError, Result};
use ember_exec::stateful::OpConfig;

use super::stateful::Watermark;

/// A planned stream-stream join: its node, with its equal keys taken out of the
/// condition, the operator, and each side's watermark delay.
pub struct JoinPlan {
    pub node: LogicalPlan,
    pub op: OpConfig,
    pub delays: [i64; 2],
}

/// Plans the stream-stream join `node` (a `Join`), with each side's watermark.
pub fn plan(node: &LogicalPlan, left: Watermark, right: Watermark) -> Result<JoinPlan> {
    // The equal keys decide the state's partitions: take them out of the condition
    // now, as the optimizer would later.
    let node = datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate::new()
        .rewrite(node.clone(), &OptimizerContext::new())?
        .data;
    let LogicalPlan::Join(join) = &node else {
        return Err(EmberError::Internal("a stream-stream join's node".into()));
    };
    use datafusion::logical_expr::JoinType;
    let outer = match join.join_type {
        JoinType::Inner => [false, false],
        JoinType::Left => [true, false],
        JoinType::Right => [false, true],
        JoinType::Full => [true, true],
        other => {
            return Err(EmberError::NotSupported(format!(
                "{other} stream-stream joins (inner, left, right and full outer joins are)"
            )));
        }
    };
    let column = |plan: &LogicalPlan, name: &str| -> Result<Column> {
        let (q, f) = plan
            .schema()
            .qualified_field_with_unqualified_name(name)
            .map_err(|_| {
                EmberError::Config(format!(
                    "stream-stream join: the watermark column '{name}' is not an output of its side"
                ))
            })?;
        Ok(Column::from((q, f)))
    };
    let (lower, upper) = time_bounds(
        join.filter.as_ref(),
        &column(&join.left, &left.column)?,
        &column(&join.right, &right.column)?,
    );
    // An outer side's unmatched rows come out when evicted, which needs a bound.
    for (side, bound, needed) in [("left", upper, "upper"), ("right", lower, "lower")] {
        let is_outer = if side == "left" { outer[0] } else { outer[1] };
        if is_outer && bound.is_none() {
            return Err(EmberError::Config(format!(
                "a {} outer stream-stream join emits a {side} row that never matched once no later row can match it: the condition needs an {needed} bound on the right time relative to the left (e.g. c.ct BETWEEN i.it AND i.it + INTERVAL '1 minute')",
                join.join_type
            )));
        }
    }
    if lower.is_none() || upper.is_none() {
        tracing::warn!(
            lower,
            upper,
            "a stream-stream join without a time bound on both sides keeps state that grows"
        );
    }
    let op = OpConfig::Join {
        keys: join.on.len(),
        times: [left.column.clone(), right.column.clone()],
        lower,
        upper,
        outer,
    };
    Ok(JoinPlan {
        op,
        delays: [left.delay_ms, right.delay_ms],
        node: node.clone(),
    })
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

//! Planning a streaming aggregation: partial aggregates per group (window and keys),
//! folded batch by batch in the tasks of `ember_core::stateful`.

use arrow::datatypes::DataType;
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder};
use ember_core::Result;
use ember_core::event_time::{SESSION_WINDOW, WINDOW, window_kind};
use ember_core::stateful::{AggKind, OpConfig};

use super::{Watermark, event_time_expr, literals, refuse, unalias};

/// The batch plan under a streaming aggregation (its input projected to the event
/// time, the window time, the keys and the aggregates' arguments) and the operator.
pub(super) fn plan(
    agg: &Aggregate,
    watermark: Option<&Watermark>,
) -> Result<(LogicalPlan, OpConfig, bool)> {
    let mut exprs = vec![];
    let event_time = event_time_expr(&agg.input, watermark)?;
    let has_event_time = event_time.is_some();
    exprs.extend(event_time);
    let mut window = None;
    let mut window_position = None;
    let mut keys = vec![];
    for (i, g) in agg.group_expr.iter().enumerate() {
        match unalias(g) {
            Expr::GroupingSet(_) => {
                return Err(refuse("GROUPING SETS, CUBE and ROLLUP over a stream"));
            }
            Expr::ScalarFunction(f)
                if f.func.name() == WINDOW || f.func.name() == SESSION_WINDOW =>
            {
                if window.is_some() {
                    return Err(refuse("a streaming aggregation groups by one window"));
                }
                let name = f.func.name();
                window = Some(window_kind(name, &literals(&f.args[1..], name)?)?);
                window_position = Some(i);
                exprs.push(f.args[0].clone().alias("__ember_window_time"));
            }
            other => keys.push(other.clone()),
        }
    }
    for (i, k) in keys.iter().enumerate() {
        exprs.push(k.clone().alias(format!("__ember_key{i}")));
    }
    let mut fns = vec![];
    let mut args = vec![];
    for (j, a) in agg.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(f) = unalias(a) else {
            return Err(refuse(format!("'{a}' in a streaming aggregation")));
        };
        let p = &f.params;
        if p.distinct || p.filter.is_some() || !p.order_by.is_empty() {
            return Err(refuse(format!(
                "'{a}': DISTINCT, FILTER and ORDER BY inside a streaming aggregate"
            )));
        }
        let name = f.func.name().to_ascii_lowercase();
        let star = p.args.is_empty() || matches!(unalias(&p.args[0]), Expr::Literal(..));
        let kind = match name.as_str() {
            "count" if star => AggKind::CountRows,
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" | "mean" => AggKind::Avg,
            other => {
                return Err(refuse(format!(
                    "the aggregate {other} over a stream (count, sum, min, max and avg are)"
                )));
            }
        };
        let mut float = false;
        if kind != AggKind::CountRows {
            let arg = p.args[0].clone();
            let ty = arg.get_type(agg.input.schema())?;
            float = matches!(
                ty,
                DataType::Float16
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Decimal128(..)
                    | DataType::Decimal256(..)
            );
            let integral = ty.is_integer() || ty.is_temporal();
            if kind != AggKind::Count && !float && !integral {
                return Err(refuse(format!(
                    "{name} of a {ty} column over a stream (numbers and times are supported)"
                )));
            }
            args.push(arg.alias(format!("__ember_arg{j}")));
        }
        fns.push((kind, float));
    }
    exprs.extend(args);
    let batch = LogicalPlanBuilder::from(agg.input.as_ref().clone())
        .project(exprs)?
        .build()?;
    let op = OpConfig::Aggregate {
        window,
        window_position,
        keys: keys.len(),
        aggs: fns,
    };
    Ok((batch, op, has_event_time))
}

//! Planning a streaming aggregation: the aggregate functions stay DataFusion's own,
//! rewritten over the batch plan's projected columns; `ember_exec::stateful` keeps
//! their accumulators' states per group, batch by batch.

use datafusion::common::Column;
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, SortExpr};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use ember_core::Result;
use ember_core::event_time::{SESSION_WINDOW, WINDOW, window_kind};
use ember_exec::stateful::OpConfig;

use super::{Watermark, event_time_expr, literals, refuse, unalias};

/// The batch plan under a streaming aggregation (its input projected to the event
/// time, the window time, the keys and the aggregates' inputs), the operator, whether
/// the input starts with the event time, and the aggregate functions over the batch
/// plan's columns (type-coerced, ready for the physical planner).
pub(super) fn plan(
    agg: &Aggregate,
    watermark: Option<&Watermark>,
) -> Result<(LogicalPlan, OpConfig, bool, Vec<Expr>)> {
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
    // Each aggregate over columns of the projection: its non-literal arguments, its
    // FILTER and its ORDER BY expressions become columns of the batch plan.
    let mut aggregates = vec![];
    for (j, a) in agg.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(f) = unalias(a) else {
            return Err(refuse(format!("'{a}' in a streaming aggregation")));
        };
        let mut column = |e: &Expr, name: String| -> Expr {
            exprs.push(e.clone().alias(&name));
            Expr::Column(Column::from_name(name))
        };
        let p = &f.params;
        let args = p
            .args
            .iter()
            .enumerate()
            .map(|(k, e)| match unalias(e) {
                Expr::Literal(..) => e.clone(),
                _ => column(e, format!("__ember_arg{j}_{k}")),
            })
            .collect();
        let filter = p
            .filter
            .as_ref()
            .map(|e| Box::new(column(e, format!("__ember_filter{j}"))));
        let order_by = p
            .order_by
            .iter()
            .enumerate()
            .map(|(k, s)| SortExpr {
                expr: column(&s.expr, format!("__ember_order{j}_{k}")),
                ..s.clone()
            })
            .collect();
        let rewritten = Expr::AggregateFunction(AggregateFunction::new_udf(
            f.func.clone(),
            args,
            p.distinct,
            filter,
            order_by,
            p.null_treatment,
        ));
        aggregates.push(rewritten.alias(a.schema_name().to_string()));
    }
    let batch = LogicalPlanBuilder::from(agg.input.as_ref().clone())
        .project(exprs)?
        .build()?;
    let aggregates = coerced(&batch, aggregates)?;
    let op = OpConfig::Aggregate {
        window,
        window_position,
        keys: keys.len(),
        aggregates: aggregates.len(),
    };
    Ok((batch, op, has_event_time, aggregates))
}

/// The aggregates with their arguments cast as the functions take them, as
/// DataFusion's analyzer does for a batch query's aggregation.
fn coerced(batch: &LogicalPlan, aggregates: Vec<Expr>) -> Result<Vec<Expr>> {
    let plan = LogicalPlanBuilder::from(batch.clone())
        .aggregate(Vec::<Expr>::new(), aggregates)?
        .build()?;
    match TypeCoercion::new().analyze(plan, &ConfigOptions::default())? {
        LogicalPlan::Aggregate(a) => Ok(a.aggr_expr),
        other => Err(ember_core::EmberError::Internal(format!(
            "type coercion of a streaming aggregation gave a {}",
            other.display()
        ))),
    }
}

//! Planning a streaming deduplication: the first row of each key passes; with a
//! watermark a key is forgotten once the watermark passes its event time.

use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, LogicalPlanBuilder};
use ember_core::Result;
use ember_exec::stateful::OpConfig;

use super::{Watermark, event_time_expr, refuse, unalias};

/// The batch plan under a streaming deduplication (the event time, the row's
/// columns, then the keys) and the operator.
pub(super) fn plan(
    distinct: &Distinct,
    watermark: Option<&Watermark>,
) -> Result<(LogicalPlan, OpConfig, bool)> {
    let (input, keys): (&LogicalPlan, Vec<Expr>) = match distinct {
        Distinct::All(input) => (
            input,
            input
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect(),
        ),
        Distinct::On(on) => {
            let columns: Vec<Expr> = on
                .input
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            let select: Vec<&Expr> = on.select_expr.iter().map(unalias).collect();
            if select.len() != columns.len()
                || select.iter().zip(&columns).any(|(s, c)| *s != c)
                || on.sort_expr.is_some()
            {
                return Err(refuse(
                    "DISTINCT ON over a stream keeps whole rows: use drop_duplicates(subset)",
                ));
            }
            (on.input.as_ref(), on.on_expr.clone())
        }
    };
    let mut exprs = vec![];
    let event_time = event_time_expr(input, watermark)?;
    let has_event_time = event_time.is_some();
    exprs.extend(event_time);
    let columns = input.schema().fields().len();
    exprs.extend(input.schema().columns().into_iter().map(Expr::Column));
    for (i, k) in keys.iter().enumerate() {
        exprs.push(k.clone().alias(format!("__ember_key{i}")));
    }
    let batch = LogicalPlanBuilder::from(input.clone())
        .project(exprs)?
        .build()?;
    Ok((
        batch,
        OpConfig::Dedup {
            keys: keys.len(),
            columns,
        },
        has_event_time,
    ))
}

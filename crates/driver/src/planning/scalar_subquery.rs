//! Uncorrelated scalar subqueries run before their query, as Spark runs them, and
//! enter it as literals.
//!
//! DataFusion turns `d_month_seq = (SELECT DISTINCT d_month_seq FROM date_dim WHERE
//! ..)` into a join with the subquery's one row, planned wherever the filter was: often
//! above the joins of a star schema, so the fact table is joined and shuffled whole
//! before the filter drops most of it. With the subquery's value known, the filter is
//! `d_month_seq = 1212`: it reaches the dimension's scan, and a dimension that small
//! prunes the fact table's scan through a runtime filter, before any shuffle.
//!
//! [`uncorrelated`] finds the subqueries (those that read nothing of the query around
//! them); the session runs each as a job of its own, [`value_of`] takes its value, and
//! [`substitute`] puts the values in. A subquery inside another runs when that one
//! does. As in SQL, no row is NULL, and more than one row is an error.

use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan, Subquery};
use ember_core::Result;

/// The scalar subqueries of `plan` that read nothing of the query around them, each
/// once, outermost first; none nested in another of them.
pub(crate) fn uncorrelated(plan: &LogicalPlan) -> Result<Vec<Subquery>> {
    let mut found = Vec::new();
    collect(plan, &mut found)?;
    Ok(found)
}

fn collect(plan: &LogicalPlan, found: &mut Vec<Subquery>) -> DFResult<()> {
    plan.apply(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let inner = match e {
                    Expr::ScalarSubquery(sq) if is_uncorrelated(sq) => {
                        if !found.contains(sq) {
                            found.push(sq.clone());
                        }
                        return Ok(TreeNodeRecursion::Jump);
                    }
                    Expr::ScalarSubquery(sq) => sq,
                    Expr::Exists(e) => &e.subquery,
                    Expr::InSubquery(e) => &e.subquery,
                    Expr::SetComparison(e) => &e.subquery,
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                collect(&inner.subquery, found)?;
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(())
}

/// One column, and no outer reference anywhere in it (a subquery nested in it that
/// reads it counts too: it is then left to DataFusion, which is always right).
fn is_uncorrelated(sq: &Subquery) -> bool {
    if !sq.outer_ref_columns.is_empty() || sq.subquery.schema().fields().len() != 1 {
        return false;
    }
    let mut outer = false;
    let _ = sq.subquery.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            outer |= e.contains_outer();
            Ok(if outer {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    });
    !outer
}

/// The value of scalar subquery `sq` from the rows it returned (at most two need
/// reading): NULL of its type for none, an error for more than one.
pub(crate) fn value_of(sq: &Subquery, batches: &[RecordBatch]) -> Result<ScalarValue> {
    let data_type = sq.subquery.schema().field(0).data_type().clone();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(ScalarValue::try_from(&data_type)?);
    };
    if rows > 1 {
        return Err(DataFusionError::Execution(format!(
            "a scalar subquery returned more than one row; one used as an expression must \
             return at most one: {}",
            crate::execute::describe(&sq.subquery)
        ))
        .into());
    }
    let value = ScalarValue::try_from_array(batch.column(0), 0)?;
    if value.data_type() == data_type {
        Ok(value)
    } else {
        Ok(value.cast_to(&data_type)?)
    }
}

/// `plan` with each subquery of `values` replaced by its value. Names stay as they
/// were, so the query's columns are named as the subqueries made them.
pub(crate) fn substitute(
    plan: LogicalPlan,
    values: &[(Subquery, ScalarValue)],
) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up_with_subqueries(|node| {
        let names = NamePreserver::new(&node);
        let node = node.map_expressions(|expr| {
            let name = names.save(&expr);
            let replaced = expr.transform_down(|e| {
                let value = match &e {
                    Expr::ScalarSubquery(sq) => values.iter().find(|(q, _)| q == sq),
                    _ => None,
                };
                Ok(match value {
                    Some((_, v)) => Transformed::new(
                        Expr::Literal(v.clone(), None),
                        true,
                        TreeNodeRecursion::Jump,
                    ),
                    None => Transformed::no(e),
                })
            })?;
            Ok(replaced.update_data(|e| name.restore(e)))
        })?;
        if node.transformed {
            node.map_data(LogicalPlan::recompute_schema)
        } else {
            Ok(node)
        }
    })?;
    Ok(rewritten.data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn plan(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a BIGINT, b BIGINT) AS VALUES (1, 10), (2, 20), (3, 30)")
            .await
            .unwrap();
        ctx.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn only_outermost_uncorrelated_subqueries_are_found() {
        let p = plan(
            "SELECT a FROM t t1 WHERE b > (SELECT avg(b) FROM t WHERE a < (SELECT max(a) FROM t))
               AND b < (SELECT max(b) FROM t t2 WHERE t2.a = t1.a)
               AND a IN (SELECT a FROM t WHERE b = (SELECT min(b) FROM t))
               AND b > (SELECT avg(b) FROM t WHERE a < (SELECT max(a) FROM t))",
        )
        .await;
        let found = uncorrelated(&p).unwrap();
        let texts: Vec<String> = found
            .iter()
            .map(|s| crate::execute::describe(&s.subquery))
            .collect();
        // The first and the last are one subquery; the nested max(a) runs with it; the
        // correlated max(b) is left; min(b), inside an IN subquery, is found.
        assert_eq!(found.len(), 2, "{texts:?}");
        assert!(texts[0].contains("avg"), "{texts:?}");
        assert!(texts[1].contains("min"), "{texts:?}");
    }

    #[tokio::test]
    async fn a_subquery_reading_its_outer_query_is_left_alone() {
        let p = plan(
            "SELECT a FROM t t1 WHERE b > (SELECT avg(b) FROM t t2 WHERE t2.a <> t1.a
                 AND t2.b < (SELECT max(b) FROM t t3 WHERE t3.a = t1.a))",
        )
        .await;
        assert!(uncorrelated(&p).unwrap().is_empty());
    }

    #[tokio::test]
    async fn values_replace_subqueries_and_keep_the_columns_names() {
        let p =
            plan("SELECT a, (SELECT max(b) FROM t) FROM t WHERE b > (SELECT min(b) FROM t)").await;
        let found = uncorrelated(&p).unwrap();
        assert_eq!(found.len(), 2);
        let values: Vec<_> = found
            .into_iter()
            .zip([ScalarValue::Int64(Some(30)), ScalarValue::Int64(Some(10))])
            .collect();
        let before = p.schema().field_names();
        let after = substitute(p, &values).unwrap();
        assert_eq!(after.schema().field_names(), before);
        assert!(uncorrelated(&after).unwrap().is_empty());
        let text = after.display_indent().to_string();
        assert!(
            text.contains("Int64(30)") && text.contains("Int64(10)"),
            "{text}"
        );
    }

    #[test]
    fn no_row_is_null_and_two_rows_are_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let sq = Subquery {
            subquery: Arc::new(
                datafusion::logical_expr::LogicalPlanBuilder::empty(false)
                    .project(vec![
                        Expr::Literal(ScalarValue::Int64(Some(1)), None).alias("x"),
                    ])
                    .unwrap()
                    .build()
                    .unwrap(),
            ),
            outer_ref_columns: vec![],
            spans: Default::default(),
        };
        let batch = |values: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap()
        };
        assert_eq!(value_of(&sq, &[]).unwrap(), ScalarValue::Int64(None));
        assert_eq!(
            value_of(&sq, &[batch(vec![])]).unwrap(),
            ScalarValue::Int64(None)
        );
        assert_eq!(
            value_of(&sq, &[batch(vec![]), batch(vec![7])]).unwrap(),
            ScalarValue::Int64(Some(7))
        );
        let err = value_of(&sq, &[batch(vec![7]), batch(vec![8])]).unwrap_err();
        assert!(err.to_string().contains("more than one row"), "{err}");
    }
}

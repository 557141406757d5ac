//! Joins, Spark-style.
//!
//! `join(other, &["k"], how)` is Spark's `df.join(other, ["k"], how)`: the key columns
//! appear once, first, then the other columns of the left side, then those of the
//! right side (none for semi and anti joins). For a full join the key is
//! `coalesce(left.k, right.k)`, so unmatched rows from either side keep their key.
//!
//! DataFusion, unlike Spark, cannot hold two columns with the same qualified name. When
//! both sides could produce one (a self-join, or two frames made by
//! `create_dataframe`), the right side, and if still needed the left, is wrapped in a
//! generated alias (`__ember_join_right_N`). Unqualified references such as `col("v")`
//! are unaffected; a non-key name present on both sides is ambiguous afterwards, as in
//! Spark.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::{Column, DFSchema};
use datafusion::error::DataFusionError;
use datafusion::functions::expr_fn::coalesce;
use datafusion::logical_expr::{self as df_expr, Expr, LogicalPlan, LogicalPlanBuilder};
use ember_core::{EmberError, Result};

use super::DataFrame;

/// How to join, named as in Spark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinType {
    /// Rows with a match on both sides.
    Inner,
    /// Every left row; right columns null when nothing matches.
    Left,
    /// Every right row; left columns null when nothing matches.
    Right,
    /// Every row of both sides.
    Full,
    /// Left rows that have a match (left columns only).
    Semi,
    /// Left rows that have no match (left columns only).
    Anti,
    /// Every pair of rows; join keys are ignored.
    Cross,
}

impl FromStr for JoinType {
    type Err = EmberError;

    /// Spark's join type names: `inner`, `left`/`left_outer`, `right`, `full`/`outer`,
    /// `semi`/`left_semi`, `anti`/`left_anti`, `cross` (case and `_` insensitive).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "");
        Ok(match norm.as_str() {
            "inner" => JoinType::Inner,
            "left" | "leftouter" => JoinType::Left,
            "right" | "rightouter" => JoinType::Right,
            "full" | "outer" | "fullouter" => JoinType::Full,
            "semi" | "leftsemi" => JoinType::Semi,
            "anti" | "leftanti" => JoinType::Anti,
            "cross" => JoinType::Cross,
            _ => {
                return Err(EmberError::NotSupported(format!(
                    "join type '{s}' (expected inner, left, right, full, semi, anti or cross)"
                )));
            }
        })
    }
}

impl JoinType {
    fn to_datafusion(self) -> df_expr::JoinType {
        match self {
            JoinType::Inner | JoinType::Cross => df_expr::JoinType::Inner,
            JoinType::Left => df_expr::JoinType::Left,
            JoinType::Right => df_expr::JoinType::Right,
            JoinType::Full => df_expr::JoinType::Full,
            JoinType::Semi => df_expr::JoinType::LeftSemi,
            JoinType::Anti => df_expr::JoinType::LeftAnti,
        }
    }
}

impl DataFrame {
    /// Joins on equality of the same-named columns `on` of both sides (Spark's
    /// `join(other, on, how)`). `JoinType::Cross` ignores `on`.
    pub fn join(&self, other: &DataFrame, on: &[&str], how: JoinType) -> Result<DataFrame> {
        let (left, right) = separate(self.logical_plan().clone(), other.logical_plan().clone())?;
        if how == JoinType::Cross {
            let plan = LogicalPlanBuilder::from(left).cross_join(right)?.build()?;
            return Ok(self.with_plan(plan));
        }
        if on.is_empty() {
            return Err(EmberError::DataFusion(DataFusionError::Plan(
                "join needs at least one column in `on` (use JoinType::Cross for all pairs)".into(),
            )));
        }
        let left_keys = resolve(left.schema(), on)?;
        let right_keys = resolve(right.schema(), on)?;
        let projection =
            using_projection(how, left.schema(), right.schema(), &left_keys, &right_keys);
        let joined = LogicalPlanBuilder::from(left).join(
            right,
            how.to_datafusion(),
            (left_keys, right_keys),
            None,
        )?;
        let plan = match projection {
            Some(exprs) => joined.project(exprs)?.build()?,
            None => joined.build()?,
        };
        Ok(self.with_plan(plan))
    }

    /// Joins on arbitrary conditions (`col("a.k").eq(col("b.k"))`, combined with AND).
    /// Both sides' columns are kept; use [`alias`](Self::alias) to tell same-named
    /// columns apart. `JoinType::Cross` with conditions is an inner join.
    pub fn join_on(&self, other: &DataFrame, on: Vec<Expr>, how: JoinType) -> Result<DataFrame> {
        if how == JoinType::Cross && on.is_empty() {
            let plan = LogicalPlanBuilder::from(self.logical_plan().clone())
                .cross_join(other.logical_plan().clone())?
                .build()?;
            return Ok(self.with_plan(plan));
        }
        let right = other.df.clone();
        self.transform(|df| df.join_on(right, how.to_datafusion(), on))
    }

    /// Every pair of rows (Spark's `crossJoin`).
    pub fn cross_join(&self, other: &DataFrame) -> Result<DataFrame> {
        self.join(other, &[], JoinType::Cross)
    }
}

/// The columns of `schema` that the unqualified names `on` refer to; an error naming
/// any that is missing or ambiguous.
fn resolve(schema: &DFSchema, on: &[&str]) -> Result<Vec<Column>> {
    on.iter()
        .map(|name| {
            let (qualifier, field) = schema.qualified_field_with_unqualified_name(name)?;
            Ok(Column::from((qualifier, field)))
        })
        .collect()
}

/// Spark's output columns for a join on same-named keys; `None` for semi and anti
/// joins, whose output is the left side as it is.
fn using_projection(
    how: JoinType,
    left: &DFSchema,
    right: &DFSchema,
    left_keys: &[Column],
    right_keys: &[Column],
) -> Option<Vec<Expr>> {
    if matches!(how, JoinType::Semi | JoinType::Anti) {
        return None;
    }
    let mut exprs = Vec::with_capacity(left.fields().len() + right.fields().len());
    for (l, r) in left_keys.iter().zip(right_keys) {
        exprs.push(match how {
            JoinType::Right => Expr::Column(r.clone()),
            JoinType::Full => {
                coalesce(vec![Expr::Column(l.clone()), Expr::Column(r.clone())]).alias(&l.name)
            }
            _ => Expr::Column(l.clone()),
        });
    }
    let others = |schema: &DFSchema, keys: &[Column]| {
        schema
            .columns()
            .into_iter()
            .filter(|c| !keys.contains(c))
            .map(Expr::Column)
            .collect::<Vec<_>>()
    };
    exprs.extend(others(left, left_keys));
    exprs.extend(others(right, right_keys));
    Some(exprs)
}

/// Wraps the right side, and if that is not enough the left, in a fresh alias when
/// the two sides could produce the same qualified column.
fn separate(left: LogicalPlan, right: LogicalPlan) -> Result<(LogicalPlan, LogicalPlan)> {
    let right = if clash(left.schema(), right.schema()) {
        with_fresh_alias(right, "right")?
    } else {
        right
    };
    let left = if clash(left.schema(), right.schema()) {
        with_fresh_alias(left, "left")?
    } else {
        left
    };
    Ok((left, right))
}

/// Whether some name is on both sides with equal qualifiers, or unqualified on one
/// side (which DataFusion would call ambiguous).
fn clash(left: &DFSchema, right: &DFSchema) -> bool {
    left.iter().any(|(lq, lf)| {
        right
            .iter()
            .any(|(rq, rf)| lf.name() == rf.name() && (lq.is_none() || rq.is_none() || lq == rq))
    })
}

fn with_fresh_alias(plan: LogicalPlan, side: &str) -> Result<LogicalPlan> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(LogicalPlanBuilder::from(plan)
        .alias(format!("__ember_join_{side}_{n}"))?
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::JoinType;

    #[test]
    fn join_type_parses_spark_names() {
        assert_eq!("left_outer".parse::<JoinType>().ok(), Some(JoinType::Left));
        assert_eq!("OUTER".parse::<JoinType>().ok(), Some(JoinType::Full));
        assert_eq!("leftanti".parse::<JoinType>().ok(), Some(JoinType::Anti));
        assert!("sideways".parse::<JoinType>().is_err());
    }
}

//! `group_by(...).agg(...)`: Spark's `GroupedData`.

use datafusion::functions_aggregate::count::count_all;
use datafusion::functions_aggregate::expr_fn::{avg, max, min, sum};
use datafusion::logical_expr::{Expr, col};
use ember_core::Result;

use super::DataFrame;

impl DataFrame {
    /// Groups rows by `exprs`; aggregate with [`GroupedData::agg`]. An empty list
    /// aggregates the whole frame into one row.
    pub fn group_by(&self, exprs: Vec<Expr>) -> GroupedData {
        GroupedData {
            df: self.clone(),
            group_by: exprs,
        }
    }

    /// Aggregates the whole frame: `df.agg(vec![sum(col("x"))])`.
    pub fn agg(&self, exprs: Vec<Expr>) -> Result<DataFrame> {
        self.group_by(vec![]).agg(exprs)
    }
}

/// A frame grouped by some expressions, waiting for its aggregates.
#[derive(Debug, Clone)]
pub struct GroupedData {
    df: DataFrame,
    group_by: Vec<Expr>,
}

impl GroupedData {
    /// One row per group: the grouping columns, then one column per aggregate
    /// (`sum(col("x")).alias("total")`, `count(col("y"))`, a registered UDAF, ...).
    pub fn agg(&self, exprs: Vec<Expr>) -> Result<DataFrame> {
        let group_by = self.group_by.clone();
        self.df.transform(|df| df.aggregate(group_by, exprs))
    }

    /// Rows per group, in a column named `count`.
    pub fn count(&self) -> Result<DataFrame> {
        self.agg(vec![count_all().unalias().alias("count")])
    }

    /// `sum(c)` of each named column.
    pub fn sum(&self, columns: &[&str]) -> Result<DataFrame> {
        self.each(columns, "sum", sum)
    }

    /// `avg(c)` of each named column.
    pub fn avg(&self, columns: &[&str]) -> Result<DataFrame> {
        self.each(columns, "avg", avg)
    }

    /// `min(c)` of each named column.
    pub fn min(&self, columns: &[&str]) -> Result<DataFrame> {
        self.each(columns, "min", min)
    }

    /// `max(c)` of each named column.
    pub fn max(&self, columns: &[&str]) -> Result<DataFrame> {
        self.each(columns, "max", max)
    }

    /// One aggregate per column, named like Spark names them: `sum(x)`.
    fn each(&self, columns: &[&str], name: &str, f: fn(Expr) -> Expr) -> Result<DataFrame> {
        let exprs = columns
            .iter()
            .map(|c| f(col(*c)).alias(format!("{name}({c})")))
            .collect();
        self.agg(exprs)
    }
}

//! Row and column transformations. Each builds a new plan and runs nothing.

use std::sync::Arc;

use datafusion::common::UnnestOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, Partitioning, SortExpr};
use ember_core::{EmberError, Result};

use super::DataFrame;
use crate::map_batches::MapBatchesNode;

impl DataFrame {
    /// Projects `exprs` (columns, computed expressions, window functions).
    pub fn select(&self, exprs: Vec<Expr>) -> Result<DataFrame> {
        self.transform(|df| df.select(exprs))
    }

    /// Projects SQL expression strings: `select_expr(&["a", "b * 2 AS b2"])`.
    pub fn select_expr(&self, exprs: &[&str]) -> Result<DataFrame> {
        self.transform(|df| df.select_exprs(exprs))
    }

    /// Keeps the rows for which `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<DataFrame> {
        self.transform(|df| df.filter(predicate))
    }

    /// Alias of [`filter`](Self::filter) (`where` is a Rust keyword).
    pub fn where_(&self, predicate: Expr) -> Result<DataFrame> {
        self.filter(predicate)
    }

    /// [`filter`](Self::filter) with a SQL predicate string: `filter_expr("a > 1")`.
    pub fn filter_expr(&self, predicate: &str) -> Result<DataFrame> {
        self.filter(self.parse_expr(predicate)?)
    }

    /// Adds column `name`, or replaces it if it exists.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<DataFrame> {
        self.transform(|df| df.with_column(name, expr))
    }

    /// Renames column `old` to `new`; a no-op if there is no column `old` (as in Spark).
    pub fn with_column_renamed(&self, old: &str, new: &str) -> Result<DataFrame> {
        self.transform(|df| df.with_column_renamed(old, new))
    }

    /// Removes the named columns; names that do not exist are ignored (as in Spark).
    pub fn drop(&self, columns: &[&str]) -> Result<DataFrame> {
        self.transform(|df| df.drop_columns(columns))
    }

    /// Gives the frame a name to qualify its columns with (`alias("a")` then `col("a.x")`),
    /// e.g. to tell the two sides of a self-join apart.
    pub fn alias(&self, name: &str) -> Result<DataFrame> {
        self.transform(|df| df.alias(name))
    }

    /// Sorts by `exprs`, e.g. `col("a").sort(true, false)` (ascending, nulls last).
    pub fn order_by(&self, exprs: Vec<SortExpr>) -> Result<DataFrame> {
        self.transform(|df| df.sort(exprs))
    }

    /// Alias of [`order_by`](Self::order_by).
    pub fn sort(&self, exprs: Vec<SortExpr>) -> Result<DataFrame> {
        self.order_by(exprs)
    }

    /// The first `n` rows.
    pub fn limit(&self, n: usize) -> Result<DataFrame> {
        self.transform(|df| df.limit(0, Some(n)))
    }

    /// Distinct rows.
    pub fn distinct(&self) -> Result<DataFrame> {
        self.transform(|df| df.distinct())
    }

    /// Distinct rows, or with `Some(columns)` one whole row per distinct value of
    /// `columns`: the first row seen for each key.
    pub fn drop_duplicates(&self, subset: Option<&[&str]>) -> Result<DataFrame> {
        let subset = match subset {
            None | Some([]) => return self.distinct(),
            Some(subset) => subset,
        };
        let schema = self.df.schema();
        let mut on = Vec::with_capacity(subset.len());
        for name in subset {
            // Resolve here so an unknown column fails with its name.
            let (qualifier, field) = schema.qualified_field_with_unqualified_name(name)?;
            on.push(Expr::Column((qualifier, field).into()));
        }
        let all = schema.columns().into_iter().map(Expr::Column).collect();
        self.transform(|df| df.distinct_on(on, all, None))
    }

    /// All rows of `self` then all rows of `other`, matched by column position; keeps
    /// duplicates (Spark's `union`, SQL's `UNION ALL`). Column names come from `self`.
    pub fn union(&self, other: &DataFrame) -> Result<DataFrame> {
        let other = other.df.clone();
        self.transform(|df| df.union(other))
    }

    /// Like [`union`](Self::union) but matches columns by name; a column only one side
    /// has is null for the other side's rows.
    pub fn union_by_name(&self, other: &DataFrame) -> Result<DataFrame> {
        let other = other.df.clone();
        self.transform(|df| df.union_by_name(other))
    }

    /// One row per element of the list column `column` (Spark's `explode`): the
    /// column becomes the element, other columns repeat. Rows whose list is null or
    /// empty produce no rows.
    pub fn explode(&self, column: &str) -> Result<DataFrame> {
        let options = UnnestOptions::new().with_preserve_nulls(false);
        self.transform(|df| df.unnest_columns_with_options(&[column], options))
    }

    /// Hash-partitions the rows into `n` partitions by `exprs`, or round-robin if
    /// `exprs` is empty. Later stages run one task per partition.
    pub fn repartition(&self, n: usize, exprs: Vec<Expr>) -> Result<DataFrame> {
        let n = positive_partitions("repartition", n)?;
        let scheme = if exprs.is_empty() {
            Partitioning::RoundRobinBatch(n)
        } else {
            Partitioning::Hash(exprs, n)
        };
        self.transform(|df| df.repartition(scheme))
    }

    /// Brings the rows into `n` partitions without hashing them.
    pub fn coalesce(&self, n: usize) -> Result<DataFrame> {
        let n = positive_partitions("coalesce", n)?;
        self.transform(|df| df.repartition(Partitioning::RoundRobinBatch(n)))
    }

    /// Applies the batch function registered as `name` (see
    /// [`Session::register_batch_fn`](crate::Session::register_batch_fn)) to every
    /// batch; the result has the schema it was registered with.
    pub fn map_batches(&self, name: &str) -> Result<DataFrame> {
        let func = self.session.batch_fns().get(name).ok_or_else(|| {
            EmberError::DataFusion(DataFusionError::Plan(format!(
                "no batch function named '{name}' is registered (see Session::register_batch_fn)"
            )))
        })?;
        let node = MapBatchesNode::try_new(
            name.to_string(),
            self.logical_plan().clone(),
            &func.output_schema,
        )?;
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(self.with_plan(plan))
    }

    /// Parses JSON text in `column` (string or binary, such as a log record's
    /// `value`) into columns of `schema` (`device STRING, temperature DOUBLE, ...`),
    /// which replace it. `mode` is Spark's bad-record policy: `PERMISSIVE` (null fields
    /// and the text in a `_corrupt_record` column), `DROPMALFORMED` (such rows go) or
    /// `FAILFAST` (the query fails, naming the record).
    pub fn parse_json(&self, column: &str, schema: &str, mode: &str) -> Result<DataFrame> {
        self.parse_text(column, schema, mode, ember_core::json::Format::Json)
    }

    /// Like [`parse_json`](Self::parse_json) for one CSV line per value, the schema's
    /// fields in order (SQL: `from_csv(value, 'a STRING, b DOUBLE', 'PERMISSIVE')`).
    pub fn parse_csv(&self, column: &str, schema: &str, mode: &str) -> Result<DataFrame> {
        self.parse_text(column, schema, mode, ember_core::json::Format::Csv)
    }

    fn parse_text(
        &self,
        column: &str,
        schema: &str,
        mode: &str,
        format: ember_core::json::Format,
    ) -> Result<DataFrame> {
        use datafusion::common::Column;
        use datafusion::functions::core::expr_fn::get_field;
        use datafusion::logical_expr::lit;
        use ember_core::json::{CORRUPT_RECORD, parse_schema, parse_udf};
        let fields = parse_schema(schema)?;
        let mode = mode.to_ascii_uppercase();
        let parsed = parse_udf(format).call(vec![
            Expr::Column(Column::from_name(column)),
            lit(schema),
            lit(mode.as_str()),
        ]);
        let columns_except = |df: &DataFrame, name: &str| -> Vec<Expr> {
            df.columns()
                .into_iter()
                .filter(|c| c != name)
                .map(|c| Expr::Column(Column::from_name(c)))
                .collect()
        };
        let mut exprs = columns_except(self, column);
        for f in fields.iter() {
            exprs.push(get_field(parsed.clone(), f.name().as_str()).alias(f.name()));
        }
        exprs.push(get_field(parsed, CORRUPT_RECORD).alias(CORRUPT_RECORD));
        let all = self.select(exprs)?;
        match mode.as_str() {
            "DROPMALFORMED" | "DROP" => {
                let good = all.filter(Expr::Column(Column::from_name(CORRUPT_RECORD)).is_null())?;
                good.select(columns_except(&good, CORRUPT_RECORD))
            }
            "FAILFAST" | "FAIL_FAST" => all.select(columns_except(&all, CORRUPT_RECORD)),
            _ => Ok(all),
        }
    }

    /// Registers this frame as a view `name` for SQL (`session.sql("SELECT * FROM name")`)
    /// and [`Session::table`](crate::Session::table), replacing any table of that name.
    pub fn create_or_replace_temp_view(&self, name: &str) -> Result<()> {
        let ctx = self.session.context();
        ctx.deregister_table(name)?;
        ctx.register_table(name, self.df.clone().into_view())?;
        Ok(())
    }
}

fn positive_partitions(what: &str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(EmberError::DataFusion(DataFusionError::Plan(format!(
            "{what} needs at least one partition, got 0"
        ))));
    }
    Ok(n)
}

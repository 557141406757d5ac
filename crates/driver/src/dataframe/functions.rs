//! Expression builders for the DataFrame API, in the spirit of
//! `pyspark.sql.functions`: `col`, `lit`, `when`, the scalar functions, the
//! aggregates (`sum`, `count`, `avg`, ...), the window functions (`row_number`,
//! `rank`, `lag`, ...) and the array functions (`make_array`, ...).
//!
//! `first_value`, `last_value` and `nth_value` exist both as aggregates and as window
//! functions; here they are the aggregates, and [`window`] holds the window versions.
//! Window expressions are finished with [`ExprFunctionExt`]:
//! `row_number().partition_by(vec![col("g")]).order_by(vec![col("v").sort(true, false)]).build()`.

pub use datafusion::common::Column;
pub use datafusion::functions::expr_fn::*;
pub use datafusion::functions_aggregate::count::{count_all, count_all_window};
pub use datafusion::functions_aggregate::expr_fn::*;
pub use datafusion::functions_nested::expr_fn::*;
pub use datafusion::functions_window::expr_fn::*;
pub use datafusion::logical_expr::expr_fn::*;
pub use datafusion::logical_expr::{Expr, ExprFunctionExt, SortExpr, lit};

// Names defined by more than one of the modules above: pick one explicitly.
pub use datafusion::functions_aggregate::expr_fn::{first_value, last_value, nth_value};

/// The window-function versions of names that are also aggregates.
pub mod window {
    pub use datafusion::functions_window::expr_fn::*;
}

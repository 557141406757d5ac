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

fn event_time_fn(name: &str, args: Vec<Expr>) -> Expr {
    ember_core::event_time::event_time_udfs()
        .into_iter()
        .find(|f| f.name() == name)
        .expect("an event-time function")
        .call(args)
}

/// Spark's `window(time, "10 seconds")`: the tumbling event-time window holding each
/// row, a struct `{start, end}`. Group a streaming aggregation by it.
pub fn window(time: Expr, length: &str) -> Expr {
    event_time_fn(ember_core::event_time::WINDOW, vec![time, lit(length)])
}

/// Spark's `window(time, "10 seconds", "5 seconds")`: sliding windows; a streaming
/// aggregation grouped by it counts each row in every window that holds it.
pub fn sliding_window(time: Expr, length: &str, slide: &str) -> Expr {
    event_time_fn(
        ember_core::event_time::WINDOW,
        vec![time, lit(length), lit(slide)],
    )
}

/// Spark's `session_window(time, "5 seconds")`: in a streaming aggregation, a key's
/// rows less than the gap apart form one session.
pub fn session_window(time: Expr, gap: &str) -> Expr {
    event_time_fn(ember_core::event_time::SESSION_WINDOW, vec![time, lit(gap)])
}

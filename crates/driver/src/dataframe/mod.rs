//! The lazy, Spark-shaped DataFrame API.
//!
//! A [`DataFrame`] is a DataFusion logical plan plus the [`Session`] that made it.
//! Transformations only build plans; actions hand the plan to
//! [`Session::collect_plan`], so every row is computed by ember's stage scheduler and
//! never by DataFusion's own `collect`:
//!
//! ```text
//!  Session::read()/range()/sql()/table()        (sources:   read.rs, create.rs)
//!         │
//!         ▼
//!  DataFrame ──select/filter/join/group_by──▶ DataFrame   (plans only: transform.rs,
//!         │                                               join.rs, group.rs)
//!         ▼
//!  collect/count/show/cache/write              (actions: action.rs, show.rs, write.rs)
//!         │
//!         ▼
//!  Session::collect_plan(plan)  ──▶  stage planner + DAG scheduler
//! ```
//!
//! Errors in a transformation (an unknown column, a bad SQL expression) surface when
//! the transformation is called, as in Spark's analyzer, not when the action runs.

mod action;
mod cache;
mod create;
mod explain;
pub mod functions;
mod group;
mod join;
mod options;
mod read;
mod register;
mod show;
mod transform;
mod write;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use ember_core::Result;

use crate::session::Session;

pub(crate) use cache::{CacheKind, CacheNode, CacheStatement};
pub use explain::ExplainMode;
pub use functions::{col, lit};
pub use group::GroupedData;
pub use join::JoinType;
pub use read::DataFrameReader;
pub use write::{DataFrameWriter, SaveMode};

/// DataFusion's DataFrame, which ember wraps (named apart from ember's own).
type DfDataFrame = datafusion::dataframe::DataFrame;

/// A lazy, immutable table: transformations build a plan, actions run it as an ember job.
///
/// Cloning is cheap enough to do freely; transformations take `&self` and return a new
/// `DataFrame`, so one frame can feed several queries, as in Spark.
#[derive(Debug, Clone)]
pub struct DataFrame {
    session: Session,
    df: DfDataFrame,
    /// The SQL text it came from, for the UI.
    description: Option<Arc<str>>,
}

impl DataFrame {
    pub(crate) fn new(session: Session, df: DfDataFrame) -> Self {
        DataFrame {
            session,
            df,
            description: None,
        }
    }

    /// This frame, named `text` in the UI.
    pub(crate) fn described(mut self, text: &str) -> Self {
        self.description = Some(Arc::from(text));
        self
    }

    /// A DataFrame over `plan`.
    pub(crate) fn with_plan(&self, plan: LogicalPlan) -> DataFrame {
        let df = DfDataFrame::new(self.session.context().state(), plan);
        DataFrame::new(self.session.clone(), df)
    }

    /// This frame's plan with the session's current state, so that functions and
    /// tables registered since the frame was made are visible, as in Spark.
    fn current(&self) -> DfDataFrame {
        DfDataFrame::new(self.session.context().state(), self.logical_plan().clone())
    }

    /// Applies a DataFusion DataFrame transformation to this frame's plan.
    pub(crate) fn transform(
        &self,
        f: impl FnOnce(DfDataFrame) -> datafusion::error::Result<DfDataFrame>,
    ) -> Result<DataFrame> {
        let df = f(self.current())?;
        Ok(DataFrame::new(self.session.clone(), df))
    }

    /// The session this frame runs in.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The (unoptimized) logical plan; actions pass it to [`Session::collect_plan`].
    pub fn logical_plan(&self) -> &LogicalPlan {
        self.df.logical_plan()
    }

    /// The Arrow schema of the rows this frame produces.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(self.df.schema().inner())
    }

    /// Column names, in order.
    pub fn columns(&self) -> Vec<String> {
        self.df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Parses a SQL expression (`"a + 1 > b"`) against this frame's columns.
    pub fn parse_expr(&self, sql: &str) -> Result<Expr> {
        Ok(self.current().parse_sql_expr(sql)?)
    }
}

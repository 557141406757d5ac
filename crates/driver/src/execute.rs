//! Running a logical plan as an ember job: planned on the driver (or sent to one),
//! its rows streamed back as the final stage's tasks store them.
//!
//! Every action goes through [`Session::execute_stream_in`]; `collect` reads the
//! whole stream. The SQL page hears of the query when it starts, and of its end
//! when the stream ends (or is dropped, which cancels the job).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::Result as DFResult;
use datafusion::execution::RecordBatchStream;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::stream::EmptyRecordBatchStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, displayable};
use datafusion::prelude::SessionContext;
use ember_core::Result;
use ember_core::config::EmberConfig;
use futures::Stream;

use crate::planning::{on_planning_stack, scalar_subquery};
use crate::session::{Runner, Session};

impl Session {
    /// Runs a logical plan as an ember job and returns its rows.
    pub async fn collect_plan(&self, plan: &LogicalPlan) -> Result<Vec<RecordBatch>> {
        self.collect_plan_in(&self.inner.ctx, plan).await
    }

    /// Runs a logical plan as an ember job and streams its rows, in partition order,
    /// as its tasks finish. Dropping the stream cancels the job.
    pub async fn execute_stream_plan(
        &self,
        plan: &LogicalPlan,
    ) -> Result<SendableRecordBatchStream> {
        self.execute_stream_in(&self.inner.ctx, plan).await
    }

    /// [`execute_stream_plan`](Self::execute_stream_plan), named `description` in
    /// the UI (the SQL text, say).
    pub(crate) async fn execute_described(
        &self,
        plan: &LogicalPlan,
        description: Option<&str>,
    ) -> Result<SendableRecordBatchStream> {
        let description = description
            .map(str::to_string)
            .unwrap_or_else(|| describe(plan));
        crate::engine::JOB_QUERY
            .scope((description, None), self.execute_stream_plan(plan))
            .await
    }

    /// Runs a logical plan, dropping its rows, and returns what adaptive execution
    /// decided for its jobs' stages: each stage it planned again, with its plan as
    /// it ran. Only a session that runs its own jobs knows.
    pub async fn run_for_adaptive_plans(&self, plan: &LogicalPlan) -> Result<Vec<String>> {
        let Some(engine) = self.engine() else {
            return Err(ember_core::EmberError::Config(
                "a client of a driver cannot explain a query as it ran; the driver's UI shows it"
                    .into(),
            ));
        };
        let (tx, mut jobs) = tokio::sync::mpsc::unbounded_channel();
        let rows = crate::engine::JOB_OBSERVER.scope(tx, self.collect_plan(plan));
        rows.await?;
        let mut out = Vec::new();
        while let Ok(job) = jobs.try_recv() {
            out.extend(engine.adapted_stages(job));
        }
        Ok(out)
    }

    /// [`collect_plan`](Self::collect_plan), named `description` in the UI.
    pub(crate) async fn collect_described(
        &self,
        plan: &LogicalPlan,
        description: Option<&str>,
    ) -> Result<Vec<RecordBatch>> {
        let stream = self.execute_described(plan, description).await?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }

    /// Runs a logical plan of `ctx` (this session's, or a client's on a driver) and
    /// returns every row.
    pub(crate) async fn collect_plan_in(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<Vec<RecordBatch>> {
        let stream = self.execute_stream_in(ctx, plan).await?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }

    /// Runs a logical plan of `ctx` and streams its rows.
    pub(crate) async fn execute_stream_in(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<SendableRecordBatchStream> {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        // What DDL leaves behind: nothing to run.
        if let LogicalPlan::EmptyRelation(e) = plan
            && !e.produce_one_row
        {
            return Ok(Box::pin(EmptyRecordBatchStream::new(schema)));
        }
        match &self.inner.runner {
            Runner::Engine(engine) => {
                let description = crate::engine::JOB_QUERY
                    .try_with(|(d, _)| d.clone())
                    .unwrap_or_else(|_| describe(plan));
                let substituted = self.run_scalar_subqueries(ctx, plan, &description).await?;
                let plan = substituted.as_ref().unwrap_or(plan);
                let (physical, logical_text, physical_text) =
                    self.plan_for_run_in(ctx, plan).await?;
                // The SQL page: this query's plans, and the jobs it runs.
                let sql = engine.sql_started(description.clone(), logical_text, physical_text);
                let started = crate::engine::JOB_QUERY
                    .scope(
                        (description, Some(sql)),
                        engine.run_stream(physical, &ctx.copied_config(), &ctx.session_id()),
                    )
                    .await;
                let stream = match started {
                    Ok(stream) => stream,
                    Err(e) => {
                        engine.sql_ended(sql, false);
                        return Err(e);
                    }
                };
                let session = self.clone();
                Ok(Box::pin(OnEnd::new(stream, move |ok| {
                    if let Runner::Engine(engine) = &session.inner.runner {
                        engine.sql_ended(sql, ok);
                    }
                })))
            }
            Runner::Remote(remote) => remote.execute_stream(ctx, plan).await,
        }
    }

    /// `plan` with its uncorrelated scalar subqueries run first, each as a job of its
    /// own named after `description`, and in it as their values; `None` when it has none
    /// or `ember.sql.scalar_subqueries_first` is off.
    async fn run_scalar_subqueries(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
        description: &str,
    ) -> Result<Option<LogicalPlan>> {
        if !EmberConfig::from_session(&ctx.copied_config()).sql_scalar_subqueries_first {
            return Ok(None);
        }
        // Walking deep expressions recurses: on the planning stack.
        let walked = plan.clone();
        let subqueries =
            on_planning_stack(async move { scalar_subquery::uncorrelated(&walked) }).await?;
        if subqueries.is_empty() {
            return Ok(None);
        }
        // All at once, as Spark runs them: their tasks share the slots.
        let runs = subqueries
            .into_iter()
            .enumerate()
            .map(|(i, sq)| async move {
                // Two rows tell one from too many.
                let first_rows = LogicalPlanBuilder::from(sq.subquery.as_ref().clone())
                    .limit(0, Some(2))?
                    .build()?;
                let name = format!("scalar subquery {} of {description}", i + 1);
                let rows = crate::engine::JOB_QUERY
                    .scope(
                        (name, None),
                        Box::pin(self.collect_plan_in(ctx, &first_rows)),
                    )
                    .await?;
                let value = scalar_subquery::value_of(&sq, &rows)?;
                Ok::<_, ember_core::EmberError>((sq, value))
            });
        let values = futures::future::try_join_all(runs).await?;
        let plan = plan.clone();
        let substituted =
            on_planning_stack(async move { scalar_subquery::substitute(plan, &values) }).await?;
        Ok(Some(substituted))
    }

    /// Optimizes and plans `plan` for a run, with both plans as text for the SQL page,
    /// all on the planning stack: naming and printing deep expressions recurses too.
    async fn plan_for_run_in(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<(Arc<dyn ExecutionPlan>, String, String)> {
        let state = self.planning_state(ctx)?;
        let plan = plan.clone();
        let mut last = std::time::Instant::now();
        // Microseconds since the last lap (the first: since the thread was asked for).
        let mut lap = move || {
            let now = std::time::Instant::now();
            let us = now.duration_since(last).as_micros() as u64;
            last = now;
            us
        };
        on_planning_stack(async move {
            let thread_us = lap();
            let optimized = state.optimize(&plan)?;
            let optimize_us = lap();
            let physical = state
                .query_planner()
                .create_physical_plan(&optimized, &state)
                .await?;
            let physical_us = lap();
            let logical_text = optimized.display_indent().to_string();
            let physical_text = displayable(physical.as_ref()).indent(true).to_string();
            // The driver's fixed cost of a query before its job.
            tracing::debug!(
                thread_us,
                optimize_us,
                physical_us,
                text_us = lap(),
                "query planned"
            );
            Ok((physical, logical_text, physical_text))
        })
        .await
    }
}

/// A plan's name in the UI when no SQL text names it, or in an error: its top operator.
pub(crate) fn describe(plan: &LogicalPlan) -> String {
    plan.display_indent()
        .to_string()
        .lines()
        .next()
        .unwrap_or("query")
        .trim()
        .to_string()
}

/// A stream that calls `on_end` once: `true` when it ends after its last batch,
/// `false` at its first error or when dropped before its end.
pub(crate) struct OnEnd {
    inner: SendableRecordBatchStream,
    on_end: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl OnEnd {
    pub(crate) fn new(
        inner: SendableRecordBatchStream,
        on_end: impl FnOnce(bool) + Send + 'static,
    ) -> Self {
        OnEnd {
            inner,
            on_end: Some(Box::new(on_end)),
        }
    }

    fn end(&mut self, ok: bool) {
        if let Some(f) = self.on_end.take() {
            f(ok);
        }
    }
}

impl Stream for OnEnd {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            _ => {}
        }
        polled
    }
}

impl RecordBatchStream for OnEnd {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.end(false);
    }
}

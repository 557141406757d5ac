//! Stateful streaming: a query's plan cut at its stateful operator, and the operators.
//!
//! ```text
//!  each batch, one job:
//!  stream rows ─▶ plan below the operator ─▶ the operator's input columns
//!    ─▶ hash exchange on its keys ─▶ StatefulNode: one task per state partition
//!       (`ember_exec::stateful`: load, drop late rows, fold, emit, evict, write)
//!    ─▶ plan above the operator ─▶ sink
//! ```
//!
//! A stream-stream join (`../join.rs`) keeps its rows in the query's process instead.
//!
//! Operators (`aggregate.rs`, `dedup.rs` plan them; `ember_exec::stateful` runs them):
//! - **aggregation** (`group_by(..).agg(..)`, SQL `GROUP BY`) with any aggregate
//!   function the session knows (DataFusion's accumulators keep each group's state),
//!   grouped by plain keys and at most one event-time window:
//!   `window(ts, len)` (tumbling), `window(ts, len, slide)` (sliding: a row counts in
//!   every window that holds it) or `session_window(ts, gap)` (a key's rows closer than
//!   `gap` form one session);
//! - **deduplication** (`drop_duplicates`, `distinct`): the first row of each key passes;
//!   with a watermark a key is forgotten once the watermark passes its event time.
//!
//! The watermark (`DataFrame::with_watermark`) a batch uses is the one the batches
//! before it reached: the largest event time seen minus the delay, never moving back.
//! It is stored with the batch's offsets (and the next one with its commit), so a batch
//! run again after a restart drops, emits and evicts exactly what it did before.
//! Append emits a window once, in the first batch whose watermark passes its end (a
//! batch without new data when none comes, as in Spark); Update emits the groups a
//! batch changed; Complete emits every group, every batch.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Extension, Filter, LogicalPlan, lit};
use ember_core::config::EmberConfig;
use ember_core::event_time::{WATERMARK, parse_duration};
use ember_core::{EmberError, Result};
use ember_exec::stateful::{OpConfig, StatefulConfig};

mod aggregate;
mod dedup;
mod node;

pub(crate) use node::{StatefulNode, StatefulPlanner};

use super::query::OutputMode;
use crate::dataframe::DataFrame;

impl DataFrame {
    /// Spark's `withWatermark`: rows of a stateful streaming query whose `column` is
    /// older than the largest event time seen minus `delay` (`"5 seconds"`) are late,
    /// dropped and counted; windows the watermark passes are final. In SQL, the same
    /// marker is the predicate `WHERE with_watermark(ts, '5 seconds')`.
    pub fn with_watermark(&self, column: &str, delay: &str) -> Result<DataFrame> {
        let delay_ms = parse_duration(delay)?;
        let marker = ember_core::event_time::event_time_udfs()
            .into_iter()
            .find(|f| f.name() == WATERMARK)
            .expect("defined");
        let predicate = marker.call(vec![Expr::Column(Column::from_name(column)), lit(delay_ms)]);
        self.filter(predicate)
    }
}

/// `with_watermark(column, delay)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub column: String,
    pub delay_ms: i64,
}

/// A streaming query's plan, with its stateful operator found.
pub struct QueryPlan {
    /// What each batch runs over the stream's rows: the query, with its stateful
    /// operator (if any) as a [`StatefulNode`] over the operator's inputs.
    pub batch: LogicalPlan,
    pub stateful: Option<StatefulPlan>,
    pub watermark: Option<Watermark>,
}

pub struct StatefulPlan {
    /// The operator, run by the tasks of a [`StatefulNode`] over the batch plan.
    pub op: OpConfig,
    /// Partitions of a keyed operator's state, and every how many versions one is a
    /// snapshot (`ember.streaming.state.*`).
    pub partitions: usize,
    pub snapshot_every: u64,
    /// Whether the operator's input starts with the watermark's event time.
    pub event_time: bool,
    /// A stream-stream join's watermark delays, left and right: the query's
    /// watermark is the smaller of the sides'.
    pub join_delays: Option<[i64; 2]>,
}

impl StatefulPlan {
    /// The operator's configuration; a batch adds where the state is, the query's
    /// id, the batch and its watermark.
    pub fn config(&self, mode: OutputMode) -> StatefulConfig {
        StatefulConfig {
            op: self.op.clone(),
            event_time: self.event_time,
            mode,
            state_dir: String::new(),
            partitions: if self.op.keyed(self.event_time) {
                self.partitions
            } else {
                1
            },
            snapshot_every: self.snapshot_every,
            query_id: String::new(),
            batch_id: 0,
            watermark_ms: None,
        }
    }
}

/// Whether a plan reads a stream.
fn reads_stream(plan: &LogicalPlan) -> bool {
    plan.exists(|n| {
        Ok(matches!(n, LogicalPlan::TableScan(scan)
            if datafusion::datasource::source_as_provider(&scan.source)
                .is_ok_and(|p| p.downcast_ref::<super::StreamTable>().is_some())))
    })
    .unwrap_or(false)
}

/// A join of two streams (a stream-static join is stateless).
fn is_stream_join(node: &LogicalPlan) -> bool {
    matches!(node, LogicalPlan::Join(j) if reads_stream(&j.left) && reads_stream(&j.right))
}

/// The watermark each side of a stream-stream join declares.
fn join_watermarks(plan: &LogicalPlan) -> Result<Option<(Watermark, Watermark)>> {
    let mut found = None;
    plan.apply(|n| {
        if let LogicalPlan::Join(j) = n
            && is_stream_join(n)
        {
            found = Some((j.left.clone(), j.right.clone()));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let Some((left, right)) = found else {
        return Ok(None);
    };
    let one = |side: &LogicalPlan, which: &str| -> Result<Watermark> {
        let (_, mut marks) = take_watermarks(side)?;
        match (marks.pop(), marks.is_empty()) {
            (Some(w), true) => Ok(w),
            _ => Err(EmberError::Config(format!(
                "a stream-stream join needs one with_watermark on its {which} side"
            ))),
        }
    };
    Ok(Some((one(&left, "left")?, one(&right, "right")?)))
}

fn refuse(message: impl Into<String>) -> EmberError {
    EmberError::NotSupported(message.into())
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}

/// The literal arguments of a function call.
fn literals(args: &[Expr], function: &str) -> Result<Vec<ScalarValue>> {
    args.iter()
        .map(|a| match unalias(a) {
            Expr::Literal(v, _) => Ok(v.clone()),
            other => Err(EmberError::Config(format!(
                "{function}: '{other}' must be a literal"
            ))),
        })
        .collect()
}

/// Takes the `with_watermark` markers out of a plan.
fn take_watermarks(plan: &LogicalPlan) -> Result<(LogicalPlan, Vec<Watermark>)> {
    let mut found = vec![];
    let plan = plan
        .clone()
        .transform_up(|node| {
            let LogicalPlan::Filter(filter) = &node else {
                return Ok(Transformed::no(node));
            };
            let (marks, rest): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&filter.predicate)
                .into_iter()
                .partition(|e| matches!(e, Expr::ScalarFunction(f) if f.func.name() == WATERMARK));
            if marks.is_empty() {
                return Ok(Transformed::no(node));
            }
            for mark in marks {
                let Expr::ScalarFunction(f) = mark else {
                    unreachable!("partitioned")
                };
                let Expr::Column(c) = unalias(&f.args[0]) else {
                    return Err(DataFusionError::Plan(
                        "with_watermark: the first argument must be a column".into(),
                    ));
                };
                let delay_ms = match literals(&f.args[1..], WATERMARK)
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?
                    .first()
                {
                    Some(ScalarValue::Int64(Some(ms))) => *ms,
                    Some(ScalarValue::Utf8(Some(s))) => parse_duration(s)?,
                    _ => {
                        return Err(DataFusionError::Plan(
                            "with_watermark: the delay must be a literal like '5 seconds'".into(),
                        ));
                    }
                };
                found.push(Watermark {
                    column: c.name.clone(),
                    delay_ms,
                });
            }
            let input = filter.input.clone();
            Ok(Transformed::yes(
                match conjunction(rest.into_iter().cloned()) {
                    Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, input)?),
                    None => input.as_ref().clone(),
                },
            ))
        })?
        .data;
    Ok((plan, found))
}

/// Cuts a streaming query's plan at its stateful operator and checks that the output
/// mode suits it (Spark's rules); `config` gives the state's partitions and
/// snapshot interval.
pub fn plan_query(plan: &LogicalPlan, mode: OutputMode, config: &EmberConfig) -> Result<QueryPlan> {
    let join_marks = join_watermarks(plan)?;
    let (plan, mut marks) = take_watermarks(plan)?;
    if join_marks.is_none() && marks.len() > 1 {
        return Err(refuse("a streaming query takes one with_watermark"));
    }
    let watermark = if join_marks.is_some() {
        None
    } else {
        marks.pop()
    };
    let mut stateful_nodes = 0;
    let mut sorts = 0;
    plan.apply(|node| {
        match node {
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => stateful_nodes += 1,
            n if is_stream_join(n) => stateful_nodes += 1,
            LogicalPlan::Sort(_) => sorts += 1,
            LogicalPlan::Window(_) => {
                return Err(DataFusionError::NotImplemented(
                    "window functions (OVER ...) are not supported on streams; aggregate by window(ts, ..) instead".into(),
                ));
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if stateful_nodes > 1 {
        return Err(refuse(
            "a streaming query takes one aggregation, deduplication or stream-stream join; run further steps in foreach_batch",
        ));
    }
    if stateful_nodes == 0 {
        if mode == OutputMode::Complete {
            return Err(EmberError::Config(
                "Complete output mode needs a streaming aggregation; use Append or Update".into(),
            ));
        }
        if sorts > 0 {
            return Err(refuse(
                "sorting a stream needs an aggregation and Complete output mode",
            ));
        }
        return Ok(QueryPlan {
            batch: plan,
            stateful: None,
            watermark,
        });
    }
    // The stateful node, and whether a sort sits below it.
    let mut node = None;
    let mut sort_below = false;
    plan.apply(|n| {
        if matches!(n, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_)) || is_stream_join(n) {
            sort_below = n.exists(|c| Ok(matches!(c, LogicalPlan::Sort(_))))?;
            node = Some(n.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let node = node.expect("counted above");
    if sort_below || (sorts > 0 && mode != OutputMode::Complete) {
        return Err(refuse(
            "sorting a stream needs an aggregation and Complete output mode, and must come after the aggregation",
        ));
    }
    let mut aggregates = vec![];
    let (input, op, event_time, join_delays) = match &node {
        LogicalPlan::Aggregate(agg) => {
            let (batch, op, event_time, functions) = aggregate::plan(agg, watermark.as_ref())?;
            aggregates = functions;
            let windowed = op.windowed();
            match mode {
                OutputMode::Append if watermark.is_none() || !windowed => {
                    return Err(EmberError::Config(
                        "Append output mode of a streaming aggregation needs with_watermark(..) and a group by window(..): a group is final only once the watermark passes its window; use Update or Complete otherwise".into(),
                    ));
                }
                _ => {}
            }
            (batch, op, event_time, None)
        }
        LogicalPlan::Distinct(distinct) => {
            if mode == OutputMode::Complete {
                return Err(EmberError::Config(
                    "Complete output mode needs a streaming aggregation, not a deduplication; use Append".into(),
                ));
            }
            let (batch, op, event_time) = dedup::plan(distinct, watermark.as_ref())?;
            (batch, op, event_time, None)
        }
        LogicalPlan::Join(_) => {
            if mode != OutputMode::Append {
                return Err(EmberError::Config(
                    "a stream-stream join emits each match once: use Append output mode".into(),
                ));
            }
            let (left, right) = join_marks.clone().expect("found with the join");
            let join = super::join::plan(&node, left, right)?;
            (join.node, join.op, false, Some(join.delays))
        }
        _ => unreachable!("a stateful node"),
    };
    // The query with the node in place: its schema is the node's, so the plan above
    // reads it unchanged. Each batch gives it its configuration.
    let stateful = StatefulPlan {
        op,
        partitions: config.streaming_state_partitions,
        snapshot_every: config.streaming_state_snapshot_interval,
        event_time,
        join_delays,
    };
    let template = LogicalPlan::Extension(Extension {
        node: Arc::new(StatefulNode {
            input,
            aggregates,
            config: stateful.config(mode),
            schema: node.schema().clone(),
        }),
    });
    let batch = plan
        .transform_down(|n| {
            if n == node {
                return Ok(Transformed::new(
                    template.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(n))
        })?
        .data;
    Ok(QueryPlan {
        batch,
        stateful: Some(stateful),
        watermark,
    })
}

/// The batch plan's first column: the watermark column, found by name in `input`.
fn event_time_expr(input: &LogicalPlan, watermark: Option<&Watermark>) -> Result<Option<Expr>> {
    let Some(w) = watermark else { return Ok(None) };
    let (qualifier, field) = input
        .schema()
        .qualified_field_with_unqualified_name(&w.column)
        .map_err(|_| {
            EmberError::Config(format!(
                "the watermark column '{}' does not reach the stateful operator (its input has {})",
                w.column,
                input
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok(Some(
        Expr::Column(Column::from((qualifier, field))).alias("__ember_event_time"),
    ))
}

//! Cross-stage runtime filters: a join's build side, computed by a stage that has
//! finished, prunes the scan of its probe side in a stage that has not started.
//!
//! ```text
//!   Stage 4 (build)                 Stage 7 (probe scan)            Stage 9 (join)
//!   ShuffleWriterExec               ShuffleWriterExec               HashJoinExec on k = d
//!     summarize=[d]   ──summary──▶    FilterExec d ∈ keys of 4  ──▶   build: stage 4
//!       ... d ...                       DataSourceExec (pruned)       probe: ... stage 7
//! ```
//!
//! After the stages are cut, [`plan`] looks at every hash join whose probe side may
//! drop rows that match no build row (not a right, full or right-anti/mark join, nulls
//! never equal, not null-aware). It follows each equi-key column down both sides:
//! the build key to the stage whose output it is, the probe key through operators that
//! keep the column's value and whose output rows all carry it (projections, filters,
//! inner and outer joins, group-by columns, shuffles into earlier stages) to the scans
//! that read it. Every probe row whose key is outside the build stage's values would be
//! dropped by the join anyway, so the scan may drop it first. The build stage's writer
//! summarizes the column ([`KeyValues`](ember_core::keys::KeyValues)); the probe
//! scan's stage waits for it (only for a scan of at least
//! `ember.runtime_filter.min_probe_rows` rows or one whose stage filters such a scan in
//! turn, unless the stage reads the build stage anyway).
//!
//! When the scan's stage starts, [`apply`] turns the merged summary into a predicate
//! in a `FilterExec` over the scan: `k BETWEEN min AND max`, and `k IN (...)` when the
//! build side has at most a few thousand distinct keys
//! ([`KeySetExpr`](ember_exec::key_filter::KeySetExpr) past 20), else a bloom filter of
//! them ([`KeyFilterExpr`](ember_exec::key_filter::KeyFilterExpr)) up to a million;
//! `false` when it has none.
//! The bounds and lists of up to 20 keys also go into the Parquet source's row-group
//! and page pruning, which can use nothing longer. A scan in the join's own stage,
//! whose rows the join probes right after, gets only the pruning: a row filter there
//! would repeat the join's work and copy the rows it keeps.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::NullEquality;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use ember_core::Result;
use ember_core::config::EmberConfig;
use ember_exec::shuffle::{ShuffleWriterExec, UnresolvedShuffleExec};

use super::planner::StageGraph;

mod apply;

pub(crate) use apply::apply;

/// One filter: stage `source`'s values of its output column `source_column` prune
/// column `column` of a scan in stage `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuntimeFilter {
    pub source: usize,
    pub source_column: usize,
    pub target: usize,
    /// The scan, by the address of its node in the target stage's plan.
    scan: usize,
    /// Column index in the scan's output, and its name.
    pub column: usize,
    pub name: String,
    /// The build key's name, for `explain`.
    pub source_name: String,
    /// The stage of the join: a scan there is probed by the join itself right after,
    /// so the filter only prunes its Parquet row groups and pages.
    join_stage: usize,
}

/// One line per runtime filter of stage `stage`, as `explain` and the UI show them.
pub(crate) fn describe(graph: &StageGraph, stage: usize) -> Vec<String> {
    graph
        .filters
        .iter()
        .filter(|f| f.target == stage)
        .map(|f| {
            format!(
                "runtime filter: {} in keys {} of stage {}",
                f.name, f.source_name, f.source
            )
        })
        .collect()
}

/// Where a column's values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Output column `column` of stage `stage`.
    Stage { stage: usize, column: usize },
    /// Output column `column`, named `name`, of the scan node at address `scan` in
    /// stage `stage`.
    Scan {
        stage: usize,
        scan: usize,
        column: usize,
        name: String,
    },
}

fn address(plan: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(plan) as *const () as usize
}

/// What runtime filters a job gets, when it gets them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RuntimeFilters {
    /// `ember.runtime_filter.min_probe_rows`.
    pub min_probe_rows: u64,
}

impl RuntimeFilters {
    /// The session's settings; `None` when runtime filters are off.
    pub(crate) fn of(config: &EmberConfig) -> Option<RuntimeFilters> {
        config.runtime_filter_enabled.then_some(RuntimeFilters {
            min_probe_rows: config.runtime_filter_min_probe_rows,
        })
    }
}

/// Adds the runtime filters of `graph`'s joins: the filters, the build stages' writers
/// summarizing their keys, and each probe stage's wait for its build stages.
pub(crate) fn plan(graph: &mut StageGraph, settings: RuntimeFilters) -> Result<()> {
    let mut filters = Vec::new();
    for stage in graph.stages.values() {
        joins_of(graph, stage.id, &stage.plan, &mut filters);
    }
    // Only a build stage that drops rows can hold fewer keys than its probe side: a
    // whole table's keys filter nothing, and waiting for them costs the probe scan its
    // head start. A stage drops rows when it filters them, when it joins a stage that
    // dropped rows, or when runtime filters apply to it (found in turn). An aggregate of
    // filtered rows does not count: grouped by another column, it may well hold every
    // key (TPC-DS q1's stores with returns in a year), and its wait is long.
    let mut reducing: HashSet<usize> = graph
        .stages
        .values()
        .filter(|s| has::<FilterExec>(&s.plan))
        .map(|s| s.id)
        .collect();
    loop {
        let by_filters = filters
            .iter()
            .filter(|f| reducing.contains(&f.source))
            .map(|f| f.target);
        let by_joins = graph
            .stages
            .values()
            .filter(|s| {
                has::<HashJoinExec>(&s.plan) && s.parents.iter().any(|p| reducing.contains(p))
            })
            .map(|s| s.id);
        let more: Vec<usize> = by_filters
            .chain(by_joins)
            .filter(|s| !reducing.contains(s))
            .collect();
        if more.is_empty() {
            break;
        }
        reducing.extend(more);
    }
    filters.retain(|f| reducing.contains(&f.source));
    keep_worthwhile_waits(graph, &mut filters, settings);
    let mut summarize: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for f in filters {
        if f.target != f.source
            && !graph.depends_on(f.source, f.target)
            && !graph.filters.contains(&f)
        {
            let target = graph.stages.get_mut(&f.target).expect("stage exists");
            if !target.parents.contains(&f.source) && !target.waits.contains(&f.source) {
                target.waits.push(f.source);
            }
            let columns = summarize.entry(f.source).or_default();
            if !columns.contains(&f.source_column) {
                columns.push(f.source_column);
            }
            graph.filters.push(f);
        }
    }
    for (id, columns) in summarize {
        let stage = graph.stages.get_mut(&id).expect("stage exists");
        let Some(writer) = stage.plan.downcast_ref::<ShuffleWriterExec>() else {
            continue;
        };
        let writer = ShuffleWriterExec::try_new(
            writer.job_id(),
            writer.stage_id(),
            writer.input().clone(),
            writer.shuffle_partitioning().cloned(),
        )?
        .summarizing(columns);
        stage.plan = Arc::new(writer);
    }
    Ok(())
}

/// True when a join's probe side in `plan`'s stage reaches a scan in another stage:
/// a build side that is a small scan is then worth a stage of its own, to filter it.
pub(crate) fn probe_leaves_stage(join: &Arc<dyn ExecutionPlan>) -> bool {
    let Some(j) = join.downcast_ref::<HashJoinExec>() else {
        return false;
    };
    if !filters_probe_side(j) {
        return false;
    }
    j.on().iter().any(|(_, r)| {
        let Some(r) = r.downcast_ref::<Column>() else {
            return false;
        };
        let mut origins = Vec::new();
        origins_of(j.right(), r.index(), 0, &mut origins);
        origins.iter().any(|o| matches!(o, Origin::Stage { .. }))
    })
}

/// Drops the filters that would make a small scan's stage wait for its build side.
/// The wait is on the job's critical path, and skipping a few rows saves less, unless
/// the stage, filtered, filters a big scan in turn (as store_returns, filtered by
/// date, filters store_sales by ticket). A stage that reads the build side waits for
/// it anyway: its scan is always pruned.
fn keep_worthwhile_waits(
    graph: &StageGraph,
    filters: &mut Vec<RuntimeFilter>,
    settings: RuntimeFilters,
) {
    let waits = |f: &RuntimeFilter| !graph.stages[&f.target].parents.contains(&f.source);
    let mut keep: Vec<bool> = filters
        .iter()
        .map(|f| {
            !waits(f)
                || scan_rows(&graph.stages[&f.target].plan, f.scan)
                    .is_none_or(|rows| rows >= settings.min_probe_rows)
        })
        .collect();
    loop {
        let filtering: HashSet<usize> = filters
            .iter()
            .zip(&keep)
            .filter(|(f, kept)| **kept && waits(f))
            .map(|(f, _)| f.source)
            .collect();
        let mut more = false;
        for (f, kept) in filters.iter().zip(keep.iter_mut()) {
            if !*kept && filtering.contains(&f.target) {
                *kept = true;
                more = true;
            }
        }
        if !more {
            break;
        }
    }
    let mut keep = keep.into_iter();
    filters.retain(|_| keep.next().unwrap_or(true));
}

/// The rows of the scan at address `scan` in `plan`, when its statistics know them.
fn scan_rows(plan: &Arc<dyn ExecutionPlan>, scan: usize) -> Option<u64> {
    let mut rows = None;
    let _ = plan.apply(|node| {
        if address(node) != scan {
            return Ok(TreeNodeRecursion::Continue);
        }
        rows = StatisticsContext::new()
            .compute(node.as_ref(), &StatisticsArgs::new())
            .ok()
            .and_then(|s| s.num_rows.get_value().map(|&r| r as u64));
        Ok(TreeNodeRecursion::Stop)
    });
    rows
}

/// True when `plan` (a stage's, up to its shuffle reads) has a `T`.
fn has<T: ExecutionPlan + 'static>(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<T>()
        || plan
            .children()
            .into_iter()
            .any(|c| !c.is::<UnresolvedShuffleExec>() && has::<T>(c))
}

/// True when dropping probe rows that match no build row leaves the join's answer as
/// it is.
fn filters_probe_side(j: &HashJoinExec) -> bool {
    !matches!(
        j.join_type(),
        JoinType::Right | JoinType::Full | JoinType::RightAnti | JoinType::RightMark
    ) && j.null_equality() == NullEquality::NullEqualsNothing
        && !j.null_aware
}

fn joins_of(
    graph: &StageGraph,
    stage: usize,
    plan: &Arc<dyn ExecutionPlan>,
    out: &mut Vec<RuntimeFilter>,
) {
    if let Some(j) = plan.downcast_ref::<HashJoinExec>()
        && filters_probe_side(j)
    {
        for (l, r) in j.on() {
            let (Some(l), Some(r)) = (l.downcast_ref::<Column>(), r.downcast_ref::<Column>())
            else {
                continue;
            };
            let mut build = Vec::new();
            origins_of(j.left(), l.index(), stage, &mut build);
            let [
                Origin::Stage {
                    stage: source,
                    column: source_column,
                },
            ] = build[..]
            else {
                continue;
            };
            let mut probe = Vec::new();
            follow(graph, j.right(), r.index(), stage, &mut probe);
            for origin in probe {
                let Origin::Scan {
                    stage: target,
                    scan,
                    column,
                    name,
                } = origin
                else {
                    continue;
                };
                out.push(RuntimeFilter {
                    source,
                    source_column,
                    target,
                    scan,
                    column,
                    name,
                    source_name: l.name().to_string(),
                    join_stage: stage,
                });
            }
        }
    }
    for c in plan.children() {
        joins_of(graph, stage, c, out);
    }
}

/// The scans column `column` of `plan` (in stage `stage`) comes from, following it
/// through shuffles into the stages that wrote them.
fn follow(
    graph: &StageGraph,
    plan: &Arc<dyn ExecutionPlan>,
    column: usize,
    stage: usize,
    out: &mut Vec<Origin>,
) {
    let mut origins = Vec::new();
    origins_of(plan, column, stage, &mut origins);
    for origin in origins {
        match origin {
            Origin::Scan { .. } => out.push(origin),
            Origin::Stage { stage, column } => {
                let Some(writer) = graph
                    .stages
                    .get(&stage)
                    .and_then(|s| s.plan.downcast_ref::<ShuffleWriterExec>())
                else {
                    continue;
                };
                follow(graph, writer.input(), column, stage, out);
            }
        }
    }
}

/// Where column `column` of `plan`'s output comes from, unchanged, through operators
/// after which every row still carries the value it had there.
fn origins_of(plan: &Arc<dyn ExecutionPlan>, column: usize, stage: usize, out: &mut Vec<Origin>) {
    let pass = |child: &Arc<dyn ExecutionPlan>, c: usize, out: &mut Vec<Origin>| {
        origins_of(child, c, stage, out)
    };
    if let Some(u) = plan.downcast_ref::<UnresolvedShuffleExec>() {
        out.push(Origin::Stage {
            stage: u.stage_id(),
            column,
        });
    } else if plan.is::<DataSourceExec>() {
        if let Some(field) = plan.schema().fields().get(column) {
            out.push(Origin::Scan {
                stage,
                scan: address(plan),
                column,
                name: field.name().clone(),
            });
        }
    } else if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        if let Some(c) = p
            .expr()
            .get(column)
            .and_then(|e| e.expr.downcast_ref::<Column>())
        {
            pass(p.input(), c.index(), out);
        }
    } else if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let c = match f.projection() {
            Some(p) => p.get(column).copied(),
            None => Some(column),
        };
        if let Some(c) = c {
            pass(f.input(), c, out);
        }
    } else if let Some(s) = plan.downcast_ref::<SortExec>() {
        if s.fetch().is_none() {
            pass(s.input(), column, out);
        }
    } else if plan.is::<CoalescePartitionsExec>() && plan.fetch().is_none()
        || plan.is::<RepartitionExec>()
        || plan.name() == "CoalesceBatchesExec"
    {
        pass(plan.children()[0], column, out);
    } else if plan.is::<UnionExec>() {
        for child in plan.children() {
            pass(child, column, out);
        }
    } else if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        let groups = a.group_expr();
        if groups.is_single()
            && let Some(c) = groups
                .expr()
                .get(column)
                .and_then(|(e, _)| e.downcast_ref::<Column>())
        {
            pass(a.input(), c.index(), out);
        }
    } else if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        let c = match &j.projection {
            Some(p) => p.get(column).copied(),
            None => Some(column),
        };
        let left = j.left().schema().fields().len();
        match (c, j.join_type()) {
            (
                Some(c),
                JoinType::Inner
                | JoinType::Left
                | JoinType::Right
                | JoinType::Full
                | JoinType::LeftSemi
                | JoinType::LeftAnti
                | JoinType::LeftMark,
            ) if c < left => pass(j.left(), c, out),
            (Some(c), JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full) => {
                pass(j.right(), c - left, out)
            }
            (Some(c), JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark)
                if c < j.right().schema().fields().len() =>
            {
                pass(j.right(), c, out)
            }
            _ => {}
        }
    } else if let Some(j) = plan.downcast_ref::<CrossJoinExec>() {
        let left = j.left().schema().fields().len();
        if column < left {
            pass(j.left(), column, out);
        } else {
            pass(j.right(), column - left, out);
        }
    }
}

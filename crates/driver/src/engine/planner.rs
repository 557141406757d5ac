//! The stage planner: cuts a physical plan into a DAG of stages at its exchanges.
//!
//! ```text
//!   physical plan                         stages
//!   SortPreservingMergeExec               Stage 3 (result, 1 task)
//!     SortExec                              SortPreservingMergeExec
//!       AggregateExec (final)                 UnresolvedShuffleExec(stage 2)
//!         RepartitionExec (hash)   ==>    Stage 2 (map, N tasks, merge)
//!           AggregateExec (partial)         ShuffleWriterExec(none)
//!             DataSourceExec                  SortExec
//!                                               AggregateExec (final)
//!                                                 UnresolvedShuffleExec(stage 1)
//!                                         Stage 1 (map, M tasks, hash(N))
//!                                           ShuffleWriterExec(hash)
//!                                             AggregateExec (partial)
//!                                               DataSourceExec
//! ```
//!
//! Cuts are made bottom-up at every hash `RepartitionExec`, at a
//! `CoalescePartitionsExec` or `SortPreservingMergeExec` over several partitions, and at
//! the build (left) side of joins that collect it (`CollectLeft` hash joins, nested-loop
//! and cross joins) so it is computed once and read by every probe task, unless it is
//! a scan of a small table, which each probe task reads itself. Round-robin
//! repartitions are dropped: stage boundaries already spread the work.
//!
//! Before cutting, joins whose partitions cooperate through shared memory are
//! rewritten (see [`isolate_join_partitions`]): in ember every partition is a task of
//! its own, possibly in another process.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, replace_children_if_necessary,
};
use ember_core::Result;
use ember_core::shuffle::cache_job;

use super::cache::{CacheExec, StorageLevel};
use super::runtime_filter::{self, RuntimeFilter, RuntimeFilters};
use ember_exec::shuffle::{
    ShuffleWriterExec, UnresolvedShuffleExec, after_hash_exchange, after_passthrough,
};
use ember_exec::stateful::exec::StatefulExec;
use ember_exec::stateful::join::StreamJoinExec;

/// How a stage's output reaches its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exchange {
    /// Rows hashed on `keys` into `partitions` reduce partitions.
    Hash {
        keys: Vec<String>,
        partitions: usize,
    },
    /// All map outputs read by one task (`CoalescePartitionsExec`).
    Coalesce,
    /// Sorted map outputs merged by one task (`SortPreservingMergeExec`).
    Merge,
    /// A join's build side, read whole by every probe task.
    Broadcast,
    /// The job's result, returned to the caller.
    Result,
    /// A persisted frame's partitions, kept for later jobs.
    Cache { id: u64 },
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::Hash { keys, partitions } => {
                write!(f, "hash({partitions}) on [{}]", keys.join(", "))
            }
            Exchange::Coalesce => f.write_str("coalesce"),
            Exchange::Merge => f.write_str("merge"),
            Exchange::Broadcast => f.write_str("broadcast"),
            Exchange::Result => f.write_str("result"),
            Exchange::Cache { id } => write!(f, "cache({id})"),
        }
    }
}

/// One stage: a plan whose leaves are scans or `UnresolvedShuffleExec`s of its parents.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    pub id: usize,
    /// Rooted at a `ShuffleWriterExec` for map stages.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Stages whose output this stage reads.
    pub parents: Vec<usize>,
    /// Stages it waits for without reading them: the build sides of its runtime filters.
    pub waits: Vec<usize>,
    /// One task per partition.
    pub tasks: usize,
    pub output: Exchange,
}

impl Stage {
    /// The persisted frame this stage computes, if it is a cache stage.
    pub(crate) fn cache(&self) -> Option<u64> {
        match self.output {
            Exchange::Cache { id } => Some(id),
            _ => None,
        }
    }
}

/// The stages of one job; the final stage has the highest id.
#[derive(Debug, Clone)]
pub(crate) struct StageGraph {
    pub stages: BTreeMap<usize, Stage>,
    pub final_stage: usize,
    /// Filters of scans by the keys of joins' build stages.
    pub filters: Vec<RuntimeFilter>,
}

impl StageGraph {
    /// Cuts `plan` into stages for job `job`, with cross-stage runtime filters when
    /// `runtime_filters` are on (see [`runtime_filter`](super::runtime_filter)).
    pub(crate) fn plan(
        job: u64,
        plan: Arc<dyn ExecutionPlan>,
        runtime_filters: Option<RuntimeFilters>,
    ) -> Result<StageGraph> {
        let mut planner = Planner {
            job,
            stages: BTreeMap::new(),
            runtime_filters: runtime_filters.is_some(),
        };
        let plan = isolate_join_partitions(plan)?;
        let (root, parents) = planner.cut(plan)?;
        let id = planner.stages.len() + 1;
        let tasks = root.output_partitioning().partition_count();
        planner.stages.insert(
            id,
            Stage {
                id,
                plan: root,
                parents,
                waits: Vec::new(),
                tasks,
                output: Exchange::Result,
            },
        );
        let mut graph = StageGraph {
            stages: planner.stages,
            final_stage: id,
            filters: Vec::new(),
        };
        if let Some(settings) = runtime_filters {
            runtime_filter::plan(&mut graph, settings)?;
        }
        Ok(graph)
    }

    /// True when stage `stage` needs stage `other` done first, directly or not.
    pub(crate) fn depends_on(&self, stage: usize, other: usize) -> bool {
        let mut todo = vec![stage];
        let mut seen = std::collections::HashSet::new();
        while let Some(s) = todo.pop() {
            if s == other {
                return true;
            }
            if seen.insert(s)
                && let Some(st) = self.stages.get(&s)
            {
                todo.extend(st.parents.iter().chain(&st.waits));
            }
        }
        false
    }
}

struct Planner {
    job: u64,
    stages: BTreeMap<usize, Stage>,
    runtime_filters: bool,
}

impl Planner {
    /// Returns the plan with its exchanges replaced by unresolved shuffles, and the
    /// stages those read.
    fn cut(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
        let mut parents = Vec::new();
        let mut children = Vec::new();
        for child in plan.children() {
            let (c, p) = self.cut(child.clone())?;
            children.push(c);
            parents.extend(p);
        }
        let plan = if children.is_empty() {
            plan
        } else {
            replace_children_if_necessary(plan, children.clone())?
        };

        if let Some(st) = plan.downcast_ref::<StatefulExec>() {
            let keys = StatefulExec::key_exprs(st.config(), &children[0].schema());
            let partitions = st.config().partitions;
            let (input, ids) =
                self.exchange_to_state_partitions(children[0].clone(), keys, partitions, parents)?;
            return Ok((replace_children_if_necessary(plan, vec![input])?, ids));
        }
        if let Some(join) = plan.downcast_ref::<StreamJoinExec>() {
            let partitions = join.config().partitions;
            let mut inputs = vec![];
            let mut ids = vec![];
            for (side, child) in children.iter().enumerate() {
                let mine = self.parents_within(child);
                let (input, side_ids) = self.exchange_to_state_partitions(
                    child.clone(),
                    join.keys(side),
                    partitions,
                    mine,
                )?;
                inputs.push(input);
                ids.extend(side_ids);
            }
            ids.sort_unstable();
            ids.dedup();
            return Ok((replace_children_if_necessary(plan, inputs)?, ids));
        }
        if let Some(cache) = plan.downcast_ref::<CacheExec>() {
            // Its input is a stage of its own, written where no job's end removes it.
            let input = children[0].clone();
            let maps = input.output_partitioning().partition_count();
            let facts = after_passthrough(&input);
            let id = self.stages.len() + 1;
            let job = cache_job(cache.id, cache.level == StorageLevel::DiskOnly);
            let writer = ShuffleWriterExec::try_new(job, 0, input, None)?;
            self.stages.insert(
                id,
                Stage {
                    id,
                    plan: Arc::new(writer),
                    parents,
                    waits: Vec::new(),
                    tasks: maps,
                    output: Exchange::Cache { id: cache.id },
                },
            );
            let unresolved =
                UnresolvedShuffleExec::new(id, Partitioning::UnknownPartitioning(maps), facts);
            return Ok((Arc::new(unresolved), vec![id]));
        }
        if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
            return match rep.partitioning() {
                Partitioning::Hash(exprs, n) => {
                    let keys = exprs.iter().map(|e| e.to_string()).collect();
                    let exchange = Exchange::Hash {
                        keys,
                        partitions: *n,
                    };
                    let id = self.add_stage(
                        children[0].clone(),
                        Some(rep.partitioning().clone()),
                        exchange,
                        parents,
                    )?;
                    // The shuffle never keeps the rows' order, even where the
                    // repartition was to (`preserve_order`).
                    let unresolved = UnresolvedShuffleExec::new(
                        id,
                        rep.partitioning().clone(),
                        after_hash_exchange(&children[0]),
                    );
                    Ok((Arc::new(unresolved), vec![id]))
                }
                // Round-robin (and other) repartitions only spread work inside a stage.
                _ => Ok((children[0].clone(), parents)),
            };
        }
        let merge = plan.is::<SortPreservingMergeExec>();
        if (merge || plan.is::<CoalescePartitionsExec>())
            && children[0].output_partitioning().partition_count() > 1
        {
            let exchange = if merge {
                Exchange::Merge
            } else {
                Exchange::Coalesce
            };
            let reader = self.passthrough(children[0].clone(), exchange, parents)?;
            return Ok((
                replace_children_if_necessary(plan, vec![reader.0])?,
                reader.1,
            ));
        }
        // A small build side is read by each probe task, unless its keys can filter a
        // scan of an earlier stage.
        let read_by_each = |build| {
            small_scan(build)
                && !(self.runtime_filters && runtime_filter::probe_leaves_stage(&plan))
        };
        if collects_left_side(&plan) && !reads_shuffle(&children[0]) && !read_by_each(&children[0])
        {
            let left_parents: Vec<usize> = self.parents_within(&children[0]);
            let other_parents: Vec<usize> = parents
                .iter()
                .copied()
                .filter(|p| !left_parents.contains(p))
                .collect();
            let (reader, id) =
                self.passthrough(children[0].clone(), Exchange::Broadcast, left_parents)?;
            let mut new_children = children;
            new_children[0] = reader;
            let mut all = other_parents;
            all.extend(id);
            return Ok((replace_children_if_necessary(plan, new_children)?, all));
        }
        Ok((plan, parents))
    }

    /// Cuts below `input` with no repartitioning: map task `i` becomes reader partition `i`.
    /// A stateful operator's input goes into its state partitions here, after the
    /// optimizer (which may drop a hash repartition it finds unneeded): hashed on the
    /// operator's keys into exactly its partitions, or gathered into one without keys.
    fn exchange_to_state_partitions(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        keys: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
        partitions: usize,
        parents: Vec<usize>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
        if keys.is_empty() {
            if input.output_partitioning().partition_count() == 1 {
                return Ok((input, parents));
            }
            let (reader, ids) = self.passthrough(input, Exchange::Coalesce, parents)?;
            let gathered: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(reader));
            return Ok((gathered, ids));
        }
        let partitioning = Partitioning::Hash(keys.clone(), partitions);
        let exchange = Exchange::Hash {
            keys: keys.iter().map(|e| e.to_string()).collect(),
            partitions,
        };
        let facts = after_hash_exchange(&input);
        let id = self.add_stage(input, Some(partitioning.clone()), exchange, parents)?;
        Ok((
            Arc::new(UnresolvedShuffleExec::new(id, partitioning, facts)),
            vec![id],
        ))
    }

    fn passthrough(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        exchange: Exchange,
        parents: Vec<usize>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
        let maps = input.output_partitioning().partition_count();
        let facts = after_passthrough(&input);
        let id = self.add_stage(input, None, exchange, parents)?;
        let unresolved =
            UnresolvedShuffleExec::new(id, Partitioning::UnknownPartitioning(maps), facts);
        Ok((Arc::new(unresolved), vec![id]))
    }

    fn add_stage(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        partitioning: Option<Partitioning>,
        output: Exchange,
        parents: Vec<usize>,
    ) -> Result<usize> {
        let id = self.stages.len() + 1;
        let tasks = input.output_partitioning().partition_count();
        let writer = ShuffleWriterExec::try_new(self.job, id, input, partitioning)?;
        self.stages.insert(
            id,
            Stage {
                id,
                plan: Arc::new(writer),
                parents,
                waits: Vec::new(),
                tasks,
                output,
            },
        );
        Ok(id)
    }

    /// The stage ids read by unresolved shuffles inside `plan`.
    fn parents_within(&self, plan: &Arc<dyn ExecutionPlan>) -> Vec<usize> {
        let mut out = Vec::new();
        collect_unresolved(plan, &mut out);
        out
    }
}

fn collect_unresolved(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<usize>) {
    if let Some(u) = plan.downcast_ref::<UnresolvedShuffleExec>() {
        out.push(u.stage_id());
    }
    for c in plan.children() {
        collect_unresolved(c, out);
    }
}

/// Joins that read their whole left input in every task.
fn collects_left_side(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        return *j.partition_mode() == PartitionMode::CollectLeft;
    }
    plan.is::<NestedLoopJoinExec>() || plan.is::<CrossJoinExec>()
}

/// The most bytes of files a join's collected side may scan to be read by each probe
/// task itself, rather than computed in a stage of its own and broadcast through the
/// shuffle: for a small table, a stage's scheduling, its map output and every probe
/// task's fetch of it cost more than reading the file again.
const SMALL_SCAN_BYTES: u64 = 16 << 20;

/// True when `plan` scans at most [`SMALL_SCAN_BYTES`] of files, with only row-local
/// operators (filters, projections, gathering its one partition) over the scan.
fn small_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn scanned(plan: &Arc<dyn ExecutionPlan>, bytes: &mut u64) -> bool {
        if let Some(source) = plan.downcast_ref::<DataSourceExec>() {
            let Some(files) = source.data_source().downcast_ref::<FileScanConfig>() else {
                return false;
            };
            *bytes += files
                .file_groups
                .iter()
                .flat_map(|group| group.iter())
                .map(|file| file.object_meta.size)
                .sum::<u64>();
            return *bytes <= SMALL_SCAN_BYTES;
        }
        let row_local = plan.is::<FilterExec>()
            || plan.is::<ProjectionExec>()
            || plan.is::<CoalescePartitionsExec>();
        row_local && plan.children().into_iter().all(|c| scanned(c, bytes))
    }
    scanned(plan, &mut 0)
}

/// True when `plan` already is a shuffle read (possibly merged into one partition).
fn reads_shuffle(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.is::<UnresolvedShuffleExec>() {
        return true;
    }
    (plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>())
        && plan
            .children()
            .first()
            .is_some_and(|c| c.is::<UnresolvedShuffleExec>())
}

/// Join types whose collected (left) side rows can be emitted without a match: the
/// probe partitions of such a join share a bitmap of matched rows, and the last one to
/// finish emits the rest.
fn emits_unmatched_build_rows(join_type: &JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::Full
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
    )
}

/// Rewrites joins that rely on their partitions sharing memory, which isolated tasks
/// cannot: a `CollectLeft` hash join that emits unmatched build rows becomes a
/// `Partitioned` join on both sides' keys (a null-aware anti join, which needs to see
/// every build row, and such nested-loop joins get a single probe partition instead).
fn isolate_join_partitions(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        if let Some(j) = node.downcast_ref::<HashJoinExec>() {
            let probe_partitions = j.right().output_partitioning().partition_count();
            if *j.partition_mode() != PartitionMode::CollectLeft
                || !emits_unmatched_build_rows(j.join_type())
                || probe_partitions <= 1
            {
                return Ok(Transformed::no(node));
            }
            if j.null_aware {
                let right: Arc<dyn ExecutionPlan> =
                    Arc::new(CoalescePartitionsExec::new(j.right().clone()));
                let join = j
                    .builder()
                    .with_new_children(vec![j.left().clone(), right])?
                    .build_exec()?;
                return Ok(Transformed::yes(join));
            }
            let left = match j.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(c) => c.input().clone(),
                None => j.left().clone(),
            };
            let (left_keys, right_keys): (Vec<_>, Vec<_>) = j.on().iter().cloned().unzip();
            let left =
                RepartitionExec::try_new(left, Partitioning::Hash(left_keys, probe_partitions))?;
            let right = RepartitionExec::try_new(
                j.right().clone(),
                Partitioning::Hash(right_keys, probe_partitions),
            )?;
            let join = j
                .builder()
                .with_partition_mode(PartitionMode::Partitioned)
                .with_new_children(vec![Arc::new(left), Arc::new(right)])?
                .build_exec()?;
            return Ok(Transformed::yes(join));
        }
        if let Some(j) = node.downcast_ref::<NestedLoopJoinExec>()
            && emits_unmatched_build_rows(j.join_type())
            && j.right().output_partitioning().partition_count() > 1
        {
            let right: Arc<dyn ExecutionPlan> =
                Arc::new(CoalescePartitionsExec::new(j.right().clone()));
            let join = replace_children_if_necessary(node.clone(), vec![j.left().clone(), right])?;
            return Ok(Transformed::yes(join));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(rewritten.data)
}

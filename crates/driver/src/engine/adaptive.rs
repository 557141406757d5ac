//! Adaptive execution, as Spark's AQE: a stage's tasks are planned again when it
//! starts, from the real sizes of the map outputs it reads.
//!
//! A stage whose tasks are its hash shuffle reads' reduce partitions (every task
//! reads partition `p` of each) can have them regrouped, since a key is still read by
//! exactly one task when every read is regrouped alike:
//!
//! - **Coalescing**: runs of small reduce partitions are read by one task, up to
//!   `ember.adaptive.advisory_partition_bytes` (less when fewer tasks than slots would
//!   result; never under [`MIN_PARTITION_BYTES`]).
//! - **Broadcast switch**: a partitioned hash join whose build side turned out at
//!   most `ember.adaptive.broadcast_bytes` becomes a `CollectLeft` join. Every task
//!   reads the whole build side, and each probe-side map output is read whole by one
//!   task (a local read: the rows no longer need their reduce partitions).
//! - **Skew split**: a join's reduce partition over `ember.adaptive.skew_factor`
//!   times its side's median and over `ember.adaptive.skew_bytes` is split by map
//!   outputs between several tasks, each reading the other side's partition whole.
//!
//! The last two need the rows partitioned by key nowhere above the join in the
//! stage, and a join type that keeps its answer when one side is split or whole.
//! The decision is made once, at the stage's first start; a later attempt reads the
//! same pieces again.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use ember_core::config::AdaptiveSettings;
use ember_exec::shuffle::{MapOutput, ShuffleReaderExec, ShuffleWriterExec, UnresolvedShuffleExec};
use ember_exec::stateful::exec::StatefulExec;
use ember_exec::stateful::join::StreamJoinExec;

use super::planner::{Exchange, Stage};

/// The fewest shuffle bytes a coalesced task aims at, however many slots there are
/// (Spark's `spark.sql.adaptive.coalescePartitions.minPartitionSize`).
pub(crate) const MIN_PARTITION_BYTES: u64 = 1 << 20;

/// Reduce partitions `reduce` of map outputs `maps` of one shuffle read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    pub reduce: Range<usize>,
    pub maps: Range<usize>,
}

/// What adaptive execution decided for a stage when it first started.
#[derive(Debug, Clone)]
pub(crate) struct Adapted {
    /// Per task, per parent stage it reads by hash, the pieces it reads, in order.
    pub tasks: Vec<BTreeMap<usize, Vec<Slice>>>,
    /// The stage whose output the switched join reads whole in every task.
    pub broadcast: Option<usize>,
    /// What was decided, one line each, for `explain`, the log and the UI.
    pub notes: Vec<String>,
}

/// A partitioned hash join over two of the stage's hash reads, with nothing above it
/// in the stage that needs rows partitioned by key.
struct Join {
    build: usize,
    probe: usize,
    join_type: JoinType,
    null_aware: bool,
}

impl Join {
    /// The join keeps its answer when its build side is read whole by every task
    /// and the probe side spread in any way: it emits no unmatched build rows.
    fn can_broadcast(&self) -> bool {
        !self.null_aware
            && matches!(
                self.join_type,
                JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
            )
    }

    /// The build (left) side's partition may be split: each build row meets every
    /// probe row of its partition in exactly one task.
    fn can_split_build(&self) -> bool {
        !self.null_aware
            && matches!(
                self.join_type,
                JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark
            )
    }

    fn can_split_probe(&self) -> bool {
        matches!(
            self.join_type,
            JoinType::Inner
                | JoinType::Right
                | JoinType::RightSemi
                | JoinType::RightAnti
                | JoinType::RightMark
        )
    }
}

/// Plans stage `stage`'s tasks from its parents' map outputs (`outputs`), with
/// `slots` task slots in all; `None` when it runs as planned.
pub(crate) fn decide<'a>(
    stage: &Stage,
    outputs: &dyn Fn(usize) -> Vec<&'a MapOutput>,
    settings: &AdaptiveSettings,
    slots: usize,
) -> Option<Adapted> {
    if !settings.enabled || matches!(stage.output, Exchange::Cache { .. }) {
        return None;
    }
    let mut reads = Vec::new();
    if !task_partitioned_reads(&stage.plan, false, stage.tasks, &mut reads) || reads.is_empty() {
        return None;
    }
    reads.sort_unstable();
    reads.dedup();
    let n = stage.tasks;
    let outputs: BTreeMap<usize, Vec<&MapOutput>> =
        reads.iter().map(|&p| (p, outputs(p))).collect();
    let sizes: BTreeMap<usize, Vec<u64>> = outputs
        .iter()
        .map(|(&p, outs)| (p, (0..n).map(|r| partition_bytes(outs, r)).collect()))
        .collect();
    let medians: BTreeMap<usize, u64> = sizes.iter().map(|(&p, s)| (p, median(s))).collect();
    let join = find_join(&stage.plan).filter(|_| reads.len() == 2);

    if let Some(j) = &join
        && j.can_broadcast()
        && settings.broadcast_bytes > 0
    {
        let build: u64 = sizes[&j.build].iter().sum();
        let probe: u64 = sizes[&j.probe].iter().sum();
        let maps = outputs[&j.probe].len();
        if build <= settings.broadcast_bytes && build < probe && maps > 0 {
            let tasks = (0..maps)
                .map(|m| {
                    let whole = Slice {
                        reduce: 0..n,
                        maps: m..m + 1,
                    };
                    BTreeMap::from([(j.probe, vec![whole])])
                })
                .collect();
            let note = format!(
                "broadcast join: the build side (stage {}) is {} (at most {}); each of the probe side's {maps} map outputs (stage {}, {}) is read whole by one task, instead of {n} reduce partitions",
                j.build,
                bytes(build),
                bytes(settings.broadcast_bytes),
                j.probe,
                bytes(probe),
            );
            return Some(Adapted {
                tasks,
                broadcast: Some(j.build),
                notes: vec![note],
            });
        }
    }

    let total: u64 = sizes.values().flatten().sum();
    let target = settings
        .advisory_partition_bytes
        .min(total.div_ceil(slots.max(1) as u64))
        .max(MIN_PARTITION_BYTES);
    let skewed = |side: usize, r: usize| {
        let s = &sizes[&side];
        let threshold =
            (medians[&side] as f64 * settings.skew_factor).max(settings.skew_bytes as f64);
        s[r] as f64 > threshold
    };
    let mut tasks: Vec<BTreeMap<usize, Vec<Slice>>> = Vec::new();
    let mut notes = Vec::new();
    let mut group: Option<(Range<usize>, u64)> = None;
    let mut coalesced = false;
    let mut skewed_bytes = 0;
    // Reduce partitions read by the coalesced tasks, and those tasks.
    let (mut grouped, mut groups) = (0, 0);
    let mut flush = |group: &mut Option<(Range<usize>, u64)>, tasks: &mut Vec<_>| {
        if let Some((range, _)) = group.take() {
            grouped += range.len();
            groups += 1;
            tasks.push(
                outputs
                    .iter()
                    .map(|(&p, outs)| {
                        let slice = Slice {
                            reduce: range.clone(),
                            maps: 0..outs.len(),
                        };
                        (p, vec![slice])
                    })
                    .collect(),
            );
        }
    };
    for r in 0..n {
        let split = join.as_ref().and_then(|j| {
            let build = j.can_split_build() && skewed(j.build, r);
            let probe = j.can_split_probe() && skewed(j.probe, r);
            (build || probe).then_some((j, build, probe))
        });
        if let Some((j, split_build, split_probe)) = split {
            flush(&mut group, &mut tasks);
            skewed_bytes += sizes.values().map(|s| s[r]).sum::<u64>();
            let pieces = |side: usize, split: bool| {
                let outs = &outputs[&side];
                if split {
                    // Spark's aim: the advisory size, or a typical partition if more.
                    let aim = settings.advisory_partition_bytes.max(medians[&side]);
                    split_maps(outs, r, aim)
                } else {
                    let whole = 0..outs.len();
                    vec![whole]
                }
            };
            let (builds, probes) = (pieces(j.build, split_build), pieces(j.probe, split_probe));
            for b in &builds {
                for p in &probes {
                    let slice = |maps: &Range<usize>| {
                        vec![Slice {
                            reduce: r..r + 1,
                            maps: maps.clone(),
                        }]
                    };
                    tasks.push(BTreeMap::from([(j.build, slice(b)), (j.probe, slice(p))]));
                }
            }
            notes.push(format!(
                "skewed partition {r}: build side {}, probe side {} (medians {} and {}), split into {}",
                bytes(sizes[&j.build][r]),
                bytes(sizes[&j.probe][r]),
                bytes(medians[&j.build]),
                bytes(medians[&j.probe]),
                count(builds.len() * probes.len(), "task"),
            ));
            continue;
        }
        let size: u64 = sizes.values().map(|s| s[r]).sum();
        match &mut group {
            Some((range, bytes)) if *bytes + size <= target => {
                range.end = r + 1;
                *bytes += size;
                coalesced = true;
            }
            _ => {
                flush(&mut group, &mut tasks);
                group = Some((r..r + 1, size));
            }
        }
    }
    flush(&mut group, &mut tasks);
    if !coalesced && notes.is_empty() {
        return None;
    }
    if coalesced {
        let bytes_grouped: u64 = sizes.values().flatten().sum::<u64>() - skewed_bytes;
        notes.insert(
            0,
            format!(
                "coalesced: {} ({}) read by {} of up to {} each",
                count(grouped, "reduce partition"),
                bytes(bytes_grouped),
                count(groups, "task"),
                bytes(target),
            ),
        );
    }
    Some(Adapted {
        tasks,
        broadcast: None,
        notes,
    })
}

/// Bytes of reduce partition `r` in all of `outputs`.
fn partition_bytes(outputs: &[&MapOutput], r: usize) -> u64 {
    outputs
        .iter()
        .map(|o| o.partitions.get(r).map_or(0, |p| p.length))
        .sum()
}

fn median(sizes: &[u64]) -> u64 {
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// Map outputs `0..outputs.len()` cut into runs whose partition `r` holds at most
/// `aim` bytes (a bigger single output is a run of its own).
fn split_maps(outputs: &[&MapOutput], r: usize, aim: u64) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut run_bytes = 0;
    for (m, o) in outputs.iter().enumerate() {
        let b = o.partitions.get(r).map_or(0, |p| p.length);
        match runs.last_mut() {
            Some(run) if run_bytes + b <= aim => {
                run.end = m + 1;
                run_bytes += b;
            }
            _ => {
                runs.push(m..m + 1);
                run_bytes = b;
            }
        }
    }
    if runs.is_empty() {
        runs.push(0..0);
    }
    runs
}

/// True when every input that spreads the stage's `tasks` is a hash shuffle read of
/// `tasks` partitions (collected into `reads`); false for scans, streaming state and
/// other reads that fix what each task reads. Inputs gathered whole by every task
/// (under a merge, or a join's collected side) do not count.
fn task_partitioned_reads(
    plan: &Arc<dyn ExecutionPlan>,
    gathered: bool,
    tasks: usize,
    reads: &mut Vec<usize>,
) -> bool {
    if plan.is::<StatefulExec>() || plan.is::<StreamJoinExec>() {
        return false;
    }
    if let Some(u) = plan.downcast_ref::<UnresolvedShuffleExec>() {
        if gathered {
            return true;
        }
        let ok = u.is_hash() && u.exchange_partitioning().partition_count() == tasks;
        reads.push(u.stage_id());
        return ok;
    }
    let children = plan.children();
    if children.is_empty() {
        return gathered;
    }
    let gathers = plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>();
    let collects_left = plan
        .downcast_ref::<HashJoinExec>()
        .is_some_and(|j| *j.partition_mode() == PartitionMode::CollectLeft)
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<CrossJoinExec>();
    children.iter().enumerate().all(|(i, c)| {
        let whole = gathered || gathers || (collects_left && i == 0);
        task_partitioned_reads(c, whole, tasks, reads)
    })
}

/// The stage's partitioned hash join over two hash reads, found down a path of
/// operators that treat each partition apart (so its tasks may be split or merged).
fn find_join(plan: &Arc<dyn ExecutionPlan>) -> Option<Join> {
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        if *j.partition_mode() == PartitionMode::Partitioned {
            let read = |c: &Arc<dyn ExecutionPlan>| {
                c.downcast_ref::<UnresolvedShuffleExec>()
                    .filter(|u| u.is_hash())
                    .map(|u| u.stage_id())
            };
            let (build, probe) = (read(j.left())?, read(j.right())?);
            // A stage's output joined with itself: its two reads cannot differ.
            return (build != probe).then(|| Join {
                build,
                probe,
                join_type: *j.join_type(),
                null_aware: j.null_aware,
            });
        }
        if *j.partition_mode() == PartitionMode::CollectLeft {
            return find_join(j.right());
        }
        return None;
    }
    let per_partition = plan.is::<ShuffleWriterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial)
        || plan
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.preserve_partitioning());
    match plan.children().as_slice() {
        [child] if per_partition => find_join(child),
        _ => None,
    }
}

/// `plan` (a resolved stage plan) with its partitioned hash join over the build side
/// read whole from stage `build` turned into a `CollectLeft` join.
pub(crate) fn broadcast_join(
    plan: Arc<dyn ExecutionPlan>,
    build: usize,
) -> ember_core::Result<Arc<dyn ExecutionPlan>> {
    let switched = plan.transform_up(|node| {
        let Some(j) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        let reads_build = j
            .left()
            .downcast_ref::<ShuffleReaderExec>()
            .is_some_and(|r| r.stage_id() == build);
        if *j.partition_mode() != PartitionMode::Partitioned || !reads_build {
            return Ok(Transformed::no(node));
        }
        let join = j
            .builder()
            .with_partition_mode(PartitionMode::CollectLeft)
            .build_exec()?;
        Ok(Transformed::yes(join))
    })?;
    Ok(switched.data)
}

/// `n` things: `1 task`, `3 tasks`.
pub(crate) fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// `n` bytes for people: `812 B`, `3.4 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

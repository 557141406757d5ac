//! Per-job scheduler state: stages, their attempts, tasks and map outputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use ember_core::{EmberConfig, EmberError, Result};
use ember_exec::codec::{EmberCodec, encode_plan};
use ember_exec::shuffle::{
    MapOutput, PartitionLocation, ShuffleReaderExec, ShuffleWriterExec, UnresolvedShuffleExec,
};
use tokio::sync::mpsc;

use super::adaptive::{Adapted, Slice};
use super::planner::StageGraph;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageStatus {
    /// Some parent has not finished (or lost outputs and is re-running).
    Waiting,
    Running,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    Pending,
    Running { attempt: usize },
    Done,
}

/// A stage attempt's resolved plan and its encoding. An executor decodes the bytes;
/// a slot in the driver's process runs a copy of the plan with fresh operator state.
/// Both exist in local mode too, so a plan that cannot travel fails there first.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedStage {
    pub plan: Arc<dyn ExecutionPlan>,
    pub bytes: bytes::Bytes,
}

impl ResolvedStage {
    pub(crate) fn encode(plan: Arc<dyn ExecutionPlan>, codec: &EmberCodec) -> Result<Self> {
        let bytes = encode_plan(plan.clone(), codec)?;
        Ok(ResolvedStage { plan, bytes })
    }
}

#[derive(Debug)]
pub(crate) struct StageState {
    pub status: StageStatus,
    /// Bumped when the stage is re-run; reports of older attempts are stale.
    pub attempt: usize,
    pub tasks: Vec<TaskState>,
    /// Failed attempts per task (the next attempt number).
    pub failures: Vec<usize>,
    /// Map outputs by map partition (map stages).
    pub outputs: Vec<Option<MapOutput>>,
    /// The resolved plan of the current attempt, and its encoding.
    pub plan: Option<ResolvedStage>,
    /// Its hash joins ran out of memory: it runs with sort-merge joins instead.
    pub sort_merge: bool,
}

impl StageState {
    pub(crate) fn new(tasks: usize) -> Self {
        StageState {
            status: StageStatus::Waiting,
            attempt: 0,
            tasks: vec![TaskState::Pending; tasks],
            failures: vec![0; tasks],
            outputs: vec![None; tasks],
            plan: None,
            sort_merge: false,
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t, TaskState::Running { .. }))
            .count()
    }

    pub(crate) fn done(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t, TaskState::Done))
            .count()
    }
}

/// The settings a job's tasks run with: its map stages', and its final stage's.
#[derive(Debug, Clone)]
pub(crate) struct TaskConfigs {
    pub map: Arc<Vec<(String, String)>>,
    pub result: Arc<Vec<(String, String)>>,
}

impl TaskConfigs {
    /// The settings of a task of `stage`, in a job whose final stage is `final_stage`.
    pub(crate) fn of(&self, stage: usize, final_stage: usize) -> Arc<Vec<(String, String)>> {
        if stage == final_stage {
            self.result.clone()
        } else {
            self.map.clone()
        }
    }
}

pub(crate) struct Job {
    pub id: u64,
    pub graph: StageGraph,
    pub stages: BTreeMap<usize, StageState>,
    pub config: TaskConfigs,
    pub ember: EmberConfig,
    pub session_id: String,
    /// What the UI calls the job, and the SQL query it runs for.
    pub description: String,
    pub sql: Option<u64>,
    /// Where the final stage's outputs are announced as they are stored, and the
    /// job's failure; the reader on the other end fetches them in order.
    pub results: mpsc::UnboundedSender<ResultEvent>,
    /// Final-stage partitions the reader has fetched whole: not recomputed when their
    /// executor is lost.
    pub fetched: Vec<bool>,
    /// Task slots in all, when the job was submitted: what adaptive execution spreads
    /// a stage's work over.
    pub slots: usize,
    /// What adaptive execution decided for each stage that has started (`None`: it
    /// runs as planned). Later attempts of the stage keep it.
    pub adapted: BTreeMap<usize, Option<Adapted>>,
}

/// What the scheduler tells a job's result reader.
#[derive(Debug)]
pub(crate) enum ResultEvent {
    /// Final-stage partition `partition` is stored at `output` (again, after a
    /// re-run: the newest location wins).
    Ready { partition: usize, output: MapOutput },
    /// The final stage runs as this many tasks, not as planned (adaptive execution);
    /// sent before any of its partitions is ready.
    Partitions(usize),
    /// The job failed or was cancelled; nothing more comes.
    Failed(EmberError),
}

impl Job {
    pub(crate) fn new(
        id: u64,
        graph: StageGraph,
        config: TaskConfigs,
        ember: EmberConfig,
        session_id: String,
        (description, sql): (String, Option<u64>),
        results: mpsc::UnboundedSender<ResultEvent>,
    ) -> Job {
        let partitions = graph.stages[&graph.final_stage].tasks;
        let stages = graph
            .stages
            .values()
            .map(|s| (s.id, StageState::new(s.tasks)))
            .collect();
        Job {
            id,
            graph,
            stages,
            config,
            ember,
            session_id,
            description,
            sql,
            results,
            fetched: vec![false; partitions],
            slots: 1,
            adapted: BTreeMap::new(),
        }
    }

    /// The job, spreading adaptive stages' work over `slots` task slots.
    pub(crate) fn with_slots(mut self, slots: usize) -> Job {
        self.slots = slots.max(1);
        self
    }

    /// Plans stage `stage`'s tasks again from its parents' map outputs, the first
    /// time it starts (see [`adaptive`](super::adaptive)); returns what was decided
    /// when its tasks changed.
    pub(crate) fn adapt(&mut self, stage: usize) -> Option<Vec<String>> {
        if self.adapted.contains_key(&stage) {
            return None;
        }
        let outputs =
            |p: usize| -> Vec<&MapOutput> { self.stages[&p].outputs.iter().flatten().collect() };
        let complete = self.graph.stages[&stage]
            .parents
            .iter()
            .all(|p| self.stages[p].outputs.iter().all(Option::is_some));
        let decided = complete
            .then(|| {
                super::adaptive::decide(
                    &self.graph.stages[&stage],
                    &outputs,
                    &self.ember.adaptive,
                    self.slots,
                )
            })
            .flatten();
        let notes = decided.as_ref().map(|a| a.notes.clone());
        if let Some(a) = &decided {
            let tasks = a.tasks.len();
            self.stages.insert(stage, StageState::new(tasks));
            if let Some(s) = self.graph.stages.get_mut(&stage) {
                s.tasks = tasks;
            }
            if stage == self.graph.final_stage {
                self.fetched = vec![false; tasks];
                let _ = self.results.send(ResultEvent::Partitions(tasks));
            }
        }
        self.adapted.insert(stage, decided);
        notes
    }

    /// Stages whose parents are all done, that have not started, and whose output
    /// some stage still needs (a map output lost after every reader of it finished
    /// is only recomputed if a reader runs again).
    pub(crate) fn ready_stages(&self) -> Vec<usize> {
        let needed = |id: usize| {
            id == self.graph.final_stage
                || self.graph.stages.values().any(|child| {
                    child.parents.contains(&id)
                        && self.stages[&child.id].status != StageStatus::Done
                })
        };
        self.graph
            .stages
            .values()
            .filter(|s| self.stages[&s.id].status == StageStatus::Waiting)
            .filter(|s| {
                s.parents
                    .iter()
                    .chain(&s.waits)
                    .all(|p| self.stages[p].status == StageStatus::Done)
            })
            .filter(|s| needed(s.id))
            .map(|s| s.id)
            .collect()
    }

    /// The stage plan with every unresolved shuffle replaced by a reader of its
    /// parent's current map outputs. The final stage's output is stored on its
    /// executors, as one partition per task, for the result reader to fetch: no
    /// result has to fit in a report.
    pub(crate) fn resolve(&self, stage: usize) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.graph.stages[&stage].plan.clone();
        let resolved = plan.transform_up(|node| {
            let Some(u) = node.downcast_ref::<UnresolvedShuffleExec>() else {
                return Ok(Transformed::no(node));
            };
            let parent = &self.stages[&u.stage_id()];
            let outputs: Vec<&MapOutput> = parent
                .outputs
                .iter()
                .enumerate()
                .map(|(m, o)| {
                    o.as_ref().ok_or_else(|| {
                        EmberError::Internal(format!(
                            "stage {} map output {m} missing while resolving stage {stage}",
                            u.stage_id()
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            let (partitioning, partitions) = read_plan(
                u,
                &outputs,
                self.adapted.get(&stage).and_then(Option::as_ref),
            );
            let reader = ShuffleReaderExec::new(
                u.stage_id(),
                partitioning,
                partitions,
                u.properties().equivalence_properties().clone(),
            );
            Ok(Transformed::yes(Arc::new(reader) as Arc<dyn ExecutionPlan>))
        })?;
        let resolved = match self.adapted.get(&stage).and_then(|a| a.as_ref()?.broadcast) {
            Some(build) => super::adaptive::broadcast_join(resolved.data, build)?,
            None => resolved.data,
        };
        let outputs = |source: usize| self.stages[&source].outputs.clone();
        let mut resolved =
            super::runtime_filter::apply(resolved, stage, &self.graph.filters, &outputs)?;
        if self.stages[&stage].sort_merge {
            resolved = super::fallback::sort_merge_joins(resolved)?;
        }
        if stage == self.graph.final_stage {
            let writer = ShuffleWriterExec::try_new(self.id, stage, resolved, None)?;
            return Ok(Arc::new(writer));
        }
        Ok(resolved)
    }
}

/// How a stage reads the map outputs `outputs` of the shuffle `u`: its partitioning
/// and each reader partition's pieces, as planned or as adaptive execution decided.
fn read_plan(
    u: &UnresolvedShuffleExec,
    outputs: &[&MapOutput],
    adapted: Option<&Adapted>,
) -> (Partitioning, Vec<Vec<PartitionLocation>>) {
    let parent = u.stage_id();
    let pieces = |slices: &[Slice]| -> Vec<PartitionLocation> {
        slices
            .iter()
            .flat_map(|s| {
                s.reduce.clone().flat_map(move |r| {
                    s.maps
                        .clone()
                        .filter_map(move |m| outputs.get(m).map(|o| location(m, o, r)))
                })
            })
            .collect()
    };
    if let Some(a) = adapted {
        if a.broadcast == Some(parent) {
            let whole = Slice {
                reduce: 0..u.exchange_partitioning().partition_count(),
                maps: 0..outputs.len(),
            };
            return (Partitioning::UnknownPartitioning(1), vec![pieces(&[whole])]);
        }
        if a.tasks.first().is_some_and(|t| t.contains_key(&parent)) {
            let partitions: Vec<_> = a.tasks.iter().map(|t| pieces(&t[&parent])).collect();
            let n = partitions.len();
            let partitioning = match u.exchange_partitioning() {
                Partitioning::Hash(keys, _) if a.broadcast.is_none() => {
                    Partitioning::Hash(keys.clone(), n)
                }
                _ => Partitioning::UnknownPartitioning(n),
            };
            return (partitioning, partitions);
        }
    }
    if u.is_hash() {
        let n = u.exchange_partitioning().partition_count();
        (
            u.exchange_partitioning().clone(),
            locations(outputs, true, n),
        )
    } else {
        // One reader partition per map task, however many tasks the parent ran as.
        (
            Partitioning::UnknownPartitioning(outputs.len()),
            locations(outputs, false, outputs.len()),
        )
    }
}

/// Reader partitions from map outputs: for a hash exchange, reduce partition `p` is
/// output partition `p` of every map task; otherwise reader partition `i` is map task
/// `i`'s whole output.
fn locations(outputs: &[&MapOutput], hash: bool, partitions: usize) -> Vec<Vec<PartitionLocation>> {
    let loc = location;
    if hash {
        (0..partitions)
            .map(|r| {
                outputs
                    .iter()
                    .enumerate()
                    .map(|(m, o)| loc(m, o, r))
                    .collect()
            })
            .collect()
    } else {
        outputs
            .iter()
            .enumerate()
            .map(|(m, o)| vec![loc(m, o, 0)])
            .collect()
    }
}

/// Output partition `r` of map task `m`, stored at `out`.
pub(crate) fn location(m: usize, out: &MapOutput, r: usize) -> PartitionLocation {
    PartitionLocation {
        map_partition: m,
        reduce_partition: r,
        executor_id: out.executor_id.clone(),
        executor_address: out.executor_address.clone(),
        data: out.data.clone(),
        stats: out.partitions.get(r).copied().unwrap_or_default(),
    }
}

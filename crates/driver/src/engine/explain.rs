//! The stage DAG as text: what `explain` prints and the golden files hold.

use std::fmt::Write;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;
use ember_exec::shuffle::{ShuffleReaderExec, UnresolvedShuffleExec};

use super::cache::CacheRegistry;
use super::planner::StageGraph;
use super::runtime_filter;

/// One block per stage, children first: id, task count, parents, output exchange, and
/// the stage plan's operators. A cache stage whose partitions are all kept (in
/// `caches`) says so: the job reads them instead of running it.
pub(crate) fn stage_dag(graph: &StageGraph, caches: Option<&CacheRegistry>) -> String {
    let mut out = String::new();
    for stage in graph.stages.values() {
        let parents = if stage.parents.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = stage.parents.iter().map(|p| p.to_string()).collect();
            format!(", reads stages [{}]", ids.join(", "))
        };
        let waits = if stage.waits.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = stage.waits.iter().map(|p| p.to_string()).collect();
            format!(", waits for stages [{}]", ids.join(", "))
        };
        let tasks = if stage.tasks == 1 { "task" } else { "tasks" };
        let kept = match (stage.cache(), caches) {
            (Some(id), Some(caches)) => {
                let outputs = caches.outputs(id, stage.tasks);
                let kept = outputs.iter().flatten().count();
                if stage.tasks > 0 && kept == stage.tasks {
                    " (cached: read, not run)".to_string()
                } else {
                    format!(" ({kept} of {} partitions cached)", stage.tasks)
                }
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "Stage {}: {} {tasks}{parents}{waits} -> {}{kept}",
            stage.id, stage.tasks, stage.output
        );
        for line in runtime_filter::describe(graph, stage.id) {
            let _ = writeln!(out, "  {line}");
        }
        operators(&stage.plan, 1, &mut out);
    }
    out
}

fn operators(plan: &Arc<dyn ExecutionPlan>, depth: usize, out: &mut String) {
    let _ = write!(out, "{}{}", "  ".repeat(depth), plan.name());
    if let Some(u) = plan.downcast_ref::<UnresolvedShuffleExec>() {
        let _ = write!(out, "(stage {})", u.stage_id());
    }
    out.push('\n');
    for c in plan.children() {
        operators(c, depth + 1, out);
    }
}

/// A resolved stage plan's operators, as it runs: what each shuffle read reads and
/// how each hash join gets its build side.
pub(crate) fn resolved_plan(plan: &Arc<dyn ExecutionPlan>) -> String {
    fn walk(plan: &Arc<dyn ExecutionPlan>, depth: usize, out: &mut String) {
        let _ = write!(out, "{}{}", "  ".repeat(depth), plan.name());
        if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
            let n = r.partition_locations().len();
            let s = if n == 1 { "" } else { "s" };
            let _ = write!(out, "(stage {}, {n} partition{s})", r.stage_id());
        }
        if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
            let _ = write!(out, "({:?})", j.partition_mode());
        }
        out.push('\n');
        for c in plan.children() {
            walk(c, depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(plan, 0, &mut out);
    out
}

//! Plan bytes: [`encode_plan`] / [`decode_plan`] put a physical plan into
//! `datafusion-proto` bytes and back, with ember's extension codec
//! (`ember_exec::codec::EmberCodec`) for its own nodes. Decoding reads the Arrow IPC
//! inside a plan with the checks of [`crate::ipc`] and never panics.

use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use prost::Message;

use crate::error::{EmberError, Result};

/// Serializes a physical plan (with ember's nodes) to bytes.
pub fn encode_plan(
    plan: Arc<dyn ExecutionPlan>,
    codec: &dyn PhysicalExtensionCodec,
) -> Result<bytes::Bytes> {
    Ok(physical_plan_to_bytes_with_extension_codec(plan, codec)?)
}

/// Deserializes a physical plan; UDFs are resolved through `ctx`'s function registry.
///
/// The in-memory data of the plan's memory scans (Arrow IPC inside the plan, which
/// datafusion-proto decodes with arrow-ipc's own reader) is first read with the checks
/// of [`crate::ipc`]; the decoding itself runs inside `catch_unwind`, so a plan that
/// still makes a dependency panic is an error rather than a lost executor. (Arrow IPC
/// of nested literals inside expressions is only covered by the latter.)
pub fn decode_plan(
    bytes: &[u8],
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
) -> Result<Arc<dyn ExecutionPlan>> {
    let decode_error = |message: String| EmberError::Decode {
        what: "stage plan",
        message,
    };
    let node = datafusion_proto::protobuf::PhysicalPlanNode::decode(bytes)
        .map_err(|e| decode_error(e.to_string()))?;
    check_memory_scans(&node, "plan")?;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        physical_plan_from_bytes_with_extension_codec(bytes, ctx, codec)
    }));
    match decoded {
        Ok(plan) => plan.map_err(|e| decode_error(e.to_string())),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(decode_error(format!("the plan decoder failed: {message}")))
        }
    }
}

/// Reads the IPC data of every memory scan in `node` and below with the checks of
/// [`crate::ipc::read_stream`]; `path` names the node in errors (`plan.input.left`).
fn check_memory_scans(
    node: &datafusion_proto::protobuf::PhysicalPlanNode,
    path: &str,
) -> Result<()> {
    use datafusion_proto::protobuf::physical_plan_node::PhysicalPlanType as P;
    let Some(plan) = &node.physical_plan_type else {
        return Ok(());
    };
    type Node = datafusion_proto::protobuf::PhysicalPlanNode;
    fn one<'a>(name: &'static str, child: &'a Option<Box<Node>>) -> Vec<(&'static str, &'a Node)> {
        child.iter().map(|c| (name, c.as_ref())).collect()
    }
    fn all<'a>(name: &'static str, children: &'a [Node]) -> Vec<(&'static str, &'a Node)> {
        children.iter().map(|c| (name, c)).collect()
    }
    let children = match plan {
        P::MemoryScan(scan) => {
            for (i, partition) in scan.partitions.iter().enumerate() {
                if !partition.is_empty() {
                    crate::ipc::read_stream(partition, "in-memory data of a stage plan")
                        .map_err(|e| crate::ipc::at(e, format!("{path} partition {i}")))?;
                }
            }
            vec![]
        }
        P::Projection(n) => one("input", &n.input),
        P::GlobalLimit(n) => one("input", &n.input),
        P::LocalLimit(n) => one("input", &n.input),
        P::Aggregate(n) => one("input", &n.input),
        P::Sort(n) => one("input", &n.input),
        #[allow(deprecated)]
        P::CoalesceBatches(n) => one("input", &n.input),
        P::Filter(n) => one("input", &n.input),
        P::Merge(n) => one("input", &n.input),
        P::Repartition(n) => one("input", &n.input),
        P::Window(n) => one("input", &n.input),
        P::SortPreservingMerge(n) => one("input", &n.input),
        P::Analyze(n) => one("input", &n.input),
        P::JsonSink(n) => one("input", &n.input),
        P::CsvSink(n) => one("input", &n.input),
        P::ParquetSink(n) => one("input", &n.input),
        P::Unnest(n) => one("input", &n.input),
        P::Cooperative(n) => one("input", &n.input),
        P::AsyncFunc(n) => one("input", &n.input),
        P::Buffer(n) => one("input", &n.input),
        P::HashJoin(n) => [one("left", &n.left), one("right", &n.right)].concat(),
        P::CrossJoin(n) => [one("left", &n.left), one("right", &n.right)].concat(),
        P::NestedLoopJoin(n) => [one("left", &n.left), one("right", &n.right)].concat(),
        P::SymmetricHashJoin(n) => [one("left", &n.left), one("right", &n.right)].concat(),
        P::SortMergeJoin(n) => [one("left", &n.left), one("right", &n.right)].concat(),
        P::ScalarSubquery(n) => [one("input", &n.input), all("subquery", &n.subqueries)].concat(),
        P::Extension(n) => all("input", &n.inputs),
        P::Union(n) => all("input", &n.inputs),
        P::Interleave(n) => all("input", &n.inputs),
        // Leaves without in-memory data.
        _ => vec![],
    };
    for (name, child) in children {
        check_memory_scans(child, &format!("{path}.{name}"))?;
    }
    Ok(())
}

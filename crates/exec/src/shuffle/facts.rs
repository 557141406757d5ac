//! What the rows crossing a stage boundary are known to satisfy.
//!
//! DataFusion plans operators against their input's equivalence properties: a filter
//! `d_year = 1999` makes `d_year` a constant, and a window partitioned by `d_year` then
//! needs no ordering on it. Inside one plan a `RepartitionExec` passes those facts up;
//! ember cuts the plan there, so the reader that replaces the exchange must carry the
//! same facts, or the operators above see less than they were planned with (and
//! DataFusion's window operator fails an assertion). These are the facts the exchange
//! keeps, computed as DataFusion's own exchanges compute them; the plan codec carries
//! them to the executors.

use std::sync::Arc;

use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// After a hash exchange (rows of every input partition mixed into each output
/// partition, in no particular order): constants that hold in every partition and
/// equal columns stay; orderings do not. As `RepartitionExec` without `preserve_order`.
pub fn after_hash_exchange(input: &Arc<dyn ExecutionPlan>) -> EquivalenceProperties {
    let mut facts = input.equivalence_properties().clone();
    facts.clear_orderings();
    if input.output_partitioning().partition_count() > 1 {
        facts.clear_per_partition_constants();
    }
    facts
}

/// After an exchange where reader partition `i` is map task `i`'s whole output
/// (coalesce, merge, broadcast): every fact of the input partition holds.
pub fn after_passthrough(input: &Arc<dyn ExecutionPlan>) -> EquivalenceProperties {
    input.equivalence_properties().clone()
}

//! At a stage's start: the runtime filters that target it, from their build stages'
//! summaries, as predicates over its scans (see the parent module).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::ArrayRef;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, in_list, lit};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use ember_core::keys::KeyValues;
use ember_core::shuffle::MapOutput;
use ember_core::{EmberError, Result};
use ember_exec::key_filter::{KeyFilterExpr, KeySetExpr};

use super::{RuntimeFilter, address};

/// The plan of stage `stage` with its scans filtered by the runtime filters that
/// target it, whose build stages' outputs are `outputs` (a filter whose summaries are
/// missing, as for outputs kept from an earlier job, is left out).
pub(crate) fn apply(
    plan: Arc<dyn ExecutionPlan>,
    stage: usize,
    filters: &[RuntimeFilter],
    outputs: &dyn Fn(usize) -> Vec<Option<MapOutput>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut by_scan: HashMap<usize, Vec<&RuntimeFilter>> = HashMap::new();
    for f in filters.iter().filter(|f| f.target == stage) {
        by_scan.entry(f.scan).or_default().push(f);
    }
    if by_scan.is_empty() {
        return Ok(plan);
    }
    // Scans right under a filter of their own (that keeps every column): the runtime
    // filter goes above it, so that its cheaper predicate drops rows first.
    let mut under_filter = HashSet::new();
    plan.apply(|node| {
        if let Some(f) = node.downcast_ref::<FilterExec>()
            && f.projection().is_none()
            && by_scan.contains_key(&address(f.input()))
        {
            under_filter.insert(address(f.input()));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    // Pruned scans (by their new address) whose rows their parent filter filters.
    let mut pending: HashMap<usize, Arc<dyn PhysicalExpr>> = HashMap::new();
    let rewritten = plan.transform_up(|node| {
        if let Some(f) = node.downcast_ref::<FilterExec>()
            && let Some(predicate) = pending.remove(&address(f.input()))
        {
            return Ok(Transformed::yes(Arc::new(FilterExec::try_new(
                predicate, node,
            )?)));
        }
        let Some(filters) = by_scan.get(&address(&node)) else {
            return Ok(Transformed::no(node));
        };
        let (mut prunable, mut rows) = (Vec::new(), Vec::new());
        for f in filters {
            let started = std::time::Instant::now();
            let p = predicate(&node, f, &outputs(f.source))?;
            tracing::debug!(
                stage,
                filter = %f.name,
                source = f.source,
                applied = p.is_some(),
                predicate_us = started.elapsed().as_micros() as u64,
                "runtime filter resolved"
            );
            if let Some(p) = p {
                prunable.push(p.prunable());
                // The join right above probes every row with these keys anyway: checking
                // them first would repeat its work, and copy the rows it keeps.
                if f.target != f.join_stage {
                    rows.push(p.whole());
                }
            }
        }
        let and = |predicates: Vec<Arc<dyn PhysicalExpr>>| {
            predicates
                .into_iter()
                .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::And, b)) as _)
        };
        let Some(prunable) = and(prunable) else {
            return Ok(Transformed::no(node));
        };
        let below = !under_filter.contains(&address(&node));
        // Into the scan, what Parquet can skip row groups and pages by: the bounds and
        // short key lists. A long list or a bloom filter would only be carried along,
        // in every task's plan.
        let started = std::time::Instant::now();
        let pushed = FilterPushdown::new().optimize(
            Arc::new(FilterExec::try_new(prunable, node)?),
            &ConfigOptions::default(),
        )?;
        tracing::debug!(
            stage,
            pushdown_us = started.elapsed().as_micros() as u64,
            "runtime filters pushed into a scan"
        );
        let scan = match pushed.downcast_ref::<FilterExec>() {
            Some(f) => f.input().clone(),
            None => pushed,
        };
        let Some(predicate) = and(rows) else {
            return Ok(Transformed::yes(scan));
        };
        if below {
            return Ok(Transformed::yes(Arc::new(FilterExec::try_new(
                predicate, scan,
            )?)));
        }
        pending.insert(address(&scan), predicate);
        Ok(Transformed::yes(scan))
    })?;
    Ok(rewritten.data)
}

/// The longest key list a Parquet scan prunes row groups with (DataFusion's pruning
/// rewrites `IN` lists up to 20 values); a longer one is a [`KeySetExpr`].
const PRUNABLE_LIST: usize = 20;

/// A runtime filter's predicate on a scan's output.
struct Predicate {
    /// The keys' bounds (`false` when there are none).
    bounds: Arc<dyn PhysicalExpr>,
    /// A short key list, which Parquet pruning can use too.
    list: Option<Arc<dyn PhysicalExpr>>,
    /// A long key list or a bloom filter, for the rows themselves.
    members: Option<Arc<dyn PhysicalExpr>>,
}

impl Predicate {
    /// What Parquet pruning can use: the bounds and a short list.
    fn prunable(&self) -> Arc<dyn PhysicalExpr> {
        let and = |a, b| Arc::new(BinaryExpr::new(a, Operator::And, b)) as Arc<dyn PhysicalExpr>;
        match &self.list {
            Some(list) => and(self.bounds.clone(), list.clone()),
            None => self.bounds.clone(),
        }
    }

    fn whole(self) -> Arc<dyn PhysicalExpr> {
        let prunable = self.prunable();
        match self.members {
            Some(members) => Arc::new(BinaryExpr::new(prunable, Operator::And, members)),
            None => prunable,
        }
    }
}

/// The predicate of filter `f` on `scan`'s output, from its build stage's outputs.
fn predicate(
    scan: &Arc<dyn ExecutionPlan>,
    f: &RuntimeFilter,
    outputs: &[Option<MapOutput>],
) -> Result<Option<Predicate>> {
    let schema = scan.schema();
    let Some(field) = schema.fields().get(f.column) else {
        return Ok(None);
    };
    if field.data_type().is_floating() {
        // -0.0 and 0.0, and NaNs: equality that bytes and bounds do not follow.
        return Ok(None);
    }
    let mut values = KeyValues::try_new(field.data_type())?;
    if f.target == f.join_stage {
        // Only pruning: the bounds and a short list; merging the build side's hashes
        // for a bloom filter would be wasted.
        values = values.without_hashes();
    }
    for (m, output) in outputs.iter().enumerate() {
        let Some(summary) = output
            .as_ref()
            .and_then(|o| o.keys.iter().find(|k| k.column == f.source_column))
        else {
            return Ok(None);
        };
        let what = format!("stage {} map output {m}", f.source);
        if let Err(e) = values.merge(summary, &what) {
            // Another type than the probe column's (or a damaged summary): no filter.
            tracing::warn!(error = %e, "runtime filter left out");
            return Ok(None);
        }
    }
    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), f.column));
    let Some((min, max)) = values.bounds()? else {
        // No build row has a key: no probe row can match.
        return Ok(Some(Predicate {
            bounds: lit(false),
            list: None,
            members: None,
        }));
    };
    let compare =
        |op, v| -> Arc<dyn PhysicalExpr> { Arc::new(BinaryExpr::new(column.clone(), op, lit(v))) };
    let bounds: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        compare(Operator::GtEq, min),
        Operator::And,
        compare(Operator::LtEq, max),
    ));
    let mut list = None;
    let members: Option<Arc<dyn PhysicalExpr>> = match values.distinct_count() {
        // A short list Parquet pruning can use, as `IN` literals.
        Some(n) if n > 2 && n <= PRUNABLE_LIST => {
            let distinct = listed(&values)?;
            let keys = (0..distinct.len())
                .map(|i| ScalarValue::try_from_array(&distinct, i).map(lit))
                .collect::<std::result::Result<_, _>>()?;
            list =
                Some(in_list(column.clone(), keys, &false, &schema).map_err(|e| {
                    EmberError::Internal(format!("runtime filter on {}: {e}", f.name))
                })?);
            None
        }
        // The join right above probes the rows with the keys itself.
        _ if f.target == f.join_stage => None,
        Some(n) if n > PRUNABLE_LIST => {
            Some(Arc::new(KeySetExpr::new(column.clone(), listed(&values)?))
                as Arc<dyn PhysicalExpr>)
        }
        Some(_) => None,
        None => values
            .bloom_filter()
            .map(|b| Arc::new(KeyFilterExpr::new(column.clone(), b)) as Arc<dyn PhysicalExpr>),
    };
    Ok(Some(Predicate {
        bounds,
        list,
        members,
    }))
}

/// The distinct keys of `values`, which has listed them.
fn listed(values: &KeyValues) -> Result<ArrayRef> {
    values
        .distinct()?
        .ok_or_else(|| EmberError::Internal("runtime filter keys were not listed".into()))
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::displayable;
    use ember_core::shuffle::ShuffleData;

    use super::*;

    /// The row filter `apply` puts over a scan of `k` when a build stage held 100
    /// keys, with the join in stage `join_stage` (the scan is in stage 2).
    fn applied(join_stage: usize) -> String {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let scan = MemorySourceConfig::try_new_exec(&[vec![]], schema, None).unwrap()
            as Arc<dyn ExecutionPlan>;
        let filter = RuntimeFilter {
            source: 1,
            source_column: 0,
            target: 2,
            scan: address(&scan),
            column: 0,
            name: "k".into(),
            source_name: "b".into(),
            join_stage,
        };
        let mut keys = KeyValues::try_new(&DataType::Int64).unwrap();
        let build: ArrayRef = Arc::new(Int64Array::from_iter_values((0..100).map(|k| k * 7)));
        keys.update(&build).unwrap();
        let output = MapOutput {
            executor_id: "local".into(),
            executor_address: String::new(),
            data: ShuffleData::File("/nonexistent".into()),
            partitions: vec![],
            keys: vec![keys.summary(0).unwrap()],
        };
        let outputs = |_| vec![Some(output.clone())];
        let plan = apply(scan, 2, &[filter], &outputs).unwrap();
        displayable(plan.as_ref()).indent(true).to_string()
    }

    #[test]
    fn a_scan_the_join_probes_right_after_gets_no_row_filter() {
        let own = applied(2);
        assert!(!own.contains("FilterExec"), "{own}");
        let elsewhere = applied(3);
        assert!(elsewhere.contains("k@0 >= 0 AND k@0 <= 693"), "{elsewhere}");
        assert!(elsewhere.contains("IN (100 KEYS)"), "{elsewhere}");
    }
}

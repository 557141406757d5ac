//! The plan codec: ember's physical operators in `datafusion-proto` bytes.
//! ([`encode_plan`] and [`decode_plan`] are `ember_core::codec`'s, re-exported.)
//!
//! Every stage plan goes through [`encode_plan`] before it runs, in local mode as in a
//! cluster, so a plan that cannot travel fails in the first test rather than on the
//! first cluster. A local task runs a fresh copy of the plan itself rather than
//! decoding it, except in debug builds, where it also decodes the bytes to check them.
//! ember's own nodes are `ExtensionNode` messages of `proto/ember.proto`; everything
//! else is DataFusion's own encoding.

use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{
    AcrossPartitions, ConstExpr, EquivalenceProperties, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::{ExecutionPlan, Partitioning, replace_children_if_necessary};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use prost::Message;

pub use ember_core::codec::{decode_plan, encode_plan};

use crate::batch_fn::{BatchFnRegistry, MapBatchesExec};
use crate::key_filter::{KeyFilterExpr, KeySetExpr};
use crate::proto::{self, extension_node::Node};
use crate::shuffle::{
    MapOutputKey, PartitionLocation, PartitionStats, ShuffleData, ShuffleReaderExec,
    ShuffleWriterExec, UnresolvedShuffleExec,
};
use ember_core::keys::BloomFilter;

/// Encodes and decodes ember's extension nodes. Holds the batch-function registry so a
/// decoded `MapBatchesExec` gets the executor's own function.
///
/// In local mode the codec also has an [`InProcessPlans`] table: an operator that
/// `datafusion-proto` cannot encode (an `information_schema` scan, a streaming table,
/// an insert into a memory table) travels as a reference into that table, since its
/// task runs in the same process; its children still travel as plan bytes.
/// Without the table (a cluster) such a plan is an error that names the operator.
#[derive(Debug, Clone, Default)]
pub struct EmberCodec {
    batch_fns: Arc<BatchFnRegistry>,
    in_process: Option<Arc<InProcessPlans>>,
}

impl EmberCodec {
    pub fn new(batch_fns: Arc<BatchFnRegistry>) -> Self {
        EmberCodec {
            batch_fns,
            in_process: None,
        }
    }

    /// Forgets plans shared by reference; call when no job is running.
    pub fn clear_in_process(&self) {
        if let Some(p) = &self.in_process {
            p.clear();
        }
    }

    /// A codec for executors in this process, which may share plans by reference.
    pub fn in_process(batch_fns: Arc<BatchFnRegistry>, plans: Arc<InProcessPlans>) -> Self {
        EmberCodec {
            batch_fns,
            in_process: Some(plans),
        }
    }
}

/// Leaves shared by reference between a local driver and its in-process executors.
#[derive(Debug, Default)]
pub struct InProcessPlans {
    plans: parking_lot::Mutex<std::collections::HashMap<u64, Arc<dyn ExecutionPlan>>>,
    next: std::sync::atomic::AtomicU64,
}

impl InProcessPlans {
    fn insert(&self, plan: Arc<dyn ExecutionPlan>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.plans.lock().insert(id, plan);
        id
    }

    fn get(&self, id: u64) -> Option<Arc<dyn ExecutionPlan>> {
        self.plans.lock().get(&id).cloned()
    }

    /// Forgets every shared plan (when no job is running any more).
    pub fn clear(&self) {
        self.plans.lock().clear();
    }
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("ember codec: cannot decode {what}: {e}"))
}

fn encode_schema(schema: &Schema) -> DFResult<Vec<u8>> {
    let proto: datafusion_proto::protobuf::Schema = schema
        .try_into()
        .map_err(|e| DataFusionError::Internal(format!("ember codec: encoding schema: {e}")))?;
    Ok(proto.encode_to_vec())
}

fn decode_schema(bytes: &[u8]) -> DFResult<SchemaRef> {
    let proto =
        datafusion_proto::protobuf::Schema::decode(bytes).map_err(|e| decode_err("schema", e))?;
    let schema: Schema = (&proto).try_into().map_err(|e| decode_err("schema", e))?;
    Ok(Arc::new(schema))
}

impl EmberCodec {
    fn encode_partitioning(
        &self,
        p: Option<&Partitioning>,
    ) -> DFResult<proto::ExchangePartitioning> {
        Ok(match p {
            Some(Partitioning::Hash(exprs, n)) => proto::ExchangePartitioning {
                hash_exprs: exprs
                    .iter()
                    .map(|e| serialize_physical_expr(e, self).map(|n| n.encode_to_vec()))
                    .collect::<DFResult<_>>()?,
                num_partitions: *n as u32,
            },
            Some(Partitioning::UnknownPartitioning(n)) => proto::ExchangePartitioning {
                hash_exprs: vec![],
                num_partitions: *n as u32,
            },
            Some(other) => {
                return Err(DataFusionError::NotImplemented(format!(
                    "ember codec: exchange partitioning {other:?}"
                )));
            }
            None => proto::ExchangePartitioning::default(),
        })
    }

    fn decode_exprs(
        &self,
        p: &proto::ExchangePartitioning,
        ctx: &TaskContext,
        schema: &Schema,
    ) -> DFResult<Vec<Arc<dyn PhysicalExpr>>> {
        p.hash_exprs
            .iter()
            .map(|b| {
                let node = datafusion_proto::protobuf::PhysicalExprNode::decode(b.as_slice())
                    .map_err(|e| decode_err("hash expression", e))?;
                parse_physical_expr(&node, ctx, schema, self)
            })
            .collect()
    }

    fn encode_expr(&self, e: &Arc<dyn PhysicalExpr>) -> DFResult<Vec<u8>> {
        Ok(serialize_physical_expr(e, self)?.encode_to_vec())
    }

    fn decode_expr(
        &self,
        bytes: &[u8],
        ctx: &TaskContext,
        schema: &Schema,
    ) -> DFResult<Arc<dyn PhysicalExpr>> {
        let node = datafusion_proto::protobuf::PhysicalExprNode::decode(bytes)
            .map_err(|e| decode_err("boundary expression", e))?;
        parse_physical_expr(&node, ctx, schema, self)
    }

    /// A stage boundary's equivalence properties (see `shuffle::after_hash_exchange`).
    fn encode_facts(&self, facts: &EquivalenceProperties) -> DFResult<proto::BoundaryFacts> {
        let constants = facts
            .constants()
            .into_iter()
            .map(|c| {
                let (uniform, value) = match &c.across_partitions {
                    AcrossPartitions::Heterogeneous => (false, None),
                    AcrossPartitions::Uniform(None) => (true, None),
                    AcrossPartitions::Uniform(Some(v)) => {
                        let v: datafusion_proto::protobuf::ScalarValue = v.try_into()?;
                        (true, Some(v.encode_to_vec()))
                    }
                };
                Ok(proto::ConstantFact {
                    expr: self.encode_expr(&c.expr)?,
                    uniform,
                    value,
                })
            })
            .collect::<DFResult<_>>()?;
        let orderings = facts
            .oeq_class()
            .iter()
            .map(|ordering| {
                let exprs = ordering
                    .iter()
                    .map(|s| {
                        Ok(proto::SortFact {
                            expr: self.encode_expr(&s.expr)?,
                            descending: s.options.descending,
                            nulls_first: s.options.nulls_first,
                        })
                    })
                    .collect::<DFResult<_>>()?;
                Ok(proto::OrderingFact { exprs })
            })
            .collect::<DFResult<_>>()?;
        let classes = facts
            .eq_group()
            .iter()
            .filter(|class| class.len() > 1)
            .map(|class| {
                let exprs = class
                    .iter()
                    .map(|e| self.encode_expr(e))
                    .collect::<DFResult<_>>()?;
                Ok(proto::EqualExprs { exprs })
            })
            .collect::<DFResult<_>>()?;
        Ok(proto::BoundaryFacts {
            constants,
            orderings,
            classes,
        })
    }

    fn decode_facts(
        &self,
        facts: Option<&proto::BoundaryFacts>,
        ctx: &TaskContext,
        schema: SchemaRef,
    ) -> DFResult<EquivalenceProperties> {
        let mut out = EquivalenceProperties::new(schema.clone());
        let Some(facts) = facts else {
            return Ok(out);
        };
        for class in &facts.classes {
            let exprs = class
                .exprs
                .iter()
                .map(|e| self.decode_expr(e, ctx, &schema))
                .collect::<DFResult<Vec<_>>>()?;
            if let Some((first, rest)) = exprs.split_first() {
                for e in rest {
                    out.add_equal_conditions(first.clone(), e.clone())?;
                }
            }
        }
        let constants = facts
            .constants
            .iter()
            .map(|c| {
                let across = match (&c.value, c.uniform) {
                    (_, false) => AcrossPartitions::Heterogeneous,
                    (None, true) => AcrossPartitions::Uniform(None),
                    (Some(v), true) => {
                        let v = datafusion_proto::protobuf::ScalarValue::decode(v.as_slice())
                            .map_err(|e| decode_err("boundary constant", e))?;
                        AcrossPartitions::Uniform(Some(
                            (&v).try_into()
                                .map_err(|e| decode_err("boundary constant", format!("{e:?}")))?,
                        ))
                    }
                };
                Ok(ConstExpr::new(
                    self.decode_expr(&c.expr, ctx, &schema)?,
                    across,
                ))
            })
            .collect::<DFResult<Vec<_>>>()?;
        out.add_constants(constants)?;
        let orderings = facts
            .orderings
            .iter()
            .map(|o| {
                o.exprs
                    .iter()
                    .map(|s| {
                        Ok(PhysicalSortExpr::new(
                            self.decode_expr(&s.expr, ctx, &schema)?,
                            SortOptions {
                                descending: s.descending,
                                nulls_first: s.nulls_first,
                            },
                        ))
                    })
                    .collect::<DFResult<Vec<_>>>()
            })
            .collect::<DFResult<Vec<_>>>()?;
        out.add_orderings(orderings);
        Ok(out)
    }

    /// Reader-side partitioning: `Hash` when there are expressions, else one reader
    /// partition per map task.
    fn decode_reader_partitioning(
        &self,
        p: Option<&proto::ExchangePartitioning>,
        ctx: &TaskContext,
        schema: &Schema,
    ) -> DFResult<Partitioning> {
        let p = p.ok_or_else(|| decode_err("exchange", "missing partitioning"))?;
        let exprs = self.decode_exprs(p, ctx, schema)?;
        let n = p.num_partitions as usize;
        Ok(if exprs.is_empty() {
            Partitioning::UnknownPartitioning(n)
        } else {
            Partitioning::Hash(exprs, n)
        })
    }
}

fn location_to_proto(l: &PartitionLocation) -> proto::ShuffleLocation {
    proto::ShuffleLocation {
        map_partition: l.map_partition as u32,
        reduce_partition: l.reduce_partition as u32,
        executor_id: l.executor_id.clone(),
        executor_address: l.executor_address.clone(),
        data: Some(match &l.data {
            ShuffleData::Memory(k) => proto::shuffle_location::Data::Memory(proto::MemoryKey {
                job_id: k.job,
                stage_id: k.stage as u32,
                map_partition: k.map_partition as u32,
                token: k.token,
            }),
            ShuffleData::File(p) => proto::shuffle_location::Data::Path(p.display().to_string()),
        }),
        range: Some(proto::PartitionRange {
            offset: l.stats.offset,
            length: l.stats.length,
            rows: l.stats.rows,
        }),
    }
}

fn location_from_proto(l: &proto::ShuffleLocation) -> DFResult<PartitionLocation> {
    let data = match &l.data {
        Some(proto::shuffle_location::Data::Memory(k)) => ShuffleData::Memory(MapOutputKey {
            job: k.job_id,
            stage: k.stage_id as usize,
            map_partition: k.map_partition as usize,
            token: k.token,
        }),
        Some(proto::shuffle_location::Data::Path(p)) => ShuffleData::File(p.into()),
        None => return Err(decode_err("shuffle location", "no data location")),
    };
    let range = l.range.unwrap_or_default();
    Ok(PartitionLocation {
        map_partition: l.map_partition as usize,
        reduce_partition: l.reduce_partition as usize,
        executor_id: l.executor_id.clone(),
        executor_address: l.executor_address.clone(),
        data,
        stats: PartitionStats {
            offset: range.offset,
            length: range.length,
            rows: range.rows,
        },
    })
}

/// The tag of a [`KeyFilterExpr`] among the extension expressions.
const KEY_FILTER_TAG: &[u8] = b"ember.key_filter.1:";
/// The tag of a [`KeySetExpr`]; its keys follow as an Arrow IPC stream of one column.
const KEY_SET_TAG: &[u8] = b"ember.key_set.1:";

impl PhysicalExtensionCodec for EmberCodec {
    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        _ctx: &datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx<
            '_,
        >,
    ) -> DFResult<()> {
        if let Some(filter) = node.downcast_ref::<KeyFilterExpr>() {
            buf.extend_from_slice(KEY_FILTER_TAG);
            buf.extend_from_slice(&filter.filter().to_bytes());
            return Ok(());
        }
        if let Some(set) = node.downcast_ref::<KeySetExpr>() {
            let values = set.values();
            let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
                "key",
                values.data_type().clone(),
                true,
            )]));
            let batch =
                arrow::record_batch::RecordBatch::try_new(schema.clone(), vec![values.clone()])?;
            buf.extend_from_slice(KEY_SET_TAG);
            buf.extend_from_slice(&ember_core::convert::ipc_stream(&schema, &[batch])?);
            return Ok(());
        }
        Err(DataFusionError::Internal(format!(
            "ember codec: no encoding of expression {node}"
        )))
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        _ctx: &datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx<
            '_,
        >,
    ) -> DFResult<Arc<dyn PhysicalExpr>> {
        let [key] = inputs else {
            return Err(decode_err(
                "extension expression",
                format!("a key filter has one input, not {}", inputs.len()),
            ));
        };
        if let Some(bits) = buf.strip_prefix(KEY_FILTER_TAG) {
            let filter = BloomFilter::from_bytes(bits).map_err(|e| decode_err("key filter", e))?;
            return Ok(Arc::new(KeyFilterExpr::new(key.clone(), filter)));
        }
        if let Some(ipc) = buf.strip_prefix(KEY_SET_TAG) {
            let (_, batches) = ember_core::convert::read_ipc_stream(ipc, "key set")
                .map_err(|e| decode_err("key set", e))?;
            let [batch] = batches.as_slice() else {
                return Err(decode_err(
                    "key set",
                    format!("{} batches, not one", batches.len()),
                ));
            };
            if batch.num_columns() != 1 {
                return Err(decode_err(
                    "key set",
                    format!("{} columns, not one", batch.num_columns()),
                ));
            }
            return Ok(Arc::new(KeySetExpr::new(
                key.clone(),
                batch.column(0).clone(),
            )));
        }
        Err(decode_err("extension expression", "not a key filter"))
    }

    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let node =
            proto::ExtensionNode::decode(buf).map_err(|e| decode_err("ember plan node", e))?;
        let one_input = || {
            inputs
                .first()
                .cloned()
                .ok_or_else(|| decode_err("ember plan node", "missing input"))
        };
        match node.node {
            Some(Node::ShuffleWriter(w)) => {
                let input = one_input()?;
                let p = w.partitioning.unwrap_or_default();
                let exprs = self.decode_exprs(&p, ctx, &input.schema())?;
                let partitioning = (!exprs.is_empty())
                    .then(|| Partitioning::Hash(exprs, p.num_partitions as usize));
                let width = input.schema().fields().len();
                let summarize: Vec<usize> = w.summarize.iter().map(|c| *c as usize).collect();
                if let Some(c) = summarize.iter().find(|c| **c >= width) {
                    return Err(decode_err(
                        "ember plan node",
                        format!("shuffle writer summarizes column {c} of {width}"),
                    ));
                }
                Ok(Arc::new(
                    ShuffleWriterExec::try_new(w.job_id, w.stage_id as usize, input, partitioning)?
                        .summarizing(summarize),
                ))
            }
            Some(Node::UnresolvedShuffle(u)) => {
                let schema = decode_schema(&u.schema)?;
                let partitioning =
                    self.decode_reader_partitioning(u.partitioning.as_ref(), ctx, &schema)?;
                let facts = self.decode_facts(u.facts.as_ref(), ctx, schema)?;
                Ok(Arc::new(UnresolvedShuffleExec::new(
                    u.stage_id as usize,
                    partitioning,
                    facts,
                )))
            }
            Some(Node::ShuffleReader(r)) => {
                let schema = decode_schema(&r.schema)?;
                let partitioning =
                    self.decode_reader_partitioning(r.partitioning.as_ref(), ctx, &schema)?;
                let partitions = r
                    .partitions
                    .iter()
                    .map(|p| p.locations.iter().map(location_from_proto).collect())
                    .collect::<DFResult<_>>()?;
                let facts = self.decode_facts(r.facts.as_ref(), ctx, schema)?;
                Ok(Arc::new(ShuffleReaderExec::new(
                    r.stage_id as usize,
                    partitioning,
                    partitions,
                    facts,
                )))
            }
            Some(Node::MapBatches(m)) => {
                let func = self.batch_fns.get(&m.name).ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "batch function '{}' is not registered on this executor (registered: {:?})",
                        m.name,
                        self.batch_fns.names()
                    ))
                })?;
                Ok(Arc::new(MapBatchesExec::new(func, one_input()?)))
            }
            Some(Node::InProcess(id)) => {
                let node = self
                    .in_process
                    .as_ref()
                    .and_then(|p| p.get(id))
                    .ok_or_else(|| {
                        decode_err("in-process plan", format!("no plan {id} in this process"))
                    })?;
                // Its children travelled as ordinary plan bytes.
                if inputs.is_empty() {
                    Ok(node)
                } else {
                    replace_children_if_necessary(node, inputs.to_vec())
                }
            }
            Some(Node::KafkaScan(k)) => Ok(Arc::new(crate::kafka_scan::KafkaScanExec::new(
                k.bootstrap,
                k.ranges
                    .into_iter()
                    .map(|r| crate::kafka_scan::KafkaRange {
                        topic: r.topic,
                        partition: r.partition,
                        from: r.from,
                        to: r.to,
                    })
                    .collect(),
                k.fail_on_data_loss,
            ))),
            Some(Node::Stateful(n)) => {
                let config = serde_json::from_str(&n.config)
                    .map_err(|e| decode_err("stateful operator", e))?;
                let aggregates = if n.aggregates.is_empty() {
                    crate::stateful::Aggregates::default()
                } else {
                    let carrier =
                        physical_plan_from_bytes_with_extension_codec(&n.aggregates, ctx, self)?;
                    crate::stateful::Aggregates::from_carrier(&carrier)
                        .map_err(|e| decode_err("stateful operator", e))?
                };
                Ok(Arc::new(
                    crate::stateful::exec::StatefulExec::try_new(
                        one_input()?,
                        config,
                        aggregates,
                        decode_schema(&n.schema)?,
                    )
                    .map_err(|e| decode_err("stateful operator", e))?,
                ))
            }
            Some(Node::StreamJoin(n)) => {
                let [left, right] = inputs else {
                    return Err(decode_err("stream-stream join", "not two inputs"));
                };
                if n.left_keys.len() != n.right_keys.len() {
                    return Err(decode_err(
                        "stream-stream join",
                        format!(
                            "{} left keys and {} right keys",
                            n.left_keys.len(),
                            n.right_keys.len()
                        ),
                    ));
                }
                let config = serde_json::from_str(&n.config)
                    .map_err(|e| decode_err("stream-stream join", e))?;
                let schema = decode_schema(&n.schema)?;
                let expr = |b: &[u8], schema: &Schema| {
                    let node = datafusion_proto::protobuf::PhysicalExprNode::decode(b)
                        .map_err(|e| decode_err("join expression", e))?;
                    parse_physical_expr(&node, ctx, schema, self)
                };
                let on = n
                    .left_keys
                    .iter()
                    .zip(&n.right_keys)
                    .map(|(l, r)| Ok((expr(l, &left.schema())?, expr(r, &right.schema())?)))
                    .collect::<DFResult<Vec<_>>>()?;
                let filter = (!n.filter.is_empty())
                    .then(|| expr(&n.filter, &schema))
                    .transpose()?;
                Ok(Arc::new(
                    crate::stateful::join::StreamJoinExec::try_new(
                        left.clone(),
                        right.clone(),
                        on,
                        filter,
                        config,
                        schema,
                    )
                    .map_err(|e| decode_err("stream-stream join", e))?,
                ))
            }
            None => Err(decode_err("ember plan node", "empty node")),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<()> {
        let msg = if let Some(w) = node.downcast_ref::<ShuffleWriterExec>() {
            Node::ShuffleWriter(proto::ShuffleWriterNode {
                job_id: w.job_id(),
                stage_id: w.stage_id() as u32,
                partitioning: Some(self.encode_partitioning(w.shuffle_partitioning())?),
                summarize: w.summarized().iter().map(|c| *c as u32).collect(),
            })
        } else if let Some(u) = node.downcast_ref::<UnresolvedShuffleExec>() {
            Node::UnresolvedShuffle(proto::UnresolvedShuffleNode {
                stage_id: u.stage_id() as u32,
                schema: encode_schema(&u.schema())?,
                partitioning: Some(self.encode_partitioning(Some(u.exchange_partitioning()))?),
                num_partitions: u.exchange_partitioning().partition_count() as u32,
                facts: Some(self.encode_facts(u.properties().equivalence_properties())?),
            })
        } else if let Some(r) = node.downcast_ref::<ShuffleReaderExec>() {
            Node::ShuffleReader(proto::ShuffleReaderNode {
                stage_id: r.stage_id() as u32,
                schema: encode_schema(&r.schema())?,
                partitioning: Some(self.encode_partitioning(Some(r.exchange_partitioning()))?),
                partitions: r
                    .partition_locations()
                    .iter()
                    .map(|p| proto::ReaderPartition {
                        locations: p.iter().map(location_to_proto).collect(),
                    })
                    .collect(),
                facts: Some(self.encode_facts(r.properties().equivalence_properties())?),
            })
        } else if let Some(k) = node.downcast_ref::<crate::kafka_scan::KafkaScanExec>() {
            Node::KafkaScan(proto::KafkaScanNode {
                bootstrap: k.bootstrap.clone(),
                ranges: k
                    .ranges
                    .iter()
                    .map(|r| proto::KafkaRangeProto {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        from: r.from,
                        to: r.to,
                    })
                    .collect(),
                fail_on_data_loss: k.fail_on_data_loss,
            })
        } else if let Some(st) = node.downcast_ref::<crate::stateful::exec::StatefulExec>() {
            Node::Stateful(proto::StatefulNode {
                config: serde_json::to_string(st.config())
                    .map_err(|e| DataFusionError::Internal(format!("ember codec: {e}")))?,
                schema: encode_schema(&st.schema())?,
                aggregates: if st.aggregates().is_empty() {
                    vec![]
                } else {
                    let carrier = st
                        .aggregates()
                        .carrier(st.input().schema())
                        .map_err(|e| DataFusionError::Internal(format!("ember codec: {e}")))?;
                    physical_plan_to_bytes_with_extension_codec(carrier, self)?.to_vec()
                },
            })
        } else if let Some(j) = node.downcast_ref::<crate::stateful::join::StreamJoinExec>() {
            let expr = |e: &Arc<dyn PhysicalExpr>| {
                serialize_physical_expr(e, self).map(|n| n.encode_to_vec())
            };
            Node::StreamJoin(proto::StreamJoinNode {
                config: serde_json::to_string(j.config())
                    .map_err(|e| DataFusionError::Internal(format!("ember codec: {e}")))?,
                schema: encode_schema(&j.schema())?,
                left_keys: j.keys(0).iter().map(expr).collect::<DFResult<_>>()?,
                right_keys: j.keys(1).iter().map(expr).collect::<DFResult<_>>()?,
                filter: j.filter().map(expr).transpose()?.unwrap_or_default(),
            })
        } else if let Some(m) = node.downcast_ref::<MapBatchesExec>() {
            Node::MapBatches(proto::MapBatchesNode {
                name: m.func().name.clone(),
                schema: encode_schema(&m.schema())?,
            })
        } else if let Some(plans) = self.in_process.as_ref() {
            Node::InProcess(plans.insert(node))
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot be sent to an executor: ember's plan codec does not encode it",
                node.name()
            )));
        };
        proto::ExtensionNode { node: Some(msg) }
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("ember codec: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz finding plan/0fa5aa8fe1e44120: an Avro scan makes datafusion-proto panic
    /// (ember builds it without the `avro` feature); decode_plan turns the panic into
    /// an error instead of losing the executor.
    #[test]
    fn plan_0fa5aa8fe1e44120_an_avro_scan_is_an_error_not_a_panic() {
        let bytes: &[u8] = &[
            0x8a, 0x01, 0x3b, 0x0a, 0x1f, 0x8a, 0x02, 0x1c, 0x0a, 0x0d, 0x0a, 0x0b, 0x0a, 0x05,
            0x76, 0x61, 0x6c, 0x75, 0x65, 0x12, 0x02, 0x52, 0x00, 0x10, 0x80, 0x40, 0x22, 0x08,
            0x08, 0x01, 0x10, 0x64, 0x18, 0x01, 0x20, 0x01, 0x0a, 0x18, 0x22, 0x16, 0x0a, 0x07,
            0xda, 0x01, 0x04, 0x0a, 0x00, 0x10, 0x01, 0x12, 0x04, 0x12, 0x02, 0x38, 0x2a, 0x1a,
            0x05, 0x76, 0x61, 0x6c, 0x75, 0x65,
        ];
        let e = decode_plan(bytes, &TaskContext::default(), &EmberCodec::default())
            .expect_err("an error");
        assert!(e.to_string().contains("the plan decoder failed"), "{e}");
    }

    /// A memory scan whose IPC data claims 2 GiB of metadata in its first bytes is an
    /// error naming the partition, before datafusion-proto reads it.
    #[test]
    fn in_memory_data_of_a_plan_is_checked_before_datafusion_proto_reads_it() {
        use datafusion_proto::protobuf::{
            MemoryScanExecNode, PhysicalPlanNode, physical_plan_node::PhysicalPlanType,
        };
        let node = PhysicalPlanNode {
            physical_plan_type: Some(PhysicalPlanType::MemoryScan(MemoryScanExecNode {
                partitions: vec![vec![], vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]],
                ..Default::default()
            })),
        };
        let e = decode_plan(
            &node.encode_to_vec(),
            &TaskContext::default(),
            &EmberCodec::default(),
        )
        .expect_err("an error");
        let e = e.to_string();
        assert!(
            e.contains("plan partition 1: IPC message 0 at byte 0"),
            "{e}"
        );
    }
}

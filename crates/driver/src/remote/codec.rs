//! How a client session's logical plan travels to the driver (datafusion-proto plus
//! this codec): in-memory tables with their rows, `map_batches` nodes by name, and
//! user functions by name with the types of their calls, so that a driver without
//! the user's code can plan them (its executors run them).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, TableReference};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, Extension, LogicalPlan, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use ember_core::convert::{ipc_stream, read_ipc_stream};
use prost::Message;

use crate::engine::is_builtin;
use crate::map_batches::MapBatchesNode;
use crate::stream::StatefulNode;

const TAG_MAP_BATCHES: u8 = 1;
const TAG_MEM_TABLE: u8 = 2;
const TAG_KAFKA_RANGES: u8 = 3;
const TAG_STATEFUL: u8 = 4;
const TAG_CACHED_ON_DRIVER: u8 = 5;

/// A user function's calls in a plan: argument types and return type of each.
type CallTypes = BTreeSet<(Vec<DataType>, DataType)>;

#[derive(Debug, Default)]
pub(crate) struct EmberLogicalCodec {
    /// Encoding: the types of the user functions' calls in the plan.
    calls: HashMap<String, CallTypes>,
    /// Decoding: the user functions this side has itself.
    functions: HashMap<String, Arc<ScalarUDF>>,
}

impl EmberLogicalCodec {
    /// A codec to encode `plan`, which records the types of its user function calls.
    pub(crate) fn for_plan(plan: &LogicalPlan) -> Self {
        let mut calls: HashMap<String, CallTypes> = HashMap::new();
        let _ = plan.apply_with_subqueries(|node| {
            let inputs = node.inputs();
            let schema = match inputs.as_slice() {
                [] => node.schema().as_ref().clone(),
                [one] => one.schema().as_ref().clone(),
                many => {
                    let mut merged = DFSchema::empty();
                    for input in many {
                        merged.merge(input.schema());
                    }
                    merged
                }
            };
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && !is_builtin(f.func.name())
                        && let Ok(args) = f
                            .args
                            .iter()
                            .map(|a| a.get_type(&schema))
                            .collect::<DFResult<Vec<_>>>()
                        && let Ok(ret) = f.func.return_type(&args)
                    {
                        calls
                            .entry(f.func.name().to_string())
                            .or_default()
                            .insert((args, ret));
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
            Ok(TreeNodeRecursion::Continue)
        });
        EmberLogicalCodec {
            calls,
            functions: HashMap::new(),
        }
    }

    /// A codec to decode plans on a driver that has `functions` itself.
    pub(crate) fn decoding(functions: HashMap<String, Arc<ScalarUDF>>) -> Self {
        EmberLogicalCodec {
            calls: HashMap::new(),
            functions,
        }
    }
}

fn put_frame(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Splits `buf` into the frames [`put_frame`] wrote.
fn frames(mut buf: &[u8]) -> DFResult<Vec<&[u8]>> {
    let mut out = vec![];
    while !buf.is_empty() {
        let (len, rest) = buf
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("a truncated frame length"))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad("a frame length"))?;
        if rest.len() < len {
            return Err(bad("a truncated frame"));
        }
        out.push(&rest[..len]);
        buf = &rest[len..];
    }
    Ok(out)
}

/// A stateful node: its configuration (JSON), its schema, the qualifier of its
/// columns (empty for none), and an aggregation's functions.
fn encode_stateful(
    st: &StatefulNode,
    buf: &mut Vec<u8>,
    codec: &dyn LogicalExtensionCodec,
) -> DFResult<()> {
    buf.push(TAG_STATEFUL);
    let config = serde_json::to_vec(&st.config).map_err(|e| bad(&e.to_string()))?;
    put_frame(buf, &config);
    put_frame(buf, &schema_bytes(&Arc::new(st.schema.as_arrow().clone()))?);
    let qualifier = st
        .schema
        .iter()
        .next()
        .and_then(|(q, _)| q.map(|q| q.to_string()))
        .unwrap_or_default();
    put_frame(buf, qualifier.as_bytes());
    let aggregates = datafusion_proto::protobuf::LogicalExprList {
        expr: datafusion_proto::logical_plan::to_proto::serialize_exprs(&st.aggregates, codec)?,
    };
    put_frame(buf, &aggregates.encode_to_vec());
    Ok(())
}

fn decode_stateful(
    buf: &[u8],
    inputs: &[LogicalPlan],
    ctx: &TaskContext,
    codec: &dyn LogicalExtensionCodec,
) -> DFResult<Extension> {
    let [config, schema, qualifier, aggregates] = frames(buf)?[..] else {
        return Err(bad("a stateful node"));
    };
    let aggregates = datafusion_proto::protobuf::LogicalExprList::decode(aggregates)
        .map_err(|_| bad("a stateful node's aggregates"))?;
    let aggregates =
        datafusion_proto::logical_plan::from_proto::parse_exprs(&aggregates.expr, ctx, codec)?;
    let config =
        serde_json::from_slice(config).map_err(|_| bad("a stateful node's configuration"))?;
    let schema = read_schema(schema)?.as_ref().clone();
    let qualifier = std::str::from_utf8(qualifier).map_err(|_| bad("a qualifier"))?;
    let schema = if qualifier.is_empty() {
        DFSchema::try_from(schema)?
    } else {
        DFSchema::try_from_qualified_schema(qualifier, &schema)?
    };
    let input = inputs
        .first()
        .cloned()
        .ok_or_else(|| bad("a stateful node without input"))?;
    Ok(Extension {
        node: Arc::new(StatefulNode {
            input,
            aggregates,
            config,
            schema: Arc::new(schema),
        }),
    })
}

fn bad(what: &str) -> DataFusionError {
    DataFusionError::Plan(format!("could not decode a client's plan: {what}"))
}

fn schema_bytes(schema: &SchemaRef) -> DFResult<Vec<u8>> {
    ipc_stream(schema, &[]).map_err(Into::into)
}

fn read_schema(bytes: &[u8]) -> DFResult<SchemaRef> {
    Ok(read_ipc_stream(bytes, "a schema")?.0)
}

impl LogicalExtensionCodec for EmberLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DFResult<Extension> {
        let (tag, rest) = buf.split_first().ok_or_else(|| bad("an empty extension"))?;
        if *tag == TAG_STATEFUL {
            return decode_stateful(rest, inputs, ctx, self);
        }
        if *tag != TAG_MAP_BATCHES {
            return Err(bad(&format!("extension tag {tag}")));
        }
        let [name, schema] = frames(rest)?[..] else {
            return Err(bad("a map_batches node"));
        };
        let name = std::str::from_utf8(name).map_err(|_| bad("a batch function name"))?;
        let input = inputs
            .first()
            .cloned()
            .ok_or_else(|| bad("a map_batches node without input"))?;
        let node = MapBatchesNode::try_new(
            name.to_string(),
            input,
            &read_schema(schema)?.as_ref().clone(),
        )?;
        Ok(Extension {
            node: Arc::new(node),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DFResult<()> {
        if let Some(st) = node.node.as_any().downcast_ref::<StatefulNode>() {
            return encode_stateful(st, buf, self);
        }
        let Some(m) = node.node.as_any().downcast_ref::<MapBatchesNode>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "the plan node {} cannot be sent to a driver",
                node.node.name()
            )));
        };
        buf.push(TAG_MAP_BATCHES);
        put_frame(buf, m.name.as_bytes());
        put_frame(buf, &schema_bytes(&Arc::new(m.schema.as_arrow().clone()))?);
        Ok(())
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        _ctx: &TaskContext,
    ) -> DFResult<Arc<dyn TableProvider>> {
        let (tag, rest) = buf.split_first().ok_or_else(|| bad("an empty table"))?;
        if *tag == TAG_KAFKA_RANGES {
            return Ok(Arc::new(
                crate::stream::KafkaRangeTable::decode(rest)
                    .ok_or_else(|| bad("a Kafka source's offset ranges"))?,
            ));
        }
        if *tag == TAG_CACHED_ON_DRIVER {
            return Ok(Arc::new(super::CachedOnDriver {
                name: table_ref.table().to_string(),
                schema,
            }));
        }
        if *tag != TAG_MEM_TABLE {
            return Err(bad(&format!("table tag {tag}")));
        }
        let partitions = frames(rest)?
            .into_iter()
            .map(|f| Ok(read_ipc_stream(f, "an in-memory table")?.1))
            .collect::<DFResult<Vec<_>>>()?;
        Ok(Arc::new(MemTable::try_new(schema, partitions)?))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DFResult<()> {
        if let Some(kafka) = node.downcast_ref::<crate::stream::KafkaRangeTable>() {
            buf.push(TAG_KAFKA_RANGES);
            buf.extend_from_slice(&kafka.encode());
            return Ok(());
        }
        if node.downcast_ref::<super::CachedOnDriver>().is_some() {
            buf.push(TAG_CACHED_ON_DRIVER);
            return Ok(());
        }
        let Some(mem) = node.downcast_ref::<MemTable>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "table {table_ref} ({:?}) cannot be sent to a driver; register files (Parquet, CSV, JSON) instead",
                node.table_type()
            )));
        };
        buf.push(TAG_MEM_TABLE);
        let schema = mem.schema();
        for partition in &mem.batches {
            let batches = partition
                .try_read()
                .map_err(|_| bad("an in-memory table being written"))?;
            put_frame(buf, &ipc_stream(&schema, &batches)?);
        }
        Ok(())
    }

    /// `COPY ... TO` and `CREATE EXTERNAL TABLE` formats: a tag byte, then the
    /// options as DataFusion's codec for that format writes them.
    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        use datafusion_proto::logical_plan::file_formats as f;
        match buf.split_first() {
            Some((b'P', rest)) => f::ParquetLogicalExtensionCodec.try_decode_file_format(rest, ctx),
            Some((b'C', rest)) => f::CsvLogicalExtensionCodec.try_decode_file_format(rest, ctx),
            Some((b'J', rest)) => f::JsonLogicalExtensionCodec.try_decode_file_format(rest, ctx),
            Some((b'A', rest)) => f::ArrowLogicalExtensionCodec.try_decode_file_format(rest, ctx),
            _ => Err(DataFusionError::NotImplemented(
                "a file format ember does not know (expected Parquet, CSV, JSON or Arrow)".into(),
            )),
        }
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> DFResult<()> {
        use datafusion::datasource::file_format::{
            arrow::ArrowFormatFactory, csv::CsvFormatFactory, json::JsonFormatFactory,
            parquet::ParquetFormatFactory,
        };
        use datafusion_proto::logical_plan::file_formats as f;
        let codec: (u8, &dyn LogicalExtensionCodec) =
            if node.downcast_ref::<ParquetFormatFactory>().is_some() {
                (b'P', &f::ParquetLogicalExtensionCodec)
            } else if node.downcast_ref::<CsvFormatFactory>().is_some() {
                (b'C', &f::CsvLogicalExtensionCodec)
            } else if node.downcast_ref::<JsonFormatFactory>().is_some() {
                (b'J', &f::JsonLogicalExtensionCodec)
            } else if node.downcast_ref::<ArrowFormatFactory>().is_some() {
                (b'A', &f::ArrowLogicalExtensionCodec)
            } else {
                return Err(DataFusionError::NotImplemented(format!(
                    "sending the file format {} to a driver (Parquet, CSV, JSON and Arrow can be)",
                    node.get_ext()
                )));
            };
        buf.push(codec.0);
        codec.1.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<ScalarUDF>> {
        if let Some(f) = self.functions.get(name) {
            return Ok(f.clone());
        }
        if buf.is_empty() {
            return Err(DataFusionError::Plan(format!(
                "there is no function named '{name}'"
            )));
        }
        let calls = frames(buf)?
            .into_iter()
            .map(|f| {
                let schema = read_schema(f)?;
                let (ret, args) = schema
                    .fields()
                    .split_last()
                    .ok_or_else(|| bad("a function's types"))?;
                let args = args.iter().map(|a| a.data_type().clone()).collect();
                Ok((args, ret.data_type().clone()))
            })
            .collect::<DFResult<Vec<_>>>()?;
        Ok(Arc::new(ScalarUDF::new_from_impl(ExecutorUdf::new(
            name, calls,
        ))))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DFResult<()> {
        let Some(calls) = self.calls.get(node.name()) else {
            return Ok(()); // a built-in: the driver has it
        };
        for (args, ret) in calls {
            let fields: Vec<Field> = args
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("a{i}"), t.clone(), true))
                .chain(std::iter::once(Field::new("ret", ret.clone(), true)))
                .collect();
            put_frame(buf, &schema_bytes(&Arc::new(Schema::new(fields)))?);
        }
        Ok(())
    }
}

/// A user function the driver plans but only executors run: it knows the types of
/// the calls the client made. Volatile, so that the driver never folds a call into a
/// constant by running it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExecutorUdf {
    name: String,
    signature: Signature,
    calls: Vec<(Vec<DataType>, DataType)>,
}

impl ExecutorUdf {
    fn new(name: &str, calls: Vec<(Vec<DataType>, DataType)>) -> Self {
        let exact: Vec<TypeSignature> = calls
            .iter()
            .map(|(args, _)| TypeSignature::Exact(args.clone()))
            .collect();
        let signature = match exact.len() {
            1 => Signature::new(exact[0].clone(), Volatility::Volatile),
            _ => Signature::one_of(exact, Volatility::Volatile),
        };
        ExecutorUdf {
            name: name.to_string(),
            signature,
            calls,
        }
    }
}

impl ScalarUDFImpl for ExecutorUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        self.calls
            .iter()
            .find(|(args, _)| args.as_slice() == arg_types)
            .map(|(_, ret)| ret.clone())
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "function '{}' was not called with {arg_types:?} by the client",
                    self.name
                ))
            })
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        Err(DataFusionError::Execution(format!(
            "function '{}' runs on executors only",
            self.name
        )))
    }
}

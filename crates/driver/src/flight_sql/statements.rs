//! Prepared statements' parameters, and the handles our tickets carry.

use arrow::datatypes::{Field, Schema};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::{Any, CommandPreparedStatementQuery, TicketStatementQuery};
use arrow_flight::{IpcMessage, SchemaAsIpc};
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use ember_core::{EmberError, Result};
use prost::Message;

pub(super) fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| EmberError::Internal(format!("encoding a schema: {e}")))?;
    Ok(message.0)
}

/// The statement handle of a ticket of ours.
pub(super) fn statement_handle(ticket: &[u8]) -> Option<Vec<u8>> {
    let any = Any::decode(ticket).ok()?;
    if let Ok(Some(t)) = any.unpack::<TicketStatementQuery>() {
        return Some(t.statement_handle.to_vec());
    }
    if let Ok(Some(p)) = any.unpack::<CommandPreparedStatementQuery>() {
        return Some(p.prepared_statement_handle.to_vec());
    }
    None
}

/// `plan` with its placeholders `$1`, `$2`, ... set to the first row of `params`, each
/// cast to the type the plan expects there.
pub(super) fn bind(plan: LogicalPlan, params: &RecordBatch) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    let mut values = Vec::new();
    for (i, column) in params.columns().iter().enumerate() {
        if column.is_empty() {
            return Err(EmberError::Config(format!(
                "parameter ${} has no value",
                i + 1
            )));
        }
        let mut value = ScalarValue::try_from_array(column, 0)?;
        if let Some(Some(t)) = types.get(&format!("${}", i + 1))
            && value.data_type() != *t
        {
            value = value.cast_to(t)?;
        }
        values.push(value);
    }
    Ok(plan.with_param_values(values)?)
}

/// The schema of a plan's parameters: `$1`, `$2`, ... with the types they are
/// compared with (Null where none is known).
pub(super) fn parameter_schema(plan: &LogicalPlan) -> Result<Schema> {
    let types = plan.get_parameter_types()?;
    let mut names: Vec<&String> = types.keys().collect();
    names.sort_by_key(|n| {
        n.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let fields: Vec<Field> = names
        .into_iter()
        .map(|n| {
            let t = types[n].clone().unwrap_or(arrow::datatypes::DataType::Null);
            Field::new(n, t, true)
        })
        .collect();
    Ok(Schema::new(fields))
}

//! `from_json(value, 'schema', 'mode')`: parses JSON text (a string or binary column,
//! such as a log record's `value`) into a struct, with Spark's bad-record policies:
//!
//! - `PERMISSIVE`: a record that does not parse gives null fields and its text in the
//!   struct's `_corrupt_record` field;
//! - `DROPMALFORMED`: the same (`DataFrame::parse_json` then drops those rows);
//! - `FAILFAST`: the query fails, naming the record.
//!
//! The schema is a list like `device STRING, ts TIMESTAMP, temperature DOUBLE`. The
//! function is ember's own: every session and every executor has it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, StructArray, new_null_array};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// The field of a permissive parse that holds a record that did not parse.
pub const CORRUPT_RECORD: &str = "_corrupt_record";

/// Parses `name TYPE, name TYPE, ...` (Spark's DDL-style list) into fields.
pub fn parse_schema(ddl: &str) -> DFResult<Fields> {
    let mut fields = vec![];
    for part in ddl.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, ty) = part
            .split_once(char::is_whitespace)
            .ok_or_else(|| plan(format!("schema '{ddl}': '{part}' needs a name and a type")))?;
        let data_type = match ty.trim().to_ascii_uppercase().as_str() {
            "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
            "INT" | "INTEGER" => DataType::Int32,
            "BIGINT" | "LONG" => DataType::Int64,
            "DOUBLE" => DataType::Float64,
            "FLOAT" | "REAL" => DataType::Float32,
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "TIMESTAMP" => DataType::Timestamp(TimeUnit::Millisecond, None),
            "DATE" => DataType::Date32,
            other => {
                return Err(plan(format!(
                    "schema '{ddl}': unknown type {other} (STRING, INT, BIGINT, DOUBLE, FLOAT, BOOLEAN, TIMESTAMP, DATE)"
                )));
            }
        };
        fields.push(Field::new(name.trim(), data_type, true));
    }
    if fields.is_empty() {
        return Err(plan(format!("schema '{ddl}' has no fields")));
    }
    Ok(fields.into())
}

fn plan(message: String) -> DataFusionError {
    DataFusionError::Plan(format!("from_json: {message}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Permissive,
    DropMalformed,
    FailFast,
}

fn mode_of(s: &str) -> DFResult<Mode> {
    match s.to_ascii_uppercase().as_str() {
        "PERMISSIVE" => Ok(Mode::Permissive),
        "DROPMALFORMED" | "DROP" => Ok(Mode::DropMalformed),
        "FAILFAST" | "FAIL_FAST" => Ok(Mode::FailFast),
        other => Err(plan(format!(
            "mode {other}: expected PERMISSIVE, DROPMALFORMED or FAILFAST"
        ))),
    }
}

fn literal(args: &[Option<&ScalarValue>], i: usize, what: &str) -> DFResult<String> {
    match args.get(i).copied().flatten() {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
        _ => Err(plan(format!("the {what} must be a string literal"))),
    }
}

/// The struct a parse returns: the schema's fields plus `_corrupt_record`.
fn output_fields(schema: &Fields) -> Fields {
    let mut fields: Vec<FieldRef> = schema.iter().cloned().collect();
    fields.push(Arc::new(Field::new(CORRUPT_RECORD, DataType::Utf8, true)));
    fields.into()
}

/// The text a parse function reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object per value.
    Json,
    /// One CSV line per value, the schema's fields in order.
    Csv,
}

impl Format {
    fn function(self) -> &'static str {
        match self {
            Format::Json => "from_json",
            Format::Csv => "from_csv",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Csv => "CSV",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FromText {
    format: Format,
    signature: Signature,
}

/// The `from_json` function.
pub fn from_json_udf() -> ScalarUDF {
    parse_udf(Format::Json)
}

/// `from_json` or `from_csv`.
pub fn parse_udf(format: Format) -> ScalarUDF {
    ScalarUDF::new_from_impl(FromText {
        format,
        signature: Signature::any(3, Volatility::Immutable),
    })
}

impl ScalarUDFImpl for FromText {
    fn name(&self) -> &str {
        self.format.function()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DFResult<DataType> {
        Err(plan(
            "the return type depends on the schema argument".into(),
        ))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        let schema = parse_schema(&literal(args.scalar_arguments, 1, "schema")?)?;
        mode_of(&literal(args.scalar_arguments, 2, "mode")?)?;
        Ok(Arc::new(Field::new(
            self.format.function(),
            DataType::Struct(output_fields(&schema)),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let text = |i: usize| match &args.args[i] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
            _ => Err(plan("schema and mode must be string literals".into())),
        };
        let schema = parse_schema(&text(1)?)?;
        let mode = mode_of(&text(2)?)?;
        let values = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(parse_column(
            &values,
            &schema,
            mode,
            self.format,
        )?))
    }
}

/// Each row's bytes, or none for a null.
fn rows(values: &ArrayRef) -> DFResult<Vec<Option<&[u8]>>> {
    Ok(match values.data_type() {
        DataType::Binary => values.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => values.as_binary::<i64>().iter().collect(),
        DataType::Utf8 => values
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::as_bytes))
            .collect(),
        DataType::LargeUtf8 => values
            .as_string::<i64>()
            .iter()
            .map(|s| s.map(str::as_bytes))
            .collect(),
        DataType::Utf8View => values
            .as_string_view()
            .iter()
            .map(|s| s.map(str::as_bytes))
            .collect(),
        other => return Err(plan(format!("cannot parse JSON from a {other} column"))),
    })
}

fn parse_one(bytes: &[u8], schema: &Arc<Schema>, format: Format) -> Option<StructArray> {
    let trimmed = bytes.trim_ascii();
    let batch = match format {
        Format::Json => {
            if trimmed.first() != Some(&b'{') {
                return None;
            }
            let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                .build_decoder()
                .ok()?;
            if decoder.decode(trimmed).ok()? != trimmed.len() {
                return None;
            }
            decoder.flush().ok()??
        }
        Format::Csv => {
            if trimmed.is_empty() || trimmed.contains(&b'\n') {
                return None;
            }
            let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone()).build_decoder();
            let mut line = trimmed.to_vec();
            line.push(b'\n');
            if decoder.decode(&line).ok()? != line.len() {
                return None;
            }
            decoder.flush().ok()??
        }
    };
    (batch.num_rows() == 1).then(|| StructArray::from(batch))
}

/// Parses every row in one pass of arrow's decoder, when each non-null row is one
/// object (one line) of the schema; `None` when some row is not (the caller then goes
/// row by row).
fn parse_all(rows: &[Option<&[u8]>], schema: &Arc<Schema>, format: Format) -> Option<ArrayRef> {
    let mut text = Vec::with_capacity(rows.iter().map(|r| r.map_or(0, |b| b.len() + 1)).sum());
    let mut indices = Vec::with_capacity(rows.len());
    let mut objects = 0u32;
    for row in rows {
        match row {
            Some(b) => {
                let b = b.trim_ascii();
                // One object (line) per row: a row that is not `{...}` (or holds a line
                // break) could merge with the next.
                let one = match format {
                    Format::Json => b.first() == Some(&b'{') && b.last() == Some(&b'}'),
                    Format::Csv => !b.is_empty() && !b.contains(&b'\n'),
                };
                if !one {
                    return None;
                }
                text.extend_from_slice(b);
                text.push(b'\n');
                indices.push(Some(objects));
                objects += 1;
            }
            None => indices.push(None),
        }
    }
    let batch = match format {
        Format::Json => {
            let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(rows.len().max(1))
                .build_decoder()
                .ok()?;
            if decoder.decode(&text).ok()? != text.len() {
                return None;
            }
            decoder.flush().ok()?
        }
        Format::Csv => {
            let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_batch_size(rows.len().max(1))
                .build_decoder();
            if decoder.decode(&text).ok()? != text.len() {
                return None;
            }
            decoder.flush().ok()?
        }
    };
    let batch = match batch {
        Some(batch) => batch,
        None => RecordBatch::new_empty(schema.clone()),
    };
    if batch.num_rows() != objects as usize {
        return None;
    }
    let mut columns = batch.columns().to_vec();
    columns.push(new_null_array(&DataType::Utf8, batch.num_rows()));
    let parsed: ArrayRef =
        Arc::new(StructArray::try_new(output_fields(schema.fields()), columns, None).ok()?);
    if objects as usize == rows.len() {
        return Some(parsed);
    }
    arrow::compute::take(&parsed, &arrow::array::UInt32Array::from(indices), None).ok()
}

fn parse_column(
    values: &ArrayRef,
    fields: &Fields,
    mode: Mode,
    format: Format,
) -> DFResult<ArrayRef> {
    let schema = Arc::new(Schema::new(fields.clone()));
    let out_fields = output_fields(fields);
    let rows = rows(values)?;
    if let Some(parsed) = parse_all(&rows, &schema, format) {
        return Ok(parsed);
    }
    let mut parts: Vec<ArrayRef> = vec![];
    for (i, row) in rows.into_iter().enumerate() {
        let parsed = row.and_then(|b| parse_one(b, &schema, format));
        let corrupt = match (row, &parsed) {
            (Some(b), None) => {
                if mode == Mode::FailFast {
                    return Err(DataFusionError::Execution(format!(
                        "{}: record {i} is not {} of the schema ({}): {}",
                        format.function(),
                        format.label(),
                        fields
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        String::from_utf8_lossy(&b[..b.len().min(200)])
                    )));
                }
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        };
        let mut columns: Vec<ArrayRef> = match parsed {
            Some(s) => s.columns().to_vec(),
            None => fields
                .iter()
                .map(|f| new_null_array(f.data_type(), 1))
                .collect(),
        };
        let mut c = StringBuilder::new();
        c.append_option(corrupt);
        columns.push(Arc::new(c.finish()));
        parts.push(Arc::new(StructArray::try_new(
            out_fields.clone(),
            columns,
            None,
        )?));
    }
    if parts.is_empty() {
        return Ok(new_null_array(&DataType::Struct(out_fields), 0));
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    Ok(arrow::compute::concat(&refs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_records_per_policy() {
        let fields = parse_schema("device STRING, temperature DOUBLE").unwrap();
        let values: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            Some(r#"{"device":"a","temperature":21.5}"#),
            Some("not json"),
            None,
        ]));
        let parsed = parse_column(&values, &fields, Mode::Permissive, Format::Json).unwrap();
        let s = parsed.as_struct();
        assert_eq!(s.column(0).as_string::<i32>().value(0), "a");
        assert!(s.column(0).is_null(1));
        assert_eq!(s.column(2).as_string::<i32>().value(1), "not json");
        assert!(s.column(2).is_null(2));
        let err = parse_column(&values, &fields, Mode::FailFast, Format::Json).unwrap_err();
        assert!(err.to_string().contains("record 1"), "{err}");
        assert!(parse_schema("x WIBBLE").is_err());
    }

    #[test]
    fn well_formed_rows_parse_in_one_pass_and_keep_their_places() {
        let fields = parse_schema("device STRING, ts TIMESTAMP, t DOUBLE").unwrap();
        let values: ArrayRef = Arc::new(arrow::array::BinaryArray::from(vec![
            Some(br#"{"device":"a","ts":1000,"t":1.5}"#.as_slice()),
            None,
            Some(br#" {"t":2, "device":"b"} "#.as_slice()),
        ]));
        let schema = Arc::new(Schema::new(fields.clone()));
        assert!(parse_all(&rows(&values).unwrap(), &schema, Format::Json).is_some());
        let parsed = parse_column(&values, &fields, Mode::FailFast, Format::Json).unwrap();
        let s = parsed.as_struct();
        assert_eq!(s.len(), 3);
        assert_eq!(s.column(0).as_string::<i32>().value(2), "b");
        assert!(s.is_null(1) || s.column(0).is_null(1));
        assert_eq!(
            s.column(2)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
            1.5
        );
        // Two objects in one row fall back to row by row, and that row is corrupt.
        let merged: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            r#"{"device":"a"}{"device":"b"}"#,
        ]));
        assert!(parse_all(&rows(&merged).unwrap(), &schema, Format::Json).is_none());
        let parsed = parse_column(&merged, &fields, Mode::Permissive, Format::Json).unwrap();
        assert!(!parsed.as_struct().column(3).is_null(0));
    }

    #[test]
    fn csv_lines_parse_in_one_pass_or_row_by_row_with_the_bad_ones_named() {
        let fields = parse_schema("device STRING, ts BIGINT, t DOUBLE").unwrap();
        let schema = Arc::new(Schema::new(fields.clone()));
        let good: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            Some("a,1000,1.5"),
            None,
            Some("b,2000,2"),
        ]));
        assert!(parse_all(&rows(&good).unwrap(), &schema, Format::Csv).is_some());
        let parsed = parse_column(&good, &fields, Mode::FailFast, Format::Csv).unwrap();
        let s = parsed.as_struct();
        assert_eq!(s.column(0).as_string::<i32>().value(2), "b");
        assert_eq!(
            s.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            1000
        );
        let bad: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            "a,1000,1.5",
            "b,not a number,2",
            "c,3000",
        ]));
        let parsed = parse_column(&bad, &fields, Mode::Permissive, Format::Csv).unwrap();
        let s = parsed.as_struct();
        assert!(s.column(3).is_null(0));
        assert_eq!(s.column(3).as_string::<i32>().value(1), "b,not a number,2");
        assert!(!s.column(3).is_null(2), "too few fields");
        let err = parse_column(&bad, &fields, Mode::FailFast, Format::Csv).unwrap_err();
        assert!(
            err.to_string().contains("from_csv: record 1 is not CSV"),
            "{err}"
        );
    }
}

//! Event-time functions, Spark's shapes:
//!
//! - `window(ts, '10 seconds')` and `window(ts, '10 seconds', '5 seconds')`: the
//!   tumbling (or sliding) window of a row, a struct `{start, end}`. In a batch query a
//!   sliding window gives the latest window that holds the row; a streaming aggregation
//!   that groups by it puts each row in every window that holds it.
//! - `session_window(ts, '5 seconds')`: `{start: ts, end: ts + gap}`, the row's own
//!   session; a streaming aggregation merges the sessions of a key that overlap.
//! - `with_watermark(ts, delay)`: the marker `DataFrame::with_watermark` puts in a
//!   plan, a filter that keeps every row; a streaming query takes it out and drops the
//!   rows that are late instead.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StructArray, TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, TimeUnit, TimestampMillisecondType};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub const WINDOW: &str = "window";
pub const SESSION_WINDOW: &str = "session_window";
pub const WATERMARK: &str = "with_watermark";

/// Milliseconds in a duration written like Spark's: `10 seconds`, `1 minute`, `500 ms`,
/// `2h`, `1 day`, or an `INTERVAL '10' SECOND` literal's text.
pub fn parse_duration(text: &str) -> DFResult<i64> {
    let bad = || {
        DataFusionError::Plan(format!(
            "'{text}' is not a duration: write it like '10 seconds', '500 ms', '1 minute', '2h'"
        ))
    };
    let cleaned = text
        .trim()
        .trim_start_matches("INTERVAL")
        .trim_start_matches("interval")
        .replace('\'', " ");
    let cleaned = cleaned.trim();
    let split = cleaned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(cleaned.len());
    let (number, unit) = cleaned.split_at(split);
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return Err(bad()),
    };
    let ms = number * unit_ms;
    if !(1.0..1e15).contains(&ms) {
        return Err(bad());
    }
    Ok(ms as i64)
}

/// The struct a window function returns.
pub fn window_type() -> DataType {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ]))
}

/// A column as event times in milliseconds.
pub fn event_times(values: &ArrayRef) -> DFResult<TimestampMillisecondArray> {
    let ms = cast(values, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(|e| {
        DataFusionError::Plan(format!(
            "an event-time column must be a timestamp, not {}: {e}",
            values.data_type()
        ))
    })?;
    Ok(ms.as_primitive::<TimestampMillisecondType>().clone())
}

/// Builds `{start, end}` structs.
pub fn window_array(starts: Vec<Option<i64>>, ends: Vec<Option<i64>>) -> ArrayRef {
    let DataType::Struct(fields) = window_type() else {
        unreachable!("a struct")
    };
    let nulls: Vec<bool> = starts.iter().map(Option::is_some).collect();
    Arc::new(StructArray::new(
        fields,
        vec![
            Arc::new(TimestampMillisecondArray::from(starts)),
            Arc::new(TimestampMillisecondArray::from(ends)),
        ],
        Some(nulls.into()),
    ))
}

fn literal_duration(arg: &ColumnarValue, function: &str, what: &str) -> DFResult<i64> {
    match arg {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => parse_duration(s),
        ColumnarValue::Scalar(ScalarValue::Int64(Some(ms))) if *ms > 0 => Ok(*ms),
        _ => Err(DataFusionError::Plan(format!(
            "{function}: the {what} must be a literal like '10 seconds'"
        ))),
    }
}

/// Which event-time function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Window,
    Session,
    Watermark,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct EventTimeFn {
    kind: Kind,
    signature: Signature,
}

/// `window`, `session_window` and `ember_watermark`.
pub fn event_time_udfs() -> Vec<ScalarUDF> {
    [
        (Kind::Window, 2..=3),
        (Kind::Session, 2..=2),
        (Kind::Watermark, 2..=2),
    ]
    .into_iter()
    .map(|(kind, arities)| {
        let signature = Signature::one_of(
            arities
                .map(datafusion::logical_expr::TypeSignature::Any)
                .collect(),
            Volatility::Immutable,
        );
        ScalarUDF::new_from_impl(EventTimeFn { kind, signature })
    })
    .collect()
}

impl ScalarUDFImpl for EventTimeFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Window => WINDOW,
            Kind::Session => SESSION_WINDOW,
            Kind::Watermark => WATERMARK,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DFResult<DataType> {
        Ok(match self.kind {
            Kind::Watermark => DataType::Boolean,
            _ => window_type(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let name = self.name().to_string();
        let times = event_times(&args.args[0].to_array(rows)?)?;
        let (starts, ends): (Vec<_>, Vec<_>) = match self.kind {
            Kind::Watermark => {
                literal_duration(&args.args[1], &name, "delay").or_else(|e| {
                    match &args.args[1] {
                        ColumnarValue::Scalar(ScalarValue::Int64(Some(0))) => Ok(0),
                        _ => Err(e),
                    }
                })?;
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
                    true;
                    rows
                ]))));
            }
            Kind::Window => {
                let length = literal_duration(&args.args[1], &name, "window length")?;
                let slide = match args.args.get(2) {
                    Some(a) => literal_duration(a, &name, "slide")?,
                    None => length,
                };
                times
                    .iter()
                    .map(|t| {
                        t.map(|t| {
                            let start = t - t.rem_euclid(slide);
                            (start, start + length)
                        })
                        .unzip()
                    })
                    .unzip()
            }
            Kind::Session => {
                let gap = literal_duration(&args.args[1], &name, "gap")?;
                times
                    .iter()
                    .map(|t| t.map(|t| (t, t + gap)).unzip())
                    .unzip()
            }
        };
        Ok(ColumnarValue::Array(window_array(starts, ends)))
    }
}

/// What a window function in a plan asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WindowKind {
    /// Tumbling when `slide == length`.
    Sliding {
        length: i64,
        slide: i64,
    },
    Session {
        gap: i64,
    },
}

/// Reads `window(..)` / `session_window(..)` arguments from their literals.
pub fn window_kind(function: &str, args: &[ScalarValue]) -> DFResult<WindowKind> {
    let duration = |i: usize, what: &str| match args.get(i) {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s))) => parse_duration(s),
        Some(ScalarValue::Int64(Some(ms))) if *ms > 0 => Ok(*ms),
        _ => Err(DataFusionError::Plan(format!(
            "{function}: the {what} must be a literal like '10 seconds'"
        ))),
    };
    match function {
        SESSION_WINDOW => Ok(WindowKind::Session {
            gap: duration(0, "gap")?,
        }),
        _ => {
            let length = duration(0, "window length")?;
            let slide = if args.len() > 1 {
                duration(1, "slide")?
            } else {
                length
            };
            if slide > length {
                return Err(DataFusionError::Plan(format!(
                    "window: the slide ({slide} ms) is longer than the window ({length} ms)"
                )));
            }
            Ok(WindowKind::Sliding { length, slide })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_spark() {
        assert_eq!(parse_duration("10 seconds").unwrap(), 10_000);
        assert_eq!(parse_duration("1 second").unwrap(), 1_000);
        assert_eq!(parse_duration("500 ms").unwrap(), 500);
        assert_eq!(parse_duration("500 milliseconds").unwrap(), 500);
        assert_eq!(parse_duration("2 minutes").unwrap(), 120_000);
        assert_eq!(parse_duration("1m").unwrap(), 60_000);
        assert_eq!(parse_duration("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration("5s").unwrap(), 5_000);
        assert_eq!(parse_duration("INTERVAL '10' SECOND").unwrap(), 10_000);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3 seconds").is_err());
    }
}

//! The InfluxDB sink: each batch's rows as points in InfluxDB's line protocol,
//! written over HTTP to InfluxDB 1.x (`/write?db=`) or 2.x (`/api/v2/write?org=&bucket=`
//! with a token), in requests of `batch_lines` lines, retried with backoff.
//!
//! A row is a point: `measurement,<tag columns> <field columns> <time column in ms>`.
//! Points are keyed by series and time, so a batch written again after a restart
//! overwrites its own points: output is exactly once per batch. A 1.x database is
//! created if missing. The same writer can report a streaming query's progress
//! (measurement `ember_streaming`) for dashboards.

use std::fmt::Write as _;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ember_core::{EmberError, Result};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::OnceCell;

use super::query::Progress;
use super::sink::Sink;

/// Where and how points go: Spark-style options of `format("influxdb")`.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// `http://host:8086`.
    pub url: String,
    /// 1.x: the database (created if missing).
    pub database: Option<String>,
    /// 2.x: organization, bucket and token.
    pub org: Option<String>,
    pub bucket: Option<String>,
    pub token: Option<String>,
    pub measurement: String,
    /// Columns written as tags.
    pub tags: Vec<String>,
    /// Columns written as fields (empty: every column that is not a tag or the time).
    pub fields: Vec<String>,
    /// The timestamp column (any timestamp type).
    pub time: String,
    pub batch_lines: usize,
    pub retries: u32,
}

impl InfluxConfig {
    /// From `option(key, value)` pairs: `url`, `database` or `org`+`bucket`+`token`,
    /// `measurement`, `tags` and `fields` (comma-separated), `time`, `batch_lines`,
    /// `retries`.
    pub fn from_options(options: &[(String, String)]) -> Result<InfluxConfig> {
        let get = |k: &str| {
            options
                .iter()
                .rev()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let list = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |k: &str, default: usize| -> Result<usize> {
            get(k).map_or(Ok(default), |v| {
                v.parse().map_err(|_| {
                    EmberError::Config(format!("influxdb option {k}: '{v}' is not a number"))
                })
            })
        };
        let config = InfluxConfig {
            url: get("url").unwrap_or_else(|| "http://127.0.0.1:8086".into()),
            database: get("database").or_else(|| get("db")),
            org: get("org"),
            bucket: get("bucket"),
            token: get("token"),
            measurement: get("measurement").ok_or_else(|| {
                EmberError::Config("the influxdb sink needs option(\"measurement\", ..)".into())
            })?,
            tags: list("tags"),
            fields: list("fields"),
            time: get("time").ok_or_else(|| {
                EmberError::Config(
                    "the influxdb sink needs option(\"time\", <timestamp column>)".into(),
                )
            })?,
            batch_lines: number("batch_lines", 5000)?.max(1),
            retries: number("retries", 5)? as u32,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if !self.url.starts_with("http://") {
            return Err(EmberError::Config(format!(
                "influxdb url '{}': only http:// is supported",
                self.url
            )));
        }
        let v2 = self.org.is_some() || self.bucket.is_some() || self.token.is_some();
        match (&self.database, v2) {
            (Some(_), false) => Ok(()),
            (None, true) if self.bucket.is_some() && self.org.is_some() => Ok(()),
            _ => Err(EmberError::Config(
                "the influxdb sink needs option(\"database\", ..) (InfluxDB 1.x) or org, bucket and token (2.x)".into(),
            )),
        }
    }

    fn write_path(&self) -> String {
        match &self.database {
            Some(db) => format!(
                "{}/write?db={}&precision=ms",
                self.url.trim_end_matches('/'),
                encode(db)
            ),
            None => format!(
                "{}/api/v2/write?org={}&bucket={}&precision=ms",
                self.url.trim_end_matches('/'),
                encode(self.org.as_deref().unwrap_or_default()),
                encode(self.bucket.as_deref().unwrap_or_default())
            ),
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Line protocol escapes: measurement (commas, spaces), tag keys and values and
/// field keys (commas, equals signs, spaces).
fn escape_name(s: &str, measurement: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ',' || c == ' ' || (!measurement && c == '=') || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn escape_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A column's values as line-protocol field values (none for a null).
enum FieldValues {
    Float(arrow::array::Float64Array),
    Int(arrow::array::Int64Array),
    Bool(arrow::array::BooleanArray),
    Text(arrow::array::StringArray),
}

impl FieldValues {
    fn of(column: &dyn Array, name: &str) -> Result<FieldValues> {
        let ty = column.data_type();
        Ok(match ty {
            t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => FieldValues::Float(
                cast(column, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            t if t.is_integer() => FieldValues::Int(
                cast(column, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            DataType::Boolean => FieldValues::Bool(column.as_boolean().clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                FieldValues::Text(cast(column, &DataType::Utf8)?.as_string::<i32>().clone())
            }
            other => {
                return Err(EmberError::Config(format!(
                    "the influxdb sink: field column '{name}' is {other}; fields are numbers, booleans or strings"
                )));
            }
        })
    }

    fn write(&self, row: usize, out: &mut String) -> bool {
        match self {
            FieldValues::Float(a) if a.is_valid(row) && a.value(row).is_finite() => {
                let _ = write!(out, "{}", a.value(row));
            }
            FieldValues::Int(a) if a.is_valid(row) => {
                let _ = write!(out, "{}i", a.value(row));
            }
            FieldValues::Bool(a) if a.is_valid(row) => {
                out.push_str(if a.value(row) { "t" } else { "f" });
            }
            FieldValues::Text(a) if a.is_valid(row) => {
                let _ = write!(out, "\"{}\"", escape_string(a.value(row)));
            }
            _ => return false,
        }
        true
    }
}

/// The batch's rows as lines.
pub fn lines(config: &InfluxConfig, batch: &RecordBatch) -> Result<Vec<String>> {
    let schema = batch.schema();
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            EmberError::Config(format!(
                "the influxdb sink: no column '{name}' in the query's output ({})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let time = cast(
        column(&config.time)?,
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )
    .map_err(|e| {
        EmberError::Config(format!(
            "the influxdb sink: time column '{}' is not a timestamp: {e}",
            config.time
        ))
    })?;
    let time = time.as_primitive::<TimestampMillisecondType>();
    let tags: Vec<(String, arrow::array::StringArray)> = config
        .tags
        .iter()
        .map(|t| {
            let values = cast(column(t)?, &DataType::Utf8)?;
            Ok((escape_name(t, false), values.as_string::<i32>().clone()))
        })
        .collect::<Result<_>>()?;
    let field_names: Vec<String> = if config.fields.is_empty() {
        schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != &config.time && !config.tags.contains(n))
            .collect()
    } else {
        config.fields.clone()
    };
    let fields: Vec<(String, FieldValues)> = field_names
        .iter()
        .map(|f| Ok((escape_name(f, false), FieldValues::of(column(f)?, f)?)))
        .collect::<Result<_>>()?;
    let measurement = escape_name(&config.measurement, true);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if time.is_null(row) {
            continue;
        }
        let mut line = measurement.clone();
        for (k, v) in &tags {
            if v.is_valid(row) && !v.value(row).is_empty() {
                let _ = write!(line, ",{k}={}", escape_name(v.value(row), false));
            }
        }
        let mut first = true;
        for (k, v) in &fields {
            let mark = line.len();
            line.push(if first { ' ' } else { ',' });
            let _ = write!(line, "{k}=");
            if v.write(row, &mut line) {
                first = false;
            } else {
                line.truncate(mark);
            }
        }
        if first {
            continue; // a point needs a field
        }
        let _ = write!(line, " {}", time.value(row));
        out.push(line);
    }
    Ok(out)
}

/// Writes lines to InfluxDB.
pub struct InfluxWriter {
    config: InfluxConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    database_ready: OnceCell<()>,
}

impl InfluxWriter {
    pub fn new(config: InfluxConfig) -> Result<InfluxWriter> {
        config.check()?;
        Ok(InfluxWriter {
            config,
            client: Client::builder(TokioExecutor::new()).build_http(),
            database_ready: OnceCell::new(),
        })
    }

    async fn post(&self, url: &str, body: Bytes) -> std::result::Result<(u16, String), String> {
        let mut request =
            hyper::Request::post(url).header("content-type", "text/plain; charset=utf-8");
        if let Some(token) = &self.config.token {
            request = request.header("authorization", format!("Token {token}"));
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| "no answer in 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Posts with retries: connection errors, 429 and 5xx are retried with backoff;
    /// other answers fail at once with InfluxDB's message.
    async fn post_retrying(&self, url: &str, body: Bytes, what: &str) -> Result<()> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let outcome = self.post(url, body.clone()).await;
            let retryable = match &outcome {
                Ok((s, _)) if (200..300).contains(s) => return Ok(()),
                Ok((s, _)) => *s == 429 || *s >= 500,
                Err(_) => true,
            };
            let message = match outcome {
                Ok((s, b)) => format!("HTTP {s}: {}", b.trim()),
                Err(e) => e,
            };
            if !retryable || attempt >= self.config.retries {
                return Err(EmberError::Internal(format!(
                    "influxdb at {}: {what}: {message}",
                    self.config.url
                )));
            }
            tracing::warn!(attempt, error = %message, "influxdb write failed; retrying");
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// A 1.x database is created if missing (`CREATE DATABASE` is idempotent).
    async fn ensure_database(&self) -> Result<()> {
        let Some(db) = &self.config.database else {
            return Ok(());
        };
        self.database_ready
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/query?q={}",
                    self.config.url.trim_end_matches('/'),
                    encode(&format!("CREATE DATABASE \"{}\"", db.replace('"', "\\\"")))
                );
                self.post_retrying(&url, Bytes::new(), &format!("creating database {db}"))
                    .await
            })
            .await
            .map(|_| ())
    }

    pub async fn write_lines(&self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.ensure_database().await?;
        let url = self.config.write_path();
        for chunk in lines.chunks(self.config.batch_lines) {
            let body = Bytes::from(chunk.join("\n"));
            self.post_retrying(&url, body, &format!("writing {} points", chunk.len()))
                .await?;
        }
        Ok(())
    }

    /// One point of a streaming query's progress (measurement `ember_streaming`, tag
    /// `stream`: the query's name).
    pub async fn write_progress(&self, p: &Progress) -> Result<()> {
        let query = escape_name(p.name.as_deref().unwrap_or(&p.id), false);
        let mut line = format!(
            "ember_streaming,stream={query} batch_id={}i,input_rows={}i,input_rows_per_second={},processed_rows_per_second={},batch_duration_ms={}i,state_rows={}i,late_rows_dropped={}i,output_rows={}i",
            p.batch_id,
            p.num_input_rows,
            p.input_rows_per_second,
            p.processed_rows_per_second,
            p.duration_ms.trigger_execution,
            p.state.rows_total,
            p.late_rows_dropped,
            p.sink.num_output_rows,
        );
        if let Some(w) = p.watermark_ms {
            let _ = write!(line, ",watermark_lag_ms={}i", p.timestamp_ms - w);
        }
        let _ = write!(line, " {}", p.timestamp_ms);
        self.write_lines(&[line]).await
    }
}

/// `write_stream().format("influxdb")`.
pub struct InfluxSink {
    writer: InfluxWriter,
}

impl InfluxSink {
    pub fn new(config: InfluxConfig) -> Result<InfluxSink> {
        Ok(InfluxSink {
            writer: InfluxWriter::new(config)?,
        })
    }
}

#[async_trait::async_trait]
impl Sink for InfluxSink {
    async fn add_batch(&self, _batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let mut all = vec![];
        for b in &batches {
            all.extend(lines(&self.writer.config, b)?);
        }
        self.writer.write_lines(&all).await?;
        Ok(all.len())
    }

    fn describe(&self) -> String {
        let c = &self.writer.config;
        format!(
            "influxdb[{}/{}]",
            c.url,
            c.database.as_deref().or(c.bucket.as_deref()).unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn rows_become_escaped_points_and_nulls_are_left_out() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("device", DataType::Utf8, true),
            Field::new("avg", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1000),
                    Some(2000),
                    None,
                ])),
                Arc::new(StringArray::from(vec![
                    Some("hall way"),
                    Some("a,b"),
                    Some("x"),
                ])),
                Arc::new(Float64Array::from(vec![Some(21.5), None, Some(1.0)])),
                Arc::new(Int64Array::from(vec![Some(3), None, Some(1)])),
                Arc::new(StringArray::from(vec![Some("say \"hi\""), None, None])),
            ],
        )
        .unwrap();
        let config = InfluxConfig::from_options(&[
            ("database".into(), "ember".into()),
            ("measurement".into(), "iot temps".into()),
            ("tags".into(), "device".into()),
            ("time".into(), "t".into()),
        ])
        .unwrap();
        assert_eq!(
            lines(&config, &batch).unwrap(),
            vec![r#"iot\ temps,device=hall\ way avg=21.5,n=3i,note="say \"hi\"" 1000"#]
        );
        assert!(InfluxConfig::from_options(&[("measurement".into(), "m".into())]).is_err());
    }
}

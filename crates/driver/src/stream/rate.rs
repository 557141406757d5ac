//! `read_stream().rate(rows_per_second)`: Spark's rate source, rows of `timestamp` and
//! `value` (0, 1, 2, ...) at a steady rate, for benchmarks and demos.
//!
//! Its offsets are `rate/0` (rows generated so far) and `rate-start-ms/0` (when the
//! query first started): row `v`'s timestamp is `start + v / rate`, so a batch run
//! again after a restart has the same rows.

use std::sync::Arc;

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};

use super::source::{Offsets, Source};

const ROWS: &str = "rate";
const START: &str = "rate-start-ms";
/// Rows per generated record batch.
const CHUNK: i64 = 64 * 1024;

#[derive(Debug)]
pub struct RateSource {
    rows_per_second: u64,
}

impl RateSource {
    pub fn new(rows_per_second: u64) -> Result<RateSource> {
        if rows_per_second == 0 {
            return Err(EmberError::Config(
                "the rate source needs rows_per_second > 0".into(),
            ));
        }
        Ok(RateSource { rows_per_second })
    }

    fn start_ms(offsets: &Offsets) -> Result<i64> {
        offsets.get(START, 0).ok_or_else(|| {
            EmberError::Config(format!("rate source: offsets without {START}: {offsets:?}"))
        })
    }

    fn timestamp(&self, start_ms: i64, row: i64) -> i64 {
        start_ms + (row as i128 * 1000 / self.rows_per_second as i128) as i64
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait::async_trait]
impl Source for RateSource {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("value", DataType::Int64, false),
        ]))
    }

    async fn initial(&self) -> Result<Offsets> {
        let mut o = Offsets::default();
        o.set(ROWS, 0, 0);
        o.set(START, 0, now_ms());
        Ok(o)
    }

    async fn latest(&self, start: &Offsets) -> Result<Offsets> {
        let start_ms = Self::start_ms(start)?;
        let due =
            ((now_ms() - start_ms).max(0) as i128 * self.rows_per_second as i128 / 1000) as i64;
        let mut end = start.clone();
        end.set(ROWS, 0, due.max(start.get(ROWS, 0).unwrap_or(0)));
        Ok(end)
    }

    async fn available(&self) -> Result<Offsets> {
        Err(EmberError::NotSupported(
            "the rate source never ends: run it with Trigger::ProcessingTime or Once, not AvailableNow".into(),
        ))
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let start_ms = Self::start_ms(start)?;
        let (from, to) = (
            start.get(ROWS, 0).unwrap_or(0),
            end.get(ROWS, 0).unwrap_or(0),
        );
        let mut batches = vec![];
        let mut at = from;
        while at < to {
            let upto = (at + CHUNK).min(to);
            batches.push(RecordBatch::try_new(
                self.schema(),
                vec![
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (at..upto).map(|v| self.timestamp(start_ms, v)),
                    )),
                    Arc::new(Int64Array::from_iter_values(at..upto)),
                ],
            )?);
            at = upto;
        }
        Ok(batches)
    }

    fn describe(&self) -> String {
        format!("rate[{}/s]", self.rows_per_second)
    }
}

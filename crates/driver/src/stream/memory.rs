//! A stream fed by the program itself, for tests and examples: `add_data` appends
//! rows; each is an offset of its single partition.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
use parking_lot::Mutex;

use super::source::{Offsets, Source};

const TOPIC: &str = "memory";

#[derive(Debug)]
pub struct MemoryStream {
    schema: SchemaRef,
    /// Every batch added, with the offset of its first row.
    batches: Mutex<Vec<(i64, RecordBatch)>>,
}

impl MemoryStream {
    pub fn new(schema: SchemaRef) -> Arc<MemoryStream> {
        Arc::new(MemoryStream {
            schema,
            batches: Mutex::new(vec![]),
        })
    }

    /// Appends rows; returns the offset after them.
    pub fn add_data(&self, batch: RecordBatch) -> Result<i64> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(EmberError::Config(format!(
                "memory stream: rows of schema {:?} do not match the stream's {:?}",
                batch.schema(),
                self.schema
            )));
        }
        let mut batches = self.batches.lock();
        let start = batches.last().map_or(0, |(o, b)| o + b.num_rows() as i64);
        let end = start + batch.num_rows() as i64;
        batches.push((start, batch));
        Ok(end)
    }

    fn end(&self) -> i64 {
        self.batches
            .lock()
            .last()
            .map_or(0, |(o, b)| o + b.num_rows() as i64)
    }
}

fn at(offset: i64) -> Offsets {
    let mut o = Offsets::default();
    o.set(TOPIC, 0, offset);
    o
}

#[async_trait::async_trait]
impl Source for MemoryStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn initial(&self) -> Result<Offsets> {
        Ok(at(0))
    }

    async fn latest(&self, _start: &Offsets) -> Result<Offsets> {
        Ok(at(self.end()))
    }

    async fn available(&self) -> Result<Offsets> {
        Ok(at(self.end()))
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let (from, to) = (
            start.get(TOPIC, 0).unwrap_or(0),
            end.get(TOPIC, 0).unwrap_or(0),
        );
        Ok(self
            .batches
            .lock()
            .iter()
            .filter_map(|(o, b)| {
                let (lo, hi) = (from.max(*o), to.min(o + b.num_rows() as i64));
                (lo < hi).then(|| b.slice((lo - o) as usize, (hi - lo) as usize))
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

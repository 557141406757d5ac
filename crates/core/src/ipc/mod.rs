//! Arrow IPC streams from outside the process: the one way ember decodes them.
//!
//! Task results, shuffle partitions (local files or fetched from other executors),
//! streaming state files and in-memory tables all arrive as IPC stream bytes that
//! another process wrote, or that a disk kept. arrow-ipc panics on some malformed
//! streams and allocates what the first bytes of a message claim, so every IPC
//! stream ember reads goes through [`read_stream`] or [`StreamReader`]:
//!
//! ```text
//!  bytes / Read (at most `limit` bytes)
//!    │ framing: continuation marker, metadata length ≤ bytes left
//!    ▼
//!  metadata ── flatbuffer verifier (root_as_message); body length ≤ bytes left
//!    │         body read as it arrives, never allocated from the claim alone
//!    ▼
//!  check.rs ── schema: type parameters arrow would panic on
//!    │         batch / dictionary: buffers inside the body, lengths backed by bytes
//!    ▼
//!  arrow-ipc decoder inside catch_unwind (a panic left: a Decode error, not a crash)
//!    ▼
//!  RecordBatch, validated in full (ArrayData::validate_full)
//! ```
//!
//! Every error is an [`EmberError::Decode`] naming what was read, the message's
//! index and its byte position.

mod check;

use std::collections::HashMap;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::ipc as fb;
use arrow::record_batch::RecordBatch;

use crate::error::{EmberError, Result};

pub use check::{MAX_DECOMPRESSED_MESSAGE, MAX_UNBACKED_LEN};

/// The schema and batches of one IPC stream held in `bytes`; `what` names it in errors.
pub fn read_stream(bytes: &[u8], what: &'static str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = StreamReader::try_new(bytes, bytes.len() as u64, what)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<_>>()?;
    Ok((schema, batches))
}

/// The record batches of an IPC stream read from `R`, of at most `limit` bytes (no
/// length in the stream may claim more than is left of it); `what` names it in errors.
pub struct StreamReader<R> {
    input: Counted<R>,
    decoder: Decoder,
    finished: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads the schema message.
    pub fn try_new(input: R, limit: u64, what: &'static str) -> Result<Self> {
        let mut reader = StreamReader {
            input: Counted {
                inner: input,
                position: 0,
                limit,
            },
            decoder: Decoder {
                what,
                schema: None,
                dictionaries: HashMap::new(),
                messages: 0,
            },
            finished: false,
        };
        match reader.next_message()? {
            Some(None) => Ok(reader),
            Some(Some(_)) => Err(reader
                .decoder
                .error(0, "the stream starts with a batch".into())),
            None => Err(reader
                .decoder
                .error(0, "the stream is empty: no schema message".into())),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.decoder
            .schema
            .clone()
            .expect("try_new read the schema")
    }

    /// The next message: `None` at the end of the stream, `Some(None)` for a schema or
    /// dictionary message.
    fn next_message(&mut self) -> Result<Option<Option<RecordBatch>>> {
        let start = self.input.position;
        let fail = |d: &Decoder, message: String| d.error(start, message);
        let mut word = [0u8; 4];
        match self.input.read_word(&mut word) {
            Ok(true) => {}
            Ok(false) => return Ok(None), // the end marker is optional
            Err(e) => return Err(fail(&self.decoder, e)),
        }
        if word == [0xff; 4] {
            match self.input.read_word(&mut word) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(fail(
                        &self.decoder,
                        "the stream ends after a continuation marker".into(),
                    ));
                }
                Err(e) => return Err(fail(&self.decoder, e)),
            }
        }
        let meta_len = i32::from_le_bytes(word);
        if meta_len == 0 {
            return Ok(None);
        }
        let left = self.input.left();
        if meta_len < 0 || meta_len as u64 > left {
            return Err(fail(
                &self.decoder,
                format!("metadata length {meta_len} does not fit in the {left} bytes left"),
            ));
        }
        let meta = self
            .input
            .read_vec(meta_len as u64)
            .map_err(|e| fail(&self.decoder, e))?;
        let message = fb::root_as_message(&meta)
            .map_err(|e| fail(&self.decoder, format!("invalid message metadata: {e}")))?;
        let body_len = message.bodyLength();
        let left = self.input.left();
        if body_len < 0 || body_len as u64 > left {
            return Err(fail(
                &self.decoder,
                format!("body length {body_len} does not fit in the {left} bytes left"),
            ));
        }
        let body = self
            .input
            .read_vec(body_len as u64)
            .map_err(|e| fail(&self.decoder, e))?;
        let result = self.decoder.message(message, body, start);
        self.decoder.messages += 1;
        result.map(Some)
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            match self.next_message() {
                Ok(Some(Some(batch))) => return Some(Ok(batch)),
                Ok(Some(None)) => {}
                Ok(None) => self.finished = true,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The state of a stream: its schema and the dictionaries read so far.
struct Decoder {
    what: &'static str,
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
    messages: usize,
}

impl Decoder {
    fn error(&self, position: u64, message: String) -> EmberError {
        EmberError::Decode {
            what: self.what,
            message: format!(
                "IPC message {} at byte {position}: {message}",
                self.messages
            ),
        }
    }

    fn message(
        &mut self,
        message: fb::Message<'_>,
        body: Vec<u8>,
        position: u64,
    ) -> Result<Option<RecordBatch>> {
        let fail = |d: &Decoder, message: String| d.error(position, message);
        let version = message.version();
        if version < fb::MetadataVersion::V4 || version > fb::MetadataVersion::V5 {
            return Err(fail(
                self,
                format!("unsupported metadata version {version:?}"),
            ));
        }
        match (message.header_type(), &self.schema) {
            (fb::MessageHeader::Schema, None) => {
                let schema = message
                    .header_as_schema()
                    .ok_or_else(|| fail(self, "a schema message without a schema".into()))?;
                check::check_schema(schema).map_err(|e| fail(self, e))?;
                let schema =
                    guarded(|| Ok(fb::convert::fb_to_schema(schema))).map_err(|e| fail(self, e))?;
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            (fb::MessageHeader::Schema, Some(_)) => {
                Err(fail(self, "a second schema message".into()))
            }
            (_, None) => Err(fail(self, "the stream does not start with a schema".into())),
            (fb::MessageHeader::RecordBatch, Some(schema)) => {
                let schema = schema.clone();
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| fail(self, "a batch message without a batch".into()))?;
                let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
                check::check_batch(batch, &types, &body).map_err(|e| fail(self, e))?;
                let body = Buffer::from_vec(body);
                let dictionaries = &self.dictionaries;
                let batch = guarded(|| {
                    fb::reader::read_record_batch(
                        &body,
                        batch,
                        schema.clone(),
                        dictionaries,
                        None,
                        &version,
                    )
                    .map_err(|e| e.to_string())
                })
                .map_err(|e| fail(self, e))?;
                validate(&batch).map_err(|e| fail(self, e))?;
                Ok(Some(batch))
            }
            (fb::MessageHeader::DictionaryBatch, Some(schema)) => {
                let schema = schema.clone();
                let dictionary = message.header_as_dictionary_batch().ok_or_else(|| {
                    fail(self, "a dictionary message without a dictionary".into())
                })?;
                let data = dictionary
                    .data()
                    .ok_or_else(|| fail(self, "a dictionary message without data".into()))?;
                let id = dictionary.id();
                let value_type =
                    check::dictionary_value_type(&schema, id).map_err(|e| fail(self, e))?;
                check::check_batch(data, &[&value_type], &body)
                    .map_err(|e| fail(self, format!("dictionary {id}: {e}")))?;
                let body = Buffer::from_vec(body);
                let dictionaries = &mut self.dictionaries;
                guarded(|| {
                    fb::reader::read_dictionary(&body, dictionary, &schema, dictionaries, &version)
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| fail(self, format!("dictionary {id}: {e}")))?;
                if let Some(values) = self.dictionaries.get(&id) {
                    values
                        .to_data()
                        .validate_full()
                        .map_err(|e| fail(self, format!("dictionary {id}: {e}")))?;
                }
                Ok(None)
            }
            (other, Some(_)) => Err(fail(self, format!("unexpected message type {other:?}"))),
        }
    }
}

/// Runs arrow's decoder, turning a panic into an error: the checks before it should
/// leave none, but a decoder of outside bytes must never bring the process down.
fn guarded<T>(
    decode: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(payload) => {
            #[cfg(test)]
            tests::CAUGHT.with(|c| c.set(c.get() + 1));
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(format!("arrow-ipc failed on malformed data: {message}"))
        }
    }
}

/// Full validation of every column, so that later kernels never meet an array whose
/// offsets, dictionary keys or UTF-8 are inconsistent. A column of one flat array
/// (numbers, booleans, strings, binaries) arrow's decoder has validated whole as it
/// built it; validating it again was a tenth of a shuffle reader's time (its UTF-8).
fn validate(batch: &RecordBatch) -> std::result::Result<(), String> {
    for (i, column) in batch.columns().iter().enumerate() {
        if validated_by_decoder(column.data_type()) {
            continue;
        }
        column
            .to_data()
            .validate_full()
            .map_err(|e| format!("column {i}: {e}"))?;
    }
    Ok(())
}

/// The types arrow-ipc's decoder builds as one array with `ArrayDataBuilder::build`,
/// which validates its offsets, views, UTF-8 and nulls (its `validate_data`, all that
/// `validate_full` adds to is children).
fn validated_by_decoder(data_type: &DataType) -> bool {
    data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Null
                | DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::Utf8View
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
        )
}

/// `error` with `place` (a file, an address) in front of its message.
pub fn at(error: EmberError, place: impl std::fmt::Display) -> EmberError {
    match error {
        EmberError::Decode { what, message } => EmberError::Decode {
            what,
            message: format!("{place}: {message}"),
        },
        other => other,
    }
}

/// A reader that counts what it gave and refuses to go past `limit`.
struct Counted<R> {
    inner: R,
    position: u64,
    limit: u64,
}

impl<R: Read> Counted<R> {
    fn left(&self) -> u64 {
        self.limit - self.position
    }

    /// Fills `word`; `false` at a clean end (no byte of it left).
    fn read_word(&mut self, word: &mut [u8; 4]) -> std::result::Result<bool, String> {
        if self.left() == 0 {
            return Ok(false);
        }
        let bytes = self.read_up_to(4.min(self.left()))?;
        if bytes.is_empty() {
            return Ok(false);
        }
        if bytes.len() < 4 {
            return Err(format!(
                "the stream ends inside a length word ({} bytes)",
                bytes.len()
            ));
        }
        word.copy_from_slice(&bytes);
        Ok(true)
    }

    /// Up to `n` bytes (at most what is left, checked by the caller), allocated as
    /// they arrive: a truncated input costs what it holds, not what it claimed.
    fn read_up_to(&mut self, n: u64) -> std::result::Result<Vec<u8>, String> {
        debug_assert!(n <= self.left());
        let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
        (&mut self.inner)
            .take(n)
            .read_to_end(&mut out)
            .map_err(|e| format!("reading {n} bytes: {e}"))?;
        self.position += out.len() as u64;
        Ok(out)
    }

    /// Exactly `n` bytes, or an error saying where the input ended.
    fn read_vec(&mut self, n: u64) -> std::result::Result<Vec<u8>, String> {
        let out = self.read_up_to(n)?;
        if out.len() as u64 != n {
            return Err(format!("the stream ends after {} of {n} bytes", out.len()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, DictionaryArray, Int32Array, Int64Array, ListArray, StringArray,
        StringViewArray, StructArray,
    };
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use arrow::ipc::CompressionType;
    use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

    use super::*;

    thread_local! {
        /// Panics `guarded` caught on this thread: the checks should leave none.
        pub(super) static CAUGHT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn sample() -> RecordBatch {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
            Some(vec![]),
        ]);
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let strukt = StructArray::from(vec![(
            Arc::new(Field::new("b", DataType::Boolean, true)),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])) as ArrayRef,
        )]);
        RecordBatch::try_from_iter(vec![
            (
                "i",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("x"), None, Some("zz")])) as _,
            ),
            (
                "v",
                Arc::new(StringViewArray::from(vec![
                    "short",
                    "a string longer than 12",
                    "",
                ])) as _,
            ),
            ("l", Arc::new(list) as _),
            ("d", Arc::new(dict) as _),
            ("t", Arc::new(strukt) as _),
        ])
        .unwrap()
    }

    fn write(batches: &[RecordBatch], compression: Option<CompressionType>) -> Vec<u8> {
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .unwrap();
        let mut out = Vec::new();
        let mut writer =
            StreamWriter::try_new_with_options(&mut out, &batches[0].schema(), options).unwrap();
        for b in batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
        drop(writer);
        out
    }

    fn decode_error(bytes: &[u8]) -> String {
        match read_stream(bytes, "test data") {
            Ok(_) => panic!("decoded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn streams_of_every_type_ember_writes_read_back_plain_and_compressed() {
        let batch = sample();
        for compression in [
            None,
            Some(CompressionType::ZSTD),
            Some(CompressionType::LZ4_FRAME),
        ] {
            let bytes = write(&[batch.clone(), batch.clone()], compression);
            let (schema, batches) = read_stream(&bytes, "test data").unwrap();
            assert_eq!(schema, batch.schema());
            assert_eq!(batches, vec![batch.clone(), batch.clone()]);
        }
    }

    #[test]
    fn a_stream_read_from_a_reader_stops_at_its_limit() {
        let batch = sample();
        let mut bytes = write(std::slice::from_ref(&batch), None);
        let len = bytes.len() as u64;
        bytes.extend_from_slice(b"the next partition's bytes");
        let rows: Vec<_> = StreamReader::try_new(bytes.as_slice(), len, "test data")
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(rows, vec![batch]);
    }

    #[test]
    fn a_metadata_length_past_the_end_is_an_error_without_allocating_it() {
        // 0x7fffffff bytes of metadata claimed by 8 bytes of input.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let e = decode_error(&bytes);
        assert!(
            e.contains("metadata length 2147483647 does not fit in the 0 bytes left"),
            "{e}"
        );
        // A legacy stream (no continuation marker) claiming the same.
        let e = decode_error(&[0xff, 0xff, 0xff, 0x7f, 0, 0]);
        assert!(e.contains("does not fit"), "{e}");
    }

    #[test]
    fn every_truncation_of_a_stream_is_an_error_or_a_prefix_of_its_batches() {
        let batch = sample();
        let bytes = write(&[batch.clone(), batch.clone()], Some(CompressionType::ZSTD));
        // Without its 8-byte end marker, the stream still holds both batches.
        let marker = bytes.len() - 8;
        for end in 0..bytes.len() {
            if let Ok((_, batches)) = read_stream(&bytes[..end], "test data") {
                assert!(batches.iter().all(|b| b == &batch));
                assert_eq!(batches.len() == 2, end >= marker, "{end}");
            }
        }
    }

    #[test]
    fn every_single_byte_change_is_an_error_or_a_valid_batch() {
        let batch = sample();
        for compression in [None, Some(CompressionType::ZSTD)] {
            let bytes = write(std::slice::from_ref(&batch), compression);
            for i in 0..bytes.len() {
                for value in [0x00, 0x01, 0x07, 0x10, 0x7f, 0x80, 0xff] {
                    let mut changed = bytes.clone();
                    changed[i] = value;
                    if let Ok((_, batches)) = read_stream(&changed, "test data") {
                        for b in batches {
                            for c in b.columns() {
                                c.to_data().validate_full().unwrap();
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            CAUGHT.with(|c| c.get()),
            0,
            "arrow-ipc panicked past the checks"
        );
    }

    #[test]
    fn a_batch_before_the_schema_and_a_second_schema_are_errors() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(vec![1, 2]))],
        )
        .unwrap();
        let bytes = write(std::slice::from_ref(&batch), None);
        let twice = [bytes.clone(), bytes].concat();
        // The first stream's end marker ends the stream: the second is never read.
        assert_eq!(read_stream(&twice, "test data").unwrap().1, vec![batch]);
        let e = decode_error(&[]);
        assert!(e.contains("no schema message"), "{e}");
    }
}

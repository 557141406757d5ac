//! The fixed header of a Kafka record batch (format v2), read in place.
//!
//! The log stores batches exactly as producers encode them (with the
//! `kafka-protocol` crate in process, or as they arrive over the wire); it only reads
//! the header to validate the batch and index it, and rewrites the base offset when
//! it assigns offsets. The CRC-32C covers the bytes from `attributes` to the end, so
//! assigning offsets keeps it valid.
//!
//! ```text
//! 0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 | 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
//! 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32
//! 57 recordCount i32 | 61 records...
//! ```

use bytes::Bytes;
use kafka_protocol::compression::{self as cmpr, Decompressor};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

use crate::error::{LogError, Result};

/// Bytes before the records.
pub const HEADER_LEN: usize = 61;
/// Bytes before and including `batchLength`, which counts the rest.
pub const LOG_OVERHEAD: usize = 12;

/// What the log needs to know about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// The whole batch, header included.
    pub size: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// The size of the batch starting at `buf`, from its length field, if `buf` holds
    /// at least that field.
    pub fn size_of(buf: &[u8]) -> Option<usize> {
        (buf.len() >= LOG_OVERHEAD)
            .then(|| LOG_OVERHEAD.saturating_add_signed(i32_at(buf, 8) as isize))
    }

    /// Reads and checks the batch at the start of `buf`: complete, magic 2, a sane
    /// length, and a matching CRC-32C.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < HEADER_LEN {
            return Err(LogError::Corrupt(format!(
                "a record batch needs {HEADER_LEN} header bytes, got {}",
                buf.len()
            )));
        }
        let length = i32_at(buf, 8);
        if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(LogError::Corrupt(format!(
                "batch length {length} is too small"
            )));
        }
        let size = LOG_OVERHEAD + length as usize;
        if buf.len() < size {
            return Err(LogError::Corrupt(format!(
                "batch of {size} bytes is truncated to {}",
                buf.len()
            )));
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(LogError::Corrupt(format!(
                "record batch magic {magic}: only format v2 is supported"
            )));
        }
        let stored = u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&buf[21..size]);
        if stored != computed {
            return Err(LogError::Corrupt(format!(
                "CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        let header = BatchHeader {
            base_offset: i64_at(buf, 0),
            size,
            attributes: i16_at(buf, 21),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        };
        if header.record_count < 0 || header.last_offset_delta < 0 {
            return Err(LogError::Corrupt(format!(
                "batch with {} records and last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        Ok(header)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Records of a control batch (transaction markers) are not data.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// The timestamp type bit: log-append time instead of create time.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }
}

/// Sets the base offset of the batch at the start of `buf` (the CRC does not cover it).
pub fn set_base_offset(buf: &mut [u8], offset: i64) {
    buf[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// The fewest bytes a record takes (v2): length, attributes, timestamp and offset
/// deltas, key and value lengths, header count, one byte each at least.
const MIN_RECORD_BYTES: usize = 7;

/// Decodes the records of the batch at the start of `buf` and moves `buf` past it:
/// what consumers, streaming reads and `ListOffsets` by timestamp do with a batch the
/// log holds. `what` names the batch's partition in errors.
///
/// The decoder reserves room for as many records as the header claims before it
/// reads one, so a batch with a valid CRC claiming 2^31-1 records would abort the
/// process; the claim is checked against the (decompressed) record bytes first.
pub fn decode_records(buf: &mut Bytes, what: &str) -> Result<Vec<Record>> {
    let claimed = match buf.get(57..61) {
        Some(b) => i32::from_be_bytes(b.try_into().expect("4 bytes")),
        None => 0,
    };
    let decompress = |records: &mut Bytes, compression: Compression| {
        use bytes::Buf;
        let take_all = |b: &mut Bytes| Ok(b.copy_to_bytes(b.remaining()));
        let bytes = match compression {
            Compression::None => cmpr::None::decompress(records, take_all),
            Compression::Gzip => cmpr::Gzip::decompress(records, take_all),
            Compression::Snappy => cmpr::Snappy::decompress(records, take_all),
            Compression::Lz4 => cmpr::Lz4::decompress(records, take_all),
            Compression::Zstd => cmpr::Zstd::decompress(records, take_all),
        }?;
        if claimed.max(0) as usize > bytes.len() / MIN_RECORD_BYTES {
            let message = format!(
                "the batch claims {claimed} records in {} bytes of records",
                bytes.len()
            );
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message).into());
        }
        Ok(bytes)
    };
    let set = RecordBatchDecoder::decode_with_custom_compression(buf, Some(decompress))
        .map_err(|e| LogError::Corrupt(format!("decoding {what}: {e}")))?;
    Ok(set.records)
}

/// The batches a scan found (with where each starts), and where and why it stopped
/// early, if it did.
pub type Scan = (Vec<(usize, BatchHeader)>, Option<(usize, LogError)>);

/// Walks the whole batches in `buf`, stopping at the first incomplete or invalid one.
pub fn scan(buf: &[u8]) -> Scan {
    let mut at = 0;
    let mut out = vec![];
    while at < buf.len() {
        match BatchHeader::parse(&buf[at..]) {
            Ok(h) => {
                out.push((at, h));
                at += h.size;
            }
            Err(e) => return (out, Some((at, e))),
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    use super::*;

    fn batch(n: usize, compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from(format!("value {i}"))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encodes");
        buf.to_vec()
    }

    /// Found by the fuzzer (target record_batch): a batch with a valid CRC whose
    /// header claims 2^31-1 records passed every check of the log, and decoding it
    /// (a consumer, a streaming read, `ListOffsets` by timestamp) aborted the process
    /// on a 300 GB allocation.
    #[test]
    fn a_batch_claiming_more_records_than_its_bytes_hold_is_an_error_not_an_abort() {
        for compression in [Compression::None, Compression::Zstd] {
            let mut bytes = batch(3, compression);
            assert_eq!(
                decode_records(&mut Bytes::from(bytes.clone()), "t-0")
                    .unwrap()
                    .len(),
                3
            );
            bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            BatchHeader::parse(&bytes).expect("a valid header");
            let err = decode_records(&mut Bytes::from(bytes), "t-0")
                .unwrap_err()
                .to_string();
            assert!(err.contains("claims 2147483647 records"), "{err}");
        }
    }
}

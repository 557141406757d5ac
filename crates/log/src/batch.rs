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
/// The decoder reserves room for as many records as the header claims, and for as
/// many headers as a record claims, before it reads them, so a batch with a valid CRC
/// claiming 2^31-1 of either would abort the process; the records are checked
/// against the (decompressed) bytes first, as [`check_records`] checks them on append.
pub fn decode_records(buf: &mut Bytes, what: &str) -> Result<Vec<Record>> {
    let claimed = match buf.get(57..61) {
        Some(b) => i32::from_be_bytes(b.try_into().expect("4 bytes")),
        None => 0,
    };
    let decompress = |records: &mut Bytes, compression: Compression| {
        let bytes = decompressed(records, compression)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if claimed.max(0) as usize > bytes.len() / MIN_RECORD_BYTES {
            let message = format!(
                "the batch claims {claimed} records in {} bytes of records",
                bytes.len()
            );
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message).into());
        }
        // Each record's header count too: the decoder reserves room for it first.
        walk_records(&bytes, claimed.max(0) as usize)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
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

/// Checks every record of a batch [`BatchHeader::parse`] accepted: each length (the
/// record's, its key's and value's, each header's) fits in the bytes left, the header
/// count is no more than those bytes could hold, and there are as many records as the
/// header says. Compressed records are decompressed to be checked. A batch that passes
/// decodes without surprises: the `kafka-protocol` decoder that consumers use reserves
/// room for a record's headers from the count on the wire before reading them, so one
/// forged count would abort the process that reads the batch, long after it was
/// acknowledged. Kafka's broker validates produced records the same way.
pub fn check_records(batch: &[u8], header: &BatchHeader) -> Result<()> {
    let records = &batch[HEADER_LEN..header.size];
    let count = header.record_count as usize;
    let compression = match header.attributes & 0x07 {
        0 => None,
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Snappy),
        3 => Some(Compression::Lz4),
        4 => Some(Compression::Zstd),
        other => {
            return Err(LogError::Corrupt(format!(
                "unknown compression codec {other}"
            )));
        }
    };
    let checked = match compression {
        // Uncompressed records are checked where they lie, without a copy.
        None => walk_records(records, count),
        Some(c) => decompressed(&mut Bytes::copy_from_slice(records), c)
            .and_then(|bytes| walk_records(&bytes, count)),
    };
    checked.map_err(|e| LogError::Corrupt(format!("a record batch's records: {e}")))
}

/// A batch's records, decompressed: what the append check and the read path share.
/// Snappy's claimed length is checked first (see [`snappy_claims_fit`]).
fn decompressed(
    records: &mut Bytes,
    compression: Compression,
) -> std::result::Result<Bytes, String> {
    use bytes::Buf;
    let take_all = |b: &mut Bytes| Ok(b.copy_to_bytes(b.remaining()));
    let bytes = match compression {
        Compression::None => cmpr::None::decompress(records, take_all),
        Compression::Gzip => cmpr::Gzip::decompress(records, take_all),
        Compression::Snappy => {
            snappy_claims_fit(records)?;
            cmpr::Snappy::decompress(records, take_all)
        }
        Compression::Lz4 => cmpr::Lz4::decompress(records, take_all),
        Compression::Zstd => cmpr::Zstd::decompress(records, take_all),
    };
    bytes.map_err(|e| format!("cannot decompress the records: {e}"))
}

/// Most bytes a snappy block can expand to per byte of it (a 3-byte copy writes at
/// most 64 bytes), with room to spare.
const SNAPPY_MAX_RATIO: u64 = 32;

/// Checks the uncompressed lengths a snappy payload claims (raw, or Kafka's xerial
/// framing: a magic header, then blocks each with its length) against what its bytes
/// could expand to: the decompressor allocates the claimed length, up to 4 GiB, before
/// it reads a byte.
fn snappy_claims_fit(payload: &[u8]) -> std::result::Result<(), String> {
    // What the decompressor takes for Kafka's framing; anything else is raw snappy.
    const XERIAL: &[u8] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
    let block_fits = |block: &[u8]| -> std::result::Result<(), String> {
        let mut claimed: u64 = 0;
        for (i, byte) in block.iter().take(5).enumerate() {
            claimed |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                let most = (block.len() as u64).saturating_mul(SNAPPY_MAX_RATIO);
                return if claimed > most {
                    Err(format!(
                        "a snappy block of {} bytes claims {claimed} bytes uncompressed",
                        block.len()
                    ))
                } else {
                    Ok(())
                };
            }
        }
        Err("a snappy block's length is cut short".into())
    };
    let Some(mut rest) = payload.strip_prefix(XERIAL) else {
        return block_fits(payload);
    };
    while !rest.is_empty() {
        let Some(size) = rest.get(..4) else {
            return Err("a snappy block's size is cut short".into());
        };
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize;
        let Some(block) = rest.get(4..4 + size) else {
            return Err(format!("a snappy block of {size} bytes is cut short"));
        };
        block_fits(block)?;
        rest = &rest[4 + size..];
    }
    Ok(())
}

/// Walks `count` records (format v2) that must fill `buf` exactly.
fn walk_records(buf: &[u8], count: usize) -> std::result::Result<(), String> {
    let mut at = 0;
    for i in 0..count {
        let len = varint(buf, &mut at).map_err(|e| format!("record {i}: length: {e}"))?;
        let end = fits(len, buf.len() - at).map_err(|e| format!("record {i}: {e}"))?;
        let record = &buf[at..at + end];
        at += end;
        check_record(record).map_err(|e| format!("record {i}: {e}"))?;
    }
    if at != buf.len() {
        return Err(format!(
            "{} bytes after the {count} records the header counts",
            buf.len() - at
        ));
    }
    Ok(())
}

fn check_record(r: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0;
    if r.is_empty() {
        return Err("no attributes".into());
    }
    at += 1;
    varlong(r, &mut at).map_err(|e| format!("timestamp delta: {e}"))?;
    varint(r, &mut at).map_err(|e| format!("offset delta: {e}"))?;
    for what in ["key", "value"] {
        let len = varint(r, &mut at).map_err(|e| format!("{what} length: {e}"))?;
        if len != -1 {
            at += fits(len, r.len() - at).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    let headers = varint(r, &mut at).map_err(|e| format!("header count: {e}"))?;
    // A header takes at least two bytes (its key and value lengths).
    if headers < 0 || headers as usize > (r.len() - at) / 2 {
        return Err(format!(
            "{headers} headers claimed, {} bytes left",
            r.len() - at
        ));
    }
    for h in 0..headers {
        let len = varint(r, &mut at).map_err(|e| format!("header {h} key length: {e}"))?;
        at += fits(len, r.len() - at).map_err(|e| format!("header {h} key: {e}"))?;
        std::str::from_utf8(&r[at - len as usize..at])
            .map_err(|_| format!("header {h} key is not UTF-8"))?;
        let len = varint(r, &mut at).map_err(|e| format!("header {h} value length: {e}"))?;
        if len != -1 {
            at += fits(len, r.len() - at).map_err(|e| format!("header {h} value: {e}"))?;
        }
    }
    if at != r.len() {
        return Err(format!("{} bytes after its headers", r.len() - at));
    }
    Ok(())
}

/// A non-negative length that fits in `left` bytes.
fn fits(len: i64, left: usize) -> std::result::Result<usize, String> {
    if len < 0 || len as u64 > left as u64 {
        return Err(format!("length {len} with {left} bytes left"));
    }
    Ok(len as usize)
}

fn varint(b: &[u8], at: &mut usize) -> std::result::Result<i64, String> {
    let v = varlong(b, at)?;
    if v < i32::MIN as i64 || v > i32::MAX as i64 {
        return Err(format!("{v} does not fit in 32 bits"));
    }
    Ok(v)
}

/// A zigzag varint of up to 64 bits.
fn varlong(b: &[u8], at: &mut usize) -> std::result::Result<i64, String> {
    let mut raw: u64 = 0;
    for shift in (0..70).step_by(7) {
        let Some(&byte) = b.get(*at) else {
            return Err("cut short".into());
        };
        *at += 1;
        if shift == 63 && byte > 1 {
            return Err("longer than 64 bits".into());
        }
        raw |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err("longer than 64 bits".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn encoded(compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..50)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                // One batch: the encoder starts another where offset - sequence changes.
                sequence: i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: (i % 2 == 0).then(|| bytes::Bytes::from(format!("key-{i}"))),
                value: Some(bytes::Bytes::from(vec![b'v'; i as usize])),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(bytes::Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
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
        .unwrap();
        buf.to_vec()
    }

    /// An uncompressed batch of `records` (their bytes, `count` of them), with a valid CRC.
    fn batch_of(records: &[u8], count: i32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[8..12]
            .copy_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn zigzag(v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = vec![];
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// attributes, timestamp delta, offset delta, key "k", value "v", then `headers`.
    fn record(header_count: i64, headers: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 0, 0];
        body.extend(zigzag(1));
        body.push(b'k');
        body.extend(zigzag(1));
        body.push(b'v');
        body.extend(zigzag(header_count));
        body.extend_from_slice(headers);
        let mut r = zigzag(body.len() as i64);
        r.extend(body);
        r
    }

    #[test]
    fn batches_from_the_encoder_pass_in_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encoded(c);
            let h = BatchHeader::parse(&b).unwrap();
            assert_eq!(h.size, b.len(), "{c:?}: one batch");
            check_records(&b, &h).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }

    /// A record claiming 2^31-1 headers passed the CRC check and was acknowledged; the
    /// first consumer or timestamp lookup to decode it then asked for ~120 GB and aborted.
    #[test]
    fn a_record_whose_header_count_lies_is_refused() {
        let good = batch_of(&record(1, &[2, b'h', 2, b'x']), 1);
        let h = BatchHeader::parse(&good).unwrap();
        check_records(&good, &h).unwrap();
        for (count, headers) in [
            (i32::MAX as i64, vec![]),
            (2, vec![2, b'h', 2, b'x']),
            (-3, vec![]),
            (1, vec![40, b'h', 2, b'x']),
            (1, vec![2, b'h', 40, b'x']),
        ] {
            let bad = batch_of(&record(count, &headers), 1);
            let h = BatchHeader::parse(&bad).unwrap();
            let err = check_records(&bad, &h).unwrap_err().to_string();
            assert!(err.contains("record 0"), "{err}");
        }
        // More records counted than there are, and a length past the batch.
        let two = batch_of(&record(1, &[2, b'h', 2, b'x']), 2);
        assert!(check_records(&two, &BatchHeader::parse(&two).unwrap()).is_err());
        let mut long = zigzag(1000);
        long.extend([0, 0, 0]);
        let long = batch_of(&long, 1);
        assert!(check_records(&long, &BatchHeader::parse(&long).unwrap()).is_err());
    }

    #[test]
    fn a_partition_does_not_acknowledge_a_batch_whose_records_lie() {
        let dir = tempfile::tempdir().unwrap();
        let log = crate::Log::open(dir.path(), crate::LogConfig::default()).unwrap();
        let topic = log.create_topic("t", 1, None).unwrap();
        let mut bad = batch_of(&record(i32::MAX as i64, &[]), 1);
        let err = topic.partitions[0].append(&mut bad).unwrap_err();
        assert!(err.to_string().contains("headers claimed"), "{err}");
        let mut good = encoded(Compression::Lz4);
        topic.partitions[0].append(&mut good).unwrap();
    }

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

    /// Found by the fuzzer (target record_batch): a snappy payload whose header claims
    /// 2^31 bytes uncompressed made the decompressor allocate them before reading one.
    #[test]
    fn a_snappy_payload_claiming_gigabytes_is_an_error_before_any_allocation() {
        // Raw snappy: the claimed length is the leading varint.
        let raw = [0xff, 0xff, 0xff, 0xff, 0x07, 0x00, 0x01];
        assert!(snappy_claims_fit(&raw).unwrap_err().contains("claims"));
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend(7u32.to_be_bytes());
        framed.extend(raw);
        assert!(snappy_claims_fit(&framed).unwrap_err().contains("claims"));
        // Real snappy batches pass, and decode.
        let good = batch(20, Compression::Snappy);
        let h = BatchHeader::parse(&good).unwrap();
        check_records(&good, &h).unwrap();
        assert_eq!(
            decode_records(&mut Bytes::from(good), "t-0").unwrap().len(),
            20
        );
        // A batch whose snappy records lie about their size is refused on both paths.
        let mut bad = good_header_with(&framed);
        let h = BatchHeader::parse(&bad).unwrap();
        assert!(check_records(&bad, &h).is_err());
        assert!(decode_records(&mut Bytes::from(std::mem::take(&mut bad)), "t-0").is_err());
    }

    /// A batch header (snappy, one record) over `records`, with a valid CRC.
    fn good_header_with(records: &[u8]) -> Vec<u8> {
        let mut b = batch_of(records, 1);
        b[21..23].copy_from_slice(&2i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

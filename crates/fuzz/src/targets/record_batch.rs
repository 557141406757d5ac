//! `record_batch`: the log's record batches as it reads them from its segment files
//! and from producers: [`ember_log::batch::scan`] (the header checks every append
//! and read goes through), [`ember_log::scan_segment`] (recovery of a segment after a
//! crash), and the decoding of the records of every batch those accept, as
//! consumers, streaming reads and `ListOffsets` by timestamp do.
//!
//! A mutated batch almost never has a valid CRC-32C, so each input also runs with its
//! CRCs recomputed: that is what a producer sends, and what reaches the decoder.

use bytes::{Bytes, BytesMut};
use ember_log::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::{KIB, Runner, Target};
use crate::Result;
use crate::mutate::Dictionary;

pub fn target() -> Target {
    Target {
        name: "record_batch",
        max_len: 64 * KIB,
        dictionary: Dictionary::default(),
        runner: || Ok(Box::new(Batches)),
        seeds,
    }
}

struct Batches;

impl Runner for Batches {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let raw = check(input);
        let mut fixed = input.to_vec();
        fix_crcs(&mut fixed);
        let fixed = check(&fixed);
        Ok(format!("raw {raw}; with CRCs fixed {fixed}"))
    }
}

/// Everything the log does with the bytes of a segment or a produce request.
fn check(bytes: &[u8]) -> String {
    let recovered = ember_log::scan_segment(bytes, 0);
    let (batches, stop) = batch::scan(bytes);
    let mut records = 0;
    let mut errors = vec![];
    for (at, header) in &batches {
        let mut one = Bytes::copy_from_slice(&bytes[*at..*at + header.size]);
        match batch::decode_records(&mut one, "a batch") {
            Ok(decoded) => records += decoded.len(),
            Err(e) => errors.push(e.to_string()),
        }
    }
    format!(
        "{} batches, {} damaged ranges, {records} records, stop: {}, decode errors: {}",
        batches.len(),
        recovered.damage.len(),
        stop.map_or("none".into(), |(_, e)| e.to_string()),
        errors.first().map_or("none", String::as_str),
    )
}

/// Recomputes the CRC-32C of every batch whose length field fits in `bytes`.
fn fix_crcs(bytes: &mut [u8]) {
    let mut at = 0;
    while bytes.len() - at >= HEADER_LEN {
        let Some(size) = BatchHeader::size_of(&bytes[at..]) else {
            return;
        };
        if size < HEADER_LEN || size > bytes.len() - at {
            return;
        }
        let crc = crc32c::crc32c(&bytes[at + 21..at + size]);
        bytes[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
        at += size;
    }
    let _ = LOG_OVERHEAD;
}

/// A batch of `n` records from offset `base`, encoded as ember's producer does.
pub(super) fn batch(base: i64, n: usize, compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: if i % 2 == 0 { -1 } else { 42 },
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: base + i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: (i % 2 == 1).then(|| Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value {i}"))),
            headers: [(
                kafka_protocol::protocol::StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"v")),
            )]
            .into_iter()
            .take(i % 2)
            .collect(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encoding a record batch");
    out.freeze()
}

/// Single batches of each compression, and a small segment of several batches.
fn seeds() -> Result<Vec<Vec<u8>>> {
    let mut out = vec![];
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        out.push(batch(0, 3, compression).to_vec());
    }
    out.push(batch(0, 1, Compression::None).to_vec());
    let mut segment = vec![];
    let mut base = 0;
    for n in [1, 4, 2] {
        segment.extend_from_slice(&batch(base, n, Compression::None));
        base += n as i64;
    }
    out.push(segment);
    Ok(out)
}

//! What opening a partition makes of the bytes it finds: which batches are valid,
//! which bytes are damaged, and which damage is a torn tail that may be cut.
//!
//! Recovery only cuts what it can prove was never flushed. Each partition keeps a
//! recovery point (Kafka's name): the offset up to which its segments were fsynced,
//! written atomically to `<partition>/recovery-point` at every flush (see
//! `Partition::flush`), at every segment roll and at a clean shutdown.
//!
//! ```text
//!  segment 0     segment 1            segment 2 (last)
//! [==========] [====XX=========]    [=========|~~~~~~~~~~]
//!                   ^                         ^ recovery point
//!                   damage in flushed data:   past it: a torn write may
//!                   reported, kept, reads     have left anything, so the
//!                   of it fail, the rest      first damage there is cut,
//!                   stays readable            with everything after it
//! ```
//!
//! Only the last segment can hold unflushed data: a segment is fsynced before the
//! next one is created. So damage in an older segment is always reported and
//! never cut, and without a recovery point (a log from before the file existed, or
//! a crash before the first flush) only the last segment's damage may be cut.
//!
//! A damaged batch is skipped by looking for the next valid one after it: a batch
//! that parses, passes its CRC-32C and carries a later offset than the batch before
//! the damage. The batches after it stay readable; reads of the offsets in between
//! fail with [`LogError::CorruptSegment`](crate::LogError::CorruptSegment).

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch::{BatchHeader, HEADER_LEN};
use crate::error::{LogError, Result};
use crate::segment::{Segment, Truncation};
use crate::state;

/// The recovery point's file in a partition directory.
pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Kafka's limit: offsets in a segment are its base plus an unsigned 32-bit delta
/// in the index; a batch must end within `i32::MAX` of the segment's base.
pub(crate) const MAX_RELATIVE_OFFSET: i64 = i32::MAX as i64;

/// Bytes of a segment that hold no valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Position of the first bad byte.
    pub start: u64,
    /// Position of the next valid batch, or the end of the segment.
    pub end: u64,
    /// The first offset the bad bytes stand for (one past the batch before them).
    pub first_offset: i64,
    /// The last one: one before the next valid batch, or `None` when no valid batch
    /// follows in this segment (then the next segment or the recovery point says).
    pub last_offset: Option<i64>,
    /// Why the batch at `start` is not valid.
    pub reason: String,
}

/// What [`scan_segment`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid batches with their positions, in order; their offsets increase.
    pub batches: Vec<(u64, BatchHeader)>,
    /// Damaged ranges between (and after) them, in order.
    pub damage: Vec<Damage>,
}

impl SegmentScan {
    /// The damage that recovery cuts (the first in the last segment that starts at
    /// or past the recovery point, or, without one, the first at all); the segment
    /// is cut at its `start`, and everything after goes with it.
    pub fn torn_tail(&self, recovery_point: Option<i64>) -> Option<usize> {
        self.damage
            .iter()
            .position(|d| recovery_point.is_none_or(|rp| d.first_offset >= rp))
    }

    /// One past the last offset of the valid batches (the base offset without any).
    pub fn end_offset(&self, base_offset: i64) -> i64 {
        self.batches
            .last()
            .map_or(base_offset, |(_, h)| h.last_offset() + 1)
    }
}

/// Scans a segment's bytes (a `.log` file whose first offset is `base_offset`):
/// every valid batch and every damaged range between them.
///
/// A batch is valid when [`BatchHeader::parse`] accepts it (complete, magic 2, a
/// matching CRC-32C) and its offsets follow on: the first batch starts at
/// `base_offset`, each next one right after the one before (the offset fields are
/// not under the CRC), and none ends more than `i32::MAX` past `base_offset`.
/// After a bad batch the scan looks, byte by byte, for the next batch that is valid
/// and starts later than the last good offset.
///
/// This is the whole of what the log trusts on disk, free of I/O and without panics
/// on any input, for fuzzing: `Log::open` runs it on every segment and decides from
/// its result (with [`SegmentScan::torn_tail`]) what to cut.
pub fn scan_segment(bytes: &[u8], base_offset: i64) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut at = 0usize;
    let mut next = base_offset;
    while at < bytes.len() {
        match check(&bytes[at..], base_offset, next, true) {
            Ok(h) => {
                scan.batches.push((at as u64, h));
                at += h.size;
                next = h.last_offset() + 1;
            }
            Err(reason) => {
                let resume = (at + 1..bytes.len().saturating_sub(HEADER_LEN - 1)).find_map(|q| {
                    check(&bytes[q..], base_offset, next, false)
                        .ok()
                        .map(|h| (q, h))
                });
                let (end, last_offset) = match resume {
                    Some((q, h)) => (q, Some(h.base_offset.saturating_sub(1))),
                    None => (bytes.len(), None),
                };
                scan.damage.push(Damage {
                    start: at as u64,
                    end: end as u64,
                    first_offset: next,
                    last_offset,
                    reason,
                });
                at = end;
                if let Some(last) = last_offset {
                    next = last + 1;
                }
            }
        }
    }
    scan
}

/// The batch at the start of `buf`, if valid where the next batch must start at
/// offset `next` (exactly, or, when looking past damage, at least).
fn check(
    buf: &[u8],
    base_offset: i64,
    next: i64,
    exact: bool,
) -> std::result::Result<BatchHeader, String> {
    // Cheap tests first: past damage this runs at every byte, and the CRC is the
    // expensive part.
    if buf.len() >= HEADER_LEN && !exact {
        let offset = i64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
        if buf[16] != 2 || offset < next || offset.saturating_sub(base_offset) > MAX_RELATIVE_OFFSET
        {
            return Err(String::new());
        }
    }
    let h = BatchHeader::parse(buf).map_err(|e| e.to_string())?;
    if exact && h.base_offset != next {
        return Err(format!(
            "batch has base offset {}, expected {next}",
            h.base_offset
        ));
    }
    // The last offset must leave room for the next one, and fit the index.
    let last = h
        .base_offset
        .checked_add(h.last_offset_delta as i64)
        .filter(|l| *l < i64::MAX && l.saturating_sub(base_offset) <= MAX_RELATIVE_OFFSET);
    if h.base_offset < next || last.is_none() {
        return Err(format!(
            "batch offsets {}+{} are out of the segment's range from {base_offset}",
            h.base_offset, h.last_offset_delta
        ));
    }
    Ok(h)
}

/// Opens the segments of the partition in `dir` (created if missing): cuts a torn
/// tail of the last one, reports other damage, and leaves the end of the log on
/// disk with the recovery point there. Returns the segments (at least one; the last
/// one free of damage, for appends) and the end offset.
pub(crate) fn recover(topic: &str, id: i32, dir: &Path) -> Result<(BTreeMap<i64, Segment>, i64)> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?
                .parse::<i64>()
                .ok()
                .filter(|base| *base >= 0)
        })
        .collect();
    bases.sort_unstable();
    let recovery_point = read_recovery_point(dir)?;
    let mut segments = BTreeMap::new();
    for (i, base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let (segment, truncation) = Segment::open(dir, *base, last, recovery_point)?;
        if let Some(t) = truncation {
            report(&t, segment.last_offset.map_or(*base, |o| o + 1));
        }
        segments.insert(*base, segment);
    }
    let mut next_offset = settle_damage(&mut segments, recovery_point);
    for segment in segments.values() {
        for d in segment.damage() {
            tracing::error!(
                topic,
                partition = id,
                file = %segment.path().display(),
                position = d.start,
                bytes = d.end - d.start,
                first_offset = d.first_offset,
                last_offset = d.last_offset,
                reason = %d.reason,
                "corrupt record batches in flushed data: kept as they are; reads of \
                 these offsets fail, the offsets around them stay readable"
            );
        }
    }
    if let Some(rp) = recovery_point
        && rp > next_offset
    {
        // As Kafka does: the end of the data wins (offsets from it on are
        // handed out again; consumers past it are out of range and reset).
        tracing::error!(
            topic,
            partition = id,
            recovery_point = rp,
            end_offset = next_offset,
            "the log ends before offsets that were flushed: segment files are missing"
        );
    }
    // Appends never go after damage: a fresh segment takes them.
    let needs_segment = segments
        .values()
        .next_back()
        .is_none_or(|last| last.size > 0 && !last.damage().is_empty());
    if needs_segment {
        if let Some(last) = segments.values().next_back() {
            last.sync()?;
        }
        let base = next_offset.max(
            segments
                .keys()
                .next_back()
                .map_or(0, |b| b.saturating_add(1)),
        );
        next_offset = base;
        segments.insert(base, Segment::create(dir, base)?);
        state::sync_dir(dir)?;
    }
    // What was just checked is on disk from here on (the last segment may have
    // held writes a crashed process left in the page cache).
    if recovery_point != Some(next_offset) {
        segments.values().next_back().expect("one segment").sync()?;
        state::sync_dir(dir)?;
        if created && let Some(parent) = dir.parent() {
            state::sync_dir(parent)?;
        }
        write_recovery_point(dir, next_offset)?;
    }
    Ok((segments, next_offset))
}

/// Works out where open-ended damage ends and which offsets no segment holds (both
/// recorded as damage, so that reading them fails rather than skipping ahead);
/// returns the end of the log. Nothing is removed: overlapping segments are
/// reported only.
fn settle_damage(segments: &mut BTreeMap<i64, Segment>, recovery_point: Option<i64>) -> i64 {
    let bases: Vec<i64> = segments.keys().copied().collect();
    for (i, base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let segment = segments.get_mut(base).expect("listed");
        let valid_end = segment.last_offset.map_or(*base, |o| o + 1);
        let mut damage: Vec<Damage> = segment.damage().to_vec();
        if let Some(d) = damage.last_mut()
            && d.last_offset.is_none()
        {
            // The bytes to the end of the segment stand for the offsets up to the
            // next segment, or, in the last one, up to what was flushed (recovery
            // cut it otherwise).
            let end = next_base
                .or(recovery_point)
                .unwrap_or(valid_end)
                .min(base.saturating_add(MAX_RELATIVE_OFFSET + 1));
            d.last_offset = Some((end - 1).max(d.first_offset - 1));
        }
        let end = damage
            .iter()
            .filter_map(|d| d.last_offset.map(|o| o + 1))
            .fold(valid_end, i64::max);
        if let Some(next_base) = next_base {
            if end < next_base {
                damage.push(Damage {
                    start: segment.size,
                    end: segment.size,
                    first_offset: end,
                    last_offset: Some(next_base - 1),
                    reason: format!("no segment holds offsets {end} to {}", next_base - 1),
                });
            } else if end > next_base {
                tracing::error!(
                    file = %segment.path().display(),
                    end_offset = end,
                    next_segment = next_base,
                    "segments overlap: reads of the overlap go to the later segment"
                );
            }
        }
        segment.set_damage(damage);
    }
    segments
        .values()
        .next_back()
        .map_or(0, |last| last.end_offset())
}

fn report(t: &Truncation, first_dropped_offset: i64) {
    tracing::warn!(
        file = %t.file.display(),
        position = t.position,
        first_dropped_offset,
        dropped_bytes = t.dropped_bytes,
        reason = %t.reason,
        "recovered a segment by truncating its tail"
    );
}

/// The partition's recovery point, or `None` without a usable one.
///
/// A damaged file is reported and treated as absent, as Kafka does with its
/// recovery-point checkpoint: that is the conservative choice (only the last
/// segment's damage may then be cut), and refusing to open would protect nothing.
pub(crate) fn read_recovery_point(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(RECOVERY_POINT_FILE);
    let Some(bytes) = state::read_optional(&path)? else {
        return Ok(None);
    };
    match state::parse_number(&path, &bytes) {
        Ok(offset) => Ok(Some(offset)),
        Err(e) => {
            tracing::error!(
                error = %e,
                "ignoring the recovery point: only damage in the last segment may be cut"
            );
            Ok(None)
        }
    }
}

/// Records that every offset below `offset` is on disk.
pub(crate) fn write_recovery_point(dir: &Path, offset: i64) -> Result<()> {
    state::write_atomically(
        &dir.join(RECOVERY_POINT_FILE),
        format!("{offset}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid batch of `n` records at `base`, as the `kafka-protocol` crate encodes it.
    fn batch(base: i64, n: usize) -> Vec<u8> {
        let records: Vec<_> = (0..n)
            .map(|i| kafka_protocol::records::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: base + i as i64,
                // The encoder starts a new batch where offset - sequence changes.
                sequence: i as i32,
                timestamp: 1,
                key: None,
                value: Some(bytes::Bytes::from(format!("value {}", base + i as i64))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        kafka_protocol::records::RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &kafka_protocol::records::RecordEncodeOptions {
                version: 2,
                compression: kafka_protocol::records::Compression::None,
            },
        )
        .expect("encodes");
        buf.to_vec()
    }

    /// Batches of 3 records from offset 100: (bytes, position of each batch).
    fn segment(batches: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = vec![];
        let mut positions = vec![];
        for i in 0..batches {
            positions.push(bytes.len());
            bytes.extend(batch(100 + 3 * i as i64, 3));
        }
        (bytes, positions)
    }

    #[test]
    fn a_clean_segment_is_all_batches() {
        let (bytes, positions) = segment(4);
        let scan = scan_segment(&bytes, 100);
        assert!(scan.damage.is_empty());
        let found: Vec<_> = scan.batches.iter().map(|(p, _)| *p as usize).collect();
        assert_eq!(found, positions);
        assert_eq!(scan.end_offset(100), 112);
    }

    #[test]
    fn a_damaged_payload_is_skipped_and_the_batches_after_it_are_found() {
        let (mut bytes, positions) = segment(4);
        bytes[positions[1] + 70] ^= 0xff;
        let scan = scan_segment(&bytes, 100);
        assert_eq!(scan.batches.len(), 3);
        assert_eq!(
            scan.damage,
            vec![Damage {
                start: positions[1] as u64,
                end: positions[2] as u64,
                first_offset: 103,
                last_offset: Some(105),
                reason: scan.damage[0].reason.clone(),
            }]
        );
        assert!(scan.damage[0].reason.contains("CRC"), "{:?}", scan.damage);
        assert_eq!(scan.end_offset(100), 112);
    }

    #[test]
    fn a_damaged_length_or_base_offset_is_skipped_too() {
        for field in [0, 8] {
            let (mut bytes, positions) = segment(4);
            for b in &mut bytes[positions[2] + field..positions[2] + field + 4] {
                *b ^= 0x5a;
            }
            let scan = scan_segment(&bytes, 100);
            assert_eq!(scan.batches.len(), 3, "field at {field}");
            assert_eq!(scan.damage.len(), 1);
            assert_eq!(scan.damage[0].start, positions[2] as u64);
            assert_eq!(scan.damage[0].end, positions[3] as u64);
            assert_eq!(
                (scan.damage[0].first_offset, scan.damage[0].last_offset),
                (106, Some(108))
            );
        }
    }

    #[test]
    fn a_torn_tail_runs_to_the_end_and_is_what_recovery_cuts() {
        let (bytes, positions) = segment(4);
        let torn = &bytes[..bytes.len() - 10];
        let scan = scan_segment(torn, 100);
        assert_eq!(scan.batches.len(), 3);
        assert_eq!(scan.damage[0].start, positions[3] as u64);
        assert_eq!(scan.damage[0].last_offset, None);
        assert_eq!(scan.torn_tail(None), Some(0));
        assert_eq!(scan.torn_tail(Some(109)), Some(0));
        // Flushed up to 112: that batch was on disk whole, so the damage is kept.
        assert_eq!(scan.torn_tail(Some(112)), None);
    }

    #[test]
    fn batches_whose_offsets_do_not_follow_on_are_damage() {
        let mut bytes = batch(100, 3);
        bytes.extend(batch(100, 3));
        bytes.extend(batch(103, 3));
        let scan = scan_segment(&bytes, 100);
        let offsets: Vec<_> = scan.batches.iter().map(|(_, h)| h.base_offset).collect();
        assert_eq!(offsets, vec![100, 103]);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].last_offset, Some(102));
        // A segment whose first batch is not at its base offset.
        let scan = scan_segment(&batch(7, 1), 100);
        assert!(scan.batches.is_empty());
        let scan = scan_segment(&batch(i64::MAX, 1), 100);
        assert!(scan.batches.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_every_byte_is_accounted_for() {
        let (clean, _) = segment(6);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let mut bytes = if round % 4 == 0 {
                (0..random() % 300).map(|_| random() as u8).collect()
            } else {
                clean.clone()
            };
            for _ in 0..random() % 4 {
                if bytes.is_empty() {
                    break;
                }
                let at = (random() as usize) % bytes.len();
                match random() % 3 {
                    0 => bytes[at] = random() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, random() as u8),
                }
            }
            let base = [0, 100, i64::MAX, -5][(random() % 4) as usize];
            let scan = scan_segment(&bytes, base);
            // Batches and damage tile the bytes, in order, without overlap.
            let mut pieces: Vec<(u64, u64)> = scan
                .batches
                .iter()
                .map(|(p, h)| (*p, p + h.size as u64))
                .chain(scan.damage.iter().map(|d| (d.start, d.end)))
                .collect();
            pieces.sort();
            let mut at = 0;
            for (start, end) in pieces {
                assert_eq!(start, at, "round {round}");
                assert!(end > start);
                at = end;
            }
            assert_eq!(at, bytes.len() as u64);
            let _ = scan.torn_tail(Some(random() as i64));
        }
    }
}

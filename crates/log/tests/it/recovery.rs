//! Opening a log after damage: a torn tail of unflushed data is cut; damage in data
//! that was flushed is reported and kept, reads of it fail and everything around it
//! stays readable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_log::{Consumer, ConsumerConfig, Durability, Log, LogConfig, LogError, Partition};

const RECORDS_PER_BATCH: usize = 5;

/// A batch of `RECORDS_PER_BATCH` records whose values name their offsets, given
/// the offset it will get.
fn batch(first: i64, timestamp: i64) -> Vec<u8> {
    let records: Vec<_> = (0..RECORDS_PER_BATCH)
        .map(|i| kafka_protocol::records::Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp,
            key: None,
            value: Some(Bytes::from(format!(
                "record {} with some padding to make batches larger",
                first + i as i64
            ))),
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
    .unwrap();
    buf.to_vec()
}

fn open(dir: &Path, durability: Durability) -> Arc<Log> {
    Log::open(
        dir,
        LogConfig {
            durability,
            ..LogConfig::default()
        },
    )
    .unwrap()
}

/// Appends `batches` batches to partition t-0.
fn append(partition: &Partition, batches: usize) {
    for _ in 0..batches {
        let next = partition.end_offset();
        partition.append(&mut batch(next, 1_000 + next)).unwrap();
    }
}

/// A log with topic t of `segments` segments of `batches` batches each, closed
/// cleanly (`Log::sync`, what `ember broker` does on SIGTERM) or not.
fn filled(dir: &Path, segments: usize, batches: usize, clean: bool) -> i64 {
    let log = open(dir, Durability::Never);
    log.create_topic("t", 1, None).unwrap();
    let partition = log.partition("t", 0).unwrap();
    for s in 0..segments {
        if s > 0 {
            partition.roll().unwrap();
        }
        append(&partition, batches);
    }
    if clean {
        log.sync().unwrap();
    }
    partition.end_offset()
}

fn partition_dir(dir: &Path) -> PathBuf {
    dir.join("t/0")
}

fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(partition_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

/// Positions of the batches in a segment file.
fn batch_positions(file: &Path) -> Vec<u64> {
    let base = file.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let scan = ember_log::scan_segment(&std::fs::read(file).unwrap(), base);
    assert!(scan.damage.is_empty());
    scan.batches.iter().map(|(p, _)| *p).collect()
}

fn flip(file: &Path, at: u64, len: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    for b in &mut bytes[at as usize..at as usize + len] {
        *b ^= 0xff;
    }
    std::fs::write(file, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What reading t-0 from its start to its end finds: each readable offset (its
/// value checked) and each error, after which the read goes on past the damage.
struct Walk {
    offsets: Vec<i64>,
    errors: Vec<(PathBuf, u64, i64, i64)>,
}

fn walk(log: &Log) -> Walk {
    let partition = log.partition("t", 0).unwrap();
    let mut out = Walk {
        offsets: vec![],
        errors: vec![],
    };
    let mut position = partition.start_offset();
    while position < partition.end_offset() {
        match partition.read(position, 3000) {
            Ok(fetched) => {
                let mut records = fetched.records;
                assert!(!records.is_empty(), "nothing at {position}");
                while !records.is_empty() {
                    let set =
                        kafka_protocol::records::RecordBatchDecoder::decode(&mut records).unwrap();
                    for r in set.records {
                        if r.offset >= position {
                            let value = format!(
                                "record {} with some padding to make batches larger",
                                r.offset
                            );
                            assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
                            out.offsets.push(r.offset);
                        }
                    }
                }
                position = *out.offsets.last().unwrap() + 1;
            }
            Err(LogError::CorruptSegment {
                file,
                position: at,
                first_offset,
                last_offset,
                reason,
            }) => {
                assert!(!reason.is_empty());
                assert!(first_offset <= position && position <= last_offset);
                out.errors.push((file, at, first_offset, last_offset));
                position = last_offset + 1;
            }
            Err(e) => panic!("reading {position}: {e}"),
        }
    }
    out
}

/// The offsets `0..end` but those the errors name.
fn all_but(end: i64, errors: &[(PathBuf, u64, i64, i64)]) -> Vec<i64> {
    (0..end)
        .filter(|o| !errors.iter().any(|(_, _, f, l)| f <= o && o <= l))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Spot {
    /// 16 bytes in the middle of the file, wherever that falls.
    Middle16,
    /// A batch's length field, so that the batch's extent is lost.
    Length,
    /// A batch's base offset (outside the CRC).
    BaseOffset,
    /// A batch's records.
    Payload,
}

/// The reported defect: 16 bytes flipped in segment 2 of 8 used to cut that segment
/// and delete segments 3 to 8. Now nothing is removed, reading the damaged batch
/// fails naming the file and position, and every other record stays readable, at
/// any position in any older segment, after a clean shutdown or a crash, and with
/// or without a recovery point file.
#[test]
fn damage_in_an_older_segment_is_reported_and_no_later_segment_is_lost() {
    let mut cases = 0;
    for segment in [1, 0, 6] {
        for spot in [
            Spot::Middle16,
            Spot::Length,
            Spot::BaseOffset,
            Spot::Payload,
        ] {
            for (clean, keep_recovery_point) in [(true, true), (false, true), (false, false)] {
                let case = format!(
                    "segment {segment}, {spot:?}, clean {clean}, recovery point {keep_recovery_point}"
                );
                let dir = tempfile::tempdir().unwrap();
                let end = filled(dir.path(), 8, 10, clean);
                assert_eq!(end, 400);
                if !keep_recovery_point {
                    std::fs::remove_file(partition_dir(dir.path()).join("recovery-point")).unwrap();
                }
                let before = segment_files(dir.path());
                let file = before[segment].0.clone();
                let positions = batch_positions(&file);
                let (at, len) = match spot {
                    Spot::Middle16 => (before[segment].1 / 2, 16),
                    Spot::Length => (positions[3] + 8, 4),
                    Spot::BaseOffset => (positions[3] + 2, 4),
                    Spot::Payload => (positions[3] + 100, 4),
                };
                flip(&file, at, len);
                let log = open(dir.path(), Durability::Never);
                let partition = log.partition("t", 0).unwrap();
                assert_eq!(segment_files(dir.path()), before, "{case}: files changed");
                assert_eq!(partition.end_offset(), end, "{case}");
                let w = walk(&log);
                assert!(!w.errors.is_empty(), "{case}: damage not reported");
                for (f, p, _, _) in &w.errors {
                    assert_eq!(f, &file, "{case}");
                    assert!(*p <= at && positions.contains(p), "{case}: error at {p}");
                }
                // One batch lost, or two when 16 bytes straddle a boundary.
                let lost = end as usize - w.offsets.len();
                assert!(lost == 5 || lost == 10, "{case}: lost {lost}");
                assert_eq!(w.offsets, all_but(end, &w.errors), "{case}");
                let appended = partition.append(&mut batch(end, 5)).unwrap();
                assert_eq!(appended.base_offset, end, "{case}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 36);
}

/// A restart after damage reported once: still reported, still nothing removed.
#[test]
fn reported_damage_survives_more_restarts_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let end = filled(dir.path(), 4, 10, true);
    let files = segment_files(dir.path());
    let positions = batch_positions(&files[1].0);
    flip(&files[1].0, positions[4] + 70, 3);
    for round in 0..3 {
        let log = open(dir.path(), Durability::Never);
        let partition = log.partition("t", 0).unwrap();
        let w = walk(&log);
        assert_eq!(
            w.errors,
            vec![(files[1].0.clone(), positions[4], 70, 74)],
            "round {round}"
        );
        assert_eq!(w.offsets.len() as i64, partition.end_offset() - 5);
        assert_eq!(partition.end_offset(), end + 5 * round);
        append(&partition, 1);
        if round == 1 {
            log.sync().unwrap();
        }
    }
}

/// The tail written after the last flush, damaged by a crash: cut as before,
/// whether garbage follows the last batch, the last batch is short, or its bytes
/// are wrong; appends then go on from the cut.
#[test]
fn a_torn_tail_past_the_recovery_point_is_cut_and_appends_go_on() {
    let crashed = tempfile::tempdir().unwrap();
    {
        let log = open(crashed.path(), Durability::Never);
        log.create_topic("t", 1, None).unwrap();
        let partition = log.partition("t", 0).unwrap();
        append(&partition, 8);
        log.sync().unwrap();
        append(&partition, 2);
        // No sync: the last two batches were never flushed when the process died.
    }
    let segment = partition_dir(crashed.path()).join("00000000000000000000.log");
    let clean = std::fs::read(&segment).unwrap();
    let positions = batch_positions(&segment);
    type Damage = fn(&mut Vec<u8>, &[u64]);
    let damages: [(&str, Damage, i64, u64); 4] = [
        (
            "garbage after the last batch",
            |b, _| b.extend_from_slice(b"\x00\x00\x00\x00\x00\x00\x00\x63\x00\x00\x02\x00garbage"),
            50,
            clean.len() as u64,
        ),
        (
            "a short last batch",
            |b, _| b.truncate(b.len() - 20),
            45,
            positions[9],
        ),
        (
            "a flipped byte in the last batch",
            |b, _| *b.last_mut().unwrap() ^= 1,
            45,
            positions[9],
        ),
        (
            "zeros over the second-last batch",
            |b, p| b[p[8] as usize..p[9] as usize].fill(0),
            40,
            positions[8],
        ),
    ];
    for (what, damage, cut_end, cut_len) in damages {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(crashed.path(), dir.path());
        let file = partition_dir(dir.path()).join("00000000000000000000.log");
        let mut bytes = clean.clone();
        damage(&mut bytes, &positions);
        std::fs::write(&file, bytes).unwrap();
        let log = open(dir.path(), Durability::Never);
        let partition = log.partition("t", 0).unwrap();
        assert_eq!(partition.end_offset(), cut_end, "{what}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), cut_len, "{what}");
        let w = walk(&log);
        assert!(w.errors.is_empty(), "{what}");
        assert_eq!(w.offsets, (0..cut_end).collect::<Vec<_>>());
        let appended = partition.append(&mut batch(cut_end, 5)).unwrap();
        assert_eq!(appended.base_offset, cut_end, "{what}");
        assert_eq!(walk(&log).offsets.len() as i64, cut_end + 5);
    }
}

/// Damage in the flushed part of the last segment is not a torn tail: kept and
/// reported; appends go to a new segment.
#[test]
fn damage_before_the_recovery_point_in_the_last_segment_is_kept() {
    for torn_tail_too in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), Durability::Never);
            log.create_topic("t", 1, None).unwrap();
            let partition = log.partition("t", 0).unwrap();
            append(&partition, 10);
            log.sync().unwrap();
            append(&partition, 2);
        }
        let file = partition_dir(dir.path()).join("00000000000000000000.log");
        let positions = batch_positions(&file);
        flip(&file, positions[2] + 8, 2);
        let len = std::fs::metadata(&file).unwrap().len();
        if torn_tail_too {
            flip(&file, positions[11] + 80, 1);
        }
        let log = open(dir.path(), Durability::Never);
        let partition = log.partition("t", 0).unwrap();
        let (end, kept_len) = if torn_tail_too {
            (55, positions[11])
        } else {
            (60, len)
        };
        assert_eq!(partition.end_offset(), end, "torn tail {torn_tail_too}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), kept_len);
        let w = walk(&log);
        assert_eq!(w.errors, vec![(file.clone(), positions[2], 10, 14)]);
        assert_eq!(w.offsets, all_but(end, &w.errors));
        assert_eq!(
            partition.append(&mut batch(end, 5)).unwrap().base_offset,
            end
        );
        assert_eq!(partition.segment_files().len(), 2);
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            kept_len,
            "the damaged segment is not appended to"
        );
    }
}

/// An older log (or one that crashed before its first flush) has no recovery point:
/// only the last segment's damage may be cut; damage before it is reported.
#[test]
fn without_a_recovery_point_only_the_last_segment_may_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 3, 10, true);
    std::fs::remove_file(partition_dir(dir.path()).join("recovery-point")).unwrap();
    let files = segment_files(dir.path());
    let older = batch_positions(&files[1].0);
    let last = batch_positions(&files[2].0);
    flip(&files[1].0, older[6] + 90, 1);
    flip(&files[2].0, last[7] + 90, 1);
    let log = open(dir.path(), Durability::Never);
    let partition = log.partition("t", 0).unwrap();
    assert_eq!(partition.end_offset(), 135);
    let now = segment_files(dir.path());
    assert_eq!(now[..2], files[..2]);
    assert_eq!(now[2].1, last[7]);
    let w = walk(&log);
    assert_eq!(w.errors, vec![(files[1].0.clone(), older[6], 80, 84)]);
    assert_eq!(w.offsets, all_but(135, &w.errors));
}

/// A damaged recovery point file is reported and treated as missing (the safe way
/// round), not read as some offset.
#[test]
fn a_garbage_recovery_point_file_counts_as_none() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 2, 10, true);
    let rp = partition_dir(dir.path()).join("recovery-point");
    std::fs::write(&rp, "99999999\0junk").unwrap();
    let files = segment_files(dir.path());
    let last = batch_positions(&files[1].0);
    flip(&files[1].0, last[9] + 90, 1);
    let log = open(dir.path(), Durability::Never);
    assert_eq!(log.partition("t", 0).unwrap().end_offset(), 95);
    assert!(walk(&log).errors.is_empty());
    assert_eq!(std::fs::read_to_string(&rp).unwrap().trim(), "95");
}

/// The indexes are rebuilt from the batches at every open: damage to them is
/// harmless.
#[test]
fn damaged_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 4, 40, true);
    for (i, (file, _)) in segment_files(dir.path()).iter().enumerate() {
        let index = file.with_extension("index");
        let time = file.with_extension("timeindex");
        match i {
            0 => std::fs::write(&index, b"garbage garbage garbage").unwrap(),
            1 => std::fs::remove_file(&time).unwrap(),
            2 => {
                let len = std::fs::metadata(&index).unwrap().len();
                flip(&index, 0, len as usize);
                std::fs::write(&time, [0xffu8; 7]).unwrap();
            }
            _ => std::fs::write(&index, []).unwrap(),
        }
    }
    let log = open(dir.path(), Durability::Never);
    let w = walk(&log);
    assert!(w.errors.is_empty());
    assert_eq!(w.offsets, (0..800).collect::<Vec<_>>());
    let partition = log.partition("t", 0).unwrap();
    assert_eq!(
        partition.offset_for_timestamp(1_000 + 505).unwrap(),
        Some((505, 1_505))
    );
}

/// Which data each durability mode has flushed when the process dies: damage to the
/// last batch is cut when it was never flushed and kept when it was.
#[test]
fn each_durability_mode_moves_the_recovery_point_when_it_flushes() {
    let interval_day = Durability::Interval(Duration::from_secs(86_400));
    type BeforeCrash = fn(&Log);
    let cases: [(&str, Durability, BeforeCrash, bool); 7] = [
        // Synced at every append; the recovery point follows once a second.
        ("every-append", Durability::EveryAppend, |_| {}, false),
        (
            "every-append, maintained",
            Durability::EveryAppend,
            |log| log.maintain().unwrap(),
            true,
        ),
        (
            "interval 0ms",
            Durability::Interval(Duration::ZERO),
            |_| {},
            true,
        ),
        ("interval, not yet due", interval_day, |_| {}, false),
        (
            "interval, maintained",
            interval_day,
            |log| log.maintain().unwrap(),
            true,
        ),
        (
            "never",
            Durability::Never,
            |log| log.maintain().unwrap(),
            false,
        ),
        (
            "never, clean shutdown",
            Durability::Never,
            |log| log.sync().unwrap(),
            true,
        ),
    ];
    for (what, durability, before_crash, flushed) in cases {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), durability);
            log.create_topic("t", 1, None).unwrap();
            append(&log.partition("t", 0).unwrap(), 4);
            before_crash(&log);
        }
        let file = partition_dir(dir.path()).join("00000000000000000000.log");
        let positions = batch_positions(&file);
        flip(&file, positions[3] + 90, 1);
        let log = open(dir.path(), Durability::Never);
        let w = walk(&log);
        if flushed {
            assert_eq!(log.partition("t", 0).unwrap().end_offset(), 20, "{what}");
            assert_eq!(w.errors.len(), 1, "{what}");
            assert_eq!(w.offsets, (0..15).collect::<Vec<_>>(), "{what}");
        } else {
            assert_eq!(log.partition("t", 0).unwrap().end_offset(), 15, "{what}");
            assert!(w.errors.is_empty(), "{what}");
        }
    }
}

/// A consumer stops at the damaged batch with the error, and goes on past it once
/// it seeks there.
#[tokio::test]
async fn a_consumer_reaching_a_damaged_batch_gets_the_error_and_can_seek_past() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 2, 10, true);
    let file = &segment_files(dir.path())[0].0;
    flip(file, batch_positions(file)[5] + 100, 2);
    let log = open(dir.path(), Durability::Never);
    let mut consumer = Consumer::new(log.clone(), ConsumerConfig::default());
    consumer.assign(vec![("t".to_string(), 0)]).unwrap();
    let mut seen = vec![];
    let error = loop {
        match consumer.poll(Duration::from_millis(100)).await {
            Ok(records) => seen.extend(records.into_iter().map(|r| r.offset)),
            Err(e) => break e,
        }
    };
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
    match &error {
        LogError::CorruptSegment {
            file: f,
            first_offset: 25,
            last_offset: 29,
            ..
        } => assert_eq!(f, file),
        other => panic!("expected a corrupt segment error, got {other}"),
    }
    assert!(error.to_string().contains("00000000000000000000.log"));
    consumer.seek("t", 0, 30);
    let mut rest = vec![];
    loop {
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        if records.is_empty() {
            break;
        }
        rest.extend(records.into_iter().map(|r| r.offset));
    }
    assert_eq!(rest, (30..100).collect::<Vec<_>>());
}

/// Random damage to every kind of file in a partition: opening and reading never
/// panic, and a clean shutdown's data is never cut.
#[test]
fn random_damage_never_panics_and_never_loses_more_than_the_damage() {
    let pristine = tempfile::tempdir().unwrap();
    let end = filled(pristine.path(), 3, 6, true);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let files: Vec<PathBuf> = std::fs::read_dir(partition_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for _ in 0..1 + random() % 3 {
            let file = &files[random() as usize % files.len()];
            let mut bytes = std::fs::read(file).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = random() as usize % bytes.len();
            for b in bytes.iter_mut().skip(at).take(1 + random() as usize % 24) {
                *b = random() as u8;
            }
            std::fs::write(file, bytes).unwrap();
        }
        let rp_intact = std::fs::read_to_string(partition_dir(dir.path()).join("recovery-point"))
            .is_ok_and(|s| s == format!("{end}\n"));
        let log = open(dir.path(), Durability::Never);
        let partition = log.partition("t", 0).unwrap();
        let now = partition.end_offset();
        if rp_intact {
            assert_eq!(now, end, "round {round}: flushed data cut");
        } else {
            // Only the last segment may have been cut.
            assert!((60..=end).contains(&now), "round {round}: end {now}");
        }
        // Every offset is either readable (with its own value) or in an error.
        let w = walk(&log);
        assert_eq!(w.offsets, all_but(now, &w.errors), "round {round}");
    }
}

/// Offsets at the edge of `i64` in file names and in the recovery point, and a
/// missing last segment: opening and appending give errors or carry on, never a
/// panic, and a recovery point beyond the data does not move the end.
#[test]
fn extreme_offsets_on_disk_and_missing_segments_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 3, 4, true);
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[2].0).unwrap();
    let log = open(dir.path(), Durability::Never);
    let partition = log.partition("t", 0).unwrap();
    assert_eq!(partition.end_offset(), 40);
    assert_eq!(walk(&log).offsets, (0..40).collect::<Vec<_>>());
    append(&partition, 1);
    drop((partition, log));

    let pdir = partition_dir(dir.path());
    std::fs::write(pdir.join("recovery-point"), format!("{}\n", i64::MAX)).unwrap();
    let mut bytes = std::fs::read(&files[0].0).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(pdir.join(format!("{:020}.log", i64::MAX - 2)), &bytes).unwrap();
    let log = open(dir.path(), Durability::Never);
    let partition = log.partition("t", 0).unwrap();
    for offset in [0, 44, partition.end_offset() - 1] {
        let _ = partition.read(offset, 1000);
    }
    assert!(partition.append(&mut batch(0, 1)).is_err());
}

//! One segment of a partition: an append-only file of record batches, named by the
//! first offset it holds, with a sparse offset index and a time index beside it.
//!
//! ```text
//! 00000000000000001000.log        batches, as producers encoded them
//! 00000000000000001000.index      (offset - 1000: u32, file position: u32) every 4 KiB
//! 00000000000000001000.timeindex  (max timestamp so far: i64, offset - 1000: u32)
//! ```
//!
//! The indexes only narrow a search: a read still walks batch headers from the
//! indexed position. They are rebuilt from the batches whenever a segment is
//! opened, so damage to them costs nothing. Reads use positioned reads on a shared
//! file handle, so they need no lock once they know the segment's size.
//!
//! Damage that recovery keeps (see recovery.rs) is a list of byte ranges: a read
//! skips a range to reach later offsets, and fails with the range's position and
//! offsets when it asks for one of them. Every batch a read returns has had its
//! CRC checked again, so damage that happens after opening is caught as well.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::error::{LogError, Result};
use crate::recovery::{self, Damage};

/// Bytes of log between two offset index entries.
const INDEX_INTERVAL: u64 = 4096;

pub(crate) fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Where a read starts in a segment, taken under the partition's lock and used
/// without it.
#[derive(Clone)]
pub(crate) struct ReadView {
    file: Arc<File>,
    path: Arc<PathBuf>,
    /// Indexed position at or before the wanted offset.
    start: u64,
    /// The segment's size when the view was taken.
    end: u64,
    damage: Arc<Vec<Damage>>,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    path: Arc<PathBuf>,
    file: Arc<File>,
    index_file: File,
    time_file: File,
    pub size: u64,
    index: Vec<(u32, u32)>,
    time_index: Vec<(i64, u32)>,
    since_index: u64,
    /// Last offset held, if any batch is.
    pub last_offset: Option<i64>,
    /// Largest record timestamp held (-1: none).
    pub max_timestamp: i64,
    /// When the segment was created (or last modified, after a restart).
    pub modified: std::time::SystemTime,
    /// Damaged ranges recovery kept, in order (none in a segment being appended to).
    damage: Arc<Vec<Damage>>,
}

/// What recovery dropped from a segment's tail.
#[derive(Debug, Clone)]
pub struct Truncation {
    pub file: PathBuf,
    pub position: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

fn open_rw(path: &Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
        .map_err(|e| LogError::io(path, e))
}

impl Segment {
    pub(crate) fn create(dir: &Path, base_offset: i64) -> Result<Segment> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = open_rw(&path, true)?;
        let index_file = open_rw(&dir.join(file_name(base_offset, "index")), true)?;
        let time_file = open_rw(&dir.join(file_name(base_offset, "timeindex")), true)?;
        Ok(Segment {
            base_offset,
            path: Arc::new(path),
            file: Arc::new(file),
            index_file,
            time_file,
            size: 0,
            index: vec![],
            time_index: vec![],
            since_index: 0,
            last_offset: None,
            max_timestamp: -1,
            modified: std::time::SystemTime::now(),
            damage: Arc::default(),
        })
    }

    /// Opens an existing segment. Every batch is checked (CRC included) and the
    /// indexes are rebuilt from the valid ones. Damage is kept and reported, except
    /// in the `last` segment from the first damage at or past the `recovery_point`
    /// on (a torn tail: cut off, and returned as a truncation).
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        last: bool,
        recovery_point: Option<i64>,
    ) -> Result<(Segment, Option<Truncation>)> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = open_rw(&path, false)?;
        let meta = file.metadata().map_err(|e| LogError::io(&path, e))?;
        let mut content = vec![0; meta.len() as usize];
        file.read_exact_at(&mut content, 0)
            .map_err(|e| LogError::io(&path, e))?;
        let mut scan = recovery::scan_segment(&content, base_offset);
        let mut truncation = None;
        if let Some(torn) = last.then(|| scan.torn_tail(recovery_point)).flatten() {
            let at = scan.damage[torn].start;
            file.set_len(at).map_err(|e| LogError::io(&path, e))?;
            file.sync_all().map_err(|e| LogError::io(&path, e))?;
            truncation = Some(Truncation {
                file: path.clone(),
                position: at,
                dropped_bytes: content.len() as u64 - at,
                reason: scan.damage[torn].reason.clone(),
            });
            scan.damage.truncate(torn);
            scan.batches.retain(|(p, _)| *p < at);
        }
        let size = truncation
            .as_ref()
            .map_or(content.len() as u64, |t| t.position);
        let mut segment = Segment {
            base_offset,
            path: Arc::new(path),
            file: Arc::new(file),
            index_file: open_rw(&dir.join(file_name(base_offset, "index")), true)?,
            time_file: open_rw(&dir.join(file_name(base_offset, "timeindex")), true)?,
            size,
            index: vec![],
            time_index: vec![],
            since_index: 0,
            last_offset: None,
            max_timestamp: -1,
            modified: meta
                .modified()
                .unwrap_or_else(|_| std::time::SystemTime::now()),
            damage: Arc::new(scan.damage),
        };
        for (at, header) in &scan.batches {
            segment.index_batch(*at, header)?;
        }
        Ok((segment, truncation))
    }

    /// Damaged ranges kept in this segment.
    pub(crate) fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// Replaces the damage list (when the partition knows where open-ended damage
    /// ends, or finds offsets no segment holds).
    pub(crate) fn set_damage(&mut self, damage: Vec<Damage>) {
        self.damage = Arc::new(damage);
    }

    /// One past the last offset the segment stands for: its valid batches, and its
    /// damage when the partition knows what that holds.
    pub(crate) fn end_offset(&self) -> i64 {
        let batches = self.last_offset.map_or(self.base_offset, |o| o + 1);
        self.damage
            .iter()
            .filter_map(|d| d.last_offset.map(|o| o + 1))
            .fold(batches, i64::max)
    }

    /// The headers of every valid batch, for rebuilding producer state.
    pub(crate) fn headers(&self) -> Result<Vec<BatchHeader>> {
        let view = self.view(self.base_offset);
        let mut out = vec![];
        let mut at = 0;
        let mut damage = self.damage.iter().peekable();
        while at < self.size {
            if let Some(d) = damage.next_if(|d| d.start == at) {
                at = d.end;
                continue;
            }
            let header = view.header(at)?;
            at += header.size as u64;
            out.push(header);
        }
        Ok(out)
    }

    fn index_batch(&mut self, position: u64, header: &BatchHeader) -> Result<()> {
        let relative = |offset: i64| (offset - self.base_offset) as u32;
        if self.index.is_empty() || self.since_index >= INDEX_INTERVAL {
            let entry = (relative(header.base_offset), position as u32);
            self.index.push(entry);
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&entry.0.to_be_bytes());
            bytes[4..].copy_from_slice(&entry.1.to_be_bytes());
            self.index_file
                .write_all(&bytes)
                .map_err(|e| LogError::io(self.path.with_extension("index"), e))?;
            self.since_index = 0;
        }
        self.since_index += header.size as u64;
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            let entry = (header.max_timestamp, relative(header.last_offset()));
            self.time_index.push(entry);
            let mut bytes = [0u8; 12];
            bytes[..8].copy_from_slice(&entry.0.to_be_bytes());
            bytes[8..].copy_from_slice(&entry.1.to_be_bytes());
            self.time_file
                .write_all(&bytes)
                .map_err(|e| LogError::io(self.path.with_extension("timeindex"), e))?;
        }
        self.last_offset = Some(header.last_offset());
        Ok(())
    }

    /// Appends a batch whose base offset is already assigned.
    pub(crate) fn append(&mut self, bytes: &[u8], header: &BatchHeader) -> Result<()> {
        let position = self.size;
        self.file
            .as_ref()
            .write_all_at(bytes, position)
            .map_err(|e| LogError::io(self.path.as_ref(), e))?;
        self.size += bytes.len() as u64;
        self.modified = std::time::SystemTime::now();
        self.index_batch(position, header)
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| LogError::io(self.path.as_ref(), e))
    }

    /// A view for reading from `offset` on.
    pub(crate) fn view(&self, offset: i64) -> ReadView {
        let relative = (offset - self.base_offset).max(0) as u32;
        let i = self.index.partition_point(|(o, _)| *o <= relative);
        let start = if i == 0 {
            0
        } else {
            self.index[i - 1].1 as u64
        };
        ReadView {
            file: self.file.clone(),
            path: self.path.clone(),
            start,
            end: self.size,
            damage: self.damage.clone(),
        }
    }

    /// A view for finding the first batch with a timestamp at or after `timestamp`.
    pub(crate) fn time_view(&self, timestamp: i64) -> Option<ReadView> {
        if self.max_timestamp < timestamp {
            return None;
        }
        let i = self.time_index.partition_point(|(t, _)| *t < timestamp);
        // The entry before records offsets whose timestamps are all smaller.
        let from = match i {
            0 => self.base_offset,
            _ => self.base_offset + self.time_index[i - 1].1 as i64 + 1,
        };
        Some(self.view(from))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the segment's files.
    pub(crate) fn delete(self) -> Result<()> {
        for ext in ["log", "index", "timeindex"] {
            let path = self.path.with_extension(ext);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(path, e)),
            }
        }
        Ok(())
    }
}

impl ReadView {
    /// The header of the batch at `at`, which must lie within the view.
    fn header(&self, at: u64) -> Result<BatchHeader> {
        let corrupt = |reason: String| LogError::CorruptSegment {
            file: self.path.to_path_buf(),
            position: at,
            first_offset: -1,
            last_offset: -1,
            reason,
        };
        let mut buf = [0u8; HEADER_LEN];
        if at + HEADER_LEN as u64 > self.end {
            return Err(corrupt(format!(
                "a batch header runs past the end of the segment at {}",
                self.end
            )));
        }
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| LogError::io(self.path.as_ref(), e))?;
        let size = BatchHeader::size_of(&buf).unwrap_or(0);
        if size < HEADER_LEN || at + size as u64 > self.end {
            return Err(corrupt(format!("batch length {size} does not fit")));
        }
        // The header fields, without the CRC check (the batch was checked when
        // written or when the segment was opened, and is again when it is read).
        let i32_at = |p: usize| i32::from_be_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
        let i64_at = |p: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[p..p + 8]);
            i64::from_be_bytes(b)
        };
        let header = BatchHeader {
            base_offset: i64_at(0),
            size,
            attributes: i16::from_be_bytes([buf[21], buf[22]]),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: i64_at(43),
            producer_epoch: i16::from_be_bytes([buf[51], buf[52]]),
            base_sequence: i32_at(53),
            record_count: i32_at(57),
        };
        if header.last_offset_delta < 0
            || header
                .base_offset
                .checked_add(header.last_offset_delta as i64)
                .is_none()
        {
            return Err(corrupt(format!(
                "batch offsets {}+{} are out of range",
                header.base_offset, header.last_offset_delta
            )));
        }
        Ok(header)
    }

    /// The error for a read that reaches damage.
    fn damaged(&self, d: &Damage) -> LogError {
        LogError::CorruptSegment {
            file: self.path.to_path_buf(),
            position: d.start,
            first_offset: d.first_offset,
            last_offset: d.last_offset.unwrap_or(i64::MAX),
            reason: d.reason.clone(),
        }
    }

    /// Whole batches from the first one holding `offset`, up to `max_bytes` (at least
    /// one batch, however large, so that a consumer always progresses). Damage
    /// before `offset` is skipped; damage holding it is an error.
    pub(crate) fn read(&self, offset: i64, max_bytes: usize) -> Result<Option<Bytes>> {
        let mut at = self.start;
        let mut damage = self.damage[self.damage.partition_point(|d| d.start < at)..]
            .iter()
            .peekable();
        // Find the first batch whose last offset reaches `offset`.
        loop {
            if let Some(d) = damage.next_if(|d| d.start == at) {
                if d.last_offset.is_none_or(|last| last >= offset) {
                    return Err(self.damaged(d));
                }
                at = d.end;
                continue;
            }
            if at + LOG_OVERHEAD as u64 > self.end {
                return Ok(None);
            }
            let header = self.header(at)?;
            if header.last_offset() >= offset {
                break;
            }
            at += header.size as u64;
        }
        let first = self.header(at)?;
        let mut end = at + first.size as u64;
        while end < self.end && damage.peek().is_none_or(|d| d.start != end) {
            let Ok(next) = self.header(end) else { break };
            if (end + next.size as u64 - at) as usize > max_bytes {
                break;
            }
            end += next.size as u64;
        }
        let mut buf = vec![0; (end - at) as usize];
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| LogError::io(self.path.as_ref(), e))?;
        // Check the CRCs again: the bytes may have gone bad since the segment was
        // opened. Batches before a bad one are returned; the bad one is the error.
        match batch::scan(&buf) {
            (_, None) => {}
            (_, Some((0, e))) => {
                return Err(LogError::CorruptSegment {
                    file: self.path.to_path_buf(),
                    position: at,
                    first_offset: first.base_offset,
                    last_offset: first.last_offset(),
                    reason: e.to_string(),
                });
            }
            (_, Some((valid, _))) => buf.truncate(valid),
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// The first batch with a record timestamp at or after `timestamp`.
    pub(crate) fn first_batch_at(&self, timestamp: i64) -> Result<Option<Bytes>> {
        let mut at = self.start;
        let mut damage = self.damage[self.damage.partition_point(|d| d.start < at)..]
            .iter()
            .peekable();
        while at + (HEADER_LEN as u64) <= self.end {
            if let Some(d) = damage.next_if(|d| d.start == at) {
                at = d.end;
                continue;
            }
            let header = self.header(at)?;
            if header.max_timestamp >= timestamp {
                let mut buf = vec![0; header.size];
                self.file
                    .read_exact_at(&mut buf, at)
                    .map_err(|e| LogError::io(self.path.as_ref(), e))?;
                if let Err(e) = BatchHeader::parse(&buf) {
                    return Err(LogError::CorruptSegment {
                        file: self.path.to_path_buf(),
                        position: at,
                        first_offset: header.base_offset,
                        last_offset: header.last_offset(),
                        reason: e.to_string(),
                    });
                }
                return Ok(Some(Bytes::from(buf)));
            }
            at += header.size as u64;
        }
        Ok(None)
    }
}

//! Where map output lives, as reported by a map task and handed to readers.

use std::path::PathBuf;

/// The bit of a job id that marks a persisted frame's outputs, written under a job
/// id of their own so that no job's end removes them.
const CACHE_JOB: u64 = 1 << 63;
/// The bit that marks a frame kept on disk only, which no memory store takes.
const DISK_ONLY: u64 = 1 << 62;

/// The job id persisted frame `cache`'s outputs are written under.
pub fn cache_job(cache: u64, disk_only: bool) -> u64 {
    CACHE_JOB | if disk_only { DISK_ONLY } else { 0 } | cache
}

/// Every job id frame `cache`'s outputs may be under, to remove them all.
pub fn cache_jobs(cache: u64) -> [u64; 2] {
    [cache_job(cache, false), cache_job(cache, true)]
}

/// Whether `job` is a persisted frame's.
pub fn is_cache_job(job: u64) -> bool {
    job & CACHE_JOB != 0
}

/// Whether `job` is a frame's kept on disk only.
pub fn is_disk_only_cache_job(job: u64) -> bool {
    is_cache_job(job) && job & DISK_ONLY != 0
}

/// Identity of one in-memory map output. `token` separates attempts of the same task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapOutputKey {
    pub job: u64,
    pub stage: usize,
    pub map_partition: usize,
    pub token: u64,
}

/// Where the bytes of a map output are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShuffleData {
    /// Kept in the executor's memory store (local mode, below the budget).
    Memory(MapOutputKey),
    /// One data file holding every output partition (with `<path>.index` beside it).
    File(PathBuf),
}

/// Size of one output partition inside a map output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// Byte offset in the data file (0 for memory outputs).
    pub offset: u64,
    /// Bytes in the file, or in-memory bytes for memory outputs.
    pub length: u64,
    pub rows: u64,
}

/// What a finished map task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutput {
    pub executor_id: String,
    /// Where the executor serves its shuffle files (`FetchPartition`); empty in local mode.
    pub executor_address: String,
    pub data: ShuffleData,
    /// One entry per output partition of the exchange.
    pub partitions: Vec<PartitionStats>,
    /// Summaries of the columns the stage's writer was asked to summarize.
    pub keys: Vec<crate::keys::KeySummary>,
}

impl MapOutput {
    pub fn total_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.length).sum()
    }

    pub fn total_rows(&self) -> u64 {
        self.partitions.iter().map(|p| p.rows).sum()
    }
}

/// One piece of a reduce partition: output partition `reduce_partition` of map task
/// `map_partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLocation {
    pub map_partition: usize,
    pub reduce_partition: usize,
    pub executor_id: String,
    /// Empty when the map output is on this host (local mode).
    pub executor_address: String,
    pub data: ShuffleData,
    pub stats: PartitionStats,
}

//! The shuffle file format.
//!
//! A map task writes `map-<partition>-<token>.data`: for each output partition in order,
//! one complete Arrow IPC stream (schema, batches, end-of-stream marker), possibly
//! empty. Beside it, `map-<partition>-<token>.data.index` holds N+1 little-endian u64
//! offsets, so partition `p` is the byte range `[off[p], off[p+1])`. A reader seeks to the
//! range and reads it with [`crate::ipc::StreamReader`], which checks it as outside bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::record_batch::RecordBatch;

use crate::config::ShuffleCompression;
use crate::error::{EmberError, Result};

/// IPC options for a codec.
pub fn ipc_write_options(compression: ShuffleCompression) -> Result<IpcWriteOptions> {
    let codec = match compression {
        ShuffleCompression::None => None,
        ShuffleCompression::Lz4 | ShuffleCompression::Auto => Some(CompressionType::LZ4_FRAME),
        ShuffleCompression::Zstd => Some(CompressionType::ZSTD),
    };
    Ok(IpcWriteOptions::default().try_with_compression(codec)?)
}

/// One output partition being written to its own spill file while the map task runs.
pub(crate) struct SpillWriter {
    path: PathBuf,
    writer: StreamWriter<BufWriter<File>>,
}

impl SpillWriter {
    pub(crate) fn create(
        path: PathBuf,
        schema: &SchemaRef,
        options: IpcWriteOptions,
    ) -> Result<Self> {
        let file = File::create(&path).map_err(|e| EmberError::io(path.display(), e))?;
        let writer = StreamWriter::try_new_with_options(BufWriter::new(file), schema, options)?;
        Ok(SpillWriter { path, writer })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.writer.write(batch)?)
    }

    fn finish(mut self) -> Result<PathBuf> {
        self.writer.finish()?;
        let mut inner = self
            .writer
            .into_inner()
            .map_err(|e| EmberError::Internal(format!("flushing shuffle spill: {e}")))?;
        inner
            .flush()
            .map_err(|e| EmberError::io(self.path.display(), e))?;
        Ok(self.path)
    }
}

/// Where one output partition's data is when the data file is assembled.
pub(crate) enum PartSource {
    /// Written to its own spill file while the task ran.
    Spill(Box<SpillWriter>),
    /// Still in memory (possibly none: an empty partition).
    Batches(Vec<RecordBatch>),
}

/// Counts the bytes written through it.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes every output partition, in order, as one IPC stream each into one data file
/// plus index; returns each partition's (offset, length).
pub(crate) fn assemble_data_file(
    data_path: &Path,
    schema: &SchemaRef,
    options: &IpcWriteOptions,
    parts: Vec<PartSource>,
) -> Result<Vec<(u64, u64)>> {
    let io = |e| EmberError::io(data_path.display(), e);
    let mut out = BufWriter::new(File::create(data_path).map_err(io)?);
    let mut offsets = Vec::with_capacity(parts.len() + 1);
    let mut pos = 0u64;
    for part in parts {
        offsets.push(pos);
        match part {
            PartSource::Spill(spill) => {
                let path = spill.finish()?;
                let mut f = File::open(&path).map_err(|e| EmberError::io(path.display(), e))?;
                pos += std::io::copy(&mut f, &mut out).map_err(io)?;
                drop(f);
                let _ = std::fs::remove_file(&path);
            }
            PartSource::Batches(batches) => {
                let mut counting = Counting {
                    inner: &mut out,
                    written: 0,
                };
                let mut w =
                    StreamWriter::try_new_with_options(&mut counting, schema, options.clone())?;
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
                drop(w);
                pos += counting.written;
            }
        }
    }
    offsets.push(pos);
    out.flush().map_err(io)?;
    let index_path = index_path(data_path);
    let mut index = Vec::with_capacity(offsets.len() * 8);
    for o in &offsets {
        index.extend_from_slice(&o.to_le_bytes());
    }
    std::fs::write(&index_path, index).map_err(|e| EmberError::io(index_path.display(), e))?;
    Ok(offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect())
}

pub(crate) fn index_path(data_path: &Path) -> PathBuf {
    let mut p = data_path.as_os_str().to_owned();
    p.push(".index");
    PathBuf::from(p)
}

/// Reads a data file's index: the byte range of every output partition.
pub fn read_index(data_path: &Path) -> Result<Vec<(u64, u64)>> {
    let path = index_path(data_path);
    let bytes = std::fs::read(&path).map_err(|e| EmberError::io(path.display(), e))?;
    if bytes.len() % 8 != 0 || bytes.len() < 8 {
        return Err(EmberError::Decode {
            what: "shuffle index",
            message: format!(
                "{} has {} bytes, not a list of u64 offsets",
                path.display(),
                bytes.len()
            ),
        });
    }
    let offsets: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    Ok(offsets
        .windows(2)
        .map(|w| (w[0], w[1].saturating_sub(w[0])))
        .collect())
}

/// Opens one output partition of a data file as a stream of batches (checked as
/// bytes from outside: the file and its index may be damaged).
pub(crate) fn open_partition(
    data_path: &Path,
    offset: u64,
    length: u64,
) -> Result<crate::ipc::StreamReader<BufReader<File>>> {
    let io = |e| EmberError::io(data_path.display(), e);
    let mut file = File::open(data_path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let reader = BufReader::with_capacity(1 << 16, file);
    crate::ipc::StreamReader::try_new(reader, length, "a shuffle partition")
        .map_err(|e| crate::ipc::at(e, data_path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn data_file_partitions_read_back_by_range_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let options = ipc_write_options(ShuffleCompression::Zstd).unwrap();
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        let mut p0 = SpillWriter::create(dir.path().join("p0"), &schema, options.clone()).unwrap();
        p0.write(&batch(vec![1, 2, 3])).unwrap();
        let mut p2 = SpillWriter::create(dir.path().join("p2"), &schema, options.clone()).unwrap();
        p2.write(&batch(vec![7])).unwrap();
        p2.write(&batch(vec![8, 9])).unwrap();
        let data = dir.path().join("map.data");
        let ranges = assemble_data_file(
            &data,
            &schema,
            &options,
            vec![
                PartSource::Spill(Box::new(p0)),
                PartSource::Batches(vec![]),
                PartSource::Spill(Box::new(p2)),
            ],
        )
        .unwrap();
        assert_eq!(read_index(&data).unwrap(), ranges);
        let rows = |p: usize| -> Vec<i64> {
            let (off, len) = ranges[p];
            open_partition(&data, off, len)
                .unwrap()
                .flat_map(|b| {
                    let b = b.unwrap();
                    let a = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone();
                    a.values().to_vec()
                })
                .collect()
        };
        assert_eq!(rows(0), vec![1, 2, 3]);
        assert!(rows(1).is_empty());
        assert_eq!(rows(2), vec![7, 8, 9]);
    }

    #[test]
    fn truncated_index_is_a_decode_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.data");
        std::fs::write(index_path(&data), [1, 2, 3]).unwrap();
        let e = read_index(&data).unwrap_err().to_string();
        assert!(e.contains("m.data.index"), "{e}");
    }
}

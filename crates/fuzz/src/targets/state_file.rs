//! `state_file`: the files of a streaming query's checkpoint, read back on restart
//! or by the next batch: a stateful operator's state files (Arrow IPC with the
//! batch's statistics in the schema metadata, read by
//! [`StateStore::load_partition`] and [`StateStore::stats`]), the checkpoint's
//! offsets and commit files (JSON, [`BatchRange`] and [`Commit`]), and a file
//! sink's metadata log ([`committed_files`]).
//!
//! Each input is all of them in turn. The state store runs on an in-memory object
//! store, as it would on S3; the sink's log is in a scratch folder.

use std::sync::Arc;

use ember_driver::stream::{BatchRange, Commit, METADATA_DIR, Offsets, committed_files};
use ember_exec::stateful::store::{BatchStats, StateStore};
use ember_exec::storage::Dir;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;

use super::{KIB, Runner, Target, runtime, setup};
use crate::Result;
use crate::mutate::Dictionary;

pub fn target() -> Target {
    Target {
        name: "state_file",
        max_len: 64 * KIB,
        dictionary: Dictionary {
            tokens: &[
                "{",
                "}",
                "[",
                "]",
                "\"",
                ":",
                ",",
                "null",
                "-1",
                "1e400",
                "\\u0000",
                "9223372036854775808",
            ],
            wrappers: &[("[", "]"), ("{\"a\":", "}")],
        },
        runner: || Ok(Box::new(Files::new()?)),
        seeds,
    }
}

struct Files {
    runtime: tokio::runtime::Runtime,
    sink: tempfile::TempDir,
}

impl Files {
    fn new() -> Result<Files> {
        let sink = tempfile::tempdir().map_err(|e| setup("a scratch folder")(e.to_string()))?;
        std::fs::create_dir_all(sink.path().join(METADATA_DIR))
            .map_err(|e| setup("a scratch folder")(e.to_string()))?;
        Ok(Files {
            runtime: runtime()?,
            sink,
        })
    }
}

fn memory_dir() -> Dir {
    Dir::Store {
        store: Arc::new(InMemory::new()),
        path: ObjectPath::from("state"),
        url: "memory:///state".into(),
    }
}

impl Runner for Files {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let state = self.runtime.block_on(async {
            let dir = memory_dir();
            let mut out = vec![];
            for kind in ["snapshot", "delta"] {
                dir.join("0")
                    .write(&format!("0.{kind}"), input.to_vec())
                    .await
                    .map_err(|e| e.to_string())?;
                let store = StateStore::new(dir.clone(), 4);
                out.push(match store.load_partition(0, Some(0)).await {
                    Ok(entries) => format!("{} entries", entries.len()),
                    Err(e) => e.to_string(),
                });
                out.push(match store.stats(0, 0).await {
                    Ok(stats) => format!("{} rows", stats.rows_total),
                    Err(e) => e.to_string(),
                });
                dir.join("0")
                    .delete(&format!("0.{kind}"))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(out.join("; "))
        })?;
        let offsets = serde_json::from_slice::<BatchRange>(input).map(|r| r.batch_id);
        let commit = serde_json::from_slice::<Commit>(input).map(|c| c.max_event_times.len());
        let log = self.sink.path().join(METADATA_DIR).join("0");
        std::fs::write(&log, input).map_err(|e| e.to_string())?;
        let sink_dir = Dir::Local(self.sink.path().to_path_buf());
        let sink = self
            .runtime
            .block_on(committed_files(&sink_dir))
            .map(|f| f.map_or(0, |f| f.len()));
        Ok(format!(
            "state: {state}; offsets: {}; commit: {}; sink: {}",
            offsets.map_or_else(|e| e.to_string(), |b| b.to_string()),
            commit.map_or_else(|e| e.to_string(), |b| b.to_string()),
            sink.map_or_else(|e| e.to_string(), |b| b.to_string()),
        ))
    }
}

/// State files as the store writes them, and checkpoint and sink files as their
/// writers serialize them.
fn seeds() -> Result<Vec<Vec<u8>>> {
    let rt = runtime()?;
    let mut out = rt.block_on(async {
        let err = setup("writing state files");
        let dir = memory_dir();
        let store = StateStore::new(dir.clone(), 2);
        let mut out = vec![];
        for v in 0..3u64 {
            let changes = vec![
                (
                    format!("k{v}").into_bytes().into_boxed_slice(),
                    Some(vec![v as u8; 3]),
                ),
                (b"gone".to_vec().into_boxed_slice(), None),
            ];
            let all = changes
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                .collect();
            let stats = BatchStats {
                late_rows: 1,
                max_event_time: Some(1_700_000_000_000),
                max_event_times: vec![Some(5), None],
                rows_total: 2,
                rows_updated: 1,
                rows_removed: 1,
            };
            store
                .write_partition(0, v, changes, || Ok(all), &stats)
                .await
                .map_err(|e| err(e.to_string()))?;
            for kind in ["delta", "snapshot"] {
                if let Some(bytes) = dir
                    .join("0")
                    .read(&format!("{v}.{kind}"))
                    .await
                    .map_err(|e| err(e.to_string()))?
                {
                    out.push(bytes);
                }
            }
        }
        Ok::<_, crate::Error>(out)
    })?;
    let mut offsets = Offsets::default();
    offsets.set("events", 0, 10);
    offsets.set("events", 1, 7);
    let mut end = offsets.clone();
    end.set("events", 0, 20);
    let json =
        |v: serde_json::Result<Vec<u8>>| v.map_err(|e| setup("a checkpoint file")(e.to_string()));
    out.push(json(serde_json::to_vec_pretty(&BatchRange {
        batch_id: 3,
        start: offsets,
        end,
        batch_time_ms: 1_700_000_000_000,
        watermark_ms: Some(1_699_999_990_000),
    }))?);
    out.push(json(serde_json::to_vec(&Commit {
        next_watermark_ms: Some(1_700_000_000_000),
        max_event_times: vec![Some(1), None],
    }))?);
    out.push(br#"{"files":["part-0-0.parquet","part-1-0.parquet"]}"#.to_vec());
    Ok(out)
}

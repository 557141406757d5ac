//! The log's small state files: a damaged or missing one never makes the log hand
//! out something it handed out before or forget what was committed.

use std::sync::Arc;

use ember_log::{LogError, ProducerRecord, RoundRobin};

use super::{consume_all, log_at, producer};

fn open_error(dir: &std::path::Path) -> LogError {
    match ember_log::Log::open(dir, ember_log::LogConfig::default()) {
        Ok(_) => panic!("the log opened"),
        Err(e) => e,
    }
}

/// One record from a new idempotent producer; returns its producer id and offset.
async fn produce_one(log: &Arc<ember_log::Log>, value: &str) -> (i64, i64) {
    let p = producer(log, Arc::new(RoundRobin::default()));
    let id = p.producer_id();
    let delivery = p.send(ProducerRecord::new("t", value.to_string())).unwrap();
    p.flush();
    (id, delivery.await.unwrap().offset)
}

async fn a_new_producer_after_losing_producer_ids_keeps_its_first_record(damage: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let ids_file = dir.path().join("producer-ids");
    let (first_id, first_offset) = {
        let log = log_at(dir.path());
        log.create_topic("t", 1, None).unwrap();
        produce_one(&log, "first").await
    };
    assert_eq!(first_offset, 0);
    if damage.is_empty() {
        std::fs::remove_file(&ids_file).unwrap();
    } else {
        std::fs::write(&ids_file, damage).unwrap();
        match open_error(dir.path()) {
            LogError::BadStateFile { path, reason } => {
                assert_eq!(path, ids_file);
                assert!(reason.contains("remove it"), "{reason}");
            }
            other => panic!("expected a bad state file error, got {other}"),
        }
        // The documented way out: remove it, and the id is rebuilt from the log.
        std::fs::remove_file(&ids_file).unwrap();
    }
    let log = log_at(dir.path());
    let (second_id, second_offset) = produce_one(&log, "second").await;
    assert!(second_id > first_id, "{second_id} reuses an id");
    assert_eq!(second_offset, 1);
    let values: Vec<_> = consume_all(&log, "t")
        .await
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(values, vec!["first", "second"]);
}

#[tokio::test]
async fn a_deleted_producer_ids_file_is_rebuilt_from_the_log_and_no_id_is_reused() {
    a_new_producer_after_losing_producer_ids_keeps_its_first_record(b"").await;
}

#[tokio::test]
async fn a_garbage_producer_ids_file_stops_the_log_naming_the_file() {
    a_new_producer_after_losing_producer_ids_keeps_its_first_record(b"\0\0garbage\n").await;
}

#[tokio::test]
async fn a_producer_ids_file_behind_the_log_is_overtaken_by_the_ids_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let first_id = {
        let log = log_at(dir.path());
        log.create_topic("t", 1, None).unwrap();
        produce_one(&log, "first").await.0
    };
    // A restored backup, say: the file is valid but older than the data.
    std::fs::write(dir.path().join("producer-ids"), "0\n").unwrap();
    let log = log_at(dir.path());
    let (second_id, second_offset) = produce_one(&log, "second").await;
    assert!(second_id > first_id);
    assert_eq!(second_offset, 1);
    assert_eq!(consume_all(&log, "t").await.len(), 2);
}

#[tokio::test]
async fn a_garbage_group_offsets_file_stops_the_log_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = log_at(dir.path());
        log.groups()
            .commit("g", &[("t".to_string(), 0, 42, String::new())])
            .unwrap();
    }
    let file = dir.path().join("__groups/g.json");
    {
        let log = log_at(dir.path());
        assert_eq!(log.groups().committed("g", "t", 0).unwrap().0, 42);
    }
    std::fs::write(&file, b"{\"offsets\": [{\"topic\"").unwrap();
    match open_error(dir.path()) {
        LogError::BadStateFile { path, .. } => assert_eq!(path, file),
        other => panic!("expected a bad state file error, got {other}"),
    }
}

#[tokio::test]
async fn a_damaged_or_missing_topic_json_stops_the_log_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = log_at(dir.path());
        log.create_topic("t", 2, None).unwrap();
        produce_one(&log, "kept").await;
    }
    let file = dir.path().join("t/topic.json");
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    match open_error(dir.path()) {
        LogError::BadStateFile { path, .. } => assert_eq!(path, file),
        other => panic!("expected a bad state file error, got {other}"),
    }
    // Missing, while partitions are there: not silently a topic that is not there
    // (which auto-creation would then recreate over the old data).
    std::fs::remove_file(&file).unwrap();
    match open_error(dir.path()) {
        LogError::BadStateFile { path, .. } => assert_eq!(path, file),
        other => panic!("expected a bad state file error, got {other}"),
    }
    std::fs::write(&file, &good).unwrap();
    let log = log_at(dir.path());
    assert_eq!(consume_all(&log, "t").await.len(), 1);
}

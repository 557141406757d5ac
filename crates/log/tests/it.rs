//! The log through its public API: produce and consume, partitioners, retention,
//! timestamps, idempotence and consumer groups; recovery after damage and the small
//! state files, and the broker over TCP (`broker_wire`), in their own modules.

#[path = "it/broker_wire.rs"]
mod broker_wire;
#[path = "it/recovery.rs"]
mod recovery;
#[path = "it/state_files.rs"]
mod state_files;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_log::{
    Consumer, ConsumerConfig, Durability, KeyHash, Log, LogConfig, LogError, ProducerConfig,
    ProducerRecord, RoundRobin, TopicConfig, partition_for_key,
};

fn log_at(dir: &std::path::Path) -> Arc<Log> {
    Log::open(
        dir,
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap()
}

fn producer(
    log: &Arc<Log>,
    partitioner: Arc<dyn ember_log::Partitioner>,
) -> Arc<ember_log::Producer> {
    ember_log::Producer::new(
        log.clone(),
        ProducerConfig {
            partitioner,
            batch_bytes: 4096,
            ..ProducerConfig::default()
        },
    )
    .unwrap()
}

async fn consume_all(log: &Arc<Log>, topic: &str) -> Vec<ember_log::ConsumerRecord> {
    let partitions = log.topic(topic).unwrap().partitions.len() as i32;
    let mut consumer = Consumer::new(log.clone(), ConsumerConfig::default());
    consumer
        .assign((0..partitions).map(|p| (topic.to_string(), p)).collect())
        .unwrap();
    let mut out = vec![];
    loop {
        let batch = consumer.poll(Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

#[tokio::test]
async fn keyed_records_keep_their_order_per_key_on_the_java_clients_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("events", 4, None).unwrap();
    let p = producer(&log, Arc::new(KeyHash::default()));
    let mut deliveries = vec![];
    for i in 0..2000 {
        let key = format!("device-{}", i % 10);
        let record = ProducerRecord::new("events", format!("{i}"))
            .key(key)
            .header("n", format!("{i}"));
        deliveries.push(p.send(record).unwrap());
    }
    p.flush();
    for d in deliveries {
        d.await.unwrap();
    }
    let records = consume_all(&log, "events").await;
    assert_eq!(records.len(), 2000);
    for key in 0..10 {
        let k = format!("device-{key}");
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(k.as_bytes()))
            .collect();
        assert_eq!(mine.len(), 200);
        let expected_partition = partition_for_key(k.as_bytes(), 4) as i32;
        assert!(mine.iter().all(|r| r.partition == expected_partition));
        let values: Vec<i64> = mine
            .iter()
            .map(|r| {
                std::str::from_utf8(r.value.as_ref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "order kept for {k}");
        assert_eq!(mine[0].headers[0].0, "n");
    }
}

#[tokio::test]
async fn round_robin_balances_and_offsets_are_dense() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("rr", 3, None).unwrap();
    let p = producer(&log, Arc::new(RoundRobin::default()));
    for i in 0..300 {
        p.send(ProducerRecord::new("rr", format!("{i}"))).unwrap();
    }
    p.flush();
    for part in 0..3 {
        assert_eq!(log.partition("rr", part).unwrap().end_offset(), 100);
    }
    let records = consume_all(&log, "rr").await;
    for part in 0..3 {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| r.partition == part)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn retention_deletes_old_segments_and_reads_below_the_start_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    let config = TopicConfig {
        retention_ms: Some(60_000),
        segment_bytes: 1024,
        ..TopicConfig::default()
    };
    log.create_topic("old", 1, Some(config)).unwrap();
    let p = producer(&log, Arc::new(RoundRobin::default()));
    let hour_ago = ember_log_now() - 3_600_000;
    for i in 0..20 {
        p.send(ProducerRecord::new("old", vec![b'x'; 200]).timestamp(hour_ago + i))
            .unwrap();
        p.flush();
    }
    for i in 0..5 {
        p.send(ProducerRecord::new("old", format!("new{i}")))
            .unwrap();
        p.flush();
    }
    let partition = log.partition("old", 0).unwrap();
    let segments = partition.segment_files().len();
    assert!(segments > 3, "{segments} segments");
    log.maintain().unwrap();
    assert!(partition.segment_files().len() < segments);
    // Segments holding only hour-old records went; the one shared with new records
    // stays whole.
    let start = partition.start_offset();
    assert!(start > 10 && start <= 20, "start {start}");
    match partition.read(0, 1 << 20) {
        Err(e @ LogError::OffsetOutOfRange { .. }) => assert_eq!(e.kafka_code(), 1),
        other => panic!("expected OFFSET_OUT_OF_RANGE, got {other:?}"),
    }
    // The recent records are all still there.
    let records = consume_all(&log, "old").await;
    assert!(
        records
            .iter()
            .filter(|r| r.value.as_ref().unwrap().starts_with(b"new"))
            .count()
            == 5
    );
}

fn ember_log_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn offsets_are_found_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("ts", 1, None).unwrap();
    let p = producer(&log, Arc::new(RoundRobin::default()));
    for i in 0..100 {
        p.send(ProducerRecord::new("ts", "v").timestamp(1_000 + i * 10))
            .unwrap();
        if i % 7 == 0 {
            p.flush();
        }
    }
    p.flush();
    let partition = log.partition("ts", 0).unwrap();
    assert_eq!(
        partition.offset_for_timestamp(1_000).unwrap(),
        Some((0, 1_000))
    );
    assert_eq!(
        partition.offset_for_timestamp(1_455).unwrap(),
        Some((46, 1_460))
    );
    assert_eq!(partition.offset_for_timestamp(5_000).unwrap(), None);
}

#[tokio::test]
async fn an_idempotent_retry_is_not_written_twice_and_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("idem", 1, None).unwrap();
    let partition = log.partition("idem", 0).unwrap();
    let batch = |seq: i32, n: usize| -> Vec<u8> {
        let records: Vec<_> = (0..n)
            .map(|i| kafka_protocol::records::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 7,
                producer_epoch: 0,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i as i64,
                sequence: seq + i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from("v")),
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
    };
    let first = partition.append(&mut batch(0, 3)).unwrap();
    let retry = partition.append(&mut batch(0, 3)).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, first.base_offset);
    assert_eq!(partition.end_offset(), 3);
    match partition.append(&mut batch(5, 1)) {
        Err(LogError::OutOfOrderSequence {
            expected: 3,
            got: 5,
            ..
        }) => {}
        other => panic!("expected an out-of-order error, got {other:?}"),
    }
    partition.append(&mut batch(3, 2)).unwrap();
    assert_eq!(partition.end_offset(), 5);
    // After a restart the log still knows the producer's last batches.
    drop(partition);
    drop(log);
    let log = log_at(dir.path());
    let partition = log.partition("idem", 0).unwrap();
    assert!(partition.append(&mut batch(3, 2)).unwrap().duplicate);
    // A corrupt batch is refused, not stored.
    let mut bad = batch(5, 1);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        partition.append(&mut bad),
        Err(LogError::Corrupt(_))
    ));
    assert_eq!(partition.end_offset(), 5);
}

#[tokio::test]
async fn a_group_splits_partitions_and_resumes_from_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("g", 4, None).unwrap();
    let p = producer(&log, Arc::new(RoundRobin::default()));
    for i in 0..400 {
        p.send(ProducerRecord::new("g", format!("{i}"))).unwrap();
    }
    p.flush();
    let config = ConsumerConfig {
        group_id: Some("readers".into()),
        ..ConsumerConfig::default()
    };
    let mut a = Consumer::new(log.clone(), config.clone());
    a.subscribe(vec!["g".into()]).unwrap();
    let mut b = Consumer::new(log.clone(), config.clone());
    b.subscribe(vec!["g".into()]).unwrap();
    // a notices the rebalance on its next poll.
    let first_a = a.poll(Duration::from_millis(100)).await.unwrap();
    let first_b = b.poll(Duration::from_millis(100)).await.unwrap();
    assert_eq!(a.assignment().len(), 2);
    assert_eq!(b.assignment().len(), 2);
    assert!(a.assignment().iter().all(|tp| !b.assignment().contains(tp)));
    assert!(!first_a.is_empty() && !first_b.is_empty());
    a.commit().unwrap();
    b.commit().unwrap();
    let seen = first_a.len() + first_b.len();
    drop(a);
    drop(b);
    // A new member of the same group starts where the group left off.
    let mut c = Consumer::new(log.clone(), config);
    c.subscribe(vec!["g".into()]).unwrap();
    let mut rest = 0;
    loop {
        let batch = c.poll(Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        rest += batch.len();
    }
    assert_eq!(seen + rest, 400);
    assert_eq!(c.lag("g", 0).unwrap(), 0);
}

#[tokio::test]
async fn a_poll_waits_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(dir.path());
    log.create_topic("live", 1, None).unwrap();
    let mut consumer = Consumer::new(log.clone(), ConsumerConfig::default());
    consumer.assign(vec![("live".into(), 0)]).unwrap();
    let p = producer(&log, Arc::new(RoundRobin::default()));
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.send_and_wait(ProducerRecord::new("live", "hello"))
            .await
            .unwrap();
    });
    let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(records.len(), 1);
    writer.await.unwrap();
}

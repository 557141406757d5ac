//! `ember bench log`: throughput of the embedded log, in process and over the Kafka
//! protocol on loopback, printed as JSON.
//!
//! - In process: the `Producer` (batching, encoding with kafka-protocol, appending)
//!   and the `Consumer` (reading, decoding), for 100-byte and 1 KiB values.
//! - Over the wire: an `ember broker` on 127.0.0.1 in this process, and a client
//!   that sends Produce requests of ready-made 1 MiB batches (acks=1) and Fetch
//!   requests of up to 8 MiB, without decoding the records: the broker's side of
//!   the work, which is what a batching client asks of it.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use ember_log::broker::{Broker, BrokerConfig};
use ember_log::{
    Consumer, ConsumerConfig, Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord,
    RoundRobin,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct LogBenchArgs {
    /// Messages per in-process run.
    #[arg(long, default_value_t = 2_000_000)]
    messages: usize,
    /// Bytes sent and fetched over the wire.
    #[arg(long, default_value_t = 2 << 30)]
    wire_bytes: usize,
    /// Directory for the log (default: a temporary one, removed after).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Throughput {
    messages: usize,
    value_bytes: usize,
    seconds: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
}

impl Throughput {
    fn of(messages: usize, value_bytes: usize, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64().max(1e-9);
        Throughput {
            messages,
            value_bytes,
            seconds: round(s),
            msgs_per_s: (messages as f64 / s).round(),
            mb_per_s: round(messages as f64 * value_bytes as f64 / s / 1e6),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Debug, Serialize)]
struct InProcess {
    produce: Throughput,
    consume: Throughput,
}

#[derive(Debug, Serialize)]
struct Wire {
    batch_bytes: usize,
    produce: Throughput,
    fetch: Throughput,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    in_process_100b: InProcess,
    in_process_1kib: InProcess,
    wire_1kib: Wire,
}

pub async fn run(args: LogBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let log = Log::open(
        &root,
        LogConfig {
            durability: Durability::Interval(Duration::from_millis(1000)),
            max_batch_bytes: 16 << 20,
            ..LogConfig::default()
        },
    )?;
    let small = in_process(&log, "bench-100b", args.messages, 100).await?;
    eprintln!("in process, 100 B: {small:?}");
    let large = in_process(&log, "bench-1kib", args.messages / 4, 1024).await?;
    eprintln!("in process, 1 KiB: {large:?}");
    let wire = wire(&log, args.wire_bytes).await?;
    eprintln!("wire, 1 KiB: {wire:?}");
    let report = Report {
        benchmark: "log",
        in_process_100b: small,
        in_process_1kib: large,
        wire_1kib: wire,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn in_process(log: &Arc<Log>, topic: &str, n: usize, size: usize) -> Result<InProcess> {
    log.create_topic(topic, 1, None)?;
    let producer = Producer::new(
        log.clone(),
        ProducerConfig {
            batch_bytes: 1 << 20,
            partitioner: Arc::new(RoundRobin::default()),
            ..ProducerConfig::default()
        },
    )?;
    let value = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut last = None;
    for _ in 0..n {
        last = Some(producer.send(ProducerRecord::new(topic, value.clone()))?);
    }
    producer.flush();
    if let Some(d) = last {
        d.await?;
    }
    let produce = Throughput::of(n, size, started.elapsed());

    let mut consumer = Consumer::new(
        log.clone(),
        ConsumerConfig {
            max_poll_records: 100_000,
            fetch_max_bytes: 8 << 20,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign(vec![(topic.to_string(), 0)])?;
    let started = Instant::now();
    let mut read = 0;
    while read < n {
        let batch = consumer.poll(Duration::from_secs(5)).await?;
        anyhow::ensure!(!batch.is_empty(), "consumed {read} of {n} records");
        read += batch.len();
    }
    let consume = Throughput::of(read, size, started.elapsed());
    Ok(InProcess { produce, consume })
}

/// One ready-made batch of 1 KiB records, about `bytes` long.
fn encoded_batch(bytes: usize) -> Result<Bytes> {
    let value = Bytes::from(vec![b'y'; 1024]);
    let records: Vec<Record> = (0..bytes / 1024)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

/// A framed request on a blocking socket; returns the response body after its header.
fn call(
    conn: &mut std::net::TcpStream,
    api: ApiKey,
    version: i16,
    body: impl Encodable,
) -> Result<Bytes> {
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("ember-bench")))
        .encode(&mut frame, api.request_header_version(version))?;
    body.encode(&mut frame, version)?;
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&frame)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut reply = vec![0u8; i32::from_be_bytes(len) as usize];
    conn.read_exact(&mut reply)?;
    let mut reply = Bytes::from(reply);
    ResponseHeader::decode(&mut reply, api.response_header_version(version))?;
    Ok(reply)
}

async fn wire(log: &Arc<Log>, total: usize) -> Result<Wire> {
    let topic = "bench-wire";
    log.create_topic(topic, 1, None)?;
    let broker = Broker::start(log.clone(), BrokerConfig::new("127.0.0.1:0".parse()?)).await?;
    let address = broker.address;
    let batch_bytes = 1 << 20;
    let batch = encoded_batch(batch_bytes)?;
    let records_per_batch = batch_bytes / 1024;
    let batches = (total / batch_bytes).max(1);
    let result = tokio::task::spawn_blocking(move || -> Result<Wire> {
        let mut conn = std::net::TcpStream::connect(address).context("connecting")?;
        conn.set_nodelay(true)?;
        let name = TopicName(StrBytes::from_static_str(topic));
        let started = Instant::now();
        for _ in 0..batches {
            let request = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(name.clone())
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch.clone())),
                        ]),
                ]);
            let mut reply = call(&mut conn, ApiKey::Produce, 7, request)?;
            let response = ProduceResponse::decode(&mut reply, 7)?;
            let code = response.responses[0].partition_responses[0].error_code;
            anyhow::ensure!(code == 0, "produce failed with error {code}");
        }
        let produce = Throughput::of(batches * records_per_batch, 1024, started.elapsed());

        let started = Instant::now();
        let (mut offset, mut records, mut bytes) = (0i64, 0usize, 0usize);
        let end = (batches * records_per_batch) as i64;
        while offset < end {
            let request = FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(8 << 20)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(name.clone())
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(8 << 20),
                        ]),
                ]);
            let mut reply = call(&mut conn, ApiKey::Fetch, 11, request)?;
            let response = FetchResponse::decode(&mut reply, 11)?;
            let data = &response.responses[0].partitions[0];
            anyhow::ensure!(
                data.error_code == 0,
                "fetch failed with error {}",
                data.error_code
            );
            let got = data.records.clone().unwrap_or_default();
            anyhow::ensure!(!got.is_empty(), "fetch returned nothing at offset {offset}");
            bytes += got.len();
            // Walk the batch headers: base offset + last offset delta.
            let mut at = 0;
            while at + 61 <= got.len() {
                let base = i64::from_be_bytes(got[at..at + 8].try_into()?);
                let size = 12 + i32::from_be_bytes(got[at + 8..at + 12].try_into()?) as usize;
                let delta = i32::from_be_bytes(got[at + 23..at + 27].try_into()?) as i64;
                records += (base + delta + 1 - offset.max(base)) as usize;
                offset = base + delta + 1;
                at += size;
            }
        }
        let fetch = Throughput::of(records, 1024, started.elapsed());
        let _ = bytes;
        Ok(Wire {
            batch_bytes,
            produce,
            fetch,
        })
    })
    .await??;
    broker.stop();
    Ok(result)
}

//! The broker over TCP. Regression: a 25-byte Metadata v1 request whose topic array claimed 2^31-1 entries
//! made the broker abort (`memory allocation of 154618822584 bytes failed`) before
//! any authentication, as did compact arrays and strings, and Produce. A request
//! whose lengths lie, or a frame whose size is out of bounds, now closes only its own
//! connection.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ember_log::broker::{Broker, BrokerConfig};
use ember_log::{Durability, Log, LogConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bytes: Metadata v1, client "chaos", 2^31-1 topics, one byte more.
fn reported_metadata_v1() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i16(1);
    b.put_i32(7);
    b.put_i16(5);
    b.put_slice(b"chaos");
    b.put_i32(0x7fff_ffff);
    b.put_u8(0);
    b.to_vec()
}

/// Metadata v9: a flexible header, then a compact topic array of 2^32-2 entries.
fn metadata_v9_compact_array() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i16(9);
    b.put_i32(7);
    b.put_i16(-1); // no client id
    b.put_u8(0); // no tagged fields
    b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    b.put_slice(&[0, 0, 0]);
    b.to_vec()
}

/// Produce v3 with 2^31-1 topics.
fn produce_v3_huge_array() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i16(3);
    b.put_i32(7);
    b.put_i16(5);
    b.put_slice(b"chaos");
    b.put_i16(-1); // no transactional id
    b.put_i16(1); // acks
    b.put_i32(1000); // timeout
    b.put_i32(0x7fff_ffff);
    b.put_u8(0);
    b.to_vec()
}

/// ApiVersions v3 whose compact client software name claims 2^32-2 bytes.
fn api_versions_v3_huge_compact_string() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(18);
    b.put_i16(3);
    b.put_i32(7);
    b.put_i16(-1);
    b.put_u8(0);
    b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    b.put_slice(b"x");
    b.to_vec()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Sends `bytes` on a new connection and waits for the broker to close it without
/// an answer.
async fn closes_its_connection(broker: &Broker, what: &str, bytes: &[u8]) {
    let mut stream = TcpStream::connect(broker.address).await.unwrap();
    // The broker may close before it has read everything: then writing fails.
    let _ = stream.write_all(bytes).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
    match read {
        Ok(0) => {}
        Ok(n) => panic!("{what}: answered with {:02x?}", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

/// Sends one request (header and body in `body`) and reads its answer's bytes.
async fn exchange(stream: &mut TcpStream, body: &[u8]) -> Bytes {
    stream.write_all(&framed(body)).await.unwrap();
    let size = stream.read_i32().await.unwrap();
    let mut response = vec![0u8; size as usize];
    stream.read_exact(&mut response).await.unwrap();
    Bytes::from(response)
}

/// A well-formed Metadata v1 request for `topic` on `stream`, and its answer.
async fn metadata(stream: &mut TcpStream, correlation_id: i32, topic: &str) -> MetadataResponse {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(3)
        .with_request_api_version(1)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("it")))
        .encode(&mut body, 1)
        .unwrap();
    MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .encode(&mut body, 1)
        .unwrap();
    let mut response = exchange(stream, &body).await;
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    MetadataResponse::decode(&mut response, 1).unwrap()
}

#[tokio::test]
async fn lengths_past_their_frame_close_only_their_connection_instead_of_aborting_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let limit = 1 << 20;
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap());
    config.max_request_bytes = limit;
    let broker = Broker::start(log, config).await.unwrap();

    // A client that was there before, and stays.
    let mut before = TcpStream::connect(broker.address).await.unwrap();
    let answer = metadata(&mut before, 1, "events").await;
    assert_eq!(answer.topics.len(), 1);

    let over_limit = {
        let mut b = ((limit + 1) as i32).to_be_bytes().to_vec();
        b.extend_from_slice(&reported_metadata_v1());
        b
    };
    let bad: [(&str, Vec<u8>); 7] = [
        ("the reported Metadata v1", framed(&reported_metadata_v1())),
        (
            "Metadata v9, compact array",
            framed(&metadata_v9_compact_array()),
        ),
        ("Produce v3, huge array", framed(&produce_v3_huge_array())),
        (
            "ApiVersions v3, huge compact string",
            framed(&api_versions_v3_huge_compact_string()),
        ),
        ("a frame over socket.request.max.bytes", over_limit),
        ("a negative frame size", (-1i32).to_be_bytes().to_vec()),
        ("a frame size of 2^31-1", i32::MAX.to_be_bytes().to_vec()),
    ];
    for (what, bytes) in &bad {
        closes_its_connection(&broker, what, bytes).await;
    }

    let answer = metadata(&mut before, 2, "events").await;
    assert_eq!(answer.topics.len(), 1);
    assert_eq!(answer.topics[0].error_code, 0);
    let mut after = TcpStream::connect(broker.address).await.unwrap();
    let answer = metadata(&mut after, 3, "more-events").await;
    assert_eq!(answer.topics.len(), 1);
    assert_eq!(answer.topics[0].error_code, 0);
    assert_eq!(
        answer.topics[0].name.as_ref().map(|n| n.0.to_string()),
        Some("more-events".to_string())
    );
}

/// A well-formed request can still ask for the absurd: CreateTopics v4 with 2^31-1
/// partitions would have the broker create two billion partition directories.
#[tokio::test]
async fn a_topic_of_two_billion_partitions_is_refused_and_the_broker_serves_on() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let broker = Broker::start(log, BrokerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(broker.address).await.unwrap();
    for (n, partitions) in [(1, i32::MAX), (2, ember_log::MAX_PARTITIONS + 1), (3, -5)] {
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(19)
            .with_request_api_version(4)
            .with_correlation_id(n)
            .encode(&mut body, 1)
            .unwrap();
        CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(format!("huge{n}"))))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(1000)
            .encode(&mut body, 4)
            .unwrap();
        stream.write_all(&framed(&body)).await.unwrap();
        let size = tokio::time::timeout(Duration::from_secs(10), stream.read_i32())
            .await
            .expect("an answer, not a broker busy creating partitions")
            .unwrap();
        let mut response = vec![0u8; size as usize];
        stream.read_exact(&mut response).await.unwrap();
        let mut response = Bytes::from(response);
        ResponseHeader::decode(&mut response, 0).unwrap();
        let answer = CreateTopicsResponse::decode(&mut response, 4).unwrap();
        assert_eq!(
            answer.topics[0].error_code, 37,
            "INVALID_PARTITIONS for {partitions}"
        );
    }
    let answer = metadata(&mut stream, 9, "events").await;
    assert_eq!(answer.topics[0].error_code, 0);
    assert!(!dir.path().join("huge1").exists());
}

/// A stopped broker takes its open connections with it: a client connected before
/// `stop` sees the connection closed, not a broker that still answers.
#[tokio::test]
async fn stopping_the_broker_closes_its_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let broker = Broker::start(log, BrokerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(broker.address).await.unwrap();
    let answer = metadata(&mut stream, 1, "events").await;
    assert_eq!(answer.topics[0].error_code, 0);
    broker.stop();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
        .await
        .expect("the connection closes when the broker stops");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// KIP-734: ListOffsets with timestamp -3 answers the first record with the largest
/// timestamp (kafka-python's `MAX_TIMESTAMP`, confluent-kafka's
/// `OffsetSpec.max_timestamp()`), whether it is alone in its batch or not, and -1
/// for an empty partition.
#[tokio::test]
async fn list_offsets_with_the_max_timestamp_sentinel_finds_the_newest_record() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.create_topic("ts", 2, None).unwrap();
    let producer =
        ember_log::Producer::new(log.clone(), ember_log::ProducerConfig::default()).unwrap();
    // Offsets 0..6 of partition 0: the largest timestamp first appears at offset 3,
    // inside the second batch.
    for (batch, stamps) in [vec![500, 300], vec![100, 900, 200, 900]]
        .iter()
        .enumerate()
    {
        for ts in stamps {
            let record = ember_log::ProducerRecord::new("ts", format!("b{batch}"))
                .partition(0)
                .timestamp(*ts);
            producer.send(record).unwrap();
        }
        producer.flush();
    }
    let broker = Broker::start(log, BrokerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(broker.address).await.unwrap();
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(2)
        .with_request_api_version(7)
        .with_correlation_id(1)
        .encode(&mut body, 2)
        .unwrap();
    let partition = |p: i32| {
        ListOffsetsPartition::default()
            .with_partition_index(p)
            .with_timestamp(-3)
    };
    ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("ts")))
                .with_partitions(vec![partition(0), partition(1)]),
        ])
        .encode(&mut body, 7)
        .unwrap();
    let mut response = exchange(&mut stream, &body).await;
    ResponseHeader::decode(&mut response, 1).unwrap();
    let answer = ListOffsetsResponse::decode(&mut response, 7).unwrap();
    let got: Vec<(i16, i64, i64)> = answer.topics[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.offset, p.timestamp))
        .collect();
    assert_eq!(got, vec![(0, 3, 900), (0, -1, -1)]);
}

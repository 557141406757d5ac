//! `kafka_request`: one broker request frame, decoded as the broker does
//! ([`ember_log::broker::decode_request_frame`]).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, RequestHeader, RequestKind, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, Message, StrBytes, VersionRange};

use super::{KIB, Runner, Target};
use crate::Result;
use crate::mutate::Dictionary;

pub fn target() -> Target {
    Target {
        name: "kafka_request",
        max_len: 64 * KIB,
        dictionary: Dictionary::default(),
        runner: || Ok(Box::new(Broker)),
        seeds,
    }
}

struct Broker;

impl Runner for Broker {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let (header, request) =
            ember_log::broker::decode_request_frame(Bytes::copy_from_slice(input))?;
        Ok(format!(
            "{:?} v{}",
            ApiKey::try_from(header.request_api_key).ok(),
            header.request_api_version
        ) + match request {
            RequestKind::Produce(_) => " produce",
            _ => "",
        })
    }
}

/// Makes a request of one API (encoded at each version).
type Request = fn() -> RequestKind;

/// The APIs the broker serves, with the range of versions the crate knows; the
/// broker refuses versions it does not serve, which is an outcome too.
fn apis() -> Vec<(ApiKey, VersionRange, Request)> {
    vec![
        (ApiKey::Produce, ProduceRequest::VERSIONS, produce),
        (ApiKey::Fetch, FetchRequest::VERSIONS, || {
            FetchRequest::default().with_max_wait_ms(500).into()
        }),
        (ApiKey::ListOffsets, ListOffsetsRequest::VERSIONS, || {
            ListOffsetsRequest::default().into()
        }),
        (ApiKey::Metadata, MetadataRequest::VERSIONS, || {
            MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(TopicName(s("events")))),
                ]))
                .into()
        }),
        (ApiKey::OffsetCommit, OffsetCommitRequest::VERSIONS, || {
            OffsetCommitRequest::default().into()
        }),
        (ApiKey::OffsetFetch, OffsetFetchRequest::VERSIONS, || {
            OffsetFetchRequest::default().into()
        }),
        (
            ApiKey::FindCoordinator,
            FindCoordinatorRequest::VERSIONS,
            || {
                FindCoordinatorRequest::default()
                    .with_key(s("group"))
                    .into()
            },
        ),
        (ApiKey::JoinGroup, JoinGroupRequest::VERSIONS, || {
            JoinGroupRequest::default().into()
        }),
        (ApiKey::Heartbeat, HeartbeatRequest::VERSIONS, || {
            HeartbeatRequest::default().into()
        }),
        (ApiKey::LeaveGroup, LeaveGroupRequest::VERSIONS, || {
            LeaveGroupRequest::default().into()
        }),
        (ApiKey::SyncGroup, SyncGroupRequest::VERSIONS, || {
            SyncGroupRequest::default().into()
        }),
        (ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS, || {
            ApiVersionsRequest::default().into()
        }),
        (ApiKey::CreateTopics, CreateTopicsRequest::VERSIONS, || {
            CreateTopicsRequest::default().into()
        }),
        (ApiKey::DeleteTopics, DeleteTopicsRequest::VERSIONS, || {
            DeleteTopicsRequest::default().into()
        }),
        (
            ApiKey::InitProducerId,
            InitProducerIdRequest::VERSIONS,
            || InitProducerIdRequest::default().into(),
        ),
    ]
}

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn produce() -> RequestKind {
    let records = super::record_batch::batch(0, 3, kafka_protocol::records::Compression::None);
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1500)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s("events")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ])
        .into()
}

/// A frame of each API at each version the crate can encode (the broker serves
/// most of them), as a client sends it after the 4-byte size.
fn seeds() -> Result<Vec<Vec<u8>>> {
    let mut out = vec![];
    for (api, versions, request) in apis() {
        for v in versions.min..=versions.max {
            let mut frame = BytesMut::new();
            let header = RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(v)
                .with_correlation_id(7)
                .with_client_id(Some(s("fuzz")));
            // Some versions need fields these defaults do not set: skip them.
            if header
                .encode(&mut frame, api.request_header_version(v))
                .is_err()
                || request().encode(&mut frame, v).is_err()
            {
                continue;
            }
            out.push(frame.to_vec());
        }
    }
    Ok(out)
}

//! Requests with every field of their version set, for the layout tests.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchTopic, ForgottenTopic, ReplicaState,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Message, StrBytes, VersionRange};

pub(super) fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(s(text))
}

/// An unknown tagged field for structs of flexible versions, none otherwise.
pub(super) fn extra_tags(flexible: bool) -> BTreeMap<i32, Bytes> {
    let mut tags = BTreeMap::new();
    if flexible {
        tags.insert(1000, Bytes::from_static(b"unknown tag"));
    }
    tags
}

/// A topic id that is not nil (kafka-protocol does not re-export its Uuid type).
fn topic_id_holder() -> MetadataRequestTopic {
    let mut wire = BytesMut::new();
    wire.put_slice(&[7; 16]);
    wire.put_u8(2); // compact string of 1 byte
    wire.put_u8(b'x');
    wire.put_u8(0); // no tagged fields
    MetadataRequestTopic::decode(&mut wire.freeze(), 10).expect("a v10 topic")
}

pub(super) fn crate_versions(api: ApiKey) -> VersionRange {
    match api {
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => FetchRequest::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
        ApiKey::Metadata => MetadataRequest::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
        ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
        ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
        ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
        other => panic!("{other:?} is not served"),
    }
}

/// A request of `api` at `v` with every field of that version set, arrays and
/// strings non-empty, nulls where a field may be null, and an unknown tagged field
/// in every struct of a flexible version.
pub(super) fn populated(api: ApiKey, v: i16) -> RequestKind {
    let id = topic_id_holder().topic_id;
    match api {
        ApiKey::Produce => {
            let tags = || extra_tags(v >= 9);
            let mut t = TopicProduceData::default()
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(Bytes::from_static(b"record batches")))
                        .with_unknown_tagged_fields(tags()),
                    PartitionProduceData::default()
                        .with_index(2)
                        .with_records(None)
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_unknown_tagged_fields(tags());
            if v <= 12 {
                t = t.with_name(topic("events"));
            } else {
                t = t.with_topic_id(id);
            }
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s("tx"))))
                .with_acks(-1)
                .with_timeout_ms(1500)
                .with_topic_data(vec![t])
                .with_unknown_tagged_fields(tags())
                .into()
        }
        ApiKey::Fetch => {
            let tags = || extra_tags(v >= 12);
            let mut p = FetchPartition::default()
                .with_partition(3)
                .with_fetch_offset(10)
                .with_partition_max_bytes(1 << 20)
                .with_unknown_tagged_fields(tags());
            if v >= 9 {
                p = p.with_current_leader_epoch(4);
            }
            if v >= 12 {
                p = p.with_last_fetched_epoch(2);
            }
            if v >= 5 {
                p = p.with_log_start_offset(1);
            }
            if v >= 17 {
                p = p.with_replica_directory_id(id);
            }
            if v >= 18 {
                p = p.with_high_watermark(99);
            }
            let mut t = FetchTopic::default()
                .with_partitions(vec![p])
                .with_unknown_tagged_fields(tags());
            if v <= 12 {
                t = t.with_topic(topic("events"));
            } else {
                t = t.with_topic_id(id);
            }
            let mut r = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 24)
                .with_isolation_level(1)
                .with_topics(vec![t])
                .with_unknown_tagged_fields(tags());
            if v <= 14 {
                r = r.with_replica_id(BrokerId(-1));
            }
            if v >= 7 {
                let mut f = ForgottenTopic::default()
                    .with_partitions(vec![5, 6])
                    .with_unknown_tagged_fields(tags());
                if v <= 12 {
                    f = f.with_topic(topic("old"));
                } else {
                    f = f.with_topic_id(id);
                }
                r = r
                    .with_session_id(8)
                    .with_session_epoch(9)
                    .with_forgotten_topics_data(vec![f]);
            }
            if v >= 11 {
                r = r.with_rack_id(s("rack-a"));
            }
            if v >= 12 {
                r = r.with_cluster_id(Some(s("cluster")));
            }
            if v >= 15 {
                r = r.with_replica_state(
                    ReplicaState::default()
                        .with_replica_id(BrokerId(1))
                        .with_replica_epoch(2)
                        .with_unknown_tagged_fields(tags()),
                );
            }
            r.into()
        }
        ApiKey::ListOffsets => {
            let tags = || extra_tags(v >= 6);
            let mut p = ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-2)
                .with_unknown_tagged_fields(tags());
            if v >= 4 {
                p = p.with_current_leader_epoch(3);
            }
            let mut r = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(topic("events"))
                        .with_partitions(vec![p])
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_unknown_tagged_fields(tags());
            if v >= 2 {
                r = r.with_isolation_level(1);
            }
            if v >= 10 {
                r = r.with_timeout_ms(100);
            }
            r.into()
        }
        ApiKey::Metadata => {
            let tags = || extra_tags(v >= 9);
            let mut named = MetadataRequestTopic::default()
                .with_name(Some(topic("events")))
                .with_unknown_tagged_fields(tags());
            let mut topics = vec![];
            if v >= 10 {
                named = named.with_topic_id(id);
                topics.push(
                    MetadataRequestTopic::default()
                        .with_topic_id(id)
                        .with_name(None)
                        .with_unknown_tagged_fields(tags()),
                );
            }
            topics.insert(0, named);
            let mut r = MetadataRequest::default()
                .with_topics(Some(topics))
                .with_unknown_tagged_fields(tags());
            if v >= 4 {
                r = r.with_allow_auto_topic_creation(false);
            }
            if (8..=10).contains(&v) {
                r = r.with_include_cluster_authorized_operations(true);
            }
            if v >= 8 {
                r = r.with_include_topic_authorized_operations(true);
            }
            r.into()
        }
        ApiKey::OffsetCommit => {
            let tags = || extra_tags(v >= 8);
            let partition = |metadata: Option<StrBytes>| {
                let mut p = OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(42)
                    .with_committed_metadata(metadata)
                    .with_unknown_tagged_fields(tags());
                if v >= 6 {
                    p = p.with_committed_leader_epoch(3);
                }
                p
            };
            let mut r = OffsetCommitRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id_or_member_epoch(5)
                .with_member_id(s("member-1"))
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(topic("events"))
                        .with_partitions(vec![partition(Some(s("meta"))), partition(None)])
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_unknown_tagged_fields(tags());
            if v >= 7 {
                r = r.with_group_instance_id(Some(s("instance")));
            }
            if v <= 4 {
                r = r.with_retention_time_ms(60_000);
            }
            r.into()
        }
        ApiKey::OffsetFetch => {
            let tags = || extra_tags(v >= 6);
            let mut r = OffsetFetchRequest::default().with_unknown_tagged_fields(tags());
            if v <= 7 {
                r = r.with_group_id(GroupId(s("group"))).with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(topic("events"))
                        .with_partition_indexes(vec![0, 1])
                        .with_unknown_tagged_fields(tags()),
                ]));
            } else {
                let mut g = OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("group")))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopics::default()
                            .with_name(topic("events"))
                            .with_partition_indexes(vec![0, 1])
                            .with_unknown_tagged_fields(tags()),
                    ]))
                    .with_unknown_tagged_fields(tags());
                if v >= 9 {
                    g = g.with_member_id(Some(s("member"))).with_member_epoch(4);
                }
                r = r.with_groups(vec![g]);
            }
            if v >= 7 {
                r = r.with_require_stable(true);
            }
            r.into()
        }
        ApiKey::FindCoordinator => {
            let mut r =
                FindCoordinatorRequest::default().with_unknown_tagged_fields(extra_tags(v >= 3));
            if v <= 3 {
                r = r.with_key(s("group"));
            }
            if v >= 1 {
                r = r.with_key_type(1);
            }
            if v >= 4 {
                r = r.with_coordinator_keys(vec![s("group-a"), s("group-b")]);
            }
            r.into()
        }
        ApiKey::JoinGroup => {
            let tags = || extra_tags(v >= 6);
            let mut r = JoinGroupRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_session_timeout_ms(10_000)
                .with_member_id(s("member-1"))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::from_static(b"subscription"))
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_unknown_tagged_fields(tags());
            if v >= 1 {
                r = r.with_rebalance_timeout_ms(20_000);
            }
            if v >= 5 {
                r = r.with_group_instance_id(Some(s("instance")));
            }
            if v >= 8 {
                r = r.with_reason(Some(s("joining")));
            }
            r.into()
        }
        ApiKey::Heartbeat => {
            let mut r = HeartbeatRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id(3)
                .with_member_id(s("member-1"))
                .with_unknown_tagged_fields(extra_tags(v >= 4));
            if v >= 3 {
                r = r.with_group_instance_id(Some(s("instance")));
            }
            r.into()
        }
        ApiKey::LeaveGroup => {
            let mut r = LeaveGroupRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_unknown_tagged_fields(extra_tags(v >= 4));
            if v <= 2 {
                r = r.with_member_id(s("member-1"));
            } else {
                let mut m = MemberIdentity::default()
                    .with_member_id(s("member-1"))
                    .with_group_instance_id(Some(s("instance")))
                    .with_unknown_tagged_fields(extra_tags(v >= 4));
                if v >= 5 {
                    m = m.with_reason(Some(s("leaving")));
                }
                r = r.with_members(vec![m]);
            }
            r.into()
        }
        ApiKey::SyncGroup => {
            let tags = || extra_tags(v >= 4);
            let mut r = SyncGroupRequest::default()
                .with_group_id(GroupId(s("group")))
                .with_generation_id(3)
                .with_member_id(s("member-1"))
                .with_assignments(vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s("member-1"))
                        .with_assignment(Bytes::from_static(b"assignment"))
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_unknown_tagged_fields(tags());
            if v >= 3 {
                r = r.with_group_instance_id(Some(s("instance")));
            }
            if v >= 5 {
                r = r
                    .with_protocol_type(Some(s("consumer")))
                    .with_protocol_name(Some(s("range")));
            }
            r.into()
        }
        ApiKey::ApiVersions => {
            let mut r = ApiVersionsRequest::default();
            if v >= 3 {
                r = r
                    .with_client_software_name(s("ember-test"))
                    .with_client_software_version(s("1.0"))
                    .with_unknown_tagged_fields(extra_tags(true));
            }
            r.into()
        }
        ApiKey::CreateTopics => {
            let tags = || extra_tags(v >= 5);
            CreateTopicsRequest::default()
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic("events"))
                        .with_num_partitions(3)
                        .with_replication_factor(1)
                        .with_assignments(vec![
                            CreatableReplicaAssignment::default()
                                .with_partition_index(0)
                                .with_broker_ids(vec![BrokerId(0), BrokerId(1)])
                                .with_unknown_tagged_fields(tags()),
                        ])
                        .with_configs(vec![
                            CreatableTopicConfig::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("1000")))
                                .with_unknown_tagged_fields(tags()),
                            CreatableTopicConfig::default()
                                .with_name(s("segment.ms"))
                                .with_value(None)
                                .with_unknown_tagged_fields(tags()),
                        ])
                        .with_unknown_tagged_fields(tags()),
                ])
                .with_timeout_ms(1000)
                .with_validate_only(true)
                .with_unknown_tagged_fields(tags())
                .into()
        }
        ApiKey::DeleteTopics => {
            let mut r = DeleteTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_unknown_tagged_fields(extra_tags(v >= 4));
            if v >= 6 {
                r = r.with_topics(vec![
                    DeleteTopicState::default()
                        .with_name(Some(topic("events")))
                        .with_topic_id(id)
                        .with_unknown_tagged_fields(extra_tags(true)),
                ]);
            } else {
                r = r.with_topic_names(vec![topic("a"), topic("b")]);
            }
            r.into()
        }
        ApiKey::InitProducerId => {
            let mut r = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s("tx"))))
                .with_transaction_timeout_ms(60_000)
                .with_unknown_tagged_fields(extra_tags(v >= 2));
            if v >= 3 {
                r = r.with_producer_id(ProducerId(12)).with_producer_epoch(1);
            }
            r.into()
        }
        other => panic!("{other:?} is not served"),
    }
}

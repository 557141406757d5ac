//! The wire layout of every request the broker decodes, field by field and version by
//! version, as kafka-protocol 0.18 reads it (its `src/messages/*_request.rs` decode
//! functions): each message covers all the versions the crate decodes, not only those
//! the broker serves, so that serving a newer version needs no change here. The tests
//! in `super::tests` encode requests of every version with kafka-protocol and check
//! these layouts read them whole.

use kafka_protocol::messages::ApiKey;

use super::schema::Ty::*;
use super::schema::{ALL, Layout, Message, Versions, field, fields, from, range, tagged, to};

/// The layout of `api`'s requests, `None` for requests the broker never decodes.
pub(super) fn request(api: ApiKey) -> Option<&'static Message> {
    Some(match api {
        ApiKey::Produce => &PRODUCE,
        ApiKey::Fetch => &FETCH,
        ApiKey::ListOffsets => &LIST_OFFSETS,
        ApiKey::Metadata => &METADATA,
        ApiKey::OffsetCommit => &OFFSET_COMMIT,
        ApiKey::OffsetFetch => &OFFSET_FETCH,
        ApiKey::FindCoordinator => &FIND_COORDINATOR,
        ApiKey::JoinGroup => &JOIN_GROUP,
        ApiKey::Heartbeat => &HEARTBEAT,
        ApiKey::LeaveGroup => &LEAVE_GROUP,
        ApiKey::SyncGroup => &SYNC_GROUP,
        ApiKey::ApiVersions => &API_VERSIONS,
        ApiKey::CreateTopics => &CREATE_TOPICS,
        ApiKey::DeleteTopics => &DELETE_TOPICS,
        ApiKey::InitProducerId => &INIT_PRODUCER_ID,
        _ => return None,
    })
}

const fn message(versions: Versions, flexible: Versions, body: &'static Layout) -> Message {
    Message {
        versions,
        flexible,
        body,
    }
}

/// Request header v1 and v2 (v0 has no client id; kafka-protocol decodes 1..=2).
pub(super) const REQUEST_HEADER: Message = message(
    range(1, 2),
    from(2),
    &fields(
        "RequestHeader",
        &[
            field("request_api_key", Int16, ALL),
            field("request_api_version", Int16, ALL),
            field("correlation_id", Int32, ALL),
            field("client_id", LegacyNullableString, ALL),
        ],
    ),
);

const PRODUCE: Message = message(
    range(3, 13),
    from(9),
    &fields(
        "ProduceRequest",
        &[
            field("transactional_id", NullableString, ALL),
            field("acks", Int16, ALL),
            field("timeout_ms", Int32, ALL),
            field("topic_data", Array(&Struct(&TOPIC_PRODUCE_DATA)), ALL),
        ],
    ),
);

const TOPIC_PRODUCE_DATA: Layout = fields(
    "TopicProduceData",
    &[
        field("name", String, to(12)),
        field("topic_id", Uuid, from(13)),
        field(
            "partition_data",
            Array(&Struct(&PARTITION_PRODUCE_DATA)),
            ALL,
        ),
    ],
);

const PARTITION_PRODUCE_DATA: Layout = fields(
    "PartitionProduceData",
    &[
        field("index", Int32, ALL),
        // Record batches, kept as bytes: the log checks them when it appends.
        field("records", NullableBytes, ALL),
    ],
);

const FETCH: Message = message(
    range(4, 18),
    from(12),
    &Layout {
        name: "FetchRequest",
        fields: &[
            field("replica_id", Int32, to(14)),
            field("max_wait_ms", Int32, ALL),
            field("min_bytes", Int32, ALL),
            field("max_bytes", Int32, ALL),
            field("isolation_level", Int8, ALL),
            field("session_id", Int32, from(7)),
            field("session_epoch", Int32, from(7)),
            field("topics", Array(&Struct(&FETCH_TOPIC)), ALL),
            field(
                "forgotten_topics_data",
                Array(&Struct(&FORGOTTEN_TOPIC)),
                from(7),
            ),
            field("rack_id", String, from(11)),
        ],
        tagged: &[
            tagged(0, "cluster_id", NullableString, ALL),
            tagged(1, "replica_state", Struct(&REPLICA_STATE), from(15)),
        ],
    },
);

const FETCH_TOPIC: Layout = fields(
    "FetchTopic",
    &[
        field("topic", String, to(12)),
        field("topic_id", Uuid, from(13)),
        field("partitions", Array(&Struct(&FETCH_PARTITION)), ALL),
    ],
);

const FETCH_PARTITION: Layout = Layout {
    name: "FetchPartition",
    fields: &[
        field("partition", Int32, ALL),
        field("current_leader_epoch", Int32, from(9)),
        field("fetch_offset", Int64, ALL),
        field("last_fetched_epoch", Int32, from(12)),
        field("log_start_offset", Int64, from(5)),
        field("partition_max_bytes", Int32, ALL),
    ],
    tagged: &[
        tagged(0, "replica_directory_id", Uuid, from(17)),
        tagged(1, "high_watermark", Int64, from(18)),
    ],
};

const FORGOTTEN_TOPIC: Layout = fields(
    "ForgottenTopic",
    &[
        field("topic", String, range(7, 12)),
        field("topic_id", Uuid, from(13)),
        field("partitions", Array(&Int32), from(7)),
    ],
);

const REPLICA_STATE: Layout = fields(
    "ReplicaState",
    &[
        field("replica_id", Int32, from(15)),
        field("replica_epoch", Int64, from(15)),
    ],
);

const LIST_OFFSETS: Message = message(
    range(1, 10),
    from(6),
    &fields(
        "ListOffsetsRequest",
        &[
            field("replica_id", Int32, ALL),
            field("isolation_level", Int8, from(2)),
            field("topics", Array(&Struct(&LIST_OFFSETS_TOPIC)), ALL),
            field("timeout_ms", Int32, from(10)),
        ],
    ),
);

const LIST_OFFSETS_TOPIC: Layout = fields(
    "ListOffsetsTopic",
    &[
        field("name", String, ALL),
        field("partitions", Array(&Struct(&LIST_OFFSETS_PARTITION)), ALL),
    ],
);

const LIST_OFFSETS_PARTITION: Layout = fields(
    "ListOffsetsPartition",
    &[
        field("partition_index", Int32, ALL),
        field("current_leader_epoch", Int32, from(4)),
        field("timestamp", Int64, ALL),
    ],
);

const METADATA: Message = message(
    range(0, 13),
    from(9),
    &fields(
        "MetadataRequest",
        &[
            field("topics", NullableArray(&Struct(&METADATA_TOPIC)), ALL),
            field("allow_auto_topic_creation", Bool, from(4)),
            field("include_cluster_authorized_operations", Bool, range(8, 10)),
            field("include_topic_authorized_operations", Bool, from(8)),
        ],
    ),
);

const METADATA_TOPIC: Layout = fields(
    "MetadataRequestTopic",
    &[
        field("topic_id", Uuid, from(10)),
        field("name", NullableString, ALL),
    ],
);

const OFFSET_COMMIT: Message = message(
    range(2, 9),
    from(8),
    &fields(
        "OffsetCommitRequest",
        &[
            field("group_id", String, ALL),
            field("generation_id_or_member_epoch", Int32, ALL),
            field("member_id", String, ALL),
            field("group_instance_id", NullableString, from(7)),
            field("retention_time_ms", Int64, to(4)),
            field("topics", Array(&Struct(&OFFSET_COMMIT_TOPIC)), ALL),
        ],
    ),
);

const OFFSET_COMMIT_TOPIC: Layout = fields(
    "OffsetCommitRequestTopic",
    &[
        field("name", String, ALL),
        field("partitions", Array(&Struct(&OFFSET_COMMIT_PARTITION)), ALL),
    ],
);

const OFFSET_COMMIT_PARTITION: Layout = fields(
    "OffsetCommitRequestPartition",
    &[
        field("partition_index", Int32, ALL),
        field("committed_offset", Int64, ALL),
        field("committed_leader_epoch", Int32, from(6)),
        field("committed_metadata", NullableString, ALL),
    ],
);

const OFFSET_FETCH: Message = message(
    range(1, 9),
    from(6),
    &fields(
        "OffsetFetchRequest",
        &[
            field("group_id", String, to(7)),
            field("topics", NullableArray(&Struct(&OFFSET_FETCH_TOPIC)), to(7)),
            field("groups", Array(&Struct(&OFFSET_FETCH_GROUP)), from(8)),
            field("require_stable", Bool, from(7)),
        ],
    ),
);

const OFFSET_FETCH_TOPIC: Layout = fields(
    "OffsetFetchRequestTopic",
    &[
        field("name", String, to(7)),
        field("partition_indexes", Array(&Int32), to(7)),
    ],
);

const OFFSET_FETCH_GROUP: Layout = fields(
    "OffsetFetchRequestGroup",
    &[
        field("group_id", String, from(8)),
        field("member_id", NullableString, from(9)),
        field("member_epoch", Int32, from(9)),
        field(
            "topics",
            NullableArray(&Struct(&OFFSET_FETCH_GROUP_TOPIC)),
            from(8),
        ),
    ],
);

const OFFSET_FETCH_GROUP_TOPIC: Layout = fields(
    "OffsetFetchRequestTopics",
    &[
        field("name", String, from(8)),
        field("partition_indexes", Array(&Int32), from(8)),
    ],
);

const FIND_COORDINATOR: Message = message(
    range(0, 6),
    from(3),
    &fields(
        "FindCoordinatorRequest",
        &[
            field("key", String, to(3)),
            field("key_type", Int8, from(1)),
            field("coordinator_keys", Array(&String), from(4)),
        ],
    ),
);

const JOIN_GROUP: Message = message(
    range(0, 9),
    from(6),
    &fields(
        "JoinGroupRequest",
        &[
            field("group_id", String, ALL),
            field("session_timeout_ms", Int32, ALL),
            field("rebalance_timeout_ms", Int32, from(1)),
            field("member_id", String, ALL),
            field("group_instance_id", NullableString, from(5)),
            field("protocol_type", String, ALL),
            field("protocols", Array(&Struct(&JOIN_GROUP_PROTOCOL)), ALL),
            field("reason", NullableString, from(8)),
        ],
    ),
);

const JOIN_GROUP_PROTOCOL: Layout = fields(
    "JoinGroupRequestProtocol",
    &[field("name", String, ALL), field("metadata", Bytes, ALL)],
);

const HEARTBEAT: Message = message(
    range(0, 4),
    from(4),
    &fields(
        "HeartbeatRequest",
        &[
            field("group_id", String, ALL),
            field("generation_id", Int32, ALL),
            field("member_id", String, ALL),
            field("group_instance_id", NullableString, from(3)),
        ],
    ),
);

const LEAVE_GROUP: Message = message(
    range(0, 5),
    from(4),
    &fields(
        "LeaveGroupRequest",
        &[
            field("group_id", String, ALL),
            field("member_id", String, to(2)),
            field("members", Array(&Struct(&MEMBER_IDENTITY)), from(3)),
        ],
    ),
);

const MEMBER_IDENTITY: Layout = fields(
    "MemberIdentity",
    &[
        field("member_id", String, from(3)),
        field("group_instance_id", NullableString, from(3)),
        field("reason", NullableString, from(5)),
    ],
);

const SYNC_GROUP: Message = message(
    range(0, 5),
    from(4),
    &fields(
        "SyncGroupRequest",
        &[
            field("group_id", String, ALL),
            field("generation_id", Int32, ALL),
            field("member_id", String, ALL),
            field("group_instance_id", NullableString, from(3)),
            field("protocol_type", NullableString, from(5)),
            field("protocol_name", NullableString, from(5)),
            field("assignments", Array(&Struct(&SYNC_GROUP_ASSIGNMENT)), ALL),
        ],
    ),
);

const SYNC_GROUP_ASSIGNMENT: Layout = fields(
    "SyncGroupRequestAssignment",
    &[
        field("member_id", String, ALL),
        field("assignment", Bytes, ALL),
    ],
);

const API_VERSIONS: Message = message(
    range(0, 4),
    from(3),
    &fields(
        "ApiVersionsRequest",
        &[
            field("client_software_name", String, from(3)),
            field("client_software_version", String, from(3)),
        ],
    ),
);

const CREATE_TOPICS: Message = message(
    range(2, 7),
    from(5),
    &fields(
        "CreateTopicsRequest",
        &[
            field("topics", Array(&Struct(&CREATABLE_TOPIC)), ALL),
            field("timeout_ms", Int32, ALL),
            field("validate_only", Bool, ALL),
        ],
    ),
);

const CREATABLE_TOPIC: Layout = fields(
    "CreatableTopic",
    &[
        field("name", String, ALL),
        field("num_partitions", Int32, ALL),
        field("replication_factor", Int16, ALL),
        field(
            "assignments",
            Array(&Struct(&CREATABLE_REPLICA_ASSIGNMENT)),
            ALL,
        ),
        field("configs", Array(&Struct(&CREATABLE_TOPIC_CONFIG)), ALL),
    ],
);

const CREATABLE_REPLICA_ASSIGNMENT: Layout = fields(
    "CreatableReplicaAssignment",
    &[
        field("partition_index", Int32, ALL),
        field("broker_ids", Array(&Int32), ALL),
    ],
);

const CREATABLE_TOPIC_CONFIG: Layout = fields(
    "CreatableTopicConfig",
    &[
        field("name", String, ALL),
        field("value", NullableString, ALL),
    ],
);

const DELETE_TOPICS: Message = message(
    range(1, 6),
    from(4),
    &fields(
        "DeleteTopicsRequest",
        &[
            field("topics", Array(&Struct(&DELETE_TOPIC_STATE)), from(6)),
            field("topic_names", Array(&String), to(5)),
            field("timeout_ms", Int32, ALL),
        ],
    ),
);

const DELETE_TOPIC_STATE: Layout = fields(
    "DeleteTopicState",
    &[
        field("name", NullableString, from(6)),
        field("topic_id", Uuid, from(6)),
    ],
);

const INIT_PRODUCER_ID: Message = message(
    range(0, 5),
    from(2),
    &fields(
        "InitProducerIdRequest",
        &[
            field("transactional_id", NullableString, ALL),
            field("transaction_timeout_ms", Int32, ALL),
            field("producer_id", Int64, from(3)),
            field("producer_epoch", Int16, from(3)),
        ],
    ),
);

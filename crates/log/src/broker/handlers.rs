//! One function per Kafka request the broker serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{Shared, batches};
use crate::config::TopicConfig;
use crate::error::LogError;

/// Error codes used here (Kafka's numbers).
pub(crate) mod code {
    pub const NONE: i16 = 0;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
}

/// The versions served per API: the crate's range, capped where later versions need
/// what this broker does not have (topic ids, fetch sessions, KIP-848 groups).
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    let max = match api {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 7,
        ApiKey::Metadata => 9,
        ApiKey::OffsetCommit => 8,
        ApiKey::OffsetFetch => 7,
        ApiKey::FindCoordinator => 3,
        ApiKey::JoinGroup => 7,
        ApiKey::Heartbeat => 4,
        ApiKey::LeaveGroup => 4,
        ApiKey::SyncGroup => 5,
        ApiKey::ApiVersions => 3,
        ApiKey::CreateTopics => 5,
        ApiKey::DeleteTopics => 5,
        ApiKey::InitProducerId => 4,
        _ => return None,
    };
    let range = api.valid_versions();
    Some((range.min, max.min(range.max)))
}

pub(crate) const SERVED: [ApiKey; 15] = [
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::SyncGroup,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::InitProducerId,
];

pub(crate) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SERVED
                .iter()
                .filter_map(|api| {
                    let (min, max) = supported(*api)?;
                    Some(
                        ApiVersion::default()
                            .with_api_key(*api as i16)
                            .with_min_version(min)
                            .with_max_version(max),
                    )
                })
                .collect(),
        )
}

/// An error answer for requests the broker does not serve, where the response has a
/// top-level error code; `None` closes the connection instead.
pub(crate) fn unsupported(api: ApiKey) -> Option<ResponseKind> {
    Some(match api {
        ApiKey::SaslHandshake => SaslHandshakeResponse::default()
            .with_error_code(code::UNSUPPORTED_SASL_MECHANISM)
            .into(),
        ApiKey::ListGroups => ListGroupsResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::DescribeCluster => DescribeClusterResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::InitProducerId => InitProducerIdResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::Heartbeat => HeartbeatResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::SyncGroup => SyncGroupResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::JoinGroup => JoinGroupResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::LeaveGroup => LeaveGroupResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        ApiKey::FindCoordinator => FindCoordinatorResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .into(),
        _ => return None,
    })
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Runs a decoded request; `None` for a produce with acks=0 (no response).
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    header: &RequestHeader,
    request: RequestKind,
    version: i16,
) -> Option<ResponseKind> {
    let client = header.client_id.as_deref().unwrap_or("").to_string();
    Some(match request {
        RequestKind::ApiVersions(_) => api_versions(code::NONE).into(),
        RequestKind::Metadata(r) => metadata(shared, r, version).into(),
        RequestKind::Produce(r) => {
            let acks = r.acks;
            // Appends write (and may fsync) under their partition's lock: on a
            // blocking thread, so the runtime's threads keep serving other requests.
            let owner = shared.clone();
            let response = match tokio::task::spawn_blocking(move || produce(&owner, r)).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::error!(error = %e, "a produce request's appends failed");
                    ProduceResponse::default()
                }
            };
            if acks == 0 {
                return None;
            }
            response.into()
        }
        RequestKind::Fetch(r) => fetch(shared, r).await.into(),
        RequestKind::ListOffsets(r) => list_offsets(shared, r).into(),
        RequestKind::CreateTopics(r) => create_topics(shared, r).into(),
        RequestKind::DeleteTopics(r) => delete_topics(shared, r, version).into(),
        RequestKind::InitProducerId(_) => {
            let response = match shared.log.allocate_producer_id() {
                Ok(id) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0),
                Err(e) => InitProducerIdResponse::default().with_error_code(e.kafka_code()),
            };
            response.into()
        }
        RequestKind::FindCoordinator(_) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(shared.node_id))
            .with_host(StrBytes::from_string(shared.host.clone()))
            .with_port(shared.port)
            .into(),
        RequestKind::JoinGroup(r) => shared.coordinator.join(r, &client).await.into(),
        RequestKind::SyncGroup(r) => shared.coordinator.sync(r).await.into(),
        RequestKind::Heartbeat(r) => shared.coordinator.heartbeat(r).into(),
        RequestKind::LeaveGroup(r) => shared.coordinator.leave(r, version).into(),
        RequestKind::OffsetCommit(r) => offset_commit(shared, r).into(),
        RequestKind::OffsetFetch(r) => offset_fetch(shared, r).into(),
        _ => return unsupported(ApiKey::try_from(header.request_api_key).ok()?),
    })
}

fn metadata(shared: &Shared, r: MetadataRequest, version: i16) -> MetadataResponse {
    let log = &shared.log;
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Option<Vec<String>> = match r.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let auto_create = version < 4 || r.allow_auto_topic_creation;
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => log.topics().iter().map(|t| describe(shared, t)).collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                let topic = if auto_create {
                    log.topic_or_create(n)
                } else {
                    log.topic(n)
                };
                match topic {
                    Ok(t) => describe(shared, &t),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(name(n)))
                        .with_error_code(e.kafka_code()),
                }
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(shared.node_id))
                .with_host(StrBytes::from_string(shared.host.clone()))
                .with_port(shared.port),
        ])
        .with_cluster_id(Some(StrBytes::from_string(shared.cluster_id.clone())))
        .with_controller_id(BrokerId(shared.node_id))
        .with_topics(topics)
}

fn describe(shared: &Shared, t: &crate::log::Topic) -> MetadataResponseTopic {
    let node = BrokerId(shared.node_id);
    MetadataResponseTopic::default()
        .with_name(Some(name(&t.name)))
        .with_partitions(
            t.partitions
                .iter()
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p.id)
                        .with_leader_id(node)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}

fn produce(shared: &Shared, r: ProduceRequest) -> ProduceResponse {
    let log = &shared.log;
    let limit = log.config().max_batch_bytes;
    let responses = r
        .topic_data
        .into_iter()
        .map(|topic| {
            let tname = topic.name.0.to_string();
            let partitions = topic
                .partition_data
                .into_iter()
                .map(|data| {
                    let response = PartitionProduceResponse::default()
                        .with_index(data.index)
                        .with_log_append_time_ms(-1);
                    let result = log
                        .topic_or_create(&tname)
                        .and_then(|_| log.partition(&tname, data.index))
                        .and_then(|p| {
                            let mut first = None;
                            for batch in batches(data.records.unwrap_or_default()) {
                                if batch.len() > limit {
                                    return Err(LogError::BatchTooLarge {
                                        size: batch.len(),
                                        limit,
                                    });
                                }
                                let mut owned = batch.to_vec();
                                let appended = p.append(&mut owned)?;
                                first.get_or_insert(appended.base_offset);
                            }
                            Ok((first.unwrap_or(p.end_offset()), p.start_offset()))
                        });
                    match result {
                        Ok((base, start)) => response
                            .with_base_offset(base)
                            .with_log_start_offset(start),
                        Err(e) => {
                            tracing::warn!(topic = %tname, partition = data.index, error = %e, "produce refused");
                            response
                                .with_error_code(e.kafka_code())
                                .with_base_offset(-1)
                                .with_error_message(Some(StrBytes::from_string(e.to_string())))
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(name(&tname))
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

async fn fetch(shared: &Shared, r: FetchRequest) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(r.max_wait_ms.max(0) as u64);
    let min_bytes = r.min_bytes.max(0) as usize;
    loop {
        let (response, bytes, watches) = fetch_once(shared, &r);
        let now = Instant::now();
        if bytes >= min_bytes.max(1) || now >= deadline || watches.is_empty() {
            return response;
        }
        // Long poll: wait for an append to any partition asked for.
        crate::partition::wait_for_append(watches, deadline - now).await;
    }
}

type Watches = Vec<tokio::sync::watch::Receiver<i64>>;

fn fetch_once(shared: &Shared, r: &FetchRequest) -> (FetchResponse, usize, Watches) {
    let max_bytes = if r.max_bytes > 0 {
        r.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut watches = vec![];
    let responses = r
        .topics
        .iter()
        .map(|topic| {
            let tname = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|fp| {
                    let data = PartitionData::default()
                        .with_partition_index(fp.partition)
                        .with_records(Some(Bytes::new()));
                    let p = match shared.log.partition(&tname, fp.partition) {
                        Ok(p) => p,
                        Err(e) => return data.with_error_code(e.kafka_code()),
                    };
                    let budget = (fp.partition_max_bytes.max(0) as usize)
                        .min(max_bytes.saturating_sub(total));
                    // Past the response's budget only empty answers, but at least one
                    // batch overall so that large records still get through.
                    let budget = if total == 0 { budget.max(1) } else { budget };
                    let read = if budget == 0 {
                        Ok(None)
                    } else {
                        p.read(fp.fetch_offset, budget).map(Some)
                    };
                    match read {
                        Ok(Some(f)) => {
                            total += f.records.len();
                            if f.records.is_empty() {
                                watches.push(p.watch_end());
                            }
                            data.with_high_watermark(f.high_watermark)
                                .with_last_stable_offset(f.high_watermark)
                                .with_log_start_offset(f.log_start_offset)
                                .with_records(Some(f.records))
                        }
                        Ok(None) => data
                            .with_high_watermark(p.end_offset())
                            .with_last_stable_offset(p.end_offset())
                            .with_log_start_offset(p.start_offset()),
                        Err(e) => data
                            .with_error_code(e.kafka_code())
                            .with_high_watermark(p.end_offset())
                            .with_last_stable_offset(p.end_offset())
                            .with_log_start_offset(p.start_offset()),
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(name(&tname))
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        total,
        watches,
    )
}

fn list_offsets(shared: &Shared, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let tname = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|lp| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(lp.partition_index);
                    let p = match shared.log.partition(&tname, lp.partition_index) {
                        Ok(p) => p,
                        Err(e) => return response.with_error_code(e.kafka_code()),
                    };
                    let (offset, timestamp) = match lp.timestamp {
                        -1 => (p.end_offset(), -1),
                        -2 => (p.start_offset(), -1),
                        // KIP-734: the record with the largest timestamp (the first of
                        // them), found through the time index.
                        -3 => match p.max_timestamp().map(|ts| p.offset_for_timestamp(ts)) {
                            None | Some(Ok(None)) => (-1, -1),
                            Some(Ok(Some((o, t)))) => (o, t),
                            Some(Err(e)) => return response.with_error_code(e.kafka_code()),
                        },
                        ts => match p.offset_for_timestamp(ts) {
                            Ok(Some((o, t))) => (o, t),
                            Ok(None) => (-1, -1),
                            Err(e) => return response.with_error_code(e.kafka_code()),
                        },
                    };
                    response.with_offset(offset).with_timestamp(timestamp)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(name(&tname))
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn create_topics(shared: &Shared, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let tname = t.name.0.to_string();
            let result = CreatableTopicResult::default().with_name(name(&tname));
            let partitions = if t.num_partitions == -1 {
                shared.log.config().default_partitions
            } else {
                t.num_partitions
            };
            if !(1..=crate::log::MAX_PARTITIONS).contains(&partitions) {
                return result
                    .with_error_code(code::INVALID_PARTITIONS)
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "a topic has 1 to {} partitions, not {partitions}",
                        crate::log::MAX_PARTITIONS
                    ))));
            }
            if t.replication_factor > 1 {
                return result
                    .with_error_code(code::INVALID_REPLICATION_FACTOR)
                    .with_error_message(Some(StrBytes::from_static_str(
                        "this broker is alone: replication factor 1",
                    )));
            }
            let mut config: TopicConfig = shared.log.config().topic_defaults.clone();
            for c in &t.configs {
                if let Some(v) = &c.value
                    && let Err(e) = config.set(&c.name, v)
                {
                    return result
                        .with_error_code(e.kafka_code())
                        .with_error_message(Some(StrBytes::from_string(e.to_string())));
                }
            }
            if r.validate_only {
                return result
                    .with_num_partitions(partitions)
                    .with_replication_factor(1);
            }
            match shared.log.create_topic(&tname, partitions, Some(config)) {
                Ok(_) => result
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
                Err(e) => result
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn delete_topics(shared: &Shared, r: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let names: Vec<String> = if version >= 6 {
        r.topics
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect()
    } else {
        r.topic_names.into_iter().map(|n| n.0.to_string()).collect()
    };
    let responses = names
        .into_iter()
        .map(|n| {
            let result = DeletableTopicResult::default().with_name(Some(name(&n)));
            match shared.log.delete_topic(&n) {
                Ok(()) => result,
                Err(e) => result.with_error_code(e.kafka_code()),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

fn offset_commit(shared: &Shared, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = r.group_id.0.to_string();
    let check =
        shared
            .coordinator
            .check_member(&group, &r.member_id, r.generation_id_or_member_epoch);
    let mut offsets = vec![];
    let mut partition_codes: BTreeMap<(String, i32), i16> = BTreeMap::new();
    for t in &r.topics {
        let tname = t.name.0.to_string();
        for p in &t.partitions {
            let code = match (check, shared.log.partition(&tname, p.partition_index)) {
                (Err(code), _) => code,
                (Ok(()), Err(e)) => e.kafka_code(),
                (Ok(()), Ok(_)) => {
                    offsets.push((
                        tname.clone(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_metadata.as_deref().unwrap_or("").to_string(),
                    ));
                    code::NONE
                }
            };
            partition_codes.insert((tname.clone(), p.partition_index), code);
        }
    }
    if !offsets.is_empty()
        && let Err(e) = shared.log.groups().commit(&group, &offsets)
    {
        tracing::warn!(group, error = %e, "storing committed offsets failed");
        for (tp, code) in partition_codes.iter_mut() {
            if offsets.iter().any(|o| o.0 == tp.0 && o.1 == tp.1) {
                *code = e.kafka_code();
            }
        }
    }
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let tname = t.name.0.to_string();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(
                                    partition_codes[&(tname.clone(), p.partition_index)],
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(shared: &Shared, r: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = r.group_id.0.to_string();
    let groups = shared.log.groups();
    let wanted: Vec<(String, Vec<i32>)> = match r.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for ((t, p), _) in groups.committed_all(&group) {
                by_topic.entry(t).or_default().push(p);
            }
            by_topic.into_iter().collect()
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(tname, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(name(&tname))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            let (offset, metadata) = groups
                                .committed(&group, &tname, p)
                                .unwrap_or((-1, String::new()));
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::from_string(metadata)))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

use std::time::{SystemTime, UNIX_EPOCH};

use super::ipc::batches_to_ipc;
use crate::error::Result;
use crate::proto;
use crate::shuffle::{MapOutput, ShuffleData};
use crate::task::{FailureReason, TaskDefinition, TaskId, TaskOutput, TaskStatus};

pub fn task_id_to_proto(id: &TaskId) -> proto::TaskId {
    proto::TaskId {
        job_id: id.job,
        stage_id: id.stage as u32,
        stage_attempt: id.stage_attempt as u32,
        partition: id.partition as u32,
        task_attempt: id.attempt as u32,
    }
}

pub fn task_definition_to_proto(def: &TaskDefinition) -> proto::TaskDefinition {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    proto::TaskDefinition {
        id: Some(task_id_to_proto(&def.id)),
        plan: def.plan.to_vec(),
        config: def
            .config
            .iter()
            .map(|(key, value)| proto::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        launch_time_ms: now.as_millis() as u64,
        session_id: def.session_id.clone(),
    }
}

fn map_output(m: &MapOutput) -> proto::MapOutput {
    proto::MapOutput {
        executor_id: m.executor_id.clone(),
        executor_address: m.executor_address.clone(),
        data: Some(match &m.data {
            ShuffleData::File(path) => proto::map_output::Data::Path(path.display().to_string()),
            ShuffleData::Memory(k) => proto::map_output::Data::Memory(proto::MemoryKey {
                job_id: k.job,
                stage_id: k.stage as u32,
                map_partition: k.map_partition as u32,
                token: k.token,
            }),
        }),
        partitions: m
            .partitions
            .iter()
            .map(|p| proto::PartitionRange {
                offset: p.offset,
                length: p.length,
                rows: p.rows,
            })
            .collect(),
        keys: m
            .keys
            .iter()
            .map(|k| proto::KeySummary {
                column: k.column as u32,
                complete: k.complete,
                values: k.values.clone(),
                hashes: k.hashes.clone(),
                hashed: k.hashed,
            })
            .collect(),
    }
}

/// Result rows travel as Arrow IPC, which can fail to encode (hence `Result`).
pub fn task_status_to_proto(status: &TaskStatus) -> Result<proto::TaskStatus> {
    let result = match &status.result {
        Ok((output, metrics)) => {
            let (map_output, result_ipc) = match output {
                TaskOutput::Map(m) => (Some(map_output(m)), Vec::new()),
                TaskOutput::Result(batches) => (None, batches_to_ipc(batches)?),
            };
            proto::task_status::Result::Succeeded(proto::TaskSucceeded {
                metrics: Some(proto::TaskMetrics {
                    output_rows: metrics.output_rows,
                    output_bytes: metrics.output_bytes,
                    elapsed_ms: metrics.elapsed.as_millis() as u64,
                }),
                map_output,
                result_ipc,
            })
        }
        Err(f) => {
            use proto::task_failure::Reason;
            let reason = match &f.reason {
                FailureReason::Execution => Reason::Execution(String::new()),
                FailureReason::FetchFailed {
                    executor,
                    map_stage,
                    map_partition,
                } => Reason::FetchFailed(proto::FetchFailed {
                    executor_id: executor.clone(),
                    map_stage: *map_stage as u32,
                    map_partition: *map_partition as u32,
                }),
                FailureReason::Io => Reason::Io(String::new()),
                FailureReason::ExecutorLost => Reason::ExecutorLost(String::new()),
                FailureReason::Killed => Reason::Killed(String::new()),
                FailureReason::ResourcesExhausted => Reason::ResourcesExhausted(String::new()),
            };
            proto::task_status::Result::Failed(proto::TaskFailure {
                message: f.message.clone(),
                retryable: f.retryable,
                reason: Some(reason),
            })
        }
    };
    Ok(proto::TaskStatus {
        id: Some(task_id_to_proto(&status.id)),
        executor_id: status.executor_id.clone(),
        result: Some(result),
    })
}

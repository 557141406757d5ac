use std::sync::Arc;
use std::time::Duration;

use super::ipc::batches_from_ipc;
use crate::error::{EmberError, Result};
use crate::keys::KeySummary;
use crate::proto;
use crate::shuffle::{MapOutput, MapOutputKey, PartitionStats, ShuffleData};
use crate::task::{
    FailureReason, TaskDefinition, TaskFailure, TaskId, TaskMetrics, TaskOutput, TaskStatus,
};

fn missing(what: &'static str, field: &str) -> EmberError {
    EmberError::Decode {
        what,
        message: format!("field '{field}' is missing"),
    }
}

pub fn task_id_from_proto(id: &proto::TaskId) -> TaskId {
    TaskId {
        job: id.job_id,
        stage: id.stage_id as usize,
        stage_attempt: id.stage_attempt as usize,
        partition: id.partition as usize,
        attempt: id.task_attempt as usize,
    }
}

fn task_id(id: Option<&proto::TaskId>, what: &'static str) -> Result<TaskId> {
    id.map(task_id_from_proto)
        .ok_or_else(|| missing(what, "id"))
}

pub fn task_definition_from_proto(def: proto::TaskDefinition) -> Result<TaskDefinition> {
    let what = "task definition";
    if def.plan.is_empty() {
        return Err(missing(what, "plan"));
    }
    Ok(TaskDefinition {
        id: task_id(def.id.as_ref(), what)?,
        plan: def.plan.into(),
        in_process: None,
        config: Arc::new(
            def.config
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
        ),
        session_id: def.session_id,
    })
}

fn map_output(m: proto::MapOutput) -> Result<MapOutput> {
    let what = "map output";
    let data = match m.data.ok_or_else(|| missing(what, "data"))? {
        proto::map_output::Data::Path(p) if !p.is_empty() => ShuffleData::File(p.into()),
        proto::map_output::Data::Path(_) => return Err(missing(what, "path")),
        proto::map_output::Data::Memory(k) => ShuffleData::Memory(MapOutputKey {
            job: k.job_id,
            stage: k.stage_id as usize,
            map_partition: k.map_partition as usize,
            token: k.token,
        }),
    };
    Ok(MapOutput {
        executor_id: m.executor_id,
        executor_address: m.executor_address,
        data,
        partitions: m
            .partitions
            .into_iter()
            .map(|p| PartitionStats {
                offset: p.offset,
                length: p.length,
                rows: p.rows,
            })
            .collect(),
        keys: m
            .keys
            .into_iter()
            .map(|k| KeySummary {
                column: k.column as usize,
                complete: k.complete,
                values: k.values,
                hashes: k.hashes,
                hashed: k.hashed,
            })
            .collect(),
    })
}

pub fn task_status_from_proto(status: proto::TaskStatus) -> Result<TaskStatus> {
    let what = "task status";
    let id = task_id(status.id.as_ref(), what)?;
    let result = match status.result.ok_or_else(|| missing(what, "result"))? {
        proto::task_status::Result::Succeeded(s) => {
            let m = s.metrics.unwrap_or_default();
            let metrics = TaskMetrics {
                output_rows: m.output_rows,
                output_bytes: m.output_bytes,
                elapsed: Duration::from_millis(m.elapsed_ms),
            };
            let output = match s.map_output {
                Some(map) => TaskOutput::Map(map_output(map)?),
                None => TaskOutput::Result(batches_from_ipc(&s.result_ipc)?),
            };
            Ok((output, metrics))
        }
        proto::task_status::Result::Failed(f) => {
            use proto::task_failure::Reason;
            let reason = match f.reason.ok_or_else(|| missing(what, "failure reason"))? {
                Reason::Execution(_) => FailureReason::Execution,
                Reason::FetchFailed(ff) => FailureReason::FetchFailed {
                    executor: ff.executor_id,
                    map_stage: ff.map_stage as usize,
                    map_partition: ff.map_partition as usize,
                },
                Reason::Io(_) => FailureReason::Io,
                Reason::ExecutorLost(_) => FailureReason::ExecutorLost,
                Reason::Killed(_) => FailureReason::Killed,
                Reason::ResourcesExhausted(_) => FailureReason::ResourcesExhausted,
            };
            Err(TaskFailure {
                reason,
                message: f.message,
                retryable: f.retryable,
            })
        }
    };
    Ok(TaskStatus {
        id,
        executor_id: status.executor_id,
        result,
    })
}

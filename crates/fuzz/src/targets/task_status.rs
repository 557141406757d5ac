//! `task_status`: what the driver decodes from executors: task status reports
//! (protobuf, then [`task_status_from_proto`], which reads a final stage's rows as
//! Arrow IPC), and the registration, heartbeat and decommission messages.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, ListArray, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use ember_core::convert::{task_status_from_proto, task_status_to_proto};
use ember_core::proto;
use ember_exec::shuffle::{MapOutput, MapOutputKey, PartitionStats, ShuffleData};
use ember_exec::task::{FailureReason, TaskFailure, TaskId, TaskMetrics, TaskOutput, TaskStatus};
use prost::Message;

use super::{KIB, Runner, Target, setup};
use crate::Result;
use crate::mutate::Dictionary;

pub fn target() -> Target {
    Target {
        name: "task_status",
        max_len: 64 * KIB,
        dictionary: Dictionary::default(),
        runner: || Ok(Box::new(Driver)),
        seeds,
    }
}

struct Driver;

impl Runner for Driver {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        // The same bytes as each message the driver's service takes.
        let others = [
            proto::RegisterExecutorRequest::decode(input).is_ok(),
            proto::HeartbeatRequest::decode(input).is_ok(),
            proto::DecommissionRequest::decode(input).is_ok(),
        ];
        let report = proto::ReportTaskStatusRequest::decode(input).map_err(|e| e.to_string())?;
        let mut out = vec![];
        for status in report.statuses {
            let status = task_status_from_proto(status).map_err(|e| e.to_string())?;
            out.push(match status.result {
                Ok((TaskOutput::Map(m), _)) => format!("map of {} partitions", m.partitions.len()),
                Ok((TaskOutput::Result(b), _)) => format!("result of {} batches", b.len()),
                Err(f) => format!("failure {:?}", f.reason),
            });
        }
        Ok(format!("{others:?} {}", out.join(", ")))
    }
}

fn id(partition: usize) -> TaskId {
    TaskId {
        job: 3,
        stage: 1,
        stage_attempt: 0,
        partition,
        attempt: 0,
    }
}

fn rows() -> Result<RecordBatch> {
    let list =
        ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), None]), None]);
    let strukt = StructArray::from(vec![(
        Arc::new(Field::new("x", DataType::Int64, true)),
        Arc::new(Int64Array::from(vec![Some(5), None])) as ArrayRef,
    )]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("l", list.data_type().clone(), true),
        Field::new("st", strukt.data_type().clone(), true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(list),
            Arc::new(strukt),
        ],
    )
    .map_err(|e| setup("a result batch")(e.to_string()))
}

// Messages gain fields over time; seeds set those they need.
#[allow(clippy::needless_update)]
fn seeds() -> Result<Vec<Vec<u8>>> {
    let metrics = TaskMetrics {
        output_rows: 2,
        output_bytes: 64,
        elapsed: Duration::from_millis(5),
    };
    let map = |data| MapOutput {
        executor_id: "exec-1".into(),
        executor_address: "http://127.0.0.1:7078".into(),
        data,
        partitions: vec![
            PartitionStats {
                offset: 0,
                length: 40,
                rows: 3,
            },
            PartitionStats::default(),
        ],
        keys: vec![],
    };
    let statuses = vec![
        TaskStatus {
            id: id(0),
            executor_id: "exec-1".into(),
            result: Ok((TaskOutput::Result(vec![rows()?, rows()?]), metrics)),
        },
        TaskStatus {
            id: id(1),
            executor_id: "exec-1".into(),
            result: Ok((
                TaskOutput::Map(map(ShuffleData::File("/tmp/s/map-1.data".into()))),
                metrics,
            )),
        },
        TaskStatus {
            id: id(2),
            executor_id: "exec-1".into(),
            result: Ok((
                TaskOutput::Map(map(ShuffleData::Memory(MapOutputKey {
                    job: 3,
                    stage: 1,
                    map_partition: 2,
                    token: 9,
                }))),
                metrics,
            )),
        },
        TaskStatus {
            id: id(3),
            executor_id: "exec-1".into(),
            result: Err(TaskFailure {
                reason: FailureReason::FetchFailed {
                    executor: "exec-2".into(),
                    map_stage: 0,
                    map_partition: 4,
                },
                message: "connection refused".into(),
                retryable: true,
            }),
        },
        TaskStatus {
            id: id(4),
            executor_id: "exec-1".into(),
            result: Ok((TaskOutput::Result(vec![]), metrics)),
        },
    ];
    let mut out = vec![];
    let mut all = vec![];
    for status in &statuses {
        let p = task_status_to_proto(status).map_err(|e| setup("a task status")(e.to_string()))?;
        all.push(p.clone());
        out.push(
            proto::ReportTaskStatusRequest {
                statuses: vec![p],
                ..Default::default()
            }
            .encode_to_vec(),
        );
    }
    out.push(
        proto::ReportTaskStatusRequest {
            statuses: all,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    out.push(
        proto::RegisterExecutorRequest {
            executor_id: "exec-1".into(),
            address: "http://127.0.0.1:7078".into(),
            cores: 4,
            memory_bytes: 1 << 30,
            protocol_version: ember_core::PROTOCOL_VERSION,
            batch_functions: vec!["f".into()],
            udfs: vec!["g".into()],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    out.push(
        proto::HeartbeatRequest {
            executor_id: "exec-1".into(),
            running_tasks: 2,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    Ok(out)
}

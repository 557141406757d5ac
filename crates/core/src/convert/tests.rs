use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use prost::Message;

use super::*;
use crate::proto;
use crate::shuffle::{MapOutput, MapOutputKey, PartitionStats, ShuffleData};
use crate::task::{
    FailureReason, TaskDefinition, TaskFailure, TaskId, TaskMetrics, TaskOutput, TaskStatus,
};

fn id() -> TaskId {
    TaskId {
        job: 7,
        stage: 3,
        stage_attempt: 1,
        partition: 5,
        attempt: 2,
    }
}

/// Through protobuf bytes and back, as over the network.
fn wire_status(status: &TaskStatus) -> TaskStatus {
    let bytes = task_status_to_proto(status).unwrap().encode_to_vec();
    task_status_from_proto(proto::TaskStatus::decode(bytes.as_slice()).unwrap()).unwrap()
}

#[test]
fn task_definitions_survive_the_wire() {
    let def = TaskDefinition {
        id: id(),
        plan: bytes::Bytes::from_static(b"plan bytes"),
        in_process: None,
        config: Arc::new(vec![("ember.task.max_failures".into(), "2".into())]),
        session_id: "s-1".into(),
    };
    let bytes = task_definition_to_proto(&def).encode_to_vec();
    let back = task_definition_from_proto(proto::TaskDefinition::decode(bytes.as_slice()).unwrap())
        .unwrap();
    assert_eq!(back.id, def.id);
    assert_eq!(back.plan, def.plan);
    assert_eq!(back.config, def.config);
    assert_eq!(back.session_id, "s-1");
}

#[test]
fn map_outputs_results_and_failures_survive_the_wire() {
    let metrics = TaskMetrics {
        output_rows: 3,
        output_bytes: 40,
        elapsed: Duration::from_millis(12),
    };
    for data in [
        ShuffleData::File("/tmp/work/job-7/stage-3/map-5-1.data".into()),
        ShuffleData::Memory(MapOutputKey {
            job: 7,
            stage: 3,
            map_partition: 5,
            token: 9,
        }),
    ] {
        let mut values = crate::keys::KeyValues::try_new(&DataType::Int64).unwrap();
        values
            .update(&(Arc::new(Int64Array::from(vec![7, 9])) as _))
            .unwrap();
        let summary = values.summary(1).unwrap();
        let map = MapOutput {
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
            keys: vec![summary.clone()],
        };
        let status = TaskStatus {
            id: id(),
            executor_id: "exec-1".into(),
            result: Ok((TaskOutput::Map(map.clone()), metrics)),
        };
        let back = wire_status(&status);
        assert_eq!(back.id, id());
        match back.result {
            Ok((TaskOutput::Map(m), got)) => {
                assert_eq!(m, map);
                assert_eq!(got.output_rows, 3);
                assert_eq!(got.elapsed, Duration::from_millis(12));
            }
            other => panic!("{other:?}"),
        }
    }

    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap();
    let status = TaskStatus {
        id: id(),
        executor_id: "exec-1".into(),
        result: Ok((
            TaskOutput::Result(vec![batch.clone(), batch.clone()]),
            metrics,
        )),
    };
    match wire_status(&status).result {
        Ok((TaskOutput::Result(batches), _)) => assert_eq!(batches, vec![batch.clone(), batch]),
        other => panic!("{other:?}"),
    }

    let failure = TaskFailure {
        reason: FailureReason::FetchFailed {
            executor: "exec-2".into(),
            map_stage: 2,
            map_partition: 4,
        },
        message: "connection refused".into(),
        retryable: true,
    };
    let status = TaskStatus {
        id: id(),
        executor_id: "exec-1".into(),
        result: Err(failure.clone()),
    };
    match wire_status(&status).result {
        Err(f) => {
            assert_eq!(f.reason, failure.reason);
            assert_eq!(f.message, "connection refused");
            assert!(f.retryable);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_messages_are_errors_that_name_the_field() {
    let e = task_status_from_proto(proto::TaskStatus::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("task status") && e.contains("'id'"), "{e}");
    let e = task_definition_from_proto(proto::TaskDefinition {
        id: Some(to_proto_id()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("'plan'"), "{e}");
    let garbage = proto::TaskStatus {
        id: Some(to_proto_id()),
        executor_id: "x".into(),
        result: Some(proto::task_status::Result::Succeeded(
            proto::TaskSucceeded {
                metrics: None,
                map_output: None,
                result_ipc: b"not arrow at all".to_vec(),
            },
        )),
    };
    let e = task_status_from_proto(garbage).unwrap_err().to_string();
    assert!(e.contains("Arrow IPC"), "{e}");
}

fn to_proto_id() -> proto::TaskId {
    proto::TaskId {
        job_id: 1,
        ..Default::default()
    }
}

//! Shuffle data between hosts: an executor serves byte ranges of its map-output files
//! as a `FetchPartition` stream of chunks; a reader on another host decodes the chunks
//! as one Arrow IPC stream while they arrive, with a bounded number in flight.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::store::ShuffleEnv;
use crate::error::Result;
use crate::proto::{FetchPartitionChunk, FetchPartitionRequest};
use crate::shuffle::MapOutputKey;

/// Bytes per chunk sent over the wire.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the network and the decoder, each way.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Serves one output partition of a map output of this executor's: the byte range
/// `[offset, offset + length)` of a map-output file under the work dir (paths outside
/// it are refused: the service only ever hands out shuffle data), or, for a map
/// output kept in memory, its batches as an Arrow IPC stream.
pub fn serve_partition(
    env: &ShuffleEnv,
    req: &FetchPartitionRequest,
) -> Result<ReceiverStream<Result<FetchPartitionChunk, Status>>, Status> {
    if req.memory {
        return serve_memory_partition(env, req);
    }
    let work_dir = &env.work_dir;
    let path = PathBuf::from(&req.path);
    let root = work_dir
        .canonicalize()
        .map_err(|e| Status::internal(format!("work dir {}: {e}", work_dir.display())))?;
    let real = path
        .canonicalize()
        .map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
    if !real.starts_with(&root) {
        return Err(Status::permission_denied(format!(
            "{} is not shuffle data of this executor",
            path.display()
        )));
    }
    let mut file =
        File::open(&real).map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
    file.seek(SeekFrom::Start(req.offset)).map_err(|e| {
        Status::out_of_range(format!("{} offset {}: {e}", path.display(), req.offset))
    })?;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let length = req.length;
    tokio::task::spawn_blocking(move || {
        let mut left = length;
        while left > 0 {
            let mut buf = vec![0; CHUNK_BYTES.min(left as usize)];
            let sent = match file.read_exact(&mut buf) {
                Ok(()) => tx.blocking_send(Ok(FetchPartitionChunk { data: buf })),
                Err(e) => {
                    let msg = format!("{}: {e}", path.display());
                    let _ = tx.blocking_send(Err(Status::data_loss(msg)));
                    return;
                }
            };
            if sent.is_err() {
                return; // the reader went away
            }
            left -= CHUNK_BYTES.min(left as usize) as u64;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Serves a partition of a map output in the memory store, encoded as one Arrow IPC
/// stream (uncompressed: it was never on disk) in chunks.
fn serve_memory_partition(
    env: &ShuffleEnv,
    req: &FetchPartitionRequest,
) -> Result<ReceiverStream<Result<FetchPartitionChunk, Status>>, Status> {
    let key = MapOutputKey {
        job: req.job_id,
        stage: req.stage_id as usize,
        map_partition: req.map_partition as usize,
        token: req.token,
    };
    let gone = || {
        Status::not_found(format!(
            "map output {}.{} (token {}) of job {} is not in this executor's memory",
            key.stage, key.map_partition, key.token, key.job
        ))
    };
    let batches = env
        .memory
        .as_ref()
        .and_then(|m| m.get(&key, req.reduce_partition as usize))
        .ok_or_else(gone)?;
    let schema = batches.first().map(|b| b.schema()).ok_or_else(gone)?;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let encoded = (|| -> Result<Vec<u8>> {
            let mut bytes = vec![];
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)?;
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()?;
            drop(writer);
            Ok(bytes)
        })();
        match encoded {
            Ok(bytes) => {
                for chunk in bytes.chunks(CHUNK_BYTES) {
                    let chunk = FetchPartitionChunk {
                        data: chunk.to_vec(),
                    };
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return; // the reader went away
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Reads a remote byte range as `std::io::Read`, for Arrow's IPC `StreamReader`. The
/// fetch runs on the runtime; `read` blocks, so use it from a blocking thread.
pub(crate) struct RemoteRange {
    chunks: mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
}

impl RemoteRange {
    pub(crate) fn open(
        handle: &tokio::runtime::Handle,
        env: &ShuffleEnv,
        address: String,
        req: FetchPartitionRequest,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        // A lazy channel starts its connection task on the runtime.
        let _entered = handle.enter();
        let client = env
            .channel(&address)
            .map(|channel| env.security.executor_client(channel));
        handle.spawn(async move {
            let fetched = async {
                let mut client = client.map_err(|e| e.to_string())?;
                let mut stream = client
                    .fetch_partition(req)
                    .await
                    .map_err(|e| format!("{address}: {}", e.message()))?
                    .into_inner();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| format!("{address}: {}", e.message()))?;
                    if tx.send(Ok(Bytes::from(chunk.data))).await.is_err() {
                        return Ok(()); // the reader went away
                    }
                }
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = fetched {
                let _ = tx.send(Err(e)).await;
            }
        });
        RemoteRange {
            chunks: rx,
            current: Bytes::new(),
        }
    }
}

impl Read for RemoteRange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use arrow::record_batch::RecordBatch;
    use datafusion::execution::TaskContext;
    use datafusion::physical_expr::EquivalenceProperties;
    use datafusion::physical_plan::{ExecutionPlan, Partitioning};
    use datafusion::prelude::SessionConfig;
    use futures::Stream;
    use tonic::{Request, Response};

    use super::*;
    use crate::config::ShuffleCompression;
    use crate::proto::executor_service_server::{ExecutorService, ExecutorServiceServer};
    use crate::proto::*;
    use crate::shuffle::format::{PartSource, SpillWriter, assemble_data_file};
    use crate::shuffle::{
        PartitionLocation, PartitionStats, ShuffleData, ShuffleEnv, ShuffleReaderExec,
        ipc_write_options,
    };

    /// An executor that only serves shuffle data.
    struct FileServer {
        env: ShuffleEnv,
    }

    type ChunkStream = Pin<Box<dyn Stream<Item = Result<FetchPartitionChunk, Status>> + Send>>;

    #[tonic::async_trait]
    impl ExecutorService for FileServer {
        async fn launch_tasks(
            &self,
            _: Request<LaunchTasksRequest>,
        ) -> Result<Response<LaunchTasksResponse>, Status> {
            Err(Status::unimplemented("test server"))
        }
        async fn cancel_tasks(
            &self,
            _: Request<CancelTasksRequest>,
        ) -> Result<Response<CancelTasksResponse>, Status> {
            Err(Status::unimplemented("test server"))
        }
        async fn remove_job(
            &self,
            _: Request<RemoveJobRequest>,
        ) -> Result<Response<RemoveJobResponse>, Status> {
            Err(Status::unimplemented("test server"))
        }
        async fn stop(&self, _: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
            Err(Status::unimplemented("test server"))
        }
        type FetchPartitionStream = ChunkStream;
        async fn fetch_partition(
            &self,
            req: Request<FetchPartitionRequest>,
        ) -> Result<Response<ChunkStream>, Status> {
            let stream = serve_partition(&self.env, req.get_ref())?;
            Ok(Response::new(Box::pin(stream)))
        }
    }

    async fn start_server(work_dir: PathBuf) -> String {
        serve(ShuffleEnv::new("remote", work_dir, None)).await
    }

    async fn serve(env: ShuffleEnv) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ExecutorServiceServer::new(FileServer { env }))
                .serve_with_incoming(incoming),
        );
        address
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
    }

    /// A map output with two partitions: 0..n and n..2n, each in batches of 1000.
    fn write_map_output(dir: &std::path::Path, n: i64) -> (PathBuf, Vec<(u64, u64)>) {
        let options = ipc_write_options(ShuffleCompression::Lz4).unwrap();
        let mut parts = Vec::new();
        for p in 0..2 {
            let mut w =
                SpillWriter::create(dir.join(format!("p{p}")), &schema(), options.clone()).unwrap();
            for start in (p * n..(p + 1) * n).step_by(1000) {
                let values: Vec<i64> = (start..(start + 1000).min((p + 1) * n)).collect();
                let batch =
                    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))])
                        .unwrap();
                w.write(&batch).unwrap();
            }
            parts.push(PartSource::Spill(Box::new(w)));
        }
        let data = dir.join("map-0-1.data");
        let ranges = assemble_data_file(&data, &schema(), &options, parts).unwrap();
        (data, ranges)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_on_another_host_fetches_partitions_over_grpc() {
        let remote_dir = tempfile::tempdir().unwrap();
        // Large enough for more than one chunk on the wire.
        let (data, ranges) = write_map_output(remote_dir.path(), 300_000);
        assert!(ranges[1].1 > CHUNK_BYTES as u64, "{ranges:?}");
        let address = start_server(remote_dir.path().to_path_buf()).await;

        let location = |reduce: usize| PartitionLocation {
            map_partition: 0,
            reduce_partition: reduce,
            executor_id: "remote".into(),
            executor_address: address.clone(),
            data: ShuffleData::File(data.clone()),
            stats: PartitionStats {
                offset: ranges[reduce].0,
                length: ranges[reduce].1,
                rows: 300_000,
            },
        };
        let reader = reader(1, vec![vec![location(0)], vec![location(1)]]);
        let local_dir = tempfile::tempdir().unwrap();
        let ctx = local_task(local_dir.path());
        for p in 0..2i64 {
            let batches = collect_partition(reader.clone(), p as usize, ctx.clone()).await;
            let values: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(values, (p * 300_000..(p + 1) * 300_000).collect::<Vec<_>>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_map_output_kept_in_memory_is_fetched_by_another_executor() {
        let remote_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::shuffle::MemoryShuffleStore::new(1 << 30));
        let key = MapOutputKey {
            job: ember_core::shuffle::cache_job(3, false),
            stage: 1,
            map_partition: 0,
            token: 7,
        };
        let part = |range: std::ops::Range<i64>| {
            let values: Vec<i64> = range.collect();
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).unwrap()
        };
        // More than one chunk on the wire.
        let batches = vec![
            vec![part(0..10)],
            vec![part(0..100_000), part(100_000..300_000)],
        ];
        assert!(store.try_reserve(1));
        store.insert(key, batches, 1);
        let address =
            serve(ShuffleEnv::new("remote", remote_dir.path(), None).with_cache_memory(store))
                .await;

        let location = PartitionLocation {
            map_partition: 0,
            reduce_partition: 1,
            executor_id: "remote".into(),
            executor_address: address.clone(),
            data: ShuffleData::Memory(key),
            stats: PartitionStats {
                offset: 0,
                length: 2_400_000,
                rows: 300_000,
            },
        };
        let local_dir = tempfile::tempdir().unwrap();
        let ctx = local_task(local_dir.path());
        let batches =
            collect_partition(reader(1, vec![vec![location.clone()]]), 0, ctx.clone()).await;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 300_000);

        // An output the executor no longer has is a fetch failure, as a lost file is.
        let gone = PartitionLocation {
            data: ShuffleData::Memory(MapOutputKey { token: 8, ..key }),
            ..location
        };
        let err = read_error(reader(1, vec![vec![gone]]), ctx)
            .await
            .to_string();
        assert!(err.contains("not in this executor's memory"), "{err}");
    }

    /// A task context on a local executor whose work dir is `dir`.
    fn local_task(dir: &std::path::Path) -> Arc<TaskContext> {
        let env = Arc::new(ShuffleEnv::new("local", dir, None));
        Arc::new(
            TaskContext::default().with_session_config(SessionConfig::new().with_extension(env)),
        )
    }

    /// A reader of stage `stage` whose partitions are `pieces`.
    fn reader(stage: usize, pieces: Vec<Vec<PartitionLocation>>) -> Arc<ShuffleReaderExec> {
        Arc::new(ShuffleReaderExec::new(
            stage,
            Partitioning::UnknownPartitioning(pieces.len()),
            pieces,
            EquivalenceProperties::new(schema()),
        ))
    }

    /// The error reading partition 0 of `plan` ends in.
    async fn read_error(
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> datafusion::error::DataFusionError {
        use futures::TryStreamExt;
        plan.execute(0, ctx)
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err()
    }

    async fn collect_partition(
        plan: Arc<dyn ExecutionPlan>,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Vec<RecordBatch> {
        use futures::TryStreamExt;
        plan.execute(partition, ctx)
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    fn refusal<T>(r: Result<T, Status>) -> Status {
        match r {
            Ok(_) => panic!("expected the request to be refused"),
            Err(status) => status,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_outside_the_work_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let req = FetchPartitionRequest {
            path: outside.path().display().to_string(),
            length: 1,
            ..Default::default()
        };
        let env = ShuffleEnv::new("local", dir.path(), None);
        let status = refusal(serve_partition(&env, &req));
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let missing = FetchPartitionRequest {
            path: dir.path().join("nope.data").display().to_string(),
            length: 1,
            ..Default::default()
        };
        assert_eq!(
            refusal(serve_partition(&env, &missing)).code(),
            tonic::Code::NotFound
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_executor_is_a_fetch_failure_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = local_task(dir.path());
        let reader = reader(
            4,
            vec![vec![PartitionLocation {
                map_partition: 3,
                reduce_partition: 0,
                executor_id: "gone".into(),
                executor_address: "http://127.0.0.1:1".into(),
                data: ShuffleData::File("/nowhere/map.data".into()),
                stats: PartitionStats {
                    offset: 0,
                    length: 10,
                    rows: 5,
                },
            }]],
        );
        let err = read_error(reader, ctx).await;
        let ember = crate::task::find_ember_error(&err).expect("an ember error");
        match ember {
            crate::EmberError::FetchFailed {
                executor,
                map_stage,
                map_partition,
                ..
            } => assert_eq!(
                (executor.as_str(), *map_stage, *map_partition),
                ("gone", 4, 3)
            ),
            other => panic!("{other}"),
        }
    }
}

//! The client end: a session whose jobs run on a driver process.

use crate::planning::on_planning_stack;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec;
use ember_core::EmberConfig;
use ember_core::convert::read_ipc_stream;
use ember_core::proto::driver_service_client::DriverServiceClient;
use ember_core::proto::{
    CacheDefinition, ClientCaches, ExecutePlanRequest, ExecuteResponse, ExecuteSqlRequest,
    GetJobRequest, KeyValue,
};
use ember_core::rpc::{AuthChannel, Liveness, Security};
use ember_core::{EmberError, Result};
use ember_exec::task::REQUIRED_DATAFUSION_SETTINGS;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::codec::EmberLogicalCodec;
use crate::engine::StorageLevel;
use crate::events::progress::{JobProgress, StageProgress};

pub(crate) struct RemoteDriver {
    url: String,
    client: DriverServiceClient<AuthChannel>,
    /// How the connection notices a driver that stopped answering.
    liveness: Liveness,
    session_id: String,
    /// Bytes the driver's jobs for this session wrote to the shuffle.
    shuffle_bytes: Arc<AtomicU64>,
    /// The running stages of this client's jobs, polled from the driver.
    progress: watch::Sender<JobProgress>,
    /// Frames persisted or unpersisted since the last request, which carries them.
    caches: parking_lot::Mutex<ClientCaches>,
    /// The plans of the frames persisted on the driver, by table name.
    persisted: parking_lot::Mutex<HashMap<String, LogicalPlan>>,
}

impl RemoteDriver {
    /// Connects lazily: an unreachable driver is reported by the first query.
    pub(crate) fn new(url: &str, security: &Security, session_id: &str) -> Result<Self> {
        let channel = security.channel(url)?;
        Ok(RemoteDriver {
            url: url.to_string(),
            client: security.driver_client(channel),
            liveness: *security.liveness(),
            session_id: session_id.to_string(),
            shuffle_bytes: Arc::default(),
            progress: watch::channel(JobProgress::default()).0,
            caches: parking_lot::Mutex::default(),
            persisted: parking_lot::Mutex::default(),
        })
    }

    /// Has the driver persist `plan` at `level` as table `name` of this session,
    /// with the next request (lazily, as `cache()` is: the first job reading it
    /// computes it).
    pub(crate) fn persist(
        &self,
        ctx: &SessionContext,
        name: &str,
        plan: &LogicalPlan,
        level: StorageLevel,
    ) -> Result<()> {
        let bytes = encode_plan(ctx, plan)?;
        self.caches.lock().persist.push(CacheDefinition {
            name: name.to_string(),
            logical_plan: bytes,
            level: match level {
                StorageLevel::MemoryOnly => 0,
                StorageLevel::MemoryAndDisk => 1,
                StorageLevel::DiskOnly => 2,
            },
        });
        self.persisted.lock().insert(name.to_string(), plan.clone());
        Ok(())
    }

    /// Has the driver forget persisted table `name`, with the next request; the
    /// plan it was persisted from, if it was.
    pub(crate) fn unpersist(&self, name: &str) -> Option<LogicalPlan> {
        let source = self.persisted.lock().remove(name)?;
        self.caches.lock().unpersist.push(name.to_string());
        Some(source)
    }

    /// What the next request carries of persisted frames.
    fn take_caches(&self) -> Option<ClientCaches> {
        let caches = std::mem::take(&mut *self.caches.lock());
        (!caches.persist.is_empty() || !caches.unpersist.is_empty()).then_some(caches)
    }

    /// Statements that change the client's session state, which the driver's copy
    /// of the session must see too. (`CREATE TABLE AS` stays with the client: its
    /// rows travel inside the plans that read them.)
    pub(crate) fn mirrors(plan: &LogicalPlan) -> bool {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_)) => false,
            LogicalPlan::Ddl(_) => true,
            LogicalPlan::Statement(Statement::SetVariable(_)) => true,
            _ => false,
        }
    }

    pub(crate) async fn execute_sql(
        &self,
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let request = ExecuteSqlRequest {
            session_id: self.session_id.clone(),
            sql: sql.to_string(),
            config: changed_settings(ctx),
            caches: self.take_caches(),
        };
        let stream = self
            .client
            .clone()
            .execute_sql(request)
            .await
            .map_err(|e| self.error(e))?
            .into_inner();
        let stream = self.read(stream).await?;
        let schema = stream.schema();
        let batches = datafusion::physical_plan::common::collect(stream).await?;
        Ok((schema, batches))
    }

    /// Runs `plan` on the driver and streams its rows back as the driver's result
    /// reader fetches them. Queries of the catalog alone (`SHOW TABLES`,
    /// `information_schema`) describe this client's session, so they run here.
    pub(crate) async fn execute_stream(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<SendableRecordBatchStream> {
        if reads_only_catalog(plan) {
            return Ok(ctx
                .execute_logical_plan(plan.clone())
                .await?
                .execute_stream()
                .await?);
        }
        // Optimized here: the optimizer turns subqueries into joins, and
        // datafusion-proto cannot encode subquery expressions.
        let (planning, plan) = (ctx.clone(), plan.clone());
        let bytes = on_planning_stack(async move { encode_plan(&planning, &plan) }).await?;
        let request = ExecutePlanRequest {
            session_id: self.session_id.clone(),
            logical_plan: bytes,
            config: changed_settings(ctx),
            caches: self.take_caches(),
        };
        let stream = self
            .client
            .clone()
            .execute_plan(request)
            .await
            .map_err(|e| self.error(e))?
            .into_inner();
        self.read(stream).await
    }

    /// Reads a result stream: job notices (no rows), then IPC messages, the first
    /// of which carries the schema and comes as soon as the query runs. Returns once
    /// the schema is known; the rows follow as they arrive. Dropping the stream drops
    /// the call, and the driver cancels the job.
    async fn read(&self, stream: Streaming<ExecuteResponse>) -> Result<SendableRecordBatchStream> {
        let mut result = RemoteResult {
            stream,
            pending: VecDeque::new(),
            url: self.url.clone(),
            liveness: self.liveness,
            client: self.client.clone(),
            // While a job runs, its stages' progress is polled for the progress bars.
            watcher: ProgressWatch {
                task: None,
                progress: self.progress.clone(),
            },
            shuffled: 0,
            shuffle_total: self.shuffle_bytes.clone(),
        };
        let schema = match result.message().await {
            Some(Ok(schema)) => schema,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(EmberError::Remote {
                    address: self.url.clone(),
                    message: "the result ended before its schema".into(),
                });
            }
        };
        let rows = futures::stream::unfold(result, |mut r| async move {
            r.next_batch()
                .await
                .map(|b| (b.map_err(|e| DataFusionError::External(Box::new(e))), r))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }

    pub(crate) fn shuffle_bytes(&self) -> u64 {
        self.shuffle_bytes.load(Ordering::Relaxed)
    }

    /// The running stages of this client's jobs on the driver.
    pub(crate) fn progress(&self) -> watch::Receiver<JobProgress> {
        self.progress.subscribe()
    }

    fn error(&self, status: tonic::Status) -> EmberError {
        driver_error(&self.liveness, &self.url, status)
    }
}

/// A driver's error status as the client reports it.
fn driver_error(liveness: &Liveness, url: &str, status: tonic::Status) -> EmberError {
    let message = liveness
        .stopped_answering(&status, "the driver", url)
        .unwrap_or_else(|| status.message().to_string());
    EmberError::Remote {
        address: url.to_string(),
        message,
    }
}

/// One result stream from the driver, read message by message.
struct RemoteResult {
    stream: Streaming<ExecuteResponse>,
    /// Rows of the last message not handed on yet.
    pending: VecDeque<RecordBatch>,
    url: String,
    liveness: Liveness,
    client: DriverServiceClient<AuthChannel>,
    watcher: ProgressWatch,
    /// Bytes the query's jobs shuffled so far (each message carries the total).
    shuffled: u64,
    shuffle_total: Arc<AtomicU64>,
}

impl RemoteResult {
    /// Reads up to the next message with rows (or schema) and returns its schema;
    /// `None` at the end of the stream.
    async fn message(&mut self) -> Option<Result<SchemaRef>> {
        loop {
            let message = match self.stream.next().await? {
                Ok(m) => m,
                Err(status) => return Some(Err(driver_error(&self.liveness, &self.url, status))),
            };
            if message.arrow_ipc.is_empty() {
                tracing::debug!(job = message.job_id, driver = %self.url, "job started");
                let watch = watch_progress(
                    self.client.clone(),
                    self.watcher.progress.clone(),
                    self.liveness,
                    message.job_id,
                );
                if let Some(old) = self.watcher.task.replace(watch) {
                    old.abort();
                }
                continue;
            }
            self.shuffled = message.shuffle_bytes;
            return Some(
                read_ipc_stream(&message.arrow_ipc, "a result from the driver").map(
                    |(schema, batches)| {
                        self.pending.extend(batches);
                        schema
                    },
                ),
            );
        }
    }

    async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            match self.message().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.shuffle_total
                        .fetch_add(self.shuffled, Ordering::Relaxed);
                    self.shuffled = 0;
                    return None;
                }
            }
        }
    }
}

/// `plan` optimized as the driver's planning needs it (subqueries become joins,
/// which datafusion-proto can encode) and encoded, for a frame persisted on the
/// driver.
fn encode_plan(ctx: &SessionContext, plan: &LogicalPlan) -> Result<Vec<u8>> {
    let mut state = ctx.state();
    for (k, v) in REQUIRED_DATAFUSION_SETTINGS {
        state.config_mut().options_mut().set(k, v)?;
    }
    let plan = state.optimize(plan)?;
    let codec = EmberLogicalCodec::for_plan(&plan);
    Ok(logical_plan_to_bytes_with_extension_codec(&plan, &codec)?.to_vec())
}

/// The client's settings that differ from a new session's, except those the driver
/// decides itself (partitions: its executors' cores).
fn changed_settings(ctx: &SessionContext) -> Vec<KeyValue> {
    let defaults: HashMap<String, Option<String>> = SessionConfig::new()
        .with_option_extension(EmberConfig::default())
        .options()
        .entries()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    ctx.copied_config()
        .options()
        .entries()
        .into_iter()
        .filter(|e| e.key != "datafusion.execution.target_partitions")
        .filter(|e| defaults.get(&e.key) != Some(&e.value))
        .filter_map(|e| e.value.map(|value| KeyValue { key: e.key, value }))
        .collect()
}

/// Whether every table `plan` scans is in `information_schema` (and it scans one).
fn reads_only_catalog(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let (mut catalog, mut other) = (0, 0);
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if scan.table_name.schema() == Some("information_schema") {
                catalog += 1;
            } else {
                other += 1;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    catalog > 0 && other == 0
}

/// Polls the driver for `job`'s running stages every 200 ms until aborted.
fn watch_progress(
    mut client: DriverServiceClient<AuthChannel>,
    progress: watch::Sender<JobProgress>,
    liveness: Liveness,
    job: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let request = liveness.unary(GetJobRequest { job_id: job });
            let Ok(status) = client.get_job(request).await else {
                continue;
            };
            let stages: Vec<StageProgress> = status
                .get_ref()
                .stages
                .iter()
                .map(|s| StageProgress {
                    job,
                    stage: s.stage as usize,
                    total: s.total as usize,
                    running: s.running as usize,
                    done: s.done as usize,
                })
                .collect();
            progress.send_modify(|p| p.stages = stages);
        }
    })
}

/// Stops the progress poller when the read ends, and clears the bars.
struct ProgressWatch {
    task: Option<tokio::task::JoinHandle<()>>,
    progress: watch::Sender<JobProgress>,
}

impl Drop for ProgressWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.progress.send_modify(|p| p.stages.clear());
    }
}

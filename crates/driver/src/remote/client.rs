//! The client end: a session whose jobs run on a driver process.

use crate::planning::on_planning_stack;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec;
use ember_core::EmberConfig;
use ember_core::convert::read_ipc_stream;
use ember_core::proto::driver_service_client::DriverServiceClient;
use ember_core::proto::{
    ExecutePlanRequest, ExecuteResponse, ExecuteSqlRequest, GetJobRequest, KeyValue,
};
use ember_core::rpc::{AuthChannel, Liveness, Security};
use ember_core::{EmberError, Result};
use ember_exec::task::REQUIRED_DATAFUSION_SETTINGS;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::codec::EmberLogicalCodec;
use crate::events::progress::{JobProgress, StageProgress};

pub(crate) struct RemoteDriver {
    url: String,
    client: DriverServiceClient<AuthChannel>,
    /// How the connection notices a driver that stopped answering.
    liveness: Liveness,
    session_id: String,
    /// Bytes the driver's jobs for this session wrote to the shuffle.
    shuffle_bytes: AtomicU64,
    /// The running stages of this client's jobs, polled from the driver.
    progress: watch::Sender<JobProgress>,
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
            shuffle_bytes: AtomicU64::new(0),
            progress: watch::channel(JobProgress::default()).0,
        })
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

    pub(crate) async fn execute_sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let request = ExecuteSqlRequest {
            session_id: self.session_id.clone(),
            sql: sql.to_string(),
        };
        let stream = self
            .client
            .clone()
            .execute_sql(request)
            .await
            .map_err(|e| self.error(e))?
            .into_inner();
        self.read(stream).await
    }

    /// Runs `plan` on the driver. Queries of the catalog alone (`SHOW TABLES`,
    /// `information_schema`) describe this client's session, so they run here.
    pub(crate) async fn collect(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<Vec<RecordBatch>> {
        if reads_only_catalog(plan) {
            return Ok(ctx
                .execute_logical_plan(plan.clone())
                .await?
                .collect()
                .await?);
        }
        // Optimized here: the optimizer turns subqueries into joins, and
        // datafusion-proto cannot encode subquery expressions.
        let mut state = ctx.state();
        for (k, v) in REQUIRED_DATAFUSION_SETTINGS {
            state.config_mut().options_mut().set(k, v)?;
        }
        let plan = plan.clone();
        let bytes = on_planning_stack(async move {
            let plan = state.optimize(&plan)?;
            let codec = EmberLogicalCodec::for_plan(&plan);
            Ok(logical_plan_to_bytes_with_extension_codec(&plan, &codec)?)
        })
        .await?;
        let request = ExecutePlanRequest {
            session_id: self.session_id.clone(),
            logical_plan: bytes.to_vec(),
            config: changed_settings(ctx),
        };
        let stream = self
            .client
            .clone()
            .execute_plan(request)
            .await
            .map_err(|e| self.error(e))?
            .into_inner();
        Ok(self.read(stream).await?.1)
    }

    /// Reads a result stream: job notices (no rows), then IPC messages. Dropping the
    /// future drops the stream, and the driver cancels the job.
    async fn read(
        &self,
        mut stream: Streaming<ExecuteResponse>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut schema = None;
        let mut batches = vec![];
        let mut shuffled = 0;
        // While a job runs, its stages' progress is polled for the progress bars.
        let mut watcher = ProgressWatch {
            task: None,
            progress: self.progress.clone(),
        };
        while let Some(message) = stream.next().await {
            let message = message.map_err(|e| self.error(e))?;
            if message.arrow_ipc.is_empty() {
                tracing::debug!(job = message.job_id, driver = %self.url, "job started");
                if let Some(old) = watcher.task.replace(self.watch_progress(message.job_id)) {
                    old.abort();
                }
                continue;
            }
            shuffled = message.shuffle_bytes;
            let (s, b) = read_ipc_stream(&message.arrow_ipc, "a result from the driver")?;
            schema.get_or_insert(s);
            batches.extend(b);
        }
        self.shuffle_bytes.fetch_add(shuffled, Ordering::Relaxed);
        let schema = schema.ok_or_else(|| EmberError::Remote {
            address: self.url.clone(),
            message: "the result ended before its schema".into(),
        })?;
        Ok((schema, batches))
    }

    pub(crate) fn shuffle_bytes(&self) -> u64 {
        self.shuffle_bytes.load(Ordering::Relaxed)
    }

    /// The running stages of this client's jobs on the driver.
    pub(crate) fn progress(&self) -> watch::Receiver<JobProgress> {
        self.progress.subscribe()
    }

    /// Polls the driver for `job`'s running stages every 200 ms until aborted.
    fn watch_progress(&self, job: u64) -> tokio::task::JoinHandle<()> {
        let mut client = self.client.clone();
        let progress = self.progress.clone();
        let liveness = self.liveness;
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

    fn error(&self, status: tonic::Status) -> EmberError {
        let message = self
            .liveness
            .stopped_answering(&status, "the driver", &self.url)
            .unwrap_or_else(|| status.message().to_string());
        EmberError::Remote {
            address: self.url.clone(),
            message,
        }
    }
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

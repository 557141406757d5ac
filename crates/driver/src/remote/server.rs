//! The driver end: each client gets its own session context (catalog, settings) on
//! the driver, sharing the driver's engine.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::logical_plan_from_bytes_with_extension_codec;
use ember_core::{EmberError, Result};
use parking_lot::Mutex;

use super::codec::EmberLogicalCodec;
use crate::dataframe::{CacheKind, CacheStatement};
use crate::engine::{ClientApi, ClientState, StorageLevel, is_builtin};
use crate::session::{Session, SessionInner};

/// A client session unused this long is forgotten (its tables and settings with it).
const IDLE_SESSION: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct DriverClients {
    session: Weak<SessionInner>,
    /// Each client's context and when it was last used.
    contexts: Mutex<HashMap<String, (SessionContext, Instant)>>,
    /// File tables seen in clients' plans, kept so their file listings and statistics
    /// are read once, not at every query.
    tables: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
}

impl DriverClients {
    pub(crate) fn new(session: &Arc<SessionInner>) -> Self {
        DriverClients {
            session: Arc::downgrade(session),
            contexts: Mutex::default(),
            tables: Mutex::default(),
        }
    }

    /// `plan` with each file table replaced by the same table seen before, if any.
    /// A client's logical plan, decoded in its session here, reading the driver's
    /// tables and the client's cached ones.
    async fn decode_plan(
        &self,
        session: &Session,
        ctx: &SessionContext,
        plan: &[u8],
    ) -> Result<LogicalPlan> {
        crate::session::sync_store_settings(ctx);
        let own = ctx
            .state()
            .scalar_functions()
            .iter()
            .filter(|(name, _)| !is_builtin(name))
            .map(|(name, f)| (name.clone(), f.clone()))
            .collect();
        let codec = EmberLogicalCodec::decoding(own);
        let plan = logical_plan_from_bytes_with_extension_codec(plan, &ctx.task_ctx(), &codec)
            .map_err(|e| EmberError::Decode {
                what: "a client's logical plan",
                message: e.to_string(),
            })?;
        let plan = self.reuse_tables(plan)?;
        cached_tables_of(session, ctx, plan).await
    }

    /// Applies what a client's session changed since its last request: its
    /// settings, then the frames it unpersisted and persisted (as tables of those
    /// names, computed by the first job that reads them).
    async fn apply_client_state(
        &self,
        session: &Session,
        ctx: &SessionContext,
        client: ClientState,
    ) -> Result<()> {
        apply_settings(ctx, &client.config)?;
        let Some(caches) = client.caches else {
            return Ok(());
        };
        for name in &caches.unpersist {
            let statement = CacheStatement {
                sql: "",
                kind: CacheKind::Uncache {
                    name,
                    if_exists: true,
                },
            };
            session.cache_statement_in(ctx, statement).await?;
        }
        for frame in caches.persist {
            let plan = self.decode_plan(session, ctx, &frame.logical_plan).await?;
            let level = match frame.level {
                0 => StorageLevel::MemoryOnly,
                1 => StorageLevel::MemoryAndDisk,
                2 => StorageLevel::DiskOnly,
                other => {
                    return Err(EmberError::Decode {
                        what: "a client's persisted frame",
                        message: format!("{}: storage level {other} (0 to 2)", frame.name),
                    });
                }
            };
            let df = datafusion::dataframe::DataFrame::new(ctx.state(), plan);
            let cached = crate::DataFrame::new(session.clone(), df).persist(level)?;
            session.register_cached_table(ctx, &frame.name, &cached, None)?;
        }
        Ok(())
    }

    fn reuse_tables(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let plan = plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(mut scan) = node else {
                return Ok(Transformed::no(node));
            };
            let Ok(provider) = source_as_provider(&scan.source) else {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            };
            let Some(listing) = provider.downcast_ref::<ListingTable>() else {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            };
            let options = listing.options();
            let key = format!(
                "{:?}|{}|{:?}|{:?}|{:?}",
                listing.table_paths(),
                options.file_extension,
                options.format,
                options.table_partition_cols,
                listing.schema()
            );
            let cached = self
                .tables
                .lock()
                .entry(key)
                .or_insert_with(|| provider.clone())
                .clone();
            scan.source = provider_as_source(cached);
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })?;
        Ok(plan.data)
    }

    /// The driver's session and the client's context in it (made on first use).
    pub(crate) fn session(&self, session_id: &str) -> Result<(Session, SessionContext)> {
        if session_id.is_empty() {
            return Err(EmberError::Config(
                "a client call needs a session id".into(),
            ));
        }
        let session = self
            .session
            .upgrade()
            .map(Session::from_inner)
            .ok_or_else(|| EmberError::Internal("the driver is shutting down".into()))?;
        let mut contexts = self.contexts.lock();
        contexts.retain(|id, (_, used)| {
            let keep = used.elapsed() < IDLE_SESSION;
            if !keep {
                tracing::info!(session = %id, "client session expired");
            }
            keep
        });
        let (ctx, used) = contexts.entry(session_id.to_string()).or_insert_with(|| {
            tracing::info!(session = session_id, "new client session");
            (session.new_client_context(session_id), Instant::now())
        });
        *used = Instant::now();
        Ok((session, ctx.clone()))
    }
}

#[tonic::async_trait]
impl ClientApi for DriverClients {
    async fn execute_sql(
        &self,
        session_id: &str,
        sql: &str,
        client: ClientState,
    ) -> Result<SendableRecordBatchStream> {
        let (session, ctx) = self.session(session_id)?;
        self.apply_client_state(&session, &ctx, client).await?;
        if let Some(statement) = CacheStatement::parse(sql) {
            session.cache_statement_in(&ctx, statement?).await?;
            let nothing = Arc::new(datafusion::arrow::datatypes::Schema::empty());
            return Ok(Box::pin(
                datafusion::physical_plan::EmptyRecordBatchStream::new(nothing),
            ));
        }
        let df = session.sql_in(&ctx, sql).await?;
        session.execute_stream_in(&ctx, df.logical_plan()).await
    }

    async fn execute_plan(
        &self,
        session_id: &str,
        plan: &[u8],
        client: ClientState,
    ) -> Result<SendableRecordBatchStream> {
        let (session, ctx) = self.session(session_id)?;
        self.apply_client_state(&session, &ctx, client).await?;
        let plan = self.decode_plan(&session, &ctx, plan).await?;
        session.execute_stream_in(&ctx, &plan).await
    }
}

/// Sets a client's settings in its session on the driver (what it set with `--config`
/// or on its builder; its `SET`s arrive as statements).
fn apply_settings(ctx: &SessionContext, config: &[(String, String)]) -> Result<()> {
    if config.is_empty() {
        return Ok(());
    }
    let state = ctx.state_ref();
    let mut state = state.write();
    for (key, value) in config {
        state.config_mut().options_mut().set(key, value)?;
    }
    Ok(())
}

/// The client's plan with its scans of tables it cached (`CACHE TABLE`, run in its
/// session here) reading the cached frames: the client planned them as views of
/// their queries.
async fn cached_tables_of(
    session: &Session,
    ctx: &SessionContext,
    plan: LogicalPlan,
) -> Result<LogicalPlan> {
    let mut names = vec![];
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_string();
            if session.is_cached_table(ctx, &name) && !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    if names.is_empty() {
        return Ok(plan);
    }
    let mut providers = HashMap::new();
    for name in names {
        let provider = ctx.table_provider(name.as_str()).await?;
        providers.insert(name, provider);
    }
    let plan = plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::TableScan(mut scan) => match providers.get(scan.table_name.table()) {
            Some(provider) => {
                scan.source = provider_as_source(provider.clone());
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
        },
        other => Ok(Transformed::no(other)),
    })?;
    Ok(plan.data)
}

//! Arrow Flight SQL on the driver (`ember driver --flight-sql HOST:PORT`): BI tools,
//! ADBC and JDBC programs run SQL on the cluster.
//!
//! ```text
//!  client ── Handshake (Basic: any user, the secret as password) ──▶ bearer token
//!         ── GetFlightInfo(statement SQL) ──▶ planned in the client's session (DDL
//!                                             and SET run here) ──▶ ticket
//!         ── DoGet(ticket) ──▶ the job runs; batches stream as executors make them
//! ```
//!
//! Each bearer token handed out by a handshake is a session of its own on the driver
//! (catalog, settings), as a `--master ember://` client's. Clients that present the
//! secret itself as their bearer token, or that call without one when the cluster has
//! no secret, share one session. Statements show in the UI's SQL and Jobs pages by
//! their SQL text.

mod auth;
mod catalog;
mod statements;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
    decode::FlightRecordBatchStream,
};
use datafusion::logical_expr::LogicalPlan;
use ember_core::rpc::{Audit, Security, constant_time_eq};
use ember_core::{EmberError, Result};
use futures::stream::AbortHandle;
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::dataframe::CacheStatement;
use crate::remote::DriverClients;
use crate::session::{Session, SessionInner};
use statements::{bind, parameter_schema, schema_bytes, statement_handle};

/// The session of clients that authenticate with the secret itself, or not at all.
const SHARED_SESSION: &str = "flight-sql";

/// The Flight SQL server of a driver session; stops when dropped.
pub(crate) struct FlightSqlServer {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlightSqlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves Flight SQL at `bind` for the driver session `inner`, with the security of
/// its cluster (the secret, TLS).
pub(crate) fn serve(
    inner: &Arc<SessionInner>,
    bind: &str,
    security: &Security,
) -> Result<FlightSqlServer> {
    let (address, listener) = ember_core::rpc::bind_listener(bind)?;
    let service = FlightSql {
        clients: DriverClients::new(inner),
        secret: security.secret().map(Arc::from),
        audit: Audit::new("Flight SQL"),
        tokens: Mutex::default(),
        statements: Mutex::default(),
        running: Arc::default(),
        next: AtomicU64::new(1),
    };
    let server = security
        .server()?
        .add_service(FlightServiceServer::new(service))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the Flight SQL server stopped");
        }
    });
    tracing::info!(%address, "serving Flight SQL");
    Ok(FlightSqlServer { address, task })
}

/// A statement planned in a client's session, run by a `DoGet` of its handle.
struct Statement {
    session: String,
    sql: String,
    /// `None` for a statement that already ran when it was planned (`CACHE TABLE`).
    plan: Option<LogicalPlan>,
    /// A prepared statement's bound parameters: the first row of what it was given.
    params: Option<RecordBatch>,
    prepared: bool,
    planned: std::time::Instant,
}

/// A statement planned but never run is forgotten after this long.
const UNRUN_STATEMENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A statement's entry among the running ones, removed when its stream is dropped.
struct Running {
    handle: Vec<u8>,
    all: Arc<Mutex<HashMap<Vec<u8>, AbortHandle>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.all.lock().remove(&self.handle);
    }
}

struct FlightSql {
    clients: DriverClients,
    secret: Option<Arc<str>>,
    audit: Audit,
    /// Bearer tokens handed out by handshakes, and each one's session id.
    tokens: Mutex<HashMap<String, String>>,
    statements: Mutex<HashMap<Vec<u8>, Statement>>,
    /// Statements whose results are streaming, to cancel them.
    running: Arc<Mutex<HashMap<Vec<u8>, AbortHandle>>>,
    next: AtomicU64,
}

type DoGetStream = <FlightSql as FlightService>::DoGetStream;

/// An ember error as the Flight status a client shows, with ember's message.
fn status(e: EmberError) -> Status {
    match e {
        EmberError::Internal(_) => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// A result stream as Flight data; ends early when the statement is cancelled.
fn flight_stream(
    schema: SchemaRef,
    batches: impl Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

fn one_batch(batch: Result<RecordBatch>) -> std::result::Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(status)?;
    let schema = batch.schema();
    Ok(flight_stream(schema, futures::stream::iter([Ok(batch)])))
}

impl FlightSql {
    fn session_of<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(String, Session, datafusion::prelude::SessionContext), Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        let (session, ctx) = self.clients.session(&id).map_err(status)?;
        Ok((id, session, ctx))
    }

    /// The flight of a catalog command (its ticket is the command), for a caller
    /// allowed in.
    fn command_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Any,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.client(request.metadata(), request.remote_addr())?;
        flight_info(schema, command.encode_to_vec(), request.into_inner())
    }

    fn new_handle(&self) -> Vec<u8> {
        format!("s{}", self.next.fetch_add(1, Ordering::Relaxed)).into_bytes()
    }

    /// Plans `sql` in the caller's session (running it if it is DDL, `SET` or `CACHE
    /// TABLE`) and keeps it under a new handle.
    async fn plan<T>(
        &self,
        request: &Request<T>,
        sql: &str,
        prepared: bool,
    ) -> Result<(Vec<u8>, SchemaRef, Option<LogicalPlan>), Status> {
        let (id, session, ctx) = self.session_of(request)?;
        let plan = match CacheStatement::parse(sql) {
            Some(statement) => {
                session
                    .cache_statement_in(&ctx, statement.map_err(status)?)
                    .await
                    .map_err(status)?;
                None
            }
            None => {
                let df = session.sql_in(&ctx, sql).await.map_err(status)?;
                Some(df.logical_plan().clone())
            }
        };
        let schema: SchemaRef = match &plan {
            Some(p) => Arc::new(p.schema().as_arrow().clone()),
            None => Arc::new(Schema::empty()),
        };
        let handle = self.new_handle();
        let mut statements = self.statements.lock();
        statements.retain(|_, s| s.prepared || s.planned.elapsed() < UNRUN_STATEMENT);
        statements.insert(
            handle.clone(),
            Statement {
                session: id,
                sql: sql.to_string(),
                plan: plan.clone(),
                params: None,
                prepared,
                planned: std::time::Instant::now(),
            },
        );
        Ok((handle, schema, plan))
    }

    /// Runs statement `handle` for a caller of session `id` and streams its rows.
    async fn run(
        &self,
        request_session: &str,
        handle: &[u8],
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let (sql, plan, params) = {
            let mut statements = self.statements.lock();
            let Some(s) = statements.get(handle) else {
                return Err(Status::not_found(
                    "no such statement (it ran, or was closed)",
                ));
            };
            if s.session != request_session {
                return Err(Status::permission_denied(
                    "the statement is another session's",
                ));
            }
            let found = (s.sql.clone(), s.plan.clone(), s.params.clone());
            if !s.prepared {
                statements.remove(handle);
            }
            found
        };
        let Some(mut plan) = plan else {
            return Ok(flight_stream(
                Arc::new(Schema::empty()),
                futures::stream::empty(),
            ));
        };
        if let Some(params) = params {
            plan = bind(plan, &params).map_err(status)?;
        }
        let (session, ctx) = self.clients.session(request_session).map_err(status)?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let stream = crate::engine::JOB_QUERY
            .scope((sql, None), session.execute_stream_in(&ctx, &plan))
            .await
            .map_err(status)?;
        let (stream, abort) = futures::stream::abortable(stream);
        self.running.lock().insert(handle.to_vec(), abort);
        // Forgotten when the stream ends or the client drops it.
        let running = Running {
            handle: handle.to_vec(),
            all: self.running.clone(),
        };
        let batches = stream.map(move |b| {
            let _running = &running;
            b.map_err(|e| FlightError::Tonic(Box::new(Status::internal(e.to_string()))))
        });
        Ok(flight_stream(schema, batches))
    }

    /// Stops the statements whose tickets `info` holds; true if one was running.
    fn cancel(&self, info: &FlightInfo) -> bool {
        let mut cancelled = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let Some(handle) = statement_handle(&ticket.ticket) else {
                continue;
            };
            if let Some(abort) = self.running.lock().remove(&handle) {
                abort.abort();
                cancelled = true;
            }
            self.statements.lock().remove(&handle);
        }
        cancelled
    }
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> std::result::Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    /// HTTP basic auth: any user name, the cluster's secret as the password (any
    /// password without a secret). Answers a bearer token for the calls that follow,
    /// each token a session of its own.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<
        Response<
            Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>,
        >,
        Status,
    > {
        let peer = request.remote_addr();
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let password = header.and_then(auth::basic_password);
        if let Some(secret) = &self.secret {
            match &password {
                Some(p) if constant_time_eq(p.as_bytes(), secret.as_bytes()) => {}
                Some(_) => return Err(self.refuse(peer, "a wrong secret")),
                None => {
                    // The secret as a bearer token is fine too.
                    self.client(request.metadata(), peer)?;
                }
            }
        }
        let token = auth::random_token().map_err(status)?;
        let session = format!("flight-sql-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.tokens.lock().insert(token.clone(), session);
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut out: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(response)])));
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        out.metadata_mut().insert("authorization", bearer);
        Ok(out)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let (handle, schema, _) = self.plan(&request, &query.query, false).await?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        self.run(&id, &ticket.statement_handle).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        let (handle, schema, plan) = self.plan(&request, &query.query, true).await?;
        let parameters = match &plan {
            Some(p) => parameter_schema(p).map_err(status)?,
            None => Schema::empty(),
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(&schema).map_err(status)?,
            parameter_schema: schema_bytes(&parameters).map_err(status)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("prepared statement parameters: {e}")))?;
        let params = batches.into_iter().find(|b| b.num_rows() > 0);
        let handle = query.prepared_statement_handle.to_vec();
        let mut statements = self.statements.lock();
        match statements.get_mut(&handle) {
            Some(s) if s.session == id => s.params = params,
            _ => return Err(Status::not_found("no such prepared statement")),
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        let schema = {
            let statements = self.statements.lock();
            match statements.get(query.prepared_statement_handle.as_ref()) {
                Some(s) if s.session == id => match &s.plan {
                    Some(p) => p.schema().as_arrow().clone(),
                    None => Schema::empty(),
                },
                _ => return Err(Status::not_found("no such prepared statement")),
            }
        };
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        self.run(&id, &query.prepared_statement_handle).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> std::result::Result<(), Status> {
        let id = self.client(request.metadata(), request.remote_addr())?;
        let handle = query.prepared_statement_handle.to_vec();
        let mut statements = self.statements.lock();
        if statements.get(&handle).is_some_and(|s| s.session == id) {
            statements.remove(&handle);
            self.running.lock().remove(&handle);
        }
        Ok(())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> std::result::Result<ActionCancelQueryResult, Status> {
        self.client(request.metadata(), request.remote_addr())?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("cancel: a FlightInfo: {e}")))?;
        // CANCEL_RESULT_CANCELLED and CANCEL_RESULT_NOT_CANCELLABLE (an enum arrow-flight
        // does not export).
        let result = if self.cancel(&info) { 1 } else { 3 };
        Ok(ActionCancelQueryResult { result })
    }

    /// `CancelFlightInfo`, the cancellation of Flight itself (newer clients).
    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.client(request.metadata(), request.remote_addr())?;
        let action = request.into_inner();
        if action.r#type != "CancelFlightInfo" {
            return Err(Status::invalid_argument(format!(
                "unknown action {:?}",
                action.r#type
            )));
        }
        let cancel = CancelFlightInfoRequest::decode(action.body)
            .map_err(|e| Status::invalid_argument(format!("CancelFlightInfo: {e}")))?;
        let status = match cancel.info {
            Some(info) if self.cancel(&info) => CancelStatus::Cancelled,
            _ => CancelStatus::NotCancellable,
        };
        let result = CancelFlightInfoResult::new(status);
        let body = arrow_flight::Result {
            body: result.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(body)]))))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &schema, query.as_any())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let (_, _, ctx) = self.session_of(&request)?;
        one_batch(catalog::catalogs(&ctx, query))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &schema, query.as_any())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let (_, _, ctx) = self.session_of(&request)?;
        one_batch(catalog::schemas(&ctx, query))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &schema, query.as_any())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let (_, _, ctx) = self.session_of(&request)?;
        one_batch(catalog::tables(&ctx, query).await)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &schema, query.as_any())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.client(request.metadata(), request.remote_addr())?;
        one_batch(catalog::table_types(query))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&catalog::SQL_INFO).schema();
        self.command_info(request, &schema, query.as_any())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.client(request.metadata(), request.remote_addr())?;
        one_batch(catalog::sql_info(query))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

//! `ember broker`: the log over the Kafka wire protocol, so Kafka clients and tools
//! (librdkafka, kcat, rskafka, ...) work against it.
//!
//! Each connection is served by one task, one request at a time in order (a group
//! join waits inside it, as Kafka mutes the channel). Requests and responses are
//! decoded and encoded by the `kafka-protocol` crate; record batches go to and from
//! the log as they are. A frame that cannot be a Kafka request closes its connection,
//! with a log line; other connections go on.
//!
//! kafka-protocol believes the lengths inside a request, so before it decodes one,
//! [`wire`] checks each of them against the bytes the frame has (and the frame's size
//! against `socket.request.max.bytes`): a lying length is a bad request, not an
//! allocation of gigabytes.

mod coordinator;
mod handlers;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::error::{LogError, Result};
use crate::log::Log;

pub use coordinator::Coordinator;

/// Kafka's default `socket.request.max.bytes`: 100 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 << 20;

/// A frame's buffer starts at most this large and grows as the frame's bytes arrive,
/// so that a size prefix alone does not make the broker allocate the whole frame.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub bind: SocketAddr,
    /// The host clients are told to connect to (default: the bound address).
    pub advertised_host: Option<String>,
    pub node_id: i32,
    pub cluster_id: String,
    /// Largest request frame accepted, in bytes (`socket.request.max.bytes`); a
    /// larger size prefix closes the connection.
    pub max_request_bytes: usize,
}

impl BrokerConfig {
    pub fn new(bind: SocketAddr) -> Self {
        BrokerConfig {
            bind,
            advertised_host: None,
            node_id: 0,
            cluster_id: "ember".into(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    pub log: Arc<Log>,
    pub coordinator: Arc<Coordinator>,
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub cluster_id: String,
    pub max_request_bytes: usize,
    pub traffic: Arc<Traffic>,
}

/// Bytes through the broker since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes of Produce requests received.
    pub bytes_in: std::sync::atomic::AtomicU64,
    /// Bytes of Fetch responses sent.
    pub bytes_out: std::sync::atomic::AtomicU64,
    pub requests: std::sync::atomic::AtomicU64,
}

/// A consumer group's lag on one partition: the partition's end offset minus the
/// group's committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// A running broker; [`stop`](Self::stop) ends it.
pub struct Broker {
    pub address: SocketAddr,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    log: Arc<Log>,
    traffic: Arc<Traffic>,
}

impl Broker {
    /// Binds and starts serving `log`.
    pub async fn start(log: Arc<Log>, config: BrokerConfig) -> Result<Broker> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| LogError::io(config.bind.to_string(), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| LogError::io(config.bind.to_string(), e))?;
        let coordinator = Coordinator::start();
        let traffic = Arc::new(Traffic::default());
        let shared = Arc::new(Shared {
            log: log.clone(),
            traffic: traffic.clone(),
            coordinator,
            node_id: config.node_id,
            host: config
                .advertised_host
                .clone()
                .unwrap_or_else(|| address.ip().to_string()),
            port: address.port() as i32,
            cluster_id: config.cluster_id.clone(),
            max_request_bytes: config.max_request_bytes,
        });
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        // The accept loop owns its connections: when it ends (stop, or the broker
        // dropped), dropping the set aborts every connection still open.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.notified() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            while connections.try_join_next().is_some() {}
                            connections.spawn(serve_connection(shared.clone(), stream, peer));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        });
        tracing::info!(%address, "broker listening");
        Ok(Broker {
            address,
            stop,
            task,
            log,
            traffic,
        })
    }

    /// Bytes in and out since the broker started.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Every consumer group's lag on each partition it committed an offset for.
    pub fn group_lags(&self) -> Vec<GroupLag> {
        let groups = self.log.groups();
        let mut lags = vec![];
        for group in groups.list() {
            for ((topic, p), committed) in groups.committed_all(&group) {
                let Ok(partition) = self.log.partition(&topic, p) else {
                    continue;
                };
                lags.push(GroupLag {
                    group: group.clone(),
                    topic,
                    partition: p,
                    lag: (partition.end_offset() - committed).max(0),
                });
            }
        }
        lags
    }

    pub fn stop(&self) {
        self.stop.notify_waiters();
        self.task.abort();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The log target of refused and malformed requests (as `ember_core::rpc::AUDIT_TARGET`).
const AUDIT: &str = "ember::audit";

async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    match connection(&shared, &mut stream).await {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(Closed::ByPeer(why)) => tracing::debug!(%peer, reason = %why, "connection lost"),
        // On the audit target, which `ember`'s default log level shows: a peer that
        // sends what no client would is worth an operator's eye.
        Err(Closed::Refused(why)) => {
            tracing::warn!(target: AUDIT, %peer, reason = %why, "closing the connection")
        }
        Err(Closed::BadRequest {
            api,
            version,
            reason,
        }) => tracing::warn!(
            target: AUDIT,
            %peer,
            ?api,
            version,
            %reason,
            "closing the connection: bad request"
        ),
    }
}

/// Why a connection ended early.
enum Closed {
    /// The client went away (reset, broken pipe): nothing to report.
    ByPeer(String),
    /// This broker closed it: a bad frame, a request it cannot serve.
    Refused(String),
    /// A request that does not hold together: a length past the end of its frame, a
    /// null where none may be, bytes left over.
    BadRequest {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

impl From<String> for Closed {
    fn from(s: String) -> Self {
        Closed::Refused(s)
    }
}

fn io_closed(what: &str, e: std::io::Error) -> Closed {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => {
            Closed::ByPeer(format!("{what}: {e}"))
        }
        _ => Closed::Refused(format!("{what}: {e}")),
    }
}

/// Serves requests until the peer closes; an error says why the connection ends.
async fn connection(
    shared: &Arc<Shared>,
    stream: &mut TcpStream,
) -> std::result::Result<(), Closed> {
    let mut len = [0u8; 4];
    loop {
        match stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io_closed("reading", e)),
        }
        let size = i32::from_be_bytes(len);
        if size < 8 || size as usize > shared.max_request_bytes {
            return Err(Closed::Refused(format!(
                "garbage: a frame of {size} bytes is no Kafka request (bytes {len:02x?}; \
                 requests are 8 to {} bytes, socket.request.max.bytes)",
                shared.max_request_bytes
            )));
        }
        let size = size as usize;
        let mut frame = Vec::with_capacity(size.min(READ_CHUNK));
        (&mut *stream)
            .take(size as u64)
            .read_to_end(&mut frame)
            .await
            .map_err(|e| io_closed(&format!("reading a {size}-byte request"), e))?;
        if frame.len() < size {
            return Err(Closed::ByPeer(format!(
                "the peer closed after {} of a {size}-byte request",
                frame.len()
            )));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let reply = handle_frame(shared, Bytes::from(frame)).await?;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let t = &shared.traffic;
            t.requests.fetch_add(1, Relaxed);
            if key == ApiKey::Produce as i16 {
                t.bytes_in.fetch_add(size as u64 + 4, Relaxed);
            }
            if key == ApiKey::Fetch as i16 {
                t.bytes_out
                    .fetch_add(reply.as_ref().map_or(0, |r| r.len() as u64), Relaxed);
            }
        }
        if let Some(reply) = reply {
            stream
                .write_all(&reply)
                .await
                .map_err(|e| io_closed("writing a response", e))?;
        }
    }
}

/// The API, version and correlation id a request frame starts with.
fn frame_start(frame: &[u8]) -> std::result::Result<(ApiKey, i16, i32), String> {
    let Some(start) = frame.first_chunk::<8>() else {
        return Err(format!(
            "garbage: a frame of {} bytes is no Kafka request",
            frame.len()
        ));
    };
    let key = i16::from_be_bytes([start[0], start[1]]);
    let version = i16::from_be_bytes([start[2], start[3]]);
    let correlation_id = i32::from_be_bytes([start[4], start[5], start[6], start[7]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("garbage: unknown API key {key}"))?;
    Ok((api, version, correlation_id))
}

fn served(api: ApiKey, version: i16) -> bool {
    handlers::supported(api).is_some_and(|(min, max)| version >= min && version <= max)
}

/// Decodes one request frame (the bytes after its 4-byte size) as the broker does:
/// its API and version must be ones the broker serves, and every length inside it
/// must fit in the frame, before kafka-protocol decodes the header and the request.
/// No I/O; for fuzzing and tests of the broker's decoding. The broker itself also
/// refuses frames over [`BrokerConfig::max_request_bytes`] before they get here.
pub fn decode_request_frame(
    frame: Bytes,
) -> std::result::Result<(RequestHeader, RequestKind), String> {
    let (api, version, _) = frame_start(&frame)?;
    if !served(api, version) {
        return Err(format!("{api:?} v{version} is not served"));
    }
    wire::decode(api, version, frame)
}

/// Decodes one request, runs it, and encodes the response (none for acks=0 produce).
async fn handle_frame(
    shared: &Arc<Shared>,
    frame: Bytes,
) -> std::result::Result<Option<BytesMut>, Closed> {
    let (api, version, correlation_id) = frame_start(&frame)?;
    if api == ApiKey::ApiVersions && !served(api, version) {
        // Kafka's answer to a newer ApiVersions: a v0 response with the error and the
        // versions this broker has, so that the client retries with one of them.
        let response = handlers::api_versions(35);
        return Ok(Some(encode(api, 0, correlation_id, response.into())?));
    }
    if !served(api, version) {
        tracing::warn!(api = ?api, version, "unsupported request");
        return match handlers::unsupported(api) {
            Some(response) => {
                let version = version.clamp(api.valid_versions().min, api.valid_versions().max);
                Ok(Some(encode(api, version, correlation_id, response)?))
            }
            None => Err(format!("unsupported request {api:?} v{version}").into()),
        };
    }
    let (header, request) =
        wire::decode(api, version, frame).map_err(|reason| Closed::BadRequest {
            api,
            version,
            reason,
        })?;
    let response = handlers::handle(shared, &header, request, version).await;
    match response {
        Some(r) => Ok(Some(encode(api, version, header.correlation_id, r)?)),
        None => Ok(None),
    }
}

fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: ResponseKind,
) -> std::result::Result<BytesMut, String> {
    // Sized for the records a fetch carries, so that encoding does not regrow the
    // buffer (and copy the records) again and again.
    let records: usize = match &response {
        ResponseKind::Fetch(f) => f
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .sum(),
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(256 + records + records / 64);
    out.put_i32(0);
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)
        .map_err(|e| format!("encoding a {api:?} response header: {e}"))?;
    response
        .encode(&mut out, version)
        .map_err(|e| format!("encoding a {api:?} v{version} response: {e}"))?;
    let len = (out.len() - 4) as i32;
    (&mut out[..4]).put_i32(len);
    Ok(out)
}

/// Splits produced records into their batches.
pub(crate) fn batches(mut records: Bytes) -> Vec<Bytes> {
    let mut out = vec![];
    while let Some(size) = crate::batch::BatchHeader::size_of(&records) {
        if size > records.len() || size < crate::batch::LOG_OVERHEAD {
            break;
        }
        out.push(records.split_to(size));
    }
    if records.has_remaining() {
        out.push(records);
    }
    out
}

//! How ember's processes call each other: gRPC clients and servers with the cluster's
//! shared secret and bounded message sizes.
//!
//! When a secret is configured (`--secret-file` or `EMBER_SECRET`), every call carries
//! it in its `authorization` header and every server refuses, and logs, a call
//! without it or with another one. With TLS (`--tls-cert`/`--tls-key` on servers,
//! `--tls-ca` on clients; rustls), addresses are `https://` and every connection is
//! encrypted and checks the server's certificate. The same [`Security`] value builds
//! both ends, so the driver, the executors and the shuffle fetches cannot disagree on
//! the rules.
//!
//! It also carries the [`Liveness`] rules (`ember.rpc.*`): every connection, both
//! ways, sends HTTP/2 keepalive pings, so a peer that stops answering (a frozen or
//! partitioned process: its socket stays open, it just never replies) fails its calls
//! within `keepalive_interval + keepalive_timeout` instead of hanging them forever. A
//! long call whose peer answers pings is never cut off: only short control calls
//! ([`Liveness::unary`]) get a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Status};

use crate::proto::driver_service_client::DriverServiceClient;
use crate::proto::executor_service_client::ExecutorServiceClient;
use crate::{EmberConfig, EmberError, Result};

/// Largest gRPC message any ember process sends or accepts (plans, result batches).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The environment variable holding the cluster's shared secret.
pub const SECRET_ENV: &str = "EMBER_SECRET";

/// A channel whose calls carry the cluster's secret.
pub type AuthChannel = InterceptedService<Channel, ClientAuth>;

/// The cluster's security settings, shared by its servers and clients.
#[derive(Clone, Default)]
pub struct Security {
    secret: Option<Arc<str>>,
    tls: Option<Tls>,
    liveness: Liveness,
}

/// How ember's connections notice a peer that stopped answering (`ember.rpc.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Between HTTP/2 keepalive pings, and the TCP keepalive interval.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection, and its calls, fail.
    pub keepalive_timeout: Duration,
    /// To establish a connection.
    pub connect_timeout: Duration,
    /// Deadline of short control calls (see [`Liveness::unary`]).
    pub request_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::from_config(&EmberConfig::default())
    }
}

impl Liveness {
    /// The `ember.rpc.*` settings of `config`.
    pub fn from_config(config: &EmberConfig) -> Liveness {
        Liveness {
            keepalive_interval: Duration::from_secs(config.rpc_keepalive_interval_secs),
            keepalive_timeout: Duration::from_secs(config.rpc_keepalive_timeout_secs),
            connect_timeout: Duration::from_secs(config.rpc_connect_timeout_secs),
            request_timeout: Duration::from_secs(config.rpc_request_timeout_secs),
        }
    }

    /// A short control call (heartbeat, status report, registration, task launch):
    /// it fails with `DeadlineExceeded` after the request timeout. Never for calls
    /// that last as long as a query (result streams, shuffle fetches).
    pub fn unary<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }

    /// Why a call failed, when its connection died under it rather than the peer
    /// replying with an error: `"<what> at <url> stopped answering (no HTTP/2
    /// keepalive ack in 20s) or closed the connection: <detail>"`. hyper ends a
    /// connection whose pings go unanswered like one the peer closed, so the two read
    /// the same to the call; either way the peer is gone.
    pub fn stopped_answering(&self, status: &Status, what: &str, url: &str) -> Option<String> {
        // A status the peer sent has no source; one made of a transport error has.
        let mut source = std::error::Error::source(status);
        let transport = source.is_some();
        let mut text = status.message().to_string();
        while let Some(e) = source {
            text.push_str(&format!(": {e}"));
            source = e.source();
        }
        let broken = [
            "timed out",
            "reading a body",
            "connection closed",
            "broken pipe",
            "reset",
        ]
        .iter()
        .any(|needle| text.contains(needle));
        (transport && broken).then(|| {
            format!(
                "{what} at {url} stopped answering (no HTTP/2 keepalive ack in {}s) or closed the connection: {}",
                self.keepalive_timeout.as_secs(),
                status.message()
            )
        })
    }
}

/// TLS material: what a server presents, and what a client trusts.
#[derive(Clone)]
struct Tls {
    /// Certificate and key, for a process that serves (driver, executor).
    identity: Option<Identity>,
    /// The certificate (or CA) servers must present.
    trusted: Certificate,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| EmberError::io(path.display(), e))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(EmberError::Config(format!(
            "{what} {} is not a PEM file",
            path.display()
        )));
    }
    Ok(pem)
}

impl Security {
    /// No secret: every call is accepted (a cluster on a trusted network).
    pub fn none() -> Security {
        Security::default()
    }

    /// The shared secret, if one is set (the web UI asks for it too).
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Requires `secret` on every call.
    pub fn with_secret(secret: impl Into<String>) -> Result<Security> {
        let secret = secret.into();
        let secret = secret.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            return Err(EmberError::Config("the cluster secret is empty".into()));
        }
        if MetadataValue::<tonic::metadata::Ascii>::try_from(format!("Bearer {secret}")).is_err() {
            return Err(EmberError::Config(
                "the cluster secret must be printable ASCII".into(),
            ));
        }
        Ok(Security {
            secret: Some(secret.into()),
            tls: None,
            liveness: Liveness::default(),
        })
    }

    /// The secret from `file` if given, else from `$EMBER_SECRET`, else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Security> {
        if let Some(path) = file {
            let secret =
                std::fs::read_to_string(path).map_err(|e| EmberError::io(path.display(), e))?;
            return Security::with_secret(secret)
                .map_err(|e| EmberError::Config(format!("secret file {}: {e}", path.display())));
        }
        match std::env::var(SECRET_ENV) {
            Ok(secret) if !secret.is_empty() => Security::with_secret(secret)
                .map_err(|e| EmberError::Config(format!("${SECRET_ENV}: {e}"))),
            _ => Ok(Security::none()),
        }
    }

    /// Serves with TLS, presenting `cert` (PEM, for the names and addresses clients
    /// use) and `key`; connects to servers that present a certificate signed by `ca`,
    /// or the same certificate when `ca` is none (one self-signed cluster certificate).
    pub fn with_tls(mut self, cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Security> {
        let cert_pem = read_pem(cert, "TLS certificate")?;
        let key_pem = read_pem(key, "TLS key")?;
        let trusted = match ca {
            Some(ca) => read_pem(ca, "TLS CA certificate")?,
            None => cert_pem.clone(),
        };
        self.tls = Some(Tls {
            identity: Some(Identity::from_pem(cert_pem, key_pem)),
            trusted: Certificate::from_pem(trusted),
        });
        Ok(self)
    }

    /// Connects with TLS only (a client): servers must present a certificate signed
    /// by `ca` (or `ca` itself).
    pub fn with_tls_client(mut self, ca: &Path) -> Result<Security> {
        self.tls = Some(Tls {
            identity: None,
            trusted: Certificate::from_pem(read_pem(ca, "TLS CA certificate")?),
        });
        Ok(self)
    }

    /// Uses `liveness` on every connection this value builds, both ends.
    pub fn with_liveness(mut self, liveness: Liveness) -> Security {
        self.liveness = liveness;
        self
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `https` with TLS, else `http`: the scheme of this cluster's addresses.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let l = &self.liveness;
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| EmberError::Config(format!("bad address '{url}': {e}")))?
            .connect_timeout(l.connect_timeout)
            .tcp_keepalive(Some(l.keepalive_interval))
            .http2_keep_alive_interval(l.keepalive_interval)
            .keep_alive_timeout(l.keepalive_timeout)
            // Also between calls: a client waiting for its next call learns early.
            .keep_alive_while_idle(true);
        match &self.tls {
            Some(tls) if url.starts_with("https://") => endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(tls.trusted.clone()))
                .map_err(|e| EmberError::Config(format!("TLS for {url}: {e}"))),
            Some(_) => Err(EmberError::Config(format!(
                "TLS is on, so '{url}' must be an https:// address"
            ))),
            None if url.starts_with("https://") => Err(EmberError::Config(format!(
                "'{url}' is https://: give the certificate to trust (--tls-ca)"
            ))),
            None => Ok(endpoint),
        }
    }

    /// A lazily connecting channel to `url` (`http://HOST:PORT`, or `https://` with TLS).
    pub fn channel(&self, url: &str) -> Result<Channel> {
        Ok(self.endpoint(url)?.connect_lazy())
    }

    /// Connects to `url` now, so that an unreachable peer is an error here.
    pub async fn connect(&self, url: &str) -> Result<Channel> {
        self.endpoint(url)?.connect().await.map_err(|e| {
            let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
            EmberError::Config(format!("cannot connect to {url}: {e}{cause}"))
        })
    }

    /// A gRPC server builder, with TLS when the cluster uses it; a process that
    /// serves a TLS cluster needs its own certificate.
    pub fn server(&self) -> Result<Server> {
        let l = &self.liveness;
        // The server pings too: a client or executor that froze mid-call is dropped,
        // and with it its call (a client's query is cancelled).
        let builder = Server::builder()
            .tcp_keepalive(Some(l.keepalive_interval))
            .http2_keepalive_interval(Some(l.keepalive_interval))
            .http2_keepalive_timeout(Some(l.keepalive_timeout));
        match &self.tls {
            Some(Tls {
                identity: Some(identity),
                ..
            }) => builder
                .tls_config(ServerTlsConfig::new().identity(identity.clone()))
                .map_err(|e| EmberError::Config(format!("TLS certificate or key: {e}"))),
            Some(Tls { identity: None, .. }) => Err(EmberError::Config(
                "TLS is on, and this process serves others: give it --tls-cert and --tls-key"
                    .into(),
            )),
            None => Ok(builder),
        }
    }

    /// What clients attach to every call.
    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth {
            header: self.secret.as_ref().map(|s| {
                MetadataValue::try_from(format!("Bearer {s}"))
                    .expect("checked when the secret was set")
            }),
        }
    }

    /// What servers check on every call; `service` names the server in the log.
    pub fn server_auth(&self, service: &'static str) -> ServerAuth {
        ServerAuth {
            secret: self.secret.clone(),
            service,
            audit: Audit::new(service),
        }
    }

    pub fn driver_client(&self, channel: Channel) -> DriverServiceClient<AuthChannel> {
        DriverServiceClient::with_interceptor(channel, self.client_auth())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn executor_client(&self, channel: Channel) -> ExecutorServiceClient<AuthChannel> {
        ExecutorServiceClient::with_interceptor(channel, self.client_auth())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Adds the secret to a client's calls.
#[derive(Clone)]
pub struct ClientAuth {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Refuses a server's calls that lack the secret.
#[derive(Clone)]
pub struct ServerAuth {
    secret: Option<Arc<str>>,
    service: &'static str,
    audit: Audit,
}

impl Interceptor for ServerAuth {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let Some(secret) = &self.secret else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let why = match (request.metadata().get("authorization"), presented) {
            (_, Some(p)) if constant_time_eq(p.as_bytes(), secret.as_bytes()) => {
                return Ok(request);
            }
            (_, Some(_)) => "a wrong secret",
            (Some(_), None) => "a malformed authorization header",
            (None, None) => "no secret",
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        self.audit.refused(&peer, why);
        Err(Status::unauthenticated(format!(
            "{} requires the cluster secret (--secret-file or ${SECRET_ENV}); the call had {why}",
            self.service
        )))
    }
}

/// The log target of refused calls and requests: shown at the default log level.
pub const AUDIT_TARGET: &str = "ember::audit";

/// Logs refused calls at warn on [`AUDIT_TARGET`], with the peer's address, at most
/// [`Audit::BURST`] lines a minute per server; the lines held back are counted in the
/// next one, so a flood of bad calls cannot fill the log or hide in it.
#[derive(Clone)]
pub struct Audit {
    service: &'static str,
    window: Arc<parking_lot::Mutex<AuditWindow>>,
}

#[derive(Default)]
struct AuditWindow {
    started: Option<std::time::Instant>,
    logged: u32,
    held_back: u64,
}

impl Audit {
    /// Lines logged per minute before the rest are only counted.
    pub const BURST: u32 = 20;

    pub fn new(service: &'static str) -> Audit {
        Audit {
            service,
            window: Arc::default(),
        }
    }

    /// Records that `peer` was refused because its call had `why`.
    pub fn refused(&self, peer: &str, why: &str) {
        let now = std::time::Instant::now();
        let mut w = self.window.lock();
        if w.started
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(60))
        {
            w.started = Some(now);
            w.logged = 0;
        }
        if w.logged >= Self::BURST {
            w.held_back += 1;
            return;
        }
        w.logged += 1;
        let held_back = std::mem::take(&mut w.held_back);
        drop(w);
        if held_back > 0 {
            tracing::warn!(target: AUDIT_TARGET, service = self.service, %peer, held_back,
                "refused a call with {why} ({held_back} more refused calls were not logged)");
        } else {
            tracing::warn!(target: AUDIT_TARGET, service = self.service, %peer, "refused a call with {why}");
        }
    }
}

/// Checks an HTTP request for the cluster secret: `Authorization: Bearer <secret>`,
/// basic auth with the secret as the password, or `?token=<secret>` (for a browser).
/// `Err` says what the request had instead, for the audit log.
pub fn http_secret_check(
    authorization: Option<&str>,
    query: Option<&str>,
    secret: &str,
) -> std::result::Result<(), &'static str> {
    use base64::Engine;
    let matches = |s: &str| constant_time_eq(s.as_bytes(), secret.as_bytes());
    let token = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v))
    });
    if token
        .as_ref()
        .is_some_and(|t| t.as_deref().is_some_and(matches))
    {
        return Ok(());
    }
    let Some(value) = authorization else {
        return Err(if token.is_some() {
            "a wrong secret"
        } else {
            "no secret"
        });
    };
    let presented = if let Some(bearer) = value.strip_prefix("Bearer ") {
        Some(bearer.trim().to_string())
    } else {
        value
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_string()))
    };
    match presented {
        Some(p) if matches(&p) => Ok(()),
        Some(_) => Err("a wrong secret"),
        None => Err("a malformed authorization header"),
    }
}

/// Decodes a URL query value (`%XX` and `+`); `None` when it is not valid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A listener bound to `bind` (`HOST:PORT`, port 0 for any) for a tokio server, and
/// the address it got. Must be called inside a tokio runtime.
pub fn bind_listener(bind: &str) -> Result<(std::net::SocketAddr, tokio::net::TcpListener)> {
    let listener = std::net::TcpListener::bind(bind).map_err(|e| EmberError::io(bind, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| EmberError::io(bind, e))?;
    let address = listener.local_addr().map_err(|e| EmberError::io(bind, e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| EmberError::io(bind, e))?;
    Ok((address, listener))
}

/// Compares without an early exit, so timing does not reveal a prefix of the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_exactly() {
        let security = Security::with_secret("s3cret\n").unwrap();
        let mut client = security.client_auth();
        let mut server = security.server_auth("test");
        let request = client.call(Request::new(())).unwrap();
        assert!(server.call(request).is_ok());
        assert!(server.call(Request::new(())).is_err());
        let mut other = Security::with_secret("other").unwrap().client_auth();
        let err = server
            .call(other.call(Request::new(())).unwrap())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("wrong secret"), "{}", err.message());
        // Without a secret, the server accepts anything.
        assert!(
            Security::none()
                .server_auth("test")
                .call(Request::new(()))
                .is_ok()
        );
    }

    #[test]
    fn http_requests_present_the_secret_by_header_basic_auth_or_token() {
        use base64::Engine;
        let basic = |p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("user:{p}"))
            )
        };
        assert_eq!(http_secret_check(Some("Bearer s3"), None, "s3"), Ok(()));
        assert_eq!(http_secret_check(Some(&basic("s3")), None, "s3"), Ok(()));
        assert_eq!(
            http_secret_check(None, Some("a=1&token=s%33"), "s3"),
            Ok(())
        );
        assert_eq!(http_secret_check(None, None, "s3"), Err("no secret"));
        assert_eq!(
            http_secret_check(Some("Bearer no"), None, "s3"),
            Err("a wrong secret")
        );
        assert_eq!(
            http_secret_check(Some(&basic("no")), None, "s3"),
            Err("a wrong secret")
        );
        assert_eq!(
            http_secret_check(None, Some("token=x"), "s3"),
            Err("a wrong secret")
        );
        assert_eq!(
            http_secret_check(Some("Digest x"), None, "s3"),
            Err("a malformed authorization header")
        );
    }

    #[test]
    fn empty_or_binary_secrets_are_refused() {
        assert!(Security::with_secret("\n").is_err());
        assert!(Security::with_secret("a\u{1}b").is_err());
    }
}

//! How ember's processes call each other: gRPC clients and servers with the cluster's
//! shared secret and bounded message sizes.
//!
//! When a secret is configured (`--secret-file` or `EMBER_SECRET`), every call carries
//! it in its `authorization` header and every server refuses, and logs, a call
//! without it or with another one. The same [`Security`] value builds both ends, so
//! the driver, the executors and the shuffle fetches cannot disagree on the rules.

use std::path::Path;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::proto::driver_service_client::DriverServiceClient;
use crate::proto::executor_service_client::ExecutorServiceClient;
use crate::{EmberError, Result};

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
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Security {
    /// No secret: every call is accepted (a cluster on a trusted network).
    pub fn none() -> Security {
        Security::default()
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

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// A lazily connecting channel to `url` (`http://HOST:PORT`).
    pub fn channel(&self, url: &str) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| EmberError::Config(format!("bad address '{url}': {e}")))?;
        Ok(endpoint.connect_lazy())
    }

    /// Connects to `url` now, so that an unreachable peer is an error here.
    pub async fn connect(&self, url: &str) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| EmberError::Config(format!("bad address '{url}': {e}")))?;
        endpoint
            .connect()
            .await
            .map_err(|e| EmberError::Config(format!("cannot connect to {url}: {e}")))
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
        let why = match presented {
            Some(p) if constant_time_eq(p.as_bytes(), secret.as_bytes()) => return Ok(request),
            Some(_) => "a wrong secret",
            None => "no secret",
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        tracing::warn!(service = self.service, %peer, "refused a call with {why}");
        Err(Status::unauthenticated(format!(
            "{} requires the cluster secret (--secret-file or ${SECRET_ENV}); the call had {why}",
            self.service
        )))
    }
}

/// Compares without an early exit, so timing does not reveal a prefix of the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
    fn empty_or_binary_secrets_are_refused() {
        assert!(Security::with_secret("\n").is_err());
        assert!(Security::with_secret("a\u{1}b").is_err());
    }
}

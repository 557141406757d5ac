//! Who calls: a bearer token from a handshake (a session of its own), the cluster's
//! secret (the shared session), or nothing when the cluster has no secret.

use std::io::Read;
use std::net::SocketAddr;

use base64::Engine as _;
use ember_core::rpc::constant_time_eq;
use ember_core::{EmberError, Result};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::{FlightSql, SHARED_SESSION};

/// Standard base64, padded or not (Go's gRPC clients leave the padding out).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The password of an HTTP basic `authorization` header.
pub(super) fn basic_password(header: &str) -> Option<String> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    decoded.split_once(':').map(|(_, p)| p.to_string())
}

pub(super) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| EmberError::io("/dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl FlightSql {
    /// The session id of the caller, or a refusal (logged) when the cluster has a
    /// secret and the call has neither a token of ours nor the secret.
    pub(super) fn client(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<String, Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        let bearer = header.and_then(|h| h.strip_prefix("Bearer "));
        if let Some(session) = bearer.and_then(|t| self.tokens.lock().get(t).cloned()) {
            return Ok(session);
        }
        let Some(secret) = &self.secret else {
            return Ok(SHARED_SESSION.to_string());
        };
        if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), secret.as_bytes())) {
            return Ok(SHARED_SESSION.to_string());
        }
        let why = match (header, bearer) {
            (None, _) => "no credentials",
            (Some(_), None) => "a malformed authorization header",
            (Some(_), Some(_)) => "an unknown token",
        };
        Err(self.refuse(peer, why))
    }

    pub(super) fn refuse(&self, peer: Option<SocketAddr>, why: &str) -> Status {
        let peer = peer.map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        self.audit.refused(&peer, why);
        Status::unauthenticated(format!(
            "Flight SQL requires the cluster secret (HTTP basic auth with it as the password, or as a bearer token); the call had {why}"
        ))
    }
}

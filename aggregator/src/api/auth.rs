//! API tokens and roles.
//!
//! With no tokens configured the API is open, which suits the local default (it listens
//! on 127.0.0.1). With tokens, every request except `/ready` and `/metrics` needs one,
//! as `Authorization: Bearer <token>`, as the password of HTTP Basic auth (what
//! Grafana's datasource settings offer), or on a WebSocket as the subprotocol
//! [`WS_BEARER`]`<base64url token>`. Tokens are kept as SHA-256 digests, so the
//! configuration may hold digests instead of secrets.
//!
//! Roles are ordered: `read` (queries, labels, tail), `write` (also push), `admin`
//! (also erasure and other administrative endpoints).

use super::{ApiError, ApiState};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A configured token.
#[derive(Clone, Debug)]
pub struct Token {
    /// A name for logs and metrics.
    pub name: String,
    pub sha256: [u8; 32],
    pub role: Role,
}

/// SHA-256 of a token's text.
pub fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Where lines are pushed: the Loki API, and OTLP on the API's listener and on its own.
pub const PUSH_PATHS: [&str; 3] = ["/loki/api/v1/push", "/otlp/v1/logs", "/v1/logs"];

/// The role a request needs.
pub fn required(method: &Method, path: &str) -> Role {
    if path.starts_with("/api/v1/admin/") {
        Role::Admin
    } else if PUSH_PATHS.contains(&path) && method == Method::POST {
        Role::Write
    } else if method != Method::GET
        && ["/api/v1/silences", "/api/v1/incidents", "/api/v1/rules"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        // Silencing, acknowledging and reloading change what pages people.
        Role::Write
    } else {
        Role::Read
    }
}

/// The prefix of the WebSocket subprotocol that carries a token, base64url-encoded:
/// browsers cannot set headers on a WebSocket, so the console's live tail offers
/// `heimdall.bearer.<token>` as a subprotocol (as Kubernetes' API server does).
pub const WS_BEARER: &str = "heimdall.bearer.";

/// The token offered as a WebSocket subprotocol, and that subprotocol.
pub fn ws_bearer(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let proto = offered
        .split(',')
        .map(str::trim)
        .find(|p| p.starts_with(WS_BEARER))?;
    let raw = base64_decode(&proto[WS_BEARER.len()..])?;
    Some((String::from_utf8(raw).ok()?, proto.to_owned()))
}

fn presented(req: &Request) -> Option<String> {
    let Some(h) = req.headers().get(header::AUTHORIZATION) else {
        return ws_bearer(req.headers()).map(|(tok, _)| tok);
    };
    let h = h.to_str().ok()?;
    let (scheme, rest) = h.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64_decode(rest.trim())?;
        let text = String::from_utf8(raw).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Compares digests without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made a request: the name of its token, or [`ANONYMOUS`] when the API has no
/// tokens. Pushed lines get it as their `agent` label.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// The caller's name on an API without tokens.
pub const ANONYMOUS: &str = "push";

/// Middleware: checks the token and its role, and records the [`Caller`].
pub async fn require(
    State(st): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if st.tokens.is_empty() {
        req.extensions_mut().insert(Caller(ANONYMOUS.to_owned()));
        req.extensions_mut().insert(Role::Admin);
        return Ok(next.run(req).await);
    }
    let need = required(req.method(), req.uri().path());
    let Some(tok) = presented(&req) else {
        metrics::counter!("heimdall_aggregator_api_auth_failures_total", "reason" => "missing")
            .increment(1);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this API needs a token: send `Authorization: Bearer <token>`".into(),
        ));
    };
    let d = digest(&tok);
    let Some(t) = st.tokens.iter().find(|t| same(&t.sha256, &d)) else {
        metrics::counter!("heimdall_aggregator_api_auth_failures_total", "reason" => "unknown")
            .increment(1);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unknown API token".into(),
        ));
    };
    if t.role < need {
        metrics::counter!("heimdall_aggregator_api_auth_failures_total", "reason" => "role")
            .increment(1);
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has role {}; this endpoint needs {}",
                t.name,
                t.role.as_str(),
                need.as_str()
            ),
        ));
    }
    req.extensions_mut().insert(Caller(t.name.clone()));
    req.extensions_mut().insert(t.role);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_passwords_decode() {
        assert_eq!(
            base64_decode("Z3JhZmFuYTpzM2NyZXQ=").unwrap(),
            b"grafana:s3cret"
        );
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("!!!").is_none());
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "other, heimdall.bearer.czNjcmV0LXRva2Vu".parse().unwrap(),
        );
        assert_eq!(
            ws_bearer(&h),
            Some((
                "s3cret-token".to_owned(),
                "heimdall.bearer.czNjcmV0LXRva2Vu".to_owned()
            ))
        );
    }

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
        assert_eq!(required(&Method::POST, "/loki/api/v1/push"), Role::Write);
        assert_eq!(required(&Method::GET, "/loki/api/v1/query"), Role::Read);
        assert_eq!(required(&Method::POST, "/api/v1/admin/erase"), Role::Admin);
    }
}

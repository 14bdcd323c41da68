//! Every error the API answers is JSON with a `message` (Loki's shape: `status`,
//! `errorType`, `message`), whoever produced it: a handler ([`super::ApiError`]), the
//! router (404, 405), or a request layer (413 for a body over the limit, 400 for a
//! query string that does not parse). And refused requests are logged, rate-limited,
//! so an operator sees a misconfigured client or a bad token without a flood.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The message of an error response, kept in its extensions for the log.
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

/// Loki's `errorType` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => "bad_data",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_request",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::GATEWAY_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => "timeout",
        StatusCode::REQUEST_TIMEOUT => "canceled",
        _ => "internal",
    }
}

/// A JSON error response.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = heimdall_api::ErrorBody::new(error_type(status), message);
    let mut r = (status, axum::Json(body)).into_response();
    r.extensions_mut().insert(ErrorMessage(message.to_owned()));
    r
}

/// Router fallback: a path the API does not serve.
pub async fn not_found(req: Request) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        &format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

/// Middleware: rewrites error responses that are not JSON into JSON, and logs refused
/// requests.
pub async fn layer(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let resp = if is_json {
        resp
    } else {
        let (parts, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 64 << 10)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let mut message = text.trim().to_owned();
        if message.is_empty() {
            message = match status {
                StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
                s => s.canonical_reason().unwrap_or("error").to_owned(),
            };
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            message = format!(
                "request body is larger than {} bytes ({message})",
                super::push::MAX_PUSH_BYTES
            );
        }
        let mut r = json_error(status, &message);
        for (k, v) in parts.headers.iter() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                r.headers_mut().insert(k.clone(), v.clone());
            }
        }
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    log_refusal(&method, &path, status, &resp);
    resp
}

/// How many refusals of one kind are logged per window; the rest are counted and
/// reported with the next one logged.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

struct Limiter {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

static LIMITERS: Mutex<Vec<(&'static str, Limiter)>> = Mutex::new(Vec::new());

/// Whether to log one more refusal of `kind` now, and how many were suppressed since
/// the last one logged.
fn allow(kind: &'static str) -> Option<u64> {
    let mut g = LIMITERS.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let i = match g.iter().position(|(k, _)| *k == kind) {
        Some(i) => i,
        None => {
            g.push((
                kind,
                Limiter {
                    window: now,
                    logged: 0,
                    suppressed: 0,
                },
            ));
            g.len() - 1
        }
    };
    let l = &mut g[i].1;
    if now.duration_since(l.window) >= LOG_WINDOW {
        l.window = now;
        l.logged = 0;
    }
    if l.logged < LOG_BURST {
        l.logged += 1;
        Some(std::mem::take(&mut l.suppressed))
    } else {
        l.suppressed += 1;
        None
    }
}

fn log_refusal(method: &axum::http::Method, path: &str, status: StatusCode, resp: &Response) {
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "auth",
        _ if path == "/loki/api/v1/push" || path.starts_with("/otlp/") => "push",
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "route",
        s if s.is_client_error() => "request",
        _ => "server",
    };
    metrics::counter!("heimdall_aggregator_api_refusals_total", "kind" => kind, "status" => status.as_str().to_owned())
        .increment(1);
    let Some(suppressed) = allow(kind) else {
        return;
    };
    let message = resp
        .extensions()
        .get::<ErrorMessage>()
        .map_or("", |m| m.0.as_str());
    let status = status.as_u16();
    match kind {
        "server" => {
            tracing::error!(%method, path, status, message, suppressed, "request failed")
        }
        "route" => tracing::debug!(%method, path, status, message, suppressed, "request refused"),
        _ => tracing::warn!(%method, path, status, message, suppressed, "request refused"),
    }
}

/// The body of a JSON error response built here, for tests.
#[cfg(test)]
async fn body_json(r: Response) -> serde_json::Value {
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&b).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[tokio::test]
    async fn plain_errors_become_json_with_a_message() {
        let app = axum::Router::new()
            .route(
                "/x",
                axum::routing::get(|| async {
                    (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded")
                }),
            )
            .fallback(not_found)
            .layer(axum::middleware::from_fn(layer));
        use tower::ServiceExt;
        let r = app
            .clone()
            .oneshot(Request::builder().uri("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let v = body_json(r).await;
        assert!(
            v["message"].as_str().unwrap().contains("larger than"),
            "{v}"
        );
        let r = app
            .clone()
            .oneshot(Request::builder().uri("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(body_json(r).await["message"], "no such endpoint: GET /nope");
        let r = app
            .oneshot(
                Request::builder()
                    .method("DELETE")
                    .uri("/x")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body_json(r).await["message"], "DELETE is not allowed on /x");
    }

    #[test]
    fn refusal_logs_are_rate_limited() {
        let mut allowed = 0;
        for _ in 0..100 {
            if allow("test-kind").is_some() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, LOG_BURST);
    }
}

//! The agent's HTTP endpoint (`metrics.listen`): `/metrics` for Prometheus, `/live`
//! and `/ready` for supervisors and orchestrators. Nothing else is served.
//!
//! - `/live` answers 200 while the agent's housekeeping (a one-second loop through the
//!   runtime, the blocking pool and the spool) has run within [`LIVE_WITHIN`]; 503
//!   otherwise, so a wedged agent can be restarted.
//! - `/ready` answers 200 once the spool is open and the sources run, until shutdown
//!   begins; 503 before and after. The body says why, and whether the agent is
//!   connected to an aggregator (it is ready without one: it spools).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How recently housekeeping must have run for `/live` to answer 200.
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);

/// What `/live` and `/ready` report, updated by the running agent.
#[derive(Debug, Default)]
pub struct Health {
    /// The spool is open and the sources run.
    pub started: AtomicBool,
    /// Shutdown has begun.
    pub stopping: AtomicBool,
    /// When housekeeping last ran, ns since the Unix epoch.
    pub last_tick_ns: AtomicI64,
    /// Connected to an aggregator now.
    pub connected: AtomicBool,
}

impl Health {
    /// Housekeeping ran now.
    pub fn tick(&self) {
        self.last_tick_ns
            .store(crate::sources::now_ns(), Ordering::Relaxed);
    }

    fn live(&self) -> bool {
        let last = self.last_tick_ns.load(Ordering::Relaxed);
        last > 0 && crate::sources::now_ns() - last <= LIVE_WITHIN.as_nanos() as i64
    }
}

/// Serves `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = respond(&req, metrics.as_ref(), &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn respond(
    req: &Request<Incoming>,
    metrics: Option<&PrometheusHandle>,
    h: &Health,
) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            JSON,
            r#"{"message":"only GET and HEAD are served"}"#,
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/metrics" => match metrics {
            Some(m) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.render(),
            ),
            None => reply(
                StatusCode::NOT_FOUND,
                JSON,
                r#"{"message":"metrics are not recorded by this process"}"#,
            ),
        },
        "/live" => {
            if h.live() {
                reply(StatusCode::OK, JSON, r#"{"status":"live"}"#)
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    format!(
                        r#"{{"status":"stalled","message":"housekeeping has not run in the last {}s"}}"#,
                        LIVE_WITHIN.as_secs()
                    ),
                )
            }
        }
        "/ready" => {
            let connected = h.connected.load(Ordering::Relaxed);
            let (code, status) = if h.stopping.load(Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "stopping")
            } else if h.started.load(Ordering::Relaxed) {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting")
            };
            reply(
                code,
                JSON,
                format!(r#"{{"status":"{status}","connected":{connected}}}"#),
            )
        }
        other => reply(
            StatusCode::NOT_FOUND,
            JSON,
            serde_json::json!({
                "message": format!(
                    "no such endpoint: {other}; this listener serves /metrics, /ready and /live"
                )
            })
            .to_string(),
        ),
    }
}

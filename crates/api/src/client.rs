//! A typed async client of the aggregator's HTTP API (feature `client`): what the
//! `heimdall` CLI uses, and what a console or a script can use.
//!
//! HTTPS uses rustls with the Mozilla roots and, if given, a private CA (an API served
//! with the aggregator's own CA). The tail endpoint is a WebSocket (`ws://` or
//! `wss://` on the same terms).

use crate::loki::{LabelSet, Pattern, PushRequest, QueryData, TailMessage};
use crate::model::{
    Agent, Alert, AnomalyEvent, By, Incident, NewSilence, Reloaded, Rules, Silence,
};
use crate::{Envelope, ErrorBody};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong talking to the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The aggregator could not be reached, or the connection failed.
    #[error("cannot reach the aggregator at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The aggregator answered with an error.
    #[error("aggregator answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// The TLS set-up (the CA file) is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The tail WebSocket failed.
    #[error("tail: {0}")]
    Tail(String),
}

/// Parameters of a range query.
#[derive(Clone, Debug, Default)]
pub struct RangeQuery {
    pub query: String,
    /// `start` and `end` as the API takes them (RFC 3339, Unix s or ns); `since` (a
    /// duration like `1h`) when `start` is absent.
    pub start: Option<String>,
    pub end: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
    /// Oldest first.
    pub forward: bool,
    pub step: Option<String>,
}

/// Parameters of `/api/v1/anomalies`.
#[derive(Clone, Debug, Default)]
pub struct AnomalyQuery {
    pub query: Option<String>,
    pub since: Option<String>,
    pub kind: Option<String>,
    pub min_score: Option<f64>,
    pub limit: Option<usize>,
}

/// A client of one aggregator.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// The TLS configuration: the Mozilla roots, plus the certificates of `ca`.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            let c = c.map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            roots
                .add(c)
                .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl Client {
    /// A client of the aggregator at `base` (`http://host:port`), sending `token` when
    /// given, trusting `ca` besides the usual roots for HTTPS.
    ///
    /// # Errors
    /// [`Error::Tls`] for an unusable CA file.
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> Result<Client, Error> {
        let tls = tls_config(ca)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            tls: Arc::new(tls),
        })
    }

    /// The base address.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, Error> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(Error::Api {
                status: status.as_u16(),
                message,
            });
        }
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| Error::Decode {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let full = reqwest::Url::parse_with_params(&url, params).map_err(|e| Error::Decode {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let req = self.http.get(full).timeout(Duration::from_secs(300));
        self.call(req, &url).await
    }

    async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            let json = serde_json::to_vec(b).map_err(|e| Error::Decode {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            req = req.header("content-type", "application/json").body(json);
        }
        self.call(req, &url).await
    }

    async fn data<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, Error> {
        let e: Envelope<T> = self.get(path, params).await?;
        e.data.ok_or_else(|| Error::Decode {
            url: format!("{}{path}", self.base),
            reason: "no `data` in the answer".into(),
        })
    }

    /// `GET /loki/api/v1/query_range`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn query_range(&self, q: &RangeQuery) -> Result<QueryData, Error> {
        let mut p = vec![
            ("query", q.query.clone()),
            (
                "direction",
                if q.forward { "forward" } else { "backward" }.to_owned(),
            ),
        ];
        push_opt(&mut p, "start", &q.start);
        push_opt(&mut p, "end", &q.end);
        if q.start.is_none() {
            push_opt(&mut p, "since", &q.since);
        }
        push_opt(&mut p, "step", &q.step);
        if let Some(l) = q.limit {
            p.push(("limit", l.to_string()));
        }
        self.data("/loki/api/v1/query_range", &p).await
    }

    /// `GET /loki/api/v1/query`: a metric query at `time` (default now).
    ///
    /// # Errors
    /// [`Error`].
    pub async fn query(
        &self,
        query: &str,
        time: Option<&str>,
        limit: Option<usize>,
    ) -> Result<QueryData, Error> {
        let mut p = vec![("query", query.to_owned())];
        if let Some(t) = time {
            p.push(("time", t.to_owned()));
        }
        if let Some(l) = limit {
            p.push(("limit", l.to_string()));
        }
        self.data("/loki/api/v1/query", &p).await
    }

    /// `GET /loki/api/v1/labels`, or the values of one label.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn labels(
        &self,
        name: Option<&str>,
        query: Option<&str>,
        since: &str,
    ) -> Result<Vec<String>, Error> {
        let mut p = vec![("since", since.to_owned())];
        if let Some(q) = query {
            p.push(("query", q.to_owned()));
        }
        match name {
            None => self.data("/loki/api/v1/labels", &p).await,
            Some(n) => {
                self.data(&format!("/loki/api/v1/label/{n}/values"), &p)
                    .await
            }
        }
    }

    /// `GET /loki/api/v1/series`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn series(&self, matchers: &[&str], since: &str) -> Result<Vec<LabelSet>, Error> {
        let mut p = vec![("since", since.to_owned())];
        for m in matchers {
            p.push(("match[]", (*m).to_owned()));
        }
        self.data("/loki/api/v1/series", &p).await
    }

    /// `POST /loki/api/v1/push` (JSON).
    ///
    /// # Errors
    /// [`Error::Api`] with Loki's message when entries were refused.
    pub async fn push(&self, req: &PushRequest) -> Result<(), Error> {
        let _: serde_json::Value = self
            .send(reqwest::Method::POST, "/loki/api/v1/push", Some(req))
            .await?;
        Ok(())
    }

    /// `GET /api/v1/agents`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn agents(&self) -> Result<Vec<Agent>, Error> {
        self.data("/api/v1/agents", &[]).await
    }

    /// `GET /loki/api/v1/patterns`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn patterns(
        &self,
        query: &str,
        since: &str,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Pattern>, Error> {
        let mut p = vec![
            ("query", query.to_owned()),
            ("since", since.to_owned()),
            ("limit", limit.to_string()),
        ];
        if let Some(s) = step {
            p.push(("step", s.to_owned()));
        }
        self.data("/loki/api/v1/patterns", &p).await
    }

    /// `GET` of a health endpoint (`/ready`, `/live`): the status code and the body,
    /// whatever the code.
    ///
    /// # Errors
    /// [`Error::Unreachable`].
    pub async fn health(&self, path: &str) -> Result<(u16, String), Error> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source| Error::Unreachable {
            url: url.clone(),
            source,
        };
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(unreachable)?;
        Ok((status, body))
    }

    /// `GET /api/v1/anomalies`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn anomalies(&self, q: &AnomalyQuery) -> Result<Vec<AnomalyEvent>, Error> {
        let mut p = Vec::new();
        push_opt(&mut p, "query", &q.query);
        push_opt(&mut p, "since", &q.since);
        push_opt(&mut p, "kind", &q.kind);
        if let Some(s) = q.min_score {
            p.push(("min_score", s.to_string()));
        }
        if let Some(l) = q.limit {
            p.push(("limit", l.to_string()));
        }
        self.data("/api/v1/anomalies", &p).await
    }

    /// `GET /api/v1/rules`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn rules(&self) -> Result<Rules, Error> {
        self.data("/api/v1/rules", &[]).await
    }

    /// `POST /api/v1/rules/reload`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn reload_rules(&self) -> Result<Reloaded, Error> {
        let e: Envelope<Reloaded> = self
            .send::<(), _>(reqwest::Method::POST, "/api/v1/rules/reload", None)
            .await?;
        Ok(e.data.unwrap_or_default())
    }

    /// `GET /api/v1/alerts`, optionally of one state.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn alerts(&self, state: Option<&str>) -> Result<Vec<Alert>, Error> {
        let p: Vec<(&str, String)> = state.map(|s| ("state", s.to_owned())).into_iter().collect();
        self.data("/api/v1/alerts", &p).await
    }

    /// `GET /api/v1/silences`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn silences(&self) -> Result<Vec<Silence>, Error> {
        self.data("/api/v1/silences", &[]).await
    }

    /// `POST /api/v1/silences`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn add_silence(&self, s: &NewSilence) -> Result<Silence, Error> {
        let e: Envelope<Silence> = self
            .send(reqwest::Method::POST, "/api/v1/silences", Some(s))
            .await?;
        e.data.ok_or_else(|| Error::Decode {
            url: format!("{}/api/v1/silences", self.base),
            reason: "no silence in the answer".into(),
        })
    }

    /// `DELETE /api/v1/silences/{id}`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn expire_silence(&self, id: &str) -> Result<(), Error> {
        let _: Envelope<()> = self
            .send::<(), _>(
                reqwest::Method::DELETE,
                &format!("/api/v1/silences/{id}"),
                None,
            )
            .await?;
        Ok(())
    }

    /// `GET /api/v1/incidents`: open ones, or all.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn incidents(&self, all: bool) -> Result<Vec<Incident>, Error> {
        self.data(
            "/api/v1/incidents",
            &[("state", if all { "all" } else { "open" }.to_owned())],
        )
        .await
    }

    /// `GET /api/v1/incidents/{id}`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn incident(&self, id: i64) -> Result<Incident, Error> {
        self.data(&format!("/api/v1/incidents/{id}"), &[]).await
    }

    /// `POST /api/v1/incidents/{id}/ack` or `/resolve`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn incident_action(&self, id: i64, action: &str, by: &str) -> Result<(), Error> {
        let body = By {
            by: Some(by.to_owned()),
        };
        let _: Envelope<()> = self
            .send(
                reqwest::Method::POST,
                &format!("/api/v1/incidents/{id}/{action}"),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Opens `/loki/api/v1/tail` for `query`, from `start` (ns) with up to `limit`
    /// lines of history.
    ///
    /// # Errors
    /// [`Error::Tail`].
    pub async fn tail(&self, query: &str, limit: usize, start: i64) -> Result<Tail, Error> {
        let (tls, rest) = match self.base.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            _ => {
                return Err(Error::Tail(format!(
                    "`{}` is not an http(s) address",
                    self.base
                )))
            }
        };
        let host_port = rest.split('/').next().unwrap_or(rest).to_owned();
        let url = reqwest::Url::parse_with_params(
            &format!(
                "{}://{rest}/loki/api/v1/tail",
                if tls { "wss" } else { "ws" }
            ),
            &[
                ("query", query.to_owned()),
                ("limit", limit.to_string()),
                ("start", start.to_string()),
            ],
        )
        .map_err(|e| Error::Tail(e.to_string()))?;
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .map_err(|e| Error::Tail(e.to_string()))?;
        if let Some(t) = &self.token {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Tail("the token is not a valid header".into()))?,
            );
        }
        let tcp = tokio::net::TcpStream::connect(&host_port)
            .await
            .map_err(|e| Error::Tail(format!("cannot reach {host_port}: {e}")))?;
        let stream: Box<dyn AsyncStream> = if tls {
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| Error::Tail(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Tail(format!("TLS: {e}")))?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| Error::Tail(e.to_string()))?;
        Ok(Tail { ws })
    }
}

fn push_opt(p: &mut Vec<(&'static str, String)>, k: &'static str, v: &Option<String>) {
    if let Some(v) = v {
        p.push((k, v.clone()));
    }
}

/// A byte stream a WebSocket can run over (TCP, or TLS over TCP).
pub trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

/// An open tail: messages as the aggregator sends them.
pub struct Tail {
    ws: tokio_tungstenite::WebSocketStream<Box<dyn AsyncStream>>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tail")
    }
}

impl Tail {
    /// The next message; `None` when the aggregator closed the tail.
    ///
    /// # Errors
    /// [`Error::Tail`].
    pub async fn next(&mut self) -> Option<Result<TailMessage, Error>> {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(Error::Tail(e.to_string()))),
            };
            match msg {
                Message::Text(t) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .map_err(|e| Error::Tail(format!("unexpected message: {e}"))),
                    )
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

//! Alerting endpoints: rules (with their health, and reload), alerts, silences and
//! incidents.
//!
//! - `GET /api/v1/rules`, `POST /api/v1/rules/reload`
//! - `GET /api/v1/alerts[?state=firing|pending|resolved]`
//! - `GET /api/v1/silences`, `POST /api/v1/silences`, `DELETE /api/v1/silences/{id}`
//! - `GET /api/v1/incidents[?state=open|all&limit=N]`, `GET /api/v1/incidents/{id}`,
//!   `POST /api/v1/incidents/{id}/ack`, `POST /api/v1/incidents/{id}/resolve`

use super::{bad, internal, ApiError, ApiState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use heimdall_alert::eval::{AlertHandle, Command};
use heimdall_alert::{correlate, state};
use heimdall_api::model::{Alert, By, Incident, NewSilence, Reloaded, Rules, Silence};
use heimdall_api::Envelope;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What the alerting endpoints need.
pub struct AlertApi {
    pub handle: AlertHandle,
    /// Rule files, read again on reload.
    pub rule_paths: Vec<std::path::PathBuf>,
    pub default_interval: Duration,
}

fn api(st: &ApiState) -> Result<&AlertApi, ApiError> {
    st.alerting
        .as_deref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "alerting is not running".into()))
}

async fn on_db<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let path = api(st)?.handle.db_path.clone();
    tokio::task::spawn_blocking(move || {
        let c = state::open(&path).map_err(internal)?;
        f(&c).map_err(internal)
    })
    .await
    .map_err(internal)?
}

async fn command(st: &ApiState, c: Command) -> Result<(), ApiError> {
    use heimdall_alert::correlate::IncidentError;
    use heimdall_alert::eval::CommandError;
    let h = api(st)?.handle.clone();
    h.command(c).await.map_err(|e| match e {
        CommandError::Incident(IncidentError::NoSuchIncident(_)) => {
            ApiError(StatusCode::NOT_FOUND, e.to_string())
        }
        CommandError::Stopped | CommandError::NoAnswer(_) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        _ => internal(e),
    })
}

/// `GET /api/v1/rules`.
pub async fn rules(State(st): State<Arc<ApiState>>) -> Result<Json<Envelope<Rules>>, ApiError> {
    let a = api(&st)?;
    let h = a
        .handle
        .health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Json(Envelope::ok(Rules { rules: h })))
}

/// `POST /api/v1/rules/reload`: reads the rule files again; on any problem the old
/// rules stay and the answer lists every problem.
pub async fn reload(State(st): State<Arc<ApiState>>) -> Result<Json<Envelope<Reloaded>>, ApiError> {
    let a = api(&st)?;
    let (paths, iv) = (a.rule_paths.clone(), a.default_interval);
    let groups = tokio::task::spawn_blocking(move || heimdall_rules::load(&paths, iv))
        .await
        .map_err(internal)?
        .map_err(|p| bad(p.to_string()))?;
    let n: usize = groups.iter().map(|g| g.rules.len()).sum();
    command(&st, Command::Reload(groups)).await?;
    Ok(Json(Envelope::ok(Reloaded { rules: n })))
}

#[derive(Deserialize)]
pub struct AlertParams {
    state: Option<String>,
    fingerprint: Option<String>,
}

/// `GET /api/v1/alerts`.
pub async fn alerts(
    State(st): State<Arc<ApiState>>,
    Query(p): Query<AlertParams>,
) -> Result<Json<Envelope<Vec<Alert>>>, ApiError> {
    if let Some(s) = p.state.as_deref() {
        if !["pending", "firing", "resolved"].contains(&s) {
            return Err(bad(format!(
                "state `{s}`: expected pending, firing or resolved"
            )));
        }
    }
    let mut all = on_db(&st, state::alerts).await?;
    all.retain(|a| p.state.as_deref().is_none_or(|s| a.state.as_str() == s));
    all.retain(|a| p.fingerprint.as_deref().is_none_or(|f| a.fingerprint == f));
    Ok(Json(Envelope::ok(all)))
}

/// `POST /api/v1/silences`.
pub async fn add_silence(
    State(st): State<Arc<ApiState>>,
    Json(s): Json<NewSilence>,
) -> Result<Json<Envelope<Silence>>, ApiError> {
    let q = heimdall_logql::parse_log(&s.matchers).map_err(|e| bad(format!("matchers: {e}")))?;
    if !q.stages.is_empty() || q.matchers.is_empty() {
        return Err(bad(
            "matchers: give label matchers only, like {alertname=\"HostSilent\"}",
        ));
    }
    let now = heimdall_common::record::now_ns();
    let starts = match &s.starts {
        Some(t) => super::parse_time(t).map_err(bad)?,
        None => now,
    };
    let ends = match (&s.ends, &s.duration) {
        (Some(t), None) => super::parse_time(t).map_err(bad)?,
        (None, Some(d)) => {
            let d = heimdall_common::config::HumanDuration::parse(d)
                .map_err(|e| bad(format!("duration: {e}")))?;
            starts.saturating_add(d.0.as_nanos() as i64)
        }
        _ => return Err(bad("give one of `ends` and `duration`")),
    };
    if ends <= starts {
        return Err(bad("a silence must end after it starts"));
    }
    if s.created_by.trim().is_empty() {
        return Err(bad("created_by: say who silences"));
    }
    let mut id = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| internal("no randomness"))?;
    let silence = state::Silence {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        matchers: s.matchers,
        starts,
        ends,
        created_by: s.created_by,
        comment: s.comment,
        created: now,
    };
    let sv = silence.clone();
    on_db(&st, move |c| state::put_silence(c, &sv)).await?;
    tracing::info!(id = %silence.id, matchers = %silence.matchers, by = %silence.created_by, "silence added");
    Ok(Json(Envelope::ok(silence)))
}

/// `GET /api/v1/silences`: active and future ones.
pub async fn silences(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Envelope<Vec<Silence>>>, ApiError> {
    let now = heimdall_common::record::now_ns();
    let all = on_db(&st, move |c| state::silences(c, now)).await?;
    Ok(Json(Envelope::ok(all)))
}

/// `DELETE /api/v1/silences/{id}`: ends it now.
pub async fn expire_silence(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<()>>, ApiError> {
    let now = heimdall_common::record::now_ns();
    let idc = id.clone();
    if !on_db(&st, move |c| state::expire_silence(c, &idc, now)).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no silence {id}")));
    }
    Ok(Json(Envelope::done()))
}

#[derive(Deserialize)]
pub struct IncidentParams {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/incidents`.
pub async fn incidents(
    State(st): State<Arc<ApiState>>,
    Query(p): Query<IncidentParams>,
) -> Result<Json<Envelope<Vec<Incident>>>, ApiError> {
    let open_only = match p.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(o) => return Err(bad(format!("state `{o}`: expected open or all"))),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    let all = on_db(&st, move |c| correlate::list(c, open_only, limit)).await?;
    Ok(Json(Envelope::ok(all)))
}

/// `GET /api/v1/incidents/{id}`.
pub async fn incident(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Json<Envelope<Incident>>, ApiError> {
    match on_db(&st, move |c| correlate::get(c, id)).await? {
        Some(i) => Ok(Json(Envelope::ok(i))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no incident {id}"))),
    }
}

/// `POST /api/v1/incidents/{id}/ack`.
pub async fn ack(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<i64>,
    body: Option<Json<By>>,
) -> Result<Json<Envelope<()>>, ApiError> {
    let by = body.and_then(|b| b.0.by).unwrap_or_else(|| "api".into());
    command(&st, Command::AckIncident { id, by }).await?;
    Ok(Json(Envelope::done()))
}

/// `POST /api/v1/incidents/{id}/resolve`.
pub async fn resolve(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<i64>,
    body: Option<Json<By>>,
) -> Result<Json<Envelope<()>>, ApiError> {
    let by = body.and_then(|b| b.0.by).unwrap_or_else(|| "api".into());
    command(&st, Command::ResolveIncident { id, by }).await?;
    Ok(Json(Envelope::done()))
}

//! Administrative endpoints (role `admin` when tokens are configured): run the storage
//! lifecycle now, request an erasure, list erasures and segments. Also the storage
//! summary every reader may see (tiers, policy, recent lifecycle runs).

use super::{bad, internal, on_reader, parse_time, ApiError, ApiState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use heimdall_api::model::{
    EraseRequest, Erasure, LifecycleRun, Segment, Storage, StoragePolicy, TierSummary,
};
use heimdall_api::Envelope;
use heimdall_store::{catalog, erase};
use std::sync::Arc;

/// `POST /api/v1/admin/compact`: runs compaction, upload, retention and pending
/// erasures now; answers when they are done.
pub async fn compact(State(st): State<Arc<ApiState>>) -> Result<Json<Envelope<()>>, ApiError> {
    st.lifecycle.run_now().await;
    Ok(Json(Envelope::done()))
}

/// `POST /api/v1/admin/erase`: deletes matching lines from every tier.
pub async fn erase(
    State(st): State<Arc<ApiState>>,
    Json(req): Json<EraseRequest>,
) -> Result<(StatusCode, Json<Envelope<Erasure>>), ApiError> {
    erase::validate(&req.query).map_err(bad)?;
    let start = match &req.start {
        Some(s) => parse_time(s).map_err(bad)?,
        None => i64::MIN,
    };
    let end = match &req.end {
        Some(s) => parse_time(s).map_err(bad)?,
        None => crate::ingest::now_ns().saturating_add(1),
    };
    if start >= end {
        return Err(bad("start must be before end"));
    }
    let store = st.store.clone();
    let q = req.query.clone();
    let id = tokio::task::spawn_blocking(move || -> Result<i64, ApiError> {
        let id = Arc::new(std::sync::Mutex::new(0i64));
        let id2 = id.clone();
        store
            .job_blocking(Box::new(move |c| {
                *id2.lock().unwrap_or_else(|p| p.into_inner()) = erase::record(c, &q, start, end)?;
                Ok(())
            }))
            .map_err(internal)?;
        let v = *id.lock().unwrap_or_else(|p| p.into_inner());
        Ok(v)
    })
    .await
    .map_err(internal)??;
    tracing::info!(erasure = id, query = %req.query, "erasure requested");
    if req.wait.unwrap_or(true) {
        st.lifecycle.run_now().await;
        let rows = on_reader(&st, erase::list).await?;
        let e = rows
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| internal(format!("erasure {id} is not recorded")))?;
        return Ok((StatusCode::OK, Json(Envelope::ok(e))));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Envelope::ok(Erasure {
            id,
            query: req.query,
            start,
            end,
            state: "pending".into(),
            ..Erasure::default()
        })),
    ))
}

/// `GET /api/v1/admin/erasures`.
pub async fn erasures(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Envelope<Vec<Erasure>>>, ApiError> {
    let rows = on_reader(&st, erase::list).await?;
    Ok(Json(Envelope::ok(rows)))
}

/// `GET /api/v1/admin/segments`: the catalog.
pub async fn segments(
    State(st): State<Arc<ApiState>>,
) -> Result<Json<Envelope<Vec<Segment>>>, ApiError> {
    let segs = on_reader(&st, catalog::all).await?;
    let data = segs
        .into_iter()
        .map(|s| Segment {
            id: s.id,
            name: s.name,
            state: s.state,
            tier: s.tier.as_str().to_owned(),
            min_ts: s.min_ts,
            max_ts: s.max_ts,
            rows: s.rows,
            bytes: s.bytes,
            raw_bytes: s.raw_bytes,
            checksum: format!("{:08x}", s.checksum),
        })
        .collect();
    Ok(Json(Envelope::ok(data)))
}

/// `GET /api/v1/storage` (role `read`): what each tier holds, the lifecycle's policy
/// and its recent runs. Totals only: the segment list stays an admin endpoint.
pub async fn storage(State(st): State<Arc<ApiState>>) -> Result<Json<Envelope<Storage>>, ApiError> {
    let db = st.db_path.clone();
    let (hot, segs) = on_reader(&st, move |c| {
        Ok((heimdall_store::hot::summary(c)?, catalog::tier_totals(c)?))
    })
    .await?;
    // The database and its write-ahead log: what the hot tier takes on disk.
    let on_disk = |suffix: &str| {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
    };
    let mut tiers = vec![TierSummary {
        tier: "hot".into(),
        parts: hot.0,
        rows: hot.1,
        bytes: on_disk("") + on_disk("-wal"),
        raw_bytes: 0,
        min_ts: hot.2,
        max_ts: hot.3,
    }];
    for (tier, [n, rows, bytes, raw, min, max]) in segs {
        tiers.push(TierSummary {
            tier,
            parts: n as u64,
            rows: rows as u64,
            bytes: bytes as u64,
            raw_bytes: raw as u64,
            min_ts: min,
            max_ts: max,
        });
    }
    let cfg = st.lifecycle.config();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let policy = StoragePolicy {
        interval_seconds: secs(cfg.interval),
        compact_after_seconds: secs(cfg.compact_after),
        hot_max_rows: cfg.hot_max_rows,
        upload_after_seconds: cfg
            .upload_after
            .filter(|_| st.tiers.cold.is_some())
            .map(secs),
        retention_seconds: cfg.retention.map(secs),
    };
    let run = |r: heimdall_store::lifecycle::Run| LifecycleRun {
        step: r.step.to_owned(),
        started_ns: r.started_ns,
        seconds: r.seconds,
        rows: r.rows,
        error: r.error,
    };
    let (last, recent) = st.lifecycle.runs();
    Ok(Json(Envelope::ok(Storage {
        tiers,
        policy,
        last_runs: last.into_iter().map(run).collect(),
        recent_runs: recent.into_iter().map(run).collect(),
    })))
}

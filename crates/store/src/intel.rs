//! Queries over what agents compute at the edge: template patterns with counts, exact
//! record counts from pre-aggregates (`count_over_time` / `bytes_over_time` for
//! streams whose lines are not all stored), and anomaly events.
//!
//! Aggregates are keyed by their window start; a window belongs to the step bucket its
//! start falls in, so buckets are exact when the step is a multiple of the agents'
//! window (10 s by default).

use crate::read::select_streams;
use heimdall_api::model::{AnomalyEvent, TemplateRef};
use heimdall_common::record::{Labels, Level};
use heimdall_logql::Matcher;
use rusqlite::{Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap};

/// Calls `each(stream_id, start, level, template_id, count, bytes, shipped)` for the
/// aggregates of `streams` with window starts in `[start, end)`.
fn scan_aggregates(
    conn: &Connection,
    streams: &[i64],
    start: i64,
    end: i64,
    mut each: impl FnMut(i64, i64, u8, u64, u64, u64, u64),
) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT start, level, template_id, count, bytes, shipped FROM aggregates
         WHERE stream_id = ?1 AND start >= ?2 AND start < ?3",
    )?;
    for &s in streams {
        let mut rows = stmt.query(rusqlite::params![s, start, end])?;
        while let Some(r) = rows.next()? {
            each(
                s,
                r.get(0)?,
                r.get::<_, i64>(1)? as u8,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, i64>(5)? as u64,
            );
        }
    }
    Ok(())
}

/// One template with its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub template_id: u64,
    /// The level of its records (a template seen at several levels is one pattern per
    /// level, as Loki's are).
    pub level: heimdall_common::record::Level,
    /// The template text; empty when no agent sent it (yet).
    pub text: String,
    pub total: u64,
    /// (bucket start in ns, records).
    pub samples: Vec<(i64, u64)>,
}

/// The `limit` templates with the most records in `[start, end)` over the selected
/// streams, each with counts per `step`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn patterns(
    conn: &Connection,
    matchers: &[Matcher],
    start: i64,
    end: i64,
    step: i64,
    limit: usize,
) -> Result<Vec<Pattern>, rusqlite::Error> {
    let ids: Vec<i64> = select_streams(conn, matchers)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let step = step.max(1);
    // Every id a template had counts under the one it has now (its root).
    let roots = crate::templates::roots(conn)?;
    let mut by: HashMap<(u64, u8), BTreeMap<i64, u64>> = HashMap::new();
    scan_aggregates(conn, &ids, start, end, |_, t, level, tid, count, _, _| {
        // Samples on multiples of the step, as Loki aligns them.
        let b = t.div_euclid(step) * step;
        let tid = roots.get(&tid).copied().unwrap_or(tid);
        *by.entry((tid, level)).or_default().entry(b).or_default() += count;
    })?;
    let mut out: Vec<Pattern> = by
        .into_iter()
        .map(|((tid, level), m)| Pattern {
            template_id: tid,
            level: heimdall_common::record::Level::from_u8(level).unwrap_or_default(),
            text: String::new(),
            total: m.values().sum(),
            samples: m.into_iter().collect(),
        })
        .collect();
    out.sort_by(|a, b| {
        b.total
            .cmp(&a.total)
            .then(a.template_id.cmp(&b.template_id))
            .then(a.level.cmp(&b.level))
    });
    out.truncate(limit);
    let mut stmt = conn.prepare_cached("SELECT text FROM templates WHERE id = ?1")?;
    for p in &mut out {
        p.text = stmt
            .query_row([p.template_id as i64], |r| r.get(0))
            .optional()?
            .unwrap_or_default();
    }
    Ok(out)
}

/// One series of [`counts`]: its labels and (bucket start in ns, value) points.
pub type Series = (BTreeMap<String, String>, Vec<(i64, u64)>);

/// What [`counts`] adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Records read (`count_over_time`).
    Count,
    /// Line bytes read (`bytes_over_time`).
    Bytes,
    /// Records stored as lines.
    Shipped,
}

/// Record counts (or bytes) per `step` in `[start, end)` over the selected streams,
/// grouped by the labels `by` (`level` is the record level). An empty `by` keeps every
/// stream label and the level apart.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn counts(
    conn: &Connection,
    matchers: &[Matcher],
    start: i64,
    end: i64,
    step: i64,
    by: Option<&[String]>,
    measure: Measure,
) -> Result<Vec<Series>, rusqlite::Error> {
    let streams = select_streams(conn, matchers)?;
    let labels: HashMap<i64, Labels> = streams.iter().cloned().collect();
    let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
    let step = step.max(1);
    let mut series: BTreeMap<BTreeMap<String, String>, BTreeMap<i64, u64>> = BTreeMap::new();
    scan_aggregates(
        conn,
        &ids,
        start,
        end,
        |sid, t, level, _, count, bytes, shipped| {
            let l = &labels[&sid];
            let level = Level::from_u8(level).unwrap_or_default().as_str();
            let key: BTreeMap<String, String> = match by {
                None => l
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .chain([("level".to_owned(), level.to_owned())])
                    .collect(),
                Some(names) => names
                    .iter()
                    .filter_map(|n| {
                        let v = if n == "level" { Some(level) } else { l.get(n) };
                        v.map(|v| (n.clone(), v.to_owned()))
                    })
                    .collect(),
            };
            let b = start + (t - start).div_euclid(step) * step;
            let v = match measure {
                Measure::Count => count,
                Measure::Bytes => bytes,
                Measure::Shipped => shipped,
            };
            *series.entry(key).or_default().entry(b).or_default() += v;
        },
    )?;
    Ok(series
        .into_iter()
        .map(|(k, m)| (k, m.into_iter().collect()))
        .collect())
}

/// Anomaly events of the selected streams (all streams without matchers) in
/// `[start, end)`, newest first, at most `limit`, optionally of one kind and with at
/// least `min_score`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn anomalies(
    conn: &Connection,
    matchers: &[Matcher],
    start: i64,
    end: i64,
    kind: Option<&str>,
    min_score: f64,
    limit: usize,
) -> Result<Vec<AnomalyEvent>, rusqlite::Error> {
    let streams: HashMap<i64, Labels> = select_streams(conn, matchers)?.into_iter().collect();
    let roots = crate::templates::roots(conn)?;
    let mut text_of = conn.prepare_cached("SELECT text FROM templates WHERE id = ?1")?;
    let mut stmt = conn.prepare_cached(
        "SELECT agent, id, stream_id, kind, ts, received, score, baseline, observed, templates, samples,
                (SELECT window_secs FROM aggregates g WHERE g.stream_id = a.stream_id AND g.start <= a.ts
                 ORDER BY g.start DESC LIMIT 1),
                ended
         FROM anomalies a WHERE ts >= ?1 AND ts < ?2 AND (?3 IS NULL OR kind = ?3) AND score >= ?4
         ORDER BY ts DESC, id",
    )?;
    let mut rows = stmt.query(rusqlite::params![start, end, kind, min_score])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let Some(labels) = streams.get(&r.get::<_, i64>(2)?) else {
            continue;
        };
        let mut templates: Vec<TemplateRef> =
            serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default();
        // Named by the id the template has now, with its text now.
        for t in &mut templates {
            let Ok(id) = u64::from_str_radix(&t.id, 16) else {
                continue;
            };
            if let Some(&root) = roots.get(&id) {
                if root != id {
                    t.id = format!("{root:016x}");
                    if let Some(text) = text_of
                        .query_row([root as i64], |r| r.get::<_, String>(0))
                        .optional()?
                    {
                        t.text = text;
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        templates.retain(|t| seen.insert(t.id.clone()));
        let samples: Vec<String> =
            serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default();
        out.push(AnomalyEvent {
            agent: r.get(0)?,
            id: format!("{:016x}", r.get::<_, i64>(1)? as u64),
            kind: r.get(3)?,
            time_ns: r.get(4)?,
            received_ns: r.get(5)?,
            score: r.get(6)?,
            baseline: r.get(7)?,
            observed: r.get(8)?,
            stream: labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            templates,
            samples,
            window_seconds: r.get::<_, Option<u32>>(11)?.unwrap_or(0),
            ended_ns: r.get(12)?,
        });
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

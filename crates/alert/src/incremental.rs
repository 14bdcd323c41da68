//! Incremental evaluation of a rule's range functions: new rows since the last
//! evaluation are added to per-series buckets, and old buckets fall out of the window,
//! so an evaluation costs the new lines plus the live series, however long the range.
//!
//! A rule is incremental when every range function in its expression has no
//! `offset` and is not `absent_over_time` (those are evaluated in full each time).
//! Aggregations, `topk`, comparisons and binary operators are evaluated by
//! `query::eval` on the leaves' values, so the semantics are the same as a query.
//!
//! # Accuracy
//! Buckets are 1 s wide for ranges up to 10 m, and 1/600 of the range beyond, each
//! keyed by its end. The window `(t - range, t]` takes every bucket ending after
//! `t - range`, so a value may include up to one bucket more at the old edge than the
//! same query would.
//!
//! # Start
//! A new state is seeded by one range query over the window (step = bucket width) in
//! the same read transaction that gives the highest row id; rows above that id are
//! fed afterwards. Memory is bounded by `max_series` series per leaf, with a metric.

use heimdall_common::record::Labels;
use heimdall_logql::{Expr, LogQuery, RangeFn};
use heimdall_query::eval::{evaluate, EvalRequest, Leaves, Limits, Series, Value};
use heimdall_query::exec::{Error, Source};
use heimdall_query::pipeline::{base_labels, Pipeline, ERROR_LABEL};
use heimdall_store::hot::Row;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Bucket width for a range.
pub fn width(range_ns: i64) -> i64 {
    (range_ns / 600).max(1_000_000_000)
}

/// One range function of a rule.
struct Leaf {
    func: RangeFn,
    log: LogQuery,
    range_ns: i64,
    width: i64,
    pipeline: Pipeline,
    /// Series → bucket end → (lines, bytes).
    series: HashMap<Labels, BTreeMap<i64, (f64, f64)>>,
    /// A pipeline error met on a fed line (as a full evaluation would report it).
    error: Option<String>,
}

/// The incremental state of one rule.
pub struct RuleState {
    leaves: Vec<Leaf>,
    /// Rows up to this id are counted.
    pub seeded_id: i64,
    max_series: usize,
}

fn collect(e: &Expr, out: &mut Vec<(RangeFn, LogQuery, i64)>) -> bool {
    match e {
        Expr::Range {
            func,
            log,
            range_ns,
            offset_ns,
            ..
        } => {
            // Counts and bytes are kept per bucket; absence and unwrapped values are
            // evaluated in full.
            if *offset_ns != 0 || *func == RangeFn::AbsentOverTime || func.unwraps() {
                return false;
            }
            out.push((*func, log.clone(), *range_ns));
            true
        }
        Expr::Agg { inner, .. } | Expr::Neg(inner) => collect(inner, out),
        Expr::Binary { lhs, rhs, .. } => collect(lhs, out) && collect(rhs, out),
        Expr::Number(_) | Expr::Vector(_) => true,
    }
}

impl RuleState {
    /// The state for `expr`, or `None` when it cannot be evaluated incrementally.
    pub fn new(expr: &Expr, max_series: usize) -> Option<RuleState> {
        let mut found = Vec::new();
        if !collect(expr, &mut found) || found.is_empty() {
            return None;
        }
        Some(RuleState {
            leaves: found
                .into_iter()
                .map(|(func, log, range_ns)| Leaf {
                    pipeline: Pipeline::new(&log),
                    func,
                    log,
                    range_ns,
                    width: width(range_ns),
                    series: HashMap::new(),
                    error: None,
                })
                .collect(),
            seeded_id: 0,
            max_series,
        })
    }

    /// The stream selectors of the leaves.
    pub fn selectors(&self) -> impl Iterator<Item = &[heimdall_logql::Matcher]> {
        self.leaves.iter().map(|l| l.log.matchers.as_slice())
    }

    /// Fills the buckets from storage (in the caller's read transaction) and records
    /// the highest row id they include.
    ///
    /// # Errors
    /// [`Error`] from the range queries.
    pub fn seed(
        &mut self,
        src: &Source<'_>,
        now: i64,
        max_id: i64,
        deadline: Option<Instant>,
        limits: Limits,
    ) -> Result<(), Error> {
        for leaf in &mut self.leaves {
            let w = leaf.width;
            let end = now.div_euclid(w) * w + w;
            let start = end - leaf.range_ns - w;
            let req = EvalRequest {
                start_ns: start,
                end_ns: end,
                step_ns: w,
                deadline,
                limits,
            };
            leaf.series.clear();
            leaf.error = None;
            let run = |func| -> Result<Vec<Series>, Error> {
                let e = Expr::Range {
                    func,
                    log: leaf.log.clone(),
                    range_ns: w,
                    offset_ns: 0,
                    grouping: None,
                    param: None,
                };
                match evaluate(src, &e, req)?.0 {
                    Value::Vector(v) => Ok(v),
                    Value::Scalar(_) => Ok(Vec::new()),
                }
            };
            let counts = run(RangeFn::CountOverTime)?;
            let bytes: HashMap<Labels, Vec<f64>> =
                if matches!(leaf.func, RangeFn::BytesOverTime | RangeFn::BytesRate) {
                    run(RangeFn::BytesOverTime)?
                        .into_iter()
                        .map(|s| (s.labels, s.values))
                        .collect()
                } else {
                    HashMap::new()
                };
            for s in counts {
                let b = bytes.get(&s.labels);
                let m = leaf.series.entry(s.labels.clone()).or_default();
                for (i, c) in s.values.iter().enumerate() {
                    if c.is_nan() || *c == 0.0 {
                        continue;
                    }
                    let by = b
                        .and_then(|v| v.get(i))
                        .copied()
                        .filter(|x| !x.is_nan())
                        .unwrap_or(0.0);
                    m.insert(start + i as i64 * w, (*c, by));
                }
            }
        }
        self.seeded_id = max_id;
        Ok(())
    }

    /// Adds rows of one stream stored after the seed (rows at or below `seeded_id`,
    /// which the seed counted, are skipped; the caller feeds each row once).
    pub fn feed(&mut self, stream: &Labels, rows: &[&(i64, Row)]) {
        for leaf in &mut self.leaves {
            if !leaf
                .log
                .matchers
                .iter()
                .all(|m| m.matches(stream.get(&m.name)))
            {
                continue;
            }
            for (id, row) in rows.iter().map(|r| (&r.0, &r.1)) {
                if *id <= self.seeded_id {
                    continue;
                }
                let Some(out) =
                    leaf.pipeline
                        .process(stream, &row.metadata, row.level, row.flags, &row.line)
                else {
                    continue;
                };
                let labels = match out.labels {
                    None => base_labels(stream, &row.metadata, row.level, row.flags),
                    Some(l) => {
                        if let Some(kind) = l.get(ERROR_LABEL) {
                            leaf.error = Some(format!(
                                "pipeline error: {kind} on a line of {stream}; add `| drop __error__` or `| __error__=\"\"` to skip such lines"
                            ));
                            continue;
                        }
                        l
                    }
                };
                if !leaf.series.contains_key(&labels) && leaf.series.len() >= self.max_series {
                    leaf.error = Some(format!(
                        "more than {} series; narrow the selector or aggregate with sum by (…)",
                        self.max_series
                    ));
                    continue;
                }
                let w = leaf.width;
                // The bucket ending at or after the line's time: (end - w, end].
                let end = row.ts.div_euclid(w) * w + if row.ts.rem_euclid(w) == 0 { 0 } else { w };
                let cell = leaf
                    .series
                    .entry(labels)
                    .or_default()
                    .entry(end)
                    .or_insert((0.0, 0.0));
                cell.0 += 1.0;
                cell.1 += out.line.len() as f64;
            }
        }
    }

    /// Drops buckets that have left every window at `now`.
    pub fn expire(&mut self, now: i64) {
        for leaf in &mut self.leaves {
            let cut = now - leaf.range_ns;
            leaf.series.retain(|_, m| {
                *m = m.split_off(&(cut + 1));
                !m.is_empty()
            });
        }
    }

    /// Series held, over all leaves.
    pub fn series(&self) -> usize {
        self.leaves.iter().map(|l| l.series.len()).sum()
    }

    /// Evaluates the rule's expression at `now` on the buckets.
    ///
    /// # Errors
    /// A pipeline error met while feeding, or the expression's own errors.
    pub fn evaluate(
        &self,
        src: &Source<'_>,
        expr: &Expr,
        now: i64,
        limits: Limits,
    ) -> Result<Value, Error> {
        if let Some(e) = self.leaves.iter().find_map(|l| l.error.clone()) {
            return Err(Error::Eval(e));
        }
        let req = EvalRequest {
            start_ns: now,
            end_ns: now,
            step_ns: 1,
            deadline: None,
            limits,
        };
        heimdall_query::eval::evaluate_with(src, expr, req, self).map(|(v, _)| v)
    }
}

impl Leaves for RuleState {
    fn range(&self, index: usize, at: i64) -> Option<Vec<Series>> {
        // `query::eval` visits range functions in the order `collect` found them.
        let leaf = self.leaves.get(index)?;
        let (func, range_ns) = (leaf.func, leaf.range_ns);
        let secs = range_ns as f64 / 1e9;
        let mut out: Vec<Series> = leaf
            .series
            .iter()
            .filter_map(|(labels, m)| {
                let (c, b) = m
                    .range(at - range_ns + 1..)
                    .filter(|(end, _)| **end - leaf.width < at)
                    .fold((0.0, 0.0), |acc, (_, v)| (acc.0 + v.0, acc.1 + v.1));
                if c == 0.0 {
                    return None;
                }
                let v = match func {
                    RangeFn::CountOverTime => c,
                    RangeFn::Rate => c / secs,
                    RangeFn::BytesOverTime => b,
                    RangeFn::BytesRate => b / secs,
                    _ => return None,
                };
                Some(Series {
                    labels: labels.clone(),
                    values: vec![v],
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use heimdall_common::record::{Level, LogRecord};
    use heimdall_common::wire::BatchContent;
    use heimdall_logql::{parse, Query};
    use heimdall_store::hot::{self, HotStore};

    const S: i64 = 1_000_000_000;

    fn write(store: &HotStore, rt: &tokio::runtime::Runtime, lines: &[(usize, i64, &str)]) {
        let streams = vec![
            Labels::new([("app", "x"), ("host", "a")]),
            Labels::new([("app", "x"), ("host", "b")]),
        ];
        let c = BatchContent {
            streams,
            records: lines
                .iter()
                .map(|(s, ts, l)| LogRecord {
                    stream: *s as u32,
                    time_ns: *ts,
                    observed_ns: *ts,
                    level: if l.contains("err") {
                        Level::Error
                    } else {
                        Level::Info
                    },
                    template_id: 0,
                    flags: 0,
                    redacted: 0,
                    line: Bytes::from(l.to_string()),
                    metadata: Default::default(),
                })
                .collect(),
            ..Default::default()
        };
        rt.block_on(store.write_unidentified(c)).expect("write");
    }

    /// Incremental values equal a full evaluation, before and after new lines arrive,
    /// at instants on the bucket grid (elsewhere a value may count up to one bucket
    /// more at the window's old edge).
    #[test]
    fn incremental_values_equal_full_evaluation() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hot.db");
        let store = HotStore::open(&path, 10_000).expect("open");
        let now = heimdall_common::record::now_ns() / S * S;
        write(
            &store,
            &rt,
            &[
                (0, now - 50 * S + S / 3, "err one"),
                (1, now - 40 * S + S / 3, "ok"),
                (1, now - 30 * S + S / 3, "err two"),
                (0, now - 20 * S + S / 3, "err three"),
            ],
        );
        let conn = hot::open_reader(&path).expect("reader");
        for q in [
            r#"sum by (host) (count_over_time({app="x"} |= "err" [1m])) > 0"#,
            r#"rate({app="x"}[2m])"#,
            r#"sum(bytes_over_time({app="x"} | logfmt [1m])) + 1"#,
            r#"topk(1, sum by (host, level) (count_over_time({app="x"}[90s])))"#,
        ] {
            let Query::Metric(expr) = parse(q).expect("parses") else {
                panic!("metric")
            };
            let mut st = RuleState::new(&expr, 1000).expect("incremental");
            let src = Source::hot(&conn);
            let max = hot::max_row_id(&conn).expect("max");
            st.seed(&src, now, max, None, Limits::default())
                .expect("seed");
            write(
                &store,
                &rt,
                &[
                    (1, now - 10 * S + S / 3, "err four"),
                    (0, now - 5 * S + S / 3, "fine"),
                    (1, now - 3 * S + S / 3, "err five"),
                ],
            );
            let rows = hot::rows_after(&conn, &[1, 2], st.seeded_id, 1000).expect("rows");
            let streams: HashMap<i64, Labels> = hot::load_streams(&conn)
                .expect("streams")
                .into_iter()
                .collect();
            for sid in [1, 2] {
                let rs: Vec<&(i64, Row)> = rows.iter().filter(|r| r.1.stream_id == sid).collect();
                st.feed(&streams[&sid], &rs);
            }
            let at = now;
            let inc = st
                .evaluate(&src, &expr, at, Limits::default())
                .expect("incremental value");
            let full = evaluate(
                &src,
                &expr,
                EvalRequest {
                    start_ns: at,
                    end_ns: at,
                    step_ns: 1,
                    deadline: None,
                    limits: Limits::default(),
                },
            )
            .expect("full")
            .0;
            assert_eq!(inc, full, "{q}");
            assert!(
                matches!(&inc, Value::Vector(v) if !v.is_empty()),
                "{q}: {inc:?}"
            );
            // Later, the old lines leave the window in both.
            let later = now + 100 * S;
            st.expire(later);
            let inc = st
                .evaluate(&src, &expr, later, Limits::default())
                .expect("later");
            let full = evaluate(
                &src,
                &expr,
                EvalRequest {
                    start_ns: later,
                    end_ns: later,
                    step_ns: 1,
                    deadline: None,
                    limits: Limits::default(),
                },
            )
            .expect("full")
            .0;
            assert_eq!(inc, full, "{q} later");
        }
    }
}

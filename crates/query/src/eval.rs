//! Evaluates metric queries at a series of steps (`query_range`) or at one instant
//! (`query`).
//!
//! A range function over a log query is computed in one pass over the lines of
//! `(start - range, end]`: each line adds to every step whose window `(t - range, t]`
//! holds it. Series are keyed by their labels after the pipeline (by stream and level
//! when the pipeline only filters lines, so no label set is built per line). Where the
//! agents' pre-aggregates answer the question (a selector with no parser or filter,
//! range and steps on the agents' window grid, aggregates covering the range), counts
//! and bytes come from them instead of the lines; this is what makes day-long volume
//! queries cheap, and exact for streams shipped sampled or as aggregates only.
//! Aggregations, `topk`/`bottomk` and binary operators then work step by step.
//!
//! Memory is bounded by [`Limits`]: series and points held at once.

use super::exec::{Error, Order, Source};
use super::pipeline::{base_labels, Pipeline, ERROR_LABEL};
use heimdall_common::record::{Labels, Level};
use heimdall_logql::{AggOp, BinOp, CmpOp, Expr, Grouping, LogQuery, MatchOp, RangeFn, Stage};
use std::collections::HashMap;
use std::time::Instant;

/// Bounds on one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most series any step of the evaluation holds.
    pub max_series: usize,
    /// Most points (series × steps) held at once.
    pub max_points: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_series: 50_000,
            max_points: 20_000_000,
        }
    }
}

/// When and how to evaluate.
#[derive(Clone, Copy, Debug)]
pub struct EvalRequest {
    /// First step, ns.
    pub start_ns: i64,
    /// Last step (inclusive), ns.
    pub end_ns: i64,
    /// Step, ns; ignored when `start_ns == end_ns`.
    pub step_ns: i64,
    pub deadline: Option<Instant>,
    pub limits: Limits,
}

impl EvalRequest {
    fn steps(&self) -> usize {
        if self.end_ns <= self.start_ns {
            1
        } else {
            ((self.end_ns - self.start_ns) / self.step_ns.max(1)) as usize + 1
        }
    }

    fn time(&self, i: usize) -> i64 {
        self.start_ns + i as i64 * self.step_ns
    }
}

/// One series: its labels and a value per step (`NaN` where it has none).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub values: Vec<f64>,
}

/// The result of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number, the same at every step.
    Scalar(f64),
    /// Series with a value per step.
    Vector(Vec<Series>),
}

/// What an evaluation read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub lines: u64,
    pub bytes: u64,
    /// Aggregate rows read instead of lines.
    pub aggregate_rows: u64,
    /// What the scans read and skipped.
    pub scan: heimdall_store::read::ScanCounts,
}

struct Ctx<'a, 'b> {
    src: &'a Source<'b>,
    req: EvalRequest,
    steps: usize,
    stats: Stats,
    leaves: Option<&'a dyn Leaves>,
    /// Range functions evaluated so far (the index passed to [`Leaves::range`]).
    leaf_no: usize,
    /// The labels the aggregation directly around the range function being evaluated
    /// groups by (`sum by (level) (…)`: `level`; `sum (…)`: none), when it is `by`.
    group_by: Option<Vec<String>>,
}

/// Values of range functions kept elsewhere (alert rules evaluated incrementally).
pub trait Leaves {
    /// The value at instant `at` of the `index`-th range function of the expression
    /// (in evaluation order: operands left to right, inner before outer), or `None` to
    /// compute it from storage.
    fn range(&self, index: usize, at: i64) -> Option<Vec<Series>>;
}

/// Evaluates `expr`.
///
/// # Errors
/// [`Error`]: storage, timeout, limits, or a pipeline error on a line (`__error__`).
pub fn evaluate(src: &Source<'_>, expr: &Expr, req: EvalRequest) -> Result<(Value, Stats), Error> {
    let mut cx = Ctx {
        src,
        req,
        steps: req.steps(),
        stats: Stats::default(),
        leaves: None,
        leaf_no: 0,
        group_by: None,
    };
    let v = cx.eval(expr)?;
    cx.stats.scan = src.scanned();
    Ok((v, cx.stats))
}

/// As [`evaluate`], at one instant, with range functions answered by `leaves` where
/// it can.
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_with(
    src: &Source<'_>,
    expr: &Expr,
    req: EvalRequest,
    leaves: &dyn Leaves,
) -> Result<(Value, Stats), Error> {
    let mut cx = Ctx {
        src,
        req,
        steps: req.steps(),
        stats: Stats::default(),
        leaves: Some(leaves),
        leaf_no: 0,
        group_by: None,
    };
    let v = cx.eval(expr)?;
    cx.stats.scan = src.scanned();
    Ok((v, cx.stats))
}

fn check_points(limits: Limits, steps: usize, series: usize) -> Result<(), Error> {
    if series > limits.max_series {
        return Err(Error::Limit(format!(
            "the query would make more than {} series; narrow the selector or aggregate with sum by (…)",
            limits.max_series
        )));
    }
    if series.saturating_mul(steps) > limits.max_points {
        return Err(Error::Limit(format!(
            "the query would hold more than {} points; increase the step or shorten the range",
            limits.max_points
        )));
    }
    Ok(())
}

impl Ctx<'_, '_> {
    fn eval(&mut self, e: &Expr) -> Result<Value, Error> {
        match e {
            Expr::Number(n) => Ok(Value::Scalar(*n)),
            Expr::Vector(n) => Ok(Value::Vector(vec![Series {
                labels: Labels::default(),
                values: vec![*n; self.steps],
            }])),
            Expr::Neg(inner) => Ok(match self.eval(inner)? {
                Value::Scalar(n) => Value::Scalar(-n),
                Value::Vector(mut v) => {
                    for s in &mut v {
                        s.values.iter_mut().for_each(|x| *x = -*x);
                    }
                    Value::Vector(v)
                }
            }),
            Expr::Range {
                func,
                log,
                range_ns,
                offset_ns,
                grouping,
                param,
            } => {
                let i = self.leaf_no;
                self.leaf_no += 1;
                if let Some(v) = self.leaves.and_then(|l| l.range(i, self.req.start_ns)) {
                    return Ok(Value::Vector(v));
                }
                if func.unwraps() {
                    return self
                        .unwrapped(*func, log, *range_ns, *offset_ns, grouping.as_ref(), *param)
                        .map(Value::Vector);
                }
                self.range(*func, log, *range_ns, *offset_ns)
                    .map(Value::Vector)
            }
            Expr::Agg {
                op,
                grouping,
                param,
                inner,
            } => {
                // Only for `sum` (other aggregations see how many series there are)
                // of a range function directly inside (through a binary operator,
                // series are matched on all their labels before this grouping applies).
                self.group_by = match (grouping, inner.as_ref()) {
                    _ if *op != AggOp::Sum => None,
                    (_, e) if !matches!(e, Expr::Range { .. }) => None,
                    (None, _) => Some(Vec::new()),
                    (Some(g), _) if !g.without => Some(g.labels.clone()),
                    (Some(_), _) => None,
                };
                let v = self.eval(inner);
                self.group_by = None;
                let v = match v? {
                    Value::Vector(v) => v,
                    Value::Scalar(_) => {
                        return Err(Error::Eval(
                            "aggregations take a vector, not a number (use vector(n))".into(),
                        ))
                    }
                };
                Ok(Value::Vector(self.aggregate(
                    *op,
                    grouping.as_ref(),
                    *param,
                    v,
                )))
            }
            Expr::Binary {
                op,
                return_bool,
                lhs,
                rhs,
            } => {
                let l = self.eval(lhs)?;
                let r = self.eval(rhs)?;
                binary(*op, *return_bool, l, r)
            }
        }
    }

    /// A range function: one series per label set, a value per step.
    fn range(
        &mut self,
        func: RangeFn,
        log: &LogQuery,
        range_ns: i64,
        offset_ns: i64,
    ) -> Result<Vec<Series>, Error> {
        let streams = self.src.streams(&log.matchers)?;
        let steps = self.steps;
        let req = self.req;
        let (t0, step) = (req.start_ns, req.step_ns.max(1));
        // Lines in (first window start, last step], shifted by the offset.
        let scan_start = t0 - range_ns - offset_ns + 1;
        let scan_end = req.end_ns - offset_ns + 1;
        let want_bytes = matches!(func, RangeFn::BytesOverTime | RangeFn::BytesRate);

        // Series are built as (count, bytes) cells per step.
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut fast: HashMap<(i64, u8), usize> = HashMap::new();
        let mut cells: Vec<(Labels, Vec<f64>, Vec<f64>)> = Vec::new();
        let mut new_series = |labels: Labels,
                              cells: &mut Vec<(Labels, Vec<f64>, Vec<f64>)>|
         -> Result<usize, Error> {
            if let Some(&i) = index.get(&labels) {
                return Ok(i);
            }
            check_points(req.limits, steps, cells.len() + 1)?;
            cells.push((labels.clone(), vec![0.0; steps], vec![0.0; steps]));
            index.insert(labels, cells.len() - 1);
            Ok(cells.len() - 1)
        };
        // Adds a sample at `ts` (already shifted by the offset) to the steps it falls in.
        let add_to = |counts: &mut [f64], sizes: &mut [f64], ts: i64, count: f64, bytes: f64| {
            // Steps t with t - range < ts <= t.
            let lo = (ts - t0 + step - 1).div_euclid(step).max(0);
            let hi = (ts + range_ns - 1 - t0)
                .div_euclid(step)
                .min(steps as i64 - 1);
            for i in lo..=hi {
                counts[i as usize] += count;
                sizes[i as usize] += bytes;
            }
        };
        let add = |cell: &mut (Labels, Vec<f64>, Vec<f64>), ts: i64, count: f64, bytes: f64| {
            add_to(&mut cell.1, &mut cell.2, ts, count, bytes);
        };

        // Counting without reading lines: the per-second counts of stored lines, or the
        // agents' pre-aggregates for streams whose agents did not ship every line (only
        // those count them all) and for streams the per-second counts do not cover.
        const SEC: i64 = 1_000_000_000;
        let whole_seconds = range_ns % SEC == 0
            && (steps == 1 || step % SEC == 0)
            && (t0 - offset_ns).rem_euclid(SEC) == 0;
        let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
        let volume = if whole_seconds && aggregates_answer(log) {
            self.src.volume_covered(&ids)?
        } else {
            Default::default()
        };
        let (from_aggregates, from_lines): (Vec<_>, Vec<_>) = if aggregates_answer(log) {
            let window_ok = |w: i64| {
                w > 0 && range_ns % w == 0 && step % w == 0 && (t0 - offset_ns).rem_euclid(w) == 0
            };
            let cover = self.src.aggregate_coverage(&ids, scan_start)?;
            let partial = self.src.aggregate_partial(&ids)?;
            streams.iter().cloned().partition(|(id, _)| {
                cover.get(id).is_some_and(|w| window_ok(*w))
                    && (partial.contains(id) || !volume.contains(id))
            })
        } else {
            (Vec::new(), streams.clone())
        };

        // The rest from the per-second counts.
        let (from_volume, mut from_lines): (Vec<_>, Vec<_>) = from_lines
            .into_iter()
            .partition(|(id, _)| volume.contains(id));
        if !from_volume.is_empty() {
            let labels: HashMap<i64, &Labels> =
                from_volume.iter().map(|(id, l)| (*id, l)).collect();
            let ids: Vec<i64> = from_volume.iter().map(|(id, _)| *id).collect();
            // Lines with structured metadata have it in their labels: their counts stand
            // for them only under an aggregation that groups it away.
            let group_by = self.group_by.clone();
            let safe = |sid: i64| {
                group_by.as_ref().is_some_and(|g| {
                    g.iter().all(|n| {
                        n == "level" || n == "detected_level" || labels[&sid].get(n).is_some()
                    })
                })
            };
            // Minutes come stream by stream. A stream whose labels hold what the
            // aggregation keeps is counted as its minutes come; another one's minutes
            // are kept until the next stream starts, then counted, or left to be read
            // from lines when some of them carry metadata the aggregation keeps apart.
            let mut st = VolumeCount {
                by_key: HashMap::new(),
                last_key: None,
                steps: MinuteSteps::new(t0, step, range_ns, offset_ns, steps),
                pending: Vec::new(),
                blobs: Vec::new(),
                unsafe_streams: Default::default(),
                current: None,
                rows: 0,
            };
            type NewSeries<'n> = dyn FnMut(Labels, &mut Vec<(Labels, Vec<f64>, Vec<f64>)>) -> Result<usize, Error>
                + 'n;
            let one = |st: &mut VolumeCount,
                       cells: &mut Vec<(Labels, Vec<f64>, Vec<f64>)>,
                       new_series: &mut NewSeries<'_>,
                       m: heimdall_store::volume::Minute<'_>|
             -> Result<(), Error> {
                st.rows += 1;
                let k = m.key;
                let key = (k.stream_id, k.level, k.flags);
                let i = match st.last_key {
                    Some((lk, i)) if lk == key => i,
                    _ => match st.by_key.get(&key) {
                        Some(i) => *i,
                        None => {
                            let lv = Level::from_u8(k.level).unwrap_or_default();
                            let i = new_series(
                                base_labels(labels[&k.stream_id], &Labels::default(), lv, k.flags),
                                cells,
                            )?;
                            st.by_key.insert(key, i);
                            i
                        }
                    },
                };
                st.last_key = Some((key, i));
                match st.steps.get(k.minute) {
                    Some((lo, hi)) => {
                        let (c, b) = m.totals();
                        let cell = &mut cells[i];
                        for j in lo..=hi {
                            cell.1[j] += c as f64;
                            cell.2[j] += b as f64;
                        }
                    }
                    None => {
                        let cell = &mut cells[i];
                        for (sec, count, bytes) in heimdall_store::volume::seconds(m.seconds) {
                            let (lo, hi) = st.steps.second(k.minute, sec);
                            for j in lo..=hi {
                                cell.1[j] += count as f64;
                                cell.2[j] += bytes as f64;
                            }
                        }
                    }
                }
                Ok(())
            };
            // Counts a kept stream's minutes, or leaves the stream to its lines.
            let drain = |st: &mut VolumeCount,
                         cells: &mut Vec<(Labels, Vec<f64>, Vec<f64>)>,
                         new_series: &mut NewSeries<'_>|
             -> Result<(), Error> {
                let pending = std::mem::take(&mut st.pending);
                let blobs = std::mem::take(&mut st.blobs);
                if let Some((first, ..)) = pending.first() {
                    if pending.iter().any(|(k, ..)| k.meta) {
                        st.unsafe_streams.insert(first.stream_id);
                    } else {
                        for (key, totals, r) in &pending {
                            let m = heimdall_store::volume::Minute {
                                key: *key,
                                totals: *totals,
                                seconds: &blobs[r.clone()],
                            };
                            one(st, cells, new_series, m)?;
                        }
                    }
                }
                st.pending = pending;
                st.pending.clear();
                st.blobs = blobs;
                st.blobs.clear();
                Ok(())
            };
            let mut failed: Option<Error> = None;
            self.src.per_second(
                &ids,
                t0 - range_ns - offset_ns,
                req.end_ns - offset_ns,
                |m| {
                    if failed.is_some() {
                        return;
                    }
                    let sid = m.key.stream_id;
                    let res = (|| {
                        let safe_here = match st.current {
                            Some((s, safe_here)) if s == sid => safe_here,
                            _ => {
                                drain(&mut st, &mut cells, &mut new_series)?;
                                let safe_here = safe(sid);
                                st.current = Some((sid, safe_here));
                                safe_here
                            }
                        };
                        if safe_here {
                            return one(&mut st, &mut cells, &mut new_series, m);
                        }
                        let at = st.blobs.len();
                        st.blobs.extend_from_slice(m.seconds);
                        st.pending.push((m.key, m.totals, at..st.blobs.len()));
                        Ok(())
                    })();
                    if let Err(e) = res {
                        failed = Some(e);
                    }
                },
            )?;
            if let Some(e) = failed {
                return Err(e);
            }
            drain(&mut st, &mut cells, &mut new_series)?;
            self.stats.aggregate_rows += st.rows;
            let unsafe_streams = st.unsafe_streams;
            from_lines.extend(
                from_volume
                    .iter()
                    .filter(|(id, _)| unsafe_streams.contains(id))
                    .cloned(),
            );
        }

        if !from_aggregates.is_empty() {
            let labels: HashMap<i64, &Labels> =
                from_aggregates.iter().map(|(id, l)| (*id, l)).collect();
            let ids: Vec<i64> = from_aggregates.iter().map(|(id, _)| *id).collect();
            let mut failed: Option<Error> = None;
            let mut rows = 0u64;
            // A window [w, w + W) counts as a sample at its last instant w + W - 1, so
            // for steps and ranges on the window grid it counts at t exactly when
            // [w, w + W) lies within [t - range, t). (Lines count in (t - range, t];
            // the two differ only for lines exactly on a window boundary.)
            self.src.aggregates(
                &ids,
                scan_start - 1,
                scan_end - 1,
                |sid, w, win, level, count, bytes| {
                    rows += 1;
                    if failed.is_some() {
                        return;
                    }
                    let key = (sid, level);
                    let i = match fast.get(&key) {
                        Some(i) => *i,
                        None => {
                            let lv = Level::from_u8(level).unwrap_or_default();
                            match new_series(
                                base_labels(labels[&sid], &Labels::default(), lv, 0),
                                &mut cells,
                            ) {
                                Ok(i) => {
                                    fast.insert(key, i);
                                    i
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    return;
                                }
                            }
                        }
                    };
                    add(
                        &mut cells[i],
                        w + win - 1 + offset_ns,
                        count as f64,
                        bytes as f64,
                    );
                },
            )?;
            self.stats.aggregate_rows += rows;
            if let Some(e) = failed {
                return Err(e);
            }
        }

        if !from_lines.is_empty() && log.only_line_filters() {
            // Only line filters: the labels are the lines' base labels, so every core
            // counts the lines it reads into its own series, keyed by stream, level
            // and flags (by all the labels for lines with structured metadata), and
            // no line is copied.
            let labels: HashMap<i64, &Labels> = from_lines.iter().map(|(id, l)| (*id, l)).collect();
            let ids: Vec<i64> = from_lines.iter().map(|(id, _)| *id).collect();
            let filters: Vec<_> = log.leading_filters().collect();
            let limits = req.limits;
            let (accs, complete) = self.src.tally(
                &ids,
                scan_start,
                scan_end,
                &filters,
                want_bytes,
                req.deadline,
                LineTally::default,
                |acc, row| {
                    acc.lines += 1;
                    acc.bytes += row.line.len() as u64;
                    let cell = if row.metadata.is_empty() {
                        let key = (row.stream_id, row.level as u8, row.flags);
                        let i = match acc.last {
                            Some((k, i)) if k == key => i,
                            _ => {
                                let i = match acc.base.get(&key) {
                                    Some(i) => *i,
                                    None => {
                                        check_points(
                                            limits,
                                            steps,
                                            acc.base.len() + acc.meta.len() + 1,
                                        )?;
                                        acc.cells.push((vec![0.0; steps], vec![0.0; steps]));
                                        acc.base.insert(key, acc.cells.len() - 1);
                                        acc.cells.len() - 1
                                    }
                                };
                                acc.last = Some((key, i));
                                i
                            }
                        };
                        &mut acc.cells[i]
                    } else {
                        let l = base_labels(
                            labels[&row.stream_id],
                            &row.metadata,
                            row.level,
                            row.flags,
                        );
                        if !acc.meta.contains_key(&l) {
                            check_points(limits, steps, acc.base.len() + acc.meta.len() + 1)?;
                        }
                        acc.meta
                            .entry(l)
                            .or_insert_with(|| (vec![0.0; steps], vec![0.0; steps]))
                    };
                    add_to(
                        &mut cell.0,
                        &mut cell.1,
                        row.ts + offset_ns,
                        1.0,
                        row.line.len() as f64,
                    );
                    Ok(())
                },
            )?;
            if !complete {
                return Err(Error::Timeout);
            }
            for acc in accs {
                self.stats.lines += acc.lines;
                self.stats.bytes += acc.bytes;
                let mut cells_of = acc.cells.into_iter().map(Some).collect::<Vec<_>>();
                let base = acc.base.into_iter().map(|((sid, level, flags), i)| {
                    let lv = Level::from_u8(level).unwrap_or_default();
                    let c = cells_of[i].take().unwrap_or_default();
                    (base_labels(labels[&sid], &Labels::default(), lv, flags), c)
                });
                for (l, (counts, sizes)) in base.chain(acc.meta) {
                    let i = new_series(l, &mut cells)?;
                    let cell = &mut cells[i];
                    cell.1.iter_mut().zip(&counts).for_each(|(a, b)| *a += b);
                    cell.2.iter_mut().zip(&sizes).for_each(|(a, b)| *a += b);
                }
            }
        } else if !from_lines.is_empty() {
            let pipeline = Pipeline::new(log);
            let labels: HashMap<i64, &Labels> = from_lines.iter().map(|(id, l)| (*id, l)).collect();
            let ids: Vec<i64> = from_lines.iter().map(|(id, _)| *id).collect();
            let mut failed: Option<Error> = None;
            let (mut lines, mut bytes_read) = (0u64, 0u64);
            let filters: Vec<_> = log.leading_filters().collect();
            let complete = self.src.scan(&ids, scan_start, scan_end, Order::Any, &filters, req.deadline, |row| {
                lines += 1;
                bytes_read += row.line.len() as u64;
                let stream = labels[&row.stream_id];
                let Some(out) = pipeline.process(stream, &row.metadata, row.level, row.flags, &row.line) else {
                    return true;
                };
                let i = match out.labels {
                    None => {
                        let key = (row.stream_id, row.level as u8);
                        match fast.get(&key) {
                            Some(i) => *i,
                            None => match new_series(base_labels(stream, &row.metadata, row.level, row.flags), &mut cells) {
                                Ok(i) => {
                                    fast.insert(key, i);
                                    i
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    return false;
                                }
                            },
                        }
                    }
                    Some(l) => {
                        if let Some(kind) = l.get(ERROR_LABEL) {
                            failed = Some(Error::Eval(format!(
                                "pipeline error: {kind} on a line of {stream}; add `| drop __error__` or `| __error__=\"\"` to skip such lines"
                            )));
                            return false;
                        }
                        match new_series(l, &mut cells) {
                            Ok(i) => i,
                            Err(e) => {
                                failed = Some(e);
                                return false;
                            }
                        }
                    }
                };
                add(&mut cells[i], row.ts + offset_ns, 1.0, out.line.len() as f64);
                true
            })?;
            self.stats.lines += lines;
            self.stats.bytes += bytes_read;
            if let Some(e) = failed {
                return Err(e);
            }
            if !complete {
                return Err(Error::Timeout);
            }
        }

        let secs = range_ns as f64 / 1e9;
        if func == RangeFn::AbsentOverTime {
            let mut values = vec![f64::NAN; steps];
            for (i, v) in values.iter_mut().enumerate() {
                if !cells.iter().any(|c| c.1[i] > 0.0) {
                    *v = 1.0;
                }
            }
            let labels = Labels::new(
                log.matchers
                    .iter()
                    .filter(|m| m.op == MatchOp::Eq)
                    .map(|m| (m.name.clone(), m.value.clone())),
            );
            return Ok(if values.iter().all(|v| v.is_nan()) {
                Vec::new()
            } else {
                vec![Series { labels, values }]
            });
        }
        let mut out: Vec<Series> = cells
            .into_iter()
            .map(|(labels, counts, bytes)| {
                let values = counts
                    .iter()
                    .zip(&bytes)
                    .map(|(&c, &b)| {
                        if c == 0.0 {
                            return f64::NAN;
                        }
                        let v = if want_bytes { b } else { c };
                        match func {
                            RangeFn::Rate | RangeFn::BytesRate => v / secs,
                            _ => v,
                        }
                    })
                    .collect();
                Series { labels, values }
            })
            .collect();
        out.retain(|s| s.values.iter().any(|v| !v.is_nan()));
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// A range function over unwrapped values: the samples each series has in
    /// `(t - range, t]`, aggregated per step.
    fn unwrapped(
        &mut self,
        func: RangeFn,
        log: &LogQuery,
        range_ns: i64,
        offset_ns: i64,
        grouping: Option<&Grouping>,
        param: Option<f64>,
    ) -> Result<Vec<Series>, Error> {
        let streams = self.src.streams(&log.matchers)?;
        let (steps, req) = (self.steps, self.req);
        let (t0, step) = (req.start_ns, req.step_ns.max(1));
        let scan_start = t0 - range_ns - offset_ns + 1;
        let scan_end = req.end_ns - offset_ns + 1;
        let pipeline = Pipeline::new(log);
        let labels: HashMap<i64, &Labels> = streams.iter().map(|(id, l)| (*id, l)).collect();
        let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
        let filters: Vec<_> = log.leading_filters().collect();
        let key = |l: Labels| -> Labels {
            match grouping {
                None => l,
                Some(g) if g.without => {
                    let mut l = l;
                    l.retain(|k, _| !g.labels.iter().any(|n| n == k));
                    l
                }
                Some(g) => Labels::new(
                    g.labels
                        .iter()
                        .filter_map(|n| l.get(n).map(|v| (n.clone(), v.to_owned()))),
                ),
            }
        };
        let mut series: HashMap<Labels, Vec<(i64, i64, f64)>> = HashMap::new();
        let (mut lines, mut bytes, mut samples) = (0u64, 0u64, 0usize);
        let mut failed: Option<Error> = None;
        let complete = self.src.scan(
            &ids,
            scan_start,
            scan_end,
            Order::Any,
            &filters,
            req.deadline,
            |row| {
                lines += 1;
                bytes += row.line.len() as u64;
                let stream = labels[&row.stream_id];
                let Some(out) =
                    pipeline.process(stream, &row.metadata, row.level, row.flags, &row.line)
                else {
                    return true;
                };
                let l = out
                    .labels
                    .unwrap_or_else(|| base_labels(stream, &row.metadata, row.level, row.flags));
                if let Some(kind) = l.get(ERROR_LABEL) {
                    failed = Some(Error::Eval(format!(
                        "pipeline error: {kind} on a line of {stream}; add `| __error__=\"\"` after the unwrap to skip such lines"
                    )));
                    return false;
                }
                let Some(v) = out.value else { return true };
                let k = key(l);
                if !series.contains_key(&k) {
                    if let Err(e) = check_points(req.limits, steps, series.len() + 1) {
                        failed = Some(e);
                        return false;
                    }
                }
                samples += 1;
                if samples > req.limits.max_points {
                    failed = Some(Error::Limit(format!(
                        "the query would hold more than {} samples; shorten the range or filter the lines",
                        req.limits.max_points
                    )));
                    return false;
                }
                series
                    .entry(k)
                    .or_default()
                    .push((row.ts + offset_ns, row.id, v));
                true
            },
        )?;
        self.stats.lines += lines;
        self.stats.bytes += bytes;
        if let Some(e) = failed {
            return Err(e);
        }
        if !complete {
            return Err(Error::Timeout);
        }
        let mut out: Vec<Series> = series
            .into_iter()
            .map(|(labels, mut s)| {
                // In `(ts, id)` order whatever order the scan read the lines in (segments
                // are read in parallel): first, last and float sums do not vary by run.
                s.sort_unstable_by_key(|x| (x.0, x.1));
                let s: Vec<(i64, f64)> = s.into_iter().map(|(t, _, v)| (t, v)).collect();
                let values = (0..steps)
                    .map(|i| {
                        let t = t0 + i as i64 * step;
                        let lo = s.partition_point(|x| x.0 <= t - range_ns);
                        let hi = s.partition_point(|x| x.0 <= t);
                        over_time(func, param, &s[lo..hi])
                    })
                    .collect();
                Series { labels, values }
            })
            .collect();
        out.retain(|s| s.values.iter().any(|v| !v.is_nan()));
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    fn aggregate(
        &mut self,
        op: AggOp,
        grouping: Option<&Grouping>,
        param: Option<f64>,
        input: Vec<Series>,
    ) -> Vec<Series> {
        let key = |l: &Labels| -> Labels {
            match grouping {
                None => Labels::default(),
                Some(g) if g.without => {
                    let mut l = l.clone();
                    l.retain(|k, _| !g.labels.iter().any(|n| n == k));
                    l
                }
                Some(g) => Labels::new(
                    g.labels
                        .iter()
                        .filter_map(|n| l.get(n).map(|v| (n.clone(), v.to_owned()))),
                ),
            }
        };
        let mut groups: Vec<(Labels, Vec<usize>)> = Vec::new();
        let mut gi: HashMap<Labels, usize> = HashMap::new();
        for (i, s) in input.iter().enumerate() {
            let k = key(&s.labels);
            let g = *gi.entry(k.clone()).or_insert_with(|| {
                groups.push((k, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let steps = self.steps;
        if let (AggOp::Topk | AggOp::Bottomk, Some(k)) = (op, param) {
            let k = k as usize;
            let mut keep = vec![vec![false; steps]; input.len()];
            for (_, members) in &groups {
                #[allow(clippy::needless_range_loop)] // t indexes every member's values
                for t in 0..steps {
                    let mut present: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&m| !input[m].values[t].is_nan())
                        .collect();
                    present.sort_by(|&a, &b| {
                        let (x, y) = (input[a].values[t], input[b].values[t]);
                        let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                        if op == AggOp::Topk {
                            o.reverse()
                        } else {
                            o
                        }
                    });
                    for &m in present.iter().take(k) {
                        keep[m][t] = true;
                    }
                }
            }
            let mut out: Vec<Series> = input
                .into_iter()
                .zip(keep)
                .filter_map(|(mut s, keep)| {
                    for (v, k) in s.values.iter_mut().zip(keep) {
                        if !k {
                            *v = f64::NAN;
                        }
                    }
                    s.values.iter().any(|v| !v.is_nan()).then_some(s)
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            return out;
        }
        let mut out: Vec<Series> = groups
            .into_iter()
            .map(|(labels, members)| {
                let values = (0..steps)
                    .map(|t| {
                        let xs: Vec<f64> = members
                            .iter()
                            .map(|&m| input[m].values[t])
                            .filter(|v| !v.is_nan())
                            .collect();
                        if xs.is_empty() {
                            return f64::NAN;
                        }
                        let n = xs.len() as f64;
                        let sum: f64 = xs.iter().sum();
                        match op {
                            AggOp::Sum => sum,
                            AggOp::Avg => sum / n,
                            AggOp::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
                            AggOp::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            AggOp::Count => n,
                            AggOp::Stddev | AggOp::Stdvar => {
                                let mean = sum / n;
                                let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                                if op == AggOp::Stddev {
                                    var.sqrt()
                                } else {
                                    var
                                }
                            }
                            AggOp::Topk | AggOp::Bottomk => f64::NAN,
                        }
                    })
                    .collect();
                Series { labels, values }
            })
            .filter(|s: &Series| s.values.iter().any(|v| !v.is_nan()))
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A minute kept for later: its key, totals and where its seconds are in the blobs.
type PendingMinute = (
    heimdall_store::volume::Key,
    Option<(u64, u64)>,
    std::ops::Range<usize>,
);

/// Per step, the count and bytes of one series.
type StepCells = (Vec<f64>, Vec<f64>);

/// Where a range function counting from per-second line counts stands.
struct VolumeCount {
    /// Series by (stream, level, flags).
    by_key: HashMap<(i64, u8, u8), usize>,
    /// The key counted last and its series: a key's minutes come in runs.
    last_key: Option<((i64, u8, u8), usize)>,
    steps: MinuteSteps,
    /// The minutes of a stream whose metadata may keep it apart, until it ends.
    pending: Vec<PendingMinute>,
    blobs: Vec<u8>,
    /// Streams left to be read from lines.
    unsafe_streams: std::collections::HashSet<i64>,
    /// The stream of the minutes coming, and whether they are counted as they come.
    current: Option<(i64, bool)>,
    /// Minutes counted.
    rows: u64,
}

/// Which steps a minute of per-second counts adds to when all its seconds add to the
/// same ones (a step of whole minutes, or a minute inside a step), remembered per
/// minute in a small direct-mapped cache: every stream has the same minutes, and
/// finding the steps takes divisions.
struct MinuteSteps {
    t0: i64,
    step: i64,
    range_ns: i64,
    offset_ns: i64,
    steps: usize,
    /// (minute, the steps, or `None` when its seconds add to different ones).
    slots: Vec<(i64, Option<(usize, usize)>)>,
    /// For minutes whose seconds add to different steps (the same slots), each
    /// second's: (minute, steps by second).
    #[allow(clippy::type_complexity)]
    seconds: Vec<Option<(i64, Box<[(usize, usize); 61]>)>>,
}

impl MinuteSteps {
    const SLOTS: usize = 4096;

    fn new(t0: i64, step: i64, range_ns: i64, offset_ns: i64, steps: usize) -> MinuteSteps {
        MinuteSteps {
            t0,
            step,
            range_ns,
            offset_ns,
            steps,
            slots: vec![(i64::MIN, None); Self::SLOTS],
            seconds: Vec::new(),
        }
    }

    /// The steps (first, last) second `sec` of `minute` adds to (first > last when
    /// none).
    fn second(&mut self, minute: i64, sec: u8) -> (usize, usize) {
        if self.seconds.is_empty() {
            self.seconds = vec![None; Self::SLOTS];
        }
        let slot = (minute.div_euclid(60_000_000_000) as usize) % Self::SLOTS;
        if self.seconds[slot]
            .as_ref()
            .is_none_or(|(m, _)| *m != minute)
        {
            let (t0, step, steps) = (self.t0, self.step, self.steps as i64);
            let mut table = [(1, 0); 61];
            for (s, e) in table.iter_mut().enumerate() {
                let ts = heimdall_store::volume::instant(minute, s as u8) + self.offset_ns;
                // Steps t with t - range < ts <= t.
                let lo = (ts - t0 + step - 1).div_euclid(step).max(0);
                let hi = (ts + self.range_ns - 1 - t0)
                    .div_euclid(step)
                    .min(steps - 1);
                if lo <= hi {
                    *e = (lo as usize, hi as usize);
                }
            }
            self.seconds[slot] = Some((minute, Box::new(table)));
        }
        self.seconds[slot]
            .as_ref()
            .and_then(|(_, t)| t.get(usize::from(sec)).copied())
            .unwrap_or((1, 0))
    }

    /// The steps (first, last) the whole of `minute` adds to (first > last when none),
    /// or `None` when its seconds add to different steps.
    fn get(&mut self, minute: i64) -> Option<(usize, usize)> {
        let slot = (minute.div_euclid(60_000_000_000) as usize) % Self::SLOTS;
        if self.slots[slot].0 == minute {
            return self.slots[slot].1;
        }
        let (t0, step) = (self.t0, self.step);
        let lo = |ts: i64| (ts - t0 + step - 1).div_euclid(step);
        let hi = |ts: i64| (ts + self.range_ns - 1 - t0).div_euclid(step);
        let first = heimdall_store::volume::instant(minute, 0) + self.offset_ns;
        let last = heimdall_store::volume::instant(minute, 59) + self.offset_ns;
        let v = (lo(first) == lo(last) && hi(first) == hi(last)).then(|| {
            let (a, b) = (lo(first).max(0), hi(first).min(self.steps as i64 - 1));
            // A minute that adds to no step needs no seconds either: (1, 0) is empty.
            if a <= b {
                (a as usize, b as usize)
            } else {
                (1, 0)
            }
        });
        self.slots[slot] = (minute, v);
        v
    }
}

/// One core's counts of the lines it read for a range function whose pipeline is
/// only line filters: per (stream, level, flags), or per label set for lines with
/// structured metadata, the (count, bytes) of each step.
#[derive(Default)]
struct LineTally {
    /// Lines without metadata: the place in `cells` of each (stream, level, flags).
    base: HashMap<(i64, u8, u8), usize>,
    cells: Vec<StepCells>,
    /// The key counted last and its place: a segment's lines come by stream.
    last: Option<((i64, u8, u8), usize)>,
    meta: HashMap<Labels, StepCells>,
    lines: u64,
    bytes: u64,
}

/// An unwrapped range function over the samples of one window (in time order); NaN
/// (no point) when there are none.
fn over_time(func: RangeFn, param: Option<f64>, s: &[(i64, f64)]) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len() as f64;
    let sum: f64 = s.iter().map(|x| x.1).sum();
    let var = || {
        let mean = sum / n;
        s.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n
    };
    match func {
        RangeFn::SumOverTime => sum,
        RangeFn::AvgOverTime => sum / n,
        RangeFn::MinOverTime => s.iter().map(|x| x.1).fold(f64::INFINITY, f64::min),
        RangeFn::MaxOverTime => s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max),
        RangeFn::FirstOverTime => s[0].1,
        RangeFn::LastOverTime => s[s.len() - 1].1,
        RangeFn::StdvarOverTime => var(),
        RangeFn::StddevOverTime => var().sqrt(),
        RangeFn::QuantileOverTime => {
            // As Prometheus: linear between the closest ranks; beyond [0, 1], ±Inf.
            let q = param.unwrap_or(f64::NAN);
            if q.is_nan() {
                return f64::NAN;
            }
            if q < 0.0 {
                return f64::NEG_INFINITY;
            }
            if q > 1.0 {
                return f64::INFINITY;
            }
            let mut v: Vec<f64> = s.iter().map(|x| x.1).collect();
            v.sort_by(f64::total_cmp);
            let rank = q * (n - 1.0);
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let w = rank - rank.floor();
            v[lo] * (1.0 - w) + v[hi] * w
        }
        _ => f64::NAN,
    }
}

/// Whether the agents' pre-aggregates can answer a range function over `log`: a bare
/// selector, or one that only drops error labels (which it cannot have).
fn aggregates_answer(log: &LogQuery) -> bool {
    log.stages.iter().all(|s| match s {
        Stage::Drop(names) => names.iter().all(|n| n.name.starts_with("__error")),
        _ => false,
    })
}

fn arith(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        _ => f64::NAN,
    }
}

/// One step of `a op b` where `a` is a sample: `None` drops it (a false comparison).
fn apply(op: BinOp, return_bool: bool, a: f64, b: f64, keep: f64) -> Option<f64> {
    match op {
        BinOp::Cmp(c) => {
            let holds = cmp(c, a, b);
            if return_bool {
                Some(if holds { 1.0 } else { 0.0 })
            } else {
                holds.then_some(keep)
            }
        }
        _ => Some(arith(op, a, b)),
    }
}

fn cmp(c: CmpOp, a: f64, b: f64) -> bool {
    c.holds(a, b)
}

/// `vector op k` (or `k op vector` when `!vector_left`), sample by sample.
fn with_scalar(
    op: BinOp,
    return_bool: bool,
    mut v: Vec<Series>,
    k: f64,
    vector_left: bool,
) -> Result<Value, Error> {
    if matches!(op, BinOp::And | BinOp::Or | BinOp::Unless) {
        return Err(Error::Eval(
            "`and`, `or` and `unless` need vectors on both sides".into(),
        ));
    }
    for s in &mut v {
        for x in &mut s.values {
            if !x.is_nan() {
                let (a, b) = if vector_left { (*x, k) } else { (k, *x) };
                *x = apply(op, return_bool, a, b, *x).unwrap_or(f64::NAN);
            }
        }
    }
    v.retain(|s| s.values.iter().any(|x| !x.is_nan()));
    Ok(Value::Vector(v))
}

fn binary(op: BinOp, return_bool: bool, l: Value, r: Value) -> Result<Value, Error> {
    let set_op = matches!(op, BinOp::And | BinOp::Or | BinOp::Unless);
    match (l, r) {
        (Value::Scalar(a), Value::Scalar(b)) => {
            if set_op {
                return Err(Error::Eval(
                    "`and`, `or` and `unless` need vectors on both sides".into(),
                ));
            }
            Ok(Value::Scalar(match op {
                BinOp::Cmp(c) => {
                    if cmp(c, a, b) {
                        1.0
                    } else {
                        0.0
                    }
                }
                _ => arith(op, a, b),
            }))
        }
        (Value::Vector(v), Value::Scalar(k)) => with_scalar(op, return_bool, v, k, true),
        (Value::Scalar(k), Value::Vector(v)) => with_scalar(op, return_bool, v, k, false),
        (Value::Vector(l), Value::Vector(r)) => {
            // One-to-one matching on identical label sets.
            let rindex: HashMap<&Labels, &Series> = r.iter().map(|s| (&s.labels, s)).collect();
            let mut out = Vec::new();
            match op {
                BinOp::Or => {
                    let lindex: HashMap<&Labels, &Series> =
                        l.iter().map(|s| (&s.labels, s)).collect();
                    for s in &l {
                        out.push(s.clone());
                    }
                    for s in &r {
                        match lindex.get(&s.labels) {
                            None => out.push(s.clone()),
                            Some(ls) => {
                                // Steps where the left side has no sample take the right's.
                                let values: Vec<f64> = ls
                                    .values
                                    .iter()
                                    .zip(&s.values)
                                    .map(|(a, b)| if a.is_nan() { *b } else { *a })
                                    .collect();
                                if let Some(o) = out.iter_mut().find(|o| o.labels == s.labels) {
                                    o.values = values;
                                }
                            }
                        }
                    }
                }
                BinOp::And | BinOp::Unless => {
                    for s in l {
                        let other = rindex.get(&s.labels);
                        let values: Vec<f64> = s
                            .values
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| {
                                let present = other.is_some_and(|o| !o.values[i].is_nan());
                                if present == (op == BinOp::And) {
                                    a
                                } else {
                                    f64::NAN
                                }
                            })
                            .collect();
                        out.push(Series {
                            labels: s.labels,
                            values,
                        });
                    }
                }
                _ => {
                    for s in l {
                        let Some(o) = rindex.get(&s.labels) else {
                            continue;
                        };
                        let values: Vec<f64> = s
                            .values
                            .iter()
                            .zip(&o.values)
                            .map(|(&a, &b)| {
                                if a.is_nan() || b.is_nan() {
                                    f64::NAN
                                } else {
                                    apply(op, return_bool, a, b, a).unwrap_or(f64::NAN)
                                }
                            })
                            .collect();
                        out.push(Series {
                            labels: s.labels,
                            values,
                        });
                    }
                }
            }
            out.retain(|s| s.values.iter().any(|x| !x.is_nan()));
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(Value::Vector(out))
        }
    }
}

/// The step times of a request.
pub fn step_times(req: &EvalRequest) -> Vec<i64> {
    (0..req.steps()).map(|i| req.time(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use heimdall_common::record::{Aggregate, LogRecord};
    use heimdall_common::wire::BatchContent;
    use heimdall_logql::{parse, Query};
    use heimdall_store::hot::{self, BatchId, HotStore};
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;
    /// A time on the 10 s grid, so the aggregates' windows line up with steps.
    const T0: i64 = 1_700_000_000 * S;

    /// (stream index, offset ns from T0, level, line)
    type RowSpec = (usize, i64, Level, String);

    fn streams() -> Vec<Labels> {
        vec![
            Labels::new([("app", "api"), ("host", "a")]),
            Labels::new([("app", "api"), ("host", "b")]),
            Labels::new([("app", "db"), ("host", "a")]),
        ]
    }

    fn store(rows: &[RowSpec], with_aggregates: bool) -> (tempfile::TempDir, std::path::PathBuf) {
        store_meta(rows, with_aggregates, |_| Labels::default())
    }

    /// A hot store in a new directory holding `content`, written as one batch.
    fn store_content(content: BatchContent) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        let mut s = HotStore::open(&path, 100_000).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(s.write(
            BatchId {
                agent: "t".into(),
                epoch: 1,
                seq: 1,
                floor: 1,
            },
            content,
        ))
        .unwrap();
        s.close();
        (dir, path)
    }

    /// As [`store`], row `i` with structured metadata `meta(i)`.
    fn store_meta(
        rows: &[RowSpec],
        with_aggregates: bool,
        meta: impl Fn(usize) -> Labels,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let mut content = BatchContent {
            streams: streams(),
            ..Default::default()
        };
        let mut aggs: std::collections::BTreeMap<(u32, i64, u8), (u64, u64)> = Default::default();
        for (i, (st, off, level, line)) in rows.iter().enumerate() {
            let ts = T0 + off;
            content.records.push(LogRecord {
                stream: *st as u32,
                time_ns: ts,
                observed_ns: ts,
                level: *level,
                template_id: u64::MAX,
                flags: 0,
                redacted: 0,
                line: Bytes::from(line.clone()),
                metadata: meta(i),
            });
            let e = aggs
                .entry((*st as u32, ts.div_euclid(10 * S) * 10 * S, *level as u8))
                .or_default();
            e.0 += 1;
            e.1 += line.len() as u64;
        }
        if with_aggregates {
            content.aggregates = aggs
                .into_iter()
                .map(|((stream, start_ns, level), (count, bytes))| Aggregate {
                    stream,
                    start_ns,
                    window_secs: 10,
                    level: Level::from_u8(level).unwrap(),
                    template_id: 0,
                    count,
                    bytes,
                    shipped: count,
                })
                .collect();
        }
        store_content(content)
    }

    fn eval(
        path: &std::path::Path,
        q: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<(Value, Stats), Error> {
        let conn = hot::open_reader(path).unwrap();
        let Query::Metric(e) = parse(q).unwrap() else {
            panic!("{q} is not a metric query")
        };
        evaluate(
            &Source::hot(&conn),
            &e,
            EvalRequest {
                start_ns: start,
                end_ns: end,
                step_ns: step,
                deadline: None,
                limits: Limits::default(),
            },
        )
    }

    fn vector(v: Value) -> Vec<(String, Vec<f64>)> {
        let Value::Vector(s) = v else { panic!("{v:?}") };
        s.into_iter()
            .map(|s| (s.labels.to_string(), s.values))
            .collect()
    }

    fn rows() -> Vec<RowSpec> {
        vec![
            (0, S, Level::Info, "GET /a 200".into()),
            (0, 2 * S, Level::Error, "GET /b 500 error".into()),
            (1, 15 * S, Level::Info, r#"{"status":200,"ms":12}"#.into()),
            (1, 25 * S, Level::Warn, r#"{"status":503,"ms":900}"#.into()),
            (2, 31 * S, Level::Error, "deadlock error".into()),
        ]
    }

    /// Lines with structured metadata have it among their labels: counts kept per
    /// second stand for them only under a `sum` that groups it away; otherwise the
    /// lines are read, and the answers are the same as from lines.
    #[test]
    fn volume_counts_respect_structured_metadata() {
        let rows: Vec<RowSpec> = (0..40)
            .map(|i| {
                (
                    i % 2,
                    (i as i64 + 1) * S,
                    if i % 4 == 0 {
                        Level::Error
                    } else {
                        Level::Info
                    },
                    format!("line {i}"),
                )
            })
            .collect();
        let (_d, p) = store_meta(&rows, false, |i| {
            Labels::new([("trace", format!("t{}", i % 3))])
        });
        let at = T0 + 60 * S;
        let run = |q: &str| eval(&p, q, at, at, S).unwrap();
        let (v, st) = run(r#"sum by (level) (count_over_time({app="api"}[1m]))"#);
        assert_eq!(st.lines, 0, "from the per-second counts");
        let (w, st2) = run(r#"sum by (level) (count_over_time({app="api"} |= "" [1m]))"#);
        assert!(st2.lines > 0);
        assert_eq!(vector(v), vector(w));
        // Grouped by the metadata: only the lines know it.
        let (v, st) = run(r#"sum by (trace) (count_over_time({app="api"}[1m]))"#);
        assert!(st.lines > 0);
        assert_eq!(
            vector(v)
                .into_iter()
                .map(|(l, v)| (l, v[0]))
                .collect::<Vec<_>>(),
            vec![
                (r#"{trace="t0"}"#.to_owned(), 14.0),
                (r#"{trace="t1"}"#.to_owned(), 13.0),
                (r#"{trace="t2"}"#.to_owned(), 13.0)
            ]
        );
        // Without a sum: a series per metadata value, as from lines.
        let (v, _) = run(r#"count_over_time({app="api", host="a"}[1m])"#);
        let (w, _) = run(r#"count_over_time({app="api", host="a"} |= "" [1m])"#);
        assert_eq!(vector(v.clone()), vector(w));
        assert!(vector(v).iter().all(|(l, _)| l.contains("trace=")));
        // `count by` sees how many series there are: from lines too.
        let (v, _) = run(r#"count by (level) (count_over_time({app="api"}[1m]))"#);
        let (w, _) = run(r#"count by (level) (count_over_time({app="api"} |= "" [1m]))"#);
        assert_eq!(vector(v), vector(w));
    }

    /// A stream whose agent shipped every line it counted is counted from the stored
    /// lines' per-second counts; one whose agent sampled is counted from the
    /// pre-aggregates, which count the lines not shipped too.
    #[test]
    fn sampled_streams_count_from_pre_aggregates_others_from_stored_lines() {
        let mut content = BatchContent {
            streams: streams(),
            ..Default::default()
        };
        for st in [0u32, 1] {
            for i in 0..10 {
                content.records.push(LogRecord {
                    stream: st,
                    time_ns: T0 + i * S + 1,
                    observed_ns: T0,
                    level: Level::Info,
                    template_id: 7,
                    flags: 0,
                    redacted: 0,
                    line: Bytes::from_static(b"GET /x 200"),
                    metadata: Labels::default(),
                });
            }
            // Stream 0's agent counted 25 lines and shipped 10 of them.
            let count = if st == 0 { 25 } else { 10 };
            content.aggregates.push(Aggregate {
                stream: st,
                start_ns: T0,
                window_secs: 10,
                level: Level::Info,
                template_id: 7,
                count,
                bytes: count * 10,
                shipped: 10,
            });
        }
        let (_dir, path) = store_content(content);
        let t = T0 + 60 * S;
        let (v, stats) = eval(
            &path,
            r#"sum by (host) (count_over_time({app="api"}[60s]))"#,
            t,
            t,
            60 * S,
        )
        .unwrap();
        assert_eq!(
            vector(v),
            vec![
                (r#"{host="a"}"#.to_owned(), vec![25.0]),
                (r#"{host="b"}"#.to_owned(), vec![10.0])
            ]
        );
        assert_eq!(stats.lines, 0);
    }

    #[test]
    fn unwrapped_values_are_aggregated_over_time() {
        let rows: Vec<RowSpec> = vec![
            (0, S, Level::Info, "ms=10 d=250ms size=1KiB".into()),
            (0, 2 * S, Level::Info, "ms=20 d=1s size=2KiB".into()),
            (1, 3 * S, Level::Info, "ms=30 d=2s size=3KiB".into()),
            (1, 4 * S, Level::Info, "ms=slow d=x size=y".into()),
            (2, 5 * S, Level::Info, "no fields here".into()),
        ];
        let (_d, p) = store(&rows, false);
        let one = |q: &str| -> f64 {
            let (v, _) =
                eval(&p, q, T0 + 60 * S, T0 + 60 * S, S).unwrap_or_else(|e| panic!("{q}: {e}"));
            let v = vector(v);
            assert_eq!(v.len(), 1, "{q}: {v:?}");
            v[0].1[0]
        };
        let sel = r#"{app="api"} | logfmt"#;
        let q = |f: &str, unwrap: &str| {
            format!(r#"{f}({sel} | unwrap {unwrap} | __error__="" [1m]) by ()"#)
        };
        assert_eq!(one(&q("sum_over_time", "ms")), 60.0);
        assert_eq!(one(&q("avg_over_time", "ms")), 20.0);
        assert_eq!(one(&q("min_over_time", "ms")), 10.0);
        assert_eq!(one(&q("max_over_time", "ms")), 30.0);
        assert_eq!(one(&q("first_over_time", "ms")), 10.0);
        assert_eq!(one(&q("last_over_time", "ms")), 30.0);
        assert!((one(&q("stdvar_over_time", "ms")) - 200.0 / 3.0).abs() < 1e-9);
        assert!((one(&q("stddev_over_time", "ms")) - (200.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(
            one(&q("quantile_over_time(0.5,", "ms").replace("(0.5,(", "(0.5, ")),
            20.0
        );
        assert_eq!(
            one(&q("avg_over_time", "duration(d)")),
            (0.25 + 1.0 + 2.0) / 3.0
        );
        assert_eq!(one(&q("sum_over_time", "bytes(size)")), 6.0 * 1024.0);
        // Grouped by a stream label; the unwrapped label leaves the series' labels.
        let (v, _) = eval(
            &p,
            &format!(r#"max_over_time({sel} | unwrap ms | __error__="" [1m]) by (host)"#),
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(
            vector(v),
            vec![
                (r#"{host="a"}"#.into(), vec![20.0]),
                (r#"{host="b"}"#.into(), vec![30.0])
            ]
        );
        let (v, _) = eval(
            &p,
            &format!(r#"sum_over_time({sel} | unwrap ms | __error__="" [1m])"#),
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert!(
            vector(v).iter().all(|(l, _)| !l.contains("ms=")),
            "ms is unwrapped"
        );
        // A value that does not convert is an error unless filtered out.
        let e = eval(
            &p,
            &format!(r#"sum_over_time({sel} | unwrap ms [1m])"#),
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("SampleExtractionErr"), "{e}");
        // Windows: per step, only the samples in (t - range, t].
        let (v, _) = eval(
            &p,
            &format!(r#"sum_over_time({sel} | unwrap ms | __error__="" [2s]) by ()"#),
            T0 + 2 * S,
            T0 + 4 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![("{}".into(), vec![30.0, 50.0, 30.0])]);
    }

    #[test]
    fn range_functions_and_aggregations() {
        let (_d, p) = store(&rows(), false);
        // Steps at T0+10s, +20s, +30s, +40s with 10 s windows.
        let (v, st) = eval(
            &p,
            r#"sum(count_over_time({app=~".+"}[10s]))"#,
            T0 + 10 * S,
            T0 + 40 * S,
            10 * S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![("{}".into(), vec![2.0, 1.0, 1.0, 1.0])]);
        // Counted from the per-second counts, no line read.
        assert_eq!(st.lines, 0);
        assert!(st.aggregate_rows > 0);
        // A line filter needs the lines; the answer is the same.
        let (v, st) = eval(
            &p,
            r#"sum(count_over_time({app=~".+"} |= "" [10s]))"#,
            T0 + 10 * S,
            T0 + 40 * S,
            10 * S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![("{}".into(), vec![2.0, 1.0, 1.0, 1.0])]);
        assert_eq!(st.lines, 5);
        let (v, _) = eval(
            &p,
            r#"sum by (level) (count_over_time({app="api"}[1m]))"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(
            vector(v),
            vec![
                (r#"{level="error"}"#.into(), vec![1.0]),
                (r#"{level="info"}"#.into(), vec![2.0]),
                (r#"{level="warn"}"#.into(), vec![1.0]),
            ]
        );
        let (v, _) = eval(
            &p,
            r#"sum by (host) (bytes_over_time({app=~"api|db"} |= "error" [1m]))"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![(r#"{host="a"}"#.into(), vec![30.0])]);
        let (v, _) = eval(&p, r#"rate({app="db"}[10s])"#, T0 + 40 * S, T0 + 40 * S, S).unwrap();
        assert_eq!(vector(v)[0].1, vec![0.1]);
        let (v, _) = eval(
            &p,
            r#"topk(1, sum by (host) (count_over_time({app=~".+"}[1m])))"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![(r#"{host="a"}"#.into(), vec![3.0])]);
        let (v, _) = eval(&p, r#"sum without (app, host, detected_level, level) (count_over_time({app=~".+"}[1m])) * 2 > 5"#, T0 + 60 * S, T0 + 60 * S, S).unwrap();
        assert_eq!(vector(v), vec![("{}".into(), vec![10.0])]);
        let (v, _) = eval(&p, "vector(1)+vector(1)", T0, T0, S).unwrap();
        assert_eq!(vector(v), vec![("{}".into(), vec![2.0])]);
        let (v, _) = eval(&p, "2 ^ 3 - 1", T0, T0, S).unwrap();
        assert_eq!(v, Value::Scalar(7.0));
    }

    #[test]
    fn parsers_and_label_filters_make_series() {
        let (_d, p) = store(&rows(), false);
        let (v, _) = eval(
            &p,
            r#"sum by (status) (count_over_time({app="api", host="b"} | json | ms > 100 [1m]))"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![(r#"{status="503"}"#.into(), vec![1.0])]);
        // A line that is not JSON makes a pipeline error, unless dropped.
        let e = eval(
            &p,
            r#"count_over_time({app="api"} | json [1m])"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap_err();
        assert!(e.to_string().contains("JSONParserErr"), "{e}");
        let (v, _) = eval(
            &p,
            r#"sum(count_over_time({app="api"} | json | drop __error__, __error_details__ [1m]))"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v)[0].1, vec![4.0]);
        let (v, _) = eval(
            &p,
            r#"absent_over_time({app="nothing"}[1m])"#,
            T0 + 60 * S,
            T0 + 60 * S,
            S,
        )
        .unwrap();
        assert_eq!(vector(v), vec![(r#"{app="nothing"}"#.into(), vec![1.0])]);
    }

    #[test]
    fn limits_are_enforced() {
        let (_d, p) = store(&rows(), false);
        let conn = hot::open_reader(&p).unwrap();
        let Query::Metric(e) = parse(r#"count_over_time({app=~".+"}[1m])"#).unwrap() else {
            panic!()
        };
        let err = evaluate(
            &Source::hot(&conn),
            &e,
            EvalRequest {
                start_ns: T0,
                end_ns: T0 + 60 * S,
                step_ns: S,
                deadline: None,
                limits: Limits {
                    max_series: 2,
                    max_points: 1000,
                },
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
    }

    /// The naive reference: every step, every row, by the book.
    fn reference(
        rows: &[RowSpec],
        sel_host: Option<&str>,
        filter: Option<&str>,
        by_level: bool,
        bytes: bool,
        range: i64,
        times: &[i64],
    ) -> Vec<(String, Vec<f64>)> {
        let mut out: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for (i, &t) in times.iter().enumerate() {
            for (st, off, level, line) in rows {
                let ts = T0 + off;
                let labels = &streams()[*st];
                if sel_host.is_some_and(|h| labels.get("host") != Some(h)) {
                    continue;
                }
                if filter.is_some_and(|f| !line.contains(f)) {
                    continue;
                }
                if !(ts > t - range && ts <= t) {
                    continue;
                }
                let key = if by_level {
                    format!("{{level=\"{}\"}}", level.as_str())
                } else {
                    "{}".into()
                };
                let v = out
                    .entry(key)
                    .or_insert_with(|| vec![f64::NAN; times.len()]);
                let add = if bytes { line.len() as f64 } else { 1.0 };
                v[i] = if v[i].is_nan() { add } else { v[i] + add };
            }
        }
        out.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Sums of range functions agree with the naive reference, from lines and,
        /// when the question allows, from pre-aggregates (lines off the window edges).
        #[test]
        fn metric_queries_match_the_reference(
            specs in proptest::collection::vec((0usize..3, 1i64..3_599, 0u8..7, 0usize..4, 1i64..S), 0..200),
            host in proptest::option::of(prop_oneof![Just("a"), Just("b")]),
            filter in proptest::option::of(prop_oneof![Just("error"), Just("GET")]),
            by_level in any::<bool>(),
            bytes in any::<bool>(),
            range_windows in 1i64..30,
            step_windows in 1i64..30,
            with_aggregates in any::<bool>(),
            any_seconds in (1i64..300, 1i64..300),
        ) {
            let words = ["GET /x 200", "error: boom", "GET /y error", "idle"];
            let rows: Vec<RowSpec> = specs
                .iter()
                // Without pre-aggregates, lines on whole seconds too (the per-second
                // counts are exact at any whole-second step and range).
                .map(|(s, sec, lv, w, frac)| (*s, sec * S + if with_aggregates { *frac } else { frac - 1 }, Level::from_u8(*lv).unwrap(), words[*w].to_string()))
                .collect();
            let (_d, p) = store(&rows, with_aggregates);
            let (range, step) = if with_aggregates {
                (range_windows * 10 * S, step_windows * 10 * S)
            } else {
                (any_seconds.0 * S, any_seconds.1 * S)
            };
            let (start, end) = (T0, T0 + 3_600 * S);
            let sel = match host { Some(h) => format!(r#"{{host="{h}"}}"#), None => r#"{app=~".+"}"#.to_string() };
            let f = filter.map(|f| format!(r#" |= "{f}""#)).unwrap_or_default();
            let func = if bytes { "bytes_over_time" } else { "count_over_time" };
            let by = if by_level { " by (level)" } else { "" };
            let q = format!("sum{by} ({func}({sel}{f} [{}s]))", range / S);
            let (v, stats) = eval(&p, &q, start, end, step).unwrap();
            let times: Vec<i64> = (0..).map(|i| start + i * step).take_while(|t| *t <= end).collect();
            let want = reference(&rows, host, filter, by_level, bytes, range, &times);
            let got = vector(v);
            prop_assert_eq!(got.len(), want.len(), "{}: {:?} vs {:?}", q, got, want);
            for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
                prop_assert_eq!(gk, wk);
                for (a, b) in gv.iter().zip(wv) {
                    prop_assert!((a.is_nan() && b.is_nan()) || a == b, "{}: {} {:?} vs {:?}", q, gk, gv, wv);
                }
            }
            if with_aggregates && filter.is_none() && !rows.is_empty() {
                prop_assert_eq!(stats.lines, 0, "pre-aggregates answer {}", q);
            }
        }
    }
}

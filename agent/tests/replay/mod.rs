//! Anomaly detection measured on replayed real logs, shared by the test
//! (`agent/tests/anomaly_replay.rs`, which holds the targets) and the benchmark
//! (`benches/benches/anomaly.rs`, which prints the report).
//!
//! **Background**: each of the eight Loghub-2k systems is one source. Its real lines,
//! in their real order and so with their real template mix and sequences, are replayed
//! in a loop at a rate of its own (from under one line a second to tens), with a daily
//! cycle and extra-Poisson noise, through the agent's real template miner (the whole
//! line, as the agent mines a file) and its real level parser, into the agent's
//! detector in simulated time (10 s windows, 30 min warm-up: the defaults).
//!
//! **Incidents**, made of the system's own lines, on the second day:
//! - an **error burst**: the rarest event among the system's error-like lines (an error
//!   or warning level, or words such as `failed`, `refused`, `denied`, `exception`),
//!   at twice the source's rate or 3 lines a second, for a minute;
//! - a **new template**: an event withheld from the background all along, appearing at
//!   1.5 lines a second for five minutes;
//! - **silence**: the source stops for half an hour;
//! - a **slow ramp**: the source's rate rises to five times over half an hour and holds
//!   for ten minutes.
//!
//! An incident counts as found when an event on its source falls between its start and
//! ten minutes after its end; its delay is from its start to the first such event, in
//! windows. Every other event after the warm-up is a false alarm. Beside the agent's
//! detector, in the same run, a **baseline**: an alarm for every template first seen
//! after the warm-up, and a two-sided z-score of the source's count per window against
//! an exponentially weighted mean and variance (Poisson-aware, threshold 4, a minute of
//! quiet after each alarm).

#![allow(dead_code)]

use heimdall_agent::pipeline::anomaly::{Detector, DetectorConfig};
use heimdall_agent::pipeline::parse::Parser;
use heimdall_agent::pipeline::template::{Miner, MinerConfig};
use heimdall_common::record::{Labels, Level};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub use super::loghub::{data_dir, DATASETS};
use super::sim::{gauss, poisson};
const WINDOW_S: f64 = 10.0;
const NS: i64 = 1_000_000_000;
const DAY_W: u64 = 8_640;
const WARMUP_W: u64 = 180;
/// Lines a window at each system's mean rate (0.8 to 30 lines a second).
const RATES: [f64; 8] = [120.0, 40.0, 300.0, 25.0, 60.0, 200.0, 15.0, 8.0];

/// One replayed line: its template id as the agent tags it (after every alias the
/// miner made, as the aggregator resolves them), its level, its true event.
#[derive(Clone)]
struct Line {
    template: u64,
    level: Level,
    event: usize,
}

struct System {
    labels: Arc<Labels>,
    lines: Vec<Line>,
    texts: HashMap<u64, Arc<str>>,
    /// The event withheld for the new-template incident, and its lines.
    withheld: usize,
    /// The event of the error burst.
    burst: usize,
}

fn load(dir: &Path, name: &str) -> System {
    let (raw, events) = super::loghub::read(dir, name);
    let mut event_ix: HashMap<String, usize> = HashMap::new();
    let mut miner = Miner::new(MinerConfig::default());
    let parser = Parser::default();
    let mut aliases = super::loghub::Aliases::default();
    let mut raw_lines = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let m = miner.add(l);
        for &old in &m.replaced {
            aliases.link(old, m.id);
        }
        let n = event_ix.len();
        let ev = *event_ix.entry(events[i].clone()).or_insert(n);
        let level = parser.parse(l.as_bytes(), 1_800_000_000 * NS).level;
        raw_lines.push((m.id, level, ev, l.to_owned()));
    }
    let resolve = |id: u64| aliases.resolve(id);
    let mut texts = HashMap::new();
    let mut lines = Vec::new();
    let mut per_event: HashMap<usize, (usize, bool, String)> = HashMap::new();
    for (id, level, ev, text) in raw_lines {
        let id = resolve(id);
        texts
            .entry(id)
            .or_insert_with(|| Arc::<str>::from(format!("template {id:016x}")));
        let lower = text.to_ascii_lowercase();
        let errorish = level >= Level::Warn
            || [
                "fail",
                "error",
                "refused",
                "denied",
                "exception",
                "invalid",
                "fatal",
            ]
            .iter()
            .any(|w| lower.contains(w));
        let e = per_event.entry(ev).or_insert((0, false, text.clone()));
        e.0 += 1;
        e.1 |= errorish;
        lines.push(Line {
            template: id,
            level,
            event: ev,
        });
    }
    // The burst: the rarest error-like event (any rarest event when none is); the
    // withheld event: the rarest of the others with at least three lines.
    let mut evs: Vec<(usize, usize, bool)> =
        per_event.iter().map(|(e, v)| (*e, v.0, v.1)).collect();
    evs.sort_by_key(|(e, n, _)| (*n, *e));
    let burst = evs
        .iter()
        .find(|(_, _, err)| *err)
        .or(evs.first())
        .map(|(e, _, _)| *e)
        .expect("events");
    let withheld = evs
        .iter()
        .find(|(e, n, _)| *e != burst && *n >= 3)
        .map(|(e, _, _)| *e)
        .expect("a withheld event");
    System {
        labels: Arc::new(Labels::new([("source", format!("/var/log/{name}.log"))])),
        lines,
        texts,
        withheld,
        burst,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ErrorBurst,
    NewTemplate,
    Silence,
    Ramp,
}

#[derive(Clone, Copy, Debug)]
struct Incident {
    kind: Kind,
    source: usize,
    start: u64,
    end: u64,
}

/// Figures of one detector over the run.
#[derive(Clone, Debug, Default)]
pub struct Score {
    /// Incidents found, of all (per kind in `by_kind`).
    pub found: usize,
    pub incidents: usize,
    pub by_kind: Vec<(Kind, usize, usize)>,
    /// Delays of the found incidents, in windows.
    pub delays: Vec<u64>,
    /// Events inside incidents, and outside (false alarms).
    pub true_events: usize,
    pub false_alarms: usize,
    /// Source-days watched after the warm-up.
    pub source_days: f64,
    /// False alarms per source.
    pub per_source: Vec<(String, usize)>,
}

impl Score {
    pub fn recall(&self) -> f64 {
        self.found as f64 / self.incidents.max(1) as f64
    }
    pub fn precision(&self) -> f64 {
        self.true_events as f64 / (self.true_events + self.false_alarms).max(1) as f64
    }
    pub fn false_alarms_per_source_day(&self) -> f64 {
        self.false_alarms as f64 / self.source_days
    }
    pub fn median_delay(&self) -> f64 {
        let mut d = self.delays.clone();
        d.sort_unstable();
        if d.is_empty() {
            return f64::NAN;
        }
        d[d.len() / 2] as f64
    }
}

/// The baseline: new templates and a two-sided count z-score per source.
struct Baseline {
    seen: HashSet<(usize, u64)>,
    mean: Vec<f64>,
    var: Vec<f64>,
    n: Vec<u64>,
    cool: Vec<u64>,
}

impl Baseline {
    fn new(sources: usize) -> Baseline {
        Baseline {
            seen: HashSet::new(),
            mean: vec![0.0; sources],
            var: vec![0.0; sources],
            n: vec![0; sources],
            cool: vec![0; sources],
        }
    }

    /// Alarms of source `s` for a window of `total` lines with these templates.
    fn window(&mut self, s: usize, w: u64, total: u64, templates: &[u64]) -> usize {
        let warm = w >= WARMUP_W;
        let mut alarms = 0;
        for t in templates {
            if self.seen.insert((s, *t)) && warm {
                alarms += 1;
            }
        }
        let x = total as f64;
        let (m, v) = (self.mean[s], self.var[s]);
        let z = (x - m) / (v + m.max(1.0)).sqrt();
        if warm && self.cool[s] == 0 && z.abs() > 4.0 {
            alarms += 1;
            self.cool[s] = 6;
        }
        self.cool[s] = self.cool[s].saturating_sub(1);
        self.n[s] += 1;
        let a = (WINDOW_S / 300.0).max(1.0 / self.n[s] as f64);
        self.var[s] = (1.0 - a) * (v + a * (x - m) * (x - m));
        self.mean[s] = m + a * (x - m);
        alarms
    }
}

/// Replays `days` of traffic with the incidents on the second day and scores the
/// agent's detector and the baseline.
pub fn run(dir: &Path, days: u64, seed: u64) -> (Score, Score) {
    let systems: Vec<System> = DATASETS.iter().map(|d| load(dir, d)).collect();
    let windows = days * DAY_W;
    let mut incidents = Vec::new();
    for s in 0..systems.len() {
        // Spread over the second day, each source at its own hours.
        let base = DAY_W + 360 * (1 + s as u64 % 4);
        for (k, kind) in [
            Kind::ErrorBurst,
            Kind::NewTemplate,
            Kind::Silence,
            Kind::Ramp,
        ]
        .into_iter()
        .enumerate()
        {
            let start = base + k as u64 * 1_440 + s as u64 * 7;
            let len = match kind {
                Kind::ErrorBurst => 6,
                Kind::NewTemplate => 30,
                Kind::Silence => 180,
                Kind::Ramp => 240,
            };
            incidents.push(Incident {
                kind,
                source: s,
                start,
                end: start + len,
            });
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut d = Detector::new(DetectorConfig::default());
    let mut base = Baseline::new(systems.len());
    let mut cursor = vec![0usize; systems.len()];
    let mut noted: HashSet<(usize, u64)> = HashSet::new();
    let phase: Vec<f64> = (0..systems.len())
        .map(|_| rng.f64() * std::f64::consts::TAU)
        .collect();
    // (window, source) of every event, for both detectors.
    let mut ours: Vec<(u64, usize)> = Vec::new();
    let mut theirs: Vec<(u64, usize)> = Vec::new();
    let source_of: HashMap<Arc<Labels>, usize> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| (s.labels.clone(), i))
        .collect();
    let mut counts: HashMap<(u64, Level), u64> = HashMap::new();
    for w in 0..windows {
        for (i, sys) in systems.iter().enumerate() {
            let active = |k: Kind| {
                incidents
                    .iter()
                    .find(|x| x.kind == k && x.source == i && w >= x.start && w < x.end)
            };
            counts.clear();
            if active(Kind::Silence).is_none() {
                let daily =
                    1.0 + 0.35 * (std::f64::consts::TAU * w as f64 / DAY_W as f64 + phase[i]).sin();
                let mut mult = daily * (0.15 * gauss(&mut rng)).exp();
                if let Some(x) = active(Kind::Ramp) {
                    let f = ((w - x.start) as f64 / 180.0).min(1.0);
                    mult *= 1.0 + 4.0 * f;
                }
                let n = poisson(&mut rng, RATES[i] * mult);
                let mut taken = 0;
                while taken < n {
                    let l = &sys.lines[cursor[i]];
                    cursor[i] = (cursor[i] + 1) % sys.lines.len();
                    if l.event == sys.withheld {
                        continue;
                    }
                    *counts.entry((l.template, l.level)).or_default() += 1;
                    taken += 1;
                }
                let of_event = |ev: usize| sys.lines.iter().filter(move |l| l.event == ev);
                if active(Kind::ErrorBurst).is_some() {
                    let lines: Vec<&Line> = of_event(sys.burst).collect();
                    let n = poisson(&mut rng, (2.0 * RATES[i]).max(30.0));
                    for k in 0..n as usize {
                        let l = lines[k % lines.len()];
                        *counts.entry((l.template, l.level)).or_default() += 1;
                    }
                }
                if active(Kind::NewTemplate).is_some() {
                    let lines: Vec<&Line> = of_event(sys.withheld).collect();
                    let n = poisson(&mut rng, 15.0);
                    for k in 0..n as usize {
                        let l = lines[k % lines.len()];
                        *counts.entry((l.template, l.level)).or_default() += 1;
                    }
                }
            }
            let total: u64 = counts.values().sum();
            let templates: Vec<u64> = counts.keys().map(|(t, _)| *t).collect();
            for ((t, level), c) in &counts {
                if noted.insert((i, *t)) {
                    d.note_template(&sys.labels, 1.0, *t, &sys.texts[t], true);
                }
                d.observe(&sys.labels, 1.0, *level, *t, *c, Some(b"line"));
            }
            for _ in 0..base.window(i, w, total, &templates) {
                theirs.push((w, i));
            }
        }
        for e in d.close_window(w as i64 * 10 * NS) {
            ours.push((w, source_of[&Arc::new(e.stream.clone())]));
        }
        d.take_ends();
    }
    let names: Vec<String> = DATASETS.iter().map(|s| (*s).to_owned()).collect();
    (
        score(&ours, &incidents, systems.len(), windows, &names),
        score(&theirs, &incidents, systems.len(), windows, &names),
    )
}

fn score(
    events: &[(u64, usize)],
    incidents: &[Incident],
    sources: usize,
    windows: u64,
    names: &[String],
) -> Score {
    let grace = 60;
    let mut s = Score {
        incidents: incidents.len(),
        source_days: sources as f64 * (windows - WARMUP_W) as f64 / DAY_W as f64,
        ..Score::default()
    };
    let mut fa = vec![0usize; sources];
    for &(w, src) in events {
        if w < WARMUP_W {
            continue;
        }
        let inside = incidents
            .iter()
            .any(|x| x.source == src && w >= x.start && w <= x.end + grace);
        if inside {
            s.true_events += 1;
        } else {
            s.false_alarms += 1;
            fa[src] += 1;
        }
    }
    for kind in [
        Kind::ErrorBurst,
        Kind::NewTemplate,
        Kind::Silence,
        Kind::Ramp,
    ] {
        let (mut found, mut all) = (0, 0);
        for x in incidents.iter().filter(|x| x.kind == kind) {
            all += 1;
            if let Some(&(w, _)) = events
                .iter()
                .find(|(w, src)| *src == x.source && *w >= x.start && *w <= x.end + grace)
            {
                found += 1;
                s.delays.push(w - x.start);
            }
        }
        s.found += found;
        s.by_kind.push((kind, found, all));
    }
    s.per_source = names.iter().cloned().zip(fa).collect();
    s
}

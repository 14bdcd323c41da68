//! Local anomaly detection: per stream and per template, on the window counts the
//! batcher sees, before anything is shipped.
//!
//! Owns the series state (baselines), the tests and the events. Does not own windows of
//! wall-clock time (the caller closes windows, so tests run in simulated time), shipping
//! or storage.
//!
//! Each window (10 s by default) the detector receives, per stream, the records read per
//! template and level, the templates the miner created, and a sample line per template.
//! When the window closes every tracked stream is tested, then its baselines move:
//! - **rate spike** of one template, or of the whole stream: the count is above
//!   `fast + k·spread` (`fast` an EWMA with a 5-minute time constant, `spread` the EWMA
//!   of absolute deviations, at least Poisson noise), above a floor, *and* above twice
//!   the template's decaying peak (half-life 2 h). The peak is what makes a periodic job
//!   that was seen during the warm-up normal: its bursts keep the peak up. A **slow
//!   ramp** is the median count of the last five minutes (which a job's bursts do not
//!   move) at three times its own 2-hour average; it is reported once, until the median
//!   is back under twice that average.
//! - **rate drop**: the 5-minute average below a quarter of the 2-hour one, for a stream
//!   that logged at least 30 records a window.
//! - **new templates**: templates created by the miner in the last minute, well above
//!   the (decaying) rate of creation the stream has shown.
//! - **error ratio**: the share of records at error level or worse jumps by more than
//!   five points, six spreads and twice its average.
//! - **silence**: a stream with a baseline of λ records a window has logged nothing for
//!   long enough that Poisson traffic would have shown a record with probability
//!   1 − e⁻¹⁶, and for more than twice the longest quiet run it has shown before.
//!
//! `sensitivity` (per source, default 1) divides every threshold's margin. A series says
//! nothing during its warm-up (30 min by default), and each kind keeps quiet for a minute
//! after it fired until its condition clears. Memory is bounded: at most `max_streams`
//! streams and `max_template_series` template series in all (beyond, new ones are not
//! tracked and counted); series idle for a day (streams) or six hours (templates) go.
//!
//! The baselines and warm-up progress survive a restart: [`Detector::state`] writes
//! them (the agent saves them every minute and when it stops) and
//! [`Detector::restore`] takes them back, unless the window length changed (the
//! baselines are per window) or the state is from another version.

use heimdall_common::record::{Anomaly, AnomalyEnd, AnomalyKind, Labels, Level, Template};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of a [`Detector`].
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Length of a window.
    pub window: Duration,
    /// How long a stream is watched before it may raise anomalies.
    pub warmup: Duration,
    /// Most streams tracked.
    pub max_streams: usize,
    /// Most template series tracked, over all streams.
    pub max_template_series: usize,
    /// Longest sample line kept, in bytes.
    pub sample_bytes: usize,
}

impl Default for DetectorConfig {
    fn default() -> DetectorConfig {
        DetectorConfig {
            window: Duration::from_secs(10),
            warmup: Duration::from_secs(30 * 60),
            max_streams: 4096,
            max_template_series: 65_536,
            sample_bytes: 512,
        }
    }
}

/// Most anomaly events one window raises (the batch that carries them stays well within
/// the protocol's limits); the strongest are kept.
pub const MAX_EVENTS_PER_WINDOW: usize = 512;

/// Time constants, in seconds.
const FAST_TAU: f64 = 300.0;
const SLOW_TAU: f64 = 7200.0;
const PEAK_HALF_LIFE: f64 = 7200.0;
const NEW_TAU: f64 = 3600.0;
const ERROR_TAU: f64 = 600.0;
/// Windows summed for the new-template test.
const NEW_RING: usize = 6;
/// Windows whose median total the ramp test follows (bursts of periodic jobs do not
/// move a median).
const MEDIAN_WINDOWS: usize = 30;
/// Windows a kind stays quiet after firing.
const COOL_WINDOWS: u32 = 6;
/// Idle windows (in seconds) after which series are forgotten.
const STREAM_IDLE_SECS: f64 = 86_400.0;
const TEMPLATE_IDLE_SECS: f64 = 6.0 * 3600.0;

/// Baselines of one count series.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Rate {
    n: u64,
    fast: f64,
    dev: f64,
    slow: f64,
    peak: f64,
}

/// Per-window smoothing factors for a window length.
#[derive(Clone, Copy, Debug)]
struct Alphas {
    fast: f64,
    slow: f64,
    peak_decay: f64,
    new: f64,
    error: f64,
}

impl Alphas {
    fn new(window: Duration) -> Alphas {
        let w = window.as_secs_f64().max(0.001);
        Alphas {
            fast: (w / FAST_TAU).min(1.0),
            slow: (w / SLOW_TAU).min(1.0),
            peak_decay: 0.5f64.powf(w / PEAK_HALF_LIFE),
            new: (w / NEW_TAU).min(1.0),
            error: (w / ERROR_TAU).min(1.0),
        }
    }
}

impl Rate {
    /// Moves the baselines by one window of `x`; averages are running means until they
    /// have seen `1/α` windows, so the start does not weigh forever.
    fn update(&mut self, x: f64, a: &Alphas) {
        self.n += 1;
        let inv = 1.0 / self.n as f64;
        let af = a.fast.max(inv);
        let as_ = a.slow.max(inv);
        self.dev += af * ((x - self.fast).abs() - self.dev);
        self.fast += af * (x - self.fast);
        self.slow += as_ * (x - self.slow);
        self.peak = (self.peak * a.peak_decay).max(x);
    }

    /// The count above which a window is a spike.
    /// The margins are Poisson-aware: a small count's upper tail is longer than a
    /// normal one's, hence the constant and square-root terms.
    fn spike_threshold(&self, floor: f64, s: f64) -> f64 {
        let spread = (1.25 * self.dev).max(self.fast.sqrt()).max(1.0);
        (floor / s)
            .max(self.fast + 6.0 / s * (spread + 1.0))
            .max((1.0 + 1.0 / s) * self.peak + 6.0 / s * self.peak.sqrt())
    }
}

#[derive(Debug)]
struct TemplateSeries {
    rate: Rate,
    text: Option<Arc<str>>,
    sample: Option<Box<str>>,
    /// Window index it was last seen in.
    seen: u64,
    cool: u32,
    /// Windows left in which a template the miner created after the stream's warm-up
    /// is judged as new: its baseline stays zero (its first windows must not become
    /// what is normal for it) and its lines add up in `fresh_total`.
    fresh: u32,
    fresh_total: u64,
}

impl TemplateSeries {
    fn new(now: u64) -> TemplateSeries {
        TemplateSeries {
            rate: Rate::default(),
            text: None,
            sample: None,
            seen: now,
            cool: 0,
            fresh: 0,
            fresh_total: 0,
        }
    }
}

/// Windows a new template is judged as new (a minute at the default window).
const FRESH_WINDOWS: u32 = 6;
/// Lines a new template must log within [`FRESH_WINDOWS`] to be an anomaly (at
/// sensitivity 1): a message never seen before that keeps coming, not a one-off.
const FRESH_LINES: f64 = 20.0;

/// What one stream did in the open window.
#[derive(Debug, Default)]
struct Window {
    total: u64,
    errors: u64,
    templates: HashMap<u64, u64>,
    created: Vec<u64>,
}

#[derive(Debug)]
struct Series {
    labels: Arc<Labels>,
    sensitivity: f64,
    windows: u64,
    seen: u64,
    total: Rate,
    err_mean: f64,
    err_dev: f64,
    err_n: u64,
    /// Decaying peak of the error share: a stream whose errors come in bursts (a job
    /// that retries, a flapping peer) shows that during its warm-up and is not alarmed
    /// by the same bursts later.
    err_peak: f64,
    new_ring: [u32; NEW_RING],
    new_ids: Vec<u64>,
    new_mean: f64,
    zero_run: u64,
    /// The last [`MEDIAN_WINDOWS`] totals, for the ramp test.
    recent: std::collections::VecDeque<u32>,
    /// Slow EWMA of the median of `recent`.
    median_slow: f64,
    median_n: u64,
    ramp_active: bool,
    /// Longest run of empty windows seen, decaying like a peak.
    quiet_peak: f64,
    templates: HashMap<u64, TemplateSeries>,
    open: Window,
    cool: [u32; 6],
    /// Events raised and not ended yet: (kind, event id).
    live: Vec<(AnomalyKind, u64)>,
}

/// Most events one stream keeps waiting for their end (the oldest are let go).
const MAX_LIVE_EVENTS: usize = 16;

/// Figures for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorStats {
    pub streams: usize,
    pub template_series: usize,
    /// Streams or template series not tracked because a cap was reached.
    pub untracked: u64,
}

/// The anomaly detector of one agent.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    a: Alphas,
    series: HashMap<Arc<Labels>, Series>,
    template_series: usize,
    untracked: u64,
    /// Windows closed so far.
    now: u64,
    warmup_windows: u64,
    /// Ends of events found by the windows closed since [`Detector::take_ends`].
    ends: Vec<AnomalyEnd>,
}

fn cut(line: &[u8], max: usize) -> Box<str> {
    let s = String::from_utf8_lossy(&line[..line.len().min(max)]);
    let mut s = s.into_owned();
    // A cut inside a multi-byte character leaves a replacement character: drop it.
    if line.len() > max {
        while s.ends_with('\u{fffd}') {
            s.pop();
        }
    }
    s.into_boxed_str()
}

fn event_id(labels: &Labels, kind: AnomalyKind, template: u64, time_ns: i64) -> u64 {
    let mut h = crate::hash::Fnv1a::default();
    for (k, v) in labels.iter() {
        h.write(k.as_bytes());
        h.write(&[0]);
        h.write(v.as_bytes());
        h.write(&[0]);
    }
    h.write(&[kind as u8]);
    h.write(&template.to_le_bytes());
    h.write(&time_ns.to_le_bytes());
    h.0
}

impl Detector {
    /// A detector with nothing tracked.
    pub fn new(cfg: DetectorConfig) -> Detector {
        let w = cfg.window.as_secs_f64().max(0.001);
        Detector {
            a: Alphas::new(cfg.window),
            warmup_windows: (cfg.warmup.as_secs_f64() / w).ceil() as u64,
            cfg,
            series: HashMap::new(),
            template_series: 0,
            untracked: 0,
            now: 0,
            ends: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Figures for metrics.
    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            streams: self.series.len(),
            template_series: self.template_series,
            untracked: self.untracked,
        }
    }

    /// `stream`'s series with a series for its template `id`, each made if the caps
    /// allow (what they refuse is counted as untracked).
    fn tracked(&mut self, stream: &Arc<Labels>, sensitivity: f64, id: u64) -> Option<&mut Series> {
        let now = self.now;
        if !self.series.contains_key(stream) {
            if self.series.len() >= self.cfg.max_streams {
                self.untracked += 1;
                return None;
            }
            self.series
                .insert(stream.clone(), Series::new(stream.clone(), now));
        }
        let s = self.series.get_mut(stream).expect("just inserted");
        s.sensitivity = sensitivity;
        if let std::collections::hash_map::Entry::Vacant(e) = s.templates.entry(id) {
            if self.template_series < self.cfg.max_template_series {
                e.insert(TemplateSeries::new(now));
                self.template_series += 1;
            } else {
                self.untracked += 1;
            }
        }
        Some(s)
    }

    /// Counts `count` records of `stream` at `level` with template `template` in the
    /// open window; `sample` is one of them.
    pub fn observe(
        &mut self,
        stream: &Arc<Labels>,
        sensitivity: f64,
        level: Level,
        template: u64,
        count: u64,
        sample: Option<&[u8]>,
    ) {
        let (now, max) = (self.now, self.cfg.sample_bytes);
        let Some(s) = self.tracked(stream, sensitivity, template) else {
            return;
        };
        s.seen = now;
        s.open.total += count;
        if level >= Level::Error {
            s.open.errors += count;
        }
        *s.open.templates.entry(template).or_default() += count;
        if let Some(t) = s.templates.get_mut(&template) {
            t.seen = now;
            if let Some(line) = sample {
                if t.sample.is_none() || level >= Level::Error {
                    t.sample = Some(cut(line, max));
                }
            }
        }
    }

    /// Records a template's text; `created` when the miner made it from this stream's
    /// record in the open window (a never-seen message).
    pub fn note_template(
        &mut self,
        stream: &Arc<Labels>,
        sensitivity: f64,
        id: u64,
        text: &Arc<str>,
        created: bool,
    ) {
        let warmup = self.warmup_windows;
        let Some(s) = self.tracked(stream, sensitivity, id) else {
            return;
        };
        let warm = s.windows >= warmup;
        if created {
            s.open.created.push(id);
        }
        if let Some(t) = s.templates.get_mut(&id) {
            t.text = Some(text.clone());
            if created && warm && t.rate.n == 0 {
                t.fresh = FRESH_WINDOWS;
            }
        }
    }

    /// The ends of anomalies found since the last call: each event's condition was
    /// gone in a window after the event.
    pub fn take_ends(&mut self) -> Vec<AnomalyEnd> {
        std::mem::take(&mut self.ends)
    }

    /// Closes the window that started at `start_ns`: tests every stream, moves the
    /// baselines and returns the anomalies found.
    pub fn close_window(&mut self, start_ns: i64) -> Vec<Anomaly> {
        let a = self.a;
        let warm = self.warmup_windows;
        let now = self.now;
        let w = self.cfg.window.as_secs_f64().max(0.001);
        let stream_idle = (STREAM_IDLE_SECS / w) as u64;
        let template_idle = (TEMPLATE_IDLE_SECS / w) as u64;
        let mut out = Vec::new();
        let mut removed_templates = 0usize;
        self.series.retain(|_, s| {
            let keep = now.saturating_sub(s.seen) <= stream_idle;
            if !keep {
                removed_templates += s.templates.len();
            }
            keep
        });
        for s in self.series.values_mut() {
            removed_templates += s.close(
                start_ns,
                now,
                warm,
                template_idle,
                &a,
                (&mut out, &mut self.ends),
            );
        }
        self.template_series -= removed_templates;
        self.now += 1;
        if out.len() > MAX_EVENTS_PER_WINDOW {
            // A storm of events in one window is one incident, not thousands: the
            // strongest are kept, the rest counted.
            out.sort_by(|a, b| b.score.total_cmp(&a.score));
            let dropped = out.len() - MAX_EVENTS_PER_WINDOW;
            out.truncate(MAX_EVENTS_PER_WINDOW);
            metrics::counter!("heimdall_agent_anomalies_suppressed_total")
                .increment(dropped as u64);
        }
        out
    }
}

/// The saved form of a [`Detector`]'s baselines (its open window is not kept).
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    window_ms: u64,
    now: u64,
    series: Vec<SavedSeries>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSeries {
    labels: Vec<(String, String)>,
    sensitivity: f64,
    windows: u64,
    seen: u64,
    total: Rate,
    err_mean: f64,
    err_dev: f64,
    err_n: u64,
    #[serde(default)]
    err_peak: f64,
    new_ring: [u32; NEW_RING],
    new_ids: Vec<u64>,
    new_mean: f64,
    zero_run: u64,
    recent: Vec<u32>,
    median_slow: f64,
    median_n: u64,
    ramp_active: bool,
    quiet_peak: f64,
    cool: [u32; 6],
    templates: Vec<SavedTemplate>,
    /// Events not ended yet: (kind as on the wire, id).
    #[serde(default)]
    live: Vec<(u8, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedTemplate {
    id: u64,
    rate: Rate,
    text: Option<String>,
    seen: u64,
    cool: u32,
}

/// Version of the saved state.
const STATE_VERSION: u32 = 1;

impl Detector {
    /// The baselines and warm-up progress of every series, as JSON (see
    /// [`Detector::restore`]).
    pub fn state(&self) -> String {
        let saved = Saved {
            version: STATE_VERSION,
            window_ms: self.cfg.window.as_millis() as u64,
            now: self.now,
            series: self
                .series
                .values()
                .map(|s| SavedSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    sensitivity: s.sensitivity,
                    windows: s.windows,
                    seen: s.seen,
                    total: s.total.clone(),
                    err_mean: s.err_mean,
                    err_dev: s.err_dev,
                    err_n: s.err_n,
                    err_peak: s.err_peak,
                    new_ring: s.new_ring,
                    new_ids: s.new_ids.clone(),
                    new_mean: s.new_mean,
                    zero_run: s.zero_run,
                    recent: s.recent.iter().copied().collect(),
                    median_slow: s.median_slow,
                    median_n: s.median_n,
                    ramp_active: s.ramp_active,
                    quiet_peak: s.quiet_peak,
                    cool: s.cool,
                    live: s.live.iter().map(|(k, id)| (*k as u8, *id)).collect(),
                    templates: s
                        .templates
                        .iter()
                        .map(|(id, t)| SavedTemplate {
                            id: *id,
                            rate: t.rate.clone(),
                            text: t.text.as_deref().map(str::to_owned),
                            seen: t.seen,
                            cool: t.cool,
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// Takes back the series of a [`Detector::state`], within this detector's caps;
    /// returns how many streams it took back.
    ///
    /// # Errors
    /// Why nothing was taken back: unreadable, another version, another window length.
    pub fn restore(&mut self, text: &str) -> Result<usize, String> {
        let saved: Saved = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if saved.version != STATE_VERSION {
            return Err(format!(
                "state version {} (this agent writes {STATE_VERSION})",
                saved.version
            ));
        }
        let window_ms = self.cfg.window.as_millis() as u64;
        if saved.window_ms != window_ms {
            return Err(format!(
                "saved with {} ms windows, running with {window_ms} ms: baselines are per window",
                saved.window_ms
            ));
        }
        self.now = self.now.max(saved.now);
        let mut n = 0;
        for ss in saved.series {
            if self.series.len() >= self.cfg.max_streams {
                self.untracked += 1;
                continue;
            }
            let labels = Arc::new(Labels::new(ss.labels));
            let mut s = Series::new(labels.clone(), ss.seen);
            s.sensitivity = ss.sensitivity;
            s.windows = ss.windows;
            s.total = ss.total;
            s.err_mean = ss.err_mean;
            s.err_dev = ss.err_dev;
            s.err_n = ss.err_n;
            s.err_peak = ss.err_peak;
            s.new_ring = ss.new_ring;
            s.new_ids = ss.new_ids;
            s.new_mean = ss.new_mean;
            s.zero_run = ss.zero_run;
            s.recent = ss.recent.into_iter().take(MEDIAN_WINDOWS).collect();
            s.median_slow = ss.median_slow;
            s.median_n = ss.median_n;
            s.ramp_active = ss.ramp_active;
            s.quiet_peak = ss.quiet_peak;
            s.cool = ss.cool;
            s.live = ss
                .live
                .into_iter()
                .filter_map(|(k, id)| Some((AnomalyKind::from_u8(k)?, id)))
                .take(MAX_LIVE_EVENTS)
                .collect();
            for t in ss.templates {
                if self.template_series >= self.cfg.max_template_series {
                    self.untracked += 1;
                    continue;
                }
                let mut ts = TemplateSeries::new(t.seen);
                ts.rate = t.rate;
                ts.text = t.text.map(Arc::from);
                ts.cool = t.cool;
                s.templates.insert(t.id, ts);
                self.template_series += 1;
            }
            self.series.insert(labels, s);
            n += 1;
        }
        Ok(n)
    }
}

impl Series {
    fn new(labels: Arc<Labels>, now: u64) -> Series {
        Series {
            labels,
            sensitivity: 1.0,
            windows: 0,
            seen: now,
            total: Rate::default(),
            err_mean: 0.0,
            err_dev: 0.0,
            err_n: 0,
            err_peak: 0.0,
            new_ring: [0; NEW_RING],
            new_ids: Vec::new(),
            new_mean: 0.0,
            zero_run: 0,
            recent: std::collections::VecDeque::with_capacity(MEDIAN_WINDOWS),
            median_slow: 0.0,
            median_n: 0,
            ramp_active: false,
            quiet_peak: 0.0,
            templates: HashMap::new(),
            open: Window::default(),
            cool: [0; 6],
            live: Vec::new(),
        }
    }

    fn event(
        &self,
        kind: AnomalyKind,
        time_ns: i64,
        score: f64,
        baseline: f64,
        observed: f64,
        templates: &[u64],
    ) -> Anomaly {
        let mut ts = Vec::new();
        let mut samples = Vec::new();
        for id in templates.iter().take(8) {
            let t = self.templates.get(id);
            ts.push(Template {
                id: *id,
                text: heimdall_common::limits::cut_str(
                    t.and_then(|t| t.text.as_deref()).unwrap_or_default(),
                    heimdall_common::limits::MAX_TEMPLATE_BYTES,
                )
                .to_owned(),
            });
            if let Some(s) = t.and_then(|t| t.sample.as_deref()) {
                if samples.len() < 3 {
                    samples.push(s.to_owned());
                }
            }
        }
        Anomaly {
            id: event_id(
                &self.labels,
                kind,
                templates.first().copied().unwrap_or(0),
                time_ns,
            ),
            kind,
            stream: (*self.labels).clone(),
            time_ns,
            score,
            baseline,
            observed,
            templates: ts,
            samples,
        }
    }

    /// Tests and updates the series at the end of a window; returns the template series
    /// dropped for idleness.
    fn close(
        &mut self,
        start_ns: i64,
        now: u64,
        warmup: u64,
        template_idle: u64,
        a: &Alphas,
        (out, ends): (&mut Vec<Anomaly>, &mut Vec<AnomalyEnd>),
    ) -> usize {
        let raised = out.len();
        let open = std::mem::take(&mut self.open);
        let sens = self.sensitivity;
        let warm = self.windows >= warmup;
        let x = open.total as f64;
        for c in &mut self.cool {
            *c = c.saturating_sub(1);
        }
        let k = |kind: AnomalyKind| kind as usize;

        // What this window shows, whether or not it may raise an event: an event
        // ends with the first window that no longer shows its condition.
        let template_spiking = open.templates.iter().any(|(id, &c)| {
            self.templates
                .get(id)
                .is_some_and(|t| c as f64 >= t.rate.spike_threshold(10.0, sens))
        });
        let stream_spiking = x >= self.total.spike_threshold(50.0, sens);
        // New templates that keep coming: judged on their first windows' lines.
        let mut fresh_fired: Vec<(f64, u64, f64)> = Vec::new();
        for (id, t) in self.templates.iter_mut() {
            if t.fresh == 0 {
                continue;
            }
            t.fresh_total += open.templates.get(id).copied().unwrap_or(0);
            let need = FRESH_LINES / sens;
            if t.fresh_total as f64 >= need {
                fresh_fired.push((t.fresh_total as f64 / need, *id, t.fresh_total as f64));
                t.fresh = 0;
                t.cool = COOL_WINDOWS;
            }
        }
        if warm && !fresh_fired.is_empty() {
            fresh_fired.sort_by(|a, b| b.0.total_cmp(&a.0));
            let ids: Vec<u64> = fresh_fired.iter().map(|f| f.1).collect();
            let (score, _, obs) = fresh_fired[0];
            out.push(self.event(AnomalyKind::NewTemplates, start_ns, score, 0.0, obs, &ids));
        }
        // Template spikes, largest first.
        if warm {
            let mut spikes: Vec<(f64, u64, f64, f64)> = Vec::new();
            for (id, &c) in &open.templates {
                if let Some(t) = self.templates.get(id) {
                    let thr = t.rate.spike_threshold(10.0, sens);
                    if t.fresh == 0 && c as f64 >= thr && t.cool == 0 {
                        spikes.push((c as f64 / thr, *id, t.rate.fast, c as f64));
                    }
                }
            }
            spikes.sort_by(|a, b| b.0.total_cmp(&a.0));
            if let Some(&(score, _, base, obs)) = spikes.first() {
                let ids: Vec<u64> = spikes.iter().map(|s| s.1).collect();
                out.push(self.event(AnomalyKind::RateSpike, start_ns, score, base, obs, &ids));
                self.cool[k(AnomalyKind::RateSpike)] = COOL_WINDOWS;
            }
            for (_, id, _, _) in &spikes {
                if let Some(t) = self.templates.get_mut(id) {
                    t.cool = COOL_WINDOWS;
                }
            }
        }
        let mut dropped = 0;
        self.templates.retain(|id, t| {
            let c = open.templates.get(id).copied().unwrap_or(0) as f64;
            if t.fresh > 0 {
                // Still judged as new: its baseline learns nothing yet.
                t.fresh -= 1;
            } else if t.rate.n > 0 || c > 0.0 {
                t.rate.update(c, a);
            }
            t.cool = t.cool.saturating_sub(1);
            let keep = now.saturating_sub(t.seen) <= template_idle;
            dropped += usize::from(!keep);
            keep
        });

        // The whole stream: spike, ramp, drop.
        let top: Vec<u64> = {
            let mut v: Vec<(&u64, &u64)> = open.templates.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            v.into_iter().take(5).map(|(id, _)| *id).collect()
        };
        if warm && self.cool[k(AnomalyKind::RateSpike)] == 0 {
            let thr = self.total.spike_threshold(50.0, sens);
            if x >= thr {
                out.push(self.event(
                    AnomalyKind::RateSpike,
                    start_ns,
                    x / thr,
                    self.total.fast,
                    x,
                    &top,
                ));
                self.cool[k(AnomalyKind::RateSpike)] = COOL_WINDOWS;
            }
        }
        // A slow ramp: the median of the last five minutes against its slow average.
        if self.recent.len() == MEDIAN_WINDOWS {
            self.recent.pop_front();
        }
        self.recent
            .push_back(open.total.min(u64::from(u32::MAX)) as u32);
        let median = {
            let mut v: Vec<u32> = self.recent.iter().copied().collect();
            v.sort_unstable();
            f64::from(v[v.len() / 2])
        };
        let base = self.median_slow;
        if self.ramp_active {
            if median < (1.0 + 1.0 / sens) * base {
                self.ramp_active = false;
            }
        } else if warm && self.recent.len() == MEDIAN_WINDOWS && base >= 0.5 {
            let thr = ((1.0 + 2.0 / sens) * base)
                .max(base + 6.0 / sens * 1.25 * (base / MEDIAN_WINDOWS as f64).sqrt() + 1.0);
            if median > thr {
                out.push(self.event(
                    AnomalyKind::RateSpike,
                    start_ns,
                    median / thr,
                    base,
                    median,
                    &top,
                ));
                self.ramp_active = true;
            }
        }
        self.median_n += 1;
        let am = a.slow.max(1.0 / self.median_n as f64);
        self.median_slow += am * (median - self.median_slow);
        // The rest compares this window with the baselines of the windows before.
        let slow = self.total.slow;
        self.total.update(x, a);
        let dropping = slow >= 30.0 && self.total.fast < slow / (1.0 + 3.0 / sens);
        if warm && x > 0.0 && self.cool[k(AnomalyKind::RateDrop)] == 0 && slow >= 30.0 {
            let thr = slow / (1.0 + 3.0 / sens);
            let fast = self.total.fast;
            if fast < thr {
                out.push(self.event(
                    AnomalyKind::RateDrop,
                    start_ns,
                    thr / fast.max(0.1),
                    slow,
                    fast,
                    &top,
                ));
                self.cool[k(AnomalyKind::RateDrop)] = COOL_WINDOWS * 10;
            }
        }

        // Error ratio.
        let mut errors_high = false;
        if open.total >= 20 {
            let r = open.errors as f64 / x;
            let peak = (1.0 + 1.0 / sens) * self.err_peak;
            errors_high = self.err_n >= 6
                && r > (self.err_mean + 0.05 / sens)
                    .max(self.err_mean + 6.0 / sens * self.err_dev)
                    .max(2.0 * self.err_mean)
                    .max(peak);
            if warm && self.err_n >= 6 && self.cool[k(AnomalyKind::ErrorRatio)] == 0 {
                let thr = (self.err_mean + 0.05 / sens)
                    .max(self.err_mean + 6.0 / sens * self.err_dev)
                    .max(2.0 * self.err_mean)
                    .max(peak);
                if r > thr && open.errors as f64 >= 10.0 / sens {
                    out.push(self.event(
                        AnomalyKind::ErrorRatio,
                        start_ns,
                        r / thr.max(1e-9),
                        self.err_mean,
                        r,
                        &top,
                    ));
                    self.cool[k(AnomalyKind::ErrorRatio)] = COOL_WINDOWS;
                }
            }
            self.err_n += 1;
            self.err_peak = (self.err_peak * a.peak_decay).max(r);
            let ae = a.error.max(1.0 / self.err_n as f64);
            self.err_dev += ae * ((r - self.err_mean).abs() - self.err_dev);
            self.err_mean += ae * (r - self.err_mean);
        }

        // New templates over the last minute.
        self.new_ring.rotate_right(1);
        self.new_ring[0] = open.created.len() as u32;
        self.new_ids.extend(&open.created);
        let keep_ids: usize = self.new_ring.iter().map(|n| *n as usize).sum();
        if self.new_ids.len() > keep_ids {
            let cut = self.new_ids.len() - keep_ids;
            self.new_ids.drain(..cut);
        }
        let recent: f64 = self.new_ring.iter().map(|n| f64::from(*n)).sum();
        let new_expected = self.new_mean * NEW_RING as f64;
        let templates_new = recent
            >= (8.0 / sens)
                .max(new_expected * (1.0 + 2.0 / sens) + 6.0 / sens * new_expected.sqrt());
        if warm && self.cool[k(AnomalyKind::NewTemplates)] == 0 {
            let expected = self.new_mean * NEW_RING as f64;
            let thr =
                (8.0 / sens).max(expected * (1.0 + 2.0 / sens) + 6.0 / sens * expected.sqrt());
            if recent >= thr {
                let mut ids = self.new_ids.clone();
                ids.reverse();
                out.push(self.event(
                    AnomalyKind::NewTemplates,
                    start_ns,
                    recent / thr,
                    expected,
                    recent,
                    &ids,
                ));
                self.cool[k(AnomalyKind::NewTemplates)] = NEW_RING as u32;
            }
        }
        let an = a.new.max(1.0 / (self.windows + 1) as f64);
        self.new_mean += an * (f64::from(self.new_ring[0]) - self.new_mean);

        // Silence.
        if open.total == 0 {
            self.zero_run += 1;
        } else {
            if self.zero_run > 0 {
                self.quiet_peak = self.quiet_peak.max(self.zero_run as f64);
            }
            self.zero_run = 0;
            self.cool[k(AnomalyKind::Silence)] = 0;
        }
        let lambda = slow;
        if warm && self.zero_run > 0 && lambda > 0.0 && self.cool[k(AnomalyKind::Silence)] == 0 {
            let need = ((16.0 / sens) / lambda)
                .ceil()
                .max(3.0)
                .max(2.0 * self.quiet_peak + 1.0);
            if need <= 360.0 && self.zero_run as f64 >= need {
                out.push(self.event(
                    AnomalyKind::Silence,
                    start_ns,
                    self.zero_run as f64 / need,
                    lambda,
                    0.0,
                    &[],
                ));
                // Quiet until the stream logs again.
                self.cool[k(AnomalyKind::Silence)] = u32::MAX;
            }
        }

        // Ends of the events raised before this window, then this window's events.
        self.live.retain(|(kind, id)| {
            let still = match kind {
                AnomalyKind::RateSpike => template_spiking || stream_spiking || self.ramp_active,
                AnomalyKind::RateDrop => dropping,
                AnomalyKind::ErrorRatio => errors_high,
                AnomalyKind::NewTemplates => templates_new,
                AnomalyKind::Silence => open.total == 0,
            };
            if !still {
                ends.push(AnomalyEnd {
                    id: *id,
                    time_ns: start_ns,
                    observed: x,
                });
            }
            still
        });
        for e in &out[raised..] {
            if self.live.len() >= MAX_LIVE_EVENTS {
                self.live.remove(0);
            }
            self.live.push((e.kind, e.id));
        }

        self.quiet_peak *= a.peak_decay;
        self.windows += 1;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detector {
        Detector::new(DetectorConfig {
            warmup: Duration::from_secs(600),
            ..DetectorConfig::default()
        })
    }

    fn stream() -> Arc<Labels> {
        Arc::new(Labels::new([("host", "h"), ("source", "/var/log/app.log")]))
    }

    #[test]
    fn a_burst_of_one_template_after_warmup_is_a_spike() {
        let mut d = det();
        let s = stream();
        let mut t = 0i64;
        for i in 0..120u64 {
            d.observe(&s, 1.0, Level::Info, 1, 100 + i % 7, Some(b"ok"));
            d.observe(&s, 1.0, Level::Error, 2, i % 2, Some(b"db down"));
            assert!(d.close_window(t).is_empty(), "window {i}");
            t += 10_000_000_000;
        }
        d.observe(&s, 1.0, Level::Info, 1, 103, None);
        d.observe(&s, 1.0, Level::Error, 2, 80, Some(b"db down"));
        let ev = d.close_window(t);
        assert!(
            ev.iter().any(|e| e.kind == AnomalyKind::RateSpike
                && e.templates[0].id == 2
                && e.samples == ["db down"]),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| e.kind == AnomalyKind::ErrorRatio));
        assert!(d.take_ends().is_empty(), "nothing has ended yet");
        // The next window is ordinary again: every event of the burst ends with it.
        t += 10_000_000_000;
        d.observe(&s, 1.0, Level::Info, 1, 104, None);
        d.observe(&s, 1.0, Level::Error, 2, 1, Some(b"db down"));
        assert!(d.close_window(t).is_empty());
        let mut ended: Vec<u64> = d.take_ends().iter().map(|e| e.id).collect();
        let mut raised: Vec<u64> = ev.iter().map(|e| e.id).collect();
        ended.sort_unstable();
        raised.sort_unstable();
        assert_eq!(ended, raised);
        assert!(d.take_ends().is_empty());
    }

    #[test]
    fn nothing_fires_during_warmup_and_silence_fires_once() {
        let mut d = det();
        let s = stream();
        let mut t = 0i64;
        for _ in 0..59 {
            d.observe(&s, 1.0, Level::Info, 1, 50, None);
            assert!(d.close_window(t).is_empty());
            t += 10_000_000_000;
        }
        let mut fired = Vec::new();
        for _ in 0..60 {
            fired.extend(d.close_window(t));
            t += 10_000_000_000;
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].kind, AnomalyKind::Silence);
        // It ends when the stream logs again.
        assert!(d.take_ends().is_empty());
        d.observe(&s, 1.0, Level::Info, 1, 50, None);
        d.close_window(t);
        let ends = d.take_ends();
        assert_eq!(ends.len(), 1);
        assert_eq!((ends[0].id, ends[0].time_ns), (fired[0].id, t));
    }

    /// Baselines taken back after a restart: the burst right after it is seen, as
    /// without the restart; a detector starting afresh is still warming up.
    #[test]
    fn baselines_survive_a_restart() {
        let s = stream();
        let mut d = det();
        let mut t = 0i64;
        for i in 0..120u64 {
            d.observe(&s, 1.0, Level::Info, 1, 100 + i % 7, Some(b"ok"));
            assert!(d.close_window(t).is_empty(), "window {i}");
            t += 10_000_000_000;
        }
        let saved = d.state();
        let burst = |d: &mut Detector, t: i64| {
            d.observe(&s, 1.0, Level::Info, 1, 103, None);
            d.observe(&s, 1.0, Level::Error, 2, 80, Some(b"db down"));
            d.close_window(t)
        };
        let mut restarted = det();
        assert_eq!(restarted.restore(&saved), Ok(1));
        let ev = burst(&mut restarted, t);
        assert!(
            ev.iter().any(|e| e.kind == AnomalyKind::ErrorRatio),
            "{ev:?}"
        );
        assert!(burst(&mut det(), t).is_empty(), "a fresh detector warms up");
        // Baselines per 10 s window mean nothing to a detector with 1 s windows.
        let mut other = Detector::new(DetectorConfig {
            window: Duration::from_secs(1),
            ..DetectorConfig::default()
        });
        assert!(other.restore(&saved).unwrap_err().contains("windows"));
        assert!(det().restore("not json").is_err());
    }

    #[test]
    fn series_are_bounded() {
        let mut d = Detector::new(DetectorConfig {
            max_streams: 2,
            max_template_series: 3,
            ..DetectorConfig::default()
        });
        for i in 0..5 {
            let s = Arc::new(Labels::new([("source", format!("/f{i}"))]));
            for t in 0..4 {
                d.observe(&s, 1.0, Level::Info, t, 1, None);
            }
        }
        let st = d.stats();
        assert_eq!((st.streams, st.template_series), (2, 3));
        assert!(st.untracked > 0);
        d.close_window(0);
        assert_eq!(d.stats().template_series, 3);
    }
}

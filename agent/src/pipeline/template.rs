//! Template mining: an online Drain-style miner that groups messages into templates
//! (`connection from <*> closed`) as they arrive.
//!
//! Owns tokenising, variable masking, the fixed-depth prefix tree, similarity matching
//! template ids and the per-source miner's state file. Does not own shipping.
//!
//! How a message finds its template:
//! 1. It is split on whitespace; a token holding a digit (numbers, ids, addresses,
//!    sizes, hex, `blk_-160…`, `user123`) is masked as `<*>` up front, so variables
//!    never decide which branch a message takes.
//! 2. The tree is keyed by token count, then by the first `depth` tokens (a masked
//!    token takes the `<*>` branch).
//! 3. In the leaf, the template that agrees with the most of the message's literal
//!    (unmasked) tokens wins if that share is above `similarity`; the positions that
//!    differ become `<*>`. Otherwise the message starts a new template. Masked tokens
//!    count neither way: `onExtend:<*> <*> <*>` is as close to its template as a message
//!    gets.
//!
//! [`SourceMiner`] is what a source runs: a miner that tags each record with its
//! template id, announces each template once per run (so the batches that first use it
//! carry its text), and keeps its templates in the state directory across restarts.
//!
//! Template ids are a 64-bit FNV-1a hash of the template text, so one template has one
//! id on every host and after a restart. When a template generalises (a position
//! becomes `<*>`), its text and so its id change; the miner reports the former id
//! ([`Matched::replaced`]) and the agent ships the pair as an alias, which the
//! aggregator resolves so that every id a template ever had reads as one (see
//! `heimdall_store::templates`).
//!
//! One configuration serves every log: nothing here is tuned per dataset. On the
//! Loghub-2k benchmark (`agent/tests/loghub_ga.rs`) it groups 97.5% of lines right on
//! average over eight systems.

use std::collections::HashMap;

use crate::hash::{Fnv1a, IntBuild};

/// The masked token.
pub const WILDCARD: &str = "<*>";

/// Settings of a [`Miner`].
#[derive(Clone, Debug)]
pub struct MinerConfig {
    /// Leading tokens that key the tree.
    pub depth: usize,
    /// Share of the message's literal tokens a template must match, exceeded, to take
    /// the message (0..1).
    pub similarity: f64,
    /// Most templates kept; the least recently used goes first.
    pub max_templates: usize,
}

impl Default for MinerConfig {
    fn default() -> MinerConfig {
        MinerConfig {
            depth: 2,
            similarity: 0.5,
            max_templates: 10_000,
        }
    }
}

#[derive(Debug)]
struct Cluster {
    tokens: Vec<Box<str>>,
    /// [`template_id`] of the tokens, recomputed only when a merge changes them.
    id: u64,
    /// The tree leaf the cluster hangs in.
    leaf: u64,
    last_used: u64,
}

/// What [`Miner::add`] found for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index of the template's cluster (stable while it lives; for grouping).
    pub cluster: usize,
    /// Id of the template as it is now.
    pub id: u64,
    /// The message started a template, or changed its template (and so its id).
    pub new: bool,
    /// The message started a template: nothing known was like it.
    pub created: bool,
    /// The template's former id, when the message generalised it (its text, and so its
    /// id, changed): lines tagged with the former id belong to this template.
    pub replaced: Option<u64>,
}

/// One token of a message as the miner sees it: a span of the message and how much of
/// it is masked.
#[derive(Clone, Copy, Debug)]
struct Tok {
    start: u32,
    end: u32,
    /// `None`: literal. `Some(0)`: all variable (`<*>`). `Some(n)`: the first `n`
    /// bytes are a key kept before the mask (`key=<*>`).
    masked: Option<u32>,
}

impl Tok {
    fn is_wild(&self) -> bool {
        self.masked == Some(0)
    }

    /// Whether template token `t` equals this token masked.
    fn eq(&self, msg: &str, t: &str) -> bool {
        let s = &msg[self.start as usize..self.end as usize];
        match self.masked {
            None => t == s,
            Some(0) => t == WILDCARD,
            Some(n) => {
                let n = n as usize;
                t.len() == n + WILDCARD.len() && t.ends_with(WILDCARD) && t[..n] == s[..n]
            }
        }
    }

    fn masked_text(&self, msg: &str) -> Box<str> {
        let s = &msg[self.start as usize..self.end as usize];
        match self.masked {
            None => s.into(),
            Some(0) => WILDCARD.into(),
            Some(n) => format!("{}{WILDCARD}", &s[..n as usize]).into_boxed_str(),
        }
    }
}

/// An online template miner.
#[derive(Debug)]
pub struct Miner {
    cfg: MinerConfig,
    clusters: Vec<Option<Cluster>>,
    free: Vec<usize>,
    /// Hash of (token count, leading masked tokens) → clusters.
    leaves: HashMap<u64, Vec<usize>, IntBuild>,
    clock: u64,
    live: usize,
    /// Templates evicted to stay within `max_templates`.
    pub evictions: u64,
    /// The tokens of the message being added (kept to reuse the allocation).
    toks: Vec<Tok>,
}

/// Byte classes the splitter looks for; most bytes are none of them.
const WS: u8 = 1;
const DIGIT: u8 = 2;
const SEP: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let ws = [b' ', b'\t', b'\n', b'\r', 0x0c];
    let mut i = 0;
    while i < ws.len() {
        t[ws[i] as usize] = WS;
        i += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = DIGIT;
        d += 1;
    }
    t[b'=' as usize] = SEP;
    t[b':' as usize] = SEP;
    t
};

/// The stable id of a template's text.
pub fn template_id(template: &str) -> u64 {
    crate::hash::fnv1a(template.as_bytes())
}

/// Splits `message` on ASCII whitespace into `out` (Unicode spaces are rare in logs and
/// stay inside tokens).
///
/// A token holding a digit is a variable; it keeps a key without digits before its first
/// `=` or `:` (`totalCalories=126775` → `totalCalories=<*>`, `10.0.0.1:443` → `<*>`).
///
/// # Performance
/// One pass over the bytes, one table lookup each: the split is most of the miner's time.
fn split(message: &str, out: &mut Vec<Tok>) {
    out.clear();
    let b = message.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && CLASS[b[i] as usize] == WS {
            i += 1;
        }
        let s = i;
        let (mut digit, mut digit_before_sep, mut sep) = (false, false, None);
        // Until a digit decides the masking, stop at every byte of interest; after,
        // only the token's end matters.
        while i < b.len() {
            // A digit decides: with no separator before it the token is all `<*>`.
            i = next_of_interest(b, i, digit);
            let Some(&byte) = b.get(i) else { break };
            let c = CLASS[byte as usize];
            if c == WS {
                break;
            }
            if c == DIGIT {
                digit = true;
                digit_before_sep |= sep.is_none();
            } else if c == SEP && sep.is_none() {
                sep = Some(i - s);
            }
            i += 1;
        }
        if i > s {
            let masked = match sep {
                _ if !digit => None,
                Some(p) if p > 0 && !digit_before_sep => Some(p as u32 + 1),
                _ => Some(0),
            };
            out.push(Tok {
                start: s as u32,
                end: i as u32,
                masked,
            });
        }
    }
}

/// The first byte at or after `i` that may be whitespace or, unless `end_only`, a digit,
/// `=` or `:`; eight bytes at a time. It may stop early at a byte that is none of them
/// (a control character, or a byte above 0x7F), never late.
#[inline]
fn next_of_interest(b: &[u8], mut i: usize, end_only: bool) -> usize {
    use super::swar::{ge, word_at, zero, HIGH, ONES};
    while i + 8 <= b.len() {
        let y = word_at(b, i) & !HIGH;
        // Whitespace is at most 0x20; digits and `:` are 0x30..=0x3A.
        let mut m = !ge(y, 0x21);
        if !end_only {
            m |= (ge(y, 0x30) & !ge(y, 0x3B)) | zero(y ^ (ONES * u64::from(b'=')));
        }
        let m = m & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() {
        let c = CLASS[b[i] as usize];
        if c == WS || (c != 0 && !end_only) {
            break;
        }
        i += 1;
    }
    i
}

impl Miner {
    /// A miner with no templates yet.
    pub fn new(cfg: MinerConfig) -> Miner {
        Miner {
            cfg,
            clusters: Vec::new(),
            free: Vec::new(),
            leaves: HashMap::default(),
            clock: 0,
            live: 0,
            evictions: 0,
            toks: Vec::new(),
        }
    }

    /// Templates kept.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no template is kept.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The text of cluster `c`'s template.
    pub fn template(&self, c: usize) -> Option<String> {
        self.clusters
            .get(c)
            .and_then(|c| c.as_ref())
            .map(|c| c.tokens.join(" "))
    }

    /// Every template kept, least recently used first (the order [`Miner::restore`]
    /// takes them back in).
    pub fn templates(&self) -> Vec<String> {
        let mut v: Vec<&Cluster> = self.clusters.iter().flatten().collect();
        v.sort_by_key(|c| c.last_used);
        v.into_iter().map(|c| c.tokens.join(" ")).collect()
    }

    /// Takes back a template saved by [`Miner::templates`] as it was, without matching
    /// it against the others (they coexisted, so they stay apart).
    pub fn restore(&mut self, template: &str) {
        let toks: Vec<Box<str>> = template.split_ascii_whitespace().map(Box::from).collect();
        let leaf = self.leaf_of(toks.len(), toks.iter().map(|t| t.as_bytes()));
        if self.leaves.get(&leaf).is_some_and(|v| {
            v.iter()
                .any(|&c| self.clusters[c].as_ref().is_some_and(|c| c.tokens == toks))
        }) {
            return;
        }
        self.clock += 1;
        self.insert(toks, leaf);
    }

    fn leaf_of<'a>(&self, len: usize, toks: impl Iterator<Item = &'a [u8]>) -> u64 {
        let mut h = Fnv1a::default();
        h.write(&(len as u64).to_le_bytes());
        for t in toks.take(self.cfg.depth) {
            h.write(t);
            h.write(&[0]);
        }
        h.0
    }

    fn message_leaf(&self, msg: &str) -> u64 {
        let mut h = Fnv1a::default();
        h.write(&(self.toks.len() as u64).to_le_bytes());
        for t in self.toks.iter().take(self.cfg.depth) {
            let s = &msg.as_bytes()[t.start as usize..t.end as usize];
            match t.masked {
                None => h.write(s),
                Some(0) => h.write(WILDCARD.as_bytes()),
                Some(n) => {
                    h.write(&s[..n as usize]);
                    h.write(WILDCARD.as_bytes());
                }
            }
            h.write(&[0]);
        }
        h.0
    }

    /// Adds a message; returns its template.
    pub fn add(&mut self, message: &str) -> Matched {
        self.clock += 1;
        let mut toks = std::mem::take(&mut self.toks);
        split(message, &mut toks);
        self.toks = toks;
        let leaf = self.message_leaf(message);
        let mut best: Option<(usize, f64, usize)> = None;
        if let Some(ids) = self.leaves.get(&leaf) {
            for &c in ids {
                let Some(cl) = self.clusters[c].as_ref() else {
                    continue;
                };
                if cl.tokens.len() != self.toks.len() {
                    continue;
                }
                // Similarity over the message's literal tokens: a masked token (a number,
                // an address) says nothing either way.
                let (mut same, mut wild, mut literal) = (0usize, 0usize, 0usize);
                for (a, b) in cl.tokens.iter().zip(&self.toks) {
                    if &**a == WILDCARD {
                        wild += 1;
                    }
                    if !b.is_wild() {
                        literal += 1;
                        if b.eq(message, a) {
                            same += 1;
                        }
                    }
                }
                let sim = if literal == 0 {
                    1.0
                } else {
                    same as f64 / literal as f64
                };
                if best.is_none_or(|(_, s, w)| sim > s || (sim == s && wild > w)) {
                    best = Some((c, sim, wild));
                }
            }
        }
        let (c, new, created, replaced) = match best {
            Some((c, sim, _)) if sim > self.cfg.similarity || self.toks.is_empty() => {
                let cl = self.clusters[c].as_mut().expect("leaf clusters are live");
                let mut changed = false;
                for (a, b) in cl.tokens.iter_mut().zip(&self.toks) {
                    if &**a != WILDCARD && !b.eq(message, a) {
                        *a = WILDCARD.into();
                        changed = true;
                    }
                }
                let mut replaced = None;
                if changed {
                    let old = cl.id;
                    cl.id = template_id(&cl.tokens.join(" "));
                    replaced = (old != cl.id).then_some(old);
                }
                cl.last_used = self.clock;
                (c, changed, false, replaced)
            }
            _ => {
                let toks = self.toks.iter().map(|t| t.masked_text(message)).collect();
                (self.insert(toks, leaf), true, true, None)
            }
        };
        Matched {
            cluster: c,
            id: self.clusters[c].as_ref().map_or(0, |cl| cl.id),
            new,
            created,
            replaced,
        }
    }

    fn insert(&mut self, tokens: Vec<Box<str>>, leaf: u64) -> usize {
        if self.live >= self.cfg.max_templates {
            self.evict();
        }
        let cl = Cluster {
            id: template_id(&tokens.join(" ")),
            tokens,
            leaf,
            last_used: self.clock,
        };
        let c = match self.free.pop() {
            Some(i) => {
                self.clusters[i] = Some(cl);
                i
            }
            None => {
                self.clusters.push(Some(cl));
                self.clusters.len() - 1
            }
        };
        self.live += 1;
        self.leaves.entry(leaf).or_default().push(c);
        c
    }

    fn evict(&mut self) {
        let Some((i, _)) = self
            .clusters
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.last_used)))
            .min_by_key(|(_, t)| *t)
        else {
            return;
        };
        let cl = self.clusters[i].take().expect("found live");
        if let Some(v) = self.leaves.get_mut(&cl.leaf) {
            v.retain(|c| *c != i);
            if v.is_empty() {
                self.leaves.remove(&cl.leaf);
            }
        }
        self.free.push(i);
        self.live -= 1;
        self.evictions += 1;
    }
}

/// First line of a saved template file.
const STATE_HEADER: &str = "# heimdall templates v1";
/// How often a source's templates are saved while it runs.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A source's miner: tags records, announces templates, persists its state.
#[derive(Debug)]
pub struct SourceMiner {
    miner: Miner,
    /// Ids announced since the source started (cleared when it grows past a bound, so
    /// some are announced again: harmless).
    announced: std::collections::HashSet<u64, IntBuild>,
    path: Option<std::path::PathBuf>,
    saved: std::time::Instant,
    dirty: bool,
    /// The `source` label of the metrics.
    name: String,
    reported_evictions: u64,
}

impl SourceMiner {
    /// A miner for the source `name`, taking back the templates saved at `path`.
    pub fn new(cfg: MinerConfig, name: &str, path: Option<std::path::PathBuf>) -> SourceMiner {
        let mut miner = Miner::new(cfg);
        if let Some(p) = &path {
            match std::fs::read_to_string(p) {
                Ok(text) if text.starts_with(STATE_HEADER) => {
                    for t in text.lines().skip(1).filter(|l| !l.is_empty()) {
                        miner.restore(t);
                    }
                    tracing::info!(source = name, templates = miner.len(), "templates loaded");
                }
                Ok(_) => {
                    tracing::warn!(path = %p.display(), "template state file has no header; starting afresh")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot read template state; starting afresh")
                }
            }
        }
        SourceMiner {
            miner,
            announced: std::collections::HashSet::default(),
            path,
            saved: std::time::Instant::now(),
            dirty: false,
            name: name.to_owned(),
            reported_evictions: 0,
        }
    }

    /// Tags `line` with its template; a template not announced yet goes to `out`.
    pub fn tag(
        &mut self,
        line: &mut crate::sources::Line,
        out: &mut Vec<crate::sources::NewTemplate>,
    ) {
        let text = match std::str::from_utf8(&line.bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(&line.bytes),
        };
        let m = self.miner.add(&text);
        line.template_id = m.id;
        self.dirty |= m.new;
        let fresh = self.announced.insert(m.id);
        if fresh && self.announced.len() > 4 * self.miner.cfg.max_templates {
            self.announced.clear();
            self.announced.insert(m.id);
        }
        // A generalised template is announced with its former id even when its new text
        // was known already (two templates that became one).
        if fresh || m.replaced.is_some() {
            if let Some(t) = self.miner.template(m.cluster) {
                out.push(crate::sources::NewTemplate {
                    id: m.id,
                    text: t.into(),
                    created: m.created,
                    replaces: m.replaced,
                });
            }
        }
    }

    /// Updates the metrics and saves the templates if a minute has passed.
    pub fn tick(&mut self) {
        let ev = self.miner.evictions - self.reported_evictions;
        if ev > 0 {
            metrics::counter!("heimdall_agent_template_evictions_total", "source" => self.name.clone())
                .increment(ev);
            self.reported_evictions = self.miner.evictions;
        }
        metrics::gauge!("heimdall_agent_templates", "source" => self.name.clone())
            .set(self.miner.len() as f64);
        if self.dirty && self.saved.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    /// Writes the templates to the state file: a temp file, fsynced, renamed over the
    /// old one, so a crash leaves one or the other whole.
    pub fn save(&mut self) {
        self.saved = std::time::Instant::now();
        let Some(p) = &self.path else { return };
        let mut text = String::from(STATE_HEADER);
        text.push('\n');
        for t in self.miner.templates() {
            text.push_str(&t);
            text.push('\n');
        }
        let res = (|| -> std::io::Result<()> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            heimdall_common::fs::write_atomic(p, text.as_bytes())
        })();
        match res {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot save templates"),
        }
    }

    /// Templates kept.
    pub fn len(&self) -> usize {
        self.miner.len()
    }

    /// Whether no template is kept.
    pub fn is_empty(&self) -> bool {
        self.miner.is_empty()
    }
}

impl Drop for SourceMiner {
    fn drop(&mut self) {
        if self.dirty {
            self.save();
        }
    }
}

/// The state file of a source's templates under the agent's state directory.
pub fn state_path(state_dir: &std::path::Path, source_key: &str) -> std::path::PathBuf {
    state_dir
        .join("templates")
        .join(format!("{:016x}.templates", template_id(source_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_masked_and_similar_messages_share_a_template() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("Connection from 10.0.0.1 closed after 35 ms");
        let b = m.add("Connection from 10.0.0.2 closed after 7 ms");
        assert_eq!(a.cluster, b.cluster);
        assert_eq!(
            m.template(a.cluster).unwrap(),
            "Connection from <*> closed after <*> ms"
        );
        let c = m.add("Accepted password for root from 10.0.0.3 port 22 ssh2");
        let d = m.add("Accepted password for admin from 10.0.0.9 port 2222 ssh2");
        assert_eq!(c.cluster, d.cluster);
        assert_eq!(
            m.template(c.cluster).unwrap(),
            "Accepted password for <*> from <*> port <*> <*>"
        );
        assert_ne!(a.cluster, c.cluster);
        assert_eq!(
            d.id,
            template_id("Accepted password for <*> from <*> port <*> <*>")
        );
    }

    #[test]
    fn templates_are_bounded_and_the_oldest_is_evicted() {
        let mut m = Miner::new(MinerConfig {
            max_templates: 3,
            ..MinerConfig::default()
        });
        for w in ["alpha", "beta", "gamma", "delta", "epsilon"] {
            m.add(&format!("{w} started"));
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.evictions, 2);
    }

    #[test]
    fn saved_templates_come_back_with_the_same_ids() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("user 12 logged in from 10.0.0.1");
        m.add("user 13 logged in from 10.0.0.2");
        let b = m.add("disk sda1 full");
        let saved = m.templates();
        let mut n = Miner::new(MinerConfig::default());
        for t in &saved {
            n.restore(t);
        }
        assert_eq!(n.len(), 2);
        let a2 = n.add("user 99 logged in from 10.9.9.9");
        assert_eq!(a2.id, a.id);
        assert!(!a2.new);
        assert_eq!(n.add("disk sda1 full").id, b.id);
    }

    proptest::proptest! {
        /// The splitter agrees with a plain reading of its rules on any text: ASCII
        /// whitespace splits, a token with a digit is masked, keeping a digit-free key
        /// before its first `=` or `:`.
        #[test]
        fn split_matches_the_plain_rules(text in "[a-z0-9=: \t\n\x0c\r\x01é€_.-]{0,80}") {
            let mut toks = Vec::new();
            split(&text, &mut toks);
            let want: Vec<(&str, Option<u32>)> = text
                .split_ascii_whitespace()
                .map(|t| {
                    let d = t.bytes().position(|b| b.is_ascii_digit());
                    let p = t.bytes().position(|b| b == b'=' || b == b':');
                    let m = match (d, p) {
                        (None, _) => None,
                        (Some(d), Some(p)) if p > 0 && d > p => Some(p as u32 + 1),
                        _ => Some(0),
                    };
                    (t, m)
                })
                .collect();
            let got: Vec<(&str, Option<u32>)> = toks
                .iter()
                .map(|t| (&text[t.start as usize..t.end as usize], t.masked))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn keyed_values_keep_their_key() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("done totalCalories=126775 steps=12");
        assert!(a.new);
        assert_eq!(
            m.template(a.cluster).unwrap(),
            "done totalCalories=<*> steps=<*>"
        );
        let b = m.add("done totalCalories=5 steps=7");
        assert_eq!((b.id, b.new), (a.id, false));
    }
}

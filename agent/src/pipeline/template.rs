//! Template mining: an online Drain-style miner that groups messages into templates
//! (`connection from <*> closed`) as they arrive.
//!
//! Owns tokenising, variable masking, the fixed-depth prefix tree, similarity matching
//! and template ids. Does not own persistence or shipping templates.
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
//! Template ids are a 64-bit FNV-1a hash of the template text, so one template has one
//! id on every host and after a restart.
//!
//! One configuration serves every log: nothing here is tuned per dataset. On the
//! Loghub-2k benchmark (`agent/tests/loghub_ga.rs`) it groups 97.5% of lines right on
//! average over eight systems.

use std::collections::HashMap;

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
    tokens: Vec<String>,
    /// [`template_id`] of the tokens, recomputed only when a merge changes them.
    id: u64,
    last_used: u64,
}

/// What [`Miner::add`] found for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index of the template's cluster (stable while it lives; for grouping).
    pub cluster: usize,
    /// Id of the template as it is now.
    pub id: u64,
}

/// An online template miner.
#[derive(Debug)]
pub struct Miner {
    cfg: MinerConfig,
    clusters: Vec<Option<Cluster>>,
    free: Vec<usize>,
    /// (token count, leading tokens) → clusters.
    leaves: HashMap<(usize, Vec<String>), Vec<usize>>,
    clock: u64,
    live: usize,
    /// Templates evicted to stay within `max_templates`.
    pub evictions: u64,
}

/// Whether a token is a variable before any mining: it holds a digit.
pub fn is_variable(token: &str) -> bool {
    token.bytes().any(|b| b.is_ascii_digit())
}

/// A token with its variable part masked: `totalCalories=126775` keeps its key
/// (`totalCalories=<*>`), a token that is all value (`10.0.0.1:443`) becomes `<*>`.
pub fn mask(token: &str) -> String {
    if !is_variable(token) {
        return token.to_owned();
    }
    match token.find(['=', ':']) {
        Some(p) if p > 0 && !is_variable(&token[..p]) => format!("{}{WILDCARD}", &token[..=p]),
        _ => WILDCARD.to_owned(),
    }
}

/// The message's tokens with variables masked.
pub fn tokens(message: &str) -> Vec<String> {
    message.split_whitespace().map(mask).collect()
}

/// The stable id of a template's text.
pub fn template_id(template: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Miner {
    /// A miner with no templates yet.
    pub fn new(cfg: MinerConfig) -> Miner {
        Miner {
            cfg,
            clusters: Vec::new(),
            free: Vec::new(),
            leaves: HashMap::new(),
            clock: 0,
            live: 0,
            evictions: 0,
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

    fn key(&self, toks: &[String]) -> (usize, Vec<String>) {
        (
            toks.len(),
            toks.iter().take(self.cfg.depth).cloned().collect(),
        )
    }

    /// Adds a message; returns its template.
    pub fn add(&mut self, message: &str) -> Matched {
        self.clock += 1;
        let toks = tokens(message);
        let key = self.key(&toks);
        let mut best: Option<(usize, f64, usize)> = None;
        if let Some(ids) = self.leaves.get(&key) {
            for &c in ids {
                let Some(cl) = self.clusters[c].as_ref() else {
                    continue;
                };
                // Similarity over the message's literal tokens: a masked token (a number,
                // an address) says nothing either way.
                let (mut same, mut wild, mut literal) = (0usize, 0usize, 0usize);
                for (a, b) in cl.tokens.iter().zip(&toks) {
                    if a == WILDCARD {
                        wild += 1;
                    }
                    if b != WILDCARD {
                        literal += 1;
                        if a == b {
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
        let c = match best {
            Some((c, sim, _)) if sim > self.cfg.similarity || toks.is_empty() => {
                let cl = self.clusters[c].as_mut().expect("leaf clusters are live");
                let mut changed = false;
                for (a, b) in cl.tokens.iter_mut().zip(&toks) {
                    if a != b && a != WILDCARD {
                        *a = WILDCARD.to_owned();
                        changed = true;
                    }
                }
                if changed {
                    cl.id = template_id(&cl.tokens.join(" "));
                }
                cl.last_used = self.clock;
                c
            }
            _ => {
                if self.live >= self.cfg.max_templates {
                    self.evict();
                }
                let cl = Cluster {
                    id: template_id(&toks.join(" ")),
                    tokens: toks,
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
                self.leaves.entry(key).or_default().push(c);
                c
            }
        };
        Matched {
            cluster: c,
            id: self.clusters[c].as_ref().map_or(0, |cl| cl.id),
        }
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
        let key = self.key(&cl.tokens);
        if let Some(v) = self.leaves.get_mut(&key) {
            v.retain(|c| *c != i);
        }
        self.free.push(i);
        self.live -= 1;
        self.evictions += 1;
    }
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
}

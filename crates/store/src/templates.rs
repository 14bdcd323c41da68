//! Template identity: one id for a template's whole life.
//!
//! An agent's template id is a hash of the template's text, so the same event type
//! gets the same id on every agent that mined the same text. The text changes when
//! the template generalises (`Invalid user webmaster from <*>` becomes
//! `Invalid user <*> from <*>` once another user appears), and with it the id: lines
//! tagged before carry the former id. The agent ships every such change as an alias
//! `(former id, id now)`; this module joins the ids linked by aliases into one set
//! and names the set by its **root**, the member whose text is the most general (the
//! most `<*>`), the lowest id among equals. The root is a function of the set alone,
//! not of the order aliases arrived in, so agents that saw the same lines in other
//! orders, and generalised through other intermediate texts, end at the same root as
//! soon as their chains meet at a common text.
//!
//! Rows, segments and aggregates keep the id they were stored with; reads resolve
//! it: patterns group by root and show the root's text, anomaly events name the root,
//! so what a user sees of a template (and what alert rules and correlation compare)
//! is one id. A set is kept flat (every member row names the root), so resolving is
//! one lookup; ids never aliased have no row and are their own root.
//!
//! **Subsumption across agents.** An agent keeps a word slot that has shown only two
//! values as two templates (it may be an enumeration) until a third value shows, so an
//! agent that saw few lines of an event type can end with specific texts
//! (`Invalid user root from <*>`) where another generalised (`Invalid user <*> from
//! <*>`). A text is therefore also joined to the most specific *generalised* text (one
//! an agent produced by generalising) that covers it: the same tokens, each either
//! `<*>` or equal, keeping more than half of the text's literal tokens (the share the
//! miner asks of a line it takes into a template), so that a text of mostly `<*>`
//! never swallows unrelated events. Checked once per text, when it is first announced,
//! and once per generalised text, when it first is one.
//!
//! Bounded: an alias row exists per id that ever generalised, at most one per
//! template text an agent announced; a shape row per text.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// Creates the alias table.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn create(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS template_alias (
             id   INTEGER PRIMARY KEY,
             root INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS template_alias_root ON template_alias(root);
         CREATE TABLE IF NOT EXISTS template_shape (
             id       INTEGER PRIMARY KEY,
             pieces   INTEGER NOT NULL,
             literals INTEGER NOT NULL,
             general  INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS template_shape_pieces ON template_shape(pieces, general);",
    )?;
    // Texts stored before shapes were kept: their shapes, and the roots as general.
    let missing: Vec<(u64, String)> = conn
        .prepare(
            "SELECT t.id, t.text FROM templates t
             WHERE NOT EXISTS (SELECT 1 FROM template_shape s WHERE s.id = t.id)",
        )?
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, text) in &missing {
        note(conn, *id, text)?;
    }
    if !missing.is_empty() {
        conn.execute(
            "UPDATE template_shape SET general = 1
             WHERE id IN (SELECT DISTINCT root FROM template_alias)",
            [],
        )?;
    }
    Ok(())
}

/// A text's tokens as compared here: split on single spaces (a bracketed token with
/// spaces splits the same way in every text, so covering stays exact).
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split(' ')
}

/// Whether `general` covers `text`: as many tokens, each `<*>` or equal.
fn covers(general: &str, text: &str) -> bool {
    let (mut g, mut t) = (pieces(general), pieces(text));
    loop {
        match (g.next(), t.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "<*>" || a == b => {}
            _ => return false,
        }
    }
}

/// Records the shape of a text first announced; `true` when it was not known.
fn note(conn: &Connection, id: u64, text: &str) -> Result<bool, rusqlite::Error> {
    let (n, lit) = pieces(text).fold((0i64, 0i64), |(n, l), p| (n + 1, l + i64::from(p != "<*>")));
    Ok(conn
        .prepare_cached(
            "INSERT OR IGNORE INTO template_shape(id, pieces, literals) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id as i64, n, lit])?
        == 1)
}

/// The most specific generalised text that covers `id`'s (most literal tokens, the
/// lowest id among equals), if one keeps more than half of its literal tokens (as the
/// agents' miner takes a line into a template only when more than half of the line's
/// literal tokens agree).
fn best_cover(conn: &Connection, id: u64, text: &str) -> Result<Option<u64>, rusqlite::Error> {
    let (n, lit) = pieces(text).fold((0i64, 0i64), |(n, l), p| (n + 1, l + i64::from(p != "<*>")));
    let mut stmt = conn.prepare_cached(
        "SELECT s.id, s.literals, t.text FROM template_shape s JOIN templates t ON t.id = s.id
         WHERE s.pieces = ?1 AND s.general = 1 AND s.literals * 2 > ?3 AND s.id != ?2
         ORDER BY s.literals DESC, s.id",
    )?;
    let mut rows = stmt.query(params![n, id as i64, lit])?;
    while let Some(r) = rows.next()? {
        let g: String = r.get(2)?;
        if covers(&g, text) {
            return Ok(Some(r.get::<_, i64>(0)? as u64));
        }
    }
    Ok(None)
}

fn text_of(conn: &Connection, id: u64) -> Result<Option<String>, rusqlite::Error> {
    conn.prepare_cached("SELECT text FROM templates WHERE id = ?1")?
        .query_row([id as i64], |r| r.get(0))
        .optional()
}

/// Takes in what one batch announced, after its texts are stored in `templates`: the
/// texts (`id`, text) and the aliases (former id, id now). Joins each alias, then each
/// text first seen to the generalised text that covers it, and the texts a newly
/// generalised text covers to it (see the module's docs).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn announce<'a>(
    conn: &Connection,
    texts: impl IntoIterator<Item = (u64, &'a str)>,
    aliases: &[(u64, u64)],
) -> Result<(), rusqlite::Error> {
    let mut fresh = Vec::new();
    for (id, text) in texts {
        if note(conn, id, text)? {
            fresh.push(id);
        }
    }
    let mut general = Vec::new();
    for &(from, to) in aliases {
        link(conn, from, to)?;
        if conn
            .prepare_cached("UPDATE template_shape SET general = 1 WHERE id = ?1 AND general = 0")?
            .execute([to as i64])?
            == 1
        {
            general.push(to);
        }
    }
    // A text new here, and every text of a new general text's size, finds its cover.
    let mut check = fresh;
    for g in general {
        check.push(g);
        let Some(gt) = text_of(conn, g)? else {
            continue;
        };
        let n = pieces(&gt).count() as i64;
        let mut stmt = conn.prepare_cached(
            "SELECT s.id, t.text FROM template_shape s JOIN templates t ON t.id = s.id
             WHERE s.pieces = ?1 AND s.id != ?2",
        )?;
        let covered: Vec<u64> = stmt
            .query_map(params![n, g as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })?
            .filter_map(|r| match r {
                Ok((id, t)) if covers(&gt, &t) => Some(Ok(id)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        check.extend(covered);
    }
    check.sort_unstable();
    check.dedup();
    for id in check {
        let Some(text) = text_of(conn, id)? else {
            continue;
        };
        if let Some(g) = best_cover(conn, id, &text)? {
            link(conn, id, g)?;
        }
    }
    Ok(())
}

/// The root of `id`'s set.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn root(conn: &Connection, id: u64) -> Result<u64, rusqlite::Error> {
    Ok(conn
        .prepare_cached("SELECT root FROM template_alias WHERE id = ?1")?
        .query_row([id as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(id, |r| r as u64))
}

/// How general a template is: its `<*>` count (0 for a text never announced).
fn generality(conn: &Connection, id: u64) -> Result<usize, rusqlite::Error> {
    let text: Option<String> = conn
        .prepare_cached("SELECT text FROM templates WHERE id = ?1")?
        .query_row([id as i64], |r| r.get(0))
        .optional()?;
    Ok(text.map_or(0, |t| t.matches("<*>").count()))
}

/// Records that `from` became `to`: joins their sets under the more general root.
/// Call after the batch's template texts are stored.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn link(conn: &Connection, from: u64, to: u64) -> Result<(), rusqlite::Error> {
    let (a, b) = (root(conn, from)?, root(conn, to)?);
    if a == b {
        return Ok(());
    }
    let key = |id: u64| -> Result<(usize, std::cmp::Reverse<u64>), rusqlite::Error> {
        Ok((generality(conn, id)?, std::cmp::Reverse(id)))
    };
    let (keep, gone) = if key(a)? >= key(b)? { (a, b) } else { (b, a) };
    conn.prepare_cached("UPDATE template_alias SET root = ?1 WHERE root = ?2")?
        .execute(params![keep as i64, gone as i64])?;
    let mut ins =
        conn.prepare_cached("INSERT OR REPLACE INTO template_alias(id, root) VALUES (?1, ?2)")?;
    for id in [from, to, a, b] {
        ins.execute(params![id as i64, keep as i64])?;
    }
    Ok(())
}

/// Every aliased id and its root (ids not in the map are their own root).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn roots(conn: &Connection) -> Result<HashMap<u64, u64>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached("SELECT id, root FROM template_alias")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Every id of `id`'s set (`id` alone when it was never aliased).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn members(conn: &Connection, id: u64) -> Result<Vec<u64>, rusqlite::Error> {
    let r = root(conn, id)?;
    let mut stmt = conn.prepare_cached("SELECT id FROM template_alias WHERE root = ?1")?;
    let mut v: Vec<u64> = stmt
        .query_map([r as i64], |row| row.get::<_, i64>(0))?
        .map(|x| x.map(|i| i as u64))
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        v.push(id);
    }
    v.sort_unstable();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(texts: &[(u64, &str)]) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE templates (id INTEGER PRIMARY KEY, text TEXT NOT NULL,
                                     first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL);",
        )
        .unwrap();
        create(&c).unwrap();
        for (id, t) in texts {
            c.execute(
                "INSERT INTO templates VALUES (?1, ?2, 0, 0)",
                params![*id as i64, t],
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn chains_resolve_to_the_most_general_text_in_any_order() {
        let texts = [
            (1, "Invalid user webmaster from <*>"),
            (2, "Invalid user admin from <*>"),
            (3, "Invalid user <*> from <*>"),
        ];
        // Two agents: one went 1 → 3, the other 2 → 3; in both arrival orders.
        for order in [[(1, 3), (2, 3)], [(2, 3), (1, 3)]] {
            let c = db(&texts);
            for (f, t) in order {
                link(&c, f, t).unwrap();
            }
            for id in [1, 2, 3] {
                assert_eq!(root(&c, id).unwrap(), 3);
            }
            assert_eq!(members(&c, 1).unwrap(), vec![1, 2, 3]);
        }
        // Links that arrive from specific to general and back keep the general root.
        let c = db(&texts);
        link(&c, 3, 1).unwrap();
        assert_eq!(root(&c, 1).unwrap(), 3);
        assert_eq!(root(&c, 42).unwrap(), 42);
        assert_eq!(members(&c, 42).unwrap(), vec![42]);
    }

    #[test]
    fn a_text_joins_the_most_specific_general_text_that_covers_it() {
        let texts = [
            (1, "Invalid user root from gateway port <*>"),
            (2, "Invalid user admin from gateway port <*>"),
            (3, "Invalid user <*> from gateway port <*>"),
            (4, "Invalid user <*> from <*> port <*>"),
            (5, "Accepted password for root from gateway port <*>"),
            (6, "<*> <*> <*> <*> <*> gateway port <*>"),
            (7, "Invalid user oracle from gateway port <*>"),
            (8, "Invalid user oracle from relay port <*>"),
        ];
        let c = db(&texts);
        // One agent stayed specific (1 and 2: two users so far).
        announce(&c, [(1, texts[0].1), (2, texts[1].1)], &[]).unwrap();
        assert_ne!(root(&c, 1).unwrap(), root(&c, 2).unwrap());
        // Another generalised: both are covered.
        announce(&c, [(3, texts[2].1), (7, texts[6].1)], &[(7, 3)]).unwrap();
        for id in [1, 2, 7] {
            assert_eq!(root(&c, id).unwrap(), 3, "{id}");
        }
        // A text announced later joins its cover when it arrives; a mostly-`<*>`
        // general text subsumes nothing.
        announce(&c, [(6, texts[5].1), (5, texts[4].1)], &[(5, 6)]).unwrap();
        assert_ne!(root(&c, 1).unwrap(), root(&c, 6).unwrap());
        announce(&c, [(8, texts[7].1)], &[]).unwrap();
        assert_eq!(root(&c, 8).unwrap(), 8, "nothing general covers it yet");
        announce(&c, [(4, texts[3].1)], &[(3, 4)]).unwrap();
        for id in [1, 2, 3, 7, 8] {
            assert_eq!(root(&c, id).unwrap(), 4, "{id}");
        }
        assert_eq!(root(&c, 5).unwrap(), 6);
    }
}

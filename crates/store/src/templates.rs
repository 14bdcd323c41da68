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
//! Bounded: an alias row exists per id that ever generalised, at most one per
//! template text an agent announced.

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
         CREATE INDEX IF NOT EXISTS template_alias_root ON template_alias(root);",
    )
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
}

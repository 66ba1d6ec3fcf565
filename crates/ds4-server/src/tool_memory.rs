//! Exact DSML tool replay (spec/serving.md §5.7): every tool-call id the model generated maps
//! to the exact text it sampled for the call block, so when a client sends the calls back as
//! JSON (reformatted, keys reordered, whitespace changed), the history renders to the sampled
//! bytes and the live or disk checkpoint still matches it as a prefix.
//!
//! Blocks are stored once however many ids share them; ids are kept in LRU order under
//! `--tool-memory-max-ids` and [`MAX_BYTES`]. The disk cache writes the ids whose block occurs
//! in a checkpoint's key text into that file's tool map and loads them back on start, so the
//! replay survives restarts. No I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use ds4::chat::dsml::{TOOL_CALLS_END, TOOL_CALLS_START};
use ds4::kvstore::ToolEntry;

/// Most bytes of DSML text held at once (ds4's cap).
pub const MAX_BYTES: usize = 512 << 20;

/// The id → sampled DSML map, shared by the handlers (lookups while rendering) and the engine
/// thread (remembering after a turn, persisting with checkpoints).
#[derive(Debug)]
pub struct ToolMemory {
    max_ids: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// id → (block number, LRU tick).
    ids: HashMap<String, (u64, u64)>,
    /// LRU tick → id.
    lru: BTreeMap<u64, String>,
    /// block number → block.
    blocks: HashMap<u64, Block>,
    /// block text → block number.
    by_text: HashMap<String, u64>,
    next_block: u64,
    tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Block {
    text: String,
    ids: BTreeSet<String>,
}

impl ToolMemory {
    /// An empty memory of at most `max_ids` ids.
    pub fn new(max_ids: usize) -> Self {
        ToolMemory {
            max_ids: max_ids.max(1),
            inner: Mutex::default(),
        }
    }

    /// The most ids held.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.ids.len())
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that the calls `ids` were sampled together as `dsml` (the text after the
    /// turn's content through `</｜DSML｜tool_calls>`).
    pub fn remember(&self, ids: &[String], dsml: &str) {
        if dsml.len() > MAX_BYTES || ids.is_empty() {
            return;
        }
        let Ok(mut m) = self.inner.lock() else { return };
        let block = match m.by_text.get(dsml) {
            Some(&b) => b,
            None => {
                let b = m.next_block;
                m.next_block += 1;
                m.by_text.insert(dsml.to_string(), b);
                m.blocks.insert(
                    b,
                    Block {
                        text: dsml.to_string(),
                        ids: BTreeSet::new(),
                    },
                );
                m.bytes += dsml.len();
                b
            }
        };
        for id in ids {
            m.forget(id);
            m.tick += 1;
            let tick = m.tick;
            m.ids.insert(id.clone(), (block, tick));
            m.lru.insert(tick, id.clone());
            if let Some(b) = m.blocks.get_mut(&block) {
                b.ids.insert(id.clone());
            }
        }
        while m.ids.len() > self.max_ids || m.bytes > MAX_BYTES {
            let Some((_, oldest)) = m.lru.pop_first() else {
                break;
            };
            m.forget(&oldest);
        }
    }

    /// The DSML text of the calls `ids`, if every one of them is known and all map to the same
    /// block (spec §5.7). Counts as a use of each.
    pub fn lookup(&self, ids: &[&str]) -> Option<String> {
        let mut m = self.inner.lock().ok()?;
        let first = m.ids.get(*ids.first()?)?.0;
        if !ids
            .iter()
            .all(|id| m.ids.get(*id).is_some_and(|e| e.0 == first))
        {
            return None;
        }
        for id in ids {
            m.touch(id);
        }
        m.blocks.get(&first).map(|b| b.text.clone())
    }

    /// Every remembered (id, DSML) whose DSML occurs in `text` (a checkpoint's key text), for
    /// the checkpoint's tool map.
    pub fn entries_in(&self, text: &str) -> Vec<ToolEntry> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        if m.ids.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(s) = text[from..].find(TOOL_CALLS_START).map(|i| from + i) {
            let Some(e) = text[s..]
                .find(TOOL_CALLS_END)
                .map(|i| s + i + TOOL_CALLS_END.len())
            else {
                break;
            };
            // The stored text may start with the whitespace the model put before the block.
            let ws = text[..s].len() - text[..s].trim_end().len();
            let found = (0..=ws)
                .rev()
                .filter(|k| text.is_char_boundary(s - k))
                .find_map(|k| m.by_text.get(&text[s - k..e]));
            if let Some(b) = found.and_then(|b| m.blocks.get(b)) {
                out.extend(b.ids.iter().map(|id| ToolEntry {
                    id: id.clone(),
                    dsml: b.text.clone(),
                }));
            }
            from = e;
        }
        out
    }

    /// Loads a checkpoint's tool map (ids grouped by their DSML).
    pub fn load(&self, entries: &[ToolEntry]) {
        let mut by_dsml: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in entries {
            by_dsml.entry(&e.dsml).or_default().push(e.id.clone());
        }
        for (dsml, ids) in by_dsml {
            self.remember(&ids, dsml);
        }
    }
}

impl Inner {
    fn forget(&mut self, id: &str) {
        let Some((block, tick)) = self.ids.remove(id) else {
            return;
        };
        self.lru.remove(&tick);
        let empty = self.blocks.get_mut(&block).is_some_and(|b| {
            b.ids.remove(id);
            b.ids.is_empty()
        });
        if empty {
            if let Some(b) = self.blocks.remove(&block) {
                self.bytes -= b.text.len();
                self.by_text.remove(&b.text);
            }
        }
    }

    fn touch(&mut self, id: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.ids.get_mut(id) {
            self.lru.remove(&e.1);
            e.1 = tick;
            self.lru.insert(tick, id.to_string());
        }
    }
}

/// The text to remember for a tool-call turn: what the model sampled after the content
/// through the end of the first tool block. `visible` is the output after `</think>` (all of
/// it in chat mode); None if the parsed content is not its prefix (then replay falls back to
/// the canonical rendering).
pub fn sampled_block<'a>(visible: &'a str, content: &str) -> Option<&'a str> {
    let rest = visible.strip_prefix(content)?;
    let start = rest.find(TOOL_CALLS_START)?;
    let end = rest[start..].find(TOOL_CALLS_END)? + start + TOOL_CALLS_END.len();
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

    #[test]
    fn ids_of_one_block_replay_it_and_mixed_ones_do_not() {
        let m = ToolMemory::new(10);
        m.remember(&["a".into(), "b".into()], BLOCK);
        m.remember(&["c".into()], "x");
        assert_eq!(m.lookup(&["a", "b"]).as_deref(), Some(BLOCK));
        assert_eq!(m.lookup(&["a", "c"]), None);
        assert_eq!(m.lookup(&["a", "zz"]), None);
        assert_eq!(m.lookup(&[]), None);
    }

    #[test]
    fn the_oldest_ids_go_first_and_unused_blocks_with_them() {
        let m = ToolMemory::new(2);
        m.remember(&["a".into()], "A");
        m.remember(&["b".into()], "B");
        assert!(m.lookup(&["a"]).is_some()); // a is now the most recent
        m.remember(&["c".into()], "C");
        assert_eq!(m.len(), 2);
        assert_eq!(m.lookup(&["b"]), None);
        assert!(m.lookup(&["a"]).is_some() && m.lookup(&["c"]).is_some());
        assert!(!m.inner.lock().unwrap().by_text.contains_key("B"));
    }

    #[test]
    fn blocks_in_a_transcript_give_their_ids_with_leading_whitespace() {
        let m = ToolMemory::new(10);
        m.remember(&["a".into(), "b".into()], BLOCK);
        m.remember(&["c".into()], &BLOCK[2..].replace("\"f\"", "\"g\""));
        let text = format!(
            "user text{BLOCK}<｜end▁of▁sentence｜>more{}",
            &BLOCK[2..].replace("\"f\"", "\"g\"")
        );
        let ids: Vec<String> = m.entries_in(&text).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(m.entries_in("no blocks here").is_empty());
        let loaded = ToolMemory::new(10);
        loaded.load(&m.entries_in(&text));
        assert_eq!(loaded.lookup(&["a", "b"]).as_deref(), Some(BLOCK));
    }

    #[test]
    fn the_sampled_block_is_what_follows_the_content() {
        let out = format!("Sure.{BLOCK}ignored");
        assert_eq!(sampled_block(&out, "Sure."), Some(BLOCK));
        assert_eq!(sampled_block(&out, "Other"), None);
        assert_eq!(sampled_block("Sure.", "Sure."), None);
    }
}

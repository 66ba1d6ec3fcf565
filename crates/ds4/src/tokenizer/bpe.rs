//! Byte-level BPE merging of one pre-token piece (spec/serving.md §1.2).
//!
//! A piece's bytes start as one symbol each (the token of that byte's character). Then the
//! adjacent pair with the lowest merge rank is merged, the leftmost on equal ranks, until no
//! adjacent pair has a rank. This is the classic loop run with a min-heap over
//! (rank, position), the way HF tokenizers' `Word::merge_all` does it, so long pieces stay
//! O(n log n). Bytes whose character has no token are dropped, as HF does without `unk`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

const NONE: usize = usize::MAX;

/// Merge table and byte tokens: everything BPE needs, in token ids.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    /// `(left id, right id)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's character, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

impl Bpe {
    pub(crate) fn new(
        merges: HashMap<(u32, u32), (u32, u32)>,
        byte_ids: [Option<u32>; 256],
    ) -> Self {
        Bpe { merges, byte_ids }
    }

    /// Whether byte `b` has a token (bytes without one are dropped).
    pub(crate) fn covers(&self, b: u8) -> bool {
        self.byte_ids[usize::from(b)].is_some()
    }

    /// Appends the token ids of `piece` to `out`.
    pub(crate) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::with_capacity(piece.len());
        for &b in piece {
            if let Some(id) = self.byte_ids[usize::from(b)] {
                let n = syms.len();
                syms.push(Symbol {
                    id,
                    prev: n.checked_sub(1).unwrap_or(NONE),
                    next: n + 1,
                    alive: true,
                });
            }
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        if syms.len() > 1 {
            self.merge_all(&mut syms);
        }
        out.extend(syms.iter().filter(|s| s.alive).map(|s| s.id));
    }

    fn rank_of(&self, syms: &[Symbol], left: usize) -> Option<(u32, u32)> {
        let l = syms.get(left)?;
        let r = syms.get(l.next)?;
        self.merges.get(&(l.id, r.id)).copied()
    }

    fn merge_all(&self, syms: &mut [Symbol]) {
        let mut heap = BinaryHeap::with_capacity(syms.len());
        for i in 0..syms.len() {
            if let Some((rank, _)) = self.rank_of(syms, i) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            // Skip stale entries: the symbol was absorbed, or its right neighbour changed.
            let alive = syms.get(pos).is_some_and(|s| s.alive);
            let current = if alive { self.rank_of(syms, pos) } else { None };
            let Some((cur_rank, merged)) = current else {
                continue;
            };
            if cur_rank != rank {
                continue;
            }
            let right = syms[pos].next;
            let after = syms[right].next;
            syms[right].alive = false;
            syms[pos].id = merged;
            syms[pos].next = after;
            if let Some(s) = syms.get_mut(after) {
                s.prev = pos;
            }
            let before = syms[pos].prev;
            if let Some((r, _)) = self.rank_of(syms, before) {
                heap.push(Reverse((r, before)));
            }
            if let Some((r, _)) = self.rank_of(syms, pos) {
                heap.push(Reverse((r, pos)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vocabulary a=0 b=1 c=2 ab=3 bc=4 abc=5 aa=6.
    fn toy() -> Bpe {
        let mut byte_ids = [None; 256];
        byte_ids[usize::from(b'a')] = Some(0);
        byte_ids[usize::from(b'b')] = Some(1);
        byte_ids[usize::from(b'c')] = Some(2);
        let merges = HashMap::from([
            ((1, 2), (0, 4)),
            ((0, 1), (1, 3)),
            ((0, 4), (2, 5)),
            ((0, 0), (3, 6)),
        ]);
        Bpe::new(merges, byte_ids)
    }

    fn enc(bpe: &Bpe, s: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_piece(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn lowest_rank_pair_merges_first() {
        // "bc" (rank 0) beats "ab" (rank 1); then a+bc (rank 2).
        assert_eq!(enc(&toy(), "abc"), [5]);
        assert_eq!(enc(&toy(), "ab"), [3]);
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        assert_eq!(enc(&toy(), "aaa"), [6, 0]);
        assert_eq!(enc(&toy(), "aaaa"), [6, 6]);
    }

    #[test]
    fn bytes_without_a_token_are_dropped_and_their_neighbours_may_merge() {
        // As in HF's BPE without `unk`: "z" vanishes, leaving "ab" adjacent.
        assert_eq!(enc(&toy(), "azb"), [3]);
        assert_eq!(enc(&toy(), "zc"), [2]);
        assert_eq!(enc(&toy(), ""), Vec::<u32>::new());
    }
}

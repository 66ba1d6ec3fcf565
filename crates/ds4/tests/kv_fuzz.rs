//! Property tests of the cache-file reader (issue 8, STYLE.md §7): random bytes, truncations,
//! flipped bytes, and mutations with every checksum fixed up (so that the parser gets past the
//! CRCs and meets hostile lengths and counts) never panic and never allocate more than the
//! file's size implies; a valid file round-trips.

use std::io::Cursor;

use ds4::kvstore::format::{self, FileMeta, Header, ModelStamp, ToolEntry, PREFIX_BYTES};
use ds4::kvstore::{KeyKind, SaveReason};
use ds4::session::{Frontier, KvState, LayerState, Snapshot};
use proptest::prelude::*;

/// A consistent snapshot of a 3-layer model (ratios 0, 4, 128), `tokens` tokens.
fn snapshot(tokens: usize, f16_rows: bool) -> Snapshot {
    let (hd, idx_hd, n_swa) = (8, 4, 4);
    let val = |i: usize| {
        let v = (i as f32 * 0.37).sin();
        if f16_rows {
            half::f16::from_f32(v).to_f32()
        } else {
            v
        }
    };
    let rows = |n: usize, d: usize| (0..n * d).map(val).collect::<Vec<f32>>();
    let layers = [0usize, 4, 128]
        .iter()
        .map(|&r| LayerState {
            raw: rows(tokens.min(n_swa), hd),
            comp: rows(tokens.checked_div(r).unwrap_or(0), hd),
            idx: if r == 4 {
                rows(tokens / 4, idx_hd)
            } else {
                Vec::new()
            },
            attn_frontier: (r != 0).then(|| Frontier::new(r, hd)),
            idx_frontier: (r == 4).then(|| Frontier::new(r, idx_hd)),
        })
        .collect();
    Snapshot {
        tokens: (0..tokens as u32).collect(),
        logits: (0..16).map(|i| i as f32).collect(),
        kv: KvState {
            n_swa,
            head_dim: hd,
            layers,
        },
    }
}

fn file(tokens: usize, f16_rows: bool, tools: &[ToolEntry]) -> Vec<u8> {
    let meta = FileMeta {
        reason: SaveReason::Cold,
        key_kind: KeyKind::Tokens,
        model: ModelStamp {
            layout: [7; 20],
            expert_types: [16, 16, 10],
            quant_bits: 2,
            precision: 1,
        },
        ctx: 1024,
        now: 1_700_000_000,
        text: "<｜begin▁of▁sentence｜>key text",
        tools,
    };
    let mut c = Cursor::new(Vec::new());
    format::write_file(&mut c, &meta, &snapshot(tokens, f16_rows)).expect("writes");
    c.into_inner()
}

fn tools() -> Vec<ToolEntry> {
    vec![ToolEntry {
        id: "call_1".into(),
        dsml: "\n\n<｜DSML｜tool_calls>…</｜DSML｜tool_calls>".into(),
    }]
}

/// Recomputes every checksum of a (mutated) file, as far as its header's sizes allow.
fn fix_crcs(b: &mut [u8]) {
    if b.len() < PREFIX_BYTES {
        return;
    }
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let (t, m) = (u64_at(b, 88), u64_at(b, 96));
    let mut at = PREFIX_BYTES as u64;
    for (len, crc_off) in [(Some(t), 112), (Some(m), 116), (None, 120)] {
        let start = at.min(b.len() as u64) as usize;
        let end = match len {
            Some(l) => at.saturating_add(l).min(b.len() as u64) as usize,
            None => b.len(),
        };
        let crc = crc32fast::hash(&b[start..end]);
        b[crc_off..crc_off + 4].copy_from_slice(&crc.to_le_bytes());
        at = at.saturating_add(len.unwrap_or(0));
    }
    if t <= 1 << 20 {
        use sha1::Digest;
        let end = (PREFIX_BYTES as u64 + t).min(b.len() as u64) as usize;
        let sha: [u8; 20] = sha1::Sha1::digest(&b[PREFIX_BYTES..end]).into();
        b[68..88].copy_from_slice(&sha);
    }
    let crc = crc32fast::hash(&b[..124]);
    b[124..128].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn valid_files_round_trip_in_both_row_encodings() {
    for f16 in [false, true] {
        let b = file(9, f16, &tools());
        let c = format::decode(&b, 16).expect("decodes");
        assert_eq!(c.snapshot, snapshot(9, f16));
        assert_eq!(c.tools, tools());
        assert_eq!(c.text, "<｜begin▁of▁sentence｜>key text");
        assert_eq!(Header::decode(&b).unwrap(), c.header);
    }
    // f16 rows take half the bytes (exactly representable values only).
    assert!(file(200, true, &[]).len() < file(200, false, &[]).len());
}

#[test]
fn every_truncation_and_every_single_byte_flip_is_an_error() {
    let b = file(9, true, &tools());
    for n in 0..b.len() {
        assert!(format::decode(&b[..n], 16).is_err(), "truncated to {n}");
    }
    for i in 0..b.len() {
        let mut m = b.clone();
        m[i] ^= 0x5a;
        let r = format::decode(&m, 16);
        // The stats bytes (hits, last used) are not checksummed: any value is valid.
        if (128..144).contains(&i) {
            assert!(r.is_ok(), "stats byte {i}");
        } else {
            assert!(r.is_err(), "flipped byte {i} was accepted");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = format::decode(&b, 16);
        let _ = Header::decode(&b);
        let _ = format::decode_tool_map(&b, 16);
        let _ = format::read_payload(&mut &b[..], b.len() as u64);
    }

    #[test]
    fn mutated_files_with_fixed_checksums_never_panic(
        tokens in 1usize..40,
        f16 in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12),
        cut in any::<Option<usize>>(),
    ) {
        let mut b = file(tokens, f16, &tools());
        for (at, v) in edits {
            let i = at % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        fix_crcs(&mut b);
        let _ = format::decode(&b, 16);
    }

    #[test]
    fn hostile_payload_counts_are_rejected_before_allocating(
        words in proptest::collection::vec(any::<u32>(), 10..40),
    ) {
        // A payload header claiming huge counts over a few bytes of data.
        let mut b = b"KVP1".to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        for w in &words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        prop_assert!(format::read_payload(&mut &b[..], b.len() as u64).is_err());
    }
}

//! Disk snapshots continue exactly (issue 8 "Round trip"): prefill, store the session in a
//! cache directory, load it in a fresh model and backend, decode: every logit is bit-identical
//! to a session that never left memory, in both precisions. Uses the committed q2 fixture
//! model (tools/make-test-models.sh).

mod common;

use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::kvstore::{
    model_stamp, DirOptions, KeyKind, KvDir, SaveReason, StoreOutcome, StoreRequest,
};
use ds4::model::{Model, Precision};
use ds4::session::Session;

/// Prefill length: past the raw window (32), 2 ratio-128 rows, and more ratio-4 rows than the
/// indexer's top-k (16), so every part of the state is exercised.
const PROMPT: usize = 300;
/// Tokens decoded after the restore.
const DECODE: usize = 8;

fn model() -> Option<Arc<Model>> {
    let path = common::fixture("model/q2/model.gguf");
    if !path.exists() {
        eprintln!(
            "skipping: {} is missing (tools/make-test-models.sh)",
            path.display()
        );
        return None;
    }
    Some(Arc::new(Model::open(&path).expect("fixture model loads")))
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |m, (i, &x)| if x > m.1 { (i, x) } else { m },
        )
        .0 as u32
}

/// Greedy decode of `n` tokens from `sess`; the logits of every step.
fn decode(
    model: &Model,
    be: &CpuBackend,
    sess: &mut Session,
    n: usize,
    prec: Precision,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&sess.logits);
        out.push(model.forward_last(be, sess, &[t], prec).expect("decode"));
    }
    out
}

fn opts() -> DirOptions {
    DirOptions {
        budget_bytes: 1 << 30,
        min_tokens: 1,
        reject_different_quant: false,
        max_tool_entries: 16,
    }
}

fn round_trip(prec: Precision) {
    let Some(m) = model() else { return };
    let cfg = &m.config;
    let prompt: Vec<u32> = (0..PROMPT as u32)
        .map(|i| (i * 7919 + 13) % cfg.n_vocab as u32)
        .collect();
    let be = CpuBackend::new(m.file.clone());
    let mut never_saved = m.new_session(&be, 1024).expect("session");
    m.forward_last(&be, &mut never_saved, &prompt, prec)
        .expect("prefill");
    let want = decode(&m, &be, &mut never_saved, DECODE, prec);

    let dir = tempfile::tempdir().expect("tempdir");
    let stamp = model_stamp(&m, prec);
    {
        let mut saver = m.new_session(&be, 1024).expect("session");
        m.forward_last(&be, &mut saver, &prompt, prec)
            .expect("prefill");
        let snap = saver.snapshot(&be).expect("snapshot");
        let (mut kv, notices) = KvDir::open(dir.path(), stamp, cfg, 1024, opts()).expect("open");
        assert!(notices.is_empty(), "{notices:?}");
        let (outcome, _) = kv
            .store(&StoreRequest {
                text: "the rendered prompt",
                key_kind: KeyKind::Tokens,
                reason: SaveReason::Cold,
                snapshot: &snap,
                tools: &[],
            })
            .expect("store");
        assert!(
            matches!(outcome, StoreOutcome::Written { .. }),
            "{outcome:?}"
        );
    }

    // A fresh model, backend and session: nothing shared with the writer but the directory.
    let m2 = model().expect("fixture model");
    let be2 = CpuBackend::new(m2.file.clone());
    let (mut kv, notices) =
        KvDir::open(dir.path(), model_stamp(&m2, prec), &m2.config, 1024, opts()).expect("open");
    assert!(notices.is_empty(), "{notices:?}");
    let (hit, notices) = kv.lookup("the rendered prompt and then the next turn");
    assert!(notices.is_empty(), "{notices:?}");
    let hit = hit.expect("the checkpoint is found by its text prefix");
    assert_eq!(hit.text_bytes, "the rendered prompt".len());
    assert_eq!(hit.snapshot.tokens, prompt);
    let mut restored = m2.new_session(&be2, 1024).expect("session");
    restored
        .restore(&be2, &m2.config, &hit.snapshot)
        .expect("restore");
    let got = decode(&m2, &be2, &mut restored, DECODE, prec);
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let diff = g
            .iter()
            .zip(w)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(diff, None, "{prec:?}: step {step}: logit {diff:?} differs");
    }
    assert_eq!(restored.tokens, never_saved.tokens);
}

#[test]
fn restored_snapshot_decodes_bit_identically_precise() {
    round_trip(Precision::Precise);
}

#[test]
fn restored_snapshot_decodes_bit_identically_default() {
    round_trip(Precision::Default);
}

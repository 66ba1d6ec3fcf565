//! The V4 tokenizer against HF tokenizers (spec/serving.md §1; spec/references.md).
//!
//! Reads the real tokenizer.json (`tools/fetch-tokenizer.sh` puts it in
//! tests/fixtures/tokenizer/), converts it to GGUF metadata, builds the tokenizer from that, and
//! compares with `cases.jsonl.gz` from `tools/reference/tokenizer_fixtures.py` (ids made by HF
//! tokenizers 0.23.3 from the same file).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::OnceLock;

use ds4::gguf::Value;
use ds4::tokenizer::{gguf_metadata_from_tokenizer_json, TokenType, Tokenizer};
use rand::{Rng, SeedableRng};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

fn metadata() -> &'static HashMap<String, Value> {
    static META: OnceLock<HashMap<String, Value>> = OnceLock::new();
    META.get_or_init(|| {
        let path = fixture_dir().join("tokenizer.json");
        let json = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read {}: {e}\nrun tools/fetch-tokenizer.sh to download the V4 tokenizer.json", path.display())
        });
        gguf_metadata_from_tokenizer_json(&json).expect("tokenizer.json converts").into_iter().collect()
    })
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_metadata(|k| metadata().get(k)).expect("tokenizer builds from metadata")
    })
}

struct Case {
    s: String,
    ids: Vec<u32>,
    plain: Vec<u32>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let path = fixture_dir().join("cases.jsonl.gz");
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = BufReader::new(flate2::read::GzDecoder::new(file));
        let ids_of = |v: &serde_json::Value| -> Vec<u32> {
            let arr = v.as_array().expect("ids array");
            arr.iter()
                .map(|x| u32::try_from(x.as_u64().expect("id")).expect("id fits u32"))
                .collect()
        };
        let mut out = Vec::new();
        for line in reader.lines().skip(1) {
            let line = line.expect("fixture line");
            let v: serde_json::Value = serde_json::from_str(&line).expect("fixture json");
            let ids = ids_of(&v["ids"]);
            let plain = v.get("plain").map(ids_of).unwrap_or_else(|| ids.clone());
            out.push(Case {
                s: v["s"].as_str().expect("s").to_string(),
                ids,
                plain,
            });
        }
        assert!(out.len() >= 5000, "only {} fixture cases", out.len());
        out
    })
}

fn check_all(mode: &str, expected: impl Fn(&Case) -> &[u32], got: impl Fn(&str) -> Vec<u32>) {
    let mut failures = Vec::new();
    for case in cases() {
        let ids = got(&case.s);
        if ids != expected(case) {
            failures.push(format!(
                "  {:?}\n    want {:?}\n    got  {:?}",
                case.s,
                expected(case),
                ids
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{mode}: {} of {} strings differ from HF tokenizers; first ones:\n{}",
        failures.len(),
        cases().len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn encode_with_special_parsing_matches_hf_on_every_fixture_string() {
    let tok = tokenizer();
    check_all("parse_special=true", |c| &c.ids, |s| tok.encode(s, true));
}

#[test]
fn encode_without_special_parsing_matches_hf_on_every_fixture_string() {
    let tok = tokenizer();
    check_all(
        "parse_special=false",
        |c| &c.plain,
        |s| tok.encode(s, false),
    );
}

#[test]
fn decode_inverts_encode_on_every_fixture_string() {
    let tok = tokenizer();
    for case in cases() {
        assert_eq!(tok.decode(&case.ids), case.s);
        assert_eq!(tok.decode(&case.plain), case.s);
    }
}

/// Feeds `ids` one at a time; checks every piece against the bytes decoded so far.
fn check_stream(tok: &Tokenizer, ids: &[u32]) {
    let mut dec = tok.stream_decoder();
    let mut emitted = String::new();
    let mut bytes = Vec::new();
    for &id in ids {
        let piece = dec.push(id);
        emitted.push_str(&piece);
        bytes.extend_from_slice(tok.token_bytes(id).unwrap_or_default());
        if let Ok(prefix) = std::str::from_utf8(&bytes) {
            assert_eq!(
                emitted, prefix,
                "stream lags behind a complete prefix (ids {ids:?})"
            );
            assert!(!dec.has_pending());
        }
        // The lossy text so far always starts with what was emitted.
        let lossy = String::from_utf8_lossy(&bytes);
        assert!(
            lossy.starts_with(&emitted),
            "emitted text is not a prefix of the decoded text"
        );
    }
    emitted.push_str(&dec.finish());
    assert_eq!(emitted, tok.decode(ids));
}

#[test]
fn stream_decoder_agrees_with_decode_on_every_fixture_sequence() {
    let tok = tokenizer();
    for case in cases() {
        check_stream(tok, &case.ids);
        check_stream(tok, &case.plain);
    }
}

#[test]
fn stream_decoder_agrees_with_decode_on_random_token_sequences() {
    let tok = tokenizer();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20260521);
    let n = u32::try_from(tok.vocab_size()).expect("vocab fits u32");
    for _ in 0..2000 {
        let len = rng.random_range(1..12);
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..n)).collect();
        check_stream(tok, &ids);
    }
}

#[test]
fn special_ids_are_found_by_text() {
    // Ids as listed in tokenizer.json's added_tokens.
    let s = tokenizer().special_ids();
    assert_eq!((s.bos, s.eos, s.user, s.assistant), (0, 1, 128803, 128804));
    assert_eq!(
        (s.think_open, s.think_close, s.dsml),
        (128821, 128822, 128825)
    );
    assert_eq!(tokenizer().vocab_size(), 129280);
    assert_eq!(tokenizer().decode(&[s.user, s.dsml]), "<｜User｜>｜DSML｜");
}

#[test]
fn converted_metadata_types_follow_llama_cpp() {
    let tok = tokenizer();
    let count = |t: TokenType| {
        (0..129280u32)
            .filter(|&id| tok.token_type(id) == Some(t))
            .count()
    };
    // 1283 added tokens; the six that are neither special nor `<｜…｜>`-shaped are user-defined.
    assert_eq!(count(TokenType::UserDefined), 6);
    assert_eq!(count(TokenType::Control), 1277);
    assert_eq!(count(TokenType::Normal), 129280 - 1283);
    assert_eq!(
        tok.token_type(tok.think_open()),
        Some(TokenType::UserDefined)
    );
    assert_eq!(tok.token_type(tok.user()), Some(TokenType::Control));
    assert_eq!(
        metadata()["tokenizer.ggml.pre"],
        Value::String("joyai-llm".into())
    );
    assert_eq!(metadata()["tokenizer.ggml.bos_token_id"], Value::U32(0));
}

#[test]
fn dsml_tags_split_around_the_dsml_token() {
    // spec/serving.md §1.4: `</｜DSML｜parameter>` is `</` + `｜DSML｜` + BPE(`parameter>`).
    let tok = tokenizer();
    let ids = tok.encode("</｜DSML｜parameter>", true);
    assert_eq!(
        ids.first().map(|&id| tok.decode(&[id])),
        Some("</".to_string())
    );
    assert_eq!(ids.get(1), Some(&tok.dsml()));
    assert_eq!(tok.decode(ids.get(2..).unwrap_or_default()), "parameter>");
}

#[test]
#[ignore = "timing report, run with --ignored --nocapture in release"]
fn encode_speed_report() {
    let tok = tokenizer();
    let text: String = cases().iter().map(|c| c.s.as_str()).collect::<String>();
    let text = &text[..text
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= 50_000)
        .last()
        .unwrap_or(0)];
    let t0 = std::time::Instant::now();
    let ids = tok.encode(text, true);
    eprintln!(
        "mixed: encoded {} bytes into {} tokens in {:?}",
        text.len(),
        ids.len(),
        t0.elapsed()
    );
    for (name, unit) in [
        ("one letter", "a"),
        ("spaces", " "),
        ("CJK", "中"),
        ("word", "hello"),
    ] {
        let long = unit.repeat(50_000 / unit.len());
        let t0 = std::time::Instant::now();
        let ids = tok.encode(&long, true);
        eprintln!(
            "{name}: encoded {} bytes into {} tokens in {:?}",
            long.len(),
            ids.len(),
            t0.elapsed()
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    #[test]
    fn decode_inverts_encode_on_arbitrary_strings(s in "\\PC*|(\\PC|<｜User｜>|｜DSML｜|<think>|\\s)*") {
        let tok = tokenizer();
        proptest::prop_assert_eq!(tok.decode(&tok.encode(&s, true)), s.clone());
        proptest::prop_assert_eq!(tok.decode(&tok.encode(&s, false)), s);
    }
}

#[test]
fn bounded_encode_matches_encode_on_every_fixture_string_at_every_limit() {
    let tok = tokenizer();
    for c in cases() {
        let n = c.ids.len();
        for limit in [n, n + 1, n.saturating_sub(1), n / 2, 0] {
            match tok.encode_bounded(&c.s, true, limit) {
                Ok(ids) => {
                    assert!(n <= limit, "{:?}: {n} tokens accepted under {limit}", c.s);
                    assert_eq!(ids, c.ids, "{:?}", c.s);
                }
                Err(e) => {
                    assert!(n > limit, "{:?}: {n} tokens refused under {limit}", c.s);
                    assert!(e.at_least > limit && e.at_least <= n, "{:?}: {e}", c.s);
                }
            }
        }
    }
}

#[test]
fn bounded_encode_refuses_a_huge_text_without_splitting_it() {
    let tok = tokenizer();
    // 50 MB without a space: the byte count alone proves it cannot fit 32768 tokens.
    let text = "x".repeat(50 << 20);
    let e = tok
        .encode_bounded(&text, true, 32767)
        .expect_err("too long");
    assert!(e.at_least > 32767 && e.at_least <= text.len(), "{e}");
    // Just over the limit: counting stops at the first piece past it, with a true bound.
    let text = "word ".repeat(40_000);
    let e = tok.encode_bounded(&text, true, 1000).expect_err("too long");
    let n = tok.encode(&text, true).len();
    assert!(e.at_least > 1000 && e.at_least <= n, "{e}, {n} tokens");
    let text = "<｜User｜>".repeat(5000);
    let e = tok.encode_bounded(&text, true, 100).expect_err("too long");
    assert!(e.at_least > 100 && e.at_least <= 5000, "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    #[test]
    fn bounded_encode_is_encode_or_a_true_lower_bound(
        s in "(\\PC|<｜User｜>|｜DSML｜|<think>|\\s|a{1,40}|\\.{1,200})*",
        limit in 0usize..64,
        special in proptest::bool::ANY,
    ) {
        let tok = tokenizer();
        let full = tok.encode(&s, special);
        match tok.encode_bounded(&s, special, limit) {
            Ok(ids) => proptest::prop_assert_eq!(ids, full),
            Err(e) => {
                proptest::prop_assert!(full.len() > limit);
                proptest::prop_assert!(e.at_least > limit && e.at_least <= full.len());
            }
        }
    }
}

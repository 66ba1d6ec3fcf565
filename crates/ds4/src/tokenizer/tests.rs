//! Unit tests on a toy vocabulary (the real one is tested in `tests/tokenizer_reference.rs`).

use super::*;

/// Byte tokens 0..256, then merges "Ġ t", "h e", "Ġt he", then the seven specials.
fn toy_metadata() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| bytes::byte_to_char(b).to_string())
        .collect();
    let mut types = vec![TokenType::Normal; 256];
    for t in ["Ġt", "he", "Ġthe"] {
        tokens.push(t.to_string());
        types.push(TokenType::Normal);
    }
    for (i, (_, text)) in SPECIAL_TEXTS.iter().enumerate() {
        tokens.push(text.to_string());
        types.push(if i < 4 {
            TokenType::Control
        } else {
            TokenType::UserDefined
        });
    }
    let merges = ["Ġ t", "h e", "Ġt he"].map(String::from);
    vec![
        (KEY_TOKENS.into(), string_array_value(tokens)),
        (
            KEY_TOKEN_TYPE.into(),
            Value::Array(
                ValueType::I32,
                types.iter().map(|t| Value::I32(t.id())).collect(),
            ),
        ),
        (KEY_MERGES.into(), string_array_value(merges)),
    ]
}

fn build(meta: &[(String, Value)]) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_metadata(|k| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v))
}

fn without(mut meta: Vec<(String, Value)>, key: &str) -> Vec<(String, Value)> {
    meta.retain(|(k, _)| k != key);
    meta
}

fn replace(mut meta: Vec<(String, Value)>, key: &str, value: Value) -> Vec<(String, Value)> {
    for (k, v) in &mut meta {
        if k == key {
            *v = value.clone();
        }
    }
    meta
}

#[test]
fn toy_vocabulary_merges_and_finds_specials() {
    let tok = build(&toy_metadata()).expect("toy tokenizer builds");
    assert_eq!(tok.encode(" the", false), [258]);
    assert_eq!(tok.encode("the the", false), [u32::from(b't'), 257, 258]);
    assert_eq!(tok.bos(), 259);
    assert_eq!(tok.dsml(), 265);
    assert_eq!(tok.vocab_size(), 266);
    assert_eq!(tok.token_bytes(258), Some(&b" the"[..]));
    assert_eq!(tok.token_id("Ġthe"), Some(258));
}

#[test]
fn parse_special_splits_out_added_tokens_and_plain_mode_does_not() {
    let tok = build(&toy_metadata()).expect("toy tokenizer builds");
    let text = "<｜User｜> the<think>";
    let ids = tok.encode(text, true);
    assert_eq!(ids, [tok.user(), 258, tok.think_open()]);
    let plain = tok.encode(text, false);
    assert!(!plain.contains(&tok.user()) && !plain.contains(&tok.think_open()));
    assert_eq!(tok.decode(&ids), text);
    assert_eq!(tok.decode(&plain), text);
}

#[test]
fn missing_tokens_key_is_named() {
    let err = build(&without(toy_metadata(), KEY_TOKENS)).expect_err("must fail");
    assert!(
        matches!(err, TokenizerError::MissingKey { key } if key == KEY_TOKENS),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.ggml.tokens"));
}

#[test]
fn ill_typed_merges_are_named() {
    let err = build(&replace(toy_metadata(), KEY_MERGES, Value::U32(3))).expect_err("must fail");
    assert!(
        matches!(err, TokenizerError::WrongType { key, .. } if key == KEY_MERGES),
        "{err}"
    );
    let bad_elem = Value::Array(ValueType::I32, vec![Value::I32(1)]);
    let err = build(&replace(toy_metadata(), KEY_MERGES, bad_elem)).expect_err("must fail");
    assert!(err.to_string().contains("element 0"), "{err}");
}

#[test]
fn token_type_array_of_wrong_length_is_rejected() {
    let short = Value::Array(ValueType::I32, vec![Value::I32(1)]);
    let err = build(&replace(toy_metadata(), KEY_TOKEN_TYPE, short)).expect_err("must fail");
    assert!(
        matches!(err, TokenizerError::WrongLength { found: 1, .. }),
        "{err}"
    );
}

#[test]
fn merge_of_unknown_tokens_is_rejected() {
    let merges = string_array_value(["Ġ t", "x yz"].map(String::from));
    let err = build(&replace(toy_metadata(), KEY_MERGES, merges)).expect_err("must fail");
    assert!(
        matches!(err, TokenizerError::BadMerge { rank: 1, .. }),
        "{err}"
    );
}

#[test]
fn missing_special_token_is_named() {
    let meta = toy_metadata();
    let Some(Value::Array(_, items)) = meta
        .iter()
        .find(|(k, _)| k == KEY_TOKENS)
        .map(|(_, v)| v.clone())
    else {
        panic!("toy metadata has tokens");
    };
    let renamed: Vec<String> = items
        .iter()
        .map(|v| v.as_str().unwrap_or_default().replace("｜DSML｜", "|DSML|"))
        .collect();
    let err =
        build(&replace(meta, KEY_TOKENS, string_array_value(renamed))).expect_err("must fail");
    assert!(
        matches!(
            err,
            TokenizerError::MissingSpecialToken { name: "DSML", .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("｜DSML｜"));
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = build(&toy_metadata()).expect("toy tokenizer builds");
    // "é" is C3 A9: two byte tokens.
    let ids = tok.encode("é!", false);
    assert_eq!(ids.len(), 3);
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(ids[0]), "");
    assert!(dec.has_pending());
    assert_eq!(dec.push(ids[1]), "é");
    assert_eq!(dec.push(ids[2]), "!");
    assert_eq!(dec.finish(), "");
}

#[test]
fn stream_decoder_replaces_invalid_bytes_like_decode() {
    let tok = build(&toy_metadata()).expect("toy tokenizer builds");
    // Lone continuation byte, then a truncated 3-byte sequence at the end.
    let ids = [0x80u32, u32::from(b'a'), 0xE2, 0x82];
    let mut dec = tok.stream_decoder();
    let mut text: String = ids.iter().map(|&id| dec.push(id)).collect();
    text.push_str(&dec.finish());
    assert_eq!(text, tok.decode(&ids));
    assert_eq!(text, "\u{FFFD}a\u{FFFD}");
}

#[test]
fn longest_token_bound_counts_decoded_bytes_and_added_text() {
    let tok = build(&toy_metadata()).unwrap();
    // The longest entry is the BOS text (added: its raw UTF-8), not a GPT-2-encoded string.
    assert_eq!(tok.max_token_bytes, "<｜begin▁of▁sentence｜>".len());
    let e = tok
        .encode_bounded(&"x".repeat(10_000), true, 10)
        .unwrap_err();
    // `x` occurs at most once in any token of the toy vocabulary: one token per byte.
    assert_eq!(tok.max_byte_count[usize::from(b'x')], 1);
    assert_eq!(e.at_least, 10_000);
    // Short texts get only the length bound (4 here), then are counted.
    let e = tok.encode_bounded(&"x".repeat(100), true, 10).unwrap_err();
    assert_eq!(e.at_least, 100);
}

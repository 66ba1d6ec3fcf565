//! Prompt token counts of the five official-API vectors (spec/references.md): each prompt file,
//! rendered as the official API rendered it (one user message, thinking off, no system prompt)
//! and tokenized with the real V4 tokenizer, must give the `usage.prompt_tokens` the API
//! reported — BOS included.
//!
//! The vectors are read from `shared/ds4-test-vectors/` beside the project (never copied in; see
//! SOURCE.md there); the tokenizer from tests/fixtures/tokenizer/tokenizer.json
//! (`tools/fetch-tokenizer.sh`).

use std::path::PathBuf;

use ds4::chat::render_chat_request;
use ds4::tokenizer::{gguf_metadata_from_tokenizer_json, Tokenizer};
use serde_json::{json, Value};

/// Case id and the API's `usage.prompt_tokens` (SOURCE.md; also checked against the JSON).
const CASES: [(&str, usize); 5] = [
    ("short_italian_fact", 21),
    ("short_code_completion", 27),
    ("short_reasoning_plain", 18),
    ("long_memory_archive", 3353),
    ("long_code_audit", 3844),
];

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/ds4-test-vectors")
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn tokenizer() -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/tokenizer.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nrun tools/fetch-tokenizer.sh to download the V4 tokenizer.json",
            path.display()
        )
    });
    let meta = gguf_metadata_from_tokenizer_json(&json).expect("tokenizer.json converts");
    Tokenizer::from_metadata(|k| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v))
        .expect("tokenizer builds from metadata")
}

/// The manifest's entry for `id`: (prompt file, official file), relative to the vectors dir.
fn manifest_files(manifest: &Value, id: &str) -> (String, String) {
    let entry = manifest["prompts"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("manifest.json has no case `{id}`"));
    let field = |k: &str| {
        entry[k]
            .as_str()
            .unwrap_or_else(|| panic!("manifest case `{id}` has no `{k}`"))
            .to_string()
    };
    (field("prompt_file"), field("official_file"))
}

fn prompt_tokens(tok: &Tokenizer, body: &Value) -> Vec<u32> {
    let rendered = render_chat_request(body, 32768).expect("request renders");
    tok.encode(&rendered.prompt, true)
}

#[test]
fn official_prompts_render_to_the_api_prompt_token_counts() {
    let dir = vectors_dir();
    let manifest = read_json(&dir.join("manifest.json"));
    let tok = tokenizer();
    let mut failures = Vec::new();
    for (id, expected) in CASES {
        let (prompt_file, official_file) = manifest_files(&manifest, id);
        let official = read_json(&dir.join(&official_file));
        assert_eq!(
            official["usage"]["prompt_tokens"].as_u64(),
            Some(expected as u64),
            "{id}: SOURCE.md and {official_file} disagree"
        );
        let path = dir.join(&prompt_file);
        let content = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert_eq!(
            official["prompt"].as_str(),
            Some(content.as_str()),
            "{id}: {prompt_file} is not the prompt the API got"
        );
        let body = json!({"messages": [{"role": "user", "content": content}], "thinking": false});
        let ids = prompt_tokens(&tok, &body);
        assert_eq!(
            ids.first(),
            Some(&tok.bos()),
            "{id}: prompt must start with BOS"
        );
        if ids.len() != expected {
            failures.push(format!(
                "{id}: {} tokens, API counted {expected}",
                ids.len()
            ));
        }
        // The request exactly as it was sent to the API renders to the same tokens.
        let sent = prompt_tokens(&tok, &official["request"]);
        assert_eq!(sent, ids, "{id}: the recorded request renders differently");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

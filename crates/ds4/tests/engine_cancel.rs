//! A cancellation check fires between prefill chunks: the engine stops before the next chunk
//! and keeps the chunks it evaluated, so a later request with the same prompt reuses them.

use std::cell::Cell;
use std::sync::Arc;

use ds4::engine::{Engine, EngineError};
use ds4::gguf::GgufFile;
use ds4::model::{Model, Precision, PREFILL_CHUNK};
use ds4::sample::SamplerParams;
use ds4::tiny::{generate, TinySpec};

#[test]
fn cancel_between_prefill_chunks_keeps_the_evaluated_chunks() {
    let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/tokenizer.json");
    let Ok(json) = std::fs::read_to_string(&tok) else {
        eprintln!(
            "skipping: {} is missing (tools/fetch-tokenizer.sh)",
            tok.display()
        );
        return;
    };
    let spec = TinySpec {
        layers: 2,
        tokenizer: Some(ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json).unwrap()),
        ..TinySpec::default()
    };
    let mut b = Vec::new();
    generate(&spec).unwrap().write_to(&mut b).unwrap();
    let model = Arc::new(Model::from_file(Arc::new(GgufFile::from_bytes(b).unwrap())).unwrap());
    let mut engine = Engine::new(model, Precision::Precise, 3 * PREFILL_CHUNK).unwrap();
    let prompt: Vec<u32> = (0..PREFILL_CHUNK as u32 + 50)
        .map(|i| 100 + i % 5000)
        .collect();
    let calls = Cell::new(0);
    let cancel = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    let r = engine.generate_cancellable(&prompt, 4, SamplerParams::default(), &cancel, |_| {
        ds4::engine::Control::Continue
    });
    assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?}");
    assert_eq!(engine.session_tokens(), &prompt[..PREFILL_CHUNK]);
    // The same prompt again reuses the chunk.
    let stats = engine
        .generate(&prompt, 1, SamplerParams::default(), |_| {
            ds4::engine::Control::Stop
        })
        .unwrap();
    assert_eq!(stats.cached_tokens, PREFILL_CHUNK);
}

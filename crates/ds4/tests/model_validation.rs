//! Bad model files give errors that name the problem (spec/model.md §3.4), never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use ds4::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use ds4::model::{ConfigError, Model, ModelError, WeightsError};
use ds4::tiny::{generate, TinySpec};

fn tiny_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    generate(&TinySpec {
        layers: 4,
        ..TinySpec::default()
    })
    .expect("generate")
    .write_to(&mut b)
    .expect("serialize");
    b
}

/// Re-writes a file, letting `key` and `tensor` edit or drop entries.
fn rewrite(
    bytes: Vec<u8>,
    key: impl Fn(&str, &Value) -> Option<Value>,
    tensor: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
) -> Vec<u8> {
    let f = GgufFile::from_bytes(bytes).expect("parse");
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if let Some(v) = key(k, v) {
            w.add(k, v).expect("add key");
        }
    }
    for t in f.tensors() {
        let data = f.data_of(t).expect("tensor data");
        if let Some((dims, ty, data)) = tensor(&t.name, &t.dims, t.ty, data) {
            w.add_tensor(&t.name, &dims, ty, data).expect("add tensor");
        }
    }
    let mut out = Vec::new();
    w.write_to(&mut out).expect("serialize");
    out
}

fn load(bytes: Vec<u8>) -> Result<Model, ModelError> {
    Model::from_file(Arc::new(GgufFile::from_bytes(bytes)?))
}

fn keep_key(_: &str, v: &Value) -> Option<Value> {
    Some(v.clone())
}

fn keep_tensor(_: &str, d: &[u64], t: GgmlType, b: &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)> {
    Some((d.to_vec(), t, b.to_vec()))
}

#[test]
fn generated_model_loads() {
    load(tiny_bytes()).expect("tiny model validates");
}

#[test]
fn rejects_missing_tensor_by_name() {
    let b = rewrite(tiny_bytes(), keep_key, |n, d, t, b| {
        (n != "blk.2.attn_kv.weight").then(|| (d.to_vec(), t, b.to_vec()))
    });
    let err = load(b).expect_err("missing tensor");
    assert!(
        matches!(&err, ModelError::Weights(WeightsError::Missing { name }) if name == "blk.2.attn_kv.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("blk.2.attn_kv.weight"));
}

#[test]
fn accepts_f16_attention_projection() {
    // llama.cpp's converter writes F16 projections; issue 11's example of a refused file.
    let b = rewrite(tiny_bytes(), keep_key, |n, d, t, b| {
        if n == "blk.0.attn_q_a.weight" {
            let n_el: u64 = d.iter().product();
            Some((d.to_vec(), GgmlType::F16, vec![0u8; n_el as usize * 2]))
        } else {
            Some((d.to_vec(), t, b.to_vec()))
        }
    });
    let m = load(b).expect("F16 attn_q_a loads");
    assert_eq!(m.weights.layers[0].attn_q_a.ty, GgmlType::F16);
}

#[test]
fn rejects_tensor_with_wrong_type() {
    let b = rewrite(tiny_bytes(), keep_key, |n, d, t, b| {
        if n == "blk.0.attn_q_a.weight" {
            let n_el: u64 = d.iter().product();
            Some((d.to_vec(), GgmlType::I32, vec![0u8; n_el as usize * 4]))
        } else {
            Some((d.to_vec(), t, b.to_vec()))
        }
    });
    let err = load(b).expect_err("wrong type");
    assert!(
        matches!(&err, ModelError::Weights(WeightsError::Type { name, found: GgmlType::I32, .. }) if name == "blk.0.attn_q_a.weight"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("expected type F32 or F16 or BF16 or Q8_0 or Q2_K or Q3_K or Q4_K"),
        "{err}"
    );
}

#[test]
fn rejects_tensor_with_wrong_shape() {
    let b = rewrite(tiny_bytes(), keep_key, |n, d, t, b| {
        if n == "output_norm.weight" {
            Some((vec![d[0] / 2], t, b[..b.len() / 2].to_vec()))
        } else {
            Some((d.to_vec(), t, b.to_vec()))
        }
    });
    let err = load(b).expect_err("wrong shape");
    assert!(
        matches!(&err, ModelError::Weights(WeightsError::Shape { name, .. }) if name == "output_norm.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("expected shape [256]"), "{err}");
}

#[test]
fn rejects_missing_metadata_key() {
    let b = rewrite(
        tiny_bytes(),
        |k, v| (k != "deepseek4.expert_count").then(|| v.clone()),
        keep_tensor,
    );
    let err = load(b).expect_err("missing key");
    assert!(
        matches!(&err, ModelError::Config(ConfigError::MissingKey { key }) if key == "deepseek4.expert_count"),
        "{err}"
    );
}

#[test]
fn rejects_key_with_wrong_type() {
    let b = rewrite(
        tiny_bytes(),
        |k, v| {
            Some(if k == "deepseek4.block_count" {
                Value::U64(4)
            } else {
                v.clone()
            })
        },
        keep_tensor,
    );
    let err = load(b).expect_err("wrong key type");
    assert!(
        err.to_string().contains("deepseek4.block_count") && err.to_string().contains("UINT32"),
        "{err}"
    );
}

#[test]
fn rejects_wrong_compress_ratio_schedule() {
    let b = rewrite(
        tiny_bytes(),
        |k, v| {
            Some(if k == "deepseek4.attention.compress_ratios" {
                Value::Array(
                    ds4::gguf::ValueType::U32,
                    [0, 0, 128, 4].iter().map(|&r| Value::U32(r)).collect(),
                )
            } else {
                v.clone()
            })
        },
        keep_tensor,
    );
    let err = load(b).expect_err("bad ratios");
    assert!(
        err.to_string().contains("compress_ratios") && err.to_string().contains("layer 2"),
        "{err}"
    );
}

#[test]
fn rejects_hash_table_with_expert_out_of_range() {
    let b = rewrite(tiny_bytes(), keep_key, |n, d, t, b| {
        let mut b = b.to_vec();
        if n == "blk.1.ffn_gate_tid2eid.weight" {
            b[..4].copy_from_slice(&99i32.to_le_bytes());
        }
        Some((d.to_vec(), t, b))
    });
    let err = load(b).expect_err("bad expert id");
    assert!(err.to_string().contains("expert id 99"), "{err}");
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let b = tiny_bytes();
    for cut in [0, 3, 20, 100, b.len() / 2, b.len() - 1] {
        assert!(load(b[..cut].to_vec()).is_err(), "cut at {cut} loaded");
    }
}

#[test]
fn token_out_of_vocabulary_is_an_error() {
    let m = load(tiny_bytes()).expect("load");
    let be = ds4::backend::CpuBackend::new(m.file.clone());
    let mut s = m.new_session(&be, 4096).expect("session");
    let err = m
        .forward(&be, &mut s, &[1, 100_000], ds4::model::Precision::Default)
        .expect_err("oov");
    assert!(matches!(
        err,
        ModelError::TokenOutOfRange {
            token: 100_000,
            vocab: 512
        }
    ));
    assert!(
        s.tokens.is_empty(),
        "a rejected batch must not advance the session"
    );
}

/// A file claiming the real dimensions is checked against every real constant.
#[test]
fn real_sized_metadata_must_match_real_constants() {
    let b = tiny_bytes();
    let f = GgufFile::from_bytes(b).expect("parse");
    let mut meta: HashMap<String, Value> = f.metadata().iter().cloned().collect();
    let real: &[(&str, u32)] = &[
        ("block_count", 43),
        ("embedding_length", 4096),
        ("vocab_size", 129280),
        ("attention.head_count", 64),
        ("attention.key_length", 512),
        ("attention.value_length", 512),
        ("attention.q_lora_rank", 1024),
        ("attention.output_lora_rank", 1024),
        ("attention.output_group_count", 8),
        ("expert_count", 256),
        ("expert_used_count", 6),
        ("expert_feed_forward_length", 2048),
        ("attention.sliding_window", 128),
        ("attention.indexer.head_count", 64),
        ("attention.indexer.top_k", 512),
    ];
    for (k, v) in real {
        meta.insert(format!("deepseek4.{k}"), Value::U32(*v));
    }
    let ratios = (0..43)
        .map(|il| {
            Value::U32(if il < 2 {
                0
            } else if il % 2 == 0 {
                4
            } else {
                128
            })
        })
        .collect();
    meta.insert(
        "deepseek4.attention.compress_ratios".into(),
        Value::Array(ds4::gguf::ValueType::U32, ratios),
    );
    meta.insert(
        "deepseek4.swiglu_clamp_exp".into(),
        Value::Array(ds4::gguf::ValueType::F32, vec![Value::F32(10.0); 43]),
    );
    ds4::model::Config::from_metadata(|k| meta.get(k)).expect("real constants accepted");
    meta.insert("deepseek4.expert_weights_scale".into(), Value::F32(2.0));
    let err = ds4::model::Config::from_metadata(|k| meta.get(k)).expect_err("wrong real constant");
    assert!(err.to_string().contains("expert_weights_scale"), "{err}");
}

#[test]
fn backend_failure_is_an_error_not_a_panic() {
    let m = load(tiny_bytes()).expect("load");
    for ok in [0, 5, 40] {
        let be = ds4::backend::CpuBackend::failing_after(m.file.clone(), ok);
        let mut s = m.new_session(&be, 4096).expect("session");
        let err = m
            .forward(&be, &mut s, &[1, 2, 3], ds4::model::Precision::Default)
            .expect_err("backend fails");
        assert!(matches!(err, ModelError::Backend(_)), "{err}");
        assert!(err.to_string().contains("out of device memory"), "{err}");
    }
}

//! The loader refuses broken files, one test per mutation class (tensor table: alignment,
//! overlap, gaps, type and shape changes, offsets past the data; metadata: the architecture,
//! every float hyper-parameter at NaN/∞/0/negative, integers that size work), and a bounded
//! property test feeds randomly mutated tensor tables to it: every file is either refused with
//! an error or loads and runs with finite logits through the public `Model::forward`.

use std::sync::{Arc, OnceLock};

use ds4::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use ds4::model::{ConfigError, Model, ModelError, Precision};
use ds4::tiny::{generate, TinySpec};
use proptest::prelude::*;

/// A small tiny model (three layers: ratios 0, 0, 4), generated once.
fn tiny_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut b = Vec::new();
        generate(&TinySpec {
            layers: 3,
            ..TinySpec::default()
        })
        .expect("generate")
        .write_to(&mut b)
        .expect("serialize");
        b
    })
}

fn load(bytes: Vec<u8>) -> Result<Model, ModelError> {
    Model::from_file(Arc::new(GgufFile::from_bytes(bytes)?))
}

/// Where the type id and the offset of each tensor's table entry sit in the file bytes.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dims_at: usize,
    ndim: usize,
    type_at: usize,
    offset_at: usize,
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    let f = GgufFile::from_bytes(bytes.to_vec()).expect("valid file");
    // Entries follow the metadata in table order: name (u64 length + bytes), ndim (u32),
    // dims (u64 each), type (u32), offset (u64). Find the first by its name, then walk.
    let first = &f.tensors()[0].name;
    let mut needle = (first.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(first.as_bytes());
    let mut pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("first entry");
    f.tensors()
        .iter()
        .map(|t| {
            let name_len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
            let name = String::from_utf8(bytes[pos + 8..pos + 8 + name_len].to_vec()).unwrap();
            assert_eq!(name, t.name);
            let ndim_at = pos + 8 + name_len;
            let ndim = u32::from_le_bytes(bytes[ndim_at..ndim_at + 4].try_into().unwrap()) as usize;
            let dims_at = ndim_at + 4;
            let type_at = dims_at + 8 * ndim;
            let offset_at = type_at + 4;
            pos = offset_at + 8;
            Entry {
                name,
                dims_at,
                ndim,
                type_at,
                offset_at,
            }
        })
        .collect()
}

fn entry<'a>(all: &'a [Entry], name: &str) -> &'a Entry {
    all.iter().find(|e| e.name == name).expect("tensor")
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The file with `name`'s table entry edited by `edit(bytes, entry)`.
fn mutate_table(name: &str, edit: impl Fn(&mut Vec<u8>, &Entry)) -> Vec<u8> {
    let mut b = tiny_bytes().to_vec();
    let all = entries(&b);
    edit(&mut b, entry(&all, name));
    b
}

fn gguf_err(bytes: Vec<u8>) -> ds4::gguf::Error {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("mutated table parsed"),
        Err(e) => e,
    }
}

#[test]
fn unmutated_file_loads_and_runs_with_finite_logits() {
    assert!(runs_finite(load(tiny_bytes().to_vec()).expect("loads")));
}

#[test]
fn rejects_misaligned_tensor_offset() {
    let b = mutate_table("blk.1.attn_norm.weight", |b, e| {
        let off = get_u64(b, e.offset_at);
        put_u64(b, e.offset_at, off + 4);
    });
    let e = gguf_err(b);
    assert!(
        matches!(e, ds4::gguf::Error::MisalignedTensor { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("blk.1.attn_norm.weight"), "{e}");
}

#[test]
fn rejects_offset_pointing_into_another_tensor() {
    let mut b = tiny_bytes().to_vec();
    let all = entries(&b);
    let (a, c) = (&all[3], &all[4]);
    let into_a = get_u64(&b, a.offset_at);
    put_u64(&mut b, c.offset_at, into_a);
    let e = gguf_err(b);
    assert!(
        matches!(e, ds4::gguf::Error::OverlappingTensors { .. }),
        "{e}"
    );
}

#[test]
fn rejects_type_change_that_reads_into_the_neighbour() {
    // F16 → F32 doubles the size.
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let t = f
        .tensors()
        .iter()
        .take(f.tensors().len() - 1)
        .find(|t| t.ty == GgmlType::F16)
        .expect("an F16 tensor that is not the last");
    let b = mutate_table(&t.name, |b, e| put_u32(b, e.type_at, GgmlType::F32.id()));
    let e = gguf_err(b);
    assert!(
        matches!(e, ds4::gguf::Error::OverlappingTensors { .. }),
        "{e}"
    );
}

#[test]
fn rejects_type_change_that_leaves_a_gap() {
    // Q2_K (84 bytes a block) → IQ2_XXS (66): the tensor shrinks and the next starts late.
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let n = f.tensors().len();
    let t = f.tensors()[..n - 1]
        .iter()
        .find(|t| t.ty == GgmlType::Q2_K || t.ty == GgmlType::Q4_K)
        .map(|t| t.name.clone());
    let Some(name) = t else {
        // The default recipe has no K-quant experts: shrink an F32 tensor's dim instead.
        let t = f.tensors()[..n - 1]
            .iter()
            .find(|t| t.ty == GgmlType::F32 && t.n_bytes >= 64)
            .unwrap();
        let b = mutate_table(&t.name, |b, e| {
            let d = get_u64(b, e.dims_at);
            put_u64(b, e.dims_at, d / 2);
        });
        assert!(matches!(gguf_err(b), ds4::gguf::Error::TensorGap { .. }));
        return;
    };
    let b = mutate_table(&name, |b, e| put_u32(b, e.type_at, GgmlType::IQ2_XXS.id()));
    assert!(matches!(gguf_err(b), ds4::gguf::Error::TensorGap { .. }));
}

#[test]
fn rejects_shape_change_that_reads_into_the_neighbour() {
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let name = f.tensors()[0].name.clone();
    let b = mutate_table(&name, |b, e| {
        let d = get_u64(b, e.dims_at);
        put_u64(b, e.dims_at, d * 2);
    });
    assert!(matches!(
        gguf_err(b),
        ds4::gguf::Error::OverlappingTensors { .. }
    ));
}

#[test]
fn rejects_offset_past_the_data_section() {
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let last = f.tensors().last().unwrap().name.clone();
    let len = tiny_bytes().len() as u64;
    let b = mutate_table(&last, |b, e| {
        put_u64(b, e.offset_at, len.next_multiple_of(32))
    });
    assert!(matches!(
        gguf_err(b),
        ds4::gguf::Error::TensorPastEof { .. }
    ));
}

/// Re-writes the tiny file with metadata `key` set to `value` (None: removed).
fn with_key(key: &str, value: Option<Value>) -> Vec<u8> {
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if k == key {
            if let Some(v) = &value {
                w.add(k, v.clone()).unwrap();
            }
        } else {
            w.add(k, v.clone()).unwrap();
        }
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.data_of(t).unwrap().to_vec())
            .unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

fn config_err(bytes: Vec<u8>) -> ConfigError {
    match load(bytes) {
        Err(ModelError::Config(e)) => e,
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn rejects_a_file_of_another_architecture_or_none() {
    let e = config_err(with_key(
        "general.architecture",
        Some(Value::String("llama".into())),
    ));
    assert!(e.to_string().contains("general.architecture"), "{e}");
    assert!(e.to_string().contains("\"llama\""), "{e}");
    let e = config_err(with_key("general.architecture", None));
    assert!(
        matches!(&e, ConfigError::MissingKey { key } if key == "general.architecture"),
        "{e}"
    );
}

#[test]
fn rejects_every_float_hyper_parameter_that_is_nan_infinite_zero_or_negative() {
    let keys = [
        "hyper_connection.epsilon",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
        "attention.compress_rope_freq_base",
        "rope.scaling.factor",
        "rope.scaling.yarn_beta_fast",
        "rope.scaling.yarn_beta_slow",
        "expert_weights_scale",
    ];
    for key in keys {
        let full = format!("deepseek4.{key}");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e30] {
            let e = config_err(with_key(&full, Some(Value::F32(bad))));
            assert!(
                e.to_string().contains(&full),
                "{full} = {bad}: message {e} does not name the key"
            );
        }
    }
    let full = "deepseek4.rope.scaling.original_context_length";
    let e = config_err(with_key(full, Some(Value::U32(0))));
    assert!(e.to_string().contains(full), "{e}");
}

#[test]
fn rejects_integer_hyper_parameters_beyond_sane_bounds() {
    for (key, bad) in [
        ("hyper_connection.sinkhorn_iterations", 1u32 << 31),
        ("hyper_connection.sinkhorn_iterations", 0),
        ("attention.sliding_window", 1 << 30),
        ("attention.indexer.top_k", u32::MAX),
    ] {
        let full = format!("deepseek4.{key}");
        let e = config_err(with_key(&full, Some(Value::U32(bad))));
        assert!(e.to_string().contains(&full), "{full} = {bad}: {e}");
    }
}

/// Runs two tokens through the CPU forward pass; true when every logit is finite, or when the
/// model is refused the way `Engine::with_backend` refuses it: by the first-token check (a table
/// edit that keeps the structure valid can still reinterpret finite bytes as NaN, e.g. an F32
/// tensor retyped F16 whose high halves are NaN patterns).
fn runs_finite(m: Model) -> bool {
    let be = ds4::backend::CpuBackend::new(m.file.clone());
    let mut s = m.new_session(&be, 4096).expect("session");
    if m.check_first_token(&be, &mut s, 1).is_err() {
        return true;
    }
    let mut s = m.new_session(&be, 4096).expect("session");
    match m.forward(&be, &mut s, &[1, 2], Precision::Default) {
        Ok(logits) => logits.iter().all(|x| x.is_finite()),
        // A forward error is a refusal too (e.g. a token outside a shrunk vocabulary).
        Err(_) => true,
    }
}

/// One edit of a tensor-table field.
#[derive(Debug, Clone)]
enum Edit {
    /// Type id of entry `i` := one of the ids this crate knows, or any u32.
    Type(usize, u32),
    /// Offset of entry `i` := offset of entry `j` (+ `delta` bytes).
    OffsetOf(usize, usize, i64),
    /// Offset of entry `i` := a raw value.
    Offset(usize, u64),
    /// Dim `d` of entry `i` := its value × `num` / `den`, or + 1.
    Dim(usize, usize, u64, u64),
    /// Swap the offsets of entries `i` and `j`.
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let type_id = prop_oneof![
        prop::sample::select(vec![0u32, 1, 8, 10, 12, 15, 16, 26, 30]),
        any::<u32>(),
    ];
    prop_oneof![
        (any::<usize>(), type_id).prop_map(|(i, t)| Edit::Type(i, t)),
        (
            any::<usize>(),
            any::<usize>(),
            prop::sample::select(vec![0i64, 32, -32, 4, 1])
        )
            .prop_map(|(i, j, d)| Edit::OffsetOf(i, j, d)),
        (any::<usize>(), any::<u64>()).prop_map(|(i, o)| Edit::Offset(i, o)),
        (any::<usize>(), any::<usize>(), 0u64..4, 1u64..4)
            .prop_map(|(i, d, n, m)| Edit::Dim(i, d, n, m)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

fn apply(b: &mut [u8], all: &[Entry], e: &Edit) {
    let n = all.len();
    match *e {
        Edit::Type(i, t) => put_u32(b, all[i % n].type_at, t),
        Edit::OffsetOf(i, j, delta) => {
            let o = get_u64(b, all[j % n].offset_at).wrapping_add_signed(delta);
            put_u64(b, all[i % n].offset_at, o);
        }
        Edit::Offset(i, o) => put_u64(b, all[i % n].offset_at, o),
        Edit::Dim(i, d, num, den) => {
            let en = &all[i % n];
            let at = en.dims_at + 8 * (d % en.ndim);
            let v = get_u64(b, at);
            let nv = if num == 0 { v + 1 } else { v * num / den };
            put_u64(b, at, nv);
        }
        Edit::Swap(i, j) => {
            let (a, c) = (all[i % n].offset_at, all[j % n].offset_at);
            let (oa, oc) = (get_u64(b, a), get_u64(b, c));
            put_u64(b, a, oc);
            put_u64(b, c, oa);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tensor_tables_are_refused_or_run_with_finite_logits(
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        let mut b = tiny_bytes().to_vec();
        let all = entries(&b);
        for e in &edits {
            apply(&mut b, &all, e);
        }
        if let Ok(m) = load(b) {
            prop_assert!(runs_finite(m), "loaded with non-finite logits after {edits:?}");
        }
    }
}

#[test]
fn metadata_float_mutations_are_refused_or_run_with_finite_logits() {
    // Every F32 key, at a handful of hostile values: refused, or (for keys that do not feed
    // the forward pass) loads and runs finite.
    let f = GgufFile::from_bytes(tiny_bytes().to_vec()).unwrap();
    let floats: Vec<String> = f
        .metadata()
        .iter()
        .filter(|(_, v)| v.value_type() == ValueType::F32)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(floats.len() >= 8, "{floats:?}");
    for key in &floats {
        for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0, 1e-30, 1e30] {
            if let Ok(m) = load(with_key(key, Some(Value::F32(bad)))) {
                assert!(runs_finite(m), "{key} = {bad} loads with non-finite logits");
            }
        }
    }
}

/// The file `bytes` with every element of tensor `name` replaced by a NaN (F32 data as f32
/// NaNs; for F16 and the quantised types every 16-bit field, so each block's f16 scales too,
/// holds the f16 NaN 0x7e00).
fn poison(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let f = GgufFile::from_bytes(b.clone()).expect("valid file");
    let t = f.tensors().iter().find(|t| t.name == name).expect("tensor");
    let (at, len) = (t.offset as usize, t.n_bytes as usize);
    let data = &mut b[at..at + len];
    match t.ty {
        GgmlType::F32 => data
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&f32::NAN.to_le_bytes())),
        _ => data
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&[0x00, 0x7e])),
    }
    b
}

#[test]
fn a_model_with_non_finite_weights_is_refused_naming_the_first_broken_stage() {
    // Structurally valid files whose numbers are NaN: the loader cannot see it, the first-token
    // check must, and it must name where the NaN first appears.
    for (tensor, stage) in [
        ("token_embd.weight", "the token embedding"),
        ("blk.1.ffn_down_shexp.weight", "layer 1's FFN output"),
        ("blk.2.attn_output_b.weight", "layer 2's attention output"),
        ("output.weight", "the output head"),
    ] {
        let m = load(poison(tiny_bytes(), tensor)).expect("structure is valid");
        let be = ds4::backend::CpuBackend::new(m.file.clone());
        let mut s = m.new_session(&be, 64).expect("session");
        let err = m
            .check_first_token(&be, &mut s, 1)
            .expect_err("NaN weights accepted");
        let msg = err.to_string();
        assert!(
            matches!(err, ModelError::NonFinite { .. }) && msg.contains(stage),
            "{tensor}: {msg}"
        );
    }
    let m = load(tiny_bytes().to_vec()).unwrap();
    let be = ds4::backend::CpuBackend::new(m.file.clone());
    let mut s = m.new_session(&be, 64).expect("session");
    m.check_first_token(&be, &mut s, 1)
        .expect("finite model accepted");
}

#[test]
fn the_engine_refuses_a_model_whose_first_logits_are_not_finite() {
    let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/tokenizer.json");
    let Ok(json) = std::fs::read_to_string(&tok) else {
        eprintln!(
            "skipping: {} is missing (tools/fetch-tokenizer.sh)",
            tok.display()
        );
        return;
    };
    let mut b = Vec::new();
    generate(&TinySpec {
        layers: 2,
        tokenizer: Some(ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json).unwrap()),
        ..TinySpec::default()
    })
    .unwrap()
    .write_to(&mut b)
    .unwrap();
    let engine = |bytes: Vec<u8>| {
        ds4::engine::Engine::new(Arc::new(load(bytes).unwrap()), Precision::Default, 64)
    };
    let err = engine(poison(&b, "blk.1.attn_q_a.weight"))
        .err()
        .expect("NaN weights accepted");
    let msg = err.to_string();
    assert!(
        msg.contains("layer 1's attention output") && msg.contains("not finite"),
        "{msg}"
    );
    // The good file starts, and its session holds nothing of the check.
    let e = engine(b).expect("finite model accepted");
    assert!(e.session_tokens().is_empty());
}

//! Interop with gguf-py, the reference GGUF implementation (spec/references.md): files written by
//! `gguf.GGUFWriter` must read back in ds4 exactly as `gguf.GGUFReader` reports them. Fixtures and
//! their JSON descriptions come from `tools/reference/gguf_fixtures.py` (gguf==0.19.0).

use std::path::PathBuf;

use ds4::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// gguf-py's `GGUFValueType` names.
fn py_type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

/// The `types` list gguf-py's `ReaderField` holds: the value's type, then for arrays the first
/// element's own list (so nested arrays list each level; an empty array lists only ARRAY).
fn py_types(v: &Value) -> Vec<&'static str> {
    let mut out = vec![py_type_name(v.value_type())];
    if let Some(first) = v.as_array().and_then(|items| items.first()) {
        out.extend(py_types(first));
    }
    out
}

/// Leaf values in order: gguf-py's `contents()` flattens nested arrays.
fn leaves<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(_, items) => items.iter().for_each(|i| leaves(i, out)),
        _ => out.push(v),
    }
}

fn assert_leaf_matches(key: &str, ours: &Value, want: &Json) {
    let ok = match ours {
        Value::Bool(b) => want.as_bool() == Some(*b),
        Value::String(s) => want.as_str() == Some(s.as_str()),
        // f32 widened to f64 is exact, and so is Python's float repr in JSON.
        Value::F32(x) => want.as_f64() == Some(f64::from(*x)),
        Value::F64(x) => want.as_f64() == Some(*x),
        v => {
            let want_int = want
                .as_i64()
                .map(i128::from)
                .or(want.as_u64().map(i128::from));
            v.as_int().is_some() && v.as_int() == want_int
        }
    };
    assert!(ok, "key `{key}`: ds4 read {ours:?}, gguf-py reports {want}");
}

fn check_fixture(name: &str) {
    let dir = fixture_dir();
    let path = dir.join(format!("{name}.gguf"));
    let want: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    assert_eq!(f.file_len(), want["file_len"].as_u64().unwrap());
    assert_eq!(u64::from(f.version()), want["version"].as_u64().unwrap());
    assert_eq!(f.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset(), want["data_offset"].as_u64().unwrap());

    let want_meta = want["metadata"].as_array().unwrap();
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want_meta
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, want_keys, "keys in file order");
    for ((key, value), m) in f.metadata().iter().zip(want_meta) {
        let want_types: Vec<&str> = m["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(py_types(value), want_types, "key `{key}` types");
        assert_eq!(f.get(key), Some(value));
        match &m["value"] {
            Json::Array(want_items) => {
                let mut ours = Vec::new();
                leaves(value, &mut ours);
                assert_eq!(ours.len(), want_items.len(), "key `{key}` element count");
                for (o, w) in ours.into_iter().zip(want_items) {
                    assert_leaf_matches(key, o, w);
                }
            }
            w => assert_leaf_matches(key, value, w),
        }
    }

    let want_tensors = want["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), want_tensors.len());
    for (info, t) in f.tensors().iter().zip(want_tensors) {
        let name = t["name"].as_str().unwrap();
        assert_eq!(info.name, name);
        let view = f.tensor(name).unwrap();
        assert_eq!(info.ty.name(), t["type"].as_str().unwrap(), "{name} type");
        assert_eq!(
            u64::from(info.ty.id()),
            t["type_id"].as_u64().unwrap(),
            "{name} type id"
        );
        let dims: Vec<u64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims, dims, "{name} dims");
        assert_eq!(
            info.n_elems,
            t["n_elems"].as_u64().unwrap(),
            "{name} n_elems"
        );
        assert_eq!(
            info.n_bytes,
            t["n_bytes"].as_u64().unwrap(),
            "{name} n_bytes"
        );
        assert_eq!(info.offset, t["offset"].as_u64().unwrap(), "{name} offset");
        assert_eq!(
            hex(view.data),
            t["data_hex"].as_str().unwrap(),
            "{name} bytes"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reads_gguf_py_file_as_gguf_py_reports_it() {
    check_fixture("basic");
}

#[test]
fn reads_gguf_py_file_with_alignment_64_as_gguf_py_reports_it() {
    check_fixture("aligned64");
}

/// Our writer must reproduce gguf-py's bytes exactly when given the same keys and tensors in
/// the same order, so files we write read in gguf-py (and llama.cpp) too.
#[test]
fn writer_reproduces_gguf_py_file_byte_for_byte() {
    for name in ["basic", "aligned64"] {
        let path = fixture_dir().join(format!("{name}.gguf"));
        let original = std::fs::read(&path).unwrap();
        let f = GgufFile::from_bytes(original.clone()).unwrap();
        // gguf-py puts general.alignment second; ours goes wherever it is added.
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            w.add(k, v.clone()).unwrap();
        }
        for info in f.tensors() {
            let data = f.tensor(&info.name).unwrap().data.to_vec();
            w.add_tensor(&info.name, &info.dims, info.ty, data).unwrap();
        }
        let mut ours = Vec::new();
        w.write_to(&mut ours).unwrap();
        assert_eq!(ours.len(), original.len(), "{name}: length");
        assert!(ours == original, "{name}: bytes differ from gguf-py's");
    }
}

fn leaf_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::from(*b),
        Value::String(s) => Json::from(s.as_str()),
        Value::F32(x) => Json::from(f64::from(*x)),
        Value::F64(x) => Json::from(*x),
        Value::U64(x) => Json::from(*x),
        v => Json::from(i64::try_from(v.as_int().unwrap()).unwrap()),
    }
}

/// `f` described in the JSON shape `gguf_fixtures.py describe()` produces.
fn describe(f: &GgufFile) -> Json {
    let metadata: Vec<Json> = f
        .metadata()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Array(..) => {
                    let mut l = Vec::new();
                    leaves(v, &mut l);
                    Json::Array(l.into_iter().map(leaf_json).collect())
                }
                v => leaf_json(v),
            };
            serde_json::json!({ "key": k, "types": py_types(v), "value": value })
        })
        .collect();
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "type": t.ty.name(), "type_id": t.ty.id(), "dims": t.dims,
                "n_elems": t.n_elems, "n_bytes": t.n_bytes, "offset": t.offset,
                "data_hex": hex(f.tensor(&t.name).unwrap().data),
            })
        })
        .collect();
    serde_json::json!({
        "generator": "crates/ds4/tests/gguf_interop.rs writes_file_for_gguf_py_check",
        "file_len": f.file_len(), "version": f.version(), "alignment": f.alignment(),
        "data_offset": f.data_offset(), "metadata": metadata, "tensors": tensors,
    })
}

/// The reverse direction, run by hand (CI has no Python):
/// `DS4_GGUF_OUT=/tmp/ours cargo test -p ds4 --test gguf_interop -- --ignored` writes
/// `/tmp/ours.gguf` and `/tmp/ours.json`, then
/// `python tools/reference/gguf_fixtures.py --check /tmp/ours.gguf --expect /tmp/ours.json`
/// has gguf-py read our file and compare with what we wrote.
#[test]
#[ignore = "writes a file for tools/reference/gguf_fixtures.py --check"]
fn writes_file_for_gguf_py_check() {
    let out = PathBuf::from(std::env::var("DS4_GGUF_OUT").expect("set DS4_GGUF_OUT=/path/stem"));
    let mut w = GgufWriter::with_alignment(64);
    let scalars = [
        ("u8", Value::U8(255)),
        ("i8", Value::I8(-128)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-32768)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("f32", Value::F32(-1.5e-7)),
        ("bool", Value::Bool(true)),
        ("string", Value::String("ds4 ✓".into())),
        ("empty_string", Value::String(String::new())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(1e300)),
    ];
    for (k, v) in scalars {
        w.add(&format!("ours.{k}"), v).unwrap();
    }
    let strings = ["a", "", "Ġb"].map(|s| Value::String(s.into())).to_vec();
    w.add("ours.arr_str", Value::Array(ValueType::String, strings))
        .unwrap();
    w.add(
        "ours.arr_u64",
        Value::Array(ValueType::U64, vec![Value::U64(1), Value::U64(2)]),
    )
    .unwrap();
    w.add("ours.arr_empty", Value::Array(ValueType::F32, vec![]))
        .unwrap();
    let inner = |n: u32| Value::Array(ValueType::U32, (0..n).map(Value::U32).collect());
    w.add(
        "ours.arr_nested",
        Value::Array(ValueType::Array, vec![inner(2), inner(3)]),
    )
    .unwrap();
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q4_K,
        GgmlType::IQ2_XXS,
        GgmlType::I32,
    ];
    for (i, ty) in types.into_iter().enumerate() {
        let dims = [ty.block_elems() as u64, 2];
        let n = ty.bytes_for(dims.iter().product()).unwrap() as usize;
        let data = (0..n).map(|j| (j * 7 + i) as u8).collect();
        w.add_tensor(&format!("t.{}", ty.name().to_lowercase()), &dims, ty, data)
            .unwrap();
    }
    let gguf = out.with_extension("gguf");
    w.write_file(&gguf).unwrap();
    let f = GgufFile::open(&gguf).unwrap();
    let json = serde_json::to_string_pretty(&describe(&f)).unwrap();
    std::fs::write(out.with_extension("json"), json).unwrap();
}

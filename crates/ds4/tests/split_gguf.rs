//! Split GGUFs (llama.cpp's gguf-split layout): opened from the first shard as one file, with an
//! error naming a missing or mismatched shard. The layout itself is checked against gguf-py's
//! split writer (`tests/fixtures/gguf/split-*`, from `tools/reference/gguf_fixtures.py`,
//! gguf==0.19.0); a split model must compute exactly what the unsplit one does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::gguf::{Error, GgufFile, GgufWriter, Value};
use ds4::model::{Model, ModelError, Precision};
use ds4::tiny::{generate, TinySpec};
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ds4-split-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn opens_gguf_py_split_from_the_first_shard() {
    let dir = fixture_dir();
    let want: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("split.json")).unwrap()).unwrap();
    let shards = want["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    let f = GgufFile::open(&dir.join("split-00001-of-00003.gguf")).expect("open split");
    assert_eq!(f.paths().len(), 3);
    let mut n = 0;
    for shard in shards {
        for t in shard["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let ours = f
                .tensor(name)
                .unwrap_or_else(|| panic!("tensor {name} missing"));
            assert_eq!(ours.info.ty.name(), t["type"].as_str().unwrap(), "{name}");
            let dims: Vec<u64> = t["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(ours.info.dims, dims, "{name}");
            assert_eq!(
                hex(ours.data),
                t["data_hex"].as_str().unwrap(),
                "{name} data"
            );
            n += 1;
        }
    }
    assert_eq!(f.tensors().len(), n);
    // The model's metadata is the first shard's.
    for m in shards[0]["metadata"].as_array().unwrap() {
        let key = m["key"].as_str().unwrap();
        assert!(f.get(key).is_some(), "key {key}");
    }
    assert_eq!(f.get("test.u16"), Some(&Value::U16(60000)));
}

#[test]
fn rejects_a_later_shard_naming_the_first() {
    let err =
        GgufFile::open(&fixture_dir().join("split-00002-of-00003.gguf")).expect_err("shard 2");
    assert!(
        matches!(
            err,
            Error::NotFirstShard {
                no: 1,
                count: 3,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("shard 2 of 3") && msg.contains("-00001-of-00003.gguf"),
        "{msg}"
    );
}

fn copy_shards(to: &Path, which: &[usize]) {
    for &i in which {
        let name = format!("split-{i:05}-of-00003.gguf");
        std::fs::copy(fixture_dir().join(&name), to.join(&name)).expect("copy shard");
    }
}

#[test]
fn missing_shard_is_named() {
    let d = scratch("missing");
    copy_shards(&d, &[1, 3]);
    let err = GgufFile::open(&d.join("split-00001-of-00003.gguf")).expect_err("missing shard");
    match &err {
        Error::MissingShard { path, index, count } => {
            assert_eq!((*index, *count), (2, 3));
            assert!(
                path.ends_with("split-00002-of-00003.gguf"),
                "{}",
                path.display()
            );
        }
        e => panic!("expected MissingShard, got {e}"),
    }
    assert!(err.to_string().contains("shard 2 of 3 is missing"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Rewrites `path` with `edit` applied to its keys.
fn rewrite_keys(path: &Path, edit: impl Fn(&str, &Value) -> Value) {
    let f = GgufFile::from_bytes(std::fs::read(path).unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add(k, edit(k, v)).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.data_of(t).unwrap().to_vec())
            .unwrap();
    }
    w.write_file(path).unwrap();
}

#[test]
fn mismatched_shard_is_named() {
    // Shard 2 claims to be shard 3, then to belong to a split of 4.
    for (what, key, value) in [
        ("number", "split.no", Value::U16(2)),
        ("count", "split.count", Value::U16(4)),
        ("tensor total", "split.tensors.count", Value::I32(6)),
    ] {
        let d = scratch(&format!("mismatch-{}", key.replace('.', "-")));
        copy_shards(&d, &[1, 2, 3]);
        let second = d.join("split-00002-of-00003.gguf");
        rewrite_keys(
            &second,
            |k, v| if k == key { value.clone() } else { v.clone() },
        );
        let err = GgufFile::open(&d.join("split-00001-of-00003.gguf")).expect_err(what);
        match &err {
            Error::ShardMismatch { path, .. } => assert_eq!(path, &second, "{what}"),
            e => panic!("{what}: expected ShardMismatch, got {e}"),
        }
        assert!(
            err.to_string().contains("split-00002-of-00003.gguf"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn split_keys_on_a_file_without_the_shard_name_are_an_error() {
    let d = scratch("badname");
    let p = d.join("model.gguf");
    std::fs::copy(fixture_dir().join("split-00001-of-00003.gguf"), &p).unwrap();
    let err = GgufFile::open(&p).expect_err("unnamed shard");
    assert!(matches!(err, Error::SplitName { count: 3, .. }), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Writes `file` as `n` shards `dir/PREFIX-0000i-of-0000n.gguf` the way gguf-split does: the
/// first shard holds the metadata, each shard a run of tensors and the three split keys.
fn write_split(file: &GgufFile, dir: &Path, prefix: &str, n: usize) -> PathBuf {
    let tensors = file.tensors();
    let per = tensors.len().div_ceil(n);
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let mut w = GgufWriter::new();
        if i == 0 {
            for (k, v) in file.metadata() {
                w.add(k, v.clone()).unwrap();
            }
        }
        w.add("split.no", Value::U16(i as u16)).unwrap();
        w.add("split.count", Value::U16(n as u16)).unwrap();
        w.add("split.tensors.count", Value::I32(tensors.len() as i32))
            .unwrap();
        for t in chunk {
            w.add_tensor(&t.name, &t.dims, t.ty, file.data_of(t).unwrap().to_vec())
                .unwrap();
        }
        w.write_file(&dir.join(format!("{prefix}-{:05}-of-{n:05}.gguf", i + 1)))
            .unwrap();
    }
    dir.join(format!("{prefix}-00001-of-{n:05}.gguf"))
}

#[test]
fn split_model_gives_the_logits_of_the_single_file() {
    let mut bytes = Vec::new();
    generate(&TinySpec {
        layers: 4,
        ..TinySpec::default()
    })
    .unwrap()
    .write_to(&mut bytes)
    .unwrap();
    let single = Arc::new(GgufFile::from_bytes(bytes).unwrap());
    let d = scratch("model");
    let first = write_split(&single, &d, "ds4-tiny", 4);
    let split = Model::open(&first).expect("split model opens");
    assert_eq!(split.file.paths().len(), 4);
    let whole = Model::from_file(single).unwrap();
    let tokens: Vec<u32> = (0..20u32).map(|i| i * 17 % 512).collect();
    let run = |m: &Model| {
        let be = CpuBackend::new(m.file.clone());
        let mut s = m.new_session(&be, 256).unwrap();
        m.forward(&be, &mut s, &tokens, Precision::Precise).unwrap()
    };
    let (a, b) = (run(&split), run(&whole));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // A missing shard of a model is named through the model error too.
    std::fs::remove_file(d.join("ds4-tiny-00003-of-00004.gguf")).unwrap();
    let err = Model::open(&first).expect_err("missing shard");
    assert!(
        matches!(&err, ModelError::Gguf(Error::MissingShard { index: 3, .. })),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

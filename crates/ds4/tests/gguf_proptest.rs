//! Property tests for the GGUF reader and writer (spec/model.md §3.1, STYLE.md §7): the reader
//! never panics on random, truncated or mutated bytes, and writer → reader round-trips random
//! metadata (every value type, nested and empty arrays) and random tensors.

use ds4::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use proptest::prelude::*;

const SCALAR_TYPES: [ValueType; 12] = [
    ValueType::U8,
    ValueType::I8,
    ValueType::U16,
    ValueType::I16,
    ValueType::U32,
    ValueType::I32,
    ValueType::F32,
    ValueType::Bool,
    ValueType::String,
    ValueType::U64,
    ValueType::I64,
    ValueType::F64,
];

const TENSOR_TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q4_K,
    GgmlType::Q8_K,
    GgmlType::IQ2_XXS,
    GgmlType::I32,
    GgmlType::BF16,
];

fn scalar(ty: ValueType) -> BoxedStrategy<Value> {
    match ty {
        ValueType::U8 => any::<u8>().prop_map(Value::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(Value::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(Value::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(Value::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(Value::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(Value::I32).boxed(),
        // Raw bits, so NaN payloads and signed zeros must survive too.
        ValueType::F32 => any::<u32>()
            .prop_map(|b| Value::F32(f32::from_bits(b)))
            .boxed(),
        ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        ValueType::String => ".{0,12}".prop_map(Value::String).boxed(),
        ValueType::U64 => any::<u64>().prop_map(Value::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(Value::I64).boxed(),
        ValueType::F64 => any::<u64>()
            .prop_map(|b| Value::F64(f64::from_bits(b)))
            .boxed(),
        ValueType::Array => unreachable!("arrays come from `array`"),
    }
}

/// An array of `elem` values; nested arrays get random element types of their own.
fn array(depth: u32) -> BoxedStrategy<Value> {
    let elem_types = if depth < 8 {
        prop_oneof![4 => prop::sample::select(&SCALAR_TYPES[..]), 1 => Just(ValueType::Array)]
            .boxed()
    } else {
        prop::sample::select(&SCALAR_TYPES[..]).boxed()
    };
    elem_types
        .prop_flat_map(move |elem| {
            let item = if elem == ValueType::Array {
                array(depth + 1)
            } else {
                scalar(elem)
            };
            prop::collection::vec(item, 0..4).prop_map(move |items| Value::Array(elem, items))
        })
        .boxed()
}

fn value() -> BoxedStrategy<Value> {
    prop_oneof![3 => prop::sample::select(&SCALAR_TYPES[..]).prop_flat_map(scalar), 1 => array(1)]
        .boxed()
}

/// Equality with floats compared bit for bit.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(ta, xa), Value::Array(tb, xb)) => {
            ta == tb && xa.len() == xb.len() && xa.iter().zip(xb).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

#[derive(Debug, Clone)]
struct TensorSpec {
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

fn tensor() -> impl Strategy<Value = TensorSpec> {
    (
        prop::sample::select(&TENSOR_TYPES[..]),
        prop::collection::vec(1u64..4, 1..4),
    )
        .prop_flat_map(|(ty, mut dims)| {
            dims[0] *= ty.block_elems() as u64;
            let n_bytes = ty.bytes_for(dims.iter().product()).unwrap() as usize;
            prop::collection::vec(any::<u8>(), n_bytes).prop_map(move |data| TensorSpec {
                dims: dims.clone(),
                ty,
                data,
            })
        })
}

#[derive(Debug, Clone)]
struct FileSpec {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    (
        prop::sample::select(vec![1u64, 8, 32, 64, 256]),
        prop::collection::vec(("[a-z._]{0,10}", value()), 0..6),
        prop::collection::vec(tensor(), 0..4),
    )
        .prop_map(|(alignment, kv, tensors)| FileSpec {
            alignment,
            // An index prefix keeps keys unique.
            metadata: kv
                .into_iter()
                .enumerate()
                .map(|(i, (k, v))| (format!("k{i}{k}"), v))
                .collect(),
            tensors,
        })
}

fn write(spec: &FileSpec) -> Vec<u8> {
    let mut w = GgufWriter::with_alignment(spec.alignment);
    for (k, v) in &spec.metadata {
        w.add(k, v.clone()).unwrap();
    }
    for (i, t) in spec.tensors.iter().enumerate() {
        w.add_tensor(&format!("blk.{i}.weight"), &t.dims, t.ty, t.data.clone())
            .unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

/// Parses `bytes`; on success checks that every tensor view is in bounds and sized right.
fn parse_checked(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_bytes(bytes) {
        for info in f.tensors() {
            let t = f
                .tensor(&info.name)
                .expect("every listed tensor can be looked up");
            assert_eq!(t.data.len() as u64, info.n_bytes);
            assert!(info.offset >= f.data_offset());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn writer_then_reader_round_trips(spec in file_spec()) {
        let f = GgufFile::from_bytes(write(&spec)).unwrap();
        prop_assert_eq!(f.version(), 3);
        prop_assert_eq!(f.alignment(), spec.alignment);
        prop_assert_eq!(f.data_offset() % spec.alignment, 0);
        let meta: Vec<_> = f.metadata().iter().filter(|(k, _)| k != "general.alignment").collect();
        prop_assert_eq!(meta.len(), spec.metadata.len());
        for ((k, v), (k2, v2)) in meta.into_iter().zip(&spec.metadata) {
            prop_assert_eq!(k, k2);
            prop_assert!(same(v, v2), "key {}: read {:?}, wrote {:?}", k, v, v2);
            prop_assert!(same(f.get(k).unwrap(), v2));
        }
        prop_assert_eq!(f.tensors().len(), spec.tensors.len());
        for (i, t) in spec.tensors.iter().enumerate() {
            let view = f.tensor(&format!("blk.{i}.weight")).unwrap();
            prop_assert_eq!(&view.info.dims, &t.dims);
            prop_assert_eq!(view.info.ty, t.ty);
            prop_assert_eq!(view.info.offset % spec.alignment, 0);
            prop_assert_eq!(view.data, &t.data[..]);
        }
    }

    #[test]
    fn reader_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_checked(bytes);
    }

    #[test]
    fn reader_never_panics_on_random_bytes_after_a_valid_header(
        n_tensors in 0u64..4,
        n_kv in 0u64..4,
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&n_kv.to_le_bytes());
        bytes.extend_from_slice(&rest);
        parse_checked(bytes);
    }

    #[test]
    fn reader_never_panics_on_truncated_files(spec in file_spec(), cut in any::<prop::sample::Index>()) {
        let bytes = write(&spec);
        let cut = cut.index(bytes.len() + 1);
        parse_checked(bytes[..cut].to_vec());
    }

    #[test]
    fn reader_never_panics_on_mutated_files(
        spec in file_spec(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        word in any::<Option<(prop::sample::Index, u64)>>(),
    ) {
        let mut bytes = write(&spec);
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        // Also overwrite a whole little-endian u64 somewhere: forged lengths, counts, offsets.
        if let Some((at, v)) = word {
            if bytes.len() >= 8 {
                let i = at.index(bytes.len() - 7);
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        parse_checked(bytes);
    }
}

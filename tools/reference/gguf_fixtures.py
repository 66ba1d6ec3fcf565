#!/usr/bin/env python3
"""GGUF interop fixtures for ds4-rs, written and described by the reference implementation.

Pinned: gguf==0.19.0, numpy==2.4.6 (run with /work/venv-ref/bin/python). Seed: 0.

    python tools/reference/gguf_fixtures.py            # (re)write tests/fixtures/gguf/*
    python tools/reference/gguf_fixtures.py --check F [--expect F.json]
        # read F (e.g. written by ds4-rs's GgufWriter) with gguf.GGUFReader and print its
        # description as JSON; with --expect, compare it with what ds4-rs says it wrote

Generate mode writes, for each variant (`basic`: default alignment, `aligned64`:
general.alignment = 64, `split`: the basic file as gguf-py's split writer shards it, two tensors
a shard, `split-0000i-of-00003.gguf` with split.no / split.count / split.tensors.count), a GGUF with gguf.GGUFWriter holding keys of every GGUF value type
(scalars, arrays of strings/ints/floats/bools, a typed U32 array, a nested array) and tensors
F32, F16, Q8_0 (quantized by gguf.quants), I32 and a raw uint8 Q2_K block, then reads it back
with gguf.GGUFReader and stores what the reader reports in `<variant>.json`. The Rust test
crates/ds4/tests/gguf_interop.rs checks that ds4's reader reports the same. The expected values
are gguf-py's, never ours.

The --check mode is the reverse direction (our writer -> gguf-py reader). It is run by hand
because CI has no Python:

    DS4_GGUF_OUT=/tmp/ours cargo test -p ds4 --test gguf_interop -- --ignored
    python tools/reference/gguf_fixtures.py --check /tmp/ours.gguf --expect /tmp/ours.json

It exits non-zero if gguf-py cannot parse the file or reports anything other than the JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf"


def write_fixture(path: Path, alignment: int | None, split_max_tensors: int = 0) -> None:
    rng = np.random.default_rng(0)
    # adds general.architecture; with split_max_tensors, writes PATH-0000i-of-0000n.gguf shards
    w = gguf.GGUFWriter(str(path), arch="deepseek4", split_max_tensors=split_max_tensors)
    if alignment is not None:
        w.add_custom_alignment(alignment)  # general.alignment as UINT32
    w.add_name("tiny interop fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 1e-6)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo ✓ 世界")
    w.add_key_value("test.empty_string", "", V.STRING)  # add_string() skips empty strings
    w.add_uint64("test.u64", 2**64 - 1)
    w.add_int64("test.i64", -(2**63))
    w.add_float64("test.f64", 3.141592653589793)
    w.add_array("tokenizer.ggml.tokens", ["<｜begin▁of▁sentence｜>", "a", "Ġb", ""])
    w.add_array("test.arr_i32", [0, -1, 4, 128])  # python ints become INT32
    w.add_key_value("test.arr_u32", [0, 0, 4, 128, 4], V.ARRAY, sub_type=V.UINT32)
    w.add_array("test.arr_f32", [10.0, 0.5, -2.25])
    w.add_key_value("test.arr_f64", [1e-6, 2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.arr_bool", [True, False, True])
    w.add_array("test.arr_nested", [[1, 2], [3], [4, 5, 6]])

    w.add_tensor("f32.weight", rng.standard_normal((3, 4)).astype(np.float32))
    w.add_tensor("f16.weight", rng.standard_normal(8).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.Q8_0)
    w.add_tensor("q8_0.weight", q8, raw_dtype=Q.Q8_0)  # uint8 (2, 68) -> ggml dims [64, 2]
    w.add_tensor("i32.weight", rng.integers(-1000, 1000, 5).astype(np.int32))
    q2k = rng.integers(0, 256, (1, 84), dtype=np.uint8)
    q2k[0, 80:84] = np.array([0.5, 0.25], dtype=np.float16).view(np.uint8)  # sane d, dmin
    w.add_tensor("q2_k.weight", q2k, raw_dtype=Q.Q2_K)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def describe(path: Path) -> dict:
    """What gguf.GGUFReader reports about `path`, as JSON-ready data."""
    r = gguf.GGUFReader(str(path))
    metadata = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):  # the reader's pseudo-fields for the header
            continue
        metadata.append({
            "key": key,
            # For arrays gguf-py lists ARRAY, the element type, then (nested) the first
            # element's types; contents() flattens nested arrays.
            "types": [t.name for t in field.types],
            "value": field.contents(),
        })
    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],  # ggml order
            "n_elems": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "offset": int(t.data_offset),  # absolute
            "data_hex": t.data.tobytes().hex(),
        })
    return {
        "generator": "tools/reference/gguf_fixtures.py (gguf==0.19.0, numpy==2.4.6, seed 0)",
        "file_len": path.stat().st_size,
        "version": int(r.fields["GGUF.version"].contents()),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", type=Path, help="describe a GGUF written elsewhere and exit")
    ap.add_argument("--expect", type=Path, help="with --check: JSON the description must match")
    args = ap.parse_args()
    if args.check is not None:
        got = describe(args.check)
        if args.expect is None:
            json.dump(got, sys.stdout, indent=1, ensure_ascii=False)
            print()
            return 0
        want = json.loads(args.expect.read_text(encoding="utf-8"))
        bad = [k for k in got if k != "generator" and got[k] != want.get(k)]
        for k in bad:
            if isinstance(got[k], list):
                for g, w in zip(got[k], want.get(k) or []):
                    if g != w:
                        print(f"{k}: gguf-py {g} != ours {w}")
            else:
                print(f"{k}: gguf-py {got[k]} != ours {want.get(k)}")
        print(f"{args.check}: {'MISMATCH in ' + ', '.join(bad) if bad else 'gguf-py agrees'}")
        return 1 if bad else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_fixture(OUT_DIR / "split.gguf", None, split_max_tensors=2)
    shards = sorted(OUT_DIR.glob("split-*-of-*.gguf"))
    desc = {"generator": "tools/reference/gguf_fixtures.py (gguf==0.19.0, numpy==2.4.6, seed 0)",
            "shards": [dict(describe(p), file=p.name) for p in shards]}
    with open(OUT_DIR / "split.json", "w", encoding="utf-8") as f:
        json.dump(desc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(shards)} shards: {', '.join(p.name for p in shards)}")
    for name, alignment in [("basic", None), ("aligned64", 64)]:
        path = OUT_DIR / f"{name}.gguf"
        write_fixture(path, alignment)
        desc = describe(path)
        with open(OUT_DIR / f"{name}.json", "w", encoding="utf-8") as f:
            json.dump(desc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{path}: {desc['file_len']} bytes, {len(desc['tensors'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reference fixtures for ds4's quant formats (spec/model.md §4), made with gguf-py.

Pins: python 3.11, gguf==0.19.0, numpy==2.4.6.
Run:  /work/venv-ref/bin/python tools/reference/quant_fixtures.py
Seed: SEED below; output is deterministic.

For every case this writes to tests/fixtures/quant/:
  <name>.q.bin    the raw GGUF bytes of the blocks
  <name>.deq.bin  gguf.quants.dequantize(bytes) as little-endian float32
  <name>.src.bin  (quantize cases only) the float32 input given to gguf.quants.quantize,
                  whose output is <name>.q.bin; ds4's quantize must reproduce it bit for bit
and manifest.json listing the cases. K-quant, i-quant and MXFP4 blocks are random bytes with
the f16 scale fields (MXFP4: every E8M0 exponent) set to sane values (gguf-py has no quantizer
for most of them); the *_all_grid cases use every entry of an i-quant grid and sign table.
New cases are appended at the end so that the earlier ones keep their bytes.
"""

import json
import pathlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

SEED = 20260514
OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "quant"

rng = np.random.default_rng(SEED)
cases = []


def f16_bytes(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def write_case(name, qtype, raw, n_elems, src=None):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if qtype == T.F32:
        deq = dequantize(raw.view(np.float32), qtype)
    elif qtype == T.F16:
        deq = dequantize(raw.view(np.float16), qtype)
    else:
        deq = dequantize(raw, qtype)
    deq = np.ascontiguousarray(deq, dtype=np.float32).reshape(-1)
    assert deq.size == n_elems, (name, deq.size, n_elems)
    (OUT / f"{name}.q.bin").write_bytes(raw.tobytes())
    (OUT / f"{name}.deq.bin").write_bytes(deq.astype("<f4").tobytes())
    entry = {"name": name, "type": qtype.name, "n_elems": n_elems,
             "quantized": f"{name}.q.bin", "dequantized": f"{name}.deq.bin", "source": None}
    if src is not None:
        src = np.ascontiguousarray(src, dtype=np.float32).reshape(-1)
        (OUT / f"{name}.src.bin").write_bytes(src.astype("<f4").tobytes())
        entry["source"] = f"{name}.src.bin"
    cases.append(entry)


def quantize_case(name, qtype, src):
    src = np.asarray(src, dtype=np.float32)
    q = quantize(src.reshape(1, -1), qtype)
    write_case(name, qtype, np.ascontiguousarray(q).view(np.uint8), src.size, src)


# ---- F32: random values, signed zero and infinities pass through unchanged.
x = rng.standard_normal(256).astype(np.float32) * np.float32(3.0)
x[:4] = [0.0, -0.0, np.inf, -np.inf]
quantize_case("f32_random", T.F32, x)

# ---- F16 quantize: random over many magnitudes (overflow to inf, subnormals, flush to 0),
# exact midpoints between neighbouring f16 values (ties to even), and a quiet NaN.
mags = np.float32(10.0) ** rng.uniform(-9, 5.2, 384).astype(np.float32)
x = (rng.standard_normal(384).astype(np.float32) * mags).astype(np.float32)
h = rng.integers(0, 0x7bff, 128, dtype=np.uint16)  # finite non-negative f16 bit patterns
lo = h.view(np.float16).astype(np.float32)
hi = (h + 1).view(np.float16).astype(np.float32)
mid = ((lo.astype(np.float64) + hi.astype(np.float64)) / 2).astype(np.float32)  # exact in f32
mid[::2] *= -1
x = np.concatenate([x, mid, np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99,
                                      65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 6e-8],
                                     dtype=np.float32)])
x = np.concatenate([x, np.zeros((-x.size) % 16, dtype=np.float32)])
quantize_case("f16_quantize", T.F16, x)

# ---- F16 dequantize edge cases: raw bit patterns (subnormals, ±0, ±inf, max, NaNs).
edges = [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0200, 0x0400, 0x7bff, 0xfbff,
         0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xfe00, 0x3c00, 0xbc00, 0x3555]
strided = list(range(3, 0x10000, 251))
bits = np.array(edges + strided, dtype=np.uint16)
write_case("f16_edges", T.F16, bits.view(np.uint8), bits.size)

# ---- BF16 quantize: random values, ties (low half exactly 0x8000, both parities),
# values rounding up to inf, infinities and a quiet NaN.
x = rng.standard_normal(448).astype(np.float32) * np.float32(100.0)
u = rng.integers(0, 0x7f7f, 32, dtype=np.uint32) << 16
ties = np.concatenate([u | 0x8000, (u | 0x10000) | 0x8000]).view(np.float32)
special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.3895314e38, 1e-40, -1e-45],
                   dtype=np.float32)
x = np.concatenate([x, ties, special, np.zeros(8, dtype=np.float32)])
quantize_case("bf16_quantize", T.BF16, x)

# ---- Q8_0 quantize: 16 blocks of varied scale, one all-zero block, one with a single
# non-zero, one with ±equal extremes.
blocks = rng.standard_normal((16, 32)).astype(np.float32)
blocks *= (np.float32(10.0) ** rng.uniform(-4, 3, (16, 1))).astype(np.float32)
blocks[3] = 0.0
blocks[7] = 0.0
blocks[7, 5] = -0.37
blocks[11, 0], blocks[11, 1] = 2.5, -2.5
quantize_case("q8_0_quantize", T.Q8_0, blocks.reshape(-1))


def f16_scale(shape, lo, hi):
    """Random positive f16 scales with magnitude in [lo, hi], as 2 little-endian bytes."""
    v = (np.float32(10.0) ** rng.uniform(np.log10(lo), np.log10(hi), shape)).astype(np.float32)
    return v.astype(np.float16).view(np.uint8).reshape(*shape[:-1], 2)


# ---- Q2_K: { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }, 84 bytes.
nb = 8
raw = rng.integers(0, 256, (nb, 84), dtype=np.uint8)
raw[:, 80:82] = f16_scale((nb, 1), 1e-3, 1e-1)
raw[:, 82:84] = f16_scale((nb, 1), 1e-3, 1e-1)
raw[5, 80:84] = 0  # d = dmin = 0
write_case("q2_k_random", T.Q2_K, raw, nb * 256)

# ---- Q4_K: { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }, 144 bytes.
raw = rng.integers(0, 256, (nb, 144), dtype=np.uint8)
raw[:, 0:2] = f16_scale((nb, 1), 1e-4, 1e-2)
raw[:, 2:4] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("q4_k_random", T.Q4_K, raw, nb * 256)

# ---- IQ2_XXS: { f16 d; u16 qs[32] }, 66 bytes.
raw = rng.integers(0, 256, (nb, 66), dtype=np.uint8)
raw[:, 0:2] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("iq2_xxs_random", T.IQ2_XXS, raw, nb * 256)

# IQ2_XXS covering the whole grid and sign table: sub-block k (of 64) uses grid indices
# 4k..4k+3, sign indices (4k+i) mod 128 and sub-block scale k mod 16.
raw = np.zeros((8, 66), dtype=np.uint8)
raw[:, 0:2] = f16_scale((8, 1), 1e-3, 1e-2)
for k in range(64):
    b, s = divmod(k, 8)
    a0 = np.array([4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3], dtype=np.uint8)
    a1 = 0
    for i in range(4):
        a1 |= ((4 * k + i) % 128) << (7 * i)
    a1 |= (k % 16) << 28
    off = 2 + 8 * s
    raw[b, off:off + 4] = a0
    raw[b, off + 4:off + 8] = np.array([a1], dtype="<u4").view(np.uint8)
write_case("iq2_xxs_all_grid", T.IQ2_XXS, raw, 8 * 256)

# ---- Q3_K: { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }, 110 bytes.
raw = rng.integers(0, 256, (nb, 110), dtype=np.uint8)
raw[:, 108:110] = f16_scale((nb, 1), 1e-3, 1e-1)
raw[2, 108:110] = 0  # d = 0
write_case("q3_k_random", T.Q3_K, raw, nb * 256)

# ---- Q5_K: { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }, 176 bytes.
raw = rng.integers(0, 256, (nb, 176), dtype=np.uint8)
raw[:, 0:2] = f16_scale((nb, 1), 1e-4, 1e-2)
raw[:, 2:4] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("q5_k_random", T.Q5_K, raw, nb * 256)

# ---- Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }, 210 bytes.
raw = rng.integers(0, 256, (nb, 210), dtype=np.uint8)
raw[:, 208:210] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("q6_k_random", T.Q6_K, raw, nb * 256)

# ---- IQ2_XS: { f16 d; u16 qs[32]; u8 scales[8] }, 74 bytes.
raw = rng.integers(0, 256, (nb, 74), dtype=np.uint8)
raw[:, 0:2] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("iq2_xs_random", T.IQ2_XS, raw, nb * 256)

# IQ2_XS covering the whole grid and sign table: group g (of 512) uses grid index g, sign index
# g mod 128; the 4-bit scales count up.
raw = np.zeros((16, 74), dtype=np.uint8)
raw[:, 0:2] = f16_scale((16, 1), 1e-3, 1e-2)
for g in range(512):
    b, k = divmod(g, 32)
    v = g | ((g % 128) << 9)
    raw[b, 2 + 2 * k:4 + 2 * k] = np.array([v], dtype="<u2").view(np.uint8)
for b in range(16):
    for i in range(8):
        raw[b, 66 + i] = ((2 * (8 * b + i)) % 16) | (((2 * (8 * b + i) + 1) % 16) << 4)
write_case("iq2_xs_all_grid", T.IQ2_XS, raw, 16 * 256)

# ---- IQ3_XXS: { f16 d; u8 qs[64]; u32 scales_signs[8] }, 98 bytes.
raw = rng.integers(0, 256, (nb, 98), dtype=np.uint8)
raw[:, 0:2] = f16_scale((nb, 1), 1e-4, 1e-2)
write_case("iq3_xxs_random", T.IQ3_XXS, raw, nb * 256)

# IQ3_XXS covering the whole grid and sign table: block b uses grid indices 64b..64b+63;
# sub-block word w (of 32) has sign indices 4w..4w+3 and scale w mod 16.
raw = np.zeros((4, 98), dtype=np.uint8)
raw[:, 0:2] = f16_scale((4, 1), 1e-3, 1e-2)
for b in range(4):
    raw[b, 2:66] = np.arange(64 * b, 64 * b + 64, dtype=np.uint8)
    for ib in range(8):
        w = 8 * b + ib
        a = 0
        for k in range(4):
            a |= ((4 * w + k) % 128) << (7 * k)
        a |= (w % 16) << 28
        raw[b, 66 + 4 * ib:70 + 4 * ib] = np.array([a], dtype="<u4").view(np.uint8)
write_case("iq3_xxs_all_grid", T.IQ3_XXS, raw, 4 * 256)

# ---- MXFP4: { u8 e (E8M0); u8 qs[16] }, 17 bytes. Every exponent 0..255 once (subnormal
# scales at 0 and 1, infinities at the top), random codes.
raw = rng.integers(0, 256, (256, 17), dtype=np.uint8)
raw[:, 0] = np.arange(256, dtype=np.uint8)
write_case("mxfp4_all_exponents", T.MXFP4, raw, 256 * 32)

manifest = {
    "generator": "tools/reference/quant_fixtures.py",
    "seed": SEED,
    "gguf": "0.19.0",
    "numpy": np.__version__,
    "cases": cases,
}
(OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"wrote {len(cases)} cases to {OUT}")

#!/usr/bin/env python3
"""Reference logits for the tiny DeepSeek V4 Flash models (tests/fixtures/model/<recipe>/).

Pinned versions (see tools/reference/requirements.txt):
    python 3.11, torch==2.15.0, transformers==5.24.0, gguf==0.19.0, numpy==2.4.6
Seed: SEED below (20260611); token ids use SEED + 1, expert bytes SEED + 100 + recipe index.
Exact command (from the repository root):
    /work/venv-ref/bin/python tools/reference/model_fixtures.py --out tests/fixtures/model
GGUF files only (no torch/transformers needed: gguf==0.19.0 and numpy==2.4.6 suffice; this is
what tools/make-test-models.sh runs on CI, the bytes equal those of the full run):
    python tools/reference/model_fixtures.py --gguf-only --out tests/fixtures/model

What it does, per recipe (f16 / q2 / q4 differ only in the routed-expert tensors; f16dense and
mxfp4 also store every dense matrix as F16 / BF16, as llama.cpp's converter writes them):
 1. draws random weights with a fixed seed, encodes them with gguf-py (F16/Q8_0 through
    gguf.quants.quantize; Q2_K/Q4_K/IQ2_XXS as random bytes with sane f16 scale fields, because
    gguf-py can only dequantize those) and writes model.gguf with the tensor names, ggml dims,
    types and metadata keys of spec/model.md §3.2/§3.3 at tiny sizes;
 2. reads the file back with gguf.GGUFReader, dequantizes every tensor with gguf-py, maps the
    tensors onto transformers' DeepseekV4ForCausalLM (strict load) and runs a stateless forward
    over 260 seeded token ids;
 3. writes tokens.json, logits_precise.npy (plain HF, computed in float64) and
    logits_default.npy (HF in float32 plus the official numerics of spec §7: FP8 E4M3 KV rows,
    Hadamard + FP4 E2M1 indexer, f16 cache rows), and report.json with the checks below;
 4. checks HF's own prefill-with-cache + token-by-token decode against the stateless forward
    and measures how much the indexer really selects.
Expected values come only from gguf-py and transformers; nothing here reads our Rust output.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

# torch and transformers are imported by import_hf(), so that --gguf-only runs without them.
torch = transformers = hfm = DeepseekV4Config = DeepseekV4ForCausalLM = None

SEED = 20260611
N_TOKENS = 260
PREFILL_TOKENS = 130  # cache check: prefill this many, then decode one token at a time

# Tiny configuration, shared by all recipes. Names follow spec/model.md §1.
VOCAB = 512
EMBD = 256
N_LAYER = 6
COMPRESS_RATIOS = [0, 0, 4, 128, 4, 128]
N_HEAD = 4
HEAD_DIM = 128
N_ROT = 64
Q_LORA = 128
O_GROUPS = 2
O_LORA = 64
SWA = 32
IDX_HEADS = 16
IDX_DIM = 128
IDX_TOPK = 16
N_EXPERT = 16
N_EXPERT_USED = 4
FF_EXP = 256
N_HASH = 3
HC = 4
SINKHORN = 20
EPS = 1e-6
ROPE_BASE = 10000.0
COMPRESS_ROPE_BASE = 160000.0
YARN_FACTOR = 16.0
YARN_ORIG_CTX = 65536
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
EXPERT_SCALE = 1.5
SWIGLU_CLAMP = 10.0
CONTEXT_LENGTH = 1048576

RECIPES = {
    # recipe: (gate/up type, down type, dense type or None for the published recipe: Q8_0
    # projections, shared experts and head, F16 elsewhere). New recipes go at the end: the
    # expert RNG stream is picked by position.
    "f16": (QT.F16, QT.F16, None),
    "q2": (QT.IQ2_XXS, QT.Q2_K, None),
    "q4": (QT.Q4_K, QT.Q4_K, None),
    # llama.cpp-converter style: every dense matrix F16, i-quant / K-quant experts.
    "f16dense": (QT.IQ3_XXS, QT.Q6_K, QT.F16),
    # DeepSeek's FP4 checkpoint converted: MXFP4 routed experts, BF16 dense matrices.
    "mxfp4": (QT.MXFP4, QT.MXFP4, QT.BF16),
}


# --------------------------------------------------------------------------------------------
# 1. Weights and the GGUF file
# --------------------------------------------------------------------------------------------


def encode(rng_values: np.ndarray, qtype: QT) -> tuple[np.ndarray, QT | None]:
    """Encodes float values with gguf-py; returns (array for GGUFWriter, raw_dtype or None)."""
    x = np.ascontiguousarray(rng_values, dtype=np.float32)
    if qtype == QT.F32:
        return x, None
    if qtype == QT.F16:
        return gguf.quants.quantize(x, QT.F16), None
    if qtype == QT.Q8_0:
        return gguf.quants.quantize(x, QT.Q8_0), QT.Q8_0
    if qtype == QT.BF16:
        return gguf.quants.quantize(x, QT.BF16), QT.BF16
    raise ValueError(qtype)


# Byte offsets of the f16 scale fields inside one block, per random-byte type.
_KQUANT_FIELDS = {
    # type: (offset of d, offset of dmin or None, dmin/d ratio that centres the values)
    QT.Q4_K: (0, 2, 7.5),  # x = d*sc*q - dmin*m, E[q] = 7.5 (4-bit)
    QT.Q2_K: (80, 82, 1.5),  # x = d*sc*q - dmin*m, E[q] = 1.5 (2-bit), sc and m both 4-bit
    QT.IQ2_XXS: (0, None, 0.0),  # x = d*(0.5+s)/4*grid*sign, signs centre it
    QT.IQ3_XXS: (0, None, 0.0),  # x = d*(0.5+s)/2*grid*sign, signs centre it
    QT.Q6_K: (208, None, 0.0),  # x = d*sc*(q-32), signed 8-bit sc centres it
}


def random_mxfp4(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Random MXFP4 blocks (E8M0 exponent byte + 16 bytes of E2M1 codes) with values of ~std."""
    *lead, cols = shape
    n_blocks = cols // 32
    blocks = rng.integers(0, 256, size=(*lead, n_blocks, 17), dtype=np.uint8)
    blocks[..., 0] = 128  # scale 2^(e-128) = 1: the codes' own spread
    unit = gguf.quants.dequantize(blocks.reshape(*lead, n_blocks * 17), QT.MXFP4)
    e = 128 + np.round(np.log2(std / float(unit.std()))) + rng.integers(-1, 2, size=blocks.shape[:-1])
    blocks[..., 0] = e.astype(np.uint8)
    return blocks.reshape(*lead, n_blocks * 17)


def _set_f16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    blocks[..., offset : offset + 2] = values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def random_kquant(rng: np.random.Generator, shape: tuple[int, ...], qtype: QT, std: float) -> np.ndarray:
    """Random bytes forming valid Q2_K/Q4_K/IQ2_XXS blocks whose dequantized values have ~std."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    *lead, cols = shape
    n_blocks = cols // block_elems
    blocks = rng.integers(0, 256, size=(*lead, n_blocks, block_bytes), dtype=np.uint8)
    d_off, dmin_off, dmin_ratio = _KQUANT_FIELDS[qtype]
    # Calibrate with d = 1 on this very tensor, then pick per-block d with a +-30% jitter.
    _set_f16(blocks, d_off, np.ones(blocks.shape[:-1], dtype=np.float32))
    if dmin_off is not None:
        _set_f16(blocks, dmin_off, np.full(blocks.shape[:-1], dmin_ratio, dtype=np.float32))
    unit = gguf.quants.dequantize(blocks.reshape(*lead, n_blocks * block_bytes), qtype)
    d = std / float(unit.std()) * rng.uniform(0.7, 1.3, size=blocks.shape[:-1])
    _set_f16(blocks, d_off, d)
    if dmin_off is not None:
        _set_f16(blocks, dmin_off, d * dmin_ratio)
    return blocks.reshape(*lead, n_blocks * block_bytes)


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)


def make_tensors(recipe: str) -> list[tuple[str, np.ndarray, QT | None, tuple[int, ...], QT]]:
    """All tensors in file order: (name, data, raw_dtype, ggml dims, ggml type).

    Non-expert tensors come from one RNG stream, identical across recipes; routed experts come
    from a per-recipe stream. Numpy shapes are the reversed ggml dims (spec §0).
    """
    rng = np.random.default_rng(SEED)
    rng_exp = np.random.default_rng(SEED + 100 + list(RECIPES).index(recipe))
    out: list[tuple[str, np.ndarray, QT | None, tuple[int, ...], QT]] = []

    dense = RECIPES[recipe][2]

    def add(name: str, values: np.ndarray, qtype: QT) -> None:
        # The recipe's dense type replaces every F16/Q8_0 matrix (and `ape` when it can hold
        # a vector: the loader takes vectors as F32/F16/BF16 only).
        is_ape = name.endswith("_ape.weight")
        if dense is not None and qtype in (QT.F16, QT.Q8_0) and "_exps." not in name:
            if not is_ape or dense in (QT.F32, QT.F16, QT.BF16):
                qtype = dense
        data, raw = encode(values, qtype)
        out.append((name, data, raw, tuple(reversed(values.shape)), qtype))

    def add_raw(name: str, data: np.ndarray, qtype: QT, np_shape: tuple[int, ...]) -> None:
        out.append((name, data, qtype, tuple(reversed(np_shape)), qtype))

    hc_w = (2 + HC) * HC
    add("token_embd.weight", normal(rng, (VOCAB, EMBD), 1.0), QT.F16)
    add("output_hc_base.weight", normal(rng, (HC,), 0.5), QT.F32)
    add("output_hc_fn.weight", normal(rng, (HC, HC * EMBD), 1.0 / math.sqrt(HC * EMBD)), QT.F16)
    add("output_hc_scale.weight", rng.uniform(0.5, 1.5, size=(1,)).astype(np.float32), QT.F32)
    add("output_norm.weight", normal(rng, (EMBD,), 0.1, 1.0), QT.F32)
    add("output.weight", normal(rng, (VOCAB, EMBD), 1.5 / math.sqrt(EMBD)), QT.Q8_0)

    gate_t, down_t, _dense = RECIPES[recipe]
    for il in range(N_LAYER):
        p = f"blk.{il}."
        ratio = COMPRESS_RATIOS[il]
        for hc_name in ("hc_attn", "hc_ffn"):
            add(p + hc_name + "_fn.weight", normal(rng, (hc_w, HC * EMBD), 1.0 / math.sqrt(HC * EMBD)), QT.F16)
            add(p + hc_name + "_scale.weight", rng.uniform(0.5, 1.5, size=(3,)).astype(np.float32), QT.F32)
            add(p + hc_name + "_base.weight", normal(rng, (hc_w,), 0.5), QT.F32)
        add(p + "attn_norm.weight", normal(rng, (EMBD,), 0.1, 1.0), QT.F32)
        add(p + "attn_q_a.weight", normal(rng, (Q_LORA, EMBD), 1.0 / math.sqrt(EMBD)), QT.Q8_0)
        add(p + "attn_q_a_norm.weight", normal(rng, (Q_LORA,), 0.1, 1.0), QT.F32)
        add(p + "attn_q_b.weight", normal(rng, (N_HEAD * HEAD_DIM, Q_LORA), 1.0 / math.sqrt(Q_LORA)), QT.Q8_0)
        add(p + "attn_kv.weight", normal(rng, (HEAD_DIM, EMBD), 1.0 / math.sqrt(EMBD)), QT.Q8_0)
        add(p + "attn_kv_a_norm.weight", normal(rng, (HEAD_DIM,), 0.1, 1.0), QT.F32)
        add(p + "attn_sinks.weight", normal(rng, (N_HEAD,), 1.0), QT.F32)
        group_in = N_HEAD * HEAD_DIM // O_GROUPS
        add(p + "attn_output_a.weight", normal(rng, (O_GROUPS * O_LORA, group_in), 1.0 / math.sqrt(group_in)), QT.Q8_0)
        add(
            p + "attn_output_b.weight",
            normal(rng, (EMBD, O_GROUPS * O_LORA), 1.0 / math.sqrt(O_GROUPS * O_LORA)),
            QT.Q8_0,
        )
        if ratio != 0:
            coff = 2 if ratio == 4 else 1
            w = coff * HEAD_DIM
            add(p + "attn_compressor_ape.weight", normal(rng, (ratio, w), 0.5), QT.F16)
            add(p + "attn_compressor_kv.weight", normal(rng, (w, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
            add(p + "attn_compressor_gate.weight", normal(rng, (w, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
            add(p + "attn_compressor_norm.weight", normal(rng, (HEAD_DIM,), 0.1, 1.0), QT.F32)
        if ratio == 4:
            wi = 2 * IDX_DIM
            add(p + "indexer.attn_q_b.weight", normal(rng, (IDX_HEADS * IDX_DIM, Q_LORA), 1.0 / math.sqrt(Q_LORA)), QT.F16)
            add(p + "indexer.proj.weight", normal(rng, (IDX_HEADS, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
            add(p + "indexer_compressor_ape.weight", normal(rng, (ratio, wi), 0.5), QT.F16)
            add(p + "indexer_compressor_kv.weight", normal(rng, (wi, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
            add(p + "indexer_compressor_gate.weight", normal(rng, (wi, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
            add(p + "indexer_compressor_norm.weight", normal(rng, (IDX_DIM,), 0.1, 1.0), QT.F32)
        add(p + "ffn_norm.weight", normal(rng, (EMBD,), 0.1, 1.0), QT.F32)
        add(p + "ffn_gate_inp.weight", normal(rng, (N_EXPERT, EMBD), 1.0 / math.sqrt(EMBD)), QT.F16)
        if il >= N_HASH:
            add(p + "exp_probs_b.bias", normal(rng, (N_EXPERT,), 0.2), QT.F32)
        else:
            tid2eid = np.stack([rng.permutation(N_EXPERT)[:N_EXPERT_USED] for _ in range(VOCAB)]).astype(np.int32)
            out.append((p + "ffn_gate_tid2eid.weight", tid2eid, None, (N_EXPERT_USED, VOCAB), QT.I32))
        exp_std = 1.0 / math.sqrt(EMBD)
        for name, shape, qtype in (
            ("ffn_gate_exps.weight", (N_EXPERT, FF_EXP, EMBD), gate_t),
            ("ffn_up_exps.weight", (N_EXPERT, FF_EXP, EMBD), gate_t),
            ("ffn_down_exps.weight", (N_EXPERT, EMBD, FF_EXP), down_t),
        ):
            if qtype == QT.F16:
                add(p + name, normal(rng_exp, shape, exp_std), QT.F16)
            elif qtype == QT.MXFP4:
                add_raw(p + name, random_mxfp4(rng_exp, shape, exp_std), qtype, shape)
            else:
                add_raw(p + name, random_kquant(rng_exp, shape, qtype, exp_std), qtype, shape)
        add(p + "ffn_gate_shexp.weight", normal(rng, (FF_EXP, EMBD), 1.0 / math.sqrt(EMBD)), QT.Q8_0)
        add(p + "ffn_up_shexp.weight", normal(rng, (FF_EXP, EMBD), 1.0 / math.sqrt(EMBD)), QT.Q8_0)
        add(p + "ffn_down_shexp.weight", normal(rng, (EMBD, FF_EXP), 1.0 / math.sqrt(FF_EXP)), QT.Q8_0)
    return out


def write_gguf(path: Path, recipe: str) -> None:
    """Writes model.gguf with the metadata keys of spec §3.2 (tiny values) and all tensors."""
    w = gguf.GGUFWriter(str(path), arch="deepseek4")
    a = "deepseek4."
    w.add_string("general.name", f"ds4-tiny-{recipe}")
    u32 = {
        "block_count": N_LAYER,
        "context_length": CONTEXT_LENGTH,
        "embedding_length": EMBD,
        "vocab_size": VOCAB,
        "attention.head_count": N_HEAD,
        "attention.head_count_kv": 1,
        "attention.key_length": HEAD_DIM,
        "attention.value_length": HEAD_DIM,
        "rope.dimension_count": N_ROT,
        "attention.q_lora_rank": Q_LORA,
        "attention.output_lora_rank": O_LORA,
        "attention.output_group_count": O_GROUPS,
        "expert_count": N_EXPERT,
        "expert_used_count": N_EXPERT_USED,
        "expert_feed_forward_length": FF_EXP,
        "expert_shared_count": 1,
        "expert_group_count": 0,
        "expert_group_used_count": 0,
        "expert_gating_func": 4,
        "hash_layer_count": N_HASH,
        "attention.sliding_window": SWA,
        "attention.indexer.head_count": IDX_HEADS,
        "attention.indexer.key_length": IDX_DIM,
        "attention.indexer.top_k": IDX_TOPK,
        "hyper_connection.count": HC,
        "hyper_connection.sinkhorn_iterations": SINKHORN,
        "rope.scaling.original_context_length": YARN_ORIG_CTX,
    }
    for key, val in u32.items():
        w.add_uint32(a + key, val)
    f32 = {
        "hyper_connection.epsilon": EPS,
        "rope.freq_base": ROPE_BASE,
        "rope.scaling.factor": YARN_FACTOR,
        "rope.scaling.yarn_beta_fast": YARN_BETA_FAST,
        "rope.scaling.yarn_beta_slow": YARN_BETA_SLOW,
        "attention.compress_rope_freq_base": COMPRESS_ROPE_BASE,
        "expert_weights_scale": EXPERT_SCALE,
        "attention.layer_norm_rms_epsilon": EPS,
    }
    for key, val in f32.items():
        w.add_float32(a + key, val)
    w.add_bool(a + "expert_weights_norm", True)
    w.add_string(a + "rope.scaling.type", "yarn")
    w.add_key_value(
        a + "attention.compress_ratios", list(COMPRESS_RATIOS), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32
    )
    w.add_key_value(
        a + "swiglu_clamp_exp", [SWIGLU_CLAMP] * N_LAYER, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32
    )
    for name, data, raw, _dims, _qtype in make_tensors(recipe):
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf(path: Path, recipe: str) -> dict[str, np.ndarray]:
    """Reads model.gguf back, checks names/dims/types, dequantizes with gguf-py (numpy shapes)."""
    reader = gguf.GGUFReader(str(path))
    expected = {name: (dims, qtype) for name, _d, _r, dims, qtype in make_tensors(recipe)}
    got: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        dims = tuple(int(x) for x in t.shape)
        if expected.get(t.name) != (dims, t.tensor_type):
            raise SystemExit(f"{t.name}: file has {dims} {t.tensor_type!r}, expected {expected.get(t.name)}")
        np_shape = tuple(reversed(dims))
        if t.tensor_type == QT.I32:
            got[t.name] = np.asarray(t.data, dtype=np.int32).reshape(np_shape)
        else:
            got[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(np_shape)
    if set(got) != set(expected):
        raise SystemExit(f"tensor set mismatch: {sorted(set(got) ^ set(expected))}")
    fields = reader.fields
    ratios = fields["deepseek4.attention.compress_ratios"]
    if [int(ratios.parts[i][0]) for i in ratios.data] != COMPRESS_RATIOS:
        raise SystemExit("compress_ratios did not round-trip")
    return got


# --------------------------------------------------------------------------------------------
# 2. transformers model
# --------------------------------------------------------------------------------------------

# GGUF per-layer name -> HF name under model.layers.N. (spec §3.3 HF column, renamed by
# transformers/conversion_mapping.py "deepseek_v4").
_LAYER_MAP = {
    "hc_attn_fn.weight": "attn_hc.fn",
    "hc_attn_scale.weight": "attn_hc.scale",
    "hc_attn_base.weight": "attn_hc.base",
    "hc_ffn_fn.weight": "ffn_hc.fn",
    "hc_ffn_scale.weight": "ffn_hc.scale",
    "hc_ffn_base.weight": "ffn_hc.base",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q_a.weight": "self_attn.q_a_proj.weight",
    "attn_q_a_norm.weight": "self_attn.q_a_norm.weight",
    "attn_q_b.weight": "self_attn.q_b_proj.weight",
    "attn_kv.weight": "self_attn.kv_proj.weight",
    "attn_kv_a_norm.weight": "self_attn.kv_norm.weight",
    "attn_sinks.weight": "self_attn.sinks",
    "attn_output_a.weight": "self_attn.o_a_proj.weight",
    "attn_output_b.weight": "self_attn.o_b_proj.weight",
    "attn_compressor_ape.weight": "self_attn.compressor.position_bias",
    "attn_compressor_kv.weight": "self_attn.compressor.kv_proj.weight",
    "attn_compressor_gate.weight": "self_attn.compressor.gate_proj.weight",
    "attn_compressor_norm.weight": "self_attn.compressor.kv_norm.weight",
    "indexer.attn_q_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "indexer.proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "indexer_compressor_ape.weight": "self_attn.compressor.indexer.position_bias",
    "indexer_compressor_kv.weight": "self_attn.compressor.indexer.kv_proj.weight",
    "indexer_compressor_gate.weight": "self_attn.compressor.indexer.gate_proj.weight",
    "indexer_compressor_norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "ffn_gate_tid2eid.weight": "mlp.gate.tid2eid",
    "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
    "output_norm.weight": "model.norm.weight",
    "output_hc_fn.weight": "model.hc_head.hc_fn",
    "output_hc_base.weight": "model.hc_head.hc_base",
    "output_hc_scale.weight": "model.hc_head.hc_scale",
}


def to_hf_state_dict(t: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for name, arr in t.items():
        if name in _GLOBAL_MAP:
            sd[_GLOBAL_MAP[name]] = torch.from_numpy(arr.copy())
            continue
        _, il, rest = name.split(".", 2)
        p = f"model.layers.{il}."
        if rest in ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"):
            continue
        value = torch.from_numpy(arr.copy())
        if rest == "ffn_gate_tid2eid.weight":
            value = value.long()
        sd[p + _LAYER_MAP[rest]] = value
    for il in range(N_LAYER):
        p = f"blk.{il}."
        # HF packs routed experts as gate_up_proj[E, 2I, H] (w1 rows, then w3 rows) and
        # down_proj[E, H, I]; numpy shapes of the GGUF tensors are already [E, I, H] / [E, H, I].
        gate_up = np.concatenate([t[p + "ffn_gate_exps.weight"], t[p + "ffn_up_exps.weight"]], axis=1)
        sd[f"model.layers.{il}.mlp.experts.gate_up_proj"] = torch.from_numpy(gate_up)
        sd[f"model.layers.{il}.mlp.experts.down_proj"] = torch.from_numpy(t[p + "ffn_down_exps.weight"].copy())
    return sd


def make_config() -> DeepseekV4Config:
    return DeepseekV4Config(
        vocab_size=VOCAB,
        hidden_size=EMBD,
        moe_intermediate_size=FF_EXP,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=1,
        head_dim=HEAD_DIM,
        q_lora_rank=Q_LORA,
        num_experts_per_tok=N_EXPERT_USED,
        n_routed_experts=N_EXPERT,
        n_shared_experts=1,
        scoring_func="sqrtsoftplus",
        norm_topk_prob=True,
        routed_scaling_factor=EXPERT_SCALE,
        max_position_embeddings=CONTEXT_LENGTH,
        rope_theta=ROPE_BASE,
        compress_rope_theta=COMPRESS_ROPE_BASE,
        hc_mult=HC,
        hc_sinkhorn_iters=SINKHORN,
        hc_eps=EPS,
        swiglu_limit=SWIGLU_CLAMP,
        sliding_window=SWA,
        o_groups=O_GROUPS,
        o_lora_rank=O_LORA,
        index_n_heads=IDX_HEADS,
        index_head_dim=IDX_DIM,
        index_topk=IDX_TOPK,
        rms_norm_eps=EPS,
        tie_word_embeddings=False,
        compress_ratios=list(COMPRESS_RATIOS),
        num_hash_layers=N_HASH,
        qk_rope_head_dim=N_ROT,
        rope_scaling={
            "type": "yarn",
            "factor": YARN_FACTOR,
            "original_max_position_embeddings": YARN_ORIG_CTX,
            "beta_fast": YARN_BETA_FAST,
            "beta_slow": YARN_BETA_SLOW,
        },
        attn_implementation="eager",
        experts_implementation="eager",  # the modeling file's own loop (grouped_mm has no float64)
    )


def build_model(sd: dict[str, torch.Tensor]) -> DeepseekV4ForCausalLM:
    torch.manual_seed(0)  # only affects HF's init, which the strict load overwrites
    model = DeepseekV4ForCausalLM(make_config()).eval()
    result = model.load_state_dict(sd, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"load: {result}")
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        raise SystemExit("lm_head is tied to embed_tokens")
    if not torch.equal(model.lm_head.weight, sd["lm_head.weight"]):
        raise SystemExit("lm_head does not hold output.weight")
    return model


# --------------------------------------------------------------------------------------------
# 3a. Precise mode: plain HF, forced to float64 everywhere
# --------------------------------------------------------------------------------------------


def inv_freq_f64(base: float, yarn: bool) -> torch.Tensor:
    """HF's inverse frequencies (default / YaRN, modeling_rope_utils) recomputed in float64."""
    dim = N_ROT
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extra = 1.0 / pos_freqs
    if not yarn:
        return extra
    inter = 1.0 / (YARN_FACTOR * pos_freqs)

    def corr_dim(rot: float) -> float:
        return (dim * math.log(YARN_ORIG_CTX / (rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(corr_dim(YARN_BETA_FAST)), 0)
    high = min(math.ceil(corr_dim(YARN_BETA_SLOW)), dim - 1)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
    extra_factor = 1 - ramp
    return inter * (1 - extra_factor) + extra * extra_factor


def set_f64_rope(model: torch.nn.Module) -> None:
    table = {"main": inv_freq_f64(ROPE_BASE, False), "compress": inv_freq_f64(COMPRESS_ROPE_BASE, True)}
    for module in model.modules():
        if isinstance(module, hfm.DeepseekV4RotaryEmbedding):
            for kind, inv in table.items():
                hf = getattr(module, f"{kind}_inv_freq")
                if not torch.allclose(hf.double(), inv, rtol=1e-6, atol=0):
                    raise SystemExit(f"float64 {kind} inv_freq disagrees with HF's")
                setattr(module, f"{kind}_inv_freq", inv.clone())


@contextlib.contextmanager
def float64_everywhere():
    """HF casts to float32 in several places (RMSNorm, RoPE, HC, compressor softmax, indexer
    scorer). Inside this context those casts keep float64 tensors in float64."""
    orig_float, orig_to, orig_softmax = torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax

    def _float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else orig_float(self, *args, **kwargs)

    def _to(self, *args, **kwargs):
        if self.dtype == torch.float64:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
        return orig_to(self, *args, **kwargs)

    def _softmax(self, *args, **kwargs):
        if self.dtype == torch.float64 and kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return orig_softmax(self, *args, **kwargs)

    torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax = _float, _to, _softmax
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax = orig_float, orig_to, orig_softmax


def run_precise(model32: DeepseekV4ForCausalLM, ids: torch.Tensor, sims: bool = False) -> tuple[np.ndarray, int]:
    """Plain HF forward in float64 (with sims=True: plus the official numerics, used only to
    measure how sensitive the float32 default-mode fixture is to float rounding)."""
    model = copy.deepcopy(model32).double()
    set_f64_rope(model)
    non_f64 = []

    def check(_m, _inp, out):
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.dtype != torch.float64:
                non_f64.append(type(_m).__name__)

    handles = [m.register_forward_hook(check) for m in model.modules()]
    counter = {"raw_kv": 0, "compressed_rows": 0, "indexer_rows": 0, "indexer_q": 0}
    sim_ctx = official_numerics(counter) if sims else contextlib.nullcontext()
    with torch.no_grad(), float64_everywhere(), sim_ctx:
        logits = model(ids, use_cache=False).logits[0]
    for h in handles:
        h.remove()
    if non_f64:
        raise SystemExit(f"float64 run produced lower-precision outputs in {sorted(set(non_f64))}")
    return logits.float().numpy(), 0


# --------------------------------------------------------------------------------------------
# 3b. Default mode: HF in float32 plus the official numerics (spec §7)
# --------------------------------------------------------------------------------------------


def _ceil_log2_pow2(r: torch.Tensor) -> torch.Tensor:
    """2^ceil(log2(r)) exactly, for positive finite r."""
    m, e = torch.frexp(r)  # r = m * 2^e, m in [0.5, 1)
    e = torch.where(m == 0.5, e - 1, e)
    return torch.ldexp(torch.ones_like(r), e)


def e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """Nearest FP8 E4M3FN value, ties to even code; |v| <= 448 expected."""
    a = v.abs()
    _, ex = torch.frexp(a)
    e = torch.clamp(ex - 1, min=-6)  # exponent of the binade; below 2^-6 the subnormal step 2^-9
    step = torch.ldexp(torch.ones_like(a), e - 3)
    return torch.sign(v) * torch.round(a / step) * step


def e2m1_round(v: torch.Tensor) -> torch.Tensor:
    """Nearest FP4 E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even code; |v| <= 6 expected."""
    a = v.abs()
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0)).to(a.dtype)
    return torch.sign(v) * torch.clamp(torch.round(a / step) * step, max=6.0)


def fp8_blocks(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 round-trip in 64-blocks with power-of-two scales (spec §7.1)."""
    b = x.reshape(*x.shape[:-1], -1, 64)
    amax = torch.clamp(b.abs().amax(-1, keepdim=True), min=1e-4)
    scale = _ceil_log2_pow2(amax / 448.0)
    return (e4m3_round(torch.clamp(b / scale, -448.0, 448.0)) * scale).reshape(x.shape)


def fp4_blocks(x: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 round-trip in 32-blocks with power-of-two scales (spec §7.2)."""
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = torch.clamp(b.abs().amax(-1, keepdim=True), min=7.05e-38)
    scale = _ceil_log2_pow2(amax / 6.0)
    return (e2m1_round(torch.clamp(b / scale, -6.0, 6.0)) * scale).reshape(x.shape)


def hadamard128() -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < 128:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(128.0)


_H128 = None  # hadamard128(), set by import_hf()


def f16_round(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(x.dtype)


def sim_kv_row(x: torch.Tensor) -> torch.Tensor:
    """Raw or compressed attention row: FP8 on the non-RoPE dims, then f16 storage."""
    nope = x.shape[-1] - N_ROT
    return f16_round(torch.cat([fp8_blocks(x[..., :nope]), x[..., nope:]], dim=-1))


def sim_indexer(x: torch.Tensor) -> torch.Tensor:
    """Indexer query head or indexer row: Hadamard-128 then FP4 (rows stay in rotated basis)."""
    rotated = (x.double() @ _H128).to(x.dtype)
    return fp4_blocks(rotated)


_SRC: list[str] = []  # lines of HF's modeling_deepseek_v4.py, set by import_hf()


def _lines_with(text: str, count: int) -> set[int]:
    found = {i + 1 for i, line in enumerate(_SRC) if text in line}
    if len(found) != count:
        raise SystemExit(f"expected {count} HF call sites for {text!r}, found {sorted(found)}")
    return found


# The HF call sites of apply_rotary_pos_emb whose results get the official roundings
# (line-number sets, filled by import_hf()).
_RAW_KV: set[int] = set()
_COMPRESSED: set[int] = set()
_INDEXER_Q: set[int] = set()


def import_hf() -> None:
    """Imports torch and transformers and computes the module constants that need them."""
    global torch, transformers, hfm, DeepseekV4Config, DeepseekV4ForCausalLM
    global _H128, _SRC, _RAW_KV, _COMPRESSED, _INDEXER_Q
    import torch
    import transformers
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hfm

    _H128 = hadamard128()
    _SRC = Path(hfm.__file__).read_text().splitlines()
    _RAW_KV = _lines_with("kv = apply_rotary_pos_emb(kv, cos, sin)", 1)
    _COMPRESSED = _lines_with("compressed = apply_rotary_pos_emb(compressed.unsqueeze(1), cos, sin)", 3)
    _INDEXER_Q = _lines_with("q = apply_rotary_pos_emb(q, cos_q, sin_q)", 1)


@contextlib.contextmanager
def official_numerics(counter: dict[str, int]):
    """Monkeypatches HF's apply_rotary_pos_emb so that, at the four call sites that produce
    stored rows / indexer queries, the result is rounded as the official code does."""
    orig = hfm.apply_rotary_pos_emb

    def patched(x, cos, sin, unsqueeze_dim=1):
        out = orig(x, cos, sin, unsqueeze_dim)
        frame = sys._getframe(1)
        if frame.f_code.co_filename != hfm.__file__:
            return out
        line = frame.f_lineno
        if line in _RAW_KV:
            counter["raw_kv"] += 1
            return sim_kv_row(out)
        if line in _COMPRESSED:
            if isinstance(frame.f_locals.get("self"), hfm.DeepseekV4Indexer):
                counter["indexer_rows"] += 1
                return f16_round(sim_indexer(out))
            counter["compressed_rows"] += 1
            return sim_kv_row(out)
        if line in _INDEXER_Q:
            counter["indexer_q"] += 1
            return sim_indexer(out)
        return out

    hfm.apply_rotary_pos_emb = patched
    try:
        yield
    finally:
        hfm.apply_rotary_pos_emb = orig


def self_test_roundings() -> None:
    """Our E4M3 rounding equals torch's float8_e4m3fn cast (RNE) on random values and ties."""
    g = torch.Generator().manual_seed(SEED)
    v = torch.randn(200000, generator=g) * torch.exp2(torch.randint(-12, 9, (200000,), generator=g).float())
    v = torch.clamp(v, -448, 448)
    grid = torch.arange(0, 256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties
    v = torch.cat([v, mids[mids.abs() <= 448], -mids[mids.abs() <= 448]])
    ref = v.to(torch.float8_e4m3fn).float()
    if not torch.equal(e4m3_round(v), ref):
        raise SystemExit("e4m3_round disagrees with torch.float8_e4m3fn")
    fp4 = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.9, 0.1, -0.75, -5.0])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 0.0, -1.0, -4.0])
    if not torch.equal(e2m1_round(fp4), want):
        raise SystemExit("e2m1_round tie rule wrong")


# --------------------------------------------------------------------------------------------
# 4. Checks
# --------------------------------------------------------------------------------------------


def run_with_probes(model: DeepseekV4ForCausalLM, ids: torch.Tensor) -> tuple[np.ndarray, dict]:
    """Stateless float32 forward, recording indexer selections/scores and router choices."""
    probes: dict = {"topk": {}, "scores": {}, "experts": {}}
    handles = []
    for il, layer in enumerate(model.model.layers):
        comp = layer.self_attn.compressor
        if isinstance(comp, hfm.DeepseekV4CSACompressor):
            handles.append(comp.indexer.register_forward_hook(lambda m, i, o, il=il: probes["topk"].__setitem__(il, o[0])))
            handles.append(
                comp.indexer.scorer.register_forward_hook(lambda m, i, o, il=il: probes["scores"].__setitem__(il, o[0]))
            )
        handles.append(layer.mlp.gate.register_forward_hook(lambda m, i, o, il=il: probes["experts"].__setitem__(il, o[2])))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0].numpy()
    for h in handles:
        h.remove()
    return logits, probes


def indexer_report(probes: dict) -> dict:
    rep = {}
    for il, topk in probes["topk"].items():
        scores = probes["scores"][il]  # [S, T]
        s_len, t_len = scores.shape
        selecting, not_recent, min_gap = 0, 0, math.inf
        for t in range(s_len):
            n_causal = (t + 1) // 4
            if n_causal <= IDX_TOPK:
                continue
            selecting += 1
            chosen = set(int(x) for x in topk[t] if x >= 0)
            if chosen != set(range(n_causal - IDX_TOPK, n_causal)):
                not_recent += 1
            row = torch.sort(scores[t, :n_causal].double(), descending=True).values
            min_gap = min(min_gap, float(row[IDX_TOPK - 1] - row[IDX_TOPK]))
        rep[str(il)] = {
            "compressed_rows": t_len,
            "queries_where_topk_selects": selecting,
            "queries": s_len,
            "selections_not_just_most_recent": not_recent,
            "min_score_gap_at_kth": min_gap,
            "exact_zero_scores": int((scores == 0).sum()),
        }
    return rep


def router_report(probes: dict) -> dict:
    return {
        str(il): np.bincount(idx.reshape(-1).numpy(), minlength=N_EXPERT).tolist()
        for il, idx in probes["experts"].items()
    }


def topk_changes(a: dict, b: dict) -> dict:
    out = {}
    for il in a["topk"]:
        sa, sb = a["topk"][il], b["topk"][il]
        out[str(il)] = sum(
            1 for t in range(sa.shape[0]) if set(sa[t].tolist()) != set(sb[t].tolist())
        )
    return out


def _gap(a: np.ndarray, ref: np.ndarray) -> dict:
    per_pos = np.abs(a - ref).max(1)
    return {
        "median_pos_maxabs": float(np.median(per_pos)),
        "p90_pos_maxabs": float(np.percentile(per_pos, 90)),
        "max_abs": float(per_pos.max()),
        "rms": float(np.sqrt(((a - ref) ** 2).mean())),
    }


def ablations(model: DeepseekV4ForCausalLM, ids: torch.Tensor, default64: np.ndarray) -> dict:
    """Distance to the float64 default-mode logits for float32 runs with one simulation dropped:
    numbers for choosing a gate that f32 noise passes and a dropped simulation fails."""
    global sim_kv_row, sim_indexer
    keep = (sim_kv_row, sim_indexer)
    nope = HEAD_DIM - N_ROT

    def fp8_only(x):
        return torch.cat([fp8_blocks(x[..., :nope]), x[..., nope:]], dim=-1)

    variants = {
        "full_official_numerics": keep,
        "drop_fp8": (f16_round, keep[1]),
        "drop_f16_kv_rows": (fp8_only, keep[1]),
        "drop_fp4_and_hadamard": (keep[0], lambda x: x),
        "drop_hadamard_only": (keep[0], fp4_blocks),
        "no_simulation_at_all": (lambda x: x, lambda x: x),
    }
    out = {}
    try:
        for name, (kv_fn, idx_fn) in variants.items():
            sim_kv_row, sim_indexer = kv_fn, idx_fn
            counter = {"raw_kv": 0, "compressed_rows": 0, "indexer_rows": 0, "indexer_q": 0}
            with official_numerics(counter):
                logits, _ = run_with_probes(model, ids)
            out[name] = _gap(logits, default64)
    finally:
        sim_kv_row, sim_indexer = keep
    return out


def cache_check(model: DeepseekV4ForCausalLM, ids: torch.Tensor, stateless: np.ndarray) -> float:
    """HF prefill (PREFILL_TOKENS) with cache, then one-token decode steps, vs stateless."""
    rows = []
    with torch.no_grad():
        out = model(ids[:, :PREFILL_TOKENS], use_cache=True)
        cache = out.cache
        rows.append(out.logits[0])
        for t in range(PREFILL_TOKENS, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            rows.append(out.logits[0])
    decoded = torch.cat(rows, 0).numpy()
    return float(np.abs(decoded - stateless).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/model"))
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument(
        "--gguf-only",
        action="store_true",
        help="write only model.gguf and tokens.json per recipe (numpy + gguf-py; no torch/transformers)",
    )
    args = ap.parse_args()
    ids_list = np.random.default_rng(SEED + 1).integers(0, VOCAB, size=N_TOKENS).tolist()
    if args.gguf_only:
        print(f"numpy {np.__version__}, gguf {version('gguf')}")
        for recipe in args.recipes:
            out_dir = args.out / recipe
            out_dir.mkdir(parents=True, exist_ok=True)
            write_gguf(out_dir / "model.gguf", recipe)
            (out_dir / "tokens.json").write_text(json.dumps(ids_list) + "\n")
            print(f"wrote {out_dir / 'model.gguf'}")
        return

    import_hf()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, gguf {version('gguf')}")
    self_test_roundings()

    ids = torch.tensor([ids_list], dtype=torch.long)

    for recipe in args.recipes:
        out_dir = args.out / recipe
        out_dir.mkdir(parents=True, exist_ok=True)
        gguf_path = out_dir / "model.gguf"
        write_gguf(gguf_path, recipe)
        weights = read_gguf(gguf_path, recipe)
        model = build_model(to_hf_state_dict(weights))

        plain32, probes_plain = run_with_probes(model, ids)
        precise, _ = run_precise(model, ids)
        counter = {"raw_kv": 0, "compressed_rows": 0, "indexer_rows": 0, "indexer_q": 0}
        with official_numerics(counter):
            default, probes_default = run_with_probes(model, ids)
        default64, _ = run_precise(model, ids, sims=True)
        cache_diff = cache_check(model, ids, plain32)

        (out_dir / "tokens.json").write_text(json.dumps(ids_list) + "\n")
        np.save(out_dir / "logits_precise.npy", precise.astype(np.float32))
        np.save(out_dir / "logits_default.npy", default.astype(np.float32))
        report = {
            "recipe": recipe,
            "seed": SEED,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": version("gguf")},
            "logit_std_precise": float(precise.std()),
            "max_abs_precise_f64_vs_hf_f32": float(np.abs(precise - plain32).max()),
            "max_abs_default_vs_precise": float(np.abs(default - precise).max()),
            "default_f32_vs_default_f64": _gap(default, default64),
            "argmax_agree_default_vs_precise": float((default.argmax(1) == precise.argmax(1)).mean()),
            "max_abs_cached_decode_vs_stateless_f32": cache_diff,
            "official_numerics_hook_calls": counter,
            "indexer_plain": indexer_report(probes_plain),
            "indexer_selection_changed_by_official_numerics": topk_changes(probes_plain, probes_default),
            "gate_design_f32_runs_vs_default_f64": ablations(model, ids, default64),
            "router_expert_usage_plain": router_report(probes_plain),
        }
        (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

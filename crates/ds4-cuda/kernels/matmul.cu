// Weight matrix × activation products (spec/model.md §4) in three forms:
//
// * mm_f32: any type, any number of rows, f32 activations, weights dequantised per element
//   exactly as the CPU reference does (precise mode). A block owns one weight row and MM_TOK
//   activation rows; threads stride over the columns; f32 accumulation, block reduction.
// * the fast matrix-vector kernels (one activation row, decode): the activation is quantised
//   once per launch into three int8 stages per 32 values (quant_q8: near-f32 accuracy) and
//   dotted with dp4a against the integer weights; F16/F32 weights use f32 activations.
//   A row belongs to one warp, or to `kspl` warps that split its chunks; a block is 8 warps.
//   Variants: `mv_*` (plain or grouped rows), `mvp_q8_0` (Q8_0 of many rows: resident warps
//   that pipeline their rows), `gu_*` (gate and up of one matrix or of each routed expert,
//   with the clamped SwiGLU and the router weight: spec §2.5), `dn_*` (down of every routed
//   expert, summed).
// * deq_f16 / to_f16: dequantise weights and convert activations to f16 pairs (hi, lo with
//   hi + lo ≈ x to about 2^-22) for the split cuBLAS GEMMs of prefill chunks.
//
// Weight layouts (struct DW in common.cuh): Q8_0 and IQ2_XXS are repacked into a quant plane
// and an f16 scale plane at upload; every other type keeps its GGUF blocks. The lookup tables
// `iq2xxs_grid`, `ksigns_iq2xs`, `iq2xs_grid`, `iq3xxs_grid` and `kvalues_mxfp4` are prepended
// by the host from ds4::quant (ggml's tables, verified against gguf-py).
//
// BF16, Q3_K, Q5_K, Q6_K, IQ2_XS, IQ3_XXS and MXFP4 have no integer kernel: their fast
// matrix-vector kernels (`mv_deq`, `gu_deq`, `dn_deq`) dequantise 8 weights at a time (deq8,
// the CPU's formulas) and dot them with the f32 activation.

#define MM_TOK 8
#define MM_THREADS 256

__device__ __forceinline__ void q4k_scale_min(const u8* s, int pair, int* sc, int* m) {
    if (pair < 4) {
        *sc = s[pair] & 63;
        *m = s[pair + 4] & 63;
    } else {
        *sc = (s[pair + 4] & 15) | ((s[pair - 4] >> 6) << 4);
        *m = (s[pair + 4] >> 4) | ((s[pair] >> 6) << 4);
    }
}


// ---- per-element helpers of the block types without a repacked plane ------------------------

// 2^(e − 128) (ggml's GGML_E8M0_TO_FP32_HALF): the MXFP4 scale over the doubled E2M1 values.
__device__ __forceinline__ float e8m0_half(u32 e) {
    u32 bits = e < 2 ? (0x00200000u << e) : ((e - 1) << 23);
    return __int_as_float((int)bits);
}

// Q3_K scale of sub-block `is` (0..16), unbiased (−32..31); `s` is the block's 12 scale bytes.
__device__ __forceinline__ int q3k_scale(const u8* s, int is) {
    int lo = (s[is & 7] >> (4 * (is >> 3))) & 15;
    int hi = (s[8 + (is & 3)] >> (2 * (is >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

__device__ __forceinline__ float bf2f(u16 h) { return __int_as_float((int)((u32)h << 16)); }

// Element c of global row `grow` of w (spec §4 formulas, in the CPU reference's order).
__device__ float deq(const DW& w, i64 grow, int c) {
    switch (w.ty) {
    case TY_F32: return __int_as_float((int)ld_u32(w.a + (grow * w.cols + c) * 4));
    case TY_F16: return h2f(ld_u16(w.a + (grow * w.cols + c) * 2));
    case TY_Q8_0: {
        float d = h2f(ld_u16(w.b + (grow * (w.cols / 32) + c / 32) * 2));
        return (float)(i8)w.a[grow * w.cols + c] * d;
    }
    case TY_Q2_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q2_K, w.cols) + 84 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        int q = (b[16 + 32 * n + l] >> (2 * j)) & 3;
        int sc = b[8 * n + 2 * j + (l >= 16 ? 1 : 0)];
        float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
        float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
        return dl * (float)q - ml;
    }
    case TY_Q4_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q4_K, w.cols) + 144 * (c >> 8);
        const u8* s = b + 4;
        int i = c & 255, chunk = i >> 6, wi = i & 63;
        int pair = 2 * chunk + (wi >= 32 ? 1 : 0);
        int byte = b[16 + 32 * chunk + (wi & 31)];
        int q = wi >= 32 ? (byte >> 4) : (byte & 15);
        int sc, m;
        if (pair < 4) {
            sc = s[pair] & 63;
            m = s[pair + 4] & 63;
        } else {
            sc = (s[pair + 4] & 15) | ((s[pair - 4] >> 6) << 4);
            m = (s[pair + 4] >> 4) | ((s[pair] >> 6) << 4);
        }
        float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2));
        float dl = d * (float)sc, ml = dmin * (float)m;
        return dl * (float)q - ml;
    }
    case TY_IQ2_XXS: {
        i64 blk = grow * (w.cols / 256) + (c >> 8);
        const u8* q = w.a + blk * 64;
        int i = c & 255, ib = i >> 5, k = (i & 31) >> 3, j = i & 7;
        u32 a0 = ld_u32(q + 8 * ib), a1 = ld_u32(q + 8 * ib + 4);
        u32 gi = (a0 >> (8 * k)) & 255u;
        float g = (float)((iq2xxs_grid[gi] >> (8 * j)) & 255ull);
        u32 signs = ksigns_iq2xs[(a1 >> (7 * k)) & 127u];
        float d = h2f(ld_u16(w.b + blk * 2));
        float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
        float v = db * g;
        return (signs >> j) & 1u ? -v : v;
    }
    case TY_IQ2C: {
        u32 code = (w.a[grow * (w.cols / 2) + c / 2] >> (4 * (c & 1))) & 15u;
        float db = iq2c_scale(w, grow * (w.cols / 256) + (c >> 8), (c & 255) >> 5);
        return db * (float)(i8)iq2c_4(code);  // db·(−g) is −(db·g) exactly
    }
    case TY_BF16: return bf2f(ld_u16(w.a + (grow * w.cols + c) * 2));
    case TY_Q3_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q3_K, w.cols) + 110 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        int is = 8 * n + 2 * j + (l >= 16 ? 1 : 0);
        int q = (b[32 + 32 * n + l] >> (2 * j)) & 3;
        int h = (b[l] >> (4 * n + j)) & 1;
        float dl = h2f(ld_u16(b + 108)) * (float)q3k_scale(b + 96, is);
        return dl * (float)(q - (h ? 0 : 4));
    }
    case TY_Q5_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q5_K, w.cols) + 176 * (c >> 8);
        int i = c & 255, j = i >> 5, l = i & 31;
        int sc, m;
        q4k_scale_min(b + 4, j, &sc, &m);
        int q = ((b[48 + 32 * (j >> 1) + l] >> (4 * (j & 1))) & 15) | (((b[16 + l] >> j) & 1) << 4);
        float dl = h2f(ld_u16(b)) * (float)sc, ml = h2f(ld_u16(b + 2)) * (float)m;
        return dl * (float)q - ml;
    }
    case TY_Q6_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q6_K, w.cols) + 210 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        int is = 8 * n + 2 * j + (l >= 16 ? 1 : 0);
        int lo = (b[64 * n + 32 * (j & 1) + l] >> (4 * (j >> 1))) & 15;
        int hi = (b[128 + 32 * n + l] >> (2 * j)) & 3;
        float dl = h2f(ld_u16(b + 208)) * (float)(i8)b[192 + is];
        return dl * (float)((lo | (hi << 4)) - 32);
    }
    case TY_IQ2_XS: {
        const u8* b = w.a + grow * plane_row_bytes(TY_IQ2_XS, w.cols) + 74 * (c >> 8);
        int i = c & 255, g = i >> 3, j = i & 7, h = i >> 4;
        u32 v = ld_u16(b + 2 + 2 * g);
        float gv = (float)((iq2xs_grid[v & 511u] >> (8 * j)) & 255ull);
        u32 signs = ksigns_iq2xs[v >> 9];
        int s = (b[66 + (h >> 1)] >> (4 * (h & 1))) & 15;
        float db = h2f(ld_u16(b)) * (0.5f + (float)s) * 0.25f;
        float r = db * gv;
        return (signs >> j) & 1u ? -r : r;
    }
    case TY_IQ3_XXS: {
        const u8* b = w.a + grow * plane_row_bytes(TY_IQ3_XXS, w.cols) + 98 * (c >> 8);
        int i = c & 255, ib = i >> 5, k = (i & 31) >> 3, j = i & 7;
        u32 a = ld_u32(b + 66 + 4 * ib);
        u32 gi = b[2 + 8 * ib + 2 * k + (j >> 2)];
        float gv = (float)((iq3xxs_grid[gi] >> (8 * (j & 3))) & 255u);
        u32 signs = ksigns_iq2xs[(a >> (7 * k)) & 127u];
        float db = h2f(ld_u16(b)) * (0.5f + (float)(a >> 28)) * 0.5f;
        float r = db * gv;
        return (signs >> j) & 1u ? -r : r;
    }
    case TY_MXFP4: {
        const u8* b = w.a + grow * plane_row_bytes(TY_MXFP4, w.cols) + 17 * (c >> 5);
        int i = c & 31;
        int q = b[1 + (i & 15)];
        int code = i < 16 ? (q & 15) : (q >> 4);
        return e8m0_half(b[0]) * (float)kvalues_mxfp4[code];
    }
    }
    return 0.0f;
}

// y[t][r] (+)= Σ_c W[mat][r0 + r][c]·x[t][xoff + c], r < rows, t < n_tok. Grid (rows,
// ceil(n_tok / MM_TOK)); MM_THREADS threads. Rows of x are `x_stride` apart, rows of y
// `y_stride` apart; the weight matrix is `mat` of the stack.
extern "C" __global__ void mm_f32(DW w, int mat, int r0, int rows, const float* x, int x_stride,
                                  int xoff, int n_tok, float* y, int y_stride, int yoff) {
    grid_dep_sync();
    int r = blockIdx.x;
    int t0 = blockIdx.y * MM_TOK;
    if (r >= rows) return;
    i64 grow = (i64)mat * w.rows + r0 + r;
    float acc[MM_TOK];
#pragma unroll
    for (int t = 0; t < MM_TOK; t++) acc[t] = 0.0f;
    int nt = min(MM_TOK, n_tok - t0);
    for (int c = threadIdx.x; c < w.cols; c += MM_THREADS) {
        float wv = deq(w, grow, c);
#pragma unroll
        for (int t = 0; t < MM_TOK; t++) {
            if (t < nt) acc[t] += wv * x[(i64)(t0 + t) * x_stride + xoff + c];
        }
    }
    // One barrier, then MM_TOK threads each sum the block's partials (a precise-mode kernel:
    // simple beats fast here).
    __shared__ float red[MM_THREADS][MM_TOK];
#pragma unroll
    for (int t = 0; t < MM_TOK; t++) red[threadIdx.x][t] = acc[t];
    __syncthreads();
    if (threadIdx.x < MM_TOK && (int)threadIdx.x < nt) {
        float s = 0.0f;
        for (int k = 0; k < MM_THREADS; k++) s += red[k][threadIdx.x];
        y[(i64)(t0 + threadIdx.x) * y_stride + yoff + r] = s;
    }
}

// ---- activation preparation (shared memory) ----------------------------------------------

// Activations of the fast kernels are three int8 stages per 32 values (quant_q8): x ≈
// d·(q1 + q2/254 + q3/254²), each stage quantising the previous one's residual, so the integer
// dot products are exact to about 2^-24 of the block's largest value — near-f32 accuracy at
// dp4a speed (the storage simulations of the default precision amplify any larger error).
#define Q8_STAGE 254.0f

// Activation stages the IQ2_XXS, Q2_K and Q4_K row dots use (the routed experts' types): 2,
// exact to ~2^-16 of a block's largest value (still far finer than the 2-bit weights they
// multiply; llama.cpp's 8-bit activations are one stage), or 3 (DS4_CUDA_EXPERT_STAGES=3 at
// compile time: ~2^-24). With IQ2_XXS as 4-bit codes the dp4a are most of what these dots
// execute: on the H200 two stages took dn_q2_k from 27.1 to 21.7 µs a launch and gu_iq2c from
// 25.2 to 24.5; decode at 2k was 107.3 against 100.6 tok/s in one call and level (101.4 /
// 101.5) in the next (docs/perf.md, 2026-12-03). The q4 fixture's argmax agreement with the
// CPU is 0.9923 against 0.9962 with three, above the 0.99 gate.
#ifndef EXPERT_STAGES
#define EXPERT_STAGES 2
#endif

// The three stages' integer sums folded into one float.
__device__ __forceinline__ float fold3(int s1, int s2, int s3) {
    return (float)s1 + (float)s2 * (1.0f / Q8_STAGE) + (float)s3 * (1.0f / (Q8_STAGE * Q8_STAGE));
}

// ---- per-type row dots (one warp; each lane returns its partial sum, which the caller
// reduces with warp_sum — once per row, after all of a row's dots, so that the loads of
// several dots can be in flight together) -------------------------------------------------

__device__ __forceinline__ int ld_i32s(const i8* p) { return *(const int*)p; }

// The IQ2_XXS grid, copied into shared memory by the kernels that need it (the sign table is
// computed: ksigns below).
struct IqTab {
    u64 grid[256];
};

// The three stages' integer dot of one 16-weight Q8_0 chunk `wv` with its activation `xv`,
// folded (before the weight and activation scales).
__device__ __forceinline__ float q8_0_chunk(int4 wv, const int4* xv) {
    int st[3];
#pragma unroll
    for (int k = 0; k < 3; k++) {
        int s = __dp4a(wv.x, xv[k].x, 0);
        s = __dp4a(wv.y, xv[k].y, s);
        s = __dp4a(wv.z, xv[k].z, s);
        st[k] = __dp4a(wv.w, xv[k].w, s);
    }
    return fold3(st[0], st[1], st[2]);
}

// One 16-weight chunk `ci` of Q8_0 row `grow` against its activation chunk `xv` (three stages)
// whose block scale is `dx`.
__device__ __forceinline__ float q8_0_part(const DW& w, i64 grow, int ci, const int4* xv, float dx,
                                           const IqTab* tab) {
    int4 wv = *(const int4*)(w.a + grow * w.cols + ci * 16);
    const u8* ds = w.b + grow * (w.cols / 32) * 2;
    return q8_0_chunk(wv, xv) * (h2f(ld_u16(ds + 2 * (ci >> 1))) * dx);
}

__device__ __forceinline__ void q8_0_x(const i8* xq, int cols, int ci, int4* xv) {
#pragma unroll
    for (int k = 0; k < 3; k++) xv[k] = *(const int4*)(xq + k * cols + ci * 16);
}

// Chunks a lane of a one-row dot loads before it uses any: their weight loads are issued
// together. (An `unroll 8` loop left a row of 1024 Q8_0 columns — two chunks a lane — to its
// one-at-a-time remainder, so each chunk waited a full memory latency: q_b ran at 1.7 TB/s.)
#ifndef DOT_BATCH
#define DOT_BATCH 4
#endif

__device__ __forceinline__ float dot_q8_0(const DW& w, i64 grow, const i8* xq, const float* xd, const float* xf,
                         const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31, nch = w.cols / 16;
    const u8* row = w.a + grow * w.cols;
    const u8* ds = w.b + grow * (w.cols / 32) * 2;
    float acc = 0.0f;
    for (int c0 = lane + l0; c0 < nch; c0 += DOT_BATCH * ls) {
        int4 wv[DOT_BATCH];
        u16 sc[DOT_BATCH];
#pragma unroll
        for (int j = 0; j < DOT_BATCH; j++) {
            int ci = c0 + j * ls;
            if (ci < nch) {
                wv[j] = *(const int4*)(row + ci * 16);
                sc[j] = ld_u16(ds + 2 * (ci >> 1));
            }
        }
#pragma unroll
        for (int j = 0; j < DOT_BATCH; j++) {
            int ci = c0 + j * ls;
            if (ci < nch) {
                int4 xv[3];
                q8_0_x(xq, w.cols, ci, xv);
                acc += q8_0_chunk(wv[j], xv) * (h2f(sc[j]) * xd[ci >> 1]);
            }
        }
    }
    return acc;
}

__device__ __forceinline__ float dot_f16(const DW& w, i64 grow, const i8* xq, const float* xd, const float* xf,
                         const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31, nch = w.cols / 8;
    const u8* row = w.a + grow * w.cols * 2;
    float acc = 0.0f;
    for (int c0 = lane + l0; c0 < nch; c0 += DOT_BATCH * ls) {
        int4 wv[DOT_BATCH];
#pragma unroll
        for (int j = 0; j < DOT_BATCH; j++) {
            int ci = c0 + j * ls;
            if (ci < nch) wv[j] = *(const int4*)(row + ci * 16);
        }
#pragma unroll
        for (int j = 0; j < DOT_BATCH; j++) {
            int ci = c0 + j * ls;
            if (ci < nch) {
                float4 x0 = *(const float4*)(xf + ci * 8), x1 = *(const float4*)(xf + ci * 8 + 4);
                float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                u32 u[4] = {(u32)wv[j].x, (u32)wv[j].y, (u32)wv[j].z, (u32)wv[j].w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    acc += h2f((u16)(u[k] & 0xffffu)) * xs[2 * k];
                    acc += h2f((u16)(u[k] >> 16)) * xs[2 * k + 1];
                }
            }
        }
    }
    return acc;
}

__device__ __forceinline__ float dot_f32(const DW& w, i64 grow, const i8* xq, const float* xd, const float* xf,
                         const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31;
    const float* row = (const float*)(w.a + grow * w.cols * 4);
    float acc = 0.0f;
    for (int c = lane + l0; c < w.cols; c += ls) acc += row[c] * xf[c];
    return acc;
}

// Signed int8×4 of grid bytes `g` (each < 128) with sign bits `s` (bit j set: byte j
// negative): the sign bits spread to byte masks m (0xff or 0), then (g ^ m) − m per byte,
// which cannot borrow across bytes because every g byte is small and positive.
__device__ __forceinline__ int signed4(u32 g, u32 s) {
    u32 bits = ((s & 15u) * 0x00204081u) & 0x01010101u;  // bit j → bit 0 of byte j
    u32 m = bits * 0xffu;
    return (int)((g ^ m) + bits);  // two's complement: −g = (g ^ 0xff) + 1 per byte
}

// ksigns_iq2xs[i] without the table: the 7 stored sign bits and an eighth that makes the count
// of negative signs even (the table's definition; ksigns_formula_equals_the_table checks it
// against ds4::quant's copy of ggml's table). A popcount instead of a shared-memory lookup.
__device__ __forceinline__ u32 ksigns(u32 i) { return i | ((u32)(__popc(i) & 1) << 7); }

// Half `u` of an IQ2_XXS sub-block (weights 16u..16u+15 of row `grow`: grid entries 2h, 2h+1
// of sub-block u >> 1, h = u & 1) against its activation chunk `xv` (one int4 per stage) whose
// scale is `dx`. Consecutive lanes own consecutive halves, so their activation loads are
// consecutive 16-byte chunks (a lane per 32-weight sub-block made them span 1 KB of the warp);
// the two lanes of a sub-block read the same 8 header bytes.
// The routed experts' integer dot of 16 signed int8 weights `wq` (four an int) with their
// activation chunk `xv` (EXPERT_STAGES stages), folded (before the weight and activation scales).
__device__ __forceinline__ float expert_chunk(const int* wq, const int4* xv) {
    int st[3] = {0, 0, 0};
#pragma unroll
    for (int p = 0; p < EXPERT_STAGES; p++) {
        int s = __dp4a(wq[0], xv[p].x, 0);
        s = __dp4a(wq[1], xv[p].y, s);
        s = __dp4a(wq[2], xv[p].z, s);
        st[p] = __dp4a(wq[3], xv[p].w, s);
    }
    return fold3(st[0], st[1], st[2]);
}

__device__ __forceinline__ float iq2_xxs_part(const DW& w, i64 grow, int u, const int4* xv,
                                              float dx, const IqTab* tab) {
    int nb = w.cols / 256;
    int si = u >> 1, h = u & 1;
    i64 blk = grow * nb + (si >> 3);
    uint2 v = *(const uint2*)(w.a + blk * 64 + (si & 7) * 8);
    u32 a0 = v.x, a1 = v.y;
    float d = h2f(ld_u16(w.b + blk * 2));
    float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
    int wq[4];
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        int k = 2 * h + kk;
        u64 g = tab->grid[(a0 >> (8 * k)) & 255u];
        u32 sg = ksigns((a1 >> (7 * k)) & 127u);
        wq[2 * kk] = signed4((u32)g, sg);
        wq[2 * kk + 1] = signed4((u32)(g >> 32), sg >> 4);
    }
    return expert_chunk(wq, xv) * (db * dx);
}

__device__ __forceinline__ void iq2_xxs_x(const i8* xq, int cols, int u, int4* xv) {
#pragma unroll
    for (int p = 0; p < EXPERT_STAGES; p++) xv[p] = *(const int4*)(xq + p * cols + u * 16);
}

// Half `u` of a TY_IQ2C sub-block, as iq2_xxs_part: the 16 codes are one 8-byte load and four
// byte permutes make them int8 (in place of two grid lookups, the sign bits' parity and four
// sign expansions); the sub-block scale comes from the block's (d, scales) pair in plane b. The
// weights and the float operations are iq2_xxs_part's, so the sums are bit for bit the same.
__device__ __forceinline__ float iq2c_part(const DW& w, i64 grow, int u, const int4* xv, float dx,
                                           const IqTab* tab) {
    uint2 v = *(const uint2*)(w.a + grow * (w.cols / 2) + u * 8);
    float db = iq2c_scale(w, grow * (w.cols / 256) + (u >> 4), (u >> 1) & 7);
    int wq[4] = {iq2c_4(v.x), iq2c_4(v.x >> 16), iq2c_4(v.y), iq2c_4(v.y >> 16)};
    return expert_chunk(wq, xv) * (db * dx);
}

// The one-row dot of the types whose dot is a sum of 16-weight parts (`PART`) with
// IQ2_XXS's activation chunks.
#define DOT16(NAME, PART)                                                                     \
    __device__ __forceinline__ float NAME(const DW& w, i64 grow, const i8* xq, const float* xd, \
                                          const float* xf, const IqTab* tab, int l0, int ls) { \
        int lane = threadIdx.x & 31;                                                          \
        float acc = 0.0f;                                                                     \
        _Pragma("unroll 4")                                                                   \
        for (int u = lane + l0; u < w.cols / 16; u += ls) {                                   \
            int4 xv[3];                                                                       \
            iq2_xxs_x(xq, w.cols, u, xv);                                                     \
            acc += PART(w, grow, u, xv, xd[u >> 1], tab);                                     \
        }                                                                                     \
        return acc;                                                                           \
    }
DOT16(dot_iq2_xxs, iq2_xxs_part)
DOT16(dot_iq2c, iq2c_part)

// Gate and up rows `grow` of two matrices of one shape against one activation, for the types
// whose dot is a sum of 16-weight parts (`PART`, activation chunk loaded by `XLOAD`): each
// chunk is loaded once for both matrices; each sum is the one-row dot's, in its order.
#define DOT2_FUSED(NAME, XLOAD, PART)                                                         \
    __device__ __forceinline__ void NAME(const DW& g, const DW& u, i64 grow, const i8* xq,   \
                                         const float* xd, const float* xf, const IqTab* tab,  \
                                         int l0, int ls, float* gv, float* uv) {              \
        int lane = threadIdx.x & 31;                                                          \
        float ga = 0.0f, ua = 0.0f;                                                           \
        _Pragma("unroll 4")                                                                   \
        for (int c = lane + l0; c < g.cols / 16; c += ls) {                                   \
            int4 xv[3];                                                                       \
            XLOAD(xq, g.cols, c, xv);                                                         \
            float dx = xd[c >> 1];                                                            \
            ga += PART(g, grow, c, xv, dx, tab);                                              \
            ua += PART(u, grow, c, xv, dx, tab);                                              \
        }                                                                                     \
        *gv = ga;                                                                             \
        *uv = ua;                                                                             \
    }
DOT2_FUSED(dot2_q8_0, q8_0_x, q8_0_part)
DOT2_FUSED(dot2_iq2_xxs, iq2_xxs_x, iq2_xxs_part)
DOT2_FUSED(dot2_iq2c, iq2_xxs_x, iq2c_part)

// The K-quant form of one 16-weight group u (Q2_K, Q4_K): d·sc·Σ q·x − dmin·m·Σ x over the
// activation chunk 16u..16u+15 (three stages; the group's unsigned quants `wq`, four per int),
// before the chunk's activation scale.
__device__ __forceinline__ float kquant16_part(const int* wq, const i8* xq, int cols, int u, int sc,
                                               int m, float d, float dmin) {
    int sq[3] = {0, 0, 0}, sm[3] = {0, 0, 0};
#pragma unroll
    for (int p = 0; p < EXPERT_STAGES; p++) {
        int4 xv = *(const int4*)(xq + p * cols + 16 * u);
        int s = __dp4a(wq[0], xv.x, 0);
        s = __dp4a(wq[1], xv.y, s);
        s = __dp4a(wq[2], xv.z, s);
        s = __dp4a(wq[3], xv.w, s);
        int xs = __dp4a(0x01010101, xv.x, 0);
        xs = __dp4a(0x01010101, xv.y, xs);
        xs = __dp4a(0x01010101, xv.z, xs);
        xs = __dp4a(0x01010101, xv.w, xs);
        sq[p] = sc * s;
        sm[p] = m * xs;
    }
    return d * fold3(sq[0], sq[1], sq[2]) - dmin * fold3(sm[0], sm[1], sm[2]);
}

// Q2_K, one 16-weight sub-block u (weights 16u..16u+15 of the row; sub-block u & 15 of block
// u >> 4, whose quants are bits 2j of bytes 32n + 16h .. +15 for u & 15 = 8n + 2j + h) per lane
// and step. Consecutive lanes own consecutive sub-blocks, so their activation loads are
// consecutive 16-byte chunks and the lanes of one block read the same 64 quant bytes (a lane
// per 64-weight quarter made each activation load span 2 KB of the warp, 16 L1 wavefronts).
// Sub-block u of a Q2_K row (as above): its 16 two-bit quants, four a byte-lane int in `wq`,
// its scale byte (scale low, min high nibble) and the block's d and dmin.
__device__ __forceinline__ void q2_k_group(const u8* row, int u, int* wq, int* sc, float* d, float* dmin) {
    const u8* b = row + (u >> 4) * 84;
    int is = u & 15, n = is >> 3, j = (is >> 1) & 3, h = is & 1;
    u32 dd = *(const u32*)(b + 80);
    *d = h2f((u16)(dd & 0xffffu));
    *dmin = h2f((u16)(dd >> 16));
    *sc = b[is];
    // Q2_K blocks are 84 bytes: only 4-byte aligned.
    const u32* q32 = (const u32*)(b + 16 + 32 * n + 16 * h);
#pragma unroll
    for (int c = 0; c < 4; c++) wq[c] = (int)((q32[c] >> (2 * j)) & 0x03030303u);
}

__device__ __forceinline__ float dot_q2_k(const DW& w, i64 grow, const i8* xq, const float* xd, const float* xf,
                         const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31;
    int nb = w.cols / 256;
    const u8* row = w.a + grow * plane_row_bytes(TY_Q2_K, w.cols);
    float acc = 0.0f;
#pragma unroll 4
    for (int u = lane + l0; u < nb * 16; u += ls) {
        int wq[4], sc;
        float d, dmin;
        q2_k_group(row, u, wq, &sc, &d, &dmin);
        acc += kquant16_part(wq, xq, w.cols, u, sc & 15, sc >> 4, d, dmin) * xd[u >> 1];
    }
    return acc;
}

// Q4_K, one 16-weight group u (weights 16u..16u+15 of the row) per lane and step: in block
// u >> 4, 64-weight chunk c = (u & 15) >> 2 keeps weights 0..31 in the low and 32..63 in the
// high nibbles of its 32 quant bytes, so group q = u & 3 is nibble q >> 1 of bytes
// 16(q & 1)..+15, with scale pair 2c + (q >> 1). Consecutive lanes load consecutive activation
// chunks (as in dot_q2_k).
__device__ __forceinline__ float dot_q4_k(const DW& w, i64 grow, const i8* xq, const float* xd, const float* xf,
                         const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31;
    int nb = w.cols / 256;
    const u8* row = w.a + grow * plane_row_bytes(TY_Q4_K, w.cols);
    float acc = 0.0f;
#pragma unroll 4
    for (int u = lane + l0; u < nb * 16; u += ls) {
        const u8* b = row + (u >> 4) * 144;
        int c = (u & 15) >> 2, q = u & 3, hi = q >> 1;
        u32 dd = *(const u32*)b;
        float d = h2f((u16)(dd & 0xffffu)), dmin = h2f((u16)(dd >> 16));
        int sc, m;
        q4k_scale_min(b + 4, 2 * c + hi, &sc, &m);
        uint4 qa = *(const uint4*)(b + 16 + 32 * c + 16 * (q & 1));
        int wq[4] = {(int)((qa.x >> (4 * hi)) & 0x0f0f0f0fu), (int)((qa.y >> (4 * hi)) & 0x0f0f0f0fu),
                     (int)((qa.z >> (4 * hi)) & 0x0f0f0f0fu), (int)((qa.w >> (4 * hi)) & 0x0f0f0f0fu)};
        acc += kquant16_part(wq, xq, w.cols, u, sc, m, d, dmin) * xd[u >> 1];
    }
    return acc;
}

// Elements c..c+7 of global row `grow` (defined with the f16 conversion below).
__device__ void deq8(const DW& w, i64 grow, int c, float* o);

// Any type without an integer kernel (BF16, Q3_K, Q5_K, Q6_K, IQ2_XS, IQ3_XXS, MXFP4): each
// lane dequantises 8 weights at a time (deq8) and dots them with the f32 activation; like the
// other dots it returns the lane's partial sum.
__device__ __forceinline__ float dot_deq(const DW& w, i64 grow, const i8* xq, const float* xd,
                                         const float* xf, const IqTab* tab, int l0, int ls) {
    int lane = threadIdx.x & 31;
    float acc = 0.0f;
#pragma unroll 2
    for (int ci = lane + l0; ci < w.cols / 8; ci += ls) {
        float v[8];
        deq8(w, grow, ci * 8, v);
        float4 x0 = *(const float4*)(xf + ci * 8), x1 = *(const float4*)(xf + ci * 8 + 4);
        acc += v[0] * x0.x + v[1] * x0.y + v[2] * x0.z + v[3] * x0.w;
        acc += v[4] * x1.x + v[5] * x1.y + v[6] * x1.z + v[7] * x1.w;
    }
    return acc;  // the lane's partial sum; the kernel reduces once per row
}

// ---- fast matrix-vector kernels -----------------------------------------------------------
//
// The activation is prepared once per launch group by `quant_q8` (three int8 planes per row and
// one f32 scale per 32 values, in global memory where every block reads it through L1/L2);
// F16/F32 weights read the f32 activation directly. IQ2_XXS kernels load the grid tables into
// static shared memory first.

#define MV_WARPS 8

#define DECLARE_IQ2_TABLES                                                                  \
    __shared__ IqTab sh_tab;                                                                \
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sh_tab.grid[i] = iq2xxs_grid[i];    \
    __syncthreads();                                                                        \
    const IqTab* tab = &sh_tab;

#define NO_TABLES const IqTab* tab = 0;

// The three stages of one activation value v in a block of 32 whose largest magnitude over 127
// is `dd`.
__device__ __forceinline__ void q8_stages(float v, float dd, int* q1, int* q2, int* q3) {
    *q1 = *q2 = *q3 = 0;
    if (dd > 0.0f) {
        *q1 = max(-127, min(127, __float2int_rn(v / dd)));
        float rr = fmaf(-(float)*q1, dd, v);
        float d2 = dd / Q8_STAGE;
        *q2 = max(-127, min(127, __float2int_rn(rr / d2)));
        rr = fmaf(-(float)*q2, d2, rr);
        float d3 = d2 / Q8_STAGE;
        *q3 = max(-127, min(127, __float2int_rn(rr / d3)));
    }
}

// A warp's 32-value activation block into its three-stage planes, a value a lane: lane's
// value v, its byte in the first plane at qv (the planes `plane` bytes apart), the block's
// scale into *d by lane 0. Every writer of planes (quant_q8, rms_norm, attn_combine) stores
// through this, so that their bytes are the same.
__device__ __forceinline__ void q8_store_lane(float v, i8* qv, int plane, float* d) {
    float dd = warp_max(fabsf(v)) / 127.0f;
    int q1, q2, q3;
    q8_stages(v, dd, &q1, &q2, &q3);
    qv[0] = (i8)q1;
    qv[plane] = (i8)q2;
    qv[2 * plane] = (i8)q3;
    if ((threadIdx.x & 31) == 0) *d = dd;
}

// Three-stage int8 planes of `rows` rows of `cols` (row r at x + r·x_stride): q[r] is three
// planes of cols bytes, d[r] cols/32 scales. One warp per 32 values.
extern "C" __global__ void quant_q8(const float* x, int x_stride, int cols, int rows, i8* q, float* d) {
    grid_dep_sync();
    int lane = threadIdx.x & 31;
    i64 blk = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int per_row = cols / 32;
    if (blk >= (i64)rows * per_row) return;
    int r = (int)(blk / per_row), b = (int)(blk - (i64)r * per_row);
    float v = x[(i64)r * x_stride + b * 32 + lane];
    q8_store_lane(v, q + (i64)r * 3 * cols + b * 32 + lane, cols, d + (i64)r * per_row + b);
}

// The row sum of the kspl warps of a block that share one row (warp order), from each warp's
// lane partial `v`: true, with the sum in *a, in lane 0 of the row's first warp.
// Block-cooperative (one barrier).
__device__ __forceinline__ bool mv_row_sum(float v, float* part, int kspl, float* a) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (lane != 0 || warp % kspl != 0) return false;
    float s = 0.0f;
    for (int k = 0; k < kspl; k++) s += part[warp + k];
    *a = s;
    return true;
}

// y[r] = beta·y[r] + W[mat][r]·x_g, r < w.rows, where x_g is activation row r / rows_per_group
// (grouped projection, spec §2.4.7; rows_per_group = w.rows for a plain product). `kspl` (1, 2,
// 4 or 8) warps share a row, each taking every kspl-th chunk of it, so short matrices still
// fill the device; their partial sums meet in shared memory.
#define MV_KERNEL(NAME, DOT, TABLES)                                                          \
    extern "C" __global__ void NAME(DW w, int mat, const float* x, const i8* xq,              \
                                    const float* xd, int rows_per_group, float* y, int kspl, \
                                    int beta) {                                              \
        grid_dep_sync();                                                                      \
        TABLES                                                                                \
        __shared__ float part[MV_WARPS];                                                     \
        int warp = threadIdx.x >> 5;                                                         \
        int cols = w.cols;                                                                    \
        int rpb = MV_WARPS / kspl;                                                            \
        int r = blockIdx.x * rpb + warp / kspl, sl = warp % kspl;                            \
        float v = 0.0f;                                                                       \
        if (r < w.rows) {                                                                     \
            int g = r / rows_per_group;                                                       \
            v = DOT(w, (i64)mat * w.rows + r, xq ? xq + (i64)g * 3 * cols : 0,                \
                    xd ? xd + (i64)g * (cols / 32) : 0, x ? x + (i64)g * cols : 0, tab,       \
                    32 * sl, 32 * kspl);                                                      \
        }                                                                                     \
        float a;                                                                              \
        if (mv_row_sum(v, part, kspl, &a) && r < w.rows) y[r] = beta ? y[r] + a : a;          \
    }

// Gate and up dots as two calls of one type's row dot, for the types without a fused pair
// (dot2_q8_0, dot2_iq2_xxs).
#define DOT2_OF(NAME, DOT)                                                                    \
    __device__ __forceinline__ void NAME(const DW& g, const DW& u, i64 grow, const i8* xq,   \
                                         const float* xd, const float* xf, const IqTab* tab,  \
                                         int l0, int ls, float* gv, float* uv) {              \
        *gv = DOT(g, grow, xq, xd, xf, tab, l0, ls);                                          \
        *uv = DOT(u, grow, xq, xd, xf, tab, l0, ls);                                          \
    }
DOT2_OF(dot2_q2_k, dot_q2_k)
DOT2_OF(dot2_q4_k, dot_q4_k)
DOT2_OF(dot2_f16, dot_f16)
DOT2_OF(dot2_f32, dot_f32)
DOT2_OF(dot2_deq, dot_deq)

// mid[s][r] = silu(min(G_e·x, c)) · clamp(U_e·x, −c, c) · wt_s for slot s = blockIdx.y with
// expert e = ids[s] (ids null: matrix 0, weight 1), r < gate.rows (spec §2.5 steps 5–6).
// `kspl` (1, 2, 4 or 8) warps share a row, each taking every kspl-th chunk of it, so that a
// single matrix pair (the shared expert: 2048 rows) still puts enough warps on the device;
// their partial sums meet in shared memory in warp order (kspl = 1: the one-warp sums).
#define GU_KERNEL(NAME, DOT2, TABLES)                                                         \
    extern "C" __global__ void NAME(DW gate, DW up, const float* x, const i8* xq,             \
                                    const float* xd, const int* ids, const float* wts,       \
                                    float clamp, float* mid, int kspl) {                     \
        grid_dep_sync();                                                                      \
        TABLES                                                                                \
        __shared__ float pg[MV_WARPS], pu[MV_WARPS];                                          \
        int s = blockIdx.y;                                                                  \
        int e = ids ? ids[s] : 0;                                                            \
        float wt = ids ? wts[s] : 1.0f;                                                      \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                \
        int r = blockIdx.x * (MV_WARPS / kspl) + warp / kspl, sl = warp % kspl;              \
        float gv = 0.0f, uv = 0.0f;                                                           \
        i64 grow = (i64)e * gate.rows + r;                                                    \
        /* kspl = 1 (routed slots) with a literal stride, which the dot's unrolled loop needs */ \
        if (r < gate.rows && kspl == 1)                                                       \
            DOT2(gate, up, grow, xq, xd, x, tab, 0, 32, &gv, &uv);                            \
        else if (r < gate.rows)                                                               \
            DOT2(gate, up, grow, xq, xd, x, tab, 32 * sl, 32 * kspl, &gv, &uv);               \
        warp_sum2(&gv, &uv);                                                                  \
        if (kspl > 1) {                                                                       \
            if (lane == 0) {                                                                  \
                pg[warp] = gv;                                                                \
                pu[warp] = uv;                                                                \
            }                                                                                 \
            __syncthreads();                                                                  \
            if (lane == 0 && sl == 0) {                                                       \
                for (int j = 1; j < kspl; j++) {                                              \
                    gv += pg[warp + j];                                                       \
                    uv += pu[warp + j];                                                       \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        if (lane == 0 && sl == 0 && r < gate.rows) {                                          \
            float m = siluf_ref(fminf(gv, clamp)) * fminf(fmaxf(uv, -clamp), clamp);         \
            mid[(i64)s * gate.rows + r] = m * wt;                                             \
        }                                                                                     \
    }

// y[r] = Σ_s D_{ids[s]}[r]·mid[s], s < k, r < down.rows (mid prepared as k rows). `kspl` (1, 2,
// 4 or 8) warps share a row, warp j of them taking the slots s ≡ j (mod kspl), so that more
// weight rows are in flight at once; their sums meet in shared memory in warp order.
#define DN_KERNEL(NAME, DOT, TABLES)                                                          \
    extern "C" __global__ void NAME(DW down, const float* mid, const i8* mq, const float* md, \
                                    const int* ids, int k, float* y, int kspl) {             \
        grid_dep_sync();                                                                      \
        TABLES                                                                                \
        __shared__ float part[MV_WARPS];                                                      \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                 \
        int cols = down.cols;                                                                 \
        int r = blockIdx.x * (MV_WARPS / kspl) + warp / kspl, sl = warp % kspl;               \
        float acc = 0.0f;                                                                     \
        if (r < down.rows) {                                                                  \
            _Pragma("unroll 2")                                                               \
            for (int s = sl; s < k; s += kspl) {                                              \
                i64 grow = (i64)ids[s] * down.rows + r;                                       \
                acc += DOT(down, grow, mq ? mq + (i64)s * 3 * cols : 0,                       \
                           md ? md + (i64)s * (cols / 32) : 0, mid + (i64)s * cols, tab, 0, 32); \
            }                                                                                 \
        }                                                                                     \
        acc = warp_sum(acc);                                                                  \
        if (lane == 0) part[warp] = acc;                                                      \
        __syncthreads();                                                                      \
        if (lane == 0 && sl == 0 && r < down.rows) {                                          \
            float a = part[warp];                                                             \
            for (int j = 1; j < kspl; j++) a += part[warp + j];                               \
            y[r] = a;                                                                         \
        }                                                                                     \
    }

// Up to MVN_MAX products of one activation row in one launch (`mvn_*`): job j is weight w[j]
// into y[j], its rows split over kspl[j] warps as MV_KERNEL would, in blocks
// first_block[j]..first_block[j + 1] — the same sums, bit for bit, as one launch per product.
#define MVN_MAX 4
struct MvJobs {
    DW w[MVN_MAX];
    float* y[MVN_MAX];
    int first_block[MVN_MAX + 1];
    int kspl[MVN_MAX];
    int n;
};

// The job of block b of an mvn_* launch.
__device__ __forceinline__ int mvn_job(const MvJobs& jobs, int b) {
    int j = 0;
    while (j + 1 < jobs.n && b >= jobs.first_block[j + 1]) j++;
    return j;
}

#define MVN_KERNEL(NAME, DOT, TABLES)                                                         \
    extern "C" __global__ void NAME(MvJobs jobs, const float* x, const i8* xq, const float* xd) { \
        grid_dep_sync();                                                                      \
        TABLES                                                                                \
        __shared__ float part[MV_WARPS];                                                      \
        int j = mvn_job(jobs, blockIdx.x);                                                    \
        const DW w = jobs.w[j];                                                               \
        int kspl = jobs.kspl[j];                                                              \
        int warp = threadIdx.x >> 5;                                                          \
        int rpb = MV_WARPS / kspl;                                                            \
        int r = ((int)blockIdx.x - jobs.first_block[j]) * rpb + warp / kspl, sl = warp % kspl; \
        float v = 0.0f;                                                                       \
        if (r < w.rows) v = DOT(w, r, xq, xd, x, tab, 32 * sl, 32 * kspl);                    \
        float a;                                                                              \
        if (mv_row_sum(v, part, kspl, &a) && r < w.rows) jobs.y[j][r] = a;                    \
    }

// The weight chunks (16 Q8_0 weights each) a lane of mvp_q8_0 holds per segment.
#ifndef MVP_SEG
#define MVP_SEG 2
#endif

// One segment of a Q8_0 row for mvp_q8_0: lane chunks ss·32·MVP_SEG + 32j + lane, j < MVP_SEG.
__device__ __forceinline__ void mvp_load(const DW& w, i64 grow, int ss, int4* wv, u16* sc) {
    int lane = threadIdx.x & 31, nch = w.cols / 16;
    const u8* row = w.a + grow * w.cols;
    const u8* ds = w.b + grow * (w.cols / 32) * 2;
#pragma unroll
    for (int j = 0; j < MVP_SEG; j++) {
        int ci = ss * 32 * MVP_SEG + j * 32 + lane;
        if (ci < nch) {
            wv[j] = __ldcs((const int4*)(row + ci * 16));
            sc[j] = ld_u16(ds + 2 * (ci >> 1));
        }
    }
}

// mv_q8_0 for matrices of many rows (one warp a row there): y[r] = beta·y[r] + W[mat][r]·x_g
// with the same sums, bit for bit. The grid is a few blocks an SM that stay resident; each
// warp walks rows r, r + (warps of the grid), …, a row in segments of MVP_SEG chunks a lane,
// and loads the next segment (perhaps of its next row) before it uses the current one, so a
// warp always has weights in flight instead of one row per block lifetime (q_b, 32768 rows of
// 1024: 21 → 13 µs in tools/device/mv-lab.cu).
extern "C" __global__ void mvp_q8_0(DW w, int mat, const i8* xq, const float* xd, int rows_per_group,
                                    float* y, int beta) {
    // Before the wait (PRE_WAIT in common.cuh): the first weight segment, constant.
    int lane = threadIdx.x & 31;
    int nw = gridDim.x * (blockDim.x >> 5);
    int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int cols = w.cols, nch = cols / 16;
    int segs = (nch + 32 * MVP_SEG - 1) / (32 * MVP_SEG), s = 0;
    i64 base = (i64)mat * w.rows;
    int4 cur[MVP_SEG];
    u16 csc[MVP_SEG];
    if (r < w.rows) mvp_load(w, base + r, 0, cur, csc);
    grid_dep_sync();
    // The activation group of the row, found again only when the warp moves to another row
    // (and never for a plain product): an integer division a segment was ~10 % of the
    // kernel's instructions, which issue on ~2/3 of its cycles (ncu, q_b).
    bool grouped = rows_per_group < w.rows;
    int g = grouped && r < w.rows ? r / rows_per_group : 0;
    float acc = 0.0f;
    while (r < w.rows) {
        int r2 = r, s2 = s + 1;
        if (s2 == segs) {
            s2 = 0;
            r2 += nw;
        }
        int4 nxt[MVP_SEG];
        u16 nsc[MVP_SEG];
        if (r2 < w.rows) mvp_load(w, base + r2, s2, nxt, nsc);
        const i8* xg = xq + (i64)g * 3 * cols;
        const float* dg = xd + (i64)g * (cols / 32);
#pragma unroll
        for (int j = 0; j < MVP_SEG; j++) {
            int ci = s * 32 * MVP_SEG + j * 32 + lane;
            if (ci < nch) {
                int4 xv[3];
                q8_0_x(xg, cols, ci, xv);
                acc += q8_0_chunk(cur[j], xv) * (h2f(csc[j]) * dg[ci >> 1]);
            }
        }
        if (s == segs - 1) {
            acc = warp_sum(acc);
            if (lane == 0) y[r] = beta ? y[r] + acc : acc;
            acc = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < MVP_SEG; j++) {
            cur[j] = nxt[j];
            csc[j] = nsc[j];
        }
        if (grouped && r2 != r && r2 < w.rows) g = r2 / rows_per_group;
        r = r2;
        s = s2;
    }
}

MVN_KERNEL(mvn_q8_0, dot_q8_0, NO_TABLES)
MVN_KERNEL(mvn_f16, dot_f16, NO_TABLES)

MV_KERNEL(mv_q8_0, dot_q8_0, NO_TABLES)
MV_KERNEL(mv_q2_k, dot_q2_k, NO_TABLES)
MV_KERNEL(mv_q4_k, dot_q4_k, NO_TABLES)
MV_KERNEL(mv_iq2_xxs, dot_iq2_xxs, DECLARE_IQ2_TABLES)
MV_KERNEL(mv_iq2c, dot_iq2c, NO_TABLES)
MV_KERNEL(mv_f16, dot_f16, NO_TABLES)
MV_KERNEL(mv_f32, dot_f32, NO_TABLES)
MV_KERNEL(mv_deq, dot_deq, NO_TABLES)

GU_KERNEL(gu_q8_0, dot2_q8_0, NO_TABLES)
GU_KERNEL(gu_q2_k, dot2_q2_k, NO_TABLES)
GU_KERNEL(gu_q4_k, dot2_q4_k, NO_TABLES)
GU_KERNEL(gu_iq2_xxs, dot2_iq2_xxs, DECLARE_IQ2_TABLES)
GU_KERNEL(gu_iq2c, dot2_iq2c, NO_TABLES)
GU_KERNEL(gu_f16, dot2_f16, NO_TABLES)
GU_KERNEL(gu_f32, dot2_f32, NO_TABLES)
GU_KERNEL(gu_deq, dot2_deq, NO_TABLES)

DN_KERNEL(dn_q8_0, dot_q8_0, NO_TABLES)
DN_KERNEL(dn_q2_k, dot_q2_k, NO_TABLES)
DN_KERNEL(dn_q4_k, dot_q4_k, NO_TABLES)
DN_KERNEL(dn_iq2_xxs, dot_iq2_xxs, DECLARE_IQ2_TABLES)
DN_KERNEL(dn_iq2c, dot_iq2c, NO_TABLES)
DN_KERNEL(dn_f16, dot_f16, NO_TABLES)
DN_KERNEL(dn_f32, dot_f32, NO_TABLES)
DN_KERNEL(dn_deq, dot_deq, NO_TABLES)

// ---- f16 conversion for the prefill GEMMs -------------------------------------------------

// v as an f16 pair: hi = f16(v), lo = f16(v − hi).
__device__ __forceinline__ void split_f16(float v, u16* hi, u16* lo) {
    u16 h = f2h(v);
    *hi = h;
    *lo = f2h(v - h2f(h));
}

// (hi, lo)[i] of W[mat][r0 + i / cols][i % cols] for i < nrows·cols; lo is `n` elements after
// hi.
// Elements c..c+7 of global row `grow` (c % 8 == 0), each block's header read once; the same
// values as deq().
__device__ void deq8(const DW& w, i64 grow, int c, float* o) {
    switch (w.ty) {
    case TY_Q8_0: {
        float d = h2f(ld_u16(w.b + (grow * (w.cols / 32) + c / 32) * 2));
        const i8* q = (const i8*)(w.a + grow * w.cols + c);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = (float)q[j] * d;
        return;
    }
    case TY_Q2_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q2_K, w.cols) + 84 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        int sc = b[8 * n + 2 * j + (l >= 16 ? 1 : 0)];
        float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
        float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = dl * (float)((b[16 + 32 * n + l + k] >> (2 * j)) & 3) - ml;
        return;
    }
    case TY_Q4_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q4_K, w.cols) + 144 * (c >> 8);
        int i = c & 255, chunk = i >> 6, wi = i & 63;
        int pair = 2 * chunk + (wi >= 32 ? 1 : 0);
        int sc, m;
        q4k_scale_min(b + 4, pair, &sc, &m);
        float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2));
        float dl = d * (float)sc, ml = dmin * (float)m;
        const u8* q = b + 16 + 32 * chunk + (wi & 31);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = dl * (float)(wi >= 32 ? (q[k] >> 4) : (q[k] & 15)) - ml;
        return;
    }
    case TY_IQ2_XXS: {
        i64 blk = grow * (w.cols / 256) + (c >> 8);
        const u8* q = w.a + blk * 64;
        int i = c & 255, ib = i >> 5, kk = (i & 31) >> 3;
        u32 a0 = ld_u32(q + 8 * ib), a1 = ld_u32(q + 8 * ib + 4);
        u64 g = iq2xxs_grid[(a0 >> (8 * kk)) & 255u];
        u32 signs = ksigns_iq2xs[(a1 >> (7 * kk)) & 127u];
        float d = h2f(ld_u16(w.b + blk * 2));
        float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float v = db * (float)((g >> (8 * j)) & 255ull);
            o[j] = (signs >> j) & 1u ? -v : v;
        }
        return;
    }
    case TY_IQ2C: {
        u32 codes = ld_u32(w.a + grow * (w.cols / 2) + c / 2);
        float db = iq2c_scale(w, grow * (w.cols / 256) + (c >> 8), (c & 255) >> 5);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = db * (float)(i8)iq2c_4((codes >> (4 * j)) & 15u);
        return;
    }
    case TY_BF16: {
        const u8* p = w.a + (grow * w.cols + c) * 2;
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = bf2f(ld_u16(p + 2 * j));
        return;
    }
    case TY_Q3_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q3_K, w.cols) + 110 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        float dl = h2f(ld_u16(b + 108)) * (float)q3k_scale(b + 96, 8 * n + 2 * j + (l >= 16 ? 1 : 0));
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int q = (b[32 + 32 * n + l + k] >> (2 * j)) & 3;
            int h = (b[l + k] >> (4 * n + j)) & 1;
            o[k] = dl * (float)(q - (h ? 0 : 4));
        }
        return;
    }
    case TY_Q5_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q5_K, w.cols) + 176 * (c >> 8);
        int i = c & 255, j = i >> 5, l = i & 31;
        int sc, m;
        q4k_scale_min(b + 4, j, &sc, &m);
        float dl = h2f(ld_u16(b)) * (float)sc, ml = h2f(ld_u16(b + 2)) * (float)m;
        const u8* qs = b + 48 + 32 * (j >> 1) + l;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int q = ((qs[k] >> (4 * (j & 1))) & 15) | (((b[16 + l + k] >> j) & 1) << 4);
            o[k] = dl * (float)q - ml;
        }
        return;
    }
    case TY_Q6_K: {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q6_K, w.cols) + 210 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        float dl = h2f(ld_u16(b + 208)) * (float)(i8)b[192 + 8 * n + 2 * j + (l >= 16 ? 1 : 0)];
        const u8* ql = b + 64 * n + 32 * (j & 1) + l;
        const u8* qh = b + 128 + 32 * n + l;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int q = ((ql[k] >> (4 * (j >> 1))) & 15) | (((qh[k] >> (2 * j)) & 3) << 4);
            o[k] = dl * (float)(q - 32);
        }
        return;
    }
    case TY_IQ2_XS: {
        const u8* b = w.a + grow * plane_row_bytes(TY_IQ2_XS, w.cols) + 74 * (c >> 8);
        int i = c & 255, g = i >> 3, h = i >> 4;
        u32 v = ld_u16(b + 2 + 2 * g);
        u64 grid = iq2xs_grid[v & 511u];
        u32 signs = ksigns_iq2xs[v >> 9];
        int s = (b[66 + (h >> 1)] >> (4 * (h & 1))) & 15;
        float db = h2f(ld_u16(b)) * (0.5f + (float)s) * 0.25f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float r = db * (float)((grid >> (8 * j)) & 255ull);
            o[j] = (signs >> j) & 1u ? -r : r;
        }
        return;
    }
    case TY_IQ3_XXS: {
        const u8* b = w.a + grow * plane_row_bytes(TY_IQ3_XXS, w.cols) + 98 * (c >> 8);
        int i = c & 255, ib = i >> 5, k = (i & 31) >> 3;
        u32 a = ld_u32(b + 66 + 4 * ib);
        u32 g0 = iq3xxs_grid[b[2 + 8 * ib + 2 * k]], g1 = iq3xxs_grid[b[3 + 8 * ib + 2 * k]];
        u32 signs = ksigns_iq2xs[(a >> (7 * k)) & 127u];
        float db = h2f(ld_u16(b)) * (0.5f + (float)(a >> 28)) * 0.5f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            u32 g = j < 4 ? g0 : g1;
            float r = db * (float)((g >> (8 * (j & 3))) & 255u);
            o[j] = (signs >> j) & 1u ? -r : r;
        }
        return;
    }
    case TY_MXFP4: {
        const u8* b = w.a + grow * plane_row_bytes(TY_MXFP4, w.cols) + 17 * (c >> 5);
        int i = c & 31, shift = i < 16 ? 0 : 4;
        float d = e8m0_half(b[0]);
        const u8* q = b + 1 + (i & 15);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = d * (float)kvalues_mxfp4[(q[j] >> shift) & 15];
        return;
    }
    }
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = deq(w, grow, c + j);
}

// A thread owns 8 consecutive elements (one 16-byte store each for hi and lo; cols % 8 == 0).
extern "C" __global__ void deq_f16(DW w, int mat, int r0, int nrows, u16* out) {
    grid_dep_sync();
    i64 n = (i64)nrows * w.cols;
    for (i64 i8x = (i64)blockIdx.x * blockDim.x + threadIdx.x; i8x * 8 < n; i8x += (i64)gridDim.x * blockDim.x) {
        i64 i = i8x * 8;
        i64 r = i / w.cols;
        int c = (int)(i - r * w.cols);
        float v[8];
        deq8(w, (i64)mat * w.rows + r0 + r, c, v);
        u16 hi[8], lo[8];
#pragma unroll
        for (int j = 0; j < 8; j++) split_f16(v[j], hi + j, lo + j);
        uint4 h, l;
        h.x = hi[0] | ((u32)hi[1] << 16); h.y = hi[2] | ((u32)hi[3] << 16);
        h.z = hi[4] | ((u32)hi[5] << 16); h.w = hi[6] | ((u32)hi[7] << 16);
        l.x = lo[0] | ((u32)lo[1] << 16); l.y = lo[2] | ((u32)lo[3] << 16);
        l.z = lo[4] | ((u32)lo[5] << 16); l.w = lo[6] | ((u32)lo[7] << 16);
        *(uint4*)(out + i) = h;
        *(uint4*)(out + n + i) = l;
    }
}

// (hi, lo)[t][c] of x[idx ? idx[t] : t][xoff + c] for t < n, c < cols (rows of x are x_stride
// apart; lo is n·cols elements after hi): activations for a GEMM, optionally gathered.
extern "C" __global__ void to_f16(const float* x, int x_stride, int xoff, const int* idx, int n,
                                  int cols, u16* out) {
    grid_dep_sync();
    i64 total = (i64)n * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        int t = (int)(i / cols), c = (int)(i - (i64)t * cols);
        int src = idx ? idx[t] : t;
        split_f16(x[(i64)src * x_stride + xoff + c], out + i, out + total + i);
    }
}

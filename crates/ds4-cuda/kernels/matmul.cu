// Weight matrix × f32 activations with the weights dequantised on the fly (spec/model.md §4).
// One block owns one weight row and TOK tokens: its threads stride over the row's elements,
// dequantise each once and FMA it against the TOK activation rows, then reduce across the
// block. Accumulation is f32. The quant layouts are ggml's (see crates/ds4/src/quant/blocks.rs);
// the IQ2_XXS tables `iq2xxs_grid` and `ksigns_iq2xs` are prepended by the host from
// ds4::quant (transcribed from ggml-common.h, verified against gguf-py).
//
// Type ids are ggml's: 0 F32, 1 F16, 8 Q8_0, 10 Q2_K, 12 Q4_K, 16 IQ2_XXS.

#define TOK 8
#define THREADS 256

__device__ __forceinline__ float half_to_float(unsigned short h) {
    unsigned int sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float v;
    if (exp == 0) {
        v = ldexpf((float)mant, -24);
    } else if (exp == 31) {
        v = mant ? __int_as_float(0x7fc00000) : __int_as_float(0x7f800000);
    } else {
        v = ldexpf((float)(mant | 0x400u), (int)exp - 25);
    }
    return sign ? -v : v;
}

__device__ __forceinline__ unsigned short ld_u16(const unsigned char* p) {
    return (unsigned short)(p[0] | (p[1] << 8));
}

__device__ __forceinline__ unsigned int ld_u32(const unsigned char* p) {
    return (unsigned int)p[0] | ((unsigned int)p[1] << 8) | ((unsigned int)p[2] << 16) | ((unsigned int)p[3] << 24);
}

// Element c of a row of type `ty` starting at `row`.
__device__ __forceinline__ float dequant(int ty, const unsigned char* row, int c) {
    switch (ty) {
    case 0: return __int_as_float((int)ld_u32(row + 4 * c));
    case 1: return half_to_float(ld_u16(row + 2 * c));
    case 8: {
        const unsigned char* b = row + 34 * (c >> 5);
        return half_to_float(ld_u16(b)) * (float)(signed char)b[2 + (c & 31)];
    }
    case 10: {  // Q2_K: scales[16] qs[64] d dmin (84 bytes)
        const unsigned char* b = row + 84 * (c >> 8);
        int i = c & 255, n = i >> 7, j = (i & 127) >> 5, l = i & 31;
        int q = (b[16 + 32 * n + l] >> (2 * j)) & 3;
        int sc = b[8 * n + 2 * j + (l >= 16 ? 1 : 0)];
        float d = half_to_float(ld_u16(b + 80)), dmin = half_to_float(ld_u16(b + 82));
        return d * (float)(sc & 15) * (float)q - dmin * (float)(sc >> 4);
    }
    case 12: {  // Q4_K: d dmin scales[12] qs[128] (144 bytes)
        const unsigned char* b = row + 144 * (c >> 8);
        const unsigned char* s = b + 4;
        int i = c & 255, chunk = i >> 6, w = i & 63;
        int pair = 2 * chunk + (w >= 32 ? 1 : 0);
        int byte = b[16 + 32 * chunk + (w & 31)];
        int q = w >= 32 ? (byte >> 4) : (byte & 15);
        int sc, m;
        if (pair < 4) {
            sc = s[pair] & 63;
            m = s[pair + 4] & 63;
        } else {
            sc = (s[pair + 4] & 15) | ((s[pair - 4] >> 6) << 4);
            m = (s[pair + 4] >> 4) | ((s[pair] >> 6) << 4);
        }
        float d = half_to_float(ld_u16(b)), dmin = half_to_float(ld_u16(b + 2));
        return d * (float)sc * (float)q - dmin * (float)m;
    }
    case 16: {  // IQ2_XXS: d qs[32 u16] (66 bytes)
        const unsigned char* b = row + 66 * (c >> 8);
        int i = c & 255, ib = i >> 5, k = (i & 31) >> 3, j = i & 7;
        unsigned int a0 = ld_u32(b + 2 + 8 * ib), a1 = ld_u32(b + 6 + 8 * ib);
        unsigned int gi = (a0 >> (8 * k)) & 255u;
        float g = (float)((iq2xxs_grid[gi] >> (8 * j)) & 255ull);
        unsigned int signs = ksigns_iq2xs[(a1 >> (7 * k)) & 127u];
        float d = half_to_float(ld_u16(b));
        float v = d * (0.5f + (float)(a1 >> 28)) * 0.25f * g;
        return (signs >> j) & 1u ? -v : v;
    }
    }
    return 0.0f;
}

// y[t][r] = Σ_c W[r][c]·x[t][c] for t in [blockIdx.y·TOK, +TOK) ∩ [0, n_tok).
// Grid (rows, ceil(n_tok / TOK)), THREADS threads.
extern "C" __global__ void matmul_deq(int ty, const unsigned char* w, long long row_bytes, int rows, int cols,
                                      const float* x, int n_tok, float* y) {
    int r = blockIdx.x;
    int t0 = blockIdx.y * TOK;
    if (r >= rows) return;
    const unsigned char* row = w + (long long)r * row_bytes;
    float acc[TOK];
#pragma unroll
    for (int t = 0; t < TOK; t++) acc[t] = 0.0f;
    int nt = min(TOK, n_tok - t0);
    for (int c = threadIdx.x; c < cols; c += THREADS) {
        float wv = dequant(ty, row, c);
#pragma unroll
        for (int t = 0; t < TOK; t++) {
            if (t < nt) acc[t] += wv * x[(long long)(t0 + t) * cols + c];
        }
    }
    __shared__ float red[THREADS / 32][TOK];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int t = 0; t < TOK; t++) {
        float v = acc[t];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) red[warp][t] = v;
    }
    __syncthreads();
    if (threadIdx.x < TOK && threadIdx.x < nt) {
        float s = 0.0f;
        for (int k = 0; k < THREADS / 32; k++) s += red[k][threadIdx.x];
        y[(long long)(t0 + threadIdx.x) * rows + r] = s;
    }
}

// Storage simulations of the official model (spec/model.md §7), as device functions over a
// row held in shared memory by one block, and the kernels that apply them to activation rows:
// FP8 E4M3 with power-of-two block scales (attention KV rows), Walsh–Hadamard + FP4 E2M1
// (indexer rows and queries), f16 rounding (stored rows). Same steps and constants as
// crates/ds4/src/model/numerics.rs; scales are exact powers of two, so only the rounding
// functions matter for agreement with the CPU.

#define E4M3_MAX 448.0f
#define FP8_BLOCK 64
#define FP8_AMAX_FLOOR 1e-4f
#define FP4_BLOCK 32
#define FP4_AMAX_FLOOR 7.05e-38f

// ceil(log2(x)) for finite x > 0, exactly.
__device__ __forceinline__ int ceil_log2(float x) {
    int e;
    float m = frexpf(x, &e);  // x = m·2^e, m in [0.5, 1)
    return m == 0.5f ? e - 1 : e;
}

// Nearest E4M3FN value to v (|v| ≤ 448), ties to the even code.
__device__ __forceinline__ float e4m3_round(float v) {
    float a = fabsf(v);
    if (a == 0.0f) return v;
    int e = (int)((__float_as_uint(a) >> 23) & 255u) - 127;  // floor(log2 a) for normal a
    if (e < -6) e = -6;                                       // subnormal step 2^-9
    float step = ldexpf(1.0f, e - 3);
    float r = rintf(a / step) * step;
    return copysignf(fminf(r, E4M3_MAX), v);
}

// Nearest E2M1 value to a ≥ 0 (a ≤ 6), ties to the even code.
__device__ __forceinline__ float e2m1_round(float a) {
    const float vals[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    int best = 0;
    for (int code = 1; code < 8; code++) {
        float db = fabsf(a - vals[best]), d = fabsf(a - vals[code]);
        if (d < db || (d == db && (code & 1) == 0)) best = code;
    }
    return vals[best];
}

// FP8 E4M3 round trip of sh[0..n) in blocks of 64 (block-cooperative; ends with a barrier).
// `tmp` holds ceil(n/64) floats of shared memory.
__device__ void row_fp8(float* sh, int n, float* tmp) {
    int nb = (n + FP8_BLOCK - 1) / FP8_BLOCK;
    __syncthreads();
    for (int b = threadIdx.x; b < nb; b += blockDim.x) {
        int end = min(n, (b + 1) * FP8_BLOCK);
        float amax = 0.0f;
        for (int i = b * FP8_BLOCK; i < end; i++) amax = fmaxf(amax, fabsf(sh[i]));
        amax = fmaxf(amax, FP8_AMAX_FLOOR);
        tmp[b] = ldexpf(1.0f, ceil_log2(amax / E4M3_MAX));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float scale = tmp[i / FP8_BLOCK];
        float q = fminf(fmaxf(sh[i] / scale, -E4M3_MAX), E4M3_MAX);
        sh[i] = e4m3_round(q) * scale;
    }
    __syncthreads();
}

// FP4 E2M1 round trip of sh[0..n) in blocks of 32 (block-cooperative; ends with a barrier).
__device__ void row_fp4(float* sh, int n, float* tmp) {
    int nb = (n + FP4_BLOCK - 1) / FP4_BLOCK;
    __syncthreads();
    for (int b = threadIdx.x; b < nb; b += blockDim.x) {
        int end = min(n, (b + 1) * FP4_BLOCK);
        float amax = 0.0f;
        for (int i = b * FP4_BLOCK; i < end; i++) amax = fmaxf(amax, fabsf(sh[i]));
        amax = fmaxf(amax, FP4_AMAX_FLOOR);
        tmp[b] = ldexpf(1.0f, ceil_log2(amax / 6.0f));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float scale = tmp[i / FP4_BLOCK];
        float q = fminf(fmaxf(sh[i] / scale, -6.0f), 6.0f);
        sh[i] = copysignf(e2m1_round(fabsf(q)), q) * scale;
    }
    __syncthreads();
}

// Orthonormal Walsh–Hadamard transform of sh[0..n), n a power of two (Sylvester butterflies
// in natural order, then ·1/sqrt(n)). Block-cooperative; ends with a barrier.
__device__ void row_hadamard(float* sh, int n) {
    __syncthreads();
    for (int h = 1; h < n; h *= 2) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            if ((i & h) == 0) {
                float a = sh[i], b = sh[i + h];
                sh[i] = a + b;
                sh[i + h] = a - b;
            }
        }
        __syncthreads();
    }
    float s = 1.0f / sqrtf((float)n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) sh[i] *= s;
    __syncthreads();
}

__device__ void row_f16(float* sh, int n) {
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) sh[i] = h2f(f2h(sh[i]));
    __syncthreads();
}

#define ROW_MAX 1024

// Attention KV rows in place (spec §7.1, §7.3): FP8 of the first cols − n_rot dims (fp8), then
// f16 (f16). Grid (rows); cols ≤ ROW_MAX.
extern "C" __global__ void kv_round(float* x, int cols, int n_rot, int fp8, int f16) {
    grid_dep_sync();
    __shared__ float sh[ROW_MAX];
    __shared__ float tmp[ROW_MAX / FP8_BLOCK + 1];
    float* row = x + (i64)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) sh[i] = row[i];
    if (fp8) row_fp8(sh, cols - n_rot, tmp);
    if (f16) row_f16(sh, cols);
    __syncthreads();
    for (int i = threadIdx.x; i < cols; i += blockDim.x) row[i] = sh[i];
}

// Indexer QAT of every head_dim-wide head in place (spec §7.2). Grid (rows·heads).
extern "C" __global__ void indexer_qat(float* x, int head_dim) {
    grid_dep_sync();
    __shared__ float sh[ROW_MAX];
    __shared__ float tmp[ROW_MAX / FP4_BLOCK + 1];
    float* h = x + (i64)blockIdx.x * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) sh[i] = h[i];
    row_hadamard(sh, head_dim);
    row_fp4(sh, head_dim, tmp);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) h[i] = sh[i];
}

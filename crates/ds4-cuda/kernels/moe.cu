// The FFN sublayer's non-matmul kernels (spec/model.md §2.5): routing on the device (hash
// layers from tid2eid, otherwise the top-k of sqrt-softplus score + selection bias; weights
// from the unbiased scores, normalised and scaled), the elementwise clamped SwiGLU of the
// prefill path, and the row gather / scatter-add around each expert's GEMMs.

#define ROUTE_MAX_EXPERTS 1024
#define ROUTE_MAX_K 16

__device__ __forceinline__ float softplus_ref(float z) {
    if (z > 20.0f) return z;
    if (z < -20.0f) return expf(z);
    return log1pf(expf(z));
}

// ids[t][0..k), wts[t][0..k) from router logits [rows × ne]. Grid (rows); one thread picks, in
// the CPU reference's order (strict > with the lower index first on ties).
extern "C" __global__ void route(const float* logits, int ne, const float* bias,
                                 const int* tid2eid, const int* tokens, int k, float scale,
                                 float floor_sum, int* ids, float* wts) {
    __shared__ float p[ROUTE_MAX_EXPERTS];
    int t = blockIdx.x;
    for (int e = threadIdx.x; e < ne; e += blockDim.x)
        p[e] = sqrtf(softplus_ref(logits[(i64)t * ne + e]));
    __syncthreads();
    if (threadIdx.x != 0) return;
    int chosen[ROUTE_MAX_K];
    if (tid2eid) {
        for (int j = 0; j < k; j++) chosen[j] = tid2eid[(i64)tokens[t] * k + j];
    } else {
        for (int j = 0; j < k; j++) {
            int best = -1;
            float bv = 0.0f;
            for (int e = 0; e < ne; e++) {
                bool taken = false;
                for (int i = 0; i < j; i++) taken |= chosen[i] == e;
                if (taken) continue;
                float v = p[e] + bias[e];
                if (best < 0 || v > bv) {
                    best = e;
                    bv = v;
                }
            }
            chosen[j] = best;
        }
    }
    float sum = 0.0f;
    for (int j = 0; j < k; j++) sum += p[chosen[j]];
    float denom = fmaxf(sum, floor_sum);
    for (int j = 0; j < k; j++) {
        ids[(i64)t * k + j] = chosen[j];
        wts[(i64)t * k + j] = p[chosen[j]] / denom * scale;
    }
}

// mid[i][c] = silu(min(g, clamp))·clamp(u, ±clamp)·(wts ? wts[i] : 1) over [m × cols].
extern "C" __global__ void swiglu_rows(const float* g, const float* u, int m, int cols,
                                       float clamp, const float* wts, float* mid) {
    i64 n = (i64)m * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / cols);
        float v = siluf_ref(fminf(g[i], clamp)) * fminf(fmaxf(u[i], -clamp), clamp);
        mid[i] = wts ? v * wts[r] : v;
    }
}

// out[i] = x[idx[i]] for i < m rows of `cols`.
extern "C" __global__ void gather_rows(const float* x, const int* idx, int m, int cols,
                                       float* out) {
    i64 n = (i64)m * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / cols), c = (int)(i - (i64)r * cols);
        out[i] = x[(i64)idx[r] * cols + c];
    }
}

// dst[idx[i]] += src[i] for i < m rows of `cols` (the rows of idx are distinct).
extern "C" __global__ void scatter_add(const float* src, const int* idx, int m, int cols,
                                       float* dst) {
    i64 n = (i64)m * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / cols), c = (int)(i - (i64)r * cols);
        dst[(i64)idx[r] * cols + c] += src[i];
    }
}

// Sets n floats to v (zero-filling outputs that are accumulated into).
extern "C" __global__ void fill(float* x, i64 n, float v) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = v;
}

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

// ids[t][0..k), wts[t][0..k) from router logits [rows × ne]. Grid (rows), 256 threads. The
// top-k is k rounds of a block argmax of score + bias (ties to the lower index, as the CPU's
// sort), each round dropping its winner; the weights are then formed by one thread in the
// CPU reference's order.
extern "C" __global__ void route(const float* logits, int ne, const float* bias,
                                 const int* tid2eid, const int* tokens, int k, float scale,
                                 float floor_sum, int* ids, float* wts) {
    grid_dep_sync();
    __shared__ float p[ROUTE_MAX_EXPERTS];
    __shared__ float sel[ROUTE_MAX_EXPERTS];
    __shared__ float wv[32];
    __shared__ int wi[32];
    __shared__ int chosen[ROUTE_MAX_K];
    int t = blockIdx.x, tid = threadIdx.x;
    int lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    for (int e = tid; e < ne; e += blockDim.x) {
        p[e] = sqrtf(softplus_ref(logits[(i64)t * ne + e]));
        sel[e] = p[e] + bias[e];
    }
    __syncthreads();
    if (tid2eid) {
        if (tid < k) chosen[tid] = tid2eid[(i64)tokens[t] * k + tid];
    } else {
        for (int j = 0; j < k; j++) {
            float bv = -DS4_INF;
            int bi = 0x7fffffff;
            for (int e = tid; e < ne; e += blockDim.x) {
                float v = sel[e];
                if (v > bv || (v == bv && e < bi)) {
                    bv = v;
                    bi = e;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(FULL_MASK, bv, o);
                int oi = __shfl_xor_sync(FULL_MASK, bi, o);
                if (ov > bv || (ov == bv && oi < bi)) {
                    bv = ov;
                    bi = oi;
                }
            }
            if (lane == 0) {
                wv[warp] = bv;
                wi[warp] = bi;
            }
            __syncthreads();
            if (tid == 0) {
                float b = wv[0];
                int i = wi[0];
                for (int w = 1; w < nw; w++) {
                    if (wv[w] > b || (wv[w] == b && wi[w] < i)) {
                        b = wv[w];
                        i = wi[w];
                    }
                }
                chosen[j] = i;
                sel[i] = -DS4_INF;
            }
            __syncthreads();
        }
    }
    __syncthreads();
    if (tid != 0) return;
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
    grid_dep_sync();
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
    grid_dep_sync();
    i64 n = (i64)m * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / cols), c = (int)(i - (i64)r * cols);
        out[i] = x[(i64)idx[r] * cols + c];
    }
}

// dst[idx[i]] += src[i] for i < m rows of `cols`. Atomic: a hash-routing table may name the
// same expert twice for one token, so idx may repeat.
extern "C" __global__ void scatter_add(const float* src, const int* idx, int m, int cols,
                                       float* dst) {
    grid_dep_sync();
    i64 n = (i64)m * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / cols), c = (int)(i - (i64)r * cols);
        atomicAdd(dst + (i64)idx[r] * cols + c, src[i]);
    }
}

// dst[t] = Σ_{j<k} src[slot[t·k + j]] for t < n rows of `cols`, j in routing order: the
// expert outputs of all slots summed per token in a fixed order (no atomics, so a prefill
// gives the same bits every time).
extern "C" __global__ void sum_slots(const float* src, const int* slot, int n, int k, int cols,
                                     float* dst) {
    grid_dep_sync();
    i64 total = (i64)n * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        int t = (int)(i / cols), c = (int)(i - (i64)t * cols);
        float a = 0.0f;
        for (int j = 0; j < k; j++) a += src[(i64)slot[(i64)t * k + j] * cols + c];
        dst[i] = a;
    }
}

// Sets n floats to v (zero-filling outputs that are accumulated into).
extern "C" __global__ void fill(float* x, i64 n, float v) {
    grid_dep_sync();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = v;
}

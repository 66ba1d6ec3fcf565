// Greedy choice of the next token on the device (spec/serving.md §3.3 "T ≤ 0", as
// ds4::sample::greedy_excluding chooses on the host): the first index of the largest value of
// x[0..n), `skip` excluded and NaN never chosen (0 when nothing can be). The choice becomes
// the token of the next one-row batch in place (tokens[0], and pos[0] = pos[last] + 1), so
// the next step's launch need not wait for the host, and goes to slot (pos[last] + 1) % ring
// of `ring`, mapped pinned host memory that the host reads once the step is done.

#define ARGMAX_THREADS 256
#define ARGMAX_NONE 0x7fffffff

// (v, i) replaces (*bv, *bi) when it is larger, or equal at a lower index: the first largest
// value whatever order the candidates meet in. NaN compares false, so it is never taken.
__device__ __forceinline__ void argmax_take(float v, int i, float* bv, int* bi) {
    if (v > *bv || (v == *bv && i < *bi)) {
        *bv = v;
        *bi = i;
    }
}

// The block's best (value, index) into lane 0 of warp 0 (block-cooperative).
__device__ __forceinline__ void argmax_block(float* bv, int* bi) {
    __shared__ float sv[32];
    __shared__ int si[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, *bv, o);
        int oi = __shfl_xor_sync(FULL_MASK, *bi, o);
        argmax_take(ov, oi, bv, bi);
    }
    if (lane == 0) {
        sv[warp] = *bv;
        si[warp] = *bi;
    }
    __syncthreads();
    if (warp == 0) {
        *bv = lane < nw ? sv[lane] : -DS4_INF;
        *bi = lane < nw ? si[lane] : ARGMAX_NONE;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(FULL_MASK, *bv, o);
            int oi = __shfl_xor_sync(FULL_MASK, *bi, o);
            argmax_take(ov, oi, bv, bi);
        }
    }
}

// Grid (B ≤ ARGMAX_THREADS blocks): block b scans slice b of x and writes its best into pv[b],
// pi[b]; the last block to finish (a ticket, which it resets) combines the slices and writes
// the choice. `pos`: the batch's positions, `last` its last row.
extern "C" __global__ void argmax_next(const float* x, int n, int skip, int* tokens, int* pos,
                                       int last, int* ring, int ring_len, float* pv, int* pi,
                                       int* ticket) {
    grid_dep_sync();
    __shared__ int is_last;
    int per = (n + gridDim.x - 1) / gridDim.x;
    int c0 = blockIdx.x * per, c1 = min(n, c0 + per);
    float bv = -DS4_INF;
    int bi = ARGMAX_NONE;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        float v = x[c];
        if (c != skip) argmax_take(v, c, &bv, &bi);
    }
    argmax_block(&bv, &bi);
    if (threadIdx.x == 0) {
        pv[blockIdx.x] = bv;
        pi[blockIdx.x] = bi;
        __threadfence();
        is_last = atomicAdd(ticket, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    bool on = threadIdx.x < gridDim.x;
    bv = on ? __ldcg(pv + threadIdx.x) : -DS4_INF;
    bi = on ? __ldcg(pi + threadIdx.x) : ARGMAX_NONE;
    argmax_block(&bv, &bi);
    if (threadIdx.x == 0) {
        int tok = bi == ARGMAX_NONE ? 0 : bi;
        int p = pos[last] + 1;
        tokens[0] = tok;
        pos[0] = p;
        ((volatile int*)ring)[p % ring_len] = tok;
        *ticket = 0;
        __threadfence_system();
    }
}

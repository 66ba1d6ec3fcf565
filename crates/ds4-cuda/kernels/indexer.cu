// The sparse-attention indexer of ratio-4 layers (spec/model.md §2.4.5).
//
// `idx_scores`: score[t][c] = Σ_h w[t][h]·max(0, q[t][h]·K[c]) for the visible rows c of row
// t (grid rows × ceil(cap/32); a block stages its 32 indexer rows and the row's queries in
// shared memory; a thread owns one row and nh/8 heads, and 8 lanes sum their heads).
// `idx_topk`: per row, the top-k of its scores by an exact radix select on the IEEE bits
// (the order of f32::total_cmp), ties to the lower index, written in ascending index order
// and padded with −1; a row that sees ≤ k rows gets all of them.

#define IDX_TILE 32
#define IDX_DH_MAX 128
#define IDX_NH_MAX 64

extern "C" __global__ void idx_scores(const float* q, const float* wts, const float* krows,
                                      const int* pos, int ratio, int nh, int dh, float* scores,
                                      int cap) {
    grid_dep_sync();
    DYN_SHARED(float, sh);
    float* qs = sh;                          // nh × (dh + 1)
    float* ks = sh + nh * (dh + 1);          // IDX_TILE × (dh + 1)
    int t = blockIdx.x;
    int c0 = blockIdx.y * IDX_TILE;
    int nv = (pos[t] + 1) / ratio;
    if (c0 >= nv) return;
    for (int i = threadIdx.x; i < nh * dh; i += blockDim.x)
        qs[(i / dh) * (dh + 1) + i % dh] = q[(i64)t * nh * dh + i];
    for (int i = threadIdx.x; i < IDX_TILE * dh; i += blockDim.x) {
        int r = i / dh, c = c0 + r;
        ks[r * (dh + 1) + i % dh] = c < nv ? krows[(i64)c * dh + i % dh] : 0.0f;
    }
    __syncthreads();
    int r = threadIdx.x >> 3, hg = threadIdx.x & 7;
    int hpt = nh / 8;
    const float* kr = ks + r * (dh + 1);
    float acc = 0.0f;
    for (int hh = 0; hh < hpt; hh++) {
        int h = hg * hpt + hh;
        const float* qh = qs + h * (dh + 1);
        float d = 0.0f;
        for (int k = 0; k < dh; k++) d += qh[k] * kr[k];
        acc += wts[(i64)t * nh + h] * fmaxf(d, 0.0f);
    }
    acc += __shfl_xor_sync(FULL_MASK, acc, 1);
    acc += __shfl_xor_sync(FULL_MASK, acc, 2);
    acc += __shfl_xor_sync(FULL_MASK, acc, 4);
    int c = c0 + r;
    if (hg == 0 && c < nv) scores[(i64)t * cap + c] = acc;
}

// Order-preserving key of a float: larger float (total order) → larger key.
__device__ __forceinline__ u32 f32_key(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define TOPK_THREADS 1024

// Inclusive prefix sum over the block of one int per thread (TOPK_THREADS threads).
__device__ int block_scan(int v, int* sh) {
    int tid = threadIdx.x;
    __syncthreads();
    sh[tid] = v;
    __syncthreads();
    for (int off = 1; off < TOPK_THREADS; off <<= 1) {
        int add = tid >= off ? sh[tid - off] : 0;
        __syncthreads();
        sh[tid] += add;
        __syncthreads();
    }
    return sh[tid];
}

// sel[t][0..k) = the selected compressed rows of row t. Grid (rows), TOPK_THREADS threads.
extern "C" __global__ void idx_topk(const float* scores, int cap, const int* pos, int ratio,
                                    int k, int* sel) {
    grid_dep_sync();
    __shared__ int hist[256];
    __shared__ int scan[TOPK_THREADS];
    __shared__ u32 s_prefix;
    __shared__ int s_remaining;
    __shared__ int s_base;
    int t = blockIdx.x, tid = threadIdx.x;
    int nv = (pos[t] + 1) / ratio;
    const float* sc = scores + (i64)t * cap;
    int* out = sel + (i64)t * k;
    if (nv <= k) {
        for (int i = tid; i < k; i += TOPK_THREADS) out[i] = i < nv ? i : -1;
        return;
    }
    if (tid == 0) {
        s_prefix = 0;
        s_remaining = k;
    }
    // Radix select, 8 bits a pass from the top: the key of the k-th largest.
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += TOPK_THREADS) hist[i] = 0;
        __syncthreads();
        u32 prefix = s_prefix;
        u32 hmask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (int i = tid; i < nv; i += TOPK_THREADS) {
            u32 key = f32_key(sc[i]);
            if ((key & hmask) == (prefix & hmask)) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int rem = s_remaining, above = 0, d = 255;
            for (; d > 0; d--) {
                if (above + hist[d] >= rem) break;
                above += hist[d];
            }
            s_prefix = prefix | ((u32)d << shift);
            s_remaining = rem - above;
        }
        __syncthreads();
    }
    u32 thr = s_prefix;
    int take_eq = s_remaining;  // keys equal to thr to take, lowest index first
    if (tid == 0) s_base = 0;
    int eq_before = 0;
    for (int c0 = 0; c0 < nv; c0 += TOPK_THREADS) {
        int i = c0 + tid;
        u32 key = i < nv ? f32_key(sc[i]) : 0u;
        int gt = i < nv && key > thr;
        int eq = i < nv && key == thr;
        int eq_incl = block_scan(eq, scan) + eq_before;
        int eq_total = scan[TOPK_THREADS - 1];
        int take = gt || (eq && eq_incl <= take_eq);
        int pos_incl = block_scan(take, scan);
        int base = s_base;
        if (take) out[base + pos_incl - 1] = i;
        __syncthreads();
        if (tid == 0) s_base = base + scan[TOPK_THREADS - 1];
        eq_before += eq_total;
        __syncthreads();
    }
}

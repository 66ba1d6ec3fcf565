// The sparse-attention indexer of ratio-4 layers (spec/model.md §2.4.5).
//
// `idx_scores`: score[t][c] = Σ_h w[t][h]·max(0, q[t][h]·K[c]) for the visible rows c of row
// t (grid rows × ceil(cap / (8·rpw))): a block stages the row's queries and its 8·rpw indexer
// rows in shared memory; a warp owns rpw rows, a lane the heads lane, lane + 32, … of each, and
// the warp sums its lanes. (A thread per row and eight heads left a decode row of 520 visible
// rows 17 blocks, each a chain of 1,024 dependent multiply-adds: 36 µs. Decode takes rpw 1.)
// `idx_topk`: per row, the top-k of its scores by an exact radix select on the IEEE bits
// (the order of f32::total_cmp), ties to the lower index, written in ascending index order
// and padded with −1; a row that sees ≤ k rows gets all of them.

#define IDX_DH_MAX 128
#define IDX_NH_MAX 64

extern "C" __global__ void idx_scores(const float* q, const float* wts, const float* krows,
                                      const int* pos, int ratio, int nh, int dh, float* scores,
                                      int cap, int rpw) {
    grid_dep_sync();
    DYN_SHARED(float, sh);
    float* qs = sh;                          // nh × (dh + 1): lanes read different heads
    float* ks = sh + nh * (dh + 1);          // 8·rpw × dh: every lane reads the same value
    int tile = 8 * rpw;
    int t = blockIdx.x;
    int c0 = blockIdx.y * tile;
    int nv = (pos[t] + 1) / ratio;
    if (c0 >= nv) return;
    for (int i = threadIdx.x; i < nh * dh; i += blockDim.x)
        qs[(i / dh) * (dh + 1) + i % dh] = q[(i64)t * nh * dh + i];
    for (int i = threadIdx.x; i < tile * dh; i += blockDim.x) {
        int c = c0 + i / dh;
        ks[i] = c < nv ? krows[(i64)c * dh + i % dh] : 0.0f;
    }
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int j = 0; j < rpw; j++) {
        int r = warp + 8 * j, c = c0 + r;
        if (c >= nv) break;
        const float* kr = ks + r * dh;
        float acc = 0.0f;
        for (int h = lane; h < nh; h += 32) {
            const float* qh = qs + h * (dh + 1);
            float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
            int k = 0;
            for (; k + 3 < dh; k += 4) {
                d0 = fmaf(qh[k], kr[k], d0);
                d1 = fmaf(qh[k + 1], kr[k + 1], d1);
                d2 = fmaf(qh[k + 2], kr[k + 2], d2);
                d3 = fmaf(qh[k + 3], kr[k + 3], d3);
            }
            for (; k < dh; k++) d0 = fmaf(qh[k], kr[k], d0);  // dh not a multiple of 4
            float d = (d0 + d1) + (d2 + d3);
            acc += wts[(i64)t * nh + h] * fmaxf(d, 0.0f);
        }
        acc = warp_sum(acc);
        if (lane == 0) scores[(i64)t * cap + c] = acc;
    }
}

// idx_scores for one decode row with lanes over the indexer rows: block (t, b) scores rows
// 32b … 32b + 31 of row t, lane l row 32b + l, warp w the heads w, w + 8, … (at most
// IDXR_HPW of them); the warps' sums meet in shared memory in warp order. The queries and the
// 32 rows are staged in shared memory once a block; each step loads a float4 of the lane's row
// and of each of its heads' queries (the same for the whole warp: one broadcast) for 4·heads
// multiply-adds, in the four running sums a head of idx_scores, so that the FMA units, not the
// shared-memory loads, set the pace. (idx_scores' lanes over heads load a query and a key value
// for every multiply-add, and stage the 32 KB of queries for every 8 rows: at 32k tokens,
// 8,192 visible rows, 1,024 blocks of it.) dh a multiple of 4.
#define IDXR_ROWS 32
#define IDXR_WARPS 8
#define IDXR_HPW (IDX_NH_MAX / IDXR_WARPS)
extern "C" __global__ void idx_scores_rows(const float* q, const float* wts, const float* krows,
                                           const int* pos, int ratio, int nh, int dh,
                                           float* scores, int cap) {
    grid_dep_sync();
    DYN_SHARED(float, sh);
    __shared__ float part[IDXR_WARPS][IDXR_ROWS];
    int ks_stride = dh + 4;                    // float4 loads of 8 lanes fall in distinct banks
    float* qs = sh;                            // nh × dh
    float* ks = sh + nh * dh;                  // IDXR_ROWS × (dh + 4)
    int t = blockIdx.x, c0 = blockIdx.y * IDXR_ROWS;
    int nv = (pos[t] + 1) / ratio;
    if (c0 >= nv) return;
    const float4* q4 = (const float4*)(q + (i64)t * nh * dh);
    for (int i = threadIdx.x; i < nh * dh / 4; i += blockDim.x) ((float4*)qs)[i] = q4[i];
    int d4 = dh / 4;
    for (int i = threadIdx.x; i < IDXR_ROWS * d4; i += blockDim.x) {
        int r = i / d4, k = i - r * d4, c = c0 + r;
        float4 v = c < nv ? *(const float4*)(krows + (i64)c * dh + 4 * k) : make_float4(0, 0, 0, 0);
        *(float4*)(ks + r * ks_stride + 4 * k) = v;
    }
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float d[IDXR_HPW][4];
#pragma unroll
    for (int j = 0; j < IDXR_HPW; j++) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0.0f;
    const float* kr = ks + lane * ks_stride;
    for (int k = 0; k < dh; k += 4) {
        float4 kv = *(const float4*)(kr + k);
#pragma unroll
        for (int j = 0; j < IDXR_HPW; j++) {
            int h = warp + IDXR_WARPS * j;
            if (h < nh) {
                float4 qv = *(const float4*)(qs + h * dh + k);
                d[j][0] = fmaf(qv.x, kv.x, d[j][0]);
                d[j][1] = fmaf(qv.y, kv.y, d[j][1]);
                d[j][2] = fmaf(qv.z, kv.z, d[j][2]);
                d[j][3] = fmaf(qv.w, kv.w, d[j][3]);
            }
        }
    }
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < IDXR_HPW; j++) {
        int h = warp + IDXR_WARPS * j;
        if (h < nh) acc += wts[(i64)t * nh + h] * fmaxf((d[j][0] + d[j][1]) + (d[j][2] + d[j][3]), 0.0f);
    }
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && c0 + lane < nv) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < IDXR_WARPS; w++) s += part[w][lane];
        scores[(i64)t * cap + c0 + lane] = s;
    }
}

// Order-preserving key of a float: larger float (total order) → larger key.
__device__ __forceinline__ u32 f32_key(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define TOPK_THREADS 1024

// Inclusive prefix sum of v over the lanes of a warp.
__device__ __forceinline__ int warp_scan(int v) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        int y = __shfl_up_sync(FULL_MASK, v, off);
        if (lane >= off) v += y;
    }
    return v;
}

// Inclusive prefix sum over the block of one int per thread (TOPK_THREADS threads: 32 warps)
// and the block's total: the warps scan, then warp 0 scans their totals (`sh`: 32 ints).
__device__ int block_scan(int v, int* sh, int* total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int x = warp_scan(v);
    __syncthreads();  // the previous call's readers are done with sh
    if (lane == 31) sh[w] = x;
    __syncthreads();
    if (w == 0) sh[lane] = warp_scan(sh[lane]);
    __syncthreads();
    *total = sh[31];
    return x + (w > 0 ? sh[w - 1] : 0);
}

// Keys a top-k thread holds in registers (key i = tid + j·TOPK_THREADS, j < TOPK_KPT): up to
// TOPK_THREADS·TOPK_KPT visible rows (64k tokens at ratio 4) the radix passes read no scores
// again and the selection is written from bitmaps; beyond that the rest come from memory.
#define TOPK_KPT 16
#define TOPK_WORDS (TOPK_THREADS * TOPK_KPT / 32)

// sel[t][0..k) = the selected compressed rows of row t. Grid (rows), TOPK_THREADS threads.
extern "C" __global__ void idx_topk(const float* scores, int cap, const int* pos, int ratio,
                                    int k, int* sel) {
    grid_dep_sync();
    __shared__ int hist[256];
    __shared__ int scan[32];
    __shared__ u32 s_prefix;
    __shared__ int s_remaining;
    __shared__ int s_base;
    __shared__ u32 gtm[TOPK_WORDS], eqm[TOPK_WORDS];
    int t = blockIdx.x, tid = threadIdx.x;
    int nv = (pos[t] + 1) / ratio;
    const float* sc = scores + (i64)t * cap;
    int* out = sel + (i64)t * k;
    if (nv <= k) {
        for (int i = tid; i < k; i += TOPK_THREADS) out[i] = i < nv ? i : -1;
        return;
    }
    u32 kr[TOPK_KPT];
#pragma unroll
    for (int j = 0; j < TOPK_KPT; j++) {
        int i = tid + j * TOPK_THREADS;
        kr[j] = i < nv ? f32_key(sc[i]) : 0u;
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
#pragma unroll
        for (int j = 0; j < TOPK_KPT; j++) {
            u32 key = kr[j];
            if (tid + j * TOPK_THREADS < nv && (key & hmask) == (prefix & hmask))
                atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        for (int i = tid + TOPK_KPT * TOPK_THREADS; i < nv; i += TOPK_THREADS) {
            u32 key = f32_key(sc[i]);
            if ((key & hmask) == (prefix & hmask)) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        // The digit of the k-th largest: warp 0, lane l holding digits 255 − 8l … 248 − 8l,
        // the keys above each lane's digits from a scan of the lanes' counts.
        if (tid < 32) {
            int rem = s_remaining, top = 255 - 8 * tid, cnt[8], n8 = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                cnt[j] = hist[top - j];
                n8 += cnt[j];
            }
            int incl = warp_scan(n8), above = incl - n8;
            if (above < rem && rem <= incl) {
                int d = top - 7;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    if (above + cnt[j] >= rem) {
                        d = top - j;
                        break;
                    }
                    above += cnt[j];
                }
                s_prefix = prefix | ((u32)d << shift);
                s_remaining = rem - above;
            }
        }
        __syncthreads();
    }
    u32 thr = s_prefix;
    int take_eq = s_remaining;  // keys equal to thr to take, lowest index first
    if (nv <= TOPK_THREADS * TOPK_KPT) {
        // The keys above and at the threshold as bitmaps (a ballot a warp and register), then
        // each word's 32 rows by one thread: a scan of its (above, equal) counts, packed in one
        // int, gives where its rows go and how many of its equal keys are still to take.
        int lane = tid & 31, warp = tid >> 5, words = (nv + 31) / 32;
#pragma unroll
        for (int j = 0; j < TOPK_KPT; j++) {
            int i = tid + j * TOPK_THREADS;
            u32 gt = __ballot_sync(FULL_MASK, i < nv && kr[j] > thr);
            u32 eq = __ballot_sync(FULL_MASK, i < nv && kr[j] == thr);
            if (lane == 0) {
                gtm[j * (TOPK_THREADS / 32) + warp] = gt;
                eqm[j * (TOPK_THREADS / 32) + warp] = eq;
            }
        }
        __syncthreads();
        u32 g = tid < words ? gtm[tid] : 0u, e = tid < words ? eqm[tid] : 0u;
        int packed = (__popc(g) << 16) | __popc(e), total;
        int excl = block_scan(packed, scan, &total) - packed;
        int gt_before = excl >> 16, eq_before = excl & 0xffff;
        int want = min(max(take_eq - eq_before, 0), __popc(e));
        u32 take = g;
        for (u32 m = e; want > 0; want--) {
            u32 b = m & (0u - m);  // the lowest equal key left
            take |= b;
            m ^= b;
        }
        int o = gt_before + min(eq_before, take_eq);
        for (u32 m = take; m; m &= m - 1) out[o++] = tid * 32 + __ffs((int)m) - 1;
        return;
    }
    if (tid == 0) s_base = 0;
    int eq_before = 0;
    for (int c0 = 0; c0 < nv; c0 += TOPK_THREADS) {
        int i = c0 + tid;
        u32 key = i < nv ? f32_key(sc[i]) : 0u;
        int gt = i < nv && key > thr;
        int eq = i < nv && key == thr;
        int eq_total, taken;
        int eq_incl = block_scan(eq, scan, &eq_total) + eq_before;
        int take = gt || (eq && eq_incl <= take_eq);
        int pos_incl = block_scan(take, scan, &taken);
        int base = s_base;
        if (take) out[base + pos_incl - 1] = i;
        __syncthreads();
        if (tid == 0) s_base = base + taken;
        eq_before += eq_total;
        __syncthreads();
    }
}

// The raw KV window and sink attention (spec/model.md §2.4.3, §2.4.6).
//
// The raw window of a layer is a ring of `ring` rows: position p lives in row p % ring, and the
// ring is longer than the window plus a chunk, so a chunk's rows never overwrite rows its
// earlier tokens still see. Compressed rows live at their index.
//
// Attention is split in two launches. `attn_partial` (grid rows × head groups × splits, 8
// warps, one head per warp) walks a slice of the row's visible rows — its raw window, oldest
// first, then its compressed rows (all visible ones, or the indexer's selection) — in tiles
// staged in shared memory, keeping a running softmax (max, sum, weighted values) per head that
// is rescaled once per tile: a tile's 16 scores are reduced together (a reduce-scatter across
// the warp), so a row costs its two 512-wide dot products and little else.
// `attn_combine` merges the slices with the head's sink logit in the denominator (spec
// pitfall 9) and writes the normalised output. Positions come from `pos` in device memory, so
// one recorded decode step serves every position.

#define ATT_TILE 16
#define ATT_HD_MAX 512
#define ATT_WARPS 8

// ring[pos[t] % ring_rows] = kv[t]. Grid (rows).
extern "C" __global__ void raw_push(const float* kv, int hd, const int* pos, float* ring,
                                    int ring_rows) {
    grid_dep_sync();
    int t = blockIdx.x;
    float* dst = ring + (i64)(pos[t] % ring_rows) * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) dst[c] = kv[(i64)t * hd + c];
}

// Row i of the visible list of a token at position p: raw rows lo..p first, then compressed.
__device__ __forceinline__ const float* att_row(int i, int p, int lo, const float* ring,
                                                int ring_rows, const float* comp, int hd,
                                                const int* sel_t, int nvis) {
    int nr = p - lo + 1;
    if (i < nr) return ring + (i64)((lo + i) % ring_rows) * hd;
    int j = i - nr;
    int c = sel_t ? sel_t[j] : j;
    if (c < 0 || c >= nvis) return 0;
    return comp + (i64)c * hd;
}

// One step of the tile's reduce-scatter: lanes with bit `o` set keep values HALF..2·HALF−1 (in
// d[0..HALF)), the others 0..HALF−1, each adding its partner's copy (ATT_TILE must be 16).
template <int HALF>
__device__ __forceinline__ void att_reduce_step(float* d, int lane, int o) {
    bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < HALF; i++) {
        float send = upper ? d[i] : d[i + HALF];
        float keep = upper ? d[i + HALF] : d[i];
        d[i] = keep + __shfl_xor_sync(FULL_MASK, send, o);
    }
}

// part[((t·nh + h)·splits + s)·(hd + 2)] = (acc[hd], m, l) of head h over slice s of row t's
// visible rows. sel: [rows × topk] selection or null (then the first visible(p) compressed rows).
extern "C" __global__ void attn_partial(const float* q, int nh, int hd, const float* ring,
                                        int ring_rows, int n_swa, const float* comp, int ratio,
                                        const int* sel, int topk, const int* pos, int splits,
                                        float scale, float* part) {
    grid_dep_sync();
    __shared__ float tile[ATT_TILE * ATT_HD_MAX];
    __shared__ int valid[ATT_TILE];
    int t = blockIdx.x, s = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y * ATT_WARPS + warp;
    int p = pos[t];
    int lo = max(0, p - n_swa + 1);
    int nvis = ratio > 0 ? (p + 1) / ratio : 0;
    const int* sel_t = sel ? sel + (i64)t * topk : 0;
    int total = (p - lo + 1) + (sel ? topk : nvis);
    int per = (total + splits - 1) / splits;
    int i0 = s * per, i1 = min(total, i0 + per);
    int nj = hd / 32;
    float qv[ATT_HD_MAX / 32], acc[ATT_HD_MAX / 32];
    const float* qh = q + ((i64)t * nh + (h < nh ? h : 0)) * hd;
#pragma unroll
    for (int j = 0; j < ATT_HD_MAX / 32; j++) {
        qv[j] = j < nj ? qh[lane + 32 * j] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -DS4_INF, l = 0.0f;
    for (int b = i0; b < i1; b += ATT_TILE) {
        int nt = min(ATT_TILE, i1 - b);
        __syncthreads();
        for (int r = warp; r < nt; r += ATT_WARPS) {
            const float* src = att_row(b + r, p, lo, ring, ring_rows, comp, hd, sel_t, nvis);
            if (lane == 0) valid[r] = src != 0;
            for (int c = lane; c < hd; c += 32) tile[r * hd + c] = src ? src[c] : 0.0f;
        }
        __syncthreads();
        if (h < nh) {
            // Scores of the tile's rows: each lane's partial dots, then a reduce-scatter
            // butterfly (16 shuffles for 16 rows) after which lanes 2r and 2r + 1 hold row r's.
            float d[ATT_TILE];
#pragma unroll
            for (int r = 0; r < ATT_TILE; r++) {
                float a = 0.0f;
                if (r < nt) {
                    const float* row = tile + r * hd;
#pragma unroll
                    for (int j = 0; j < ATT_HD_MAX / 32; j++)
                        if (j < nj) a += qv[j] * row[lane + 32 * j];
                }
                d[r] = a;
            }
            att_reduce_step<8>(d, lane, 16);
            att_reduce_step<4>(d, lane, 8);
            att_reduce_step<2>(d, lane, 4);
            att_reduce_step<1>(d, lane, 2);
            d[0] += __shfl_xor_sync(FULL_MASK, d[0], 1);
            int my = (lane >> 1) & (ATT_TILE - 1);
            bool ok = my < nt && valid[my];
            float sc = ok ? d[0] * scale : -DS4_INF;
            float mn = fmaxf(m, warp_max(sc));
            if (mn > -DS4_INF) {
                // One rescale per tile; probabilities of the tile's rows broadcast from lane 2r.
                float corr = expf(m - mn);
                float pr = ok ? expf(sc - mn) : 0.0f;
                l = l * corr + warp_sum((lane & 1) ? 0.0f : pr);
#pragma unroll
                for (int j = 0; j < ATT_HD_MAX / 32; j++) acc[j] *= corr;
                for (int r = 0; r < nt; r++) {
                    float pj = __shfl_sync(FULL_MASK, pr, 2 * r);
                    const float* row = tile + r * hd;
#pragma unroll
                    for (int j = 0; j < ATT_HD_MAX / 32; j++)
                        if (j < nj) acc[j] += pj * row[lane + 32 * j];
                }
                m = mn;
            }
        }
    }
    if (h >= nh) return;
    float* out = part + (((i64)t * nh + h) * splits + s) * (hd + 2);
#pragma unroll
    for (int j = 0; j < ATT_HD_MAX / 32; j++)
        if (j < nj) out[lane + 32 * j] = acc[j];
    if (lane == 0) {
        out[hd] = m;
        out[hd + 1] = l;
    }
}

// out[t][h] = (Σ_s acc_s·e^{m_s − M}) / (e^{sink_h − M} + Σ_s l_s·e^{m_s − M}),
// M = max(sink_h, m_s). Grid (rows, nh).
extern "C" __global__ void attn_combine(const float* part, const float* sinks, int nh, int hd,
                                        int splits, float* out) {
    grid_dep_sync();
    int t = blockIdx.x, h = blockIdx.y;
    const float* pp = part + ((i64)t * nh + h) * splits * (hd + 2);
    float sink = sinks[h];
    float mx = sink;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, pp[s * (hd + 2) + hd]);
    float den = expf(sink - mx);
    for (int s = 0; s < splits; s++) {
        float ms = pp[s * (hd + 2) + hd];
        if (ms > -DS4_INF) den += pp[s * (hd + 2) + hd + 1] * expf(ms - mx);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; s++) {
            float ms = pp[s * (hd + 2) + hd];
            if (ms > -DS4_INF) a += pp[s * (hd + 2) + d] * expf(ms - mx);
        }
        out[((i64)t * nh + h) * hd + d] = a / den;
    }
}

// The raw KV window and sink attention (spec/model.md §2.4.3, §2.4.6).
//
// The raw window of a layer is a ring of `ring` rows: position p lives in row p % ring, and the
// ring is longer than the window plus a chunk, so a chunk's rows never overwrite rows its
// earlier tokens still see. Compressed rows live at their index.
//
// Attention is split in two launches. `attn_partial` (grid rows × head groups × splits, 8
// warps, one head per warp) walks a slice of the row's visible rows — its raw window, oldest
// first, then its compressed rows (all visible ones, or the indexer's selection) — in tiles
// staged in shared memory, keeping a running softmax (max, sum, weighted values) per head.
// `attn_combine` merges the slices with the head's sink logit in the denominator (spec
// pitfall 9) and writes the normalised output. Positions come from `pos` in device memory, so
// one recorded decode step serves every position.

#define ATT_TILE 16
#define ATT_HD_MAX 512
#define ATT_WARPS 8

// ring[pos[t] % ring_rows] = kv[t]. Grid (rows).
extern "C" __global__ void raw_push(const float* kv, int hd, const int* pos, float* ring,
                                    int ring_rows) {
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

// part[((t·nh + h)·splits + s)·(hd + 2)] = (acc[hd], m, l) of head h over slice s of row t's
// visible rows. sel: [rows × topk] selection or null (then the first visible(p) compressed rows).
extern "C" __global__ void attn_partial(const float* q, int nh, int hd, const float* ring,
                                        int ring_rows, int n_swa, const float* comp, int ratio,
                                        const int* sel, int topk, const int* pos, int splits,
                                        float scale, float* part) {
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
            for (int r = 0; r < nt; r++) {
                if (!valid[r]) continue;
                const float* row = tile + r * hd;
                float d = 0.0f;
#pragma unroll
                for (int j = 0; j < ATT_HD_MAX / 32; j++)
                    if (j < nj) d += qv[j] * row[lane + 32 * j];
                float sc = warp_sum(d) * scale;
                float mn = fmaxf(m, sc);
                float corr = expf(m - mn), pr = expf(sc - mn);
                l = l * corr + pr;
#pragma unroll
                for (int j = 0; j < ATT_HD_MAX / 32; j++)
                    if (j < nj) acc[j] = acc[j] * corr + pr * row[lane + 32 * j];
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

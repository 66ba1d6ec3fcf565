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
// Most slices a row's attention is split into (CudaOptions::attn_splits is clamped to it).
#define ATT_SPLITS_MAX 64

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
// M = max(sink_h, m_s), then the inverse RoPE of the head's trailing dims (spec §2.4.7), and,
// when q is given (a one-row decode step), the output's three-stage
// 8-bit planes for the grouped output projection that reads it next: the row as groups of
// `gw` columns, group g's planes at q + 3·gw·g and its scales at d + gw/32·g, as quant_q8 of
// the row's groups writes them. The values are those of attn_combine, rope and quant_q8 run
// one after the other, bit for bit, in one launch. Grid (rows, nh).
extern "C" __global__ void attn_combine(const float* part, const float* sinks, int nh, int hd,
                                        int splits, float* out, const int* pos, RopeTab tab,
                                        i8* q, float* d, int gw) {
    grid_dep_sync();
    // Every load of the slices is issued before anything waits: each thread's values of its
    // first two columns in the first ACB_SLICES slices together with the slices' (m, l) (a loop
    // that loaded one slice's value per step waited on L2 once per slice: 12.6 µs a decode
    // launch; values, then weights, then the head through global memory: ~9 µs). The weights
    // e^{m_s − M} are a lane a slice; the head is formed, rotated back and quantised in shared
    // memory and written once. Sums in slice order, as before.
    __shared__ float msh[ATT_SPLITS_MAX], lsh[ATT_SPLITS_MAX], esh[ATT_SPLITS_MAX], den_sh;
    __shared__ float hsh[ATT_HD_MAX];
    int t = blockIdx.x, h = blockIdx.y, nt = blockDim.x;
    const float* pp = part + ((i64)t * nh + h) * splits * (hd + 2);
    const int n0 = 16;  // slices whose values are loaded with the weights
    int c0 = threadIdx.x, c1 = threadIdx.x + nt;
    float v0[n0], v1[n0];
#pragma unroll
    for (int j = 0; j < n0; j++) {
        v0[j] = j < splits && c0 < hd ? pp[j * (hd + 2) + c0] : 0.0f;
        v1[j] = j < splits && c1 < hd ? pp[j * (hd + 2) + c1] : 0.0f;
    }
    for (int s = threadIdx.x; s < splits; s += nt) {
        msh[s] = pp[s * (hd + 2) + hd];
        lsh[s] = pp[s * (hd + 2) + hd + 1];
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        float sink = sinks[h], mx = sink;
        for (int s = threadIdx.x; s < splits; s += 32) mx = fmaxf(mx, msh[s]);
        mx = warp_max(mx);
        for (int s = threadIdx.x; s < splits; s += 32) {
            float ms = msh[s];
            esh[s] = ms > -DS4_INF ? expf(ms - mx) : 0.0f;
        }
        __syncwarp();
        if (threadIdx.x == 0) {
            float den = expf(sink - mx);
            for (int s = 0; s < splits; s++)
                if (msh[s] > -DS4_INF) den += lsh[s] * esh[s];
            den_sh = den;
        }
    }
    __syncthreads();
    float den = den_sh;
    for (int c = threadIdx.x, i = 0; c < hd; c += nt, i++) {
        float a = 0.0f;
        if (i < 2) {
#pragma unroll
            for (int j = 0; j < n0; j++)
                if (j < splits && msh[j] > -DS4_INF) a += (i == 0 ? v0[j] : v1[j]) * esh[j];
        } else {
            for (int j = 0; j < n0 && j < splits; j++)
                if (msh[j] > -DS4_INF) a += pp[j * (hd + 2) + c] * esh[j];
        }
        for (int s0 = n0; s0 < splits; s0 += 16) {
            float v[16];
#pragma unroll
            for (int j = 0; j < 16; j++)
                if (s0 + j < splits) v[j] = pp[(s0 + j) * (hd + 2) + c];
#pragma unroll
            for (int j = 0; j < 16; j++)
                if (s0 + j < splits && msh[s0 + j] > -DS4_INF) a += v[j] * esh[s0 + j];
        }
        hsh[c] = a / den;
    }
    __syncthreads();
    rope_head(hsh, hd, pos[t], tab, 1);
    __syncthreads();
    float* head = out + ((i64)t * nh + h) * hd;
    for (int c = threadIdx.x; c < hd; c += nt) head[c] = hsh[c];
    if (!q) return;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int b = warp; b < hd / 32; b += nt >> 5) {
        int c = h * hd + b * 32, g = c / gw, cc = c - g * gw;
        q8_store_lane(hsh[b * 32 + lane], q + (i64)g * 3 * gw + cc + lane, gw,
                      d + (i64)g * (gw / 32) + cc / 32);
    }
}

// Sink attention of prefill chunks on the tensor cores, for rows stored f16-exact (the default
// precision rounds every raw and compressed row to f16, so K = V converts to f16 without loss).
// A block owns one row t and 16 of its heads (an mma tile's M); its 4 warps split head_dim in
// quarters. Per tile of AM_ROWS visible rows, warp w stages its quarter of the rows in f16
// (shared memory, its own slice: no block barrier) and computes the partial scores
// Q[:, w-quarter]·K[:, w-quarter]ᵀ; the four partials are summed through shared memory in a
// fixed order, so every warp holds the same scores, runs the same online softmax, and adds
// P·V for its quarter of the output. q and P are split into f16 pairs (matmul.cu's split_f16:
// hi + lo, about 2^-22 of each value), each product two mma, so the result keeps f32 accuracy
// as attn_partial's does. The sink joins the denominator at the end, as attn_combine's formula with one slice.
// hd a multiple of 64, ≤ ATT_HD_MAX. Grid (rows, ceil(nh / 16)); 128 threads.
#define AM_ROWS 32
#define AM_DW_MAX (ATT_HD_MAX / 4)
#define AM_LD (AM_DW_MAX + 8)  // f16 row pitch: 16 bytes of padding spread rows over the banks

__device__ __forceinline__ u32 am_pk(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }


extern "C" __global__ void attn_mma(const float* q, int nh, int hd, const float* ring,
                                    int ring_rows, int n_swa, const float* comp, int ratio,
                                    const int* sel, int topk, const int* pos, float scale,
                                    const float* sinks, float* out) {
    grid_dep_sync();
    __align__(16) __shared__ u16 Ks[4][AM_ROWS * AM_LD];
    __shared__ float Sp[4][4][4][32];  // [warp][n-tile][register][lane]
    __shared__ const float* rowp[4][AM_ROWS];
    int t = blockIdx.x, h0 = blockIdx.y * 16;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    int dw = hd / 4, d0 = warp * dw, nk = dw / 16, nn = dw / 8;
    int p = pos[t];
    int lo = max(0, p - n_swa + 1);
    int nvis = ratio > 0 ? (p + 1) / ratio : 0;
    const int* sel_t = sel ? sel + (i64)t * topk : 0;
    int total = (p - lo + 1) + (sel ? topk : nvis);

    // The warp's quarter of q for heads h0 + g and h0 + g + 8, as A fragments of f16 pairs.
    u32 qh[AM_DW_MAX / 16][4], ql[AM_DW_MAX / 16][4];
#pragma unroll
    for (int k = 0; k < AM_DW_MAX / 16; k++) {
        if (k >= nk) break;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int hh = h0 + g + ((i & 1) ? 8 : 0);
            int c = d0 + 16 * k + 2 * tq + ((i & 2) ? 8 : 0);
            float2 v = make_float2(0.0f, 0.0f);
            if (hh < nh) v = *(const float2*)(q + ((i64)t * nh + hh) * hd + c);
            u16 a, b, c2, d;
            split_f16(v.x, &a, &b);
            split_f16(v.y, &c2, &d);
            qh[k][i] = am_pk(a, c2);
            ql[k][i] = am_pk(b, d);
        }
    }
    float acc[AM_DW_MAX / 8][4];
#pragma unroll
    for (int n = 0; n < AM_DW_MAX / 8; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[n][i] = 0.0f;
    float m[2] = {-DS4_INF, -DS4_INF}, l[2] = {0.0f, 0.0f};
    u16* ks = Ks[warp];

    for (int b = 0; b < total; b += AM_ROWS) {
        // Stage the tile's rows (this warp's columns) as f16; missing rows are zero and masked.
        rowp[warp][lane] =
            b + lane < total ? att_row(b + lane, p, lo, ring, ring_rows, comp, hd, sel_t, nvis) : 0;
        __syncwarp();
        int per = dw / 4;  // float4s of a row's quarter
        for (int e = lane; e < AM_ROWS * per; e += 32) {
            int r = e / per, c4 = e - r * per;
            const float* src = rowp[warp][r];
            float4 v = src ? *(const float4*)(src + d0 + 4 * c4) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            u32* dst = (u32*)(ks + r * AM_LD + 4 * c4);
            dst[0] = am_pk(f2h(v.x), f2h(v.y));
            dst[1] = am_pk(f2h(v.z), f2h(v.w));
        }
        __syncwarp();
        // Partial scores of the quarter: S[16 heads × 32 rows], four n-tiles of 8 rows.
        float s[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int i = 0; i < 4; i++) s[n][i] = 0.0f;
            const u16* kr = ks + (n * 8 + g) * AM_LD + 2 * tq;
#pragma unroll
            for (int k = 0; k < AM_DW_MAX / 16; k++) {
                if (k >= nk) break;
                u32 b0 = *(const u32*)(kr + 16 * k), b1 = *(const u32*)(kr + 16 * k + 8);
                mma_16816(s[n], qh[k], b0, b1);
                mma_16816(s[n], ql[k], b0, b1);
            }
        }
        __syncthreads();  // the previous tile's partials are read
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) Sp[warp][n][i][lane] = s[n][i];
        __syncthreads();
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                s[n][i] = ((Sp[0][n][i][lane] + Sp[1][n][i][lane]) + Sp[2][n][i][lane]) +
                          Sp[3][n][i][lane];
        // Online softmax of head rows g (registers 0, 1) and g + 8 (2, 3).
        float corr[2];
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float tm = -DS4_INF;
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    int r = n * 8 + 2 * tq + j;
                    float v = rowp[warp][r] ? s[n][2 * hr + j] * scale : -DS4_INF;
                    s[n][2 * hr + j] = v;
                    tm = fmaxf(tm, v);
                }
            tm = fmaxf(tm, __shfl_xor_sync(FULL_MASK, tm, 1));
            tm = fmaxf(tm, __shfl_xor_sync(FULL_MASK, tm, 2));
            float mn = fmaxf(m[hr], tm);
            float ps = 0.0f;
            corr[hr] = mn > -DS4_INF ? expf(m[hr] - mn) : 1.0f;
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    float v = s[n][2 * hr + j];
                    float pr = v > -DS4_INF ? expf(v - mn) : 0.0f;
                    s[n][2 * hr + j] = pr;
                    ps += pr;
                }
            ps += __shfl_xor_sync(FULL_MASK, ps, 1);
            ps += __shfl_xor_sync(FULL_MASK, ps, 2);
            l[hr] = l[hr] * corr[hr] + ps;
            m[hr] = mn;
        }
#pragma unroll
        for (int n = 0; n < AM_DW_MAX / 8; n++) {
            acc[n][0] *= corr[0];
            acc[n][1] *= corr[0];
            acc[n][2] *= corr[1];
            acc[n][3] *= corr[1];
        }
        // O[:, quarter] += P·V: the score fragments are P's A fragments (k = rows).
#pragma unroll
        for (int kk = 0; kk < AM_ROWS / 16; kk++) {
            u32 ph[4], pl[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float* sv = s[2 * kk + (i >> 1)] + 2 * (i & 1);
                u16 a, b, c2, d;
                split_f16(sv[0], &a, &b);
                split_f16(sv[1], &c2, &d);
                ph[i] = am_pk(a, c2);
                pl[i] = am_pk(b, d);
            }
            const u16* v0 = ks + (16 * kk + 2 * tq) * AM_LD + g;
#pragma unroll
            for (int n = 0; n < AM_DW_MAX / 8; n++) {
                if (n >= nn) break;
                const u16* vr = v0 + 8 * n;
                u32 b0 = am_pk(vr[0], vr[AM_LD]);
                u32 b1 = am_pk(vr[8 * AM_LD], vr[9 * AM_LD]);
                mma_16816(acc[n], ph, b0, b1);
                mma_16816(acc[n], pl, b0, b1);
            }
        }
        __syncwarp();  // the tile's rows are read before the next overwrites them
    }
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int hh = h0 + g + 8 * hr;
        if (hh >= nh) continue;
        float sink = sinks[hh], mx = fmaxf(sink, m[hr]);
        float w = m[hr] > -DS4_INF ? expf(m[hr] - mx) : 0.0f;
        float den = expf(sink - mx) + l[hr] * w;
        float* o = out + ((i64)t * nh + hh) * hd + d0;
#pragma unroll
        for (int n = 0; n < AM_DW_MAX / 8; n++) {
            if (n >= nn) break;
            float2 v = make_float2(acc[n][2 * hr] * w / den, acc[n][2 * hr + 1] * w / den);
            *(float2*)(o + 8 * n + 2 * tq) = v;
        }
    }
}

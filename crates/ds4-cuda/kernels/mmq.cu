// Routed-expert products of prefill chunks on the tensor cores (spec/model.md §2.5): every
// expert of a layer in one launch per matrix, straight from the quantised weights.
//
// The rows routed to each expert are laid out as consecutive "slots" (group_slots, on the
// device); a block owns MQ_ROWS weight rows of one expert and up to MQ_TOK of its slots (a
// "tile" of group_slots' list). One kernel per weight type (mq_q8_0, mq_iq2_xxs, mq_q2_k,
// mq_q4_k), so the dequantisation and the scale folds are fixed at compile time. Weights are dequantised into shared memory as small integers — exact in f16:
// Q8_0 quants, IQ2_XXS signed grid values, the 2- and 4-bit K-quant levels — with the block's
// float scale (and K-quant minimum) kept beside them per 16 columns. Activations come as f16
// pairs (hi + lo ≈ x to about 2^-22, from to_f16), so each 16-column step is two mma products,
// W·x_hi + W·x_lo, whose f32 sum is folded into the f32 accumulator with the 16 columns' scale:
//   y += scale·Σ q·x − min·Σ x.
// No weight is rounded (unlike an f16 GEMM of dequantised weights), so the result is the
// f32 product to the activations' ~2^-22, which the default precision needs (see matmul.cu).

#define MQ_ROWS 64   // weight rows per block: 4 warps × 16
#define MQ_TOK 64    // slots per block: 8 mma tiles of 8
#define MQ_K 64      // columns per shared-memory step
#define MQ_LD (MQ_K + 8)  // f16 row pitch: 16 bytes of padding spread the rows over the banks

// Small integers as f16 pairs without conversions: a byte b placed under the exponent byte 0x64
// is the f16 1024 + b (10 mantissa bits), so one byte permute and one f16x2 subtraction of
// 1024 (or 1024 + 128 for offset-binary signed bytes) give two exact f16 integers. Bytes 0, 1
// of u (`lo`) or 2, 3 (`hi`); the lower byte in the lower half.
__device__ __forceinline__ u32 mq_pair_lo(u32 u, u32 bias) { return h2_sub(__byte_perm(u, 0x64646464u, 0x5140), bias); }
__device__ __forceinline__ u32 mq_pair_hi(u32 u, u32 bias) { return h2_sub(__byte_perm(u, 0x64646464u, 0x7362), bias); }
#define MQ_U8 0x64006400u  // 1024 in both halves: unsigned bytes
#define MQ_I8 0x64806480u  // 1152: signed bytes, flipped to offset binary first

// The IQ2_XXS grid as f16 pairs (4 words an entry) and the sign masks of the 128 stored sign
// patterns (ksigns: the eighth bit from the parity), bit 15 / 31 of word k for weights 2k, 2k + 1.
struct MqIq2Tab {
    uint4 grid[256];
    uint4 sign[128];
};

__device__ void mq_iq2_tables(MqIq2Tab* t) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        u64 g = iq2xxs_grid[i];
        uint4 v;
        v.x = mq_pair_lo((u32)g, MQ_U8);
        v.y = mq_pair_hi((u32)g, MQ_U8);
        v.z = mq_pair_lo((u32)(g >> 32), MQ_U8);
        v.w = mq_pair_hi((u32)(g >> 32), MQ_U8);
        t->grid[i] = v;
    }
    for (int i = threadIdx.x; i < 128; i += blockDim.x) {
        u32 s = i | ((u32)(__popc(i) & 1) << 7), m[4];
#pragma unroll
        for (int k = 0; k < 4; k++) m[k] = (((s >> (2 * k)) & 1u) << 15) | (((s >> (2 * k + 1)) & 1u) << 31);
        uint4 v;
        v.x = m[0];
        v.y = m[1];
        v.z = m[2];
        v.w = m[3];
        t->sign[i] = v;
    }
}

// Columns c0..c0+31 of global weight row `grow` of a TY matrix as exact f16 integers, packed in
// pairs into q[0..15], and the two 16-column blocks' (scale, min) such that w = scale·q − min
// (spec §4 formulas). The quants are read with vector loads.
template <int TY>
__device__ __forceinline__ void mq_deq32(const DW& w, i64 grow, int c0, const MqIq2Tab* tab, u32* q,
                                         float* sc, float* mn) {
    if (TY == TY_Q8_0) {
        const uint4* p = (const uint4*)(w.a + grow * w.cols + c0);
        float d = h2f(ld_u16(w.b + (grow * (w.cols / 32) + c0 / 32) * 2));
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 v = p[h];
            u32 u[4] = {v.x ^ 0x80808080u, v.y ^ 0x80808080u, v.z ^ 0x80808080u, v.w ^ 0x80808080u};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                q[8 * h + 2 * k] = mq_pair_lo(u[k], MQ_I8);
                q[8 * h + 2 * k + 1] = mq_pair_hi(u[k], MQ_I8);
            }
        }
        sc[0] = sc[1] = d;
        mn[0] = mn[1] = 0.0f;
    } else if (TY == TY_IQ2_XXS) {
        i64 blk = grow * (w.cols / 256) + (c0 >> 8);
        uint2 v = *(const uint2*)(w.a + blk * 64 + ((c0 & 255) >> 5) * 8);
        u32 a0 = v.x, a1 = v.y;
        float d = h2f(ld_u16(w.b + blk * 2));
        float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint4 g = tab->grid[(a0 >> (8 * k)) & 255u];
            uint4 m = tab->sign[(a1 >> (7 * k)) & 127u];
            q[4 * k] = g.x ^ m.x;
            q[4 * k + 1] = g.y ^ m.y;
            q[4 * k + 2] = g.z ^ m.z;
            q[4 * k + 3] = g.w ^ m.w;
        }
        sc[0] = sc[1] = db;
        mn[0] = mn[1] = 0.0f;
    } else if (TY == TY_IQ2C) {
        uint4 v = *(const uint4*)(w.a + grow * (w.cols / 2) + c0 / 2);
        float db = iq2c_scale(w, grow * (w.cols / 256) + (c0 >> 8), (c0 & 255) >> 5);
        u32 c[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            u32 u = (u32)iq2c_4(c[k >> 1] >> (16 * (k & 1))) ^ 0x80808080u;
            q[2 * k] = mq_pair_lo(u, MQ_I8);
            q[2 * k + 1] = mq_pair_hi(u, MQ_I8);
        }
        sc[0] = sc[1] = db;
        mn[0] = mn[1] = 0.0f;
    } else if (TY == TY_Q2_K) {
        const u8* b = w.a + grow * plane_row_bytes(TY_Q2_K, w.cols) + 84 * (c0 >> 8);
        int i = c0 & 255, n = i >> 7, j = (i & 127) >> 5;
        float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
        // Q2_K blocks are 84 bytes: the quants are only 4-byte aligned.
        const u32* q32 = (const u32*)(b + 16 + 32 * n);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            u32 u = (q32[k] >> (2 * j)) & 0x03030303u;
            q[2 * k] = mq_pair_lo(u, MQ_U8);
            q[2 * k + 1] = mq_pair_hi(u, MQ_U8);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int s = b[8 * n + 2 * j + h];
            sc[h] = d * (float)(s & 15);
            mn[h] = dmin * (float)(s >> 4);
        }
    } else {  // TY_Q4_K
        const u8* b = w.a + grow * plane_row_bytes(TY_Q4_K, w.cols) + 144 * (c0 >> 8);
        int i = c0 & 255, chunk = i >> 6, hi = (i & 63) >= 32;
        int s, m;
        q4k_scale_min(b + 4, 2 * chunk + hi, &s, &m);
        float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2));
        const uint4* p = (const uint4*)(b + 16 + 32 * chunk);
        int sh = hi ? 4 : 0;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 v = p[h];
            u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                u32 x = (u[k] >> sh) & 0x0f0f0f0fu;
                q[8 * h + 2 * k] = mq_pair_lo(x, MQ_U8);
                q[8 * h + 2 * k + 1] = mq_pair_hi(x, MQ_U8);
            }
        }
        sc[0] = sc[1] = d * (float)s;
        mn[0] = mn[1] = dmin * (float)m;
    }
}

// The route entries of a chunk grouped by expert on the device, so the layer needs no round
// trip to the host. Entry i = t·k + j (token t's j-th expert ids[i], weight wts[i]) gets slot
// p: experts in ascending order, each expert's entries in entry order (a counting sort, then
// each expert's few entries put back in order). idx[p] = t, wv[p] = wts[i], slot_of[i] = p;
// tiles: (expert, first slot, count ≤ MQ_TOK) per MQ_TOK slots of an expert, in expert order,
// the rest of the max_tiles entries (0, 0, 0), which the mq kernels skip. ids are valid expert
// numbers by construction (the route kernel, or tid2eid checked at load); one block.
#define MQ_MAX_EXPERTS 1024
extern "C" __global__ void group_slots(const int* ids, const float* wts, int m, int k, int n_exp,
                                       int* tmp, int* idx, float* wv, int* slot_of, int* tiles,
                                       int max_tiles) {
    grid_dep_sync();
    __shared__ int cnt[MQ_MAX_EXPERTS];
    __shared__ int off[MQ_MAX_EXPERTS + 1];
    __shared__ int toff[MQ_MAX_EXPERTS + 1];
    int tid = threadIdx.x, nt = blockDim.x;
    for (int e = tid; e < n_exp; e += nt) cnt[e] = 0;
    __syncthreads();
    for (int i = tid; i < m; i += nt) atomicAdd(&cnt[min(max(ids[i], 0), n_exp - 1)], 1);
    __syncthreads();
    if (tid == 0) {
        off[0] = toff[0] = 0;
        for (int e = 0; e < n_exp; e++) {
            off[e + 1] = off[e] + cnt[e];
            toff[e + 1] = toff[e] + (cnt[e] + MQ_TOK - 1) / MQ_TOK;
        }
    }
    __syncthreads();
    for (int e = tid; e < n_exp; e += nt) cnt[e] = 0;
    __syncthreads();
    for (int i = tid; i < m; i += nt) {
        int ex = min(max(ids[i], 0), n_exp - 1);
        tmp[off[ex] + atomicAdd(&cnt[ex], 1)] = i;
    }
    __syncthreads();
    for (int e = tid; e < n_exp; e += nt) {
        int a = off[e], b = off[e + 1];
        for (int x = a + 1; x < b; x++) {  // insertion sort: a few dozen entries an expert
            int v = tmp[x], y = x - 1;
            while (y >= a && tmp[y] > v) {
                tmp[y + 1] = tmp[y];
                y--;
            }
            tmp[y + 1] = v;
        }
        for (int j = 0, c = b - a; MQ_TOK * j < c; j++) {
            int* tl = tiles + 3 * (toff[e] + j);
            tl[0] = e;
            tl[1] = a + MQ_TOK * j;
            tl[2] = min(MQ_TOK, c - MQ_TOK * j);
        }
    }
    __syncthreads();
    for (int p = tid; p < m; p += nt) {
        int i = tmp[p];
        idx[p] = i / k;
        wv[p] = wts[i];
        slot_of[i] = p;
    }
    for (int j = toff[n_exp] + tid; j < max_tiles; j += nt) tiles[3 * j] = tiles[3 * j + 1] = tiles[3 * j + 2] = 0;
}

// Σ (hi + lo) of each 16 columns of the f16-pair rows of `n` slots ([n × cols/16], the K-quant
// minimum's Σx), once per product instead of once per block of weight rows. Grid over n·cols/16.
extern "C" __global__ void mq_xsum(const u16* xh, const u16* xl, int n, int cols, float* xs) {
    grid_dep_sync();
    i64 total = (i64)n * (cols / 16);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const u16* ph = xh + i * 16;
        const u16* pl = xl + i * 16;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += h2f(ph[j]) + h2f(pl[j]);
        xs[i] = s;
    }
}

// y[(slot0 + s)·y_stride + r0 + r] = Σ_c W[e][r0 + r][c]·x[slot0 + s][c] for the tile
// (e, slot0, n) = tiles[3·blockIdx.y ..], r < MQ_ROWS (rows past w.rows skipped), s < n;
// xh / xl the f16 hi / lo planes of the slots' activations, `w.cols` wide, and (K-quants) xs
// their 16-column sums from mq_xsum. Grid (ceil(w.rows / MQ_ROWS), tiles); 128 threads.
// w.cols must be a multiple of MQ_K (of 256 for the K-quants and IQ2_XXS).
template <int TY>
__device__ __forceinline__ void mq_body(const DW& w, const u16* xh, const u16* xl, const float* xs,
                                        const int* tiles, float* y, int y_stride) {
    // Blocks of `fold` columns share one scale: 16 for Q2_K, else 32 (two mma steps per fold of
    // the partial products into acc); the K-quants subtract min·Σx.
    const bool mins = TY == TY_Q2_K || TY == TY_Q4_K;
    const bool fold16 = TY == TY_Q2_K;
    __align__(16) __shared__ u16 As[MQ_ROWS * MQ_LD];
    __align__(16) __shared__ u16 Bh[MQ_TOK * MQ_LD];
    __align__(16) __shared__ u16 Bl[MQ_TOK * MQ_LD];
    __shared__ float Sc[MQ_ROWS][MQ_K / 16];
    __shared__ float Mn[MQ_ROWS][MQ_K / 16];
    __shared__ float Xs[MQ_TOK][MQ_K / 16];
    __shared__ MqIq2Tab tab_sh;
    int e = tiles[3 * blockIdx.y], slot0 = tiles[3 * blockIdx.y + 1], n = tiles[3 * blockIdx.y + 2];
    if (n <= 0) return;  // a spare entry of group_slots' tile list
    const MqIq2Tab* tab = 0;
    if (TY == TY_IQ2_XXS) {
        mq_iq2_tables(&tab_sh);
        tab = &tab_sh;
        __syncthreads();
    }
    int r0 = blockIdx.x * MQ_ROWS;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int cols = w.cols;
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    // Thread `tid` stages row / slot tid / 2, columns 32·(tid % 2) .. + 31 of each step.
    int own = tid >> 1, half = tid & 1;
    for (int k0 = 0; k0 < cols; k0 += MQ_K) {
        u32 qv[16];
        if (r0 + own < w.rows) {
            mq_deq32<TY>(w, (i64)e * w.rows + r0 + own, k0 + 32 * half, tab, qv, &Sc[own][2 * half],
                         &Mn[own][2 * half]);
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) qv[j] = 0;
            Sc[own][2 * half] = Sc[own][2 * half + 1] = 0.0f;
            Mn[own][2 * half] = Mn[own][2 * half + 1] = 0.0f;
        }
        uint4* aq = (uint4*)(As + own * MQ_LD + 32 * half);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint4 v;
            v.x = qv[4 * j];
            v.y = qv[4 * j + 1];
            v.z = qv[4 * j + 2];
            v.w = qv[4 * j + 3];
            aq[j] = v;
        }
        uint4* bh = (uint4*)(Bh + own * MQ_LD + 32 * half);
        uint4* bl = (uint4*)(Bl + own * MQ_LD + 32 * half);
        if (own < n) {
            const uint4* sh = (const uint4*)(xh + (i64)(slot0 + own) * cols + k0 + 32 * half);
            const uint4* sl = (const uint4*)(xl + (i64)(slot0 + own) * cols + k0 + 32 * half);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                bh[j] = sh[j];
                bl[j] = sl[j];
            }
            if (mins) {
                const float* xr = xs + (i64)(slot0 + own) * (cols / 16) + k0 / 16 + 2 * half;
                Xs[own][2 * half] = xr[0];
                Xs[own][2 * half + 1] = xr[1];
            }
        } else {
            uint4 z;
            z.x = z.y = z.z = z.w = 0u;
#pragma unroll
            for (int j = 0; j < 4; j++) bh[j] = bl[j] = z;
            if (mins) Xs[own][2 * half] = Xs[own][2 * half + 1] = 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kp = 0; kp < MQ_K / 32; kp++) {
            u32 a[2][4];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const u16* ar = As + (warp * 16 + g) * MQ_LD + (2 * kp + h) * 16 + 2 * t;
                a[h][0] = *(const u32*)ar;
                a[h][1] = *(const u32*)(ar + 8 * MQ_LD);
                a[h][2] = *(const u32*)(ar + 8);
                a[h][3] = *(const u32*)(ar + 8 * MQ_LD + 8);
            }
            int rl = warp * 16 + g, rh = rl + 8;
            float s_lo[2], s_hi[2], m_lo[2], m_hi[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int kb = 2 * kp + h;
                s_lo[h] = Sc[rl][kb];
                s_hi[h] = Sc[rh][kb];
                m_lo[h] = mins ? Mn[rl][kb] : 0.0f;
                m_hi[h] = mins ? Mn[rh][kb] : 0.0f;
            }
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                int s0 = nt * 8 + 2 * t;
                float p[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int kb = 2 * kp + h;
                    const u16* bhr = Bh + (nt * 8 + g) * MQ_LD + kb * 16 + 2 * t;
                    const u16* blr = Bl + (nt * 8 + g) * MQ_LD + kb * 16 + 2 * t;
                    float* ph = fold16 ? p[h] : p[0];
                    mma_16816(ph, a[h], *(const u32*)bhr, *(const u32*)(bhr + 8));
                    mma_16816(ph, a[h], *(const u32*)blr, *(const u32*)(blr + 8));
                }
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    if (h == 1 && !fold16) break;
                    int kb = 2 * kp + h;
                    acc[nt][0] += p[h][0] * s_lo[h];
                    acc[nt][1] += p[h][1] * s_lo[h];
                    acc[nt][2] += p[h][2] * s_hi[h];
                    acc[nt][3] += p[h][3] * s_hi[h];
                    if (mins) {
                        // A 32-column fold takes both 16-column sums of x.
                        float x0 = Xs[s0][kb], x1 = Xs[s0 + 1][kb];
                        if (!fold16) {
                            x0 += Xs[s0][kb + 1];
                            x1 += Xs[s0 + 1][kb + 1];
                        }
                        acc[nt][0] -= m_lo[h] * x0;
                        acc[nt][1] -= m_lo[h] * x1;
                        acc[nt][2] -= m_hi[h] * x0;
                        acc[nt][3] -= m_hi[h] * x1;
                    }
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = r0 + warp * 16 + g + (i >= 2 ? 8 : 0);
            int s = nt * 8 + 2 * t + (i & 1);
            if (s < n && r < w.rows) y[(i64)(slot0 + s) * y_stride + r] = acc[nt][i];
        }
    }
}

// One kernel per weight type (the dequantisation and the scale folds fixed at compile time).
#define MQ_KERNEL(NAME, TY)                                                                    \
    extern "C" __global__ void NAME(DW w, const u16* xh, const u16* xl, const float* xs,       \
                                    const int* tiles, float* y, int y_stride) {                \
        grid_dep_sync();                                                                       \
        mq_body<TY>(w, xh, xl, xs, tiles, y, y_stride);                                        \
    }
MQ_KERNEL(mq_q8_0, TY_Q8_0)
MQ_KERNEL(mq_iq2_xxs, TY_IQ2_XXS)
MQ_KERNEL(mq_iq2c, TY_IQ2C)
MQ_KERNEL(mq_q2_k, TY_Q2_K)
MQ_KERNEL(mq_q4_k, TY_Q4_K)

// Hyper-connections (spec/model.md §2.3, §2.6). `hc_mix` computes, per row, the `fn`
// projection of the HC state and its sum of squares in column slices (the flat RMSNorm's
// scale is applied to the summed dots); `hc_pre_finish` turns the mix into the
// pre weights, post gates and Sinkhorn-normalised combine matrix (one thread, in the CPU
// reference's order) and forms the sublayer input; `hc_post` writes the sublayer output back
// into the streams; `hc_step` is all of a sublayer boundary (post, the next pre, its input
// norm) in one launch for few rows; `hc_head_finish` is the head's sigmoid weighting.

#define HC_MAX 8

// Partial sums of the HC mix over column slice s = blockIdx.z of S: part[t][s][i] =
// Σ_c fn[i][c]·x[first + t][c] for block (t, i), and part[t][s][n_mix] = Σ_c x² (written by
// the i = 0 blocks). The flat RMSNorm's scale is a per-row factor, applied when the slices are
// summed (hc_mix_value). Grid (rows, n_mix, S).
extern "C" __global__ void hc_mix(const float* x_hc, int first, DW fn, int S, float* part) {
    grid_dep_sync();
    __shared__ double shd[32];
    __shared__ float shf[32];
    int t = blockIdx.x, i = blockIdx.y, s = blockIdx.z;
    int width = fn.cols, n_mix = fn.rows;
    int per = (width + S - 1) / S;
    int c0 = s * per, c1 = min(width, c0 + per);
    const float* x = x_hc + (i64)(first + t) * width;
    float acc = 0.0f;
    double ss = 0.0;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        float v = x[c];
        acc += deq(fn, i, c) * v;
        ss += (double)v * (double)v;
    }
    acc = block_sum(acc, shf);
    float* out = part + ((i64)t * S + s) * (n_mix + 1);
    if (threadIdx.x == 0) out[i] = acc;
    if (i == 0) {
        ss = block_sum_d(ss, shd);
        if (threadIdx.x == 0) out[n_mix] = (float)ss;
    }
}

// Σx² of each row of x (rows `stride` apart, `cols` wide) into out[t·out_stride] (the GEMM
// path of the HC mix writes the dots beside it). Grid (rows).
extern "C" __global__ void row_sumsq(const float* x, int stride, int cols, float* out, int out_stride) {
    grid_dep_sync();
    __shared__ double shd[32];
    double ss = 0.0;
    const float* r = x + (i64)blockIdx.x * stride;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += (double)r[c] * (double)r[c];
    ss = block_sum_d(ss, shd);
    if (threadIdx.x == 0) out[(i64)blockIdx.x * out_stride] = (float)ss;
}

// Fills mix[0..n_mix) of row t from its S partial slices: the flat RMSNorm scale times the
// summed dots. One warp per value, lane l summing slices l, l + 32, … (in that order); a warp's
// first HC_MIX_PER_WARP values and (warp 0) the sum of squares are gathered in one pass, so all
// their slice loads are in flight together (one L2 round trip, not one per value). Block-
// cooperative; ends with a barrier.
#define HC_MIX_PER_WARP 4
__device__ void hc_mix_value(const float* part, int t, int S, int n_mix, int width, float eps,
                             float* mix) {
    // Read through L2 (__ldcg): in hc_step the slices come from other blocks of the same launch.
    const float* p = part + (i64)t * S * (n_mix + 1);
    __shared__ float scale_sh;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float a[HC_MIX_PER_WARP];
#pragma unroll
    for (int j = 0; j < HC_MIX_PER_WARP; j++) a[j] = 0.0f;
    double ss = 0.0;
    for (int k = lane; k < S; k += 32) {
        const float* pk = p + k * (n_mix + 1);
#pragma unroll
        for (int j = 0; j < HC_MIX_PER_WARP; j++) {
            int i = warp + j * nw;
            if (i < n_mix) a[j] += __ldcg(pk + i);
        }
        if (warp == 0) ss += (double)__ldcg(pk + n_mix);
    }
    if (warp == 0) {
        ss = warp_sum_d(ss);
        if (lane == 0) scale_sh = rms_scale(ss, width, eps);
    }
#pragma unroll
    for (int j = 0; j < HC_MIX_PER_WARP; j++) a[j] = warp_sum(a[j]);
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < HC_MIX_PER_WARP; j++) {
            int i = warp + j * nw;
            if (i < n_mix) mix[i] = a[j] * scale_sh;
        }
    }
    // Mixes wider than HC_MIX_PER_WARP values a warp (not the model's).
    for (int i = warp + HC_MIX_PER_WARP * nw; i < n_mix; i += nw) {
        float b = 0.0f;
        for (int k = lane; k < S; k += 32) b += __ldcg(p + k * (n_mix + 1) + i);
        b = warp_sum(b);
        if (lane == 0) mix[i] = b * scale_sh;
    }
    __syncthreads();
}

// Sinkhorn normalisation (model::hc::sinkhorn) by one warp, lane l < hc² holding C[l / hc][l %
// hc] (z before the row softmax); returns the lane's normalised value. Every row or column sum
// gathers its hc values with independent shuffles (HC_MAX of them, unrolled: a loop bounded by
// the runtime hc made each phase a chain of dependent shuffles, ~12 µs a call) and adds them in
// index order, as the CPU does.
__device__ __forceinline__ float sinkhorn_lane(float c, int hc, int iters, float eps) {
    int lane = threadIdx.x & 31;
    bool on = lane < hc * hc;
    int s = on ? lane / hc : 0, f = on ? lane % hc : 0;
    float v[HC_MAX];
    // Row softmax (+eps).
#pragma unroll
    for (int k = 0; k < HC_MAX; k++) v[k] = __shfl_sync(FULL_MASK, c, s * hc + (k < hc ? k : 0));
    float m = -DS4_INF;
#pragma unroll
    for (int k = 0; k < HC_MAX; k++)
        if (k < hc) m = fmaxf(m, v[k]);
    c = on ? expf(c - m) : 0.0f;
#pragma unroll
    for (int k = 0; k < HC_MAX; k++) v[k] = __shfl_sync(FULL_MASK, c, s * hc + (k < hc ? k : 0));
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < HC_MAX; k++)
        if (k < hc) sum += v[k];
    c = c / sum + eps;
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
#pragma unroll
            for (int k = 0; k < HC_MAX; k++)
                v[k] = __shfl_sync(FULL_MASK, c, s * hc + (k < hc ? k : 0));
            float rs = 0.0f;
#pragma unroll
            for (int k = 0; k < HC_MAX; k++)
                if (k < hc) rs += v[k];
            c /= rs + eps;
        }
#pragma unroll
        for (int k = 0; k < HC_MAX; k++) v[k] = __shfl_sync(FULL_MASK, c, (k < hc ? k : 0) * hc + f);
        float cs = 0.0f;
#pragma unroll
        for (int k = 0; k < HC_MAX; k++)
            if (k < hc) cs += v[k];
        c /= cs + eps;
    }
    return c;
}

// From the mix slices (hc_mix, S of them): out[t] = Σ_h (σ(z_h)+eps)·x_hc[t][h], and mixout[t]
// = post gates 2σ(z_{hc+h}) followed by the Sinkhorn-normalised combine matrix. `rms_eps` is
// the flat norm's epsilon, `eps` the HC one. Grid (rows, Y): each of a row's Y blocks
// computes the (tiny) pre gates itself and forms its share of the output columns, so a single
// decode row is spread over the device instead of one block; block y = 0 alone runs Sinkhorn
// (its first warp, after its share of the output) and writes mixout.
extern "C" __global__ void hc_pre_finish(const float* part, int S, float rms_eps,
                                         const float* scale3, const float* base,
                                         const float* x_hc, int hc, int e, int iters, float eps,
                                         float* out, float* mixout) {
    grid_dep_sync();
    __shared__ float pre[HC_MAX];
    __shared__ float mix[(2 + HC_MAX) * HC_MAX];
    int t = blockIdx.x;
    int n_mix = (2 + hc) * hc;
    hc_mix_value(part, t, S, n_mix, hc * e, rms_eps, mix);
    if (threadIdx.x < hc) pre[threadIdx.x] = sigmoidf_ref(mix[threadIdx.x] * scale3[0] + base[threadIdx.x]) + eps;
    __syncthreads();
    const float* x = x_hc + (i64)t * hc * e;
    for (int d = blockIdx.y * blockDim.x + threadIdx.x; d < e; d += gridDim.y * blockDim.x) {
        float a = 0.0f;
        for (int h = 0; h < hc; h++) a += pre[h] * x[(i64)h * e + d];
        out[(i64)t * e + d] = a;
    }
    if (blockIdx.y != 0 || threadIdx.x >= 32) return;
    int lane = threadIdx.x, nc = hc * hc;
    float* mo = mixout + (i64)t * (hc + nc);
    if (lane < hc) mo[lane] = 2.0f * sigmoidf_ref(mix[hc + lane] * scale3[1] + base[hc + lane]);
    float c = lane < nc ? mix[2 * hc + lane] * scale3[2] + base[2 * hc + lane] : 0.0f;
    c = sinkhorn_lane(c, hc, iters, eps);
    if (lane < nc) mo[hc + lane] = c;
}

// out[t][f][d] = post[f]·y[t][d] + Σ_s comb[f + hc·s]·x_hc[t][s][d]. Grid (rows, ceil(e/256)).
extern "C" __global__ void hc_post(const float* y, const float* x_hc, const float* mix, int hc,
                                   int e, float* out) {
    grid_dep_sync();
    int t = blockIdx.x;
    int d = blockIdx.y * blockDim.x + threadIdx.x;
    if (d >= e) return;
    const float* m = mix + (i64)t * (hc + hc * hc);
    const float* x = x_hc + (i64)t * hc * e;
    float yv = y[(i64)t * e + d];
    for (int f = 0; f < hc; f++) {
        float o = m[f] * yv;
        for (int s = 0; s < hc; s++) o += m[hc + f + hc * s] * x[(i64)s * e + d];
        out[((i64)t * hc + f) * e + d] = o;
    }
}

// The HC width and mix count of the fused boundary kernel hc_step (the model's: 4 streams,
// (2 + 4)·4 mix values), compile-time so that a thread's streams and mix sums stay in registers.
#define HC_FUSED 4
#define HC_FUSED_MIX 24

// Threads of an hc_step block that post, and the columns a block posts: a thread per (stream,
// column). The block has one more warp (HC_STEP_BLOCK), the last block's Sinkhorn warp.
#define HC_STEP_THREADS 256
#define HC_STEP_BLOCK (HC_STEP_THREADS + 32)
#define HC_STEP_COLS (HC_STEP_THREADS / HC_FUSED)
// Widest row the finishing block holds in registers: 4 float4 column groups a thread.
#define HC_STEP_MAXE (HC_STEP_THREADS * 16)

// The whole boundary between two sublayers for a few rows, in one launch instead of hc_post,
// hc_mix, hc_pre_finish and rms_norm: hc_post (out = post·y + comb·x_hc), the next HC pre's
// mix of `out`, its gates, Sinkhorn and weighted stream sum, and that sum's RMSNorm with the
// next sublayer's input weight `nw` into h — with the three-stage 8-bit planes of the row
// when `q` is given (one row), as rms_norm writes them. Grid (rows, S = e / 64): in a block,
// thread (f, c) posts stream f of column c and projects it on the 24 mix rows (24 loads of
// `fn`, so that 64 blocks share its 0.8 MB), and the block writes its mix slice (hc_mix's
// `part` layout); the last block of a row to finish (a ticket in tickets[t], which it resets)
// sums the slices and does the rest for the whole row, every thread holding 16 columns in
// registers (e a multiple of 128 — whole warps of float4 groups — and at most HC_STEP_MAXE),
// while its extra warp runs Sinkhorn. `mix` holds this sublayer's gates on entry (read by
// every block before it takes its ticket) and the next one's on return.
extern "C" __global__ void hc_step(const float* y, const float* x_hc, float* mix, int e,
                                   float* out, DW fn, float* part, const float* scale3,
                                   const float* base, int iters, float eps, float rms_eps,
                                   const float* nw, float* h, i8* q, float* qd, int* tickets) {
    // Before the wait (PRE_WAIT in common.cuh): the mix weights (constant), the HC state and
    // this sublayer's gates (both written by the previous boundary's launch).
    const int hc = HC_FUSED, n_mix = HC_FUSED_MIX, nc = HC_FUSED * HC_FUSED;
    const int nwarp = HC_STEP_THREADS / 32;
    __shared__ float red[nwarp][HC_FUSED_MIX];
    __shared__ double redd[nwarp];
    __shared__ double shd[32];
    __shared__ float mixv[HC_FUSED_MIX];
    __shared__ float pre[HC_FUSED];
    __shared__ int last;
    int t = blockIdx.x, S = gridDim.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* m = mix + (i64)t * (hc + nc);
    const float* x = x_hc + (i64)t * hc * e;
    float* o_row = out + (i64)t * hc * e;
    int f = threadIdx.x / HC_STEP_COLS;
    int d = blockIdx.y * HC_STEP_COLS + threadIdx.x % HC_STEP_COLS;
    float acc[HC_FUSED_MIX], xs[HC_FUSED], ms[HC_FUSED], mf = 0.0f;
    if (warp < nwarp) {
        const u16* fw = (const u16*)fn.a + (i64)f * e + d;
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++) acc[i] = h2f(fw[(i64)i * fn.cols]);
        mf = m[f];
#pragma unroll
        for (int s = 0; s < hc; s++) {
            ms[s] = m[hc + f + hc * s];
            xs[s] = x[(i64)s * e + d];
        }
    }
    grid_dep_sync();
    if (warp < nwarp) {
        float v = mf * y[(i64)t * e + d];
#pragma unroll
        for (int s = 0; s < hc; s++) v += ms[s] * xs[s];
        o_row[(i64)f * e + d] = v;
        double ss = (double)v * (double)v;
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++) acc[i] *= v;
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++) acc[i] = warp_sum(acc[i]);
        ss = warp_sum_d(ss);
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < HC_FUSED_MIX; i++) red[warp][i] = acc[i];
            redd[warp] = ss;
        }
    }
    __syncthreads();
    float* po = part + ((i64)t * S + blockIdx.y) * (n_mix + 1);
    if (threadIdx.x < n_mix) {
        float a = 0.0f;
        for (int w = 0; w < nwarp; w++) a += red[w][threadIdx.x];
        po[threadIdx.x] = a;
    } else if (threadIdx.x == n_mix) {
        double a = 0.0;
        for (int w = 0; w < nwarp; w++) a += redd[w];
        po[n_mix] = (float)a;
    }
    // Publish this block's columns and slice, then take a ticket; the last one goes on.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(tickets + t, 1) == S - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    hc_mix_value(part, t, S, n_mix, hc * e, rms_eps, mixv);
    if (threadIdx.x < hc) pre[threadIdx.x] = sigmoidf_ref(mixv[threadIdx.x] * scale3[0] + base[threadIdx.x]) + eps;
    __syncthreads();
    if (warp == nwarp) {
        // The Sinkhorn warp, beside the stream sum (its ~20 dependent rounds of shuffles used
        // to follow it). Every block read this sublayer's gates before its ticket: m is free.
        if (lane < hc) m[lane] = 2.0f * sigmoidf_ref(mixv[hc + lane] * scale3[1] + base[hc + lane]);
        float c = lane < nc ? mixv[2 * hc + lane] * scale3[2] + base[2 * hc + lane] : 0.0f;
        c = sinkhorn_lane(c, hc, iters, eps);
        if (lane < nc) m[hc + lane] = c;
        if (lane == 0) tickets[t] = 0;
        return;
    }
    // The weighted stream sum of 4 consecutive columns per group (the other blocks' columns
    // through L2), all 16 loads of a thread issued before any is used; then its RMSNorm.
    const int ng = HC_STEP_MAXE / (4 * HC_STEP_THREADS);
    float4 hv[ng];
    double ss2 = 0.0;
    {
        float4 xv[ng][HC_FUSED];
#pragma unroll
        for (int j = 0; j < ng; j++) {
            int c = 4 * threadIdx.x + j * 4 * HC_STEP_THREADS;
#pragma unroll
            for (int s = 0; s < hc; s++)
                xv[j][s] = c < e ? __ldcg((const float4*)(o_row + (i64)s * e + c)) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < ng; j++) {
            float4 a = make_float4(0, 0, 0, 0);
#pragma unroll
            for (int s = 0; s < hc; s++) {
                a.x += pre[s] * xv[j][s].x;
                a.y += pre[s] * xv[j][s].y;
                a.z += pre[s] * xv[j][s].z;
                a.w += pre[s] * xv[j][s].w;
            }
            hv[j] = a;
            ss2 += (double)a.x * (double)a.x + (double)a.y * (double)a.y + (double)a.z * (double)a.z +
                   (double)a.w * (double)a.w;
        }
    }
    float scale = rms_scale(first_warps_sum_d(ss2, shd, nwarp), e, rms_eps);
    float* hr = h + (i64)t * e;
#pragma unroll
    for (int j = 0; j < ng; j++) {
        int c = 4 * threadIdx.x + j * 4 * HC_STEP_THREADS;
        if (c >= e) break;
        float v[4] = {hv[j].x * scale, hv[j].y * scale, hv[j].z * scale, hv[j].w * scale};
        if (nw) {
#pragma unroll
            for (int k = 0; k < 4; k++) v[k] *= nw[c + k];
        }
        *(float4*)(hr + c) = make_float4(v[0], v[1], v[2], v[3]);
        if (q) {
            // A 32-value activation block is 8 consecutive threads here.
            float am = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) am = fmaxf(am, __shfl_xor_sync(FULL_MASK, am, o));
            float dd = am / 127.0f;
            u32 p1 = 0, p2 = 0, p3 = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                int q1, q2, q3;
                q8_stages(v[k], dd, &q1, &q2, &q3);
                p1 |= (u32)(q1 & 255) << (8 * k);
                p2 |= (u32)(q2 & 255) << (8 * k);
                p3 |= (u32)(q3 & 255) << (8 * k);
            }
            *(u32*)(q + c) = p1;
            *(u32*)(q + e + c) = p2;
            *(u32*)(q + 2 * e + c) = p3;
            if ((lane & 7) == 0) qd[c / 32] = dd;
        }
    }
}

// The columns a block of hc_step_cl owns (at most: a thread each) and its threads: those and
// the Sinkhorn warp.
#define HC_CL_COLS 256
#define HC_CL_BLOCK (HC_CL_COLS + 32)

// hc_step as one thread-block cluster a row (Hopper): the same boundary — hc_post, the next HC
// pre's mix, gates, Sinkhorn and weighted stream sum, its RMSNorm with `nw` into h and (q
// given) the row's 8-bit planes — with the row's e columns split over the cluster's cl blocks
// (gridDim.y, e / cl columns each, a whole number of warps), a thread a column and all 4 of
// its streams. A block posts its columns and projects them on the 24 mix rows; the blocks
// exchange their 25 sums (24 dots and Σ out²) through shared memory across the cluster
// barrier, so every block has the whole mix at once and forms its own columns' stream sum
// from registers; a second exchange gives the norm's Σ h². hc_step's fence, ticket and the
// last block's reload of the row through L2 are gone. Block 0's extra warp runs Sinkhorn and
// writes the next gates into `mix` (every block read this sublayer's gates before the wait).
// Grid (rows, cl) in clusters (1, cl, 1).
extern "C" __global__ void hc_step_cl(const float* y, const float* x_hc, float* mix, int e,
                                      float* out, DW fn, const float* scale3, const float* base,
                                      int iters, float eps, float rms_eps, const float* nw,
                                      float* h, i8* q, float* qd) {
    // Before the wait (PRE_WAIT in common.cuh): the mix weights (constant), the HC state and
    // this sublayer's gates (both written by the previous boundary's launch).
    const int hc = HC_FUSED, n_mix = HC_FUSED_MIX, nc = HC_FUSED * HC_FUSED;
    const int nwarp = HC_CL_COLS / 32;
    __shared__ float gates[HC_FUSED + HC_FUSED * HC_FUSED];
    __shared__ float red[nwarp][HC_FUSED_MIX];
    __shared__ double redd[nwarp];
    __shared__ float slice[HC_FUSED_MIX];  // this block's mix dots, read by the cluster
    __shared__ double slice_ss;            // and its Σ out²
    __shared__ double norm_ss;             // this block's Σ h², read by the cluster
    __shared__ float mixv[HC_FUSED_MIX];
    __shared__ double shd[32];
    __shared__ float nscale;
    int t = blockIdx.x, cl = gridDim.y, rank = blockIdx.y, cpb = e / cl;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    bool col = (int)threadIdx.x < cpb;
    int d = rank * cpb + threadIdx.x;
    float* m = mix + (i64)t * (hc + nc);
    const float* x = x_hc + (i64)t * hc * e;
    float* o_row = out + (i64)t * hc * e;
    // fn[i][f·e + d] for the column's streams f, two f16 a word.
    u32 fw[HC_FUSED_MIX][2];
    float xs[HC_FUSED];
    if (col) {
        const u16* fp = (const u16*)fn.a + d;
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++)
#pragma unroll
            for (int p = 0; p < 2; p++)
                fw[i][p] = (u32)fp[(i64)i * fn.cols + (2 * p) * e] |
                           ((u32)fp[(i64)i * fn.cols + (2 * p + 1) * e] << 16);
#pragma unroll
        for (int s = 0; s < hc; s++) xs[s] = x[(i64)s * e + d];
    }
    if (threadIdx.x < hc + nc) gates[threadIdx.x] = m[threadIdx.x];
    __syncthreads();
    grid_dep_sync();
    float o[HC_FUSED], acc[HC_FUSED_MIX];
    double ss = 0.0;
#pragma unroll
    for (int i = 0; i < HC_FUSED_MIX; i++) acc[i] = 0.0f;
#pragma unroll
    for (int f = 0; f < hc; f++) o[f] = 0.0f;
    if (col) {
        float yv = y[(i64)t * e + d];
#pragma unroll
        for (int f = 0; f < hc; f++) {
            float v = gates[f] * yv;
#pragma unroll
            for (int s = 0; s < hc; s++) v += gates[hc + f + hc * s] * xs[s];
            o[f] = v;
            o_row[(i64)f * e + d] = v;
            ss += (double)v * (double)v;
        }
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++)
#pragma unroll
            for (int p = 0; p < 2; p++)
                acc[i] += h2f((u16)(fw[i][p] & 0xffffu)) * o[2 * p] + h2f((u16)(fw[i][p] >> 16)) * o[2 * p + 1];
    }
    if (warp < nwarp) {
#pragma unroll
        for (int i = 0; i < HC_FUSED_MIX; i++) acc[i] = warp_sum(acc[i]);
        ss = warp_sum_d(ss);
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < HC_FUSED_MIX; i++) red[warp][i] = acc[i];
            redd[warp] = ss;
        }
    }
    __syncthreads();
    if (threadIdx.x < n_mix) {
        float a = 0.0f;
        for (int w = 0; w < nwarp; w++) a += red[w][threadIdx.x];
        slice[threadIdx.x] = a;
    } else if (threadIdx.x == n_mix) {
        double a = 0.0;
        for (int w = 0; w < nwarp; w++) a += redd[w];
        slice_ss = a;
    }
    cluster_arrive();
    cluster_wait();
    // The row's mix from the cl slices, in rank order (the same in every block): a lane a value.
    if (warp == 0) {
        double a2 = 0.0;
        for (int r = 0; r < cl; r++) a2 += *cluster_peer(&slice_ss, r);
        float sc = rms_scale(a2, hc * e, rms_eps);
        if (lane < n_mix) {
            float a = 0.0f;
            for (int r = 0; r < cl; r++) a += cluster_peer(slice, r)[lane];
            mixv[lane] = a * sc;
        }
    }
    __syncthreads();
    if (warp == nwarp) {
        // The Sinkhorn warp: no Σ h² to give, so it arrives at once and normalises meanwhile.
        cluster_arrive();
        if (rank == 0) {
            if (lane < hc) m[lane] = 2.0f * sigmoidf_ref(mixv[hc + lane] * scale3[1] + base[hc + lane]);
            float c = lane < nc ? mixv[2 * hc + lane] * scale3[2] + base[2 * hc + lane] : 0.0f;
            c = sinkhorn_lane(c, hc, iters, eps);
            if (lane < nc) m[hc + lane] = c;
        }
        cluster_wait();
        cluster_arrive();
        cluster_wait();
        return;
    }
    // The column's stream sum and the norm's Σ h² over the cluster.
    float hv = 0.0f;
    if (col) {
#pragma unroll
        for (int f = 0; f < hc; f++) hv += (sigmoidf_ref(mixv[f] * scale3[0] + base[f]) + eps) * o[f];
    }
    double s2 = first_warps_sum_d((double)hv * (double)hv, shd, nwarp);
    if (threadIdx.x == 0) norm_ss = s2;
    cluster_arrive();
    cluster_wait();
    if (warp == 0) {
        double a = 0.0;
        for (int r = 0; r < cl; r++) a += *cluster_peer(&norm_ss, r);
        if (lane == 0) nscale = rms_scale(a, e, rms_eps);
    }
    bar_first(HC_CL_COLS);
    // Every peer's Σ h² is read: the last barrier only keeps this block's shared memory alive.
    cluster_arrive();
    if (col) {
        float v = hv * nscale;
        if (nw) v *= nw[d];
        h[(i64)t * e + d] = v;
        if (q) q8_store_lane(v, q + d, e, qd + d / 32);
    }
    cluster_wait();
}

// z[t] = Σ_h (σ(pre_h·scale + base[h]) + eps)·x_hc[first + t][h], pre from the mix slices.
// Grid (rows).
extern "C" __global__ void hc_head_finish(const float* part, int S, float rms_eps,
                                          const float* x_hc, int first, int hc, int e,
                                          float scale, const float* base, float eps, float* z) {
    grid_dep_sync();
    __shared__ float pre[HC_MAX];
    int t = blockIdx.x;
    hc_mix_value(part, t, S, hc, hc * e, rms_eps, pre);
    const float* x = x_hc + (i64)(first + t) * hc * e;
    float w[HC_MAX];
    for (int h = 0; h < hc; h++) w[h] = sigmoidf_ref(pre[h] * scale + base[h]) + eps;
    for (int d = threadIdx.x; d < e; d += blockDim.x) {
        float a = 0.0f;
        for (int h = 0; h < hc; h++) a += w[h] * x[(i64)h * e + d];
        z[(i64)t * e + d] = a;
    }
}

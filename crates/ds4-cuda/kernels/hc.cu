// Hyper-connections (spec/model.md §2.3, §2.6). `hc_mix` computes, per row, the `fn`
// projection of the HC state and its sum of squares in column slices (the flat RMSNorm's
// scale is applied to the summed dots); `hc_pre_finish` turns the mix into the
// pre weights, post gates and Sinkhorn-normalised combine matrix (one thread, in the CPU
// reference's order) and forms the sublayer input; `hc_post` writes the sublayer output back
// into the streams; `hc_head_finish` is the head's sigmoid weighting.

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

// Fills mix[0..n_mix) of row t from its S (≤ 32) partial slices: the flat RMSNorm scale times
// the summed dots. One warp per value, a lane per slice, so the slice loads are issued
// together. Block-cooperative; ends with a barrier.
__device__ void hc_mix_value(const float* part, int t, int S, int n_mix, int width, float eps,
                             float* mix) {
    const float* p = part + (i64)t * S * (n_mix + 1);
    __shared__ float scale_sh;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (warp == 0) {
        double ss = lane < S ? (double)p[lane * (n_mix + 1) + n_mix] : 0.0;
        ss = warp_sum_d(ss);
        if (lane == 0) scale_sh = rms_scale(ss, width, eps);
    }
    __syncthreads();
    for (int i = warp; i < n_mix; i += nw) {
        float a = lane < S ? p[lane * (n_mix + 1) + i] : 0.0f;
        a = warp_sum(a);
        if (lane == 0) mix[i] = a * scale_sh;
    }
    __syncthreads();
}

// From the mix slices (hc_mix, S of them): out[t] = Σ_h (σ(z_h)+eps)·x_hc[t][h], and mixout[t]
// = post gates 2σ(z_{hc+h}) followed by the Sinkhorn-normalised combine matrix. `rms_eps` is
// the flat norm's epsilon, `eps` the HC one. Grid (rows, Y): each of a row's Y blocks
// computes the (tiny) gates itself and forms its share of the output columns, so a single
// decode row is spread over the device instead of one block; block y = 0 writes mixout.
//
// The first warp runs Sinkhorn with lane l < hc² holding C[l / hc][l % hc]: each row or column
// sum gathers its hc values by shuffles and adds them in index order, as the CPU does.
extern "C" __global__ void hc_pre_finish(const float* part, int S, float rms_eps,
                                         const float* scale3, const float* base,
                                         const float* x_hc, int hc, int e, int iters, float eps,
                                         float* out, float* mixout) {
    grid_dep_sync();
    __shared__ float pre[HC_MAX];
    __shared__ float pc[HC_MAX + HC_MAX * HC_MAX];
    __shared__ float mix[(2 + HC_MAX) * HC_MAX];
    int t = blockIdx.x;
    int n_mix = (2 + hc) * hc;
    hc_mix_value(part, t, S, n_mix, hc * e, rms_eps, mix);
    int lane = threadIdx.x;
    if (threadIdx.x < 32) {
        // z for the pre and post gates.
        if (lane < hc) {
            pre[lane] = sigmoidf_ref(mix[lane] * scale3[0] + base[lane]) + eps;
            pc[lane] = 2.0f * sigmoidf_ref(mix[hc + lane] * scale3[1] + base[hc + lane]);
        }
        int nc = hc * hc;
        bool on = lane < nc;
        int s = on ? lane / hc : 0, f = on ? lane % hc : 0;
        float c = on ? mix[2 * hc + lane] * scale3[2] + base[2 * hc + lane] : 0.0f;
        // Row softmax (+eps), then iters column / row normalisations as in model::hc::sinkhorn.
        float m = -DS4_INF;
        for (int k = 0; k < hc; k++) m = fmaxf(m, __shfl_sync(FULL_MASK, c, s * hc + k));
        c = on ? expf(c - m) : 0.0f;
        float sum = 0.0f;
        for (int k = 0; k < hc; k++) sum += __shfl_sync(FULL_MASK, c, s * hc + k);
        c = c / sum + eps;
        for (int it = 0; it < iters; it++) {
            if (it > 0) {
                float rs = 0.0f;
                for (int k = 0; k < hc; k++) rs += __shfl_sync(FULL_MASK, c, s * hc + k);
                c /= rs + eps;
            }
            float cs = 0.0f;
            for (int k = 0; k < hc; k++) cs += __shfl_sync(FULL_MASK, c, k * hc + f);
            c /= cs + eps;
        }
        if (on) pc[hc + lane] = c;
    }
    __syncthreads();
    if (blockIdx.y == 0)
        for (int i = threadIdx.x; i < hc + hc * hc; i += blockDim.x)
            mixout[(i64)t * (hc + hc * hc) + i] = pc[i];
    const float* x = x_hc + (i64)t * hc * e;
    for (int d = blockIdx.y * blockDim.x + threadIdx.x; d < e; d += gridDim.y * blockDim.x) {
        float a = 0.0f;
        for (int h = 0; h < hc; h++) a += pre[h] * x[(i64)h * e + d];
        out[(i64)t * e + d] = a;
    }
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

// Hyper-connections (spec/model.md §2.3, §2.6). `hc_mix` computes, per row, the flat RMSNorm
// of the HC state (no weight) and its `fn` projection; `hc_pre_finish` turns the mix into the
// pre weights, post gates and Sinkhorn-normalised combine matrix (one thread, in the CPU
// reference's order) and forms the sublayer input; `hc_post` writes the sublayer output back
// into the streams; `hc_head_finish` is the head's sigmoid weighting.

#define HC_MAX 8

// mix[t][i] = Σ_c fn[i][c]·(x[first + t][c]·scale_t), scale_t the RMSNorm scale of the row.
// Grid (rows, n_mix); each block recomputes its row's scale (cheap next to the dot).
extern "C" __global__ void hc_mix(const float* x_hc, int first, DW fn, float eps, float* mix) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int t = blockIdx.x, i = blockIdx.y;
    int width = fn.cols;
    const float* x = x_hc + (i64)(first + t) * width;
    double ss = 0.0;
    for (int c = threadIdx.x; c < width; c += blockDim.x) ss += (double)x[c] * (double)x[c];
    ss = block_sum_d(ss, shd);
    float scale = rms_scale(ss, width, eps);
    float acc = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) acc += deq(fn, i, c) * (x[c] * scale);
    acc = block_sum(acc, shf);
    if (threadIdx.x == 0) mix[(i64)t * fn.rows + i] = acc;
}

// Sinkhorn normalisation of one hc × hc matrix (spec §2.3 step 4), exactly as
// model::hc::sinkhorn.
__device__ void sinkhorn_dev(float* c, int hc, int iters, float eps) {
    for (int s = 0; s < hc; s++) {
        float* row = c + s * hc;
        float m = -DS4_INF;
        for (int f = 0; f < hc; f++) m = fmaxf(m, row[f]);
        float sum = 0.0f;
        for (int f = 0; f < hc; f++) {
            row[f] = expf(row[f] - m);
            sum += row[f];
        }
        for (int f = 0; f < hc; f++) row[f] = row[f] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int s = 0; s < hc; s++) {
                float* row = c + s * hc;
                float sum = 0.0f;
                for (int f = 0; f < hc; f++) sum += row[f];
                sum += eps;
                for (int f = 0; f < hc; f++) row[f] /= sum;
            }
        }
        for (int f = 0; f < hc; f++) {
            float sum = 0.0f;
            for (int s = 0; s < hc; s++) sum += c[f + hc * s];
            sum += eps;
            for (int s = 0; s < hc; s++) c[f + hc * s] /= sum;
        }
    }
}

// From mix [rows × (2+hc)·hc]: out[t] = Σ_h (σ(z_h)+eps)·x_hc[t][h], and mixout[t] = post gates
// 2σ(z_{hc+h}) followed by the Sinkhorn-normalised combine matrix. Grid (rows).
extern "C" __global__ void hc_pre_finish(const float* mix, const float* scale3, const float* base,
                                         const float* x_hc, int hc, int e, int iters, float eps,
                                         float* out, float* mixout) {
    __shared__ float pre[HC_MAX];
    __shared__ float pc[HC_MAX + HC_MAX * HC_MAX];
    int t = blockIdx.x;
    int n_mix = (2 + hc) * hc;
    if (threadIdx.x == 0) {
        float z[(2 + HC_MAX) * HC_MAX];
        for (int i = 0; i < n_mix; i++) {
            int k = i < hc ? 0 : (i < 2 * hc ? 1 : 2);
            z[i] = mix[(i64)t * n_mix + i] * scale3[k] + base[i];
        }
        for (int h = 0; h < hc; h++) pre[h] = sigmoidf_ref(z[h]) + eps;
        for (int h = 0; h < hc; h++) pc[h] = 2.0f * sigmoidf_ref(z[hc + h]);
        for (int i = 0; i < hc * hc; i++) pc[hc + i] = z[2 * hc + i];
        sinkhorn_dev(pc + hc, hc, iters, eps);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hc + hc * hc; i += blockDim.x)
        mixout[(i64)t * (hc + hc * hc) + i] = pc[i];
    const float* x = x_hc + (i64)t * hc * e;
    for (int d = threadIdx.x; d < e; d += blockDim.x) {
        float a = 0.0f;
        for (int h = 0; h < hc; h++) a += pre[h] * x[(i64)h * e + d];
        out[(i64)t * e + d] = a;
    }
}

// out[t][f][d] = post[f]·y[t][d] + Σ_s comb[f + hc·s]·x_hc[t][s][d]. Grid (rows, ceil(e/256)).
extern "C" __global__ void hc_post(const float* y, const float* x_hc, const float* mix, int hc,
                                   int e, float* out) {
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

// z[t] = Σ_h (σ(pre[t][h]·scale + base[h]) + eps)·x_hc[first + t][h]. Grid (rows).
extern "C" __global__ void hc_head_finish(const float* pre, const float* x_hc, int first, int hc,
                                          int e, float scale, const float* base, float eps,
                                          float* z) {
    int t = blockIdx.x;
    const float* x = x_hc + (i64)(first + t) * hc * e;
    float w[HC_MAX];
    for (int h = 0; h < hc; h++) w[h] = sigmoidf_ref(pre[(i64)t * hc + h] * scale + base[h]) + eps;
    for (int d = threadIdx.x; d < e; d += blockDim.x) {
        float a = 0.0f;
        for (int h = 0; h < hc; h++) a += w[h] * x[(i64)h * e + d];
        z[(i64)t * e + d] = a;
    }
}

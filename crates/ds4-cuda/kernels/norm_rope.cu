// Row-wise elementwise kernels: the embedding lookup (spec §2.2), RMSNorm of rows or per-head
// groups (spec §0: f64 sum of squares, f32 scale), partial interleaved RoPE of head tails at
// each row's position (spec §2.4.2; angles in f64 as the CPU computes them), scale and add.

// The rotation frequencies of one layer (model::rope::Rope::freq), passed by value.
struct RopeTab {
    float f[64];
    int pairs;
};

// x_hc[t][s·e + c] = f32(table[tokens[t]][c]) for every stream s < n_hc. Grid (rows).
extern "C" __global__ void embed(DW table, const int* tokens, int n_hc, float* x_hc) {
    grid_dep_sync();
    int t = blockIdx.x;
    int e = table.cols;
    i64 row = tokens[t];
    for (int c = threadIdx.x; c < e; c += blockDim.x) {
        float v = deq(table, row, c);
        for (int s = 0; s < n_hc; s++) x_hc[((i64)t * n_hc + s) * e + c] = v;
    }
}

// The RMSNorm scale of g[0..n) (sum of squares in f64; block-cooperative).
__device__ __forceinline__ float group_rms_scale(const float* g, int n, float eps, double* sh) {
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)g[i] * (double)g[i];
    return rms_scale(block_sum_d(ss, sh), n, eps);
}

// RMSNorm in place of each `group`-wide slice (grid: rows·cols/group blocks), weight w (length
// group) or none: v = (v·scale)·w. With `q` (one row, group = cols, a multiple of 32, blockDim
// a multiple of 32), also the three-stage 8-bit planes of the result (quant_q8's q and d, the
// same values: each warp's 32 consecutive outputs are one activation block), so that the
// products reading the row need no quant_q8 launch.
extern "C" __global__ void rms_norm(float* x, const float* w, int group, float eps, i8* q, float* d) {
    grid_dep_sync();
    __shared__ double sh[32];
    float* g = x + (i64)blockIdx.x * group;
    float scale = group_rms_scale(g, group, eps, sh);
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        float v = g[i] * scale;
        v = w ? v * w[i] : v;
        g[i] = v;
        if (q) q8_store_lane(v, q + i, group, d + i / 32);
    }
}

// Rotation of the pair (a, b) by the angle pos·f (inverse: −angle), as the CPU computes it.
__device__ __forceinline__ void rope_pair(float* a, float* b, int pos, float f, int inverse) {
    double theta = (double)pos * (double)f;
    double sd, cd;
    sincos(theta, &sd, &cd);
    float s = (float)(inverse ? -sd : sd), c = (float)cd;
    float x = *a, y = *b;
    *a = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
    *b = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
}

// RoPE of the trailing 2·pairs dims of one head at position p (a thread per pair).
__device__ __forceinline__ void rope_head(float* head, int head_dim, int p, const RopeTab& tab,
                                          int inverse) {
    float* tail = head + head_dim - 2 * tab.pairs;
    for (int k = threadIdx.x; k < tab.pairs; k += blockDim.x)
        rope_pair(tail + 2 * k, tail + 2 * k + 1, p, tab.f[k], inverse);
}

// RoPE of the trailing 2·pairs dims of every head_dim-wide head of each row at pos[row].
// Grid (rows, heads); one thread per pair.
extern "C" __global__ void rope(float* x, int cols, int head_dim, const int* pos, RopeTab tab,
                                int inverse) {
    grid_dep_sync();
    int t = blockIdx.x, h = blockIdx.y;
    rope_head(x + (i64)t * cols + (i64)h * head_dim, head_dim, pos[t], tab, inverse);
}

// RMSNorm of each head_dim-wide head of each row (weight w of length head_dim, or none), then
// RoPE of its trailing 2·pairs dims at pos[row]: rms_norm then rope in one launch, the same
// values (the rotation reads the normed floats back from the head). Grid (rows, heads).
extern "C" __global__ void head_norm_rope(float* x, const float* w, int head_dim, float eps,
                                          int cols, const int* pos, RopeTab tab) {
    grid_dep_sync();
    __shared__ double sh[32];
    int t = blockIdx.x, h = blockIdx.y;
    float* g = x + (i64)t * cols + (i64)h * head_dim;
    float scale = group_rms_scale(g, head_dim, eps, sh);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = g[i] * scale;
        g[i] = w ? v * w[i] : v;
    }
    __syncthreads();
    rope_head(g, head_dim, pos[t], tab, 0);
}

extern "C" __global__ void scale(float* x, i64 n, float s) {
    grid_dep_sync();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] *= s;
}

extern "C" __global__ void add(float* y, const float* x, i64 n) {
    grid_dep_sync();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] += x[i];
}

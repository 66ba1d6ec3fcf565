// Decode-product lab: times the engine's matrix-vector kernels (kernels/matmul.cu, included
// as they are: mv_q8_0, mvp_q8_0, gu_iq2_xxs, dn_q2_k) against a plain streaming read and
// an experimental variant (dnx_q2_k: the down product with the activation's 16-value sums
// precomputed) on the full-size shapes of one decode step, with weights rotated through more
// copies than L2 holds, and checks each variant's output against the engine kernel's. Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/mv-lab tools/device/mv-lab.cu && /tmp/mv-lab
// Weights are random bytes with small fixed scales: only speed and agreement are measured.
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cmath>

#include "../../crates/ds4-cuda/kernels/common.cuh"
// The tables the host prepends (values are irrelevant to speed; grid bytes < 128 as in ggml's).
__device__ u64 iq2xxs_grid[256];
__device__ u8 ksigns_iq2xs[128];
__device__ u64 iq2xs_grid[512];
__device__ u32 iq3xxs_grid[256];
__device__ i8 kvalues_mxfp4[16];
#include "../../crates/ds4-cuda/kernels/numerics.cu"
#include "../../crates/ds4-cuda/kernels/matmul.cu"
#include "../../crates/ds4-cuda/kernels/repack.cu"

#include "lab.cuh"

// ---- experimental variants ---------------------------------------------------------------

// Plain streaming read of the same bytes (the bandwidth a trivial kernel reaches).
__global__ void stream_read(const int4* p, i64 n, int* out) {
    int acc = 0;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678) out[0] = acc;
}

// Q2_K down (dn_q2_k's layout: 2 warps a row, slots split between them) with the
// activation's 16-value sums precomputed (xs16: one float a 16-value chunk, the f32
// activation's sum) instead of three dp4a sums a stage; the quants come from q2_k_group.
__global__ void __launch_bounds__(256) dnx_q2_k(DW down, const i8* mq, const float* md,
                                                const float* xs16, const int* ids, int k,
                                                float* y) {
    __shared__ float part[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int cols = down.cols, kspl = 2;
    int r = blockIdx.x * (8 / kspl) + warp / kspl, sl = warp % kspl;
    float acc = 0.0f;
    if (r < down.rows) {
        for (int s = sl; s < k; s += kspl) {
            i64 grow = (i64)ids[s] * down.rows + r;
            const i8* xq = mq + (i64)s * 3 * cols;
            const float* xd = md + (i64)s * (cols / 32);
            const float* xs = xs16 + (i64)s * (cols / 16);
            const u8* row = down.a + grow * plane_row_bytes(TY_Q2_K, cols);
#pragma unroll 4
            for (int u = lane; u < cols / 16; u += 32) {
                int wq[4], sc;
                float d, dmin;
                q2_k_group(row, u, wq, &sc, &d, &dmin);
                int sq[3] = {0, 0, 0};
#pragma unroll
                for (int p = 0; p < EXPERT_STAGES; p++) {
                    int4 xv = *(const int4*)(xq + p * cols + 16 * u);
                    int t = __dp4a(wq[0], xv.x, 0);
                    t = __dp4a(wq[1], xv.y, t);
                    t = __dp4a(wq[2], xv.z, t);
                    sq[p] = (sc & 15) * __dp4a(wq[3], xv.w, t);
                }
                acc += d * fold3(sq[0], sq[1], sq[2]) * xd[u >> 1] - dmin * (float)(sc >> 4) * xs[u];
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (lane == 0 && sl == 0 && r < down.rows) y[r] = part[warp] + part[warp + 1];
}

// gu_iq2_xxs (kspl 1) with the row loop's unroll and the blocks an SM the compiler must fit
// (register budget) as parameters: is the 128-register, 25 %-occupancy engine kernel short
// of warps rather than of instructions?
template <int UNROLL, int MINB>
__global__ void __launch_bounds__(256, MINB) guv_iq2_xxs(DW gate, DW up, const i8* xq, const float* xd,
                                                         const int* ids, const float* wts,
                                                         float clamp, float* mid) {
    DECLARE_IQ2_TABLES
    int s = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * 8 + warp;
    if (r >= gate.rows) return;
    i64 grow = (i64)ids[s] * gate.rows + r;
    float ga = 0.0f, ua = 0.0f;
#pragma unroll UNROLL
    for (int c = lane; c < gate.cols / 16; c += 32) {
        int4 xv[3];
        iq2_xxs_x(xq, gate.cols, c, xv);
        float dx = xd[c >> 1];
        ga += iq2_xxs_part(gate, grow, c, xv, dx, tab);
        ua += iq2_xxs_part(up, grow, c, xv, dx, tab);
    }
    warp_sum2(&ga, &ua);
    if (lane == 0) {
        float m = siluf_ref(fminf(ga, clamp)) * fminf(fmaxf(ua, -clamp), clamp);
        mid[(i64)s * gate.rows + r] = m * wts[s];
    }
}

// Raw 66-byte IQ2_XXS blocks from the planes (the input repack_iq2c takes).
__global__ void join_iq2_xxs(const u8* qs, const u8* d, i64 nb, u8* raw) {
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (i64)gridDim.x * blockDim.x) {
        raw[b * 66] = d[2 * b];
        raw[b * 66 + 1] = d[2 * b + 1];
        for (int i = 0; i < 64; i++) raw[b * 66 + 2 + i] = qs[b * 64 + i];
    }
}

// Σ of each 16 activation values (the XSUM input).
__global__ void xsum16(const float* x, int n, float* o) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n / 16) return;
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += x[16 * i + k];
    o[i] = s;
}

// ---- harness ------------------------------------------------------------------------------

__global__ void fill_bytes(u8* p, i64 n, u32 seed) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        p[i] = (u8)h;
    }
}
__global__ void fill_u16(u16* p, i64 n, u16 v) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) p[i] = v;
}
// Q2_K blocks: d, dmin at bytes 80..83 set to small f16 values.
__global__ void fix_q2k(u8* p, i64 nblk) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < nblk; i += (i64)gridDim.x * blockDim.x) {
        u16* s = (u16*)(p + i * 84 + 80);
        s[0] = 0x2000;
        s[1] = 0x1c00;
    }
}
__global__ void fill_f32(float* p, i64 n, u32 seed) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        p[i] = ((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}
__global__ void init_grid() {
    int i = threadIdx.x;
    u64 g = 0;
    for (int b = 0; b < 8; b++) g |= (u64)((i * 7 + b * 13) % 3 == 0 ? 8 : ((i + b) % 3 == 1 ? 25 : 43)) << (8 * b);
    iq2xxs_grid[i] = g;
}

static int mv_split(int rows, int cols) {
    int k = (4096 + rows - 1) / rows, p = 1;
    while (p < k) p <<= 1;
    p = p < 8 ? p : 8;
    int c = cols / 256 > 0 ? cols / 256 : 1, q = 1;
    while (q < c) q <<= 1;
    return p < q ? p : q;
}

struct Timer {
    cudaEvent_t a, b;
    Timer() { cudaEventCreate(&a); cudaEventCreate(&b); }
    void start() { cudaEventRecord(a); }
    float stop_us(int n) {
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        return ms * 1000.0f / n;
    }
};

static float max_rel(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0, s = 0;
    for (size_t i = 0; i < a.size(); i++) {
        m = fmax(m, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)a[i]));
    }
    return (float)(m / (s > 0 ? s : 1));
}

static std::vector<float> host(const float* d, size_t n) {
    std::vector<float> v(n);
    CK(cudaMemcpy(v.data(), d, n * 4, cudaMemcpyDeviceToHost));
    return v;
}

// One Q8_0 shape: `rows` × `cols`, `groups` activation rows (rows / groups a group).
static void bench_q8(const char* name, int rows, int cols, int groups, int nsm) {
    const int NC = 8;  // copies rotated (> L2 for every shape here)
    i64 qbytes = (i64)rows * cols, dbytes = (i64)rows * (cols / 32) * 2;
    int copies = NC;
    while (copies > 2 && (qbytes + dbytes) * copies > (i64)2 << 30) copies--;
    std::vector<DW> ws(copies);
    for (int c = 0; c < copies; c++) {
        u8 *a, *b;
        CK(cudaMalloc(&a, qbytes));
        CK(cudaMalloc(&b, dbytes));
        fill_bytes<<<1024, 256>>>(a, qbytes, 17 + c);
        fill_u16<<<1024, 256>>>((u16*)b, dbytes / 2, 0x1c00);
        ws[c] = DW{a, b, TY_Q8_0, rows, cols};
    }
    float *x, *xd, *y0, *y1;
    i8* xq;
    CK(cudaMalloc(&x, (i64)groups * cols * 4));
    CK(cudaMalloc(&xq, (i64)groups * cols * 3));
    CK(cudaMalloc(&xd, (i64)groups * cols / 32 * 4));
    CK(cudaMalloc(&y0, rows * 4));
    CK(cudaMalloc(&y1, rows * 4));
    fill_f32<<<256, 256>>>(x, (i64)groups * cols, 5);
    int qb = groups * cols / 32;
    quant_q8<<<(qb + 7) / 8, 256>>>(x, cols, cols, groups, xq, xd);
    CK(cudaDeviceSynchronize());
    int rpg = rows / groups;
    int kspl = mv_split(rows, cols);
    Timer t;
    const int N = 40;
    double gb = (double)(qbytes + dbytes) / 1e9;
    auto report = [&](const char* v, float us, float rel) {
        printf("%-6s %-26s %8.2f us %7.2f TB/s  rel %.2e\n", name, v, us, gb / us * 1e3, rel);
    };
    // engine kernel
    auto run0 = [&](int c) {
        mv_q8_0<<<(rows + 8 / kspl - 1) / (8 / kspl), 256>>>(ws[c], 0, nullptr, xq, xd, rpg, y0, kspl, 0);
    };
    for (int i = 0; i < 3; i++) run0(i % copies);
    t.start();
    for (int i = 0; i < N; i++) run0(i % copies);
    float us0 = t.stop_us(N);
    CK(cudaGetLastError());
    run0(0);
    std::vector<float> ref = host(y0, rows);
    report("mv_q8_0 (engine)", us0, 0.0f);
    auto trial = [&](const char* v, auto launch) {
        for (int i = 0; i < 3; i++) launch(i % copies);
        t.start();
        for (int i = 0; i < N; i++) launch(i % copies);
        float us = t.stop_us(N);
        CK(cudaGetLastError());
        launch(0);
        CK(cudaDeviceSynchronize());
        report(v, us, max_rel(ref, host(y1, rows)));
    };
    for (int bps : {2, 4, 8}) {
        char v[64];
        snprintf(v, sizeof v, "mvp_q8_0 (engine) %d blk/SM", bps);
        trial(v, [&](int c) { mvp_q8_0<<<nsm * bps, 256>>>(ws[c], 0, xq, xd, rpg, y1, 0); });
    }
    {
        int* o;
        CK(cudaMalloc(&o, 4));
        auto sr = [&](int c) { stream_read<<<nsm * 8, 256>>>((const int4*)ws[c].a, qbytes / 16, o); };
        for (int i = 0; i < 3; i++) sr(i % copies);
        t.start();
        for (int i = 0; i < N; i++) sr(i % copies);
        float us = t.stop_us(N);
        printf("%-6s %-26s %8.2f us %7.2f TB/s\n", name, "stream_read (quants only)", us, (double)qbytes / 1e9 / us * 1e3);
        cudaFree(o);
    }
    for (auto& w : ws) {
        cudaFree((void*)w.a);
        cudaFree((void*)w.b);
    }
    cudaFree(x); cudaFree(xq); cudaFree(xd); cudaFree(y0); cudaFree(y1);
}

static void bench_experts(int nsm) {
    const int E = 256, K = 6, FF = 2048, D = 4096;
    // gate/up IQ2_XXS: [E·FF rows × D], repacked planes: 64 B quants + 2 B d per 256
    i64 nb = (i64)E * FF * (D / 256);
    u8 *ga, *gb, *ua, *ub;
    CK(cudaMalloc(&ga, nb * 64)); CK(cudaMalloc(&gb, nb * 2));
    CK(cudaMalloc(&ua, nb * 64)); CK(cudaMalloc(&ub, nb * 2));
    fill_bytes<<<4096, 256>>>(ga, nb * 64, 3); fill_bytes<<<4096, 256>>>(ua, nb * 64, 4);
    fill_u16<<<1024, 256>>>((u16*)gb, nb, 0x1c00); fill_u16<<<1024, 256>>>((u16*)ub, nb, 0x1c00);
    DW gate{ga, gb, TY_IQ2_XXS, FF, D}, up{ua, ub, TY_IQ2_XXS, FF, D};
    // down Q2_K: [E·D rows × FF], GGUF blocks of 84 B
    i64 dnb = (i64)E * D * (FF / 256);
    u8* da;
    CK(cudaMalloc(&da, dnb * 84));
    fill_bytes<<<4096, 256>>>(da, dnb * 84, 9);
    fix_q2k<<<1024, 256>>>(da, dnb);
    DW down{da, nullptr, TY_Q2_K, D, FF};
    init_grid<<<1, 256>>>();
    float *x, *xd, *wts, *mid0, *mid1, *y0, *y1, *md, *xs;
    i8 *xq, *mq;
    int* ids;
    const int NSETS = 16;
    CK(cudaMalloc(&x, D * 4)); CK(cudaMalloc(&xq, D * 3)); CK(cudaMalloc(&xd, D / 32 * 4));
    CK(cudaMalloc(&wts, K * 4)); CK(cudaMalloc(&ids, NSETS * K * 4));
    CK(cudaMalloc(&mid0, K * FF * 4)); CK(cudaMalloc(&mid1, K * FF * 4));
    CK(cudaMalloc(&mq, K * FF * 3)); CK(cudaMalloc(&md, K * FF / 32 * 4)); CK(cudaMalloc(&xs, K * FF / 16 * 4));
    CK(cudaMalloc(&y0, D * 4)); CK(cudaMalloc(&y1, D * 4));
    fill_f32<<<64, 256>>>(x, D, 11);
    quant_q8<<<D / 32 / 8, 256>>>(x, D, D, 1, xq, xd);
    std::vector<int> hid(NSETS * K);
    for (int i = 0; i < NSETS * K; i++) hid[i] = (i * 37 + 11) % E;
    CK(cudaMemcpy(ids, hid.data(), hid.size() * 4, cudaMemcpyHostToDevice));
    std::vector<float> hw(K, 0.25f);
    CK(cudaMemcpy(wts, hw.data(), K * 4, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());
    Timer t;
    const int N = 48;
    double gbu = (double)K * 2 * FF * (D / 256) * 66 / 1e9, gbd = (double)K * D * (FF / 256) * 84 / 1e9;
    auto time = [&](auto launch) {
        for (int i = 0; i < 3; i++) launch(i % NSETS);
        t.start();
        for (int i = 0; i < N; i++) launch(i % NSETS);
        float us = t.stop_us(N);
        CK(cudaGetLastError());
        launch(0);
        CK(cudaDeviceSynchronize());
        return us;
    };
    dim3 gg(FF / 8, K);
    float us = time([&](int s) { gu_iq2_xxs<<<gg, 256>>>(gate, up, x, xq, xd, ids + s * K, wts, 10.0f, mid0, 1); });
    std::vector<float> ref = host(mid0, K * FF);
    printf("experts gu_iq2_xxs (engine)        %8.2f us %7.2f TB/s\n", us, gbu / us * 1e3);
    auto guv = [&](const char* v, auto kern) {
        float u = time([&](int s) { kern<<<gg, 256>>>(gate, up, xq, xd, ids + s * K, wts, 10.0f, mid1); });
        printf("experts guv %-24s %8.2f us %7.2f TB/s rel %.2e\n", v, u, gbu / u * 1e3, max_rel(ref, host(mid1, K * FF)));
    };
    guv("unroll 4, 2 blk/SM", guv_iq2_xxs<4, 2>);
    guv("unroll 2, 3 blk/SM", guv_iq2_xxs<2, 3>);
    guv("unroll 2, 4 blk/SM", guv_iq2_xxs<2, 4>);
    guv("unroll 1, 4 blk/SM", guv_iq2_xxs<1, 4>);
    guv("unroll 8, 1 blk/SM", guv_iq2_xxs<8, 1>);
    // The same gate/up as 4-bit codes (repack_iq2c): twice the bytes, a permute per 4 weights.
    {
        u8 *raw, *gc, *gs, *uc, *us;
        CK(cudaMalloc(&raw, nb * 66));
        CK(cudaMalloc(&gc, nb * 128)); CK(cudaMalloc(&gs, nb * 8));
        CK(cudaMalloc(&uc, nb * 128)); CK(cudaMalloc(&us, nb * 8));
        join_iq2_xxs<<<4096, 256>>>(ga, gb, nb, raw);
        repack_iq2c<<<4096, 256>>>(raw, nb, gc, gs);
        join_iq2_xxs<<<4096, 256>>>(ua, ub, nb, raw);
        repack_iq2c<<<4096, 256>>>(raw, nb, uc, us);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(raw));
        DW gcw{gc, gs, TY_IQ2C, FF, D}, ucw{uc, us, TY_IQ2C, FF, D};
        double gbc = (double)K * 2 * FF * (D / 256) * 136 / 1e9;
        float u = time([&](int s) { gu_iq2c<<<gg, 256>>>(gcw, ucw, x, xq, xd, ids + s * K, wts, 10.0f, mid1, 1); });
        std::vector<float> got = host(mid1, K * FF);
        int same = 0;
        for (int i = 0; i < K * FF; i++) same += memcmp(&got[i], &ref[i], 4) == 0;
        printf("experts gu_iq2c (4-bit codes)      %8.2f us %7.2f TB/s rel %.2e, %d of %d bit-equal\n", u,
               gbc / u * 1e3, max_rel(ref, got), same, K * FF);
        CK(cudaFree(gc)); CK(cudaFree(gs)); CK(cudaFree(uc)); CK(cudaFree(us));
    }
    // down: mid from the engine's gate/up output
    CK(cudaMemcpy(mid1, mid0, K * FF * 4, cudaMemcpyDeviceToDevice));
    quant_q8<<<K * FF / 32 / 8, 256>>>(mid0, FF, FF, K, mq, md);
    xsum16<<<(K * FF / 16 + 255) / 256, 256>>>(mid0, K * FF, xs);
    CK(cudaDeviceSynchronize());
    us = time([&](int s) { dn_q2_k<<<D / 4, 256>>>(down, mid0, mq, md, ids + s * K, K, y0, 2); });
    ref = host(y0, D);
    printf("experts dn_q2_k (engine, kspl 2)   %8.2f us %7.2f TB/s\n", us, gbd / us * 1e3);
    us = time([&](int s) { dnx_q2_k<<<D / 4, 256>>>(down, mq, md, xs, ids + s * K, K, y1); });
    printf("experts dnx: precomputed sums     %8.2f us %7.2f TB/s rel %.2e\n", us, gbd / us * 1e3, max_rel(ref, host(y1, D)));
}

int main(int argc, char** argv) {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("%s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
    int nsm = p.multiProcessorCount;
    bench_q8("q_a", 1024, 4096, 1, nsm);
    bench_q8("q_b", 32768, 1024, 1, nsm);
    bench_q8("o_a", 8192, 4096, 8, nsm);
    bench_q8("o_b", 4096, 8192, 1, nsm);
    bench_q8("sh_dn", 4096, 2048, 1, nsm);
    bench_q8("sh_gu", 4096, 4096, 1, nsm);  // gate and up as one matrix
    bench_q8("head", 129280, 4096, 1, nsm);
    bench_experts(nsm);
    return 0;
}

// L2 prefetch lab: can a decode step's latency-bound stretches (attention, the HC boundary,
// routing: DRAM mostly idle) pull the next product's weights into L2, so that the product
// then reads them at L2 speed? Times the engine's mvp_q8_0 (kernels/matmul.cu, included as it
// is) on the full-size Q8_0 shapes after a busy-wait kernel that stands for the latency-bound
// work, with and without a prefetch of its weights issued just before the wait, weights
// rotated through more copies than L2 holds. Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/l2-lab tools/device/l2-lab.cu && /tmp/l2-lab
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cmath>

#include "../../crates/ds4-cuda/kernels/common.cuh"
__device__ u64 iq2xxs_grid[256];
__device__ u8 ksigns_iq2xs[128];
__device__ u64 iq2xs_grid[512];
__device__ u32 iq3xxs_grid[256];
__device__ i8 kvalues_mxfp4[16];
#include "../../crates/ds4-cuda/kernels/numerics.cu"
#include "../../crates/ds4-cuda/kernels/matmul.cu"

#include "lab.cuh"

__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Stands for a latency-bound stretch: one small block busy for `ns`.
__global__ void spin(u64 ns) {
    u64 t0 = now_ns();
    while (now_ns() - t0 < ns) {
    }
}

// Bulk (TMA) prefetch: thread 0 of each block asks L2 for chunks of `chunk` bytes, blocks
// striding over [p, p + n). Fire and forget: nothing waits for the data.
__global__ void pf_bulk(const u8* p, i64 n, int chunk) {
    if (threadIdx.x != 0) return;
    for (i64 o = (i64)blockIdx.x * chunk; o < n; o += (i64)gridDim.x * chunk) {
        u32 sz = (u32)((n - o) < chunk ? (n - o) : chunk) & ~15u;
        if (sz) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"(sz) : "memory");
    }
}

// Per-line prefetch: each thread asks L2 for 128-byte lines.
__global__ void pf_lines(const u8* p, i64 n) {
    for (i64 o = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 128; o < n;
         o += (i64)gridDim.x * blockDim.x * 128)
        asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p + o));
}

__global__ void fill_bytes(u8* p, i64 n, u32 seed) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        p[i] = (u8)(h >> 24);
    }
}
__global__ void fill_u16(u16* p, i64 n, u16 v) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) p[i] = v;
}
__global__ void fill_f32(float* p, i64 n, u32 seed) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2246822519u ^ seed;
        h ^= h >> 15;
        p[i] = ((float)(h & 0xffff) / 65536.0f - 0.5f);
    }
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

struct Mat {
    DW w;
    i64 qbytes, dbytes;
};

static std::vector<Mat> mats(int rows, int cols, int copies) {
    std::vector<Mat> v(copies);
    for (int c = 0; c < copies; c++) {
        u8 *a, *b;
        i64 qb = (i64)rows * cols, db = (i64)rows * (cols / 32) * 2;
        CK(cudaMalloc(&a, qb));
        CK(cudaMalloc(&b, db));
        fill_bytes<<<1024, 256>>>(a, qb, 17 + c);
        fill_u16<<<1024, 256>>>((u16*)b, db / 2, 0x1c00);
        v[c] = Mat{DW{a, b, TY_Q8_0, rows, cols}, qb, db};
    }
    return v;
}

int main() {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    int nsm = p.multiProcessorCount;
    printf("%s, %d SMs, L2 %d MB, persisting max %d MB\n", p.name, nsm, p.l2CacheSize >> 20,
           p.persistingL2CacheMaxSize >> 20);
    struct Shape {
        const char* name;
        int rows, cols, groups;
    } shapes[] = {{"q_b", 32768, 1024, 1}, {"o_a", 8192, 4096, 8}, {"o_b", 4096, 8192, 1},
                  {"sh_gu", 4096, 4096, 1}};
    float *x, *xd, *y;
    i8* xq;
    CK(cudaMalloc(&x, 8 * 8192 * 4));
    CK(cudaMalloc(&xq, 8 * 8192 * 3));
    CK(cudaMalloc(&xd, 8 * 8192 / 32 * 4));
    CK(cudaMalloc(&y, 32768 * 4));
    fill_f32<<<256, 256>>>(x, 8 * 8192, 5);
    Timer t;
    const int N = 40, NC = 8;
    for (auto& sh : shapes) {
        auto ms = mats(sh.rows, sh.cols, NC);
        quant_q8<<<(sh.groups * sh.cols / 32 + 7) / 8, 256>>>(x, sh.cols, sh.cols, sh.groups, xq, xd);
        CK(cudaDeviceSynchronize());
        int rpg = sh.rows / sh.groups;
        double mb = (ms[0].qbytes + ms[0].dbytes) / 1e6;
        auto mv = [&](int c) { mvp_q8_0<<<nsm * 4, 256>>>(ms[c].w, 0, xq, xd, rpg, y, 0); };
        auto pf = [&](int c, int mode) {
            if (mode == 1) {
                pf_bulk<<<nsm, 32>>>(ms[c].w.a, ms[c].qbytes, 64 << 10);
                pf_bulk<<<8, 32>>>(ms[c].w.b, ms[c].dbytes, 64 << 10);
            } else if (mode == 2) {
                pf_bulk<<<nsm, 32>>>(ms[c].w.a, ms[c].qbytes, 16 << 10);
                pf_bulk<<<8, 32>>>(ms[c].w.b, ms[c].dbytes, 16 << 10);
            } else if (mode == 3) {
                pf_lines<<<nsm * 2, 256>>>(ms[c].w.a, ms[c].qbytes);
                pf_lines<<<16, 256>>>(ms[c].w.b, ms[c].dbytes);
            }
        };
        auto run = [&](auto body) {
            for (int i = 0; i < 3; i++) body(i % NC);
            t.start();
            for (int i = 0; i < N; i++) body(i % NC);
            float us = t.stop_us(N);
            CK(cudaGetLastError());
            return us;
        };
        printf("%-6s %.1f MB\n", sh.name, mb);
        float cold = run([&](int c) { mv(c); });
        float warm = run([&](int c) { mv(0); });
        printf("  product alone: rotated %.2f us (%.2f TB/s), same copy %.2f us (%.2f TB/s)\n", cold,
               mb / cold / 1e6 * 1e6 / 1e3, warm, mb / warm / 1e3);
        for (int mode = 1; mode <= 3; mode++) {
            float pa = run([&](int c) { pf(c, mode); });
            printf("  prefetch mode %d alone: %.2f us a launch pair\n", mode, pa);
        }
        for (u64 wait : {0ull, 10000ull, 20000ull, 40000ull}) {
            float s = run([&](int c) { spin<<<1, 32>>>(wait); });
            float base = run([&](int c) { spin<<<1, 32>>>(wait); mv(c); });
            printf("  wait %2llu us: spin %.2f, spin+product %.2f (product %.2f)", wait / 1000, s, base,
                   base - s);
            for (int mode = 1; mode <= 3; mode++) {
                float v = run([&](int c) { pf(c, mode); spin<<<1, 32>>>(wait); mv(c); });
                printf(" | pf%d %.2f (%.2f)", mode, v, v - s);
            }
            printf("\n");
        }
        for (auto& m : ms) {
            cudaFree((void*)m.w.a);
            cudaFree((void*)m.w.b);
        }
    }
    // o_a then o_b: o_a prefetched during a 40 us wait, o_b's prefetch issued as o_a starts.
    {
        auto a = mats(8192, 4096, NC), b = mats(4096, 8192, NC);
        quant_q8<<<(8 * 4096 / 32 + 7) / 8, 256>>>(x, 4096, 4096, 8, xq, xd);
        CK(cudaDeviceSynchronize());
        auto run = [&](auto body) {
            for (int i = 0; i < 3; i++) body(i % NC);
            t.start();
            for (int i = 0; i < N; i++) body(i % NC);
            return t.stop_us(N);
        };
        auto pfb = [&](const Mat& m) {
            pf_bulk<<<nsm, 32>>>(m.w.a, m.qbytes, 64 << 10);
            pf_bulk<<<8, 32>>>(m.w.b, m.dbytes, 64 << 10);
        };
        float s = run([&](int c) { spin<<<1, 32>>>(40000); });
        float base = run([&](int c) {
            spin<<<1, 32>>>(40000);
            mvp_q8_0<<<nsm * 4, 256>>>(a[c].w, 0, xq, xd, 1024, y, 0);
            mvp_q8_0<<<nsm * 4, 256>>>(b[c].w, 0, xq, xd, 4096, y, 0);
        });
        float one = run([&](int c) {
            pfb(a[c]);
            spin<<<1, 32>>>(40000);
            mvp_q8_0<<<nsm * 4, 256>>>(a[c].w, 0, xq, xd, 1024, y, 0);
            mvp_q8_0<<<nsm * 4, 256>>>(b[c].w, 0, xq, xd, 4096, y, 0);
        });
        float two = run([&](int c) {
            pfb(a[c]);
            spin<<<1, 32>>>(40000);
            pfb(b[c]);
            mvp_q8_0<<<nsm * 4, 256>>>(a[c].w, 0, xq, xd, 1024, y, 0);
            mvp_q8_0<<<nsm * 4, 256>>>(b[c].w, 0, xq, xd, 4096, y, 0);
        });
        printf("o_a+o_b after a 40 us wait: none %.2f, o_a prefetched %.2f, both %.2f (products %.2f / %.2f / %.2f)\n",
               base, one, two, base - s, one - s, two - s);
    }
    return 0;
}

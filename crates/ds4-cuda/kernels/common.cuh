// Shared definitions of the ds4 CUDA kernels: integer types, f16 conversion, warp and block
// reductions, and the device-weight descriptor. Every kernel file includes this first (the host
// concatenates the files into one NVRTC source). The same source also compiles on the CPU
// under the project's emulator (tools/cuda-emu, DS4_EMU defined), which supplies threadIdx,
// __syncthreads, shuffles and the other CUDA built-ins; the few places that use PTX have an
// emulator branch here and nowhere else.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define WARP 32
#define DS4_INF __int_as_float(0x7f800000)
#define FULL_MASK 0xffffffffu

// ggml type ids (spec/model.md §4).
#define TY_F32 0
#define TY_F16 1
#define TY_Q8_0 8
#define TY_Q2_K 10
#define TY_Q3_K 11
#define TY_Q4_K 12
#define TY_Q5_K 13
#define TY_Q6_K 14
#define TY_IQ2_XXS 16
#define TY_IQ2_XS 17
#define TY_IQ3_XXS 18
#define TY_BF16 30
#define TY_MXFP4 39
// Not a ggml type: IQ2_XXS expanded at upload into one 4-bit code a weight (kernels/repack.cu,
// repack_iq2c), which the decode dots turn into int8 with one byte permute per four weights.
#define TY_IQ2C 1016

#ifdef DS4_EMU
#define DYN_SHARED(T, name) T* name = (T*)emu_dyn_smem()
#else
#define DYN_SHARED(T, name)                                        \
    extern __shared__ __align__(16) unsigned char ds4_dyn_smem[]; \
    T* name = (T*)ds4_dyn_smem
#endif

// IEEE binary16 bits to float (exact) and float to the nearest binary16 (ties to even).
__device__ __forceinline__ float h2f(u16 h) {
#ifdef DS4_EMU
    return emu_h2f(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ u16 f2h(float f) {
#ifdef DS4_EMU
    return emu_f2h(f);
#else
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// a − b per f16 half (round to nearest; exact for the small integers mmq.cu forms).
__device__ __forceinline__ u32 h2_sub(u32 a, u32 b) {
#ifdef DS4_EMU
    u32 lo = emu_f2h(emu_h2f((u16)(a & 0xffffu)) - emu_h2f((u16)(b & 0xffffu)));
    u32 hi = emu_f2h(emu_h2f((u16)(a >> 16)) - emu_h2f((u16)(b >> 16)));
    return lo | (hi << 16);
#else
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
#endif
}

__device__ __forceinline__ u16 ld_u16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }

__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

#ifdef DS4_EMU
// One exchange per reduction under the emulator (tools/cuda-emu/emu.h); the butterfly below
// on the GPU. Both sum in an order fixed by the lane numbers.
__device__ __forceinline__ float warp_sum(float v) {
    return emu_warp_reduce(v, [](float a, float b) { return a + b; });
}
__device__ __forceinline__ double warp_sum_d(double v) {
    return emu_warp_reduce(v, [](double a, double b) { return a + b; });
}
__device__ __forceinline__ float warp_max(float v) {
    return emu_warp_reduce(v, [](float a, float b) { return fmaxf(a, b); });
}
__device__ __forceinline__ int warp_sum_i(int v) {
    return emu_warp_reduce(v, [](int a, int b) { return a + b; });
}
__device__ __forceinline__ void warp_sum2(float* a, float* b) {
    *a = warp_sum(*a);
    *b = warp_sum(*b);
}
#else
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Two warp sums with their shuffles interleaved (the same order per value as warp_sum).
__device__ __forceinline__ void warp_sum2(float* a, float* b) {
    float x = *a, y = *b;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x += __shfl_xor_sync(FULL_MASK, x, o);
        y += __shfl_xor_sync(FULL_MASK, y, o);
    }
    *a = x;
    *b = y;
}
#endif

// Programmatic dependent launch (Hopper): every kernel is launched allowed to start before the
// kernel ahead of it in the stream has finished (driver::Device::launch), so its blocks are
// scheduled while that kernel drains instead of after a full launch gap. The first statement of
// every kernel is this call: it waits until the previous grid has completed and its writes are
// visible, then lets the next grid be scheduled (which, in turn, waits here). Because every
// kernel waits for its predecessor's completion before finishing, completion stays transitive
// down the stream. Before sm_90 and under the emulator (serial launches) it is a no-op.
//
// PRE_WAIT: a kernel may read, before its wait, what no kernel still running can be writing —
// constant weights, and state written two launches back or earlier (the launch before it has
// passed its own wait, so the one before that has completed) — so that those loads are in
// flight while the launch ahead drains. Such a kernel begins with a comment that starts
// "// Before the wait" and saying what it reads (tests/nvrtc_compile.rs checks the form).
__device__ __forceinline__ void grid_dep_wait() {
#if !defined(DS4_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The decode timeline (DS4_CUDA_TIMELINE=1, timeline.rs): DS4_TIMELINE is then the address of
// a device buffer {count, pad, then entries of four words: the global timer in ns and the
// first 24 bytes of the kernel's name}; block 0 of every launch appends one entry as it passes
// grid_dep_wait, so a step's stamps are its kernels' start times as they really run (graphs,
// dependent launch and branches on). Without the define nothing is stamped.
#ifdef DS4_TIMELINE
__device__ __forceinline__ void timeline_stamp(const char* name) {
    if (threadIdx.x | blockIdx.x | blockIdx.y | blockIdx.z) return;
    unsigned long long* t = (unsigned long long*)DS4_TIMELINE;
    unsigned long long now, i = atomicAdd(t, 1ull);
    if (i >= DS4_TIMELINE_CAP) return;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    unsigned long long* e = t + 2 + 4 * i;
    e[0] = now;
    bool end = false;
    for (int w = 0; w < 3; w++) {
        unsigned long long v = 0;
        for (int b = 0; b < 8 && !end; b++) {
            unsigned long long c = (unsigned char)name[8 * w + b];
            end = c == 0;
            v |= c << (8 * b);
        }
        e[1 + w] = v;
    }
}
#define grid_dep_sync() (grid_dep_wait(), timeline_stamp(__func__))
#else
#define grid_dep_sync() grid_dep_wait()
#endif

// A barrier of the block's first n threads (named barrier 1, n a multiple of 32), for blocks
// whose other warps go on alone meanwhile (hc_step's Sinkhorn warp).
__device__ __forceinline__ void bar_first(int n) {
#ifdef DS4_EMU
    emu_bar_first(n);
#else
    asm volatile("bar.sync 1, %0;" ::"r"(n) : "memory");
#endif
}

// Thread-block clusters (Hopper, sm_90): the blocks of a cluster run at once on one GPC and
// can read each other's shared memory. `cluster_arrive` and `cluster_wait` are the two halves of
// the cluster barrier (release / acquire: a block's shared and global writes before its arrive
// are visible to every block of the cluster after their wait); every thread of the cluster
// calls both, in turn, warp by warp (.aligned). `cluster_peer(p, r)` is the address of the
// shared variable `p` in the cluster's block r (its rank: blockIdx.y for the clusters here,
// which are (1, n, 1)); a block must not exit while another may still read its shared memory.
// Before sm_90 these are not used (the host launches no cluster kernel there); under the
// emulator a cluster's blocks run as one group of fibers (tools/cuda-emu/emu.h).
__device__ __forceinline__ void cluster_arrive() {
#ifdef DS4_EMU
    emu_cluster_arrive();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#ifdef DS4_EMU
    emu_cluster_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

template <class T> __device__ __forceinline__ const T* cluster_peer(const T* p, int rank) {
#ifdef DS4_EMU
    return (const T*)emu_cluster_map(p, rank);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u64 r;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(r) : "l"(p), "r"(rank));
    return (const T*)r;
#else
    return p;
#endif
}

// Σv over the first nw warps of a block (every thread of them gets it), in warp order, with
// bar_first: the other warps must not call it.
__device__ double first_warps_sum_d(double v, double* sh, int nw) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    bar_first(nw * 32);
    if (lane == 0) sh[w] = v;
    bar_first(nw * 32);
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

// c += A·B on the tensor cores for one warp: A 16×16 f16 (row-major), B 16×8 f16 (column-major),
// c 16×8 f32 — PTX `mma.m16n8k16.row.col.f32.f16.f16.f32`. With g = lane / 4, t = lane % 4:
// a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][8+2t..], a[3] = A[g+8][8+2t..];
// b0 = B[2t..2t+1][g], b1 = B[8+2t..][g]; c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..]
// (the lower half of each 32-bit register holds the lower index). The emulator gathers the
// operands in three warp exchanges and sums the 16 products in k order.
__device__ __forceinline__ void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
#ifdef DS4_EMU
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint64_t a01[32], a23[32], bb[32];
    emu_warp_all((u64)a[0] | ((u64)a[1] << 32), a01);
    emu_warp_all((u64)a[2] | ((u64)a[3] << 32), a23);
    emu_warp_all((u64)b0 | ((u64)b1 << 32), bb);
    float A0[16], A1[16], B0[16], B1[16];
    for (int q = 0; q < 4; q++) {
        u64 x = a01[g * 4 + q], y = a23[g * 4 + q];
        u64 c0 = bb[(2 * t) * 4 + q], c1 = bb[(2 * t + 1) * 4 + q];
        for (int h = 0; h < 2; h++) {
            A0[2 * q + h] = h2f((u16)(x >> (16 * h)));
            A1[2 * q + h] = h2f((u16)(x >> (32 + 16 * h)));
            A0[8 + 2 * q + h] = h2f((u16)(y >> (16 * h)));
            A1[8 + 2 * q + h] = h2f((u16)(y >> (32 + 16 * h)));
            B0[2 * q + h] = h2f((u16)(c0 >> (16 * h)));
            B0[8 + 2 * q + h] = h2f((u16)(c0 >> (32 + 16 * h)));
            B1[2 * q + h] = h2f((u16)(c1 >> (16 * h)));
            B1[8 + 2 * q + h] = h2f((u16)(c1 >> (32 + 16 * h)));
        }
    }
    for (int k = 0; k < 16; k++) {
        c[0] += A0[k] * B0[k];
        c[1] += A0[k] * B1[k];
        c[2] += A1[k] * B0[k];
        c[3] += A1[k] * B1[k];
    }
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the total.
// `sh` holds 32 doubles of shared memory. Two barriers, so it may be called repeatedly.
__device__ double block_sum_d(double v, double* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

__device__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

__device__ float block_max(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = sh[0];
    for (int i = 1; i < nw; i++) t = fmaxf(t, sh[i]);
    return t;
}

// RMSNorm scale of a vector whose sum of squares is `ss` over `n` values, as the CPU
// reference computes it: f64 sum, f64 scale, then f32 (spec §0).
__device__ __forceinline__ float rms_scale(double ss, int n, float eps) {
    return (float)(1.0 / sqrt(ss / (double)n + (double)eps));
}

__device__ __forceinline__ float sigmoidf_ref(float z) { return 1.0f / (1.0f + expf(-z)); }

__device__ __forceinline__ float siluf_ref(float z) { return z * sigmoidf_ref(z); }

// A weight matrix (or stack of matrices) in device memory. `a` holds the data; Q8_0 and
// IQ2_XXS are repacked at upload into two planes (weights/ data `a`, f16 scales `b`) so that
// rows are 16-byte aligned; other types keep their GGUF blocks in `a` (blocks of 74, 98, 110
// or 17 bytes are only 2- or 1-byte aligned: their kernels load bytes). `rows` rows of `cols`
// per matrix; row r of matrix m is global row m·rows + r.
struct DW {
    const u8* a;
    const u8* b;
    int ty;
    int rows;
    int cols;
};

// TY_IQ2C codes: code m | s << 2 is grid magnitude m (0, 1, 2 for 8, 25, 43: the only bytes of
// ggml's iq2xxs_grid) with sign s (1: negative). Plane a holds a row's codes, weight c in the
// low (c even) or high nibble of byte c / 2; plane b holds each 256-weight block's f16 d (bits
// 0..15 of its first word) and its eight 4-bit sub-block scales (second word, sub-block j at
// bits 4j), the fields of the IQ2_XXS block it came from. Bytes 3 and 7 of the table are unused.
#define IQ2C_POS 0x002b1908u
#define IQ2C_NEG 0x00d5e7f8u

// Four weights as signed int8 (byte j weight j) from the four codes in the low 16 bits of `c`:
// one byte permute over the table (the high 16 bits of the selector are ignored).
__device__ __forceinline__ int iq2c_4(u32 c) { return (int)__byte_perm(IQ2C_POS, IQ2C_NEG, c); }

// The scale of sub-block `sub` (0..7) of TY_IQ2C block `blk`: IQ2_XXS's d·(0.5 + s)·0.25, in
// that order of operations.
__device__ __forceinline__ float iq2c_scale(const DW& w, i64 blk, int sub) {
    uint2 sb = *(const uint2*)(w.b + blk * 8);
    return h2f((u16)(sb.x & 0xffffu)) * (0.5f + (float)((sb.y >> (4 * sub)) & 15u)) * 0.25f;
}

// Bytes of one row in plane `a` of a weight of type `ty` with `cols` columns.
__device__ __forceinline__ i64 plane_row_bytes(int ty, int cols) {
    switch (ty) {
    case TY_F32: return 4ll * cols;
    case TY_F16: return 2ll * cols;
    case TY_Q8_0: return cols;                 // int8 quants; scales in b
    case TY_Q2_K: return (i64)(cols / 256) * 84;
    case TY_Q4_K: return (i64)(cols / 256) * 144;
    case TY_IQ2_XXS: return (i64)(cols / 256) * 64;  // grid/sign words; scales in b
    case TY_BF16: return 2ll * cols;
    case TY_Q3_K: return (i64)(cols / 256) * 110;
    case TY_Q5_K: return (i64)(cols / 256) * 176;
    case TY_Q6_K: return (i64)(cols / 256) * 210;
    case TY_IQ2_XS: return (i64)(cols / 256) * 74;
    case TY_IQ3_XXS: return (i64)(cols / 256) * 98;
    case TY_MXFP4: return (i64)(cols / 32) * 17;
    case TY_IQ2C: return cols / 2;  // one code a nibble; d and the 4-bit scales in b
    }
    return 0;
}

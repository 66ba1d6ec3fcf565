// CUDA-on-CPU prelude for ds4's kernels (tools/cuda-emu): the fake NVRTC compiles a kernel
// module as C++ with this header forced in front, so the same .cu source that NVRTC compiles
// for the GPU runs here, and the GPU tests can run on a machine without one.
//
// Execution model: a launch runs its blocks one after another on the calling thread; the
// threads of a block are fibers (own stacks, switched by a small x86-64 routine) scheduled
// round-robin. __syncthreads parks a fiber until every live thread of the block has arrived;
// a warp shuffle parks it until every live lane of its warp has, exchanging values through a
// double-buffered slot array. No kernel progress with threads still parked is a deadlock and
// aborts with the kernel's name. Shared memory is `static` (blocks run one at a time);
// dynamic shared memory is one buffer per launch. Only what ds4's kernels use is provided.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define DS4_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __align__(n) alignas(n)

struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) float2 { float x, y; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct emu_u3 { unsigned x, y, z; };

template <class T> static inline T min(T a, T b) { return b < a ? b : a; }
template <class T> static inline T max(T a, T b) { return a < b ? b : a; }

// ---- fibers --------------------------------------------------------------------------------

enum { EMU_READY = 0, EMU_BLOCK_WAIT = 1, EMU_WARP_WAIT = 2, EMU_DONE = 3 };

struct EmuFiber {
    void* sp;
    emu_u3 tid;
    int lin;
    int state;
    unsigned wgen;
};

#define EMU_MAX_THREADS 1024
#define EMU_STACK (128 * 1024)

static EmuFiber emu_fibers[EMU_MAX_THREADS];
static int emu_nthreads;
static EmuFiber* emu_cur;
static void* emu_sched_sp;
static char* emu_stacks;
static emu_u3 emu_block_idx, emu_block_dim, emu_grid_dim;
static void (*emu_kernel)(void**);
static void** emu_args;
static unsigned char* emu_dyn;
static const char* emu_kernel_name;
static uint64_t emu_slots[EMU_MAX_THREADS / 32][2][32];
// Lanes released from a warp barrier, per warp (read by emu_warp_reduce right after).
static uint32_t emu_released[EMU_MAX_THREADS / 32];

extern "C" void emu_swap(void** save, void* load);
asm(".text\n"
    ".globl emu_swap\n"
    ".hidden emu_swap\n"
    ".type emu_swap,@function\n"
    "emu_swap:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n");

static void emu_trampoline() {
    emu_kernel(emu_args);
    emu_cur->state = EMU_DONE;
    emu_swap(&emu_cur->sp, emu_sched_sp);
    abort();  // a finished fiber is never resumed
}

static inline void emu_yield(int state) {
    emu_cur->state = state;
    emu_swap(&emu_cur->sp, emu_sched_sp);
}

#define threadIdx (emu_cur->tid)
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

static inline void __syncthreads() { emu_yield(EMU_BLOCK_WAIT); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_yield(EMU_WARP_WAIT); }

// One warp exchange: this lane deposits `bits`, parks until the warp has, and gets the
// deposited row (32 slots, by lane). Shuffles and the mma gather read from it.
static inline const uint64_t* emu_exchange(uint64_t bits) {
    EmuFiber* f = emu_cur;
    int warp = f->lin >> 5;
    unsigned g = f->wgen & 1u;
    emu_slots[warp][g][f->lin & 31] = bits;
    emu_yield(EMU_WARP_WAIT);
    f->wgen++;
    return emu_slots[warp][g];
}

template <class T> static inline T emu_shfl_from(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    uint64_t got = emu_exchange(bits)[src_lane & 31];
    T r;
    memcpy(&r, &got, sizeof(T));
    return r;
}

template <class T> static inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
    return emu_shfl_from(v, (emu_cur->lin & 31) ^ lane_mask);
}

template <class T> static inline T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
    return emu_shfl_from(v, src_lane);
}

// Lanes below `delta` get their own value back, as on the device.
template <class T> static inline T __shfl_up_sync(unsigned, T v, unsigned delta, int = 32) {
    int lane = emu_cur->lin & 31;
    return emu_shfl_from(v, lane >= (int)delta ? lane - (int)delta : lane);
}

// The lanes whose value equals this lane's (a full warp).
static inline unsigned __match_any_sync(unsigned, unsigned v) {
    const uint64_t* all = emu_exchange(v);
    unsigned m = 0;
    for (int l = 0; l < 32; l++)
        if ((unsigned)all[l] == v) m |= 1u << l;
    return m;
}

// Every lane's 64-bit value in one exchange (all[32], by lane): the emulated tensor-core
// product (common.cuh's mma_16816) gathers its operand fragments with three of these instead
// of 32 shuffles.
static inline void emu_warp_all(uint64_t v, uint64_t* all) {
    memcpy(all, emu_exchange(v), 32 * sizeof(uint64_t));
}

static inline void* emu_dyn_smem() { return emu_dyn; }

static void emu_init_fiber(int lin) {
    EmuFiber* f = &emu_fibers[lin];
    f->lin = lin;
    f->tid.x = lin % emu_block_dim.x;
    f->tid.y = (lin / emu_block_dim.x) % emu_block_dim.y;
    f->tid.z = lin / (emu_block_dim.x * emu_block_dim.y);
    f->state = EMU_READY;
    f->wgen = 0;
    char* top = emu_stacks + (size_t)(lin + 1) * EMU_STACK;  // 16-aligned
    void** sp = (void**)(top - 64);
    for (int i = 0; i < 6; i++) sp[i] = 0;                    // r15 r14 r13 r12 rbx rbp
    sp[6] = (void*)&emu_trampoline;                           // return address
    sp[7] = 0;
    f->sp = sp;
}

static void emu_deadlock() {
    fprintf(stderr, "cuda-emu: deadlock in kernel %s block (%u,%u,%u):", emu_kernel_name,
            emu_block_idx.x, emu_block_idx.y, emu_block_idx.z);
    for (int i = 0; i < emu_nthreads; i++) fprintf(stderr, " %d", emu_fibers[i].state);
    fprintf(stderr, "\n");
    abort();
}

// Runs one block. Warp-major: the lanes of a warp run until each is parked; a warp whose live
// lanes all wait at a warp barrier is released and runs on; once every warp is parked at the
// block barrier (or done) the block barrier is released.
static void emu_run_block() {
    for (int i = 0; i < emu_nthreads; i++) emu_init_fiber(i);
    int nwarps = (emu_nthreads + 31) / 32;
    for (;;) {
        for (int w = 0; w < nwarps; w++) {
            int lo = w * 32, hi = std::min(emu_nthreads, lo + 32);
            for (;;) {
                int ran = 0;
                for (int i = lo; i < hi; i++) {
                    EmuFiber* f = &emu_fibers[i];
                    if (f->state != EMU_READY) continue;
                    emu_cur = f;
                    emu_swap(&emu_sched_sp, f->sp);
                    ran = 1;
                }
                int live = 0, at_warp = 0;
                for (int i = lo; i < hi; i++) {
                    int s = emu_fibers[i].state;
                    if (s != EMU_DONE) live++;
                    if (s == EMU_WARP_WAIT) at_warp++;
                }
                if (live > 0 && at_warp == live) {
                    uint32_t mask = 0;
                    for (int i = lo; i < hi; i++) {
                        if (emu_fibers[i].state == EMU_WARP_WAIT) {
                            emu_fibers[i].state = EMU_READY;
                            mask |= 1u << (i - lo);
                        }
                    }
                    emu_released[w] = mask;
                    continue;
                }
                if (at_warp > 0) emu_deadlock();  // lanes split between a warp and a block barrier
                if (!ran) break;
            }
        }
        int live = 0, at_block = 0;
        for (int i = 0; i < emu_nthreads; i++) {
            int s = emu_fibers[i].state;
            if (s != EMU_DONE) live++;
            if (s == EMU_BLOCK_WAIT) at_block++;
        }
        if (live == 0) return;
        if (at_block != live) emu_deadlock();
        for (int i = 0; i < emu_nthreads; i++)
            if (emu_fibers[i].state == EMU_BLOCK_WAIT) emu_fibers[i].state = EMU_READY;
    }
}

// A warp-wide reduction in one exchange (the kernels' warp_sum/warp_max under emulation):
// each live lane deposits its value, parks once, then folds the values of the lanes released
// with it, in lane order. The result is the same in every lane.
template <class T, class F> static inline T emu_warp_reduce(T v, F op) {
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    const uint64_t* row = emu_exchange(bits);
    // The lanes released with this one (a lane may have finished since).
    uint32_t mask = emu_released[emu_cur->lin >> 5];
    T acc{};
    bool first = true;
    for (int i = 0; i < 32; i++) {
        if (!((mask >> i) & 1u)) continue;
        T x;
        memcpy(&x, &row[i], sizeof(T));
        acc = first ? x : op(acc, x);
        first = false;
    }
    return acc;
}

// Runs `kernel` (a wrapper unpacking `args`) over the grid. Called by the fake driver.
extern "C" void __emu_run(const char* name, void (*kernel)(void**), unsigned gx, unsigned gy,
                          unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                          void** args) {
    int n = (int)(bx * by * bz);
    if (n <= 0 || n > EMU_MAX_THREADS) {
        fprintf(stderr, "cuda-emu: kernel %s launched with %d threads\n", name, n);
        abort();
    }
    if (!emu_stacks) {
        emu_stacks = (char*)aligned_alloc(64, (size_t)EMU_MAX_THREADS * EMU_STACK);
    }
    unsigned char* dyn = 0;
    if (smem) {
        dyn = (unsigned char*)aligned_alloc(64, ((size_t)smem + 63) / 64 * 64);
        memset(dyn, 0xcd, smem);  // poison: kernels must write before reading
    }
    emu_kernel = kernel;
    emu_args = args;
    emu_dyn = dyn;
    emu_kernel_name = name;
    emu_nthreads = n;
    emu_block_dim = {bx, by, bz};
    emu_grid_dim = {gx, gy, gz};
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                emu_block_idx = {x, y, z};
                emu_run_block();
            }
    free(dyn);
}

// ---- built-ins -----------------------------------------------------------------------------

static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
// Byte n of the result is byte (s >> 4n) & 7 of the eight bytes y:x (x the lower four).
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; n++) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    return r;
}
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
// Blocks run one after another, so memory is always coherent between them.
static inline void __threadfence() {}
static inline void __threadfence_system() {}
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
static inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
static inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
static inline int atomicMax(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }

static inline float emu_h2f(uint16_t h) {
    uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float v;
    if (exp == 0) v = ldexpf((float)mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexpf((float)(mant | 0x400u), (int)exp - 25);
    return sign ? -v : v;
}

// Nearest binary16 (ties to even), through the bits.
static inline uint16_t emu_f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to ≥ 65520: inf
    if (ax < 0x38800000u) {                                      // below 2^-14: subnormal or 0
        float a;
        memcpy(&a, &ax, 4);
        float q = nearbyintf(a * 16777216.0f);                   // units of 2^-24, ties even
        return (uint16_t)(sign | (uint32_t)q);
    }
    uint32_t e = (ax >> 23) - 127 + 15, m = ax & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

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
// dynamic shared memory is one buffer per launch. A thread-block cluster's blocks run together,
// block by block, each up to its next wait; their shared memory is swapped in and out between
// them. Only what ds4's kernels use is provided.
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
#define __forceinline__ static inline  // internal linkage: its __shared__ statics are not COMDAT, so one section holds them all
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Every __shared__ variable lies in one section, so that the blocks of a cluster, which run as
// one group of fibers, can each have their own copy: the scheduler swaps the section's bytes
// when it moves from one block to another (emu_live).
#define __shared__ static __attribute__((section("emu_shm")))
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

enum { EMU_READY = 0, EMU_BLOCK_WAIT = 1, EMU_WARP_WAIT = 2, EMU_DONE = 3, EMU_CLUSTER_WAIT = 4 };

struct EmuFiber {
    void* sp;
    emu_u3 tid, bid;
    int lin;
    int blk;       // the fiber's block in its cluster (its rank)
    int state;
    int bar;       // at EMU_BLOCK_WAIT: 0 for __syncthreads, n for the first n threads' barrier
    unsigned wgen;
    unsigned arrived, waits;  // cluster barrier halves passed
};

// Threads of one block, and fibers of one cluster launch (its blocks' threads, each block's
// rounded up to whole warps).
#define EMU_MAX_THREADS 1024
#define EMU_MAX_FIBERS 8192
#define EMU_STACK (128 * 1024)

static EmuFiber emu_fibers[EMU_MAX_FIBERS];
static int emu_nthreads, emu_per_block, emu_nblocks;
static EmuFiber* emu_cur;
static void* emu_sched_sp;
static char* emu_stacks;
static emu_u3 emu_block_dim, emu_grid_dim;
static void (*emu_kernel)(void**);
static void** emu_args;
static unsigned char* emu_dyn;
static const char* emu_kernel_name;
static uint64_t emu_slots[EMU_MAX_FIBERS / 32][2][32];
// Lanes released from a warp barrier, per warp (read by emu_warp_reduce right after).
static uint32_t emu_released[EMU_MAX_FIBERS / 32];

// The shared-memory section, the block whose copy is in it, the other blocks' copies (and
// their dynamic shared memory), for the cluster being run.
extern "C" char __start_emu_shm[], __stop_emu_shm[];
__shared__ char emu_shm_anchor;  // the section exists even in a module without __shared__
static int emu_live;
static unsigned char* emu_saved;  // emu_nblocks copies of the section
static unsigned char* emu_dyns[16];
static unsigned emu_dyn_bytes;

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
#define blockIdx (emu_cur->bid)
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

static inline void __syncthreads() {
    emu_cur->bar = 0;
    emu_yield(EMU_BLOCK_WAIT);
}
// The barrier of the block's first n threads (common.cuh's bar_first).
static inline void emu_bar_first(int n) {
    emu_cur->bar = n;
    emu_yield(EMU_BLOCK_WAIT);
}
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_yield(EMU_WARP_WAIT); }

// The cluster barrier's halves: a wait returns once every live thread of the cluster has
// arrived as often as this thread has waited (a finished thread counts as arrived).
static inline void emu_cluster_arrive() { emu_cur->arrived++; }
static inline void emu_cluster_wait() {
    emu_cur->waits++;
    emu_yield(EMU_CLUSTER_WAIT);
}

// The address of shared variable p in the cluster's block `rank`.
static inline const void* emu_cluster_map(const void* p, int rank) {
    const unsigned char* c = (const unsigned char*)p;
    size_t sec = (size_t)(__stop_emu_shm - __start_emu_shm);
    if (rank < 0 || rank >= emu_nblocks) {
        fprintf(stderr, "cuda-emu: kernel %s maps cluster rank %d of %d\n", emu_kernel_name, rank,
                emu_nblocks);
        abort();
    }
    if (c >= (const unsigned char*)__start_emu_shm && c < (const unsigned char*)__stop_emu_shm) {
        if (rank == emu_live) return p;
        return emu_saved + (size_t)rank * sec + (size_t)(c - (const unsigned char*)__start_emu_shm);
    }
    if (emu_dyn_bytes && c >= emu_dyn && c < emu_dyn + emu_dyn_bytes) return emu_dyns[rank] + (c - emu_dyn);
    fprintf(stderr, "cuda-emu: kernel %s maps an address outside shared memory\n", emu_kernel_name);
    abort();
}
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

// The lanes (of those that arrive together) whose predicate is true.
static inline unsigned __ballot_sync(unsigned, int p) {
    const uint64_t* row = emu_exchange(p != 0);
    uint32_t live = emu_released[emu_cur->lin >> 5];
    unsigned m = 0;
    for (int l = 0; l < 32; l++)
        if (((live >> l) & 1u) && row[l]) m |= 1u << l;
    return m;
}

// Every lane's 64-bit value in one exchange (all[32], by lane): the emulated tensor-core
// product (common.cuh's mma_16816) gathers its operand fragments with three of these instead
// of 32 shuffles.
static inline void emu_warp_all(uint64_t v, uint64_t* all) {
    memcpy(all, emu_exchange(v), 32 * sizeof(uint64_t));
}

static inline void* emu_dyn_smem() { return emu_dyn; }

// Fiber `lin` as thread `local` of the cluster's block `blk` (at grid block `bid`).
static void emu_init_fiber(int lin, int blk, int local, emu_u3 bid) {
    EmuFiber* f = &emu_fibers[lin];
    f->lin = lin;
    f->blk = blk;
    f->bid = bid;
    f->tid.x = local % emu_block_dim.x;
    f->tid.y = (local / emu_block_dim.x) % emu_block_dim.y;
    f->tid.z = local / (emu_block_dim.x * emu_block_dim.y);
    f->state = local < emu_nthreads ? EMU_READY : EMU_DONE;  // a warp's unused lanes
    f->bar = 0;
    f->wgen = 0;
    f->arrived = f->waits = 0;
    char* top = emu_stacks + (size_t)(lin + 1) * EMU_STACK;  // 16-aligned
    void** sp = (void**)(top - 64);
    for (int i = 0; i < 6; i++) sp[i] = 0;                    // r15 r14 r13 r12 rbx rbp
    sp[6] = (void*)&emu_trampoline;                           // return address
    sp[7] = 0;
    f->sp = sp;
}

static void emu_deadlock(int blk) {
    EmuFiber* b = &emu_fibers[blk * emu_per_block];
    fprintf(stderr, "cuda-emu: deadlock in kernel %s block (%u,%u,%u):", emu_kernel_name,
            b->bid.x, b->bid.y, b->bid.z);
    for (int i = 0; i < emu_per_block; i++) fprintf(stderr, " %d", b[i].state);
    fprintf(stderr, "\n");
    abort();
}

// Puts block k's shared memory (static and dynamic) in place.
static void emu_make_live(int k) {
    if (k == emu_live) return;
    size_t sec = (size_t)(__stop_emu_shm - __start_emu_shm);
    memcpy(emu_saved + (size_t)emu_live * sec, __start_emu_shm, sec);
    memcpy(__start_emu_shm, emu_saved + (size_t)k * sec, sec);
    emu_dyn = emu_dyns[k];
    emu_live = k;
}

// Runs block k of the cluster until every live thread of it is parked at a cluster wait or
// done. Warp-major: the lanes of a warp run until each is parked; a warp whose live lanes all
// wait at a warp barrier is released and runs on; once every live thread is parked at the
// block barrier, or every live thread below n at the barrier of the first n, that barrier is
// released. Returns whether any thread ran.
static bool emu_run_block(int k) {
    emu_make_live(k);
    EmuFiber* b = &emu_fibers[k * emu_per_block];
    int n = emu_per_block, nwarps = n / 32;
    bool any = false;
    for (;;) {
        for (int w = 0; w < nwarps; w++) {
            int lo = w * 32, hi = lo + 32;
            for (;;) {
                int ran = 0;
                for (int i = lo; i < hi; i++) {
                    EmuFiber* f = &b[i];
                    if (f->state != EMU_READY) continue;
                    emu_cur = f;
                    emu_swap(&emu_sched_sp, f->sp);
                    ran = 1;
                    any = true;
                }
                int live = 0, at_warp = 0;
                for (int i = lo; i < hi; i++) {
                    int s = b[i].state;
                    if (s != EMU_DONE) live++;
                    if (s == EMU_WARP_WAIT) at_warp++;
                }
                if (live > 0 && at_warp == live) {
                    uint32_t mask = 0;
                    for (int i = lo; i < hi; i++) {
                        if (b[i].state == EMU_WARP_WAIT) {
                            b[i].state = EMU_READY;
                            mask |= 1u << (i - lo);
                        }
                    }
                    emu_released[b[lo].lin >> 5] = mask;
                    continue;
                }
                if (at_warp > 0) emu_deadlock(k);  // lanes split between a warp and another barrier
                if (!ran) break;
            }
        }
        int live = 0, at_block = 0, bar = -1;
        for (int i = 0; i < n; i++) {
            int s = b[i].state;
            if (s != EMU_DONE) live++;
            if (s == EMU_BLOCK_WAIT) {
                at_block++;
                if (b[i].bar > 0) bar = b[i].bar;
            }
        }
        if (at_block == 0) return any;  // done, or parked at a cluster wait
        if (bar > 0) {
            // The first `bar` threads' barrier: released when all of them that live are there.
            bool all = true;
            for (int i = 0; i < bar && i < n; i++) {
                int s = b[i].state;
                if (s != EMU_DONE && !(s == EMU_BLOCK_WAIT && b[i].bar == bar)) all = false;
            }
            if (all) {
                for (int i = 0; i < bar && i < n; i++)
                    if (b[i].state == EMU_BLOCK_WAIT) b[i].state = EMU_READY;
                continue;
            }
        } else if (at_block == live) {
            for (int i = 0; i < n; i++)
                if (b[i].state == EMU_BLOCK_WAIT) b[i].state = EMU_READY;
            continue;
        }
        return any;  // some threads at a cluster wait: the cluster decides
    }
}

// Runs the emu_nblocks blocks of one cluster (one block when the launch has no clusters) until
// all are done, releasing the cluster barrier when every live thread has arrived often enough.
static void emu_run_cluster() {
    int nf = emu_nblocks * emu_per_block;
    for (;;) {
        bool any = false;
        for (int k = 0; k < emu_nblocks; k++) any |= emu_run_block(k);
        unsigned least = ~0u;
        int live = 0;
        for (int i = 0; i < nf; i++) {
            EmuFiber* f = &emu_fibers[i];
            if (f->state == EMU_DONE) continue;
            live++;
            least = std::min(least, f->arrived);
        }
        if (live == 0) return;
        bool released = false;
        for (int i = 0; i < nf; i++) {
            EmuFiber* f = &emu_fibers[i];
            if (f->state == EMU_CLUSTER_WAIT && f->waits <= least) {
                f->state = EMU_READY;
                released = true;
            }
        }
        if (!released && !any) {
            for (int i = 0; i < nf; i++)
                if (emu_fibers[i].state != EMU_DONE && emu_fibers[i].state != EMU_CLUSTER_WAIT)
                    emu_deadlock(emu_fibers[i].blk);
            emu_deadlock(0);
        }
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

// Runs `kernel` (a wrapper unpacking `args`) over the grid, in clusters of cx × cy × cz
// blocks (1 × 1 × 1: none). Called by the fake driver.
extern "C" void __emu_run(const char* name, void (*kernel)(void**), unsigned gx, unsigned gy,
                          unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                          void** args, unsigned cx, unsigned cy, unsigned cz) {
    int n = (int)(bx * by * bz);
    int per = (n + 31) / 32 * 32, nb = (int)(cx * cy * cz);
    if (n <= 0 || n > EMU_MAX_THREADS || nb <= 0 || nb > 16 || nb * per > EMU_MAX_FIBERS ||
        gx % cx || gy % cy || gz % cz) {
        fprintf(stderr, "cuda-emu: kernel %s launched with %d threads in clusters of %d\n", name, n, nb);
        abort();
    }
    if (!emu_stacks) {
        emu_stacks = (char*)aligned_alloc(64, (size_t)EMU_MAX_FIBERS * EMU_STACK);
    }
    size_t sec = (size_t)(__stop_emu_shm - __start_emu_shm);
    unsigned char* dyn[16] = {0};
    for (int k = 0; k < nb && smem; k++) {
        dyn[k] = (unsigned char*)aligned_alloc(64, ((size_t)smem + 63) / 64 * 64);
        memset(dyn[k], 0xcd, smem);  // poison: kernels must write before reading
    }
    emu_saved = nb > 1 ? (unsigned char*)malloc((size_t)nb * sec) : 0;
    emu_kernel = kernel;
    emu_args = args;
    emu_kernel_name = name;
    emu_nthreads = n;
    emu_per_block = per;
    emu_nblocks = nb;
    emu_dyn_bytes = smem;
    memcpy(emu_dyns, dyn, sizeof dyn);
    emu_dyn = dyn[0];
    emu_block_dim = {bx, by, bz};
    emu_grid_dim = {gx, gy, gz};
    for (unsigned z = 0; z < gz; z += cz)
        for (unsigned y = 0; y < gy; y += cy)
            for (unsigned x = 0; x < gx; x += cx) {
                // Every block of the cluster starts from the section as it is now.
                for (int k = 0; k < nb && nb > 1; k++)
                    memcpy(emu_saved + (size_t)k * sec, __start_emu_shm, sec);
                emu_live = 0;
                emu_dyn = dyn[0];
                for (int k = 0; k < nb; k++) {
                    emu_u3 bid = {x + k % cx, y + (k / cx) % cy, z + k / (cx * cy)};
                    for (int i = 0; i < per; i++) emu_init_fiber(k * per + i, k, i, bid);
                }
                emu_run_cluster();
            }
    emu_make_live(0);
    for (int k = 0; k < nb; k++) free(dyn[k]);
    free(emu_saved);
    emu_saved = 0;
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

// A stand-in for the CUDA driver library (libcuda.so.1) that runs kernel modules made by the
// fake NVRTC (libnvrtc.cpp) on the CPU, so ds4's CUDA backend and its GPU tests run on a
// machine without a GPU (tools/cuda-emu/README.md). It implements the driver calls the backend
// makes, nothing more: device memory is host memory (a device pointer is a host address,
// poisoned with 0xff bytes on allocation so unwritten floats read as NaN), streams are
// synchronous, events read a clock, and stream capture records launches, copies and sets into
// a list that a graph launch replays.
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

typedef void (*EmuRun)(const char*, void (*)(void**), unsigned, unsigned, unsigned, unsigned,
                       unsigned, unsigned, unsigned, void**, unsigned, unsigned, unsigned);

struct Module {
    void* handle;
    EmuRun run;
};

struct Function {
    Module* mod;
    std::string name;
    void (*wrapper)(void**);
    const int* sizes;  // sizes[0] = number of parameters, then each one's size
};

struct Op {
    enum { LAUNCH, COPY, SET8, SET32 } kind;
    Function* f;
    unsigned g[3], b[3], c[3], smem;  // c: the cluster's blocks (1 × 1 × 1: none)
    std::vector<unsigned char> args;  // parameter bytes, 16-aligned each
    std::vector<size_t> offs;
    void* dst;
    const void* src;
    size_t n;
    unsigned val;
};

struct Graph {
    std::vector<Op> ops;
};

static std::mutex g_lock;
static bool g_capturing = false;
static Graph* g_capture = nullptr;
static std::atomic<size_t> g_allocated{0};

static size_t emu_total_mem() {
    const char* e = getenv("DS4_CUDA_EMU_MEM_MB");
    size_t mb = e ? strtoull(e, nullptr, 10) : 8192;
    return mb << 20;
}

static void run_launch(Function* f, const unsigned* g, const unsigned* b, const unsigned* c,
                       unsigned smem, void** params) {
    f->mod->run(f->name.c_str(), f->wrapper, g[0], g[1], g[2], b[0], b[1], b[2], smem, params,
                c[0], c[1], c[2]);
}

static void run_op(Op& op) {
    switch (op.kind) {
    case Op::LAUNCH: {
        std::vector<void*> p(op.offs.size());
        for (size_t i = 0; i < op.offs.size(); i++) p[i] = op.args.data() + op.offs[i];
        run_launch(op.f, op.g, op.b, op.c, op.smem, p.data());
        break;
    }
    case Op::COPY: memcpy(op.dst, op.src, op.n); break;
    case Op::SET8: memset(op.dst, (int)op.val, op.n); break;
    case Op::SET32:
        for (size_t i = 0; i < op.n; i++) ((unsigned*)op.dst)[i] = op.val;
        break;
    }
}

// Runs `op` now, or records it when the stream is being captured.
static CUresult submit(Op op) {
    if (g_capturing) {
        g_capture->ops.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    run_op(op);
    return CUDA_SUCCESS;
}

extern "C" {

CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_VALUE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "ds4 CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    *b = emu_total_mem();
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
    case 1: *v = 1024; break;       // max threads per block
    case 10: *v = 32; break;        // warp size
    case 16: *v = 4; break;         // multiprocessors
    case 38: *v = 4 << 20; break;   // L2 bytes
    case 75: *v = 9; break;         // compute capability major
    case 76: *v = 0; break;         // minor
    case 97: *v = 232448; break;    // max shared memory per block (opt-in)
    default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    static int dummy;
    *ctx = &dummy;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) {
    static int dummy;
    *ctx = &dummy;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuCtxSynchronize_v2() { return CUDA_SUCCESS; }

CUresult cuStreamCreate(void** s, unsigned) {
    *s = malloc(1);
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(void* s) {
    free(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(void*) { return CUDA_SUCCESS; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    if (g_allocated + n > emu_total_mem()) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t sz = (n + 255) / 256 * 256 + 256;
    unsigned char* m = (unsigned char*)aligned_alloc(256, sz);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(m, 0xff, sz);
    ((size_t*)m)[0] = sz;
    g_allocated += sz;
    *p = (CUdeviceptr)(m + 256);
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    if (!p) return CUDA_SUCCESS;
    unsigned char* m = (unsigned char*)p - 256;
    g_allocated -= ((size_t*)m)[0];
    free(m);
    return CUDA_SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    *total = emu_total_mem();
    *free_b = *total > g_allocated ? *total - g_allocated : 0;
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
    free(p);
    return CUDA_SUCCESS;
}
CUresult cuMemHostRegister_v2(void*, size_t, unsigned) { return CUDA_SUCCESS; }
CUresult cuMemHostUnregister(void*) { return CUDA_SUCCESS; }

static CUresult copy(void* dst, const void* src, size_t n) {
    Op op{};
    op.kind = Op::COPY;
    op.dst = dst;
    op.src = src;
    op.n = n;
    return submit(std::move(op));
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void*) {
    return copy((void*)d, h, n);
}
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void*) {
    return copy(h, (const void*)d, n);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) {
    return copy((void*)d, (const void*)s, n);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*)d, h, n); }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (const void*)d, n); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) {
    Op op{};
    op.kind = Op::SET8;
    op.dst = (void*)d;
    op.n = n;
    op.val = v;
    return submit(std::move(op));
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void*) {
    Op op{};
    op.kind = Op::SET32;
    op.dst = (void*)d;
    op.n = n;
    op.val = v;
    return submit(std::move(op));
}

CUresult cuModuleLoadData(void** m, const void* image) {
    const char* s = (const char*)image;
    if (strncmp(s, "DS4EMU:", 7) != 0) return CUDA_ERROR_INVALID_IMAGE;
    void* h = dlopen(s + 7, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "cuda-emu: %s\n", dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    Module* mod = new Module{h, (EmuRun)dlsym(h, "__emu_run")};
    if (!mod->run) return CUDA_ERROR_INVALID_IMAGE;
    *m = mod;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(void*) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    Module* mod = (Module*)m;
    std::string w = std::string("__emu_w_") + name, z = std::string("__emu_sz_") + name;
    void* wf = dlsym(mod->handle, w.c_str());
    void* sz = dlsym(mod->handle, z.c_str());
    if (!wf || !sz) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{mod, name, (void (*)(void**))wf, (const int*)sz};
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(void*, int, int) { return CUDA_SUCCESS; }

// A launch in clusters of c[0] × c[1] × c[2] blocks (cuLaunchKernel: 1 × 1 × 1).
static CUresult launch(Function* f, const unsigned* g, const unsigned* b, const unsigned* c,
                       unsigned smem, void** params) {
    if (!g_capturing) {
        run_launch(f, g, b, c, smem, params);
        return CUDA_SUCCESS;
    }
    Op op{};
    op.kind = Op::LAUNCH;
    op.f = f;
    for (int i = 0; i < 3; i++) op.g[i] = g[i], op.b[i] = b[i], op.c[i] = c[i];
    op.smem = smem;
    int np = f->sizes[0];
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        op.offs.push_back(off);
        off += ((size_t)f->sizes[1 + i] + 15) / 16 * 16;
    }
    op.args.resize(off + 16);
    for (int i = 0; i < np; i++) memcpy(op.args.data() + op.offs[i], params[i], (size_t)f->sizes[1 + i]);
    return submit(std::move(op));
}

CUresult cuLaunchKernel(void* fp, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned smem, void*, void** params,
                        void** extra) {
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    unsigned g[3] = {gx, gy, gz}, b[3] = {bx, by, bz}, c[3] = {1, 1, 1};
    return launch((Function*)fp, g, b, c, smem, params);
}

// CUlaunchConfig and CUlaunchAttribute (cuda.h): the grid, block, dynamic shared memory and
// stream of a launch, and its attributes, of which the cluster dimension (id 4) is used.
// Programmatic stream serialization changes nothing here: launches run one after another,
// and the kernels' grid_dep_sync() is a no-op under the emulator.
struct LaunchConfig {
    unsigned gx, gy, gz, bx, by, bz, smem;
    void* stream;
    void* attrs;
    unsigned num_attrs;
};
struct LaunchAttribute {
    unsigned id;
    char pad[4];
    unsigned value[16];  // a 64-byte union; the cluster dimension is its first three words
};
enum { LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4 };
CUresult cuLaunchKernelEx(const LaunchConfig* c, void* fp, void** params, void** extra) {
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    unsigned g[3] = {c->gx, c->gy, c->gz}, b[3] = {c->bx, c->by, c->bz}, cl[3] = {1, 1, 1};
    const LaunchAttribute* a = (const LaunchAttribute*)c->attrs;
    for (unsigned i = 0; i < c->num_attrs; i++) {
        if (a[i].id != LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) continue;
        for (int k = 0; k < 3; k++) cl[k] = a[i].value[k];
        if (cl[0] * cl[1] * cl[2] == 0 || cl[0] * cl[1] * cl[2] > 16 || g[0] % cl[0] ||
            g[1] % cl[1] || g[2] % cl[2])
            return CUDA_ERROR_INVALID_VALUE;
    }
    return launch((Function*)fp, g, b, cl, c->smem, params);
}

struct Event {
    std::chrono::steady_clock::time_point t;
};
CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{};
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(void* e) {
    delete (Event*)e;
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(void* e, void*) {
    ((Event*)e)->t = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(void*) { return CUDA_SUCCESS; }
// Every launch runs when it is issued, so a stream's wait for an event is already satisfied.
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->t - ((Event*)a)->t).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuStreamBeginCapture_v2(void*, int) {
    if (g_capturing) return CUDA_ERROR_INVALID_VALUE;
    g_capturing = true;
    g_capture = new Graph{};
    return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(void*, void** graph) {
    if (!g_capturing) return CUDA_ERROR_INVALID_VALUE;
    g_capturing = false;
    *graph = g_capture;
    g_capture = nullptr;
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    *exec = new Graph(*(Graph*)graph);
    return CUDA_SUCCESS;
}
CUresult cuGraphLaunch(void* exec, void*) {
    for (Op& op : ((Graph*)exec)->ops) run_op(op);
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(void* exec) {
    delete (Graph*)exec;
    return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(void* graph) {
    delete (Graph*)graph;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    static char buf[64];
    snprintf(buf, sizeof buf, "cuda-emu error %d", e);
    *s = buf;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) { return cuGetErrorString(e, s); }

}  // extern "C"

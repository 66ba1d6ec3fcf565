// A stand-in for NVRTC (libnvrtc.so) that "compiles" a CUDA kernel source into a shared
// library for the CPU (tools/cuda-emu/README.md): the source is preprocessed with DS4_EMU
// defined, every `extern "C" __global__` kernel gets a wrapper that unpacks the driver's
// parameter array and a table of parameter sizes (for graph capture), and g++ builds the
// result with emu.h forced in front. The "CUBIN" handed back is `DS4EMU:<path of the .so>`,
// which the fake driver (libcuda.cpp) loads. Results are cached by a hash of the source.
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

typedef int nvrtcResult;
enum { NVRTC_SUCCESS = 0, NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_COMPILATION = 6 };

struct Program {
    std::string src, log, image;
};

static std::string here() {
    Dl_info info;
    dladdr((void*)&here, &info);
    std::string p = info.dli_fname;
    return p.substr(0, p.rfind('/'));
}

static std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

static std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\n\r"), b = s.find_last_not_of(" \t\n\r");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Wrappers for every kernel of the preprocessed source `pre`.
static std::string wrappers(const std::string& pre) {
    std::regex k(R"(extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\))");
    std::ostringstream out;
    for (auto it = std::sregex_iterator(pre.begin(), pre.end(), k); it != std::sregex_iterator(); ++it) {
        std::string name = (*it)[1], params = (*it)[2];
        std::vector<std::string> types;
        std::stringstream ps(params);
        std::string p;
        while (std::getline(ps, p, ',')) {
            p = trim(p);
            if (p.empty() || p == "void") continue;
            size_t e = p.size();
            while (e > 0 && (isalnum((unsigned char)p[e - 1]) || p[e - 1] == '_')) e--;
            types.push_back(trim(p.substr(0, e)));
        }
        out << "extern \"C\" void __emu_w_" << name << "(void** a) { " << name << "(";
        for (size_t i = 0; i < types.size(); i++)
            out << (i ? ", " : "") << "*(" << types[i] << "*)a[" << i << "]";
        out << "); }\n";
        out << "extern \"C\" const int __emu_sz_" << name << "[] = {" << types.size();
        for (auto& t : types) out << ", (int)sizeof(" << t << ")";
        out << "};\n";
    }
    return out.str();
}

static int run(const std::string& cmd, std::string& log) {
    std::string full = cmd + " 2>&1";
    FILE* p = popen(full.c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) log.append(buf, n);
    return pclose(p);
}

extern "C" {

nvrtcResult nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

const char* nvrtcGetErrorString(nvrtcResult r) {
    return r == NVRTC_SUCCESS ? "NVRTC_SUCCESS (cuda-emu)" : "NVRTC_ERROR (cuda-emu)";
}

nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char*, int,
                               const char* const*, const char* const*) {
    *prog = new Program{src, "", ""};
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(void** prog) {
    delete (Program*)*prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(void* prog, int, const char* const*) {
    Program* pr = (Program*)prog;
    // The key covers the prelude too: a changed emulator rebuilds every module.
    unsigned long long h = 1469598103934665603ull;
    for (unsigned char c : pr->src + slurp(here() + "/emu.h")) h = (h ^ c) * 1099511628211ull;
    const char* env = getenv("DS4_CUDA_EMU_CACHE");
    std::string dir = env ? env : "/tmp/ds4-cuda-emu";
    mkdir(dir.c_str(), 0755);
    char hex[32];
    snprintf(hex, sizeof hex, "%016llx", h);
    std::string base = dir + "/" + hex, so = base + ".so";
    struct stat st;
    if (stat(so.c_str(), &st) != 0) {
        std::string tag = "." + std::to_string(getpid());
        {
            std::ofstream f(base + tag + ".cu");
            f << pr->src;
        }
        if (run("g++ -E -P -x c++ -DDS4_EMU " + base + tag + ".cu -o " + base + tag + ".i", pr->log) != 0)
            return NVRTC_ERROR_COMPILATION;
        std::string pre = slurp(base + tag + ".i");
        {
            std::ofstream f(base + tag + ".cpp");
            f << pre << "\n" << wrappers(pre);
        }
        std::string cmd = "g++ -O2 -std=c++17 -shared -fPIC -ffp-contract=off -fno-strict-aliasing -w -include " +
                          here() + "/emu.h " + base + tag + ".cpp -o " + base + tag + ".so";
        if (run(cmd, pr->log) != 0) return NVRTC_ERROR_COMPILATION;
        rename((base + tag + ".so").c_str(), so.c_str());
        unlink((base + tag + ".cu").c_str());
        unlink((base + tag + ".i").c_str());
    }
    pr->image = "DS4EMU:" + so;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* n) {
    *n = ((Program*)prog)->log.size() + 1;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLog(void* prog, char* log) {
    Program* pr = (Program*)prog;
    memcpy(log, pr->log.c_str(), pr->log.size() + 1);
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* n) {
    *n = ((Program*)prog)->image.size() + 1;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetCUBIN(void* prog, char* out) {
    Program* pr = (Program*)prog;
    memcpy(out, pr->image.c_str(), pr->image.size() + 1);
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetPTXSize(void* prog, size_t* n) { return nvrtcGetCUBINSize(prog, n); }
nvrtcResult nvrtcGetPTX(void* prog, char* out) { return nvrtcGetCUBIN(prog, out); }

}  // extern "C"

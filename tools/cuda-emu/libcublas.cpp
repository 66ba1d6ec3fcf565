// A stand-in for cuBLAS (libcublas.so) with the one call ds4's CUDA backend makes: cublasGemmEx
// with f16 or f32 A/B, f32 C and f32 compute, column-major as cuBLAS defines it. Runs on the
// CPU in plain loops, immediately (the backend never issues a GEMM inside a captured step).
#include <cstdint>
#include <cstring>
#include <cmath>

typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum { CUDA_R_32F = 0, CUDA_R_16F = 2 };

static float h2f(uint16_t h) {
    uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float v;
    if (exp == 0) v = ldexpf((float)mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexpf((float)(mant | 0x400u), (int)exp - 25);
    return sign ? -v : v;
}

static float load(const void* p, int ty, long long i) {
    return ty == CUDA_R_16F ? h2f(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}

extern "C" {

cublasStatus_t cublasCreate_v2(void** h) {
    static int dummy;
    *h = &dummy;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(void*) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(void*, void*) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(void*, int) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(void*, void*, size_t) { return CUBLAS_STATUS_SUCCESS; }
const char* cublasGetStatusString(cublasStatus_t) { return "cuda-emu cuBLAS status"; }

// C[m×n] = alpha·op(A)·op(B) + beta·C, op(A) m×k, op(B) k×n, column-major.
cublasStatus_t cublasGemmEx(void*, int transa, int transb, int m, int n, int k,
                            const void* alpha, const void* A, int Atype, int lda, const void* B,
                            int Btype, int ldb, const void* beta, void* C, int Ctype, int ldc,
                            int, int) {
    if (Ctype != CUDA_R_32F || (Atype != CUDA_R_16F && Atype != CUDA_R_32F) ||
        (Btype != CUDA_R_16F && Btype != CUDA_R_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    float a = *(const float*)alpha, b = *(const float*)beta;
    float* c = (float*)C;
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int l = 0; l < k; l++) {
                long long ai = transa ? (long long)i * lda + l : (long long)l * lda + i;
                long long bi = transb ? (long long)l * ldb + j : (long long)j * ldb + l;
                acc += load(A, Atype, ai) * load(B, Btype, bi);
            }
            float* o = c + (long long)j * ldc + i;
            *o = b == 0.0f ? a * acc : a * acc + b * *o;
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

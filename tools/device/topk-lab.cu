// Indexer decode lab: times one decode row's idx_topk (and idx_scores_rows where the included
// kernels/indexer.cu has it) alone, at 2,048 / 8,192 / 16,384 visible rows (8k / 32k / 64k
// tokens at ratio 4), so that a kernel's own time is seen apart from the waits a decode
// timeline slot also holds; prints a checksum of the selection to compare builds. Build and
// run on the GPU machine, once per indexer source (an earlier commit's for an A/B):
//   nvcc -O3 -std=c++17 -arch=sm_90 -DINDEXER='"../../crates/ds4-cuda/kernels/indexer.cu"' \
//       -o /tmp/topk-lab tools/device/topk-lab.cu && /tmp/topk-lab
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../crates/ds4-cuda/kernels/common.cuh"
#include INDEXER

#include "lab.cuh"

int main() {
    const int k = 512, nh = 64, dh = 128, reps = 200;
    const int nvs[3] = {2048, 8192, 16384};
    const int cap = 16384;
    std::vector<float> h(cap), q(nh * dh), w(nh), kr((size_t)cap * dh);
    unsigned s = 12345;
    auto rnd = [&]() { s = s * 1664525u + 1013904223u; return (s >> 8) / 16777216.0f; };
    for (auto& v : q) v = rnd() - 0.5f;
    for (auto& v : w) v = rnd() - 0.5f;
    for (auto& v : kr) v = rnd() - 0.5f;
    float *d_sc, *d_q, *d_w, *d_k;
    int *d_pos, *d_sel;
    CK(cudaMalloc(&d_sc, cap * 4));
    CK(cudaMalloc(&d_q, nh * dh * 4));
    CK(cudaMalloc(&d_w, nh * 4));
    CK(cudaMalloc(&d_k, (size_t)cap * dh * 4));
    CK(cudaMalloc(&d_pos, 4));
    CK(cudaMalloc(&d_sel, k * 4));
    CK(cudaMemcpy(d_q, q.data(), nh * dh * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_w, w.data(), nh * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_k, kr.data(), (size_t)cap * dh * 4, cudaMemcpyHostToDevice));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int nv : nvs) {
        int pos = 4 * nv - 1;
        CK(cudaMemcpy(d_pos, &pos, 4, cudaMemcpyHostToDevice));
#ifdef IDXR_ROWS
        int smem = (nh * dh + IDXR_ROWS * (dh + 4)) * 4;
        CK(cudaFuncSetAttribute(idx_scores_rows, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        dim3 g(1, (nv + IDXR_ROWS - 1) / IDXR_ROWS);
        idx_scores_rows<<<g, 256, smem>>>(d_q, d_w, d_k, d_pos, 4, nh, dh, d_sc, cap);
        CK(cudaEventRecord(a));
        for (int i = 0; i < reps; i++) idx_scores_rows<<<g, 256, smem>>>(d_q, d_w, d_k, d_pos, 4, nh, dh, d_sc, cap);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms_s;
        CK(cudaEventElapsedTime(&ms_s, a, b));
        printf("nv %5d idx_scores_rows %7.2f us\n", nv, 1000 * ms_s / reps);
#endif
        // The same scores for every build's top-k (products of two uniforms: many near 0).
        for (int i = 0; i < nv; i++) h[i] = rnd() * rnd();
        CK(cudaMemcpy(d_sc, h.data(), nv * 4, cudaMemcpyHostToDevice));
        idx_topk<<<1, TOPK_THREADS>>>(d_sc, cap, d_pos, 4, k, d_sel);
        CK(cudaEventRecord(a));
        for (int i = 0; i < reps; i++) idx_topk<<<1, TOPK_THREADS>>>(d_sc, cap, d_pos, 4, k, d_sel);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        std::vector<int> sel(k);
        CK(cudaMemcpy(sel.data(), d_sel, k * 4, cudaMemcpyDeviceToHost));
        unsigned long long sum = 0;
        for (int i = 0; i < k; i++) sum = sum * 1000003ull + (unsigned)sel[i];
        printf("nv %5d idx_topk %7.2f us  selection %016llx\n", nv, 1000 * ms / reps, sum);
    }
    return 0;
}

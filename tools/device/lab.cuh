// What the device labs (tools/device/*-lab.cu, built with nvcc on the GPU machine) share.
#pragma once
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>

// Exits with the file, line and CUDA's message when a runtime call fails.
#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));         \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

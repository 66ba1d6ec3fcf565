// Upload-time repacking of weights whose GGUF blocks are not 16-byte aligned (spec §4.2,
// §4.5): each block's f16 scale goes to the scale plane and its quants to the quant plane, so
// that a row's quants are contiguous and vector loads are aligned (see struct DW).

// Q8_0: 34-byte blocks {f16 d; i8 qs[32]} → qs plane (32 bytes a block), d plane.
extern "C" __global__ void repack_q8_0(const u8* src, i64 nblocks, u8* qs, u8* d) {
    grid_dep_sync();
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < nblocks; b += (i64)gridDim.x * blockDim.x) {
        const u8* s = src + b * 34;
        d[2 * b] = s[0];
        d[2 * b + 1] = s[1];
        for (int i = 0; i < 32; i++) qs[b * 32 + i] = s[2 + i];
    }
}

// IQ2_XXS: 66-byte blocks {f16 d; u16 qs[32]} → qs plane (64 bytes a block), d plane.
extern "C" __global__ void repack_iq2_xxs(const u8* src, i64 nblocks, u8* qs, u8* d) {
    grid_dep_sync();
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < nblocks; b += (i64)gridDim.x * blockDim.x) {
        const u8* s = src + b * 66;
        d[2 * b] = s[0];
        d[2 * b + 1] = s[1];
        for (int i = 0; i < 64; i++) qs[b * 64 + i] = s[2 + i];
    }
}

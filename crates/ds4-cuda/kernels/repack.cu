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

// IQ2_XXS → TY_IQ2C (common.cuh): each weight's grid byte and sign as one 4-bit code, so that
// the decode dots need one byte permute per four weights instead of the grid lookups and sign
// expansion (twice the quant bytes: 128 a block and 8 for d and the scales). `src` holds raw
// 66-byte blocks; `codes` gets 128 bytes a block, `sb` 8.
extern "C" __global__ void repack_iq2c(const u8* src, i64 nblocks, u8* codes, u8* sb) {
    grid_dep_sync();
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < nblocks; b += (i64)gridDim.x * blockDim.x) {
        const u8* s = src + b * 66;
        u32 scales = 0;
        for (int ib = 0; ib < 8; ib++) {
            u32 a0 = ld_u32(s + 2 + 8 * ib), a1 = ld_u32(s + 6 + 8 * ib);
            scales |= (a1 >> 28) << (4 * ib);
            for (int k = 0; k < 4; k++) {
                u64 g = iq2xxs_grid[(a0 >> (8 * k)) & 255u];
                u32 sg = ksigns((a1 >> (7 * k)) & 127u);  // matmul.cu
                u32 word = 0;
                for (int j = 0; j < 8; j++) {
                    u32 gb = (u32)(g >> (8 * j)) & 255u;
                    u32 m = gb == 0x08u ? 0u : gb == 0x19u ? 1u : 2u;
                    word |= (m | (((sg >> j) & 1u) << 2)) << (4 * j);
                }
                u8* o = codes + b * 128 + 16 * ib + 4 * k;
                for (int i = 0; i < 4; i++) o[i] = (u8)(word >> (8 * i));
            }
        }
        u8* o = sb + b * 8;
        o[0] = s[0];
        o[1] = s[1];
        o[2] = 0;
        o[3] = 0;
        for (int i = 0; i < 4; i++) o[4 + i] = (u8)(scales >> (8 * i));
    }
}

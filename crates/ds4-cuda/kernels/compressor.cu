// The KV compressors (spec/model.md §2.4.4, pitfalls 4–6) over a chunk of rows at positions
// pos0..pos0+n, in two launches that together leave exactly the state the CPU reference's
// token-by-token loop leaves:
//
// * `comp_emit` (one block per window that completes in the chunk; blocks beyond exit) pools
//   the window's candidates per dimension — each candidate from the chunk's projections
//   (score + ape) or, for tokens before the chunk, from the frontier — then RMSNorms the row,
//   RoPEs it at the window's first position, rounds it (FP8 or Hadamard+FP4, then f16) and
//   stores it as compressed row w. It reads the frontier as it was before the chunk.
// * `comp_frontier` then writes the frontier as the sequential loop would have left it: row m
//   of the current window holds the last token with position ≡ m, and for ratio 4 rows 0..3
//   hold the last completed window (copied from rows 4..7 at its completion).
//
// Ratio 4: frontier rows 0..3 = previous window, 4..7 = current, width 2·D; the pooled row of
// window w takes the first half of window w−1's tokens and the second half of window w's.

#define COMP_EMPTY_THRESHOLD -5e29f
#define COMP_D_MAX 512

// Candidate r of output dim j of window w (ratio 4: r < 4 previous window, first half; r ≥ 4
// current window, second half; ratio 128: r < 128, token w·128 + r). Writes kv and score.
__device__ __forceinline__ void comp_cand(int r, int j, int w, int ratio, int D, int W,
                                          int pos0, const float* kvp, const float* scp,
                                          const float* ape, const float* fr_kv,
                                          const float* fr_sc, float* kv, float* sc) {
    int cw = pos0 / ratio;  // the window the frontier's current rows belong to at entry
    int q, col, fr_row;
    if (ratio == 4) {
        if (r < 4) {
            if (w == 0) {
                *kv = 0.0f;
                *sc = -1e30f;
                return;
            }
            q = 4 * (w - 1) + r;
            col = j;
            fr_row = (w - 1 == cw) ? 4 + r : r;
        } else {
            q = 4 * w + (r - 4);
            col = D + j;
            fr_row = r;  // only reached when w == cw
        }
    } else {
        q = w * ratio + r;
        col = j;
        fr_row = r;
    }
    if (q >= pos0) {
        i64 t = q - pos0;
        *kv = kvp[t * W + col];
        *sc = scp[t * W + col] + ape[(q % ratio) * W + col];
    } else {
        *kv = fr_kv[(i64)fr_row * W + col];
        *sc = fr_sc[(i64)fr_row * W + col];
    }
}

// stream 0: attention rows (FP8 of the first D − 2·pairs dims); 1: indexer rows (Hadamard +
// FP4). Grid (n / ratio + 1); D threads (D ≤ COMP_D_MAX).
extern "C" __global__ void comp_emit(const float* kvp, const float* scp, const float* ape,
                                     const float* fr_kv, const float* fr_sc, const float* norm,
                                     const int* pos, int n, int ratio, int D, RopeTab tab,
                                     int stream, int sim, int f16, float eps, float* rows_out,
                                     int cap) {
    grid_dep_sync();
    __shared__ float row[COMP_D_MAX];
    __shared__ float tmp[COMP_D_MAX / 32 + 1];
    __shared__ double shd[32];
    int pos0 = pos[0];
    int w = pos0 / ratio + blockIdx.x;
    if ((w + 1) * ratio - 1 > pos0 + n - 1 || w >= cap) return;
    int W = ratio == 4 ? 2 * D : D;
    int nc = ratio == 4 ? 8 : ratio;
    int j = threadIdx.x;
    float out = 0.0f;
    if (j < D) {
        float m = -DS4_INF;
        for (int r = 0; r < nc; r++) {
            float kv, sc;
            comp_cand(r, j, w, ratio, D, W, pos0, kvp, scp, ape, fr_kv, fr_sc, &kv, &sc);
            m = fmaxf(m, sc);
        }
        if (m > COMP_EMPTY_THRESHOLD) {
            float num = 0.0f, den = 0.0f;
            for (int r = 0; r < nc; r++) {
                float kv, sc;
                comp_cand(r, j, w, ratio, D, W, pos0, kvp, scp, ape, fr_kv, fr_sc, &kv, &sc);
                float e = expf(sc - m);
                num += e * kv;
                den += e;
            }
            out = num / den;
        }
    }
    // RMSNorm with weight.
    double ss = block_sum_d(j < D ? (double)out * (double)out : 0.0, shd);
    float scale = rms_scale(ss, D, eps);
    if (j < D) row[j] = out * scale * norm[j];
    __syncthreads();
    // RoPE at the window's first position.
    int tail = D - 2 * tab.pairs;
    if (j < tab.pairs) rope_pair(row + tail + 2 * j, row + tail + 2 * j + 1, w * ratio, tab.f[j], 0);
    __syncthreads();
    if (stream == 0) {
        if (sim) row_fp8(row, tail, tmp);
    } else if (sim) {
        row_hadamard(row, D);
        row_fp4(row, D, tmp);
    }
    if (f16) row_f16(row, D);
    __syncthreads();
    if (j < D) rows_out[(i64)w * D + j] = row[j];
}

// The frontier after the chunk. Grid over (ratio 4: 4·W, ratio 128: 128·W) elements.
extern "C" __global__ void comp_frontier(const float* kvp, const float* scp, const float* ape,
                                         float* fr_kv, float* fr_sc, const int* pos, int n,
                                         int ratio, int W) {
    grid_dep_sync();
    int pos0 = pos[0];
    int L = pos0 + n - 1;
    int rows = ratio == 4 ? 4 : ratio;
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)rows * W) return;
    int m = (int)(idx / W), c = (int)(idx - (i64)m * W);
    int cur = ratio == 4 ? 4 + m : m;  // the frontier row of position class m
    // The last token ≡ m (mod ratio) at or before L.
    int qm = L >= m ? L - ((L - m) % ratio) : -1;
    float old_kv = fr_kv[(i64)cur * W + c], old_sc = fr_sc[(i64)cur * W + c];
    float new_kv = old_kv, new_sc = old_sc;
    if (qm >= pos0) {
        i64 t = qm - pos0;
        new_kv = kvp[t * W + c];
        new_sc = scp[t * W + c] + ape[(i64)m * W + c];
    }
    if (ratio == 4 && (pos0 + n) / 4 > pos0 / 4) {
        // Rows 0..3 hold the last window completed in the chunk.
        int wl = (L + 1) / 4 - 1;
        int q = 4 * wl + m;
        float pk, ps;
        if (q >= pos0) {
            i64 t = q - pos0;
            pk = kvp[t * W + c];
            ps = scp[t * W + c] + ape[(i64)m * W + c];
        } else {
            pk = old_kv;
            ps = old_sc;
        }
        fr_kv[(i64)m * W + c] = pk;
        fr_sc[(i64)m * W + c] = ps;
    }
    fr_kv[(i64)cur * W + c] = new_kv;
    fr_sc[(i64)cur * W + c] = new_sc;
}

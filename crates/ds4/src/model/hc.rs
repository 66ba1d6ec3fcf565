//! Hyper-connections (spec/model.md §2.3, §2.6): the Sinkhorn normalisation of the combine
//! matrix, shared by every backend's `hc_pre` (the CPU runs it as is; device kernels follow the
//! same steps). The `pre`, `post` and head steps themselves are backend operations.

/// Sinkhorn normalisation of one `n_hc × n_hc` combine matrix in place (spec §2.3 step 4):
/// a row softmax (+eps) and a column normalisation, then `iters − 1` row/column rounds.
pub fn sinkhorn(c: &mut [f32], n_hc: usize, iters: usize, eps: f32) {
    for s in 0..n_hc {
        let row = &mut c[s * n_hc..(s + 1) * n_hc];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.iter_mut().for_each(|v| *v = (*v - m).exp());
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v = *v / sum + eps);
    }
    let col_norm = |c: &mut [f32]| {
        for f in 0..n_hc {
            let sum: f32 = (0..n_hc).map(|s| c[f + n_hc * s]).sum::<f32>() + eps;
            (0..n_hc).for_each(|s| c[f + n_hc * s] /= sum);
        }
    };
    col_norm(c);
    for _ in 1..iters {
        for s in 0..n_hc {
            let row = &mut c[s * n_hc..(s + 1) * n_hc];
            let sum: f32 = row.iter().sum::<f32>() + eps;
            row.iter_mut().for_each(|v| *v /= sum);
        }
        col_norm(c);
    }
}

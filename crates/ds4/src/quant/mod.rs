//! TEMPORARY SHIM (replaced by the quant branch): minimal F32/F16/Q8_0/I32 support.
#![allow(missing_docs)]
use crate::gguf::GgmlType;
use rayon::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("unsupported {0}")]
    Unsupported(GgmlType),
    #[error("size")]
    Size,
}

pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}
impl<'a> QMatrix<'a> {
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let m = QMatrix {
            ty,
            rows,
            cols,
            data,
        };
        if m.row_bytes() * rows != data.len() {
            return Err(QuantError::Size);
        }
        Ok(m)
    }
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        }
        GgmlType::I32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_mut(32).zip(data.chunks_exact(34)) {
                let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                for i in 0..32 {
                    o[i] = d * (b[2 + i] as i8) as f32
                }
            }
        }
        t => return Err(QuantError::Unsupported(t)),
    }
    Ok(())
}

pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    Ok(match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => x
            .chunks(32)
            .flat_map(|b| {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut out = half::f16::from_f32(d).to_le_bytes().to_vec();
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
                out
            })
            .collect(),
        t => return Err(QuantError::Unsupported(t)),
    })
}

pub fn random_blocks(
    ty: GgmlType,
    n: usize,
    scale: f32,
    rng: &mut impl rand::Rng,
) -> Result<Vec<u8>, QuantError> {
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() - 0.5) * scale * 3.4)
        .collect();
    quantize(ty, &v)
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn matmul(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), QuantError> {
    let rows: Vec<Vec<f32>> = (0..w.rows)
        .into_par_iter()
        .map(|r| {
            let mut o = vec![0f32; w.cols];
            dequantize(w.ty, w.row(r), &mut o).map(|_| o)
        })
        .collect::<Result<_, _>>()?;
    y.par_chunks_mut(w.rows)
        .enumerate()
        .take(n)
        .for_each(|(t, yt)| {
            let xt = &x[t * w.cols..(t + 1) * w.cols];
            for (r, o) in yt.iter_mut().enumerate() {
                *o = dot_f32(&rows[r], xt)
            }
        });
    Ok(())
}

//! A minimal NumPy `.npy` (format 1.0) writer for little-endian f32 matrices.

use std::io::Write;

/// Writes `data` as a C-order `<f4` array of shape `[rows, cols]`.
pub fn write_f32(
    w: &mut impl Write,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for v in data {
        w.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_aligned_to_64_bytes() {
        let mut buf = Vec::new();
        super::write_f32(&mut buf, &[1.0, 2.0], 1, 2).expect("write to Vec");
        let hlen = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(buf.len(), 10 + hlen + 8);
        assert_eq!(&buf[10 + hlen..], &[0, 0, 128, 63, 0, 0, 0, 64]);
    }
}

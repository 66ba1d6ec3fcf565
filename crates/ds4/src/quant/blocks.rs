//! Block layouts of the quantised formats (spec/model.md §4), as `#[repr(C)]` structs that a
//! byte slice of a GGUF tensor casts onto. Every multi-byte field is kept as little-endian bytes
//! so that every block has alignment 1: a cast from any `&[u8]` needs only a length check, and
//! the layout means the same thing on any host. Accessors decode the fields.

use bytemuck::{Pod, Zeroable};

use super::float::f16_to_f32;

/// Elements per k-quant super-block (`QK_K`).
pub const QK_K: usize = 256;
/// Elements per Q8_0 block (`QK8_0`).
pub const QK8_0: usize = 32;

/// Q8_0: 32 weights, `x = d·qs[i]`; 8.5 bpw (spec §4.2).
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `qs` | i8 × 32 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// f16 scale, little-endian bytes.
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
}

/// Q2_K: 256 weights = 16 sub-blocks × 16; `x = d·sc·q − dmin·m`; 2.625 bpw (spec §4.3).
///
/// Scale byte `scales[is]`: low nibble `sc`, high nibble `m`. Element `128n + 32j + l` has
/// `q = (qs[32n + l] >> 2j) & 3` and `is = 8n + 2j + (l ≥ 16)`.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `scales` | u8 × 16 |
/// | 16 | `qs` | u8 × 64 (4 × 2-bit) |
/// | 80 | `d` | f16 |
/// | 82 | `dmin` | f16 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per-16 scale (low nibble) and min (high nibble).
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// f16 super-scale for the scales.
    pub d: [u8; 2],
    /// f16 super-scale for the mins.
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl BlockQ2K {
    /// `d` as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    /// `dmin` as f32.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.dmin))
    }
}

/// Q4_K: 256 weights = 8 sub-blocks × 32; `x = d·sc·q − dmin·m` with 6-bit `sc`, `m`;
/// 4.5 bpw (spec §4.4).
///
/// Chunk `c` (64 elements) uses bytes `qs[32c..32c+32]`: low nibbles are elements `64c + l`
/// with pair `2c`, high nibbles elements `64c + 32 + l` with pair `2c + 1`.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `dmin` | f16 |
/// | 4 | `scales` | u8 × 12 (8 packed 6-bit pairs) |
/// | 16 | `qs` | u8 × 128 (2 × 4-bit) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    /// f16 super-scale for the scales.
    pub d: [u8; 2],
    /// f16 super-scale for the mins.
    pub dmin: [u8; 2],
    /// Eight 6-bit (scale, min) pairs, packed as in `get_scale_min_k4`.
    pub scales: [u8; 12],
    /// 4-bit quants, two per byte.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl BlockQ4K {
    /// `d` as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    /// `dmin` as f32.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.dmin))
    }
    /// The 6-bit (scale, min) pair `j` (0..8), spec §4.4 `get_scale_min_k4`.
    #[inline]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        let q = &self.scales;
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }
}

/// IQ2_XXS: 256 weights = 8 sub-blocks × 32, each 8 bytes `(a0, a1)` as two u32: `a0`'s bytes
/// index `iq2xxs_grid`, `a1` bits `7k..7k+6` index `ksigns_iq2xs`, `a1 >> 28` is the sub-block
/// scale `s`; `x = d·(0.5 + s)·0.25·grid·sign`; 2.0625 bpw (spec §4.5).
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `qs` | u16 × 32 (8 × (u32 a0, u32 a1)) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XXS {
    /// f16 scale.
    pub d: [u8; 2],
    /// Grid indices, sign indices and sub-block scales, little-endian.
    pub qs: [u8; QK_K / 4],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2XXS>() == 66);

impl BlockIQ2XXS {
    /// `d` as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    /// Sub-block `ib` (0..8) as `(a0, a1)`.
    #[inline]
    pub fn sub_block(&self, ib: usize) -> (u32, u32) {
        let o = 8 * ib;
        let q = &self.qs;
        (
            u32::from_le_bytes([q[o], q[o + 1], q[o + 2], q[o + 3]]),
            u32::from_le_bytes([q[o + 4], q[o + 5], q[o + 6], q[o + 7]]),
        )
    }
}

/// Q8_K: activation-only; 256 values `x = d·qs[i]` plus per-16 sums; never stored in model
/// files (spec §4.6). `d` may be negative.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f32 |
/// | 4 | `qs` | i8 × 256 |
/// | 260 | `bsums` | i16 × 16 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    /// f32 scale, little-endian bytes.
    pub d: [u8; 4],
    /// Quants.
    pub qs: [i8; QK_K],
    /// `bsums[k] = Σ qs[16k..16k+16]` as little-endian i16.
    pub bsums: [u8; 2 * QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    /// The scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    /// `bsums[k]` (k in 0..16).
    #[inline]
    pub fn bsum(&self, k: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * k], self.bsums[2 * k + 1]])
    }
}

/// Views `bytes` as blocks. Blocks have alignment 1, so this only trims a partial trailing
/// block; callers validate lengths first (`super::check_data`), so nothing is trimmed in practice.
#[inline]
pub(crate) fn as_blocks<B: Pod>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    let whole = bytes.len() - bytes.len() % size;
    bytes
        .get(..whole)
        .and_then(|b| bytemuck::try_cast_slice(b).ok())
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cast_from_unaligned_bytes() {
        let bytes = [0u8; 1 + 2 * 84];
        let blocks: &[BlockQ2K] = as_blocks(&bytes[1..]);
        assert_eq!(blocks.len(), 2);
        let blocks: &[BlockQ8K] = as_blocks(&[0u8; 293][1..]);
        assert_eq!(blocks.len(), 1);
    }

    #[test]
    fn q4_k_scale_min_unpacks_high_pairs_from_top_bits() {
        let mut b = BlockQ4K::zeroed();
        b.scales = [0xC1, 0, 0, 0, 0x82, 0, 0, 0, 0x5A, 0, 0, 0];
        assert_eq!(b.scale_min(0), (0x01, 0x02));
        // j = 4: sc = (q[8] & 15) | (q[0] >> 6) << 4 = 0xA | 0x30; m = (q[8] >> 4) | (q[4] >> 6) << 4.
        assert_eq!(b.scale_min(4), (0x3A, 0x25));
    }
}

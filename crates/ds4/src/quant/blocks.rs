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

/// Accessors for a block's f16 fields: `f16_fields!(BlockQ4K: d, dmin)` gives
/// `BlockQ4K::d() -> f32` and `BlockQ4K::dmin() -> f32`, each decoding the field's little-endian
/// bytes (ggml `GGML_FP16_TO_FP32(x->d)`).
macro_rules! f16_fields {
    ($block:ty: $($field:ident),+) => {
        impl $block {
            $(
                #[doc = concat!("`", stringify!($field), "` as f32.")]
                #[inline]
                pub fn $field(&self) -> f32 {
                    f16_to_f32(u16::from_le_bytes(self.$field))
                }
            )+
        }
    };
}

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

f16_fields!(BlockQ8_0: d);

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

f16_fields!(BlockQ2K: d, dmin);

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

f16_fields!(BlockQ4K: d, dmin);

impl BlockQ4K {
    /// The 6-bit (scale, min) pair `j` (0..8), spec §4.4 `get_scale_min_k4`.
    #[inline]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        scale_min_k4(&self.scales, j)
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

f16_fields!(BlockIQ2XXS: d);

impl BlockIQ2XXS {
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

/// Q3_K: 256 weights = 16 sub-blocks × 16; `x = d·(sc − 32)·(q − 4·!h)` with 6-bit `sc`,
/// 2-bit `q` and a high bit `h`; 3.4375 bpw (ggml `block_q3_K`).
///
/// Element `128n + 32j + l` has `q = (qs[32n + l] >> 2j) & 3`, high bit
/// `(hmask[l] >> (4n + j)) & 1`, and sub-block `is = 8n + 2j + (l ≥ 16)`; scale `is` is
/// `(scales[is % 8] >> 4·(is / 8)) & 15 | ((scales[8 + is % 4] >> 2·(is / 4)) & 3) << 4`.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `hmask` | u8 × 32 (high bits) |
/// | 32 | `qs` | u8 × 64 (4 × 2-bit) |
/// | 96 | `scales` | u8 × 12 (16 packed 6-bit scales) |
/// | 108 | `d` | f16 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High bit of each quant (bit `4n + j` of byte `l`).
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of each quant, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, biased by 32.
    pub scales: [u8; 12],
    /// f16 super-scale.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

f16_fields!(BlockQ3K: d);

impl BlockQ3K {
    /// Scale of sub-block `is` (0..16), unbiased: −32..31.
    #[inline]
    pub fn scale(&self, is: usize) -> i8 {
        let lo = (self.scales[is % 8] >> (4 * (is / 8))) & 15;
        let hi = (self.scales[8 + is % 4] >> (2 * (is / 4))) & 3;
        ((lo | (hi << 4)) as i8).wrapping_sub(32)
    }
}

/// Q5_K: 256 weights = 8 sub-blocks × 32; `x = d·sc·q − dmin·m` with 6-bit `sc`, `m` (packed
/// as in Q4_K) and 5-bit `q`; 5.5 bpw (ggml `block_q5_K`).
///
/// Sub-block `j` (elements `32j + l`) takes its low 4 bits from `qs[32·(j/2) + l]` (low nibble
/// for even `j`, high for odd) and its fifth bit from bit `j` of `qh[l]`.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `dmin` | f16 |
/// | 4 | `scales` | u8 × 12 (8 packed 6-bit pairs) |
/// | 16 | `qh` | u8 × 32 (fifth bits) |
/// | 48 | `qs` | u8 × 128 (2 × 4-bit) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    /// f16 super-scale for the scales.
    pub d: [u8; 2],
    /// f16 super-scale for the mins.
    pub dmin: [u8; 2],
    /// Eight 6-bit (scale, min) pairs, packed as in `get_scale_min_k4`.
    pub scales: [u8; 12],
    /// Fifth bit of each quant (bit `j` of byte `l`).
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits of each quant, two per byte.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

f16_fields!(BlockQ5K: d, dmin);

impl BlockQ5K {
    /// The 6-bit (scale, min) pair `j` (0..8), as [`BlockQ4K::scale_min`].
    #[inline]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        scale_min_k4(&self.scales, j)
    }
}

/// Q6_K: 256 weights = 16 sub-blocks × 16; `x = d·sc·(q − 32)` with an 8-bit signed `sc` and
/// 6-bit `q`; 6.5625 bpw (ggml `block_q6_K`).
///
/// Element `128n + 32j + l` (j in 0..4) has low bits `(ql[64n + 32·(j % 2) + l] >> 4·(j / 2)) & 15`,
/// high bits `(qh[32n + l] >> 2j) & 3`, and scale `scales[8n + 2j + (l ≥ 16)]`.
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `ql` | u8 × 128 (2 × 4-bit) |
/// | 128 | `qh` | u8 × 64 (4 × 2-bit) |
/// | 192 | `scales` | i8 × 16 |
/// | 208 | `d` | f16 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of each quant.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of each quant.
    pub qh: [u8; QK_K / 4],
    /// Per-16 signed scales.
    pub scales: [i8; QK_K / 16],
    /// f16 super-scale.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

f16_fields!(BlockQ6K: d);

/// IQ2_XS: 256 weights = 32 groups of 8; group `g` is the u16 `qs[g]`: bits 0..9 index
/// `iq2xs_grid` (512 entries), bits 9..16 index `ksigns_iq2xs`; a 4-bit scale `s` per 16
/// weights (`scales[g / 4]` low nibble for even `g / 2`, high for odd);
/// `x = d·(0.5 + s)·0.25·grid·sign`; 2.3125 bpw (ggml `block_iq2_xs`).
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `qs` | u16 × 32 |
/// | 66 | `scales` | u8 × 8 (2 × 4-bit) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XS {
    /// f16 scale.
    pub d: [u8; 2],
    /// Grid and sign indices, little-endian u16.
    pub qs: [u8; QK_K / 4],
    /// Per-16 4-bit scales.
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2XS>() == 74);

f16_fields!(BlockIQ2XS: d);

impl BlockIQ2XS {
    /// Group `g` (0..32) as (grid index, sign index).
    #[inline]
    pub fn group(&self, g: usize) -> (usize, usize) {
        let v = u16::from_le_bytes([self.qs[2 * g], self.qs[2 * g + 1]]);
        (usize::from(v & 511), usize::from(v >> 9))
    }
    /// The 4-bit scale of weights `16h..16h + 16` (h in 0..16).
    #[inline]
    pub fn scale(&self, h: usize) -> u8 {
        (self.scales[h / 2] >> (4 * (h % 2))) & 15
    }
}

/// IQ3_XXS: 256 weights = 8 sub-blocks × 32; sub-block `ib` has 8 grid indices
/// `qs[8ib..8ib + 8]` (each 4 magnitudes of `iq3xxs_grid`) and one u32 `a` at
/// `64 + 4ib`: bits `7k..7k+6` index `ksigns_iq2xs` for weights `8k..8k+8`, `a >> 28` is the
/// scale `s`; `x = d·(0.5 + s)·0.5·grid·sign`; 3.0625 bpw (ggml `block_iq3_xxs`).
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `d` | f16 |
/// | 2 | `qs` | u8 × 64 (grid indices) |
/// | 66 | `scales_signs` | u32 × 8 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3XXS {
    /// f16 scale.
    pub d: [u8; 2],
    /// Grid indices, then the sign/scale words (little-endian u32).
    pub qs: [u8; 3 * QK_K / 8],
}
const _: () = assert!(std::mem::size_of::<BlockIQ3XXS>() == 98);

f16_fields!(BlockIQ3XXS: d);

impl BlockIQ3XXS {
    /// The sign/scale word of sub-block `ib` (0..8).
    #[inline]
    pub fn aux(&self, ib: usize) -> u32 {
        let o = QK_K / 4 + 4 * ib;
        let q = &self.qs;
        u32::from_le_bytes([q[o], q[o + 1], q[o + 2], q[o + 3]])
    }
}

/// MXFP4 (OCP microscaling FP4): 32 weights `x = 2^(e − 128)·v` where `v` is twice the E2M1
/// value of the 4-bit code (`KVALUES_MXFP4`), i.e. `x = (2^(e − 127) / 2)·v`; element `j < 16`
/// is the low nibble of `qs[j]`, element `16 + j` the high nibble; 4.25 bpw (ggml `block_mxfp4`).
///
/// | offset | field | type |
/// |---|---|---|
/// | 0 | `e` | u8 (E8M0 exponent) |
/// | 1 | `qs` | u8 × 16 (2 × 4-bit) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMXFP4 {
    /// E8M0 shared exponent.
    pub e: u8,
    /// E2M1 codes, two per byte.
    pub qs: [u8; QK_MXFP4 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

impl BlockMXFP4 {
    /// Half the E8M0 scale, `2^(e − 128)` as f32 (ggml's `GGML_E8M0_TO_FP32_HALF`; subnormal
    /// for `e < 2`).
    #[inline]
    pub fn d_half(&self) -> f32 {
        e8m0_to_f32_half(self.e)
    }
}

/// `2^(e − 128)` exactly (ggml `ggml_e8m0_to_fp32_half`, gguf-py `e8m0_to_fp32_half`).
#[inline]
pub(crate) fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Elements per MXFP4 block (`QK_MXFP4`).
pub const QK_MXFP4: usize = 32;

/// The Q4_K / Q5_K packing of eight 6-bit (scale, min) pairs, spec §4.4 `get_scale_min_k4`.
#[inline]
pub(crate) fn scale_min_k4(q: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
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

//! The session payload of a cache file (docs/kv-format.md "Payload"): tokens, last logits,
//! and per layer the raw window in logical order, the compressed and indexer rows and the
//! compressor frontiers (spec/model.md §6), behind a self-describing table of row counts. The
//! reader checks every count against the token count and the total against the section's size
//! before it allocates; nothing here panics on input.

use std::io::{Read, Write};

use crate::session::{Frontier, KvState, LayerState, Snapshot};

use super::format::invalid;
use super::Error;

/// First bytes of the session payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"KVP1";

// Bounds on the payload's self-description, far above any real model, so that a hostile file
// cannot make the size arithmetic overflow or a loop run for long before the size check.
const MAX_LAYERS: u32 = 4096;
const MAX_DIM: u32 = 1 << 16;
const MAX_VOCAB: u32 = 1 << 24;
const MAX_RATIO: u32 = 1 << 16;

/// How the cache rows (raw, compressed, indexer) are stored in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowEncoding {
    /// f32 values.
    F32,
    /// f16 values: used only when every row value is exactly an f16 (default precision rounds
    /// rows to f16 on store, spec/model.md §7.3), so decoding gives the same bits.
    F16,
}

impl RowEncoding {
    fn bytes(self) -> u64 {
        match self {
            RowEncoding::F32 => 4,
            RowEncoding::F16 => 2,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            RowEncoding::F32 => "f32",
            RowEncoding::F16 => "f16",
        }
    }
}

/// Per-layer row counts and shapes, as the payload describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadShape {
    /// Layers.
    pub n_layer: u32,
    /// Raw and compressed attention row width.
    pub head_dim: u32,
    /// Indexer row width.
    pub idx_head_dim: u32,
    /// Raw window length of the model.
    pub n_swa: u32,
    /// Logits per token.
    pub n_vocab: u32,
    /// Checkpoint tokens.
    pub tokens: u32,
    /// How rows are stored.
    pub rows: RowEncoding,
    /// Per layer: (compress ratio, raw rows, compressed rows, indexer rows).
    pub layers: Vec<[u32; 4]>,
}

impl PayloadShape {
    /// Bytes of the fixed part (magic … per-layer table).
    fn table_bytes(n_layer: u32) -> u64 {
        40 + 16 * n_layer as u64
    }

    /// The exact payload size this shape implies (None on overflow).
    pub fn payload_bytes(&self) -> Option<u64> {
        let rb = self.rows.bytes();
        let mut n = Self::table_bytes(self.n_layer);
        n = n.checked_add(4 * self.tokens as u64)?;
        n = n.checked_add(4 * self.n_vocab as u64)?;
        for &[ratio, raw, comp, idx] in &self.layers {
            let rows = raw as u64 * self.head_dim as u64
                + comp as u64 * self.head_dim as u64
                + idx as u64 * self.idx_head_dim as u64;
            n = n.checked_add(rows.checked_mul(rb)?)?;
            n = n.checked_add(frontier_values(ratio, self.head_dim, self.idx_head_dim)? * 4)?;
        }
        Some(n)
    }
}

/// f32 values of a layer's frontiers (kv and score of the attention one, and of the indexer
/// one for ratio 4).
fn frontier_values(ratio: u32, head_dim: u32, idx_head_dim: u32) -> Option<u64> {
    if ratio == 0 {
        return Some(0);
    }
    let one = |d: u32| {
        let (rows, width) = Frontier::shape(ratio as usize, d as usize);
        (rows as u64).checked_mul(width as u64)?.checked_mul(2)
    };
    let mut n = one(head_dim)?;
    if ratio == 4 {
        n = n.checked_add(one(idx_head_dim)?)?;
    }
    Some(n)
}

/// The shape of `snap` when written with `rows`.
pub fn shape_of(snap: &Snapshot, rows: RowEncoding) -> Result<PayloadShape, Error> {
    let kv = &snap.kv;
    let hd = kv.head_dim;
    let idx_hd = kv
        .layers
        .iter()
        .find_map(|l| l.idx_frontier.as_ref().map(|f| f.width / 2))
        .unwrap_or(0);
    let mut layers = Vec::with_capacity(kv.layers.len());
    for l in &kv.layers {
        let ratio = match (&l.attn_frontier, &l.idx_frontier) {
            (None, _) => 0,
            (Some(_), Some(_)) => 4,
            (Some(f), None) => f.kv.len().checked_div(f.width).unwrap_or(0),
        };
        let rows_of = |v: &Vec<f32>, d: usize| v.len().checked_div(d).unwrap_or(0);
        layers.push([
            ratio as u32,
            rows_of(&l.raw, hd) as u32,
            rows_of(&l.comp, hd) as u32,
            rows_of(&l.idx, idx_hd) as u32,
        ]);
    }
    let shape = PayloadShape {
        n_layer: kv.layers.len() as u32,
        head_dim: hd as u32,
        idx_head_dim: idx_hd as u32,
        n_swa: kv.n_swa as u32,
        n_vocab: snap.logits.len() as u32,
        tokens: snap.tokens.len() as u32,
        rows,
        layers,
    };
    check_shape(&shape)?;
    Ok(shape)
}

/// The encoding [`write_payload`] will use: f16 when every row value is exactly an f16.
pub fn row_encoding_for(snap: &Snapshot) -> RowEncoding {
    let exact = |v: &[f32]| {
        v.iter()
            .all(|&x| half::f16::from_f32(x).to_f32().to_bits() == x.to_bits())
    };
    let all = snap
        .kv
        .layers
        .iter()
        .all(|l| exact(&l.raw) && exact(&l.comp) && exact(&l.idx));
    if all {
        RowEncoding::F16
    } else {
        RowEncoding::F32
    }
}

/// Checks a shape's internal consistency: bounds, and the row counts a session of `tokens`
/// tokens has (raw = min(tokens, n_swa); compressed = tokens / ratio; indexer the same on
/// ratio-4 layers, none elsewhere; spec/model.md §2.4.3–§2.4.5).
pub(crate) fn check_shape(s: &PayloadShape) -> Result<(), Error> {
    let bad = |p: String| Err(invalid("payload", p));
    if s.n_layer == 0 || s.n_layer > MAX_LAYERS || s.layers.len() != s.n_layer as usize {
        return bad(format!("{} layers", s.n_layer));
    }
    if s.head_dim == 0 || s.head_dim > MAX_DIM || s.idx_head_dim > MAX_DIM || s.n_swa > MAX_DIM {
        return bad("row widths or window out of range".into());
    }
    if s.n_vocab == 0 || s.n_vocab > MAX_VOCAB || s.tokens == 0 {
        return bad(format!("vocab {} with {} tokens", s.n_vocab, s.tokens));
    }
    for (il, &[ratio, raw, comp, idx]) in s.layers.iter().enumerate() {
        if ratio > MAX_RATIO || (ratio == 4 && s.idx_head_dim == 0) || ratio == 1 {
            return bad(format!("layer {il}: compress ratio {ratio}"));
        }
        let want_comp = s.tokens.checked_div(ratio).unwrap_or(0);
        let want_idx = if ratio == 4 { want_comp } else { 0 };
        if raw != s.tokens.min(s.n_swa) || comp != want_comp || idx != want_idx {
            return bad(format!(
                "layer {il}: {raw}/{comp}/{idx} raw/compressed/indexer rows for {} tokens",
                s.tokens
            ));
        }
    }
    Ok(())
}

/// Writes `snap` as a payload with `rows` encoding; returns the bytes written.
pub fn write_payload(w: &mut impl Write, snap: &Snapshot, rows: RowEncoding) -> Result<u64, Error> {
    let shape = shape_of(snap, rows)?;
    let mut out = CountingWriter { w, n: 0 };
    let mut head = Vec::with_capacity(PayloadShape::table_bytes(shape.n_layer) as usize);
    head.extend_from_slice(&PAYLOAD_MAGIC);
    for v in [
        1u32,
        shape.n_layer,
        shape.head_dim,
        shape.idx_head_dim,
        shape.n_swa,
        shape.n_vocab,
        shape.tokens,
        match rows {
            RowEncoding::F32 => 0,
            RowEncoding::F16 => 1,
        },
        0,
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    for l in &shape.layers {
        for v in l {
            head.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.put(&head)?;
    let mut buf = Vec::with_capacity(64 << 10);
    put_u32s(&mut out, &mut buf, &snap.tokens)?;
    put_f32s(&mut out, &mut buf, &snap.logits, RowEncoding::F32)?;
    for l in &snap.kv.layers {
        put_f32s(&mut out, &mut buf, &l.raw, rows)?;
        put_f32s(&mut out, &mut buf, &l.comp, rows)?;
        put_f32s(&mut out, &mut buf, &l.idx, rows)?;
        for f in [&l.attn_frontier, &l.idx_frontier].into_iter().flatten() {
            put_f32s(&mut out, &mut buf, &f.kv, RowEncoding::F32)?;
            put_f32s(&mut out, &mut buf, &f.score, RowEncoding::F32)?;
        }
    }
    let expected = shape.payload_bytes().unwrap_or(u64::MAX);
    if out.n != expected {
        return Err(invalid(
            "payload",
            format!("wrote {} bytes, the shape says {expected}", out.n),
        ));
    }
    Ok(out.n)
}

/// The payload size [`write_payload`] will produce for `snap`.
pub fn payload_bytes(snap: &Snapshot, rows: RowEncoding) -> Result<u64, Error> {
    shape_of(snap, rows)?
        .payload_bytes()
        .ok_or_else(|| invalid("payload", "size overflows"))
}

/// Reads a payload of exactly `len` bytes from `r`. Allocations are bounded by `len` (each
/// section is checked against the bytes that remain before it is read).
pub fn read_payload(r: &mut impl Read, len: u64) -> Result<Snapshot, Error> {
    let mut r = Limited { r, left: len };
    let shape = read_shape(&mut r)?;
    let (n_layer, rows) = (shape.n_layer, shape.rows);
    check_shape(&shape)?;
    match shape.payload_bytes() {
        Some(n) if n == len => {}
        Some(n) => {
            return Err(Error::Size {
                what: "payload",
                expected: n,
                found: len,
            })
        }
        None => return Err(invalid("payload", "size overflows")),
    }
    // From here on every read is covered by `len`, which the shape matches exactly.
    let hd = shape.head_dim as usize;
    let idx_hd = shape.idx_head_dim as usize;
    let tokens = get_u32s(&mut r, shape.tokens as usize)?;
    let logits = get_f32s(&mut r, shape.n_vocab as usize, RowEncoding::F32)?;
    let mut kv_layers = Vec::with_capacity(n_layer as usize);
    for &[ratio, raw, comp, idx] in &shape.layers {
        let raw = get_f32s(&mut r, raw as usize * hd, rows)?;
        let comp = get_f32s(&mut r, comp as usize * hd, rows)?;
        let idx = get_f32s(&mut r, idx as usize * idx_hd, rows)?;
        let mut frontier = |d: usize| -> Result<Frontier, Error> {
            let (fr, width) = Frontier::shape(ratio as usize, d);
            let kv = get_f32s(&mut r, fr * width, RowEncoding::F32)?;
            let score = get_f32s(&mut r, fr * width, RowEncoding::F32)?;
            Ok(Frontier { kv, score, width })
        };
        let attn_frontier = if ratio != 0 {
            Some(frontier(hd)?)
        } else {
            None
        };
        let idx_frontier = if ratio == 4 {
            Some(frontier(idx_hd)?)
        } else {
            None
        };
        kv_layers.push(LayerState {
            raw,
            comp,
            idx,
            attn_frontier,
            idx_frontier,
        });
    }
    Ok(Snapshot {
        tokens,
        logits,
        kv: KvState {
            n_swa: shape.n_swa as usize,
            head_dim: hd,
            layers: kv_layers,
        },
    })
}

/// Reads just the payload's shape (for inspection), from its first bytes.
pub fn read_payload_shape(r: &mut impl Read, len: u64) -> Result<PayloadShape, Error> {
    read_shape(&mut Limited { r, left: len })
}

/// The payload's fixed fields and layer table, checked: magic and version, the layer count,
/// the row encoding, and a table that fits in what remains.
fn read_shape<R: Read>(r: &mut Limited<'_, R>) -> Result<PayloadShape, Error> {
    let mut fixed = [0u8; 40];
    r.read_exact(&mut fixed, "payload")?;
    let word = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
    if fixed[..4] != PAYLOAD_MAGIC || word(4) != 1 {
        return Err(invalid("payload", "bad payload magic or version"));
    }
    let n_layer = word(8);
    if n_layer == 0 || n_layer > MAX_LAYERS {
        return Err(invalid("payload", format!("{n_layer} layers")));
    }
    let rows = match word(32) {
        0 => RowEncoding::F32,
        1 => RowEncoding::F16,
        e => return Err(invalid("payload", format!("unknown row encoding {e}"))),
    };
    let table = 16 * n_layer as u64;
    if table > r.left {
        return Err(Error::Truncated {
            what: "payload",
            need: table,
            have: r.left,
        });
    }
    let mut tb = vec![0u8; table as usize];
    r.read_exact(&mut tb, "payload")?;
    let layers: Vec<[u32; 4]> = tb
        .chunks_exact(16)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        })
        .collect();
    Ok(PayloadShape {
        n_layer,
        head_dim: word(12),
        idx_head_dim: word(16),
        n_swa: word(20),
        n_vocab: word(24),
        tokens: word(28),
        rows,
        layers,
    })
}

struct CountingWriter<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> CountingWriter<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        self.w.write_all(b).map_err(Error::io("writing"))?;
        self.n += b.len() as u64;
        Ok(())
    }
}

const CHUNK_VALUES: usize = 16 << 10;

fn put_u32s<W: Write>(
    out: &mut CountingWriter<'_, W>,
    buf: &mut Vec<u8>,
    v: &[u32],
) -> Result<(), Error> {
    for c in v.chunks(CHUNK_VALUES) {
        buf.clear();
        c.iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        out.put(buf)?;
    }
    Ok(())
}

fn put_f32s<W: Write>(
    out: &mut CountingWriter<'_, W>,
    buf: &mut Vec<u8>,
    v: &[f32],
    enc: RowEncoding,
) -> Result<(), Error> {
    for c in v.chunks(CHUNK_VALUES) {
        buf.clear();
        match enc {
            RowEncoding::F32 => c
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            RowEncoding::F16 => c
                .iter()
                .for_each(|&x| buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())),
        }
        out.put(buf)?;
    }
    Ok(())
}

/// A reader that refuses to go past `left` bytes.
struct Limited<'a, R: Read> {
    r: &'a mut R,
    left: u64,
}

impl<R: Read> Limited<'_, R> {
    fn read_exact(&mut self, b: &mut [u8], what: &'static str) -> Result<(), Error> {
        if b.len() as u64 > self.left {
            return Err(Error::Truncated {
                what,
                need: b.len() as u64,
                have: self.left,
            });
        }
        self.r.read_exact(b).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Truncated {
                    what,
                    need: b.len() as u64,
                    have: 0,
                }
            } else {
                Error::io("reading")(e)
            }
        })?;
        self.left -= b.len() as u64;
        Ok(())
    }
}

fn get_u32s<R: Read>(r: &mut Limited<'_, R>, n: usize) -> Result<Vec<u32>, Error> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4 * n.min(CHUNK_VALUES)];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK_VALUES);
        let b = &mut buf[..4 * k];
        r.read_exact(b, "payload")?;
        out.extend(
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        left -= k;
    }
    Ok(out)
}

fn get_f32s<R: Read>(
    r: &mut Limited<'_, R>,
    n: usize,
    enc: RowEncoding,
) -> Result<Vec<f32>, Error> {
    let vb = enc.bytes() as usize;
    if (n as u64).saturating_mul(vb as u64) > r.left {
        return Err(Error::Truncated {
            what: "payload",
            need: n as u64 * vb as u64,
            have: r.left,
        });
    }
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; vb * n.min(CHUNK_VALUES)];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK_VALUES);
        let b = &mut buf[..vb * k];
        r.read_exact(b, "payload")?;
        match enc {
            RowEncoding::F32 => out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            RowEncoding::F16 => out.extend(
                b.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
        }
        left -= k;
    }
    Ok(out)
}

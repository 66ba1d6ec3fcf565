//! The cache file, version 1 (docs/kv-format.md; spec/serving.md §5.4 with the differences that
//! page lists). Little-endian throughout:
//!
//! ```text
//! 0    128  header (immutable; CRC32 of bytes 0..124 at 124)
//! 128  16   stats: u32 hits, u32 reserved, u64 last used (unix s); rewritten in place, so
//!           outside every checksum
//! 144  T    key text (UTF-8)                 CRC32 in the header
//! ..   M    tool map (KTM)                   CRC32 in the header
//! ..   P    session payload                  CRC32 in the header
//! ```
//!
//! Readers take untrusted bytes: every length is checked against the bytes that remain before
//! anything is allocated, every count against what the others imply, and every failure is an
//! [`Error`]; nothing here panics on input. Writers stream: the payload is never held twice.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::session::{Frontier, KvState, LayerState, Snapshot};

use super::Error;

/// First bytes of every cache file.
pub const MAGIC: [u8; 4] = *b"DS4K";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the checksummed header.
pub const HEADER_BYTES: usize = 128;
/// Bytes of header plus stats: where the key text starts.
pub const PREFIX_BYTES: usize = HEADER_BYTES + 16;
/// First bytes of the session payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"KVP1";
/// Longest tool-call id a tool map may hold (spec §5.4: 1..256).
pub const MAX_TOOL_ID_BYTES: usize = 256;
/// Largest DSML block a tool map entry may hold (spec §5.4: 512 MiB).
pub const MAX_TOOL_DSML_BYTES: usize = 512 << 20;

// Bounds on the payload's self-description, far above any real model, so that a hostile file
// cannot make the size arithmetic overflow or a loop run for long before the size check.
const MAX_LAYERS: u32 = 4096;
const MAX_DIM: u32 = 1 << 16;
const MAX_VOCAB: u32 = 1 << 24;
const MAX_RATIO: u32 = 1 << 16;

/// Why a checkpoint was written (spec §5.5), byte 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveReason {
    /// Not recorded.
    Unknown,
    /// A cold prompt's stable prefix.
    Cold,
    /// Every `--kv-cache-continued-interval-tokens` of a long session.
    Continued,
    /// Before an unrelated request replaced the live session.
    Evict,
    /// On a clean exit.
    Shutdown,
}

impl SaveReason {
    fn to_byte(self) -> u8 {
        match self {
            SaveReason::Unknown => 0,
            SaveReason::Cold => 1,
            SaveReason::Continued => 2,
            SaveReason::Evict => 3,
            SaveReason::Shutdown => 4,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            1 => SaveReason::Cold,
            2 => SaveReason::Continued,
            3 => SaveReason::Evict,
            4 => SaveReason::Shutdown,
            _ => SaveReason::Unknown,
        }
    }

    /// Lowercase name, as logs and `kv-inspect` print it.
    pub fn name(self) -> &'static str {
        match self {
            SaveReason::Unknown => "unknown",
            SaveReason::Cold => "cold",
            SaveReason::Continued => "continued",
            SaveReason::Evict => "evict",
            SaveReason::Shutdown => "shutdown",
        }
    }
}

/// What the key text is (spec §5.4 ext bits 1–2), byte 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The decoded text of exactly the stored tokens.
    Tokens,
    /// The client-visible Responses transcript of the live frontier.
    ResponsesVisible,
    /// The client-visible transcript of a toolless thinking turn (reasoning dropped).
    ThinkingVisible,
}

impl KeyKind {
    fn to_byte(self) -> u8 {
        match self {
            KeyKind::Tokens => 0,
            KeyKind::ResponsesVisible => 1,
            KeyKind::ThinkingVisible => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, Error> {
        Ok(match b {
            0 => KeyKind::Tokens,
            1 => KeyKind::ResponsesVisible,
            2 => KeyKind::ThinkingVisible,
            _ => return Err(invalid("header", format!("unknown key kind {b}"))),
        })
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Tokens => "tokens",
            KeyKind::ResponsesVisible => "responses-visible",
            KeyKind::ThinkingVisible => "thinking-visible",
        }
    }
}

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

/// The model a checkpoint belongs to (docs/kv-format.md "Identity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelStamp {
    /// SHA1 of the model's layout description (dims, per-layer ratios, dense tensor types and
    /// data fingerprints): a different value means a different model.
    pub layout: [u8; 20],
    /// ggml type ids of the routed experts' gate, up and down tensors (layer 0).
    pub expert_types: [u32; 3],
    /// Routed expert quant bits as ds4 counts them (2, 4, 8, 16 or 32; 0 unknown).
    pub quant_bits: u8,
    /// 0 precise, 1 default (the numerics the rows were computed with).
    pub precision: u8,
}

/// The checksummed header plus the stats of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Why it was written.
    pub reason: SaveReason,
    /// What the key text is.
    pub key_kind: KeyKind,
    /// The model it was written by.
    pub model: ModelStamp,
    /// Context of the server that wrote it (informational; a file loads when its tokens fit).
    pub ctx: u32,
    /// Tokens of the checkpoint.
    pub tokens: u32,
    /// Unix seconds it was written.
    pub created: u64,
    /// SHA1 of the key text (also the file name).
    pub key_sha1: [u8; 20],
    /// Bytes of key text.
    pub text_bytes: u64,
    /// Bytes of the tool map section (0: none).
    pub tool_bytes: u64,
    /// Bytes of the session payload.
    pub payload_bytes: u64,
    /// CRC32 of the key text.
    pub text_crc: u32,
    /// CRC32 of the tool map.
    pub tool_crc: u32,
    /// CRC32 of the payload.
    pub payload_crc: u32,
    /// Times the file was loaded (stats; not checksummed).
    pub hits: u32,
    /// Unix seconds of the last load or write (stats; not checksummed).
    pub last_used: u64,
}

impl Header {
    /// The exact file size the header describes, if it does not overflow.
    pub fn file_bytes(&self) -> Option<u64> {
        (PREFIX_BYTES as u64)
            .checked_add(self.text_bytes)?
            .checked_add(self.tool_bytes)?
            .checked_add(self.payload_bytes)
    }

    /// The 144 bytes of header and stats.
    pub fn encode(&self) -> [u8; PREFIX_BYTES] {
        let mut b = [0u8; PREFIX_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        b[8] = self.reason.to_byte();
        b[9] = self.key_kind.to_byte();
        b[10] = self.model.precision;
        b[11] = self.model.quant_bits;
        for (i, t) in self.model.expert_types.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&t.to_le_bytes());
        }
        b[28..32].copy_from_slice(&self.ctx.to_le_bytes());
        b[32..36].copy_from_slice(&self.tokens.to_le_bytes());
        b[40..48].copy_from_slice(&self.created.to_le_bytes());
        b[48..68].copy_from_slice(&self.model.layout);
        b[68..88].copy_from_slice(&self.key_sha1);
        b[88..96].copy_from_slice(&self.text_bytes.to_le_bytes());
        b[96..104].copy_from_slice(&self.tool_bytes.to_le_bytes());
        b[104..112].copy_from_slice(&self.payload_bytes.to_le_bytes());
        b[112..116].copy_from_slice(&self.text_crc.to_le_bytes());
        b[116..120].copy_from_slice(&self.tool_crc.to_le_bytes());
        b[120..124].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b[HEADER_BYTES..].copy_from_slice(&encode_stats(self.hits, self.last_used));
        b
    }

    /// Parses and checks the first [`PREFIX_BYTES`] of a file (magic, version, header
    /// checksum, field ranges). Section checksums are checked when the sections are read.
    pub fn decode(b: &[u8]) -> Result<Header, Error> {
        let b: &[u8; PREFIX_BYTES] = b
            .get(..PREFIX_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Truncated {
                what: "header",
                need: PREFIX_BYTES as u64,
                have: b.len() as u64,
            })?;
        let magic: [u8; 4] = arr(b, 0);
        if magic != MAGIC {
            return Err(Error::Magic { found: magic });
        }
        let version = u16::from_le_bytes(arr(b, 4));
        if version != VERSION {
            return Err(Error::Version {
                found: version,
                expected: VERSION,
            });
        }
        let want = crc32fast::hash(&b[..124]);
        let have = u32::from_le_bytes(arr(b, 124));
        if want != have {
            return Err(Error::Checksum { what: "header" });
        }
        if u16::from_le_bytes(arr(b, 6)) as usize != HEADER_BYTES {
            return Err(invalid("header", "unexpected header size"));
        }
        let tokens = u32::from_le_bytes(arr(b, 32));
        if tokens == 0 {
            return Err(invalid("header", "a checkpoint of 0 tokens"));
        }
        let h = Header {
            version,
            reason: SaveReason::from_byte(b[8]),
            key_kind: KeyKind::from_byte(b[9])?,
            model: ModelStamp {
                layout: arr(b, 48),
                expert_types: [
                    u32::from_le_bytes(arr(b, 16)),
                    u32::from_le_bytes(arr(b, 20)),
                    u32::from_le_bytes(arr(b, 24)),
                ],
                quant_bits: b[11],
                precision: b[10],
            },
            ctx: u32::from_le_bytes(arr(b, 28)),
            tokens,
            created: u64::from_le_bytes(arr(b, 40)),
            key_sha1: arr(b, 68),
            text_bytes: u64::from_le_bytes(arr(b, 88)),
            tool_bytes: u64::from_le_bytes(arr(b, 96)),
            payload_bytes: u64::from_le_bytes(arr(b, 104)),
            text_crc: u32::from_le_bytes(arr(b, 112)),
            tool_crc: u32::from_le_bytes(arr(b, 116)),
            payload_crc: u32::from_le_bytes(arr(b, 120)),
            hits: u32::from_le_bytes(arr(b, 128)),
            last_used: u64::from_le_bytes(arr(b, 136)),
        };
        if h.file_bytes().is_none() {
            return Err(invalid("header", "section sizes overflow"));
        }
        Ok(h)
    }
}

/// The 16 stats bytes (offset [`HEADER_BYTES`]).
pub fn encode_stats(hits: u32, last_used: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&hits.to_le_bytes());
    b[8..16].copy_from_slice(&last_used.to_le_bytes());
    b
}

fn arr<const N: usize>(b: &[u8; PREFIX_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

pub(crate) fn invalid(what: &'static str, problem: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        problem: problem.into(),
    }
}

/// One entry of a tool map: a tool-call id and the exact DSML bytes it was sampled as
/// (spec §5.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEntry {
    /// The call id (`call_…`, `toolu_…`).
    pub id: String,
    /// The sampled text from the end of the content through `</｜DSML｜tool_calls>`.
    pub dsml: String,
}

/// The tool map section (spec §5.4 "KTM"): `"KTM" u8 version=1 u32 count`, then per entry
/// `u32 id_len, u32 dsml_len, id, dsml`. Empty for no entries.
pub fn encode_tool_map(entries: &[ToolEntry]) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"KTM\x01");
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.id.len() as u32).to_le_bytes());
        out.extend_from_slice(&(e.dsml.len() as u32).to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(e.dsml.as_bytes());
    }
    out
}

/// Whether `entries` can be written (the limits [`decode_tool_map`] enforces).
pub fn tool_entry_ok(e: &ToolEntry) -> bool {
    (1..=MAX_TOOL_ID_BYTES).contains(&e.id.len()) && e.dsml.len() <= MAX_TOOL_DSML_BYTES
}

/// Parses a tool map section of `b.len()` bytes; `max_entries` bounds the count (spec: 4 ×
/// `--tool-memory-max-ids`).
pub fn decode_tool_map(b: &[u8], max_entries: usize) -> Result<Vec<ToolEntry>, Error> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Cursor { b, at: 0 };
    if r.take(4, "tool map")? != b"KTM\x01" {
        return Err(invalid("tool map", "bad section magic or version"));
    }
    let count = r.u32("tool map")? as usize;
    // Each entry takes at least 9 bytes (two lengths and a 1-byte id).
    if count > max_entries || count > r.left() / 9 {
        return Err(invalid(
            "tool map",
            format!("{count} entries do not fit the section or the limit of {max_entries}"),
        ));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let id_len = r.u32("tool map")? as usize;
        let dsml_len = r.u32("tool map")? as usize;
        if !(1..=MAX_TOOL_ID_BYTES).contains(&id_len) || dsml_len > MAX_TOOL_DSML_BYTES {
            return Err(invalid("tool map", "entry length out of range"));
        }
        let id = utf8(r.take(id_len, "tool map")?, "tool map id")?;
        let dsml = utf8(r.take(dsml_len, "tool map")?, "tool map dsml")?;
        out.push(ToolEntry { id, dsml });
    }
    if r.left() != 0 {
        return Err(invalid("tool map", "trailing bytes"));
    }
    Ok(out)
}

fn utf8(b: &[u8], what: &'static str) -> Result<String, Error> {
    String::from_utf8(b.to_vec()).map_err(|_| invalid(what, "not UTF-8"))
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(Error::Truncated {
                what,
                need: n as u64,
                have: self.left() as u64,
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

// ---- payload ---------------------------------------------------------------------------

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
fn check_shape(s: &PayloadShape) -> Result<(), Error> {
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
    let shape = PayloadShape {
        n_layer,
        head_dim: word(12),
        idx_head_dim: word(16),
        n_swa: word(20),
        n_vocab: word(24),
        tokens: word(28),
        rows,
        layers,
    };
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
    let mut r = Limited { r, left: len };
    let mut fixed = [0u8; 40];
    r.read_exact(&mut fixed, "payload")?;
    let word = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
    if fixed[..4] != PAYLOAD_MAGIC || word(4) != 1 {
        return Err(invalid("payload", "bad payload magic or version"));
    }
    let n_layer = word(8);
    if n_layer == 0 || n_layer > MAX_LAYERS || 16 * n_layer as u64 > r.left {
        return Err(invalid("payload", format!("{n_layer} layers")));
    }
    let mut tb = vec![0u8; 16 * n_layer as usize];
    r.read_exact(&mut tb, "payload")?;
    let layers = tb
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
        rows: if word(32) == 1 {
            RowEncoding::F16
        } else {
            RowEncoding::F32
        },
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

/// A writer that CRCs what passes through.
pub(crate) struct CrcWriter<W: Write> {
    pub(crate) inner: W,
    pub(crate) crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that CRCs what passes through.
pub(crate) struct CrcReader<R: Read> {
    pub(crate) inner: R,
    pub(crate) crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }
}

/// Everything a file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// Header and stats.
    pub header: Header,
    /// The key text.
    pub text: String,
    /// The tool map.
    pub tools: Vec<ToolEntry>,
    /// The session.
    pub snapshot: Snapshot,
}

/// What a new file holds besides the snapshot.
#[derive(Debug, Clone)]
pub struct FileMeta<'a> {
    /// Why it is written.
    pub reason: SaveReason,
    /// What the key text is.
    pub key_kind: KeyKind,
    /// The model writing it.
    pub model: ModelStamp,
    /// The writing server's context.
    pub ctx: u32,
    /// Unix seconds now.
    pub now: u64,
    /// The key text.
    pub text: &'a str,
    /// The tool map entries (invalid ones are dropped).
    pub tools: &'a [ToolEntry],
}

/// The header a file of `meta` and `snap` will get, and its encoded tool map (CRCs of the
/// payload still 0); the size is exact, so a quota can be checked before writing.
pub fn plan(meta: &FileMeta<'_>, snap: &Snapshot) -> Result<(Header, Vec<u8>, RowEncoding), Error> {
    use sha1::{Digest, Sha1};
    let tools: Vec<ToolEntry> = meta
        .tools
        .iter()
        .filter(|e| tool_entry_ok(e))
        .cloned()
        .collect();
    let tool_map = encode_tool_map(&tools);
    let rows = row_encoding_for(snap);
    let tokens = u32::try_from(snap.tokens.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid("snapshot", "token count out of range"))?;
    let header = Header {
        version: VERSION,
        reason: meta.reason,
        key_kind: meta.key_kind,
        model: meta.model,
        ctx: meta.ctx,
        tokens,
        created: meta.now,
        key_sha1: Sha1::digest(meta.text.as_bytes()).into(),
        text_bytes: meta.text.len() as u64,
        tool_bytes: tool_map.len() as u64,
        payload_bytes: payload_bytes(snap, rows)?,
        text_crc: crc32fast::hash(meta.text.as_bytes()),
        tool_crc: crc32fast::hash(&tool_map),
        payload_crc: 0,
        hits: 0,
        last_used: meta.now,
    };
    Ok((header, tool_map, rows))
}

/// Writes a whole file to `w` (positioned at 0): a placeholder prefix, the sections, then the
/// real prefix once the payload CRC is known. Returns the header written.
pub fn write_file<W: Write + Seek>(
    w: &mut W,
    meta: &FileMeta<'_>,
    snap: &Snapshot,
) -> Result<Header, Error> {
    let (mut header, tool_map, rows) = plan(meta, snap)?;
    let mut bw = std::io::BufWriter::with_capacity(1 << 20, &mut *w);
    bw.write_all(&[0u8; PREFIX_BYTES])
        .and_then(|_| bw.write_all(meta.text.as_bytes()))
        .and_then(|_| bw.write_all(&tool_map))
        .map_err(Error::io("writing"))?;
    let mut cw = CrcWriter {
        inner: &mut bw,
        crc: crc32fast::Hasher::new(),
    };
    write_payload(&mut cw, snap, rows)?;
    header.payload_crc = cw.crc.finalize();
    bw.flush().map_err(Error::io("writing"))?;
    drop(bw);
    super::test_pause();
    w.seek(SeekFrom::Start(0))
        .and_then(|_| w.write_all(&header.encode()))
        .and_then(|_| w.flush())
        .map_err(Error::io("writing"))?;
    Ok(header)
}

/// Reads a key text section of the header's size and checks its CRC and SHA1.
pub fn read_text(r: &mut impl Read, h: &Header) -> Result<String, Error> {
    use sha1::{Digest, Sha1};
    let b = read_section(r, h.text_bytes, h.text_crc, "key text")?;
    if <[u8; 20]>::from(Sha1::digest(&b)) != h.key_sha1 {
        return Err(Error::Checksum { what: "key text" });
    }
    String::from_utf8(b).map_err(|_| invalid("key text", "not UTF-8"))
}

/// Reads the tool map section and checks its CRC.
pub fn read_tools(
    r: &mut impl Read,
    h: &Header,
    max_entries: usize,
) -> Result<Vec<ToolEntry>, Error> {
    let b = read_section(r, h.tool_bytes, h.tool_crc, "tool map")?;
    decode_tool_map(&b, max_entries)
}

/// Reads the payload section, checking its CRC once it is all read.
pub fn read_snapshot(r: &mut impl Read, h: &Header) -> Result<Snapshot, Error> {
    let mut cr = CrcReader {
        inner: r,
        crc: crc32fast::Hasher::new(),
    };
    let snap = read_payload(&mut cr, h.payload_bytes)?;
    if cr.crc.finalize() != h.payload_crc {
        return Err(Error::Checksum { what: "payload" });
    }
    if snap.tokens.len() != h.tokens as usize {
        return Err(invalid("payload", "token count differs from the header's"));
    }
    Ok(snap)
}

/// Reads `len` bytes (the caller bounded `len` by the file size) and checks their CRC.
fn read_section(
    r: &mut impl Read,
    len: u64,
    crc: u32,
    what: &'static str,
) -> Result<Vec<u8>, Error> {
    let mut b = Vec::new();
    let got = r
        .take(len)
        .read_to_end(&mut b)
        .map_err(Error::io("reading"))?;
    if got as u64 != len {
        return Err(Error::Truncated {
            what,
            need: len,
            have: got as u64,
        });
    }
    if crc32fast::hash(&b) != crc {
        return Err(Error::Checksum { what });
    }
    Ok(b)
}

/// Decodes a whole file held in memory, checking everything (for tests, fuzzing and
/// inspection); `max_tool_entries` bounds the tool map.
pub fn decode(bytes: &[u8], max_tool_entries: usize) -> Result<Contents, Error> {
    let header = Header::decode(bytes)?;
    let size = header.file_bytes().unwrap_or(u64::MAX);
    if size != bytes.len() as u64 {
        return Err(Error::Size {
            what: "file",
            expected: size,
            found: bytes.len() as u64,
        });
    }
    let mut r = &bytes[PREFIX_BYTES..];
    let text = read_text(&mut r, &header)?;
    let tools = read_tools(&mut r, &header, max_tool_entries)?;
    let snapshot = read_snapshot(&mut r, &header)?;
    Ok(Contents {
        header,
        text,
        tools,
        snapshot,
    })
}

/// What `ds4-gguf kv-inspect` reports about one file.
#[derive(Debug)]
pub struct Inspection {
    /// File size in bytes.
    pub size: u64,
    /// The header, if it could be read and its checksum holds.
    pub header: Option<Header>,
    /// The payload's shape, if it could be read.
    pub shape: Option<PayloadShape>,
    /// Key text bytes and its first characters (if the text checked out).
    pub text: Option<String>,
    /// Tool map entries (if the map checked out).
    pub tools: Option<usize>,
    /// The first thing wrong with the file; None if every check passed.
    pub error: Option<Error>,
}

/// Checks a whole file as the server would before loading it, streaming the payload (memory
/// stays small however large the file): header, sizes, every checksum, the payload's shape.
pub fn inspect(r: &mut impl Read, size: u64) -> Inspection {
    let mut out = Inspection {
        size,
        header: None,
        shape: None,
        text: None,
        tools: None,
        error: None,
    };
    if let Err(e) = inspect_into(r, size, &mut out) {
        out.error = Some(e);
    }
    out
}

fn inspect_into(r: &mut impl Read, size: u64, out: &mut Inspection) -> Result<(), Error> {
    let mut b = vec![0u8; PREFIX_BYTES.min(size as usize)];
    r.read_exact(&mut b)
        .map_err(Error::io("reading the header"))?;
    let h = Header::decode(&b)?;
    out.header = Some(h.clone());
    let want = h.file_bytes().unwrap_or(u64::MAX);
    if want != size {
        return Err(Error::Size {
            what: "file",
            expected: want,
            found: size,
        });
    }
    out.text = Some(read_text(r, &h)?);
    out.tools = Some(read_tools(r, &h, usize::MAX)?.len());
    let mut cr = CrcReader {
        inner: r.take(h.payload_bytes),
        crc: crc32fast::Hasher::new(),
    };
    let shape = read_payload_shape(&mut cr, h.payload_bytes)?;
    out.shape = Some(shape.clone());
    check_shape(&shape)?;
    let implied = shape.payload_bytes().unwrap_or(u64::MAX);
    if implied != h.payload_bytes {
        return Err(Error::Size {
            what: "payload",
            expected: implied,
            found: h.payload_bytes,
        });
    }
    std::io::copy(&mut cr, &mut std::io::sink()).map_err(Error::io("reading the payload"))?;
    if cr.crc.finalize() != h.payload_crc {
        return Err(Error::Checksum { what: "payload" });
    }
    if shape.tokens != h.tokens {
        return Err(invalid("payload", "token count differs from the header's"));
    }
    Ok(())
}

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
//! The payload section itself is `kvstore::payload`.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::session::Snapshot;

use super::Error;

use super::payload::check_shape;
pub use super::payload::{
    payload_bytes, read_payload, read_payload_shape, row_encoding_for, shape_of, write_payload,
    PayloadShape, RowEncoding, PAYLOAD_MAGIC,
};

/// First bytes of every cache file.
pub const MAGIC: [u8; 4] = *b"DS4K";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the checksummed header.
pub const HEADER_BYTES: usize = 128;
/// Bytes of header plus stats: where the key text starts.
pub const PREFIX_BYTES: usize = HEADER_BYTES + 16;
/// Longest tool-call id a tool map may hold (spec §5.4: 1..256).
pub const MAX_TOOL_ID_BYTES: usize = 256;
/// Largest DSML block a tool map entry may hold (spec §5.4: 512 MiB).
pub const MAX_TOOL_DSML_BYTES: usize = 512 << 20;

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

    /// Err unless a file of `size` bytes is exactly what the header describes.
    pub fn check_file_size(&self, size: u64) -> Result<(), Error> {
        let want = self.file_bytes().unwrap_or(u64::MAX);
        if want != size {
            return Err(Error::Size {
                what: "file",
                expected: want,
                found: size,
            });
        }
        Ok(())
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
    h.check_file_size(size)?;
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

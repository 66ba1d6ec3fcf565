//! HF tokenizer.json → the GGUF tokenizer metadata the published ds4 GGUFs carry.
//!
//! Follows llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base` + `_set_vocab_gpt2`, as
//! used for DeepSeek V3): one token per id up to the largest id, `[PAD{i}]` (unused) for ids
//! the file does not define; model-vocabulary tokens are normal; added tokens are control if
//! marked special or if they look special (`<|…|>`, `<｜…｜>`, and a few fixed names), else
//! user-defined with `▁` written as a space. Merges are kept in rank order as `"A B"`.

use serde_json::Value as Json;

use super::{string_array_value, TokenType, TokenizerError, SPECIAL_TEXTS};
use super::{KEY_BOS_ID, KEY_EOS_ID, KEY_MERGES, KEY_MODEL, KEY_PRE, KEY_TOKENS, KEY_TOKEN_TYPE};
use crate::gguf::{Value, ValueType};

/// Converts the text of a tokenizer.json into GGUF tokenizer metadata: `tokenizer.ggml.model`
/// (`"gpt2"`), `tokenizer.ggml.pre` (`"joyai-llm"`), `tokens`, `token_type`, `merges`, and
/// `bos_token_id`/`eos_token_id` when the BOS/EOS texts are in the vocabulary.
pub fn gguf_metadata_from_tokenizer_json(
    json: &str,
) -> Result<Vec<(String, Value)>, TokenizerError> {
    let err = |m: &str| TokenizerError::Json(m.to_string());
    let root: Json = serde_json::from_str(json).map_err(|e| TokenizerError::Json(e.to_string()))?;
    let model = root.get("model").ok_or_else(|| err("no `model`"))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(err("`model.type` is not BPE"));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| err("no `model.vocab` object"))?;

    let mut slots: Vec<Option<(String, TokenType)>> = Vec::new();
    let mut put = |id: u64, text: String, ty: TokenType| -> Result<(), TokenizerError> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < 1 << 24)
            .ok_or_else(|| err("token id out of range"))?;
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        slots[i] = Some((text, ty));
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err("vocab id is not an unsigned integer"))?;
        put(id, text.clone(), TokenType::Normal)?;
    }
    for added in root
        .get("added_tokens")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let id = added
            .get("id")
            .and_then(Json::as_u64)
            .ok_or_else(|| err("added token without id"))?;
        let content = added
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| err("added token without content"))?;
        let special = added
            .get("special")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        let (text, ty) = if special || looks_special(content) {
            (content.to_string(), TokenType::Control)
        } else {
            (content.replace('\u{2581}', " "), TokenType::UserDefined)
        };
        put(id, text, ty)?;
    }

    let mut tokens = Vec::with_capacity(slots.len());
    let mut types = Vec::with_capacity(slots.len());
    for (i, slot) in slots.into_iter().enumerate() {
        let (text, ty) = slot.unwrap_or_else(|| (format!("[PAD{i}]"), TokenType::Unused));
        tokens.push(text);
        types.push(Value::I32(ty.id()));
    }

    let merges_json = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| err("no `model.merges` array"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for m in merges_json {
        let merge = match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => format!("{a} {b}"),
                _ => return Err(err("merge pair is not two strings")),
            },
            _ => return Err(err("merge is neither a string nor a pair")),
        };
        merges.push(merge);
    }

    let find = |text: &str| {
        tokens
            .iter()
            .position(|t| t == text)
            .and_then(|i| u32::try_from(i).ok())
    };
    let bos = find(SPECIAL_TEXTS[0].1);
    let eos = find(SPECIAL_TEXTS[1].1);

    let mut out = vec![
        (KEY_MODEL.to_string(), Value::String("gpt2".to_string())),
        (KEY_PRE.to_string(), Value::String("joyai-llm".to_string())),
        (KEY_TOKENS.to_string(), string_array_value(tokens)),
        (
            KEY_TOKEN_TYPE.to_string(),
            Value::Array(ValueType::I32, types),
        ),
        (KEY_MERGES.to_string(), string_array_value(merges)),
    ];
    if let Some(id) = bos {
        out.push((KEY_BOS_ID.to_string(), Value::U32(id)));
    }
    if let Some(id) = eos {
        out.push((KEY_EOS_ID.to_string(), Value::U32(id)));
    }
    Ok(out)
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

//! The diagnostic modes of `ds4` (spec/serving.md §6.1): `--dump-tokens` (vocabulary only),
//! `--render-chat` (text only, no model) and `--prompt-tokens … --dump-logits` (raw forward
//! passes, written as `.npy`).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use ds4::model::Precision;
use ds4::tokenizer::Tokenizer;

/// Reads only the tokenizer of a GGUF file; no weights are bound.
pub fn load_tokenizer(model: &Path) -> anyhow::Result<Tokenizer> {
    let file =
        ds4::gguf::GgufFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    Tokenizer::from_metadata(|k| file.get(k))
        .with_context(|| format!("reading the tokenizer of {}", model.display()))
}

/// `--dump-tokens`: `text` tokenized as written with special recognition, as `[id, id, …]`
/// then one `%6d  <vocab string>` line per token.
pub fn dump_tokens(tok: &Tokenizer, text: &str, out: &mut impl Write) -> std::io::Result<()> {
    let ids = tok.encode(text, true);
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    writeln!(out, "[{}]", list.join(", "))?;
    for id in ids {
        writeln!(out, "{id:6}  {}", tok.token_text(id).unwrap_or(""))?;
    }
    Ok(())
}

/// `--render-chat`: the prompt text of an OpenAI chat-completions request body in `path`.
pub fn render_chat(path: &Path, ctx_tokens: usize) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let rendered = ds4::chat::render_chat_request(&body, ctx_tokens)
        .with_context(|| format!("rendering {}", path.display()))?;
    Ok(rendered.prompt)
}

/// `--prompt-tokens … --dump-logits OUT`: the logits after each token as a float32 `.npy` of
/// shape `[n_tokens, vocab]`. The first `decode_from` tokens (all by default) are prefilled in
/// one pass, the rest decoded one by one.
pub fn dump_logits(
    model: &Path,
    tokens: &[u32],
    out: &Path,
    precision: Precision,
    decode_from: Option<usize>,
    cpu: bool,
    cuda: bool,
) -> anyhow::Result<()> {
    if tokens.is_empty() {
        bail!("--prompt-tokens is empty");
    }
    let model = std::sync::Arc::new(crate::load_model(model)?);
    let be = crate::make_backend(&model, cpu, cuda, tokens.len())?;
    let be = be.as_ref();
    let mut sess = model.new_session(be, tokens.len().max(1))?;
    let k = decode_from.unwrap_or(tokens.len()).min(tokens.len());
    let mut logits = model.forward(be, &mut sess, &tokens[..k], precision)?;
    for &t in &tokens[k..] {
        logits.extend(model.forward(be, &mut sess, &[t], precision)?);
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    crate::npy::write_f32(&mut f, &logits, tokens.len(), model.config.n_vocab)?;
    f.flush()?;
    Ok(())
}

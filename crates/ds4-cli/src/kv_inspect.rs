//! `ds4-gguf kv-inspect FILE|DIR`: what each disk KV cache file holds and whether the server
//! would load it (docs/kv-format.md). Every check the server makes before loading is made here
//! too, streaming, so a multi-GB file needs little memory. The key text is user content: only
//! its size is printed unless `--show-text` asks for a preview.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ds4::kvstore::format::{self, Inspection};
use ds4::kvstore::identity::precision_name;
use ds4::kvstore::{hex, ModelStamp};

/// Options of one run.
pub struct KvInspect {
    /// A cache file or a cache directory.
    pub path: PathBuf,
    /// With a model: also say whether its server could load each file.
    pub model: Option<PathBuf>,
    /// Print the first characters of each key text.
    pub show_text: bool,
}

/// Prints a report of every cache file under `opts.path`; returns how many were invalid.
pub fn kv_inspect(opts: &KvInspect, out: &mut impl Write) -> anyhow::Result<usize> {
    let stamp = match &opts.model {
        Some(m) => {
            let model = crate::load_model(m)?;
            Some(ds4::kvstore::model_stamp(
                &model,
                ds4::model::Precision::Default,
            ))
        }
        None => None,
    };
    let meta = std::fs::metadata(&opts.path)
        .with_context(|| format!("reading {}", opts.path.display()))?;
    let mut files = Vec::new();
    let mut tmp = Vec::new();
    if meta.is_dir() {
        for e in std::fs::read_dir(&opts.path)
            .with_context(|| format!("listing {}", opts.path.display()))?
        {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.contains(".kv.tmp.") {
                tmp.push(p);
            } else if name.ends_with(".kv") {
                files.push(p);
            }
        }
        files.sort();
        tmp.sort();
    } else {
        files.push(opts.path.clone());
    }
    let (mut bad, mut bytes) = (0, 0u64);
    for p in &files {
        let ins = inspect_path(p);
        bytes += ins.size;
        let ok = report(p, &ins, stamp.as_ref(), opts.show_text, out)?;
        if !ok {
            bad += 1;
        }
    }
    for p in &tmp {
        writeln!(
            out,
            "{}: temporary file of a write in progress or of a killed writer",
            p.display()
        )?;
    }
    if meta.is_dir() {
        writeln!(
            out,
            "{} file(s), {} invalid, {bytes} bytes; {} temporary",
            files.len(),
            bad,
            tmp.len()
        )?;
    }
    Ok(bad)
}

fn inspect_path(p: &Path) -> Inspection {
    match std::fs::File::open(p).and_then(|f| Ok((f.metadata()?.len(), f))) {
        Ok((size, f)) => format::inspect(&mut std::io::BufReader::new(f), size),
        Err(e) => Inspection {
            size: 0,
            header: None,
            shape: None,
            text: None,
            tools: None,
            error: Some(ds4::kvstore::Error::Io {
                op: "opening",
                source: e,
            }),
        },
    }
}

/// Prints one file's report; returns whether it is valid.
fn report(
    p: &Path,
    ins: &Inspection,
    stamp: Option<&ModelStamp>,
    show_text: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut error = ins.error.as_ref().map(|e| e.to_string());
    if let Some(h) = &ins.header {
        if error.is_none() && name != format!("{}.kv", hex(&h.key_sha1)) {
            error = Some("the file name is not the SHA1 of its key text".into());
        }
    }
    match &error {
        None => writeln!(out, "{}: valid, {} bytes", p.display(), ins.size)?,
        Some(e) => writeln!(out, "{}: INVALID ({e}), {} bytes", p.display(), ins.size)?,
    }
    if let Some(h) = &ins.header {
        writeln!(
            out,
            "  version {}  reason {}  key {}  tokens {}  ctx {}  hits {}",
            h.version,
            h.reason.name(),
            h.key_kind.name(),
            h.tokens,
            h.ctx,
            h.hits
        )?;
        writeln!(out, "  created {}  last used {}", h.created, h.last_used)?;
        let types: Vec<String> = h
            .model
            .expert_types
            .iter()
            .map(|&t| {
                ds4::gguf::GgmlType::from_id(t).map_or(format!("type {t}"), |t| format!("{t:?}"))
            })
            .collect();
        writeln!(
            out,
            "  model layout {}  experts {} ({}-bit)  precision {}",
            hex(&h.model.layout),
            types.join("/"),
            h.model.quant_bits,
            precision_name(h.model.precision)
        )?;
        if let Some(s) = stamp {
            let fits = if s.layout != h.model.layout {
                "no: another model".to_string()
            } else if s.expert_types != h.model.expert_types {
                "yes (other expert quant; no with --kv-cache-reject-different-quant)".to_string()
            } else {
                format!("yes, with {} numerics", precision_name(h.model.precision))
            };
            writeln!(out, "  loads with the given model: {fits}")?;
        }
        let text = match (&ins.text, show_text) {
            (Some(t), true) => {
                let preview: String = t.chars().take(80).collect();
                format!("{} bytes: {preview:?}", h.text_bytes)
            }
            _ => format!("{} bytes", h.text_bytes),
        };
        writeln!(out, "  key text {text}")?;
        writeln!(
            out,
            "  tool map {} ({} bytes)  payload {} bytes",
            ins.tools
                .map_or("unchecked".to_string(), |n| format!("{n} id(s)")),
            h.tool_bytes,
            h.payload_bytes
        )?;
    }
    if let Some(s) = &ins.shape {
        writeln!(
            out,
            "  payload: {} layers, rows {}, head dim {}, indexer dim {}, window {}, vocab {}",
            s.n_layer,
            s.rows.name(),
            s.head_dim,
            s.idx_head_dim,
            s.n_swa,
            s.n_vocab
        )?;
    }
    Ok(error.is_none())
}

//! `ds4 download q2|q4|mtp [--dir D]`: fetches a published ds4 GGUF (the files and repository
//! that ds4's `download_model.sh` uses) with resume and verification.
//!
//! * The expected size and SHA-256 come from the server: a `HEAD` of the file's URL without
//!   following the redirect returns Hugging Face's `X-Linked-Size` and `X-Linked-Etag` (the
//!   SHA-256 of the stored LFS object); `--sha256` pins the hash instead.
//! * Bytes go to `<file>.part`, appended with `Range: bytes=N-` requests; a dropped connection
//!   is resumed (a few times in a row), and a later run resumes the same `.part`.
//! * Only a `.part` of the expected size whose SHA-256 matches is renamed to the final name; a
//!   mismatch deletes the `.part` (the bad byte cannot be located) and fails. Nothing is ever
//!   written under the final name before it is verified.
//! * The verified hash is remembered in `<file>.sha256` (`ds4::pin`), so `--model-sha256` on the
//!   downloaded file does not hash it again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// Where ds4's files are published (download_model.sh's `REPO`), in Hugging Face's
/// `resolve/main/FILE` form.
pub const BASE_URL: &str = "https://huggingface.co/antirez/deepseek-v4-gguf/resolve/main";

/// What `ds4 download` can fetch: (target, file name, what it is).
pub const TARGETS: &[(&str, &str, &str)] = &[
    (
        "q2",
        "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf",
        "2-bit routed experts, about 81 GB",
    ),
    (
        "q4",
        "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2-imatrix.gguf",
        "4-bit routed experts, about 153 GB",
    ),
    (
        "mtp",
        "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf",
        "optional MTP block, about 3.5 GB",
    ),
];

/// Connection attempts in a row that may fail before the download gives up (each resumes).
const MAX_ATTEMPTS: usize = 5;
/// Bytes copied between progress updates.
const BUF: usize = 1 << 20;

/// How to download.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory for the file (created if missing).
    pub dir: PathBuf,
    /// URL prefix; the file's URL is `{base_url}/{file}`.
    pub base_url: String,
    /// Hugging Face token (`Authorization: Bearer`), if any.
    pub token: Option<String>,
    /// Expected SHA-256 (hex), overriding the server's.
    pub sha256: Option<String>,
    /// Show progress bars on stderr.
    pub progress: bool,
}

/// The file name of target `name`.
pub fn file_of(name: &str) -> anyhow::Result<&'static str> {
    TARGETS
        .iter()
        .find(|t| t.0 == name)
        .map(|t| t.1)
        .ok_or_else(|| {
            let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
            anyhow::anyhow!(
                "unknown download target `{name}` (expected {})",
                names.join(", ")
            )
        })
}

/// Size and SHA-256 the server announces for a file.
#[derive(Debug)]
struct Expected {
    size: u64,
    sha256: Option<String>,
}

fn agent(follow: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(if follow { 10 } else { 0 })
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn header(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().trim_matches('"').to_string())
}

fn with_token<B>(req: ureq::RequestBuilder<B>, o: &Options) -> ureq::RequestBuilder<B> {
    match &o.token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    }
}

/// `HEAD url` without redirects: `X-Linked-Size` / `X-Linked-Etag` when the server is Hugging
/// Face (LFS), else the final response's `Content-Length` after redirects.
fn expected(url: &str, o: &Options) -> anyhow::Result<Expected> {
    let r = with_token(agent(false).head(url), o)
        .call()
        .with_context(|| format!("HEAD {url}"))?;
    let status = r.status().as_u16();
    if !(200..400).contains(&status) {
        bail!("HEAD {url}: HTTP {status}{}", hint(status));
    }
    let linked = header(&r, "x-linked-size").and_then(|s| s.parse().ok());
    let sha = header(&r, "x-linked-etag").filter(|e| ds4::pin::parse_hex(e).is_ok());
    let size = match linked {
        Some(s) => s,
        None => {
            let r = with_token(agent(true).head(url), o)
                .call()
                .with_context(|| format!("HEAD {url}"))?;
            let status = r.status().as_u16();
            if status != 200 {
                bail!("HEAD {url}: HTTP {status}{}", hint(status));
            }
            header(&r, "content-length")
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{url}: the server gives no size"))?
        }
    };
    Ok(Expected {
        size,
        sha256: sha.map(|s| s.to_ascii_lowercase()),
    })
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (a gated or private file: pass --token or set HF_TOKEN)",
        404 => " (no such file: is the target name right?)",
        _ => "",
    }
}

fn bar(o: &Options, len: u64, what: &str) -> indicatif::ProgressBar {
    if !o.progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    b.set_message(what.to_string());
    b
}

/// Appends bytes `have..size` of `url` to `part`. Returns the new length of `part`; an error
/// only for a failure that a retry cannot fix (HTTP status, local I/O).
fn fetch_range(
    url: &str,
    part: &Path,
    have: u64,
    size: u64,
    o: &Options,
    pb: &indicatif::ProgressBar,
) -> Result<u64, Fetch> {
    let req = with_token(agent(true).get(url), o).header("Range", format!("bytes={have}-"));
    let r = req.call().map_err(|e| Fetch::Retry(e.to_string()))?;
    let status = r.status().as_u16();
    let start = match status {
        206 => have,
        // The server ignored the range: start over.
        200 => 0,
        416 if have == size => return Ok(have),
        s => {
            return Err(Fetch::Fatal(anyhow::anyhow!(
                "GET {url}: HTTP {s}{}",
                hint(s)
            )))
        }
    };
    if status == 206 {
        let cr = header(&r, "content-range").unwrap_or_default();
        let ok = cr
            .strip_prefix("bytes ")
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse::<u64>().ok())
            == Some(have);
        if !ok {
            return Err(Fetch::Fatal(anyhow::anyhow!(
                "GET {url}: asked for bytes {have}- but got Content-Range `{cr}`"
            )));
        }
    }
    let local =
        |e: std::io::Error| Fetch::Fatal(anyhow::anyhow!("writing {}: {e}", part.display()));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(start == 0)
        .append(start != 0)
        .open(part)
        .map_err(local)?;
    let mut body = r.into_body().into_reader();
    let mut buf = vec![0u8; BUF];
    let mut n = start;
    pb.set_position(n);
    loop {
        let k = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                f.flush().map_err(local)?;
                return Err(Fetch::Dropped(n, e.to_string()));
            }
        };
        if n + k as u64 > size {
            return Err(Fetch::Fatal(anyhow::anyhow!(
                "GET {url}: the server sent more than the {size} bytes announced"
            )));
        }
        f.write_all(&buf[..k]).map_err(local)?;
        n += k as u64;
        pb.set_position(n);
    }
    f.flush().map_err(local)?;
    Ok(n)
}

/// Why one GET ended early.
enum Fetch {
    /// The connection could not be made: retry.
    Retry(String),
    /// The body stopped after this many bytes of the file: resume.
    Dropped(u64, String),
    /// Retrying will not help.
    Fatal(anyhow::Error),
}

/// Downloads target `name` (see [`TARGETS`]) into `o.dir`; returns the final path.
pub fn download(name: &str, o: &Options) -> anyhow::Result<PathBuf> {
    let file = file_of(name)?;
    download_file(file, o)
}

/// Downloads `{o.base_url}/{file}` into `o.dir/file` (see the module docs).
pub fn download_file(file: &str, o: &Options) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let out = o.dir.join(file);
    let part = o.dir.join(format!("{file}.part"));
    let pinned = o.sha256.as_deref().map(ds4::pin::parse_hex).transpose()?;
    if out.exists() {
        if let Some(want) = &pinned {
            ds4::pin::verify(&out, want, &mut |_, _| {}, &mut |w| {
                eprintln!("warning: {w}")
            })?;
        }
        eprintln!("already downloaded: {}", out.display());
        return Ok(out);
    }
    let url = format!("{}/{file}", o.base_url.trim_end_matches('/'));
    let exp = expected(&url, o)?;
    let want = match (pinned, exp.sha256) {
        (Some(p), Some(s)) if p != s => {
            bail!("{url}: the server says SHA-256 {s}, but --sha256 pins {p}: refusing to download")
        }
        (Some(p), _) => p,
        (None, Some(s)) => s,
        (None, None) => bail!(
            "{url}: the server gives no SHA-256 (no X-Linked-Etag); pass --sha256 HEX to pin one"
        ),
    };
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have > exp.size {
        eprintln!("discarding {} (longer than the file)", part.display());
        std::fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
        have = 0;
    }
    if have > 0 {
        eprintln!(
            "resuming {} at {have} of {} bytes",
            part.display(),
            exp.size
        );
    }
    let pb = bar(o, exp.size, file);
    let mut failures = 0;
    while have < exp.size {
        match fetch_range(&url, &part, have, exp.size, o, &pb) {
            Ok(n) => {
                if n < exp.size {
                    // A body that ended cleanly but short (no Content-Length): resume.
                    failures += 1;
                    if n == have && failures >= MAX_ATTEMPTS {
                        bail!("{url}: the server keeps ending the body at byte {n}");
                    }
                } else {
                    failures = 0;
                }
                have = n;
            }
            Err(Fetch::Dropped(n, why)) => {
                failures = if n > have { 1 } else { failures + 1 };
                have = n;
                if failures >= MAX_ATTEMPTS {
                    bail!("{url}: the connection kept dropping ({why}); run the command again to resume");
                }
                pb.println(format!("connection dropped at byte {n} ({why}); resuming"));
            }
            Err(Fetch::Retry(why)) => {
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    bail!("GET {url}: {why}");
                }
                pb.println(format!("GET failed ({why}); retrying"));
            }
            Err(Fetch::Fatal(e)) => return Err(e),
        }
    }
    pb.finish_and_clear();
    let hb = bar(o, exp.size, "verifying");
    let found = ds4::pin::sha256_file(&part, &mut |d, _| hb.set_position(d))?;
    hb.finish_and_clear();
    if found != want {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{file}: downloaded {} bytes with SHA-256 {found}, expected {want}; \
             the partial file was deleted, run the command again",
            exp.size
        );
    }
    File::open(&part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", part.display()))?;
    std::fs::rename(&part, &out)
        .with_context(|| format!("renaming {} to {}", part.display(), out.display()))?;
    if let Err(e) = ds4::pin::remember(&out, &found) {
        eprintln!(
            "warning: could not remember the hash of {}: {e}",
            out.display()
        );
    }
    eprintln!(
        "downloaded and verified {} (SHA-256 {found})",
        out.display()
    );
    Ok(out)
}

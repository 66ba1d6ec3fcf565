//! `ds4 download` against a local HTTP server on 127.0.0.1 that behaves like Hugging Face's
//! `resolve` endpoint (a 302 to the content, with `X-Linked-Size` and `X-Linked-Etag`): a plain
//! download, resume of a partial file with a range request, a dropped connection, a corrupt
//! byte, a 404, a server that ignores ranges, and a pin that disagrees with the server.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ds4_cli::download::{download_file, Options};

const FILE: &str = "model-test.gguf";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    /// The first GET of the content closes the connection after this many body bytes.
    DropFirstAfter(usize),
    /// Byte `i` of the content is flipped (the announced hash is the true one).
    Corrupt(usize),
    NotFound,
    /// Range requests are answered with the whole file (200).
    IgnoreRange,
}

struct Server {
    port: u16,
    /// Content bytes sent in bodies, and content GETs served.
    sent: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<String>>>,
}

fn content() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..3 * (1 << 20) + 12_345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 of [`content`], via `ds4::pin` (itself checked against known vectors).
fn content_sha() -> String {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| {
        let p = scratch("sha").join("x");
        std::fs::write(&p, content()).unwrap();
        ds4::pin::sha256_file(&p, &mut |_, _| {}).unwrap()
    })
    .clone()
}

fn serve(mode: Mode) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = l.local_addr().unwrap().port();
    let data = Arc::new(content());
    let sha = content_sha();
    let (sent, gets) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (s2, g2, r2) = (sent.clone(), gets.clone(), ranges.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let (data, sha, s, g, r) = (
                data.clone(),
                sha.clone(),
                s2.clone(),
                g2.clone(),
                r2.clone(),
            );
            std::thread::spawn(move || {
                let _ = answer(conn, mode, &data, &sha, &s, &g, &r);
            });
        }
    });
    Server {
        port,
        sent,
        gets,
        ranges,
    }
}

fn answer(
    mut c: TcpStream,
    mode: Mode,
    data: &[u8],
    sha: &str,
    sent: &AtomicUsize,
    gets: &AtomicUsize,
    ranges: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut rd = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut range = None;
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<usize>().ok();
        }
    }
    if mode == Mode::NotFound {
        return c.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    if path == format!("/resolve/{FILE}") {
        let head = format!(
            "HTTP/1.1 302 Found\r\nlocation: /cdn/{FILE}\r\nx-linked-size: {}\r\n\
             x-linked-etag: \"{sha}\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            data.len()
        );
        return c.write_all(head.as_bytes());
    }
    if path != format!("/cdn/{FILE}") {
        return c.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    let start = if mode == Mode::IgnoreRange {
        0
    } else {
        range.unwrap_or(0).min(data.len())
    };
    let body = &data[start..];
    let status = if start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if start > 0 {
        head += &format!(
            "content-range: bytes {start}-{}/{}\r\n",
            data.len() - 1,
            data.len()
        );
    }
    head += "\r\n";
    c.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let n = gets.fetch_add(1, Ordering::SeqCst);
    ranges
        .lock()
        .unwrap()
        .push(range.map(|r| r.to_string()).unwrap_or_default());
    let mut out = body.to_vec();
    if let Mode::Corrupt(i) = mode {
        if i >= start {
            out[i - start] ^= 0x40;
        }
    }
    let limit = match mode {
        Mode::DropFirstAfter(k) if n == 0 => k.min(out.len()),
        _ => out.len(),
    };
    c.write_all(&out[..limit])?;
    sent.fetch_add(limit, Ordering::SeqCst);
    c.flush()?;
    // Dropping `c` closes the connection (early for DropFirstAfter).
    Ok(())
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ds4-download-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(s: &Server, dir: &Path) -> Options {
    Options {
        dir: dir.to_owned(),
        base_url: format!("http://127.0.0.1:{}/resolve", s.port),
        token: None,
        sha256: None,
        progress: false,
    }
}

#[test]
fn downloads_verifies_and_remembers_the_hash() {
    let s = serve(Mode::Normal);
    let d = scratch("plain");
    let out = download_file(FILE, &opts(&s, &d)).expect("download");
    assert_eq!(out, d.join(FILE));
    assert_eq!(std::fs::read(&out).unwrap(), content());
    assert!(!d.join(format!("{FILE}.part")).exists());
    assert_eq!(ds4::pin::remembered(&out), Some(content_sha()));
    // A second run finds the file and fetches nothing.
    let gets = s.gets.load(Ordering::SeqCst);
    download_file(FILE, &opts(&s, &d)).expect("second run");
    assert_eq!(s.gets.load(Ordering::SeqCst), gets);
}

#[test]
fn resumes_a_partial_file_with_a_range_request() {
    let s = serve(Mode::Normal);
    let d = scratch("resume");
    let data = content();
    std::fs::write(d.join(format!("{FILE}.part")), &data[..100_000]).unwrap();
    download_file(FILE, &opts(&s, &d)).expect("resume");
    assert_eq!(std::fs::read(d.join(FILE)).unwrap(), data);
    assert_eq!(*s.ranges.lock().unwrap(), vec!["100000".to_string()]);
    assert_eq!(s.sent.load(Ordering::SeqCst), data.len() - 100_000);
}

#[test]
fn resumes_after_a_dropped_connection() {
    let s = serve(Mode::DropFirstAfter(1_500_000));
    let d = scratch("dropped");
    download_file(FILE, &opts(&s, &d)).expect("download despite the drop");
    assert_eq!(std::fs::read(d.join(FILE)).unwrap(), content());
    let ranges = s.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(
        ranges[1], "1500000",
        "the second GET resumes where the first stopped"
    );
}

#[test]
fn corrupt_byte_is_refused_and_nothing_gets_the_final_name() {
    let s = serve(Mode::Corrupt(2_000_000));
    let d = scratch("corrupt");
    let err = download_file(FILE, &opts(&s, &d)).expect_err("corrupt download");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("expected") && msg.contains(&content_sha()),
        "{msg}"
    );
    assert!(
        !d.join(FILE).exists(),
        "unverified file under the final name"
    );
    assert!(
        !d.join(format!("{FILE}.part")).exists(),
        "bad partial file kept"
    );
}

#[test]
fn not_found_is_an_error_that_writes_nothing() {
    let s = serve(Mode::NotFound);
    let d = scratch("404");
    let err = download_file(FILE, &opts(&s, &d)).expect_err("404");
    let msg = format!("{err:#}");
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
}

#[test]
fn a_server_that_ignores_ranges_restarts_the_file() {
    let s = serve(Mode::IgnoreRange);
    let d = scratch("norange");
    let data = content();
    // A stale partial file of other bytes: with a 200 answer it must be overwritten.
    std::fs::write(d.join(format!("{FILE}.part")), vec![0u8; 50_000]).unwrap();
    download_file(FILE, &opts(&s, &d)).expect("download");
    assert_eq!(std::fs::read(d.join(FILE)).unwrap(), data);
}

#[test]
fn a_pin_that_disagrees_with_the_server_is_refused() {
    let s = serve(Mode::Normal);
    let d = scratch("pin");
    let mut o = opts(&s, &d);
    o.sha256 = Some("1".repeat(64));
    let err = download_file(FILE, &o).expect_err("pin mismatch");
    assert!(
        format!("{err:#}").contains("refusing to download"),
        "{err:#}"
    );
    assert_eq!(s.gets.load(Ordering::SeqCst), 0);
}

#[test]
fn cli_rejects_an_unknown_target() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(["download", "q8"])
        .output()
        .expect("run ds4");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("q2") && err.contains("mtp"), "{err}");
}

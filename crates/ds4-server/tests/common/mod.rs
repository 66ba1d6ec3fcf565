//! Test harness: a tiny random model with the real V4 vocabulary (generated once into
//! CARGO_TARGET_TMPDIR), served by `router()` on 127.0.0.1:0.
#![allow(dead_code)]

pub mod kv;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ds4_server::serve::ConnLimits;
use ds4_server::{router, AppState, RequestLimits, ServerConfig};
use serde_json::Value;

/// Path of the shared tiny model (generated on first use).
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("ds4-server-tiny-v4vocab.gguf");
        if path.exists() {
            return path;
        }
        let tok = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/tokenizer.json");
        let json = std::fs::read_to_string(&tok).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `bash tools/fetch-tokenizer.sh` first",
                tok.display()
            )
        });
        let meta = ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json)
            .expect("tokenizer.json converts");
        let spec = ds4::tiny::TinySpec {
            tokenizer: Some(meta),
            ..ds4::tiny::TinySpec::default()
        };
        let w = ds4::tiny::generate(&spec).expect("tiny model generates");
        let tmp = dir.join(format!("ds4-server-tiny-{}.tmp", std::process::id()));
        w.write_file(&tmp).expect("tiny model writes");
        std::fs::rename(&tmp, &path).expect("tiny model renames");
        path
    })
    .clone()
}

/// Options of a test server.
#[derive(Clone)]
pub struct Opts {
    pub ctx: usize,
    pub api_key: Option<String>,
    pub keepalive_ms: u64,
    pub test_hooks: bool,
    pub cors: bool,
    pub limits: RequestLimits,
    pub conn: ConnLimits,
    /// The disk KV cache (`--kv-disk-dir` and friends).
    pub kv_cache: Option<ds4_server::kvcache::KvCacheConfig>,
    /// `--tool-memory-max-ids` (0: `--disable-exact-dsml-tool-replay`).
    pub tool_memory_max_ids: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            ctx: 1024,
            api_key: None,
            keepalive_ms: 5000,
            test_hooks: cfg!(feature = "test-hooks"),
            cors: false,
            limits: RequestLimits::default(),
            conn: ConnLimits::default(),
            kv_cache: None,
            tool_memory_max_ids: 100_000,
        }
    }
}

/// The app state over a fresh engine.
pub fn state(opts: &Opts) -> AppState {
    let file = ds4::gguf::GgufFile::open(&model_path()).expect("model opens");
    let model = ds4::model::Model::from_file(Arc::new(file)).expect("model loads");
    let engine =
        ds4::engine::Engine::new(Arc::new(model), ds4::model::Precision::Default, opts.ctx)
            .expect("engine starts");
    let config = ServerConfig {
        ctx_tokens: opts.ctx,
        default_max_tokens: 16,
        api_key: opts.api_key.clone(),
        cors: opts.cors,
        keepalive_ms: opts.keepalive_ms,
        test_hooks: opts.test_hooks,
        limits: opts.limits.clone(),
        kv_cache: opts.kv_cache.clone(),
        tool_memory_max_ids: opts.tool_memory_max_ids,
    };
    AppState::new(engine, config, None)
}

/// A server on 127.0.0.1:0.
pub struct Server {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<usize>>,
}

pub async fn start(opts: Opts) -> Server {
    let state = state(&opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(state.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        ds4_server::serve::serve(listener, app, &opts.conn, async move {
            let _ = stopped.await;
        })
        .await
    });
    Server {
        base: format!("http://{addr}"),
        addr,
        state,
        client: reqwest::Client::new(),
        stop: Some(stop),
        served: Some(served),
    }
}

impl Server {
    /// Shuts down as the binary does on SIGTERM (scheduler first, then the listener) and
    /// returns how many connections the deadline cut off.
    pub async fn shutdown(&mut self) -> usize {
        self.state.scheduler.shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.served.take() {
            Some(h) => h.await.expect("serve task"),
            None => 0,
        }
    }

    /// [`Server::shutdown`], then the shutdown checkpoint the binary writes before it exits.
    pub async fn shutdown_and_checkpoint(&mut self) -> usize {
        let cut = self.shutdown().await;
        self.state.scheduler.finish().await;
        cut
    }

    /// POST JSON, returns (status, parsed body or Value::String(raw)).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sends");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body reads");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST a streaming request and collect the SSE frames `(event name, data)`.
    pub async fn stream(&self, path: &str, body: &Value) -> (u16, Vec<(Option<String>, String)>) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json_body(body)
            .send()
            .await
            .expect("request sends");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body reads");
        (status, parse_sse(&text))
    }
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

/// Splits SSE text into frames; comments (`: prefill`) become `(Some(":"), text)`.
pub fn parse_sse(text: &str) -> Vec<(Option<String>, String)> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        if block.trim().is_empty() {
            continue;
        }
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("event: ") {
                event = Some(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("data: ") {
                data.push_str(rest);
            } else if line.starts_with(':') {
                event = Some(":".to_string());
                data.push_str(line);
            } else {
                panic!("malformed SSE line {line:?} in {block:?}");
            }
        }
        frames.push((event, data));
    }
    frames
}

/// The JSON of every `data:` frame except `[DONE]`.
pub fn data_json(frames: &[(Option<String>, String)]) -> Vec<Value> {
    frames
        .iter()
        .filter(|(e, d)| e.as_deref() != Some(":") && d != "[DONE]")
        .map(|(_, d)| {
            serde_json::from_str(d).unwrap_or_else(|e| panic!("frame {d:?} is not JSON: {e}"))
        })
        .collect()
}

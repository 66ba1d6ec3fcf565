//! `ds4-server`: OpenAI Chat Completions, Completions and Responses plus Anthropic Messages
//! over one DeepSeek V4 Flash engine (spec/serving.md §4, §5.1–§5.2, §6.2).
//!
//! Layout: `config` (flags), `error` (one error type, one shape per protocol), `request`
//! (shared parsing and limits), `scheduler` (the engine thread), `kvcache` (the disk KV cache,
//! §5.3–§5.6), `tool_memory` (exact DSML replay, §5.7), `sse` (framing, keepalive,
//! cancellation), one file per protocol (`openai_chat`, `openai_completions`, `responses`,
//! `anthropic`), `metrics`, `trace`. Handlers are thin: parse → render → tokenize →
//! [`scheduler::Scheduler::submit`] → protocol encoder; they never wait on the model.
#![forbid(unsafe_code)]

pub mod admission;
pub mod anthropic;
pub mod config;
pub mod error;
pub mod kvcache;
pub mod metrics;
pub mod openai_chat;
pub mod openai_completions;
pub mod request;
pub mod responses;
pub mod responses_tools;
pub mod scheduler;
pub mod serve;
pub mod sse;
pub mod test_script;
pub mod tool_memory;
pub mod trace;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use ds4::tokenizer::Tokenizer;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

pub use config::{Args, RequestLimits, ServerConfig};
use error::{ApiError, ApiErrorKind, Protocol};
use metrics::Metrics;
use scheduler::Scheduler;

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<ServerConfig>,
    /// The model's tokenizer (handlers tokenize; the engine thread never waits on them).
    pub tokenizer: Arc<Tokenizer>,
    /// The engine thread.
    pub scheduler: Scheduler,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `--trace` file.
    pub trace: Option<Arc<trace::Trace>>,
    /// `--test-script` rules (test-hooks builds): forced outputs chosen by the prompt.
    pub test_script: Option<Arc<test_script::TestScript>>,
    /// Body bytes admitted at once (`--body-budget-mb`).
    pub admission: Arc<admission::Budget>,
    /// Large prompts tokenized at once (one per core, at most 4).
    pub tokenize_slots: Arc<tokio::sync::Semaphore>,
    /// Exact DSML replay (spec §5.7; None with `--disable-exact-dsml-tool-replay`).
    pub tool_memory: Option<Arc<tool_memory::ToolMemory>>,
    ids: Arc<std::sync::atomic::AtomicU64>,
}

impl AppState {
    /// The head of every POST handler: the body's bytes (413 above the limit), its trace
    /// record under `path` when `--trace` is on, and the parsed JSON object (spec §4.6).
    pub(crate) fn read_json(
        &self,
        path: Option<&str>,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<serde_json::Map<String, Value>, ApiError> {
        let body = body_bytes(body)?;
        if let (Some(t), Some(p)) = (&self.trace, path) {
            t.body(p, &body);
        }
        request::parse_body(&body)
    }

    /// Starts the engine thread over `engine`.
    pub fn new(
        engine: ds4::engine::Engine,
        config: ServerConfig,
        trace: Option<trace::Trace>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let tokenizer = Arc::new(engine.tokenizer.clone());
        let trace = trace.map(Arc::new);
        let tool_memory = (config.tool_memory_max_ids > 0)
            .then(|| Arc::new(tool_memory::ToolMemory::new(config.tool_memory_max_ids)));
        let disk = config.kv_cache.clone().and_then(|c| {
            kvcache::DiskCache::open(c, &engine, metrics.clone(), tool_memory.clone())
        });
        let scheduler = Scheduler::start(
            engine,
            metrics.clone(),
            trace.clone(),
            disk,
            tool_memory.clone(),
        );
        AppState {
            admission: Arc::new(admission::Budget::new(config.limits.body_budget_bytes)),
            tokenize_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            )),
            config: Arc::new(config),
            tokenizer,
            scheduler,
            metrics,
            trace,
            tool_memory,
            test_script: None,
            ids: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// Forces the output of requests by `script` (honoured only when `config.test_hooks`).
    pub fn with_test_script(mut self, script: test_script::TestScript) -> Self {
        self.test_script = Some(Arc::new(script));
        self
    }

    /// The next per-process response number (`chatcmpl-N`, `cmpl-N`).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Keepalive period during prefill.
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.config.keepalive_ms)
    }
}

/// The whole HTTP app (tests call this too).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(openai_chat::handler))
        .route("/v1/completions", post(openai_completions::handler))
        .route("/v1/responses", post(responses::handler))
        .route("/v1/messages", post(anthropic::handler))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .fallback(unknown_endpoint)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(request_span_layer())
        .with_state(state)
}

/// One span per request (STYLE §9): id, method, path, protocol. No headers, no content.
fn request_span_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&axum::http::Request<axum::body::Body>) -> tracing::Span + Clone,
> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tower_http::trace::TraceLayer::new_for_http().make_span_with(
        move |req: &axum::http::Request<axum::body::Body>| {
            let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let path = req.uri().path();
            tracing::info_span!("request", request_id = id, method = %req.method(), path,
                protocol = protocol_of(path).name())
        },
    )
}

/// The protocol whose error shape a path uses.
pub(crate) fn protocol_of(path: &str) -> Protocol {
    if path.starts_with("/v1/messages") {
        Protocol::Anthropic
    } else if path.starts_with("/v1/responses") {
        Protocol::Responses
    } else if path.starts_with("/v1/completions") {
        Protocol::Completions
    } else {
        Protocol::Chat
    }
}

/// Preflight, shutdown refusal, API key, CORS and request/error counting for every route.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let protocol = protocol_of(&path);
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else if path != "/health" && !authorized(&app, req.headers()) {
        ApiError::new(
            ApiErrorKind::Unauthorized,
            "missing or invalid API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        )
        .with_protocol(protocol)
        .into_response()
    } else if app.scheduler.is_shutting_down() && req.method() == Method::POST {
        ApiError::new(ApiErrorKind::Unavailable, scheduler::SHUTTING_DOWN)
            .with_protocol(protocol)
            .into_response()
    } else {
        if req.method() == Method::POST {
            app.metrics.record_request(match protocol {
                Protocol::Chat if path == "/v1/chat/completions" => "chat",
                Protocol::Chat => "other",
                p => p.name(),
            });
        }
        next.run(req).await
    };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        app.metrics.record_error();
    }
    if let Some(t) = &app.trace {
        t.status(method.as_str(), &path, resp.status().as_u16());
    }
    if app.config.cors {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
    resp
}

/// Constant-time check of `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = app.config.api_key.as_deref() else {
        return true;
    };
    let expected = key.as_bytes();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(|k| bool::from(k.ct_eq(expected)))
        .unwrap_or(false);
    let x_api_key = headers
        .get("x-api-key")
        .map(|v| bool::from(v.as_bytes().ct_eq(expected)))
        .unwrap_or(false);
    bearer | x_api_key
}

/// Body bytes, or the right error (413 above the limit; `admission` refuses those first).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ApiErrorKind::PayloadTooLarge,
                format!("request body exceeds the limit: {rejection}"),
            )
        } else {
            ApiError::invalid(format!("could not read the request body: {rejection}"))
        }
    })
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    let text = app.metrics.render(app.scheduler.queue_depth());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn model_object(app: &AppState) -> Value {
    let ctx = app.config.ctx_tokens;
    json!({"id": request::MODEL_ID, "object": "model", "created": 1767225600u64,
        "owned_by": "ds4-rs", "name": "DeepSeek V4 Flash", "context_length": ctx,
        "top_provider": {"context_length": ctx,
            "max_completion_tokens": app.config.default_max_tokens.min(ctx),
            "is_moderated": false},
        "supported_parameters": ["tools", "tool_choice", "max_tokens", "temperature", "top_p",
            "top_k", "min_p", "stop", "seed", "stream", "reasoning_effort"]})
}

async fn models(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == request::MODEL_ID || id == "deepseek-chat" || id == "deepseek-reasoner" {
        let mut m = model_object(&app);
        m["id"] = json!(id);
        Ok(Json(m))
    } else {
        Err(ApiError::new(
            ApiErrorKind::NotFound,
            format!(
                "model `{id}` not found; this server serves `{}`",
                request::MODEL_ID
            ),
        ))
    }
}

async fn unknown_endpoint(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ApiErrorKind::NotFound,
        format!("unknown endpoint {method} {}", uri.path()),
    )
    .with_protocol(protocol_of(uri.path()))
}

/// Loads the model, binds, serves until SIGINT/SIGTERM/SIGHUP, then shuts down gracefully:
/// new work gets 503, running generations stop at the next token with the protocol's error
/// event, idle and half-sent connections close, and the process exits once every connection
/// is closed or `--shutdown-timeout-s` has passed. A second signal exits at once (130).
pub async fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    args.validate()?;
    if let Some(n) = args.threads {
        ds4::backend::cpu::set_threads(n).context("setting the thread count")?;
    }
    let file = ds4::gguf::GgufFile::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    if !args.model_sha256.is_empty() {
        let mut last = 0u64;
        ds4::pin::verify_all(
            file.paths(),
            &args.model_sha256,
            &mut |p, done, total| {
                let pct = done * 10 / total.max(1);
                if pct != last || done == total {
                    last = pct;
                    tracing::info!(file = %p.display(), done, total, "hashing the model");
                }
            },
            &mut |w| tracing::warn!("{w}"),
        )?;
        tracing::info!("model SHA-256 matches the pin");
    }
    let model = ds4::model::Model::from_file(Arc::new(file))
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let precision = if args.precise {
        ds4::model::Precision::Precise
    } else {
        ds4::model::Precision::Default
    };
    let model = Arc::new(model);
    let choice = match (args.cpu, args.cuda, args.backend.as_deref()) {
        (true, _, _) | (_, _, Some("cpu")) => ds4_cuda::Choice::Cpu,
        (_, true, _) | (_, _, Some("cuda")) => ds4_cuda::Choice::Cuda,
        _ => ds4_cuda::Choice::Auto,
    };
    let opts = ds4_cuda::CudaOptions {
        ctx: args.ctx,
        ..Default::default()
    };
    let backend =
        ds4_cuda::open_backend(&model, choice, &opts, &mut |line| tracing::info!("{line}"))
            .context("starting the backend")?;
    let engine = ds4::engine::Engine::with_backend(model, backend, precision, args.ctx)
        .context("starting the engine")?;
    let trace = match &args.trace {
        Some(p) => {
            Some(trace::Trace::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let host = if args.host == "localhost" {
        "127.0.0.1"
    } else {
        args.host.as_str()
    };
    let addr: std::net::Ipv4Addr = host
        .parse()
        .with_context(|| format!("--host {host}: expected an IPv4 address or `localhost`"))?;
    let state = AppState::new(engine, ServerConfig::from_args(&args), trace);
    #[cfg(feature = "test-hooks")]
    let state = match &args.test_script {
        Some(p) => state.with_test_script(test_script::TestScript::load(p)?),
        None => state,
    };
    // Installed before "listening" is printed, so a SIGTERM right after it is already ours.
    let mut signals = ShutdownSignals::install().context("installing the signal handlers")?;
    let listener = tokio::net::TcpListener::bind((addr, args.port))
        .await
        .with_context(|| format!("binding {addr}:{}", args.port))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, ctx = args.ctx, "listening");
    eprintln!("ds4-server: listening on http://{local}");
    let scheduler = state.scheduler.clone();
    let finisher = state.scheduler.clone();
    let limits = serve::ConnLimits::from_args(&args);
    if let Some(w) = serve::descriptor_warning(limits.max_connections) {
        tracing::warn!("{w}");
    }
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_s = args.header_timeout_s,
        body_timeout_s = args.body_timeout_s,
        "connection limits"
    );
    let cut = serve::serve(listener, router(state), &limits, async move {
        signals.next().await;
        tracing::info!("shutdown requested: refusing new work");
        scheduler.shutdown();
        tokio::spawn(async move {
            signals.next().await;
            std::process::exit(130);
        });
    })
    .await;
    if cut > 0 {
        eprintln!("ds4-server: shutdown deadline passed; closed {cut} open connection(s)");
    }
    // The shutdown checkpoint of the live session (spec §4.2), with --kv-disk-dir.
    finisher.finish().await;
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP (Ctrl+C elsewhere), registered when made. SIGHUP is a graceful
/// stop too: a closed terminal should not kill the process mid-response.
struct ShutdownSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// Waits for the next shutdown signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
            _ = self.hup.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

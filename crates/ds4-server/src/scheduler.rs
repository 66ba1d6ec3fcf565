//! The scheduler (spec/serving.md §4.2, §5.1–§5.2): one std thread owns the engine and serves
//! queued generation requests in order. Handlers never wait on the model: they submit a
//! [`GenerationRequest`] and read [`GenerationEvent`]s from a channel. A request whose receiver
//! is gone (client disconnected) stops within one token; queued ones are skipped.
//!
//! Prefix reuse: the worker picks the prompt it evaluates by the first match of §5.2's
//! memory-token rule (the live tokens are a prefix of the new tokens), thinking-visible and
//! memory-text rules (the decoded live tokens are a byte prefix of the rendered text: live
//! tokens + fresh tokenization of the remainder), then, with `--kv-disk-dir`, the disk-text
//! rule (§5.3: the longest checkpoint whose key text is a prefix); the engine then prefills
//! only the suffix. Disk checkpoints (§5.5) are written at the cold cut, every continued
//! interval, before a miss evicts the live session, and at shutdown ([`Scheduler::finish`]);
//! `kvcache` decides the positions and does the I/O. After a tool-call turn the sampled DSML
//! is remembered for exact replay (§5.7, `tool_memory`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use ds4::chat::{
    DsmlState, FinishReason, OutputEvent, OutputParser, ParsedOutput, StopCause, ThinkingMode,
};
use ds4::engine::{Control, Engine, FinishCause, Hooks};
use ds4::kvstore::{KeyKind, SaveReason};
use ds4::sample::{SamplerParams, StopMatcher, StopStep};
use tokio::sync::mpsc::{
    unbounded_channel, UnboundedReceiver, UnboundedSender, WeakUnboundedSender,
};

use crate::error::{ApiError, ApiErrorKind};
use crate::kvcache::DiskCache;
use crate::metrics::Metrics;
use crate::tool_memory::{sampled_block, ToolMemory};
use crate::trace::Trace;

/// Everything the worker needs to run one request; built by the protocol layer (no model).
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Rendered prompt text (for the memory-text prefix rule and the trace).
    pub prompt_text: String,
    /// Its tokens (special tokens recognized).
    pub prompt_tokens: Vec<u32>,
    /// Output limit; clamped to what the context leaves.
    pub max_tokens: usize,
    /// Client sampling knobs (replaced by the thinking defaults in thinking mode, §3.2).
    pub params: SamplerParams,
    /// Stop strings (§3.4).
    pub stops: Vec<String>,
    /// Whether the output opens in reasoning.
    pub thinking_mode: ThinkingMode,
    /// DSML parsing and greedy forcing on.
    pub tools_active: bool,
    /// `call_` or `toolu_`.
    pub call_id_prefix: &'static str,
    /// Test hook: text whose tokens replace sampling (then EOS).
    pub forced_output: Option<String>,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Effective prompt length.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the live session or a disk checkpoint.
    pub cached_tokens: usize,
    /// Sampled tokens.
    pub completion_tokens: usize,
}

impl Usage {
    /// Newly prefilled prompt tokens.
    pub fn written_tokens(&self) -> usize {
        self.prompt_tokens.saturating_sub(self.cached_tokens)
    }
}

/// The end of a request.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Counts.
    pub usage: Usage,
    /// Reasoning, content, tool calls and finish reason.
    pub parsed: ParsedOutput,
    /// The request's stop string that ended the output, if one did (Anthropic reports it).
    pub stop_sequence: Option<String>,
}

/// What the worker tells a handler, in order: `Started`, then `Text`/`Output` as pieces are
/// decoded, then exactly one of `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// The worker took the request; prefill starts now.
    Started {
        /// Effective prompt length.
        prompt_tokens: usize,
        /// Tokens reused from the live session.
        cached_tokens: usize,
    },
    /// Raw generated text (stop sequences already cut), for /v1/completions.
    Text(String),
    /// A parsed output event.
    Output(OutputEvent),
    /// Generation ended.
    Done(Finished),
    /// Generation failed.
    Failed(String),
}

/// What a request is told when a shutdown stops it (queued, or running at the next token):
/// a 503 before the response started, the protocol's error event after.
pub const SHUTTING_DOWN: &str = "server shutting down";

struct Job {
    req: GenerationRequest,
    tx: UnboundedSender<GenerationEvent>,
}

/// What the worker thread is asked to do, in order.
enum Work {
    /// Serve a request.
    Generate(Job),
    /// Store the live session (reason shutdown), then answer.
    Finish(mpsc::Sender<()>),
}

/// Handle to the worker thread; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    queue: mpsc::Sender<Work>,
    depth: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
    shutdown_tx: Arc<tokio::sync::watch::Sender<bool>>,
    busy: Arc<AtomicBool>,
    /// Every submitted request's event channel, weakly: a shutdown tells each one at once,
    /// from this side, without waiting for the engine thread (which may be in a long prefill).
    open: Arc<std::sync::Mutex<Vec<WeakUnboundedSender<GenerationEvent>>>>,
}

impl Scheduler {
    /// Starts the worker thread that owns `engine`, with the disk cache `disk` and the tool
    /// memory `tools` (exact DSML replay) when they are on.
    pub fn start(
        engine: Engine,
        metrics: Arc<Metrics>,
        trace: Option<Arc<Trace>>,
        disk: Option<DiskCache>,
        tools: Option<Arc<ToolMemory>>,
    ) -> Self {
        let (queue, rx) = mpsc::channel::<Work>();
        let depth = Arc::new(AtomicUsize::new(0));
        let shutting_down = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            engine,
            depth: depth.clone(),
            shutting_down: shutting_down.clone(),
            busy: busy.clone(),
            metrics,
            trace,
            next_job: 0,
            visible: None,
            disk,
            tools,
        };
        std::thread::Builder::new()
            .name("ds4-engine".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the engine thread");
        Scheduler {
            queue,
            depth,
            shutting_down,
            shutdown_tx: Arc::new(tokio::sync::watch::channel(false).0),
            busy,
            open: Arc::default(),
        }
    }

    /// Queues `req`; events arrive on the returned channel. Refused with 503 while shutting down.
    pub fn submit(
        &self,
        req: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenerationEvent>, ApiError> {
        if self.is_shutting_down() {
            return Err(ApiError::new(ApiErrorKind::Unavailable, SHUTTING_DOWN));
        }
        let (tx, rx) = unbounded_channel();
        if let Ok(mut open) = self.open.lock() {
            open.retain(|w| w.strong_count() > 0);
            open.push(tx.downgrade());
        }
        self.depth.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(Work::Generate(Job { req, tx })).is_err() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                ApiErrorKind::Internal,
                "the engine thread has stopped",
            ));
        }
        Ok(rx)
    }

    /// Requests waiting or running.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// True while the worker runs a request.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Refuse new work and stop running generation at the next token (the request gets
    /// [`SHUTTING_DOWN`]); wakes every [`Scheduler::shutdown_requested`].
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown_tx.send_replace(true);
        // Queued and running requests (a prefill included) end now: a 503, or the protocol's
        // error event on a stream. Whatever the engine thread sends later is not read.
        let open = self.open.lock().map(|mut o| std::mem::take(&mut *o));
        for tx in open.unwrap_or_default().iter().filter_map(|w| w.upgrade()) {
            let _ = tx.send(GenerationEvent::Failed(SHUTTING_DOWN.into()));
        }
    }

    /// Resolves once [`Scheduler::shutdown`] has been called (at once if it already was).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown_tx.subscribe();
        // The sender lives in `self`, so `wait_for` only returns once the flag is true.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Whether [`Scheduler::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The last step of a clean exit (after [`Scheduler::shutdown`] and the connections have
    /// closed): once the queue ahead of it is answered, the engine thread stores the live
    /// session as a `shutdown` checkpoint (with `--kv-disk-dir`); resolves when it is on disk.
    pub async fn finish(&self) {
        let (tx, rx) = mpsc::channel();
        if self.queue.send(Work::Finish(tx)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        }
    }
}

struct Worker {
    engine: Engine,
    depth: Arc<AtomicUsize>,
    shutting_down: Arc<AtomicBool>,
    busy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    trace: Option<Arc<Trace>>,
    next_job: u64,
    /// §5.2 thinking-visible: the text a client replays for the live session of a toolless
    /// thinking turn (its reasoning dropped, as the template renders earlier turns).
    visible: Option<String>,
    /// The disk KV cache (`--kv-disk-dir`).
    disk: Option<DiskCache>,
    /// Exact DSML replay memory (off with `--disable-exact-dsml-tool-replay`).
    tools: Option<Arc<ToolMemory>>,
}

/// Random lowercase hex of `n` digits.
pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Work>) {
        while let Ok(work) = rx.recv() {
            let job = match work {
                Work::Generate(job) => job,
                Work::Finish(done) => {
                    self.store_live(SaveReason::Shutdown);
                    let _ = done.send(());
                    continue;
                }
            };
            self.busy.store(true, Ordering::SeqCst);
            if self.shutting_down.load(Ordering::SeqCst) {
                let _ = job.tx.send(GenerationEvent::Failed(SHUTTING_DOWN.into()));
            } else if !job.tx.is_closed() {
                self.next_job += 1;
                self.serve(job);
            }
            self.busy.store(false, Ordering::SeqCst);
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// §5.2 rules memory-token, thinking-visible, then memory-text; on a miss the live
    /// session is checkpointed (evict) and the disk cache tried (disk-text); anything else
    /// evaluates the request's tokens.
    fn select_prompt(&mut self, req: &GenerationRequest) -> (Vec<u32>, &'static str) {
        if let Some(hit) = self.memory_prompt(req) {
            return hit;
        }
        let live = self.engine.session_tokens().len();
        if live > 0 {
            tracing::info!(
                live_tokens = live,
                "live session does not match the request; starting over"
            );
            self.store_live(SaveReason::Evict);
        }
        if let Some(prompt) = self.disk_prompt(req) {
            return (prompt, "disk-text");
        }
        // The next evaluation starts from nothing: the live session no longer descends from a
        // loaded checkpoint.
        if let Some(d) = self.disk.as_mut() {
            d.superseded = None;
            d.last_store = 0;
        }
        let kind = if live == 0 { "cold" } else { "miss" };
        (req.prompt_tokens.clone(), kind)
    }

    /// The in-memory rules of §5.2.
    fn memory_prompt(&self, req: &GenerationRequest) -> Option<(Vec<u32>, &'static str)> {
        let live = self.engine.session_tokens();
        let tokens = &req.prompt_tokens;
        if live.is_empty() {
            return None;
        }
        if live.len() <= tokens.len() && tokens[..live.len()] == live[..] {
            return Some((tokens.clone(), "memory-token"));
        }
        if let Some(rest) = self
            .visible
            .as_deref()
            .and_then(|v| req.prompt_text.strip_prefix(v))
        {
            if !rest.is_empty() {
                let mut prompt = live.to_vec();
                prompt.extend(self.engine.tokenizer.encode(rest, true));
                return Some((prompt, "thinking-visible"));
            }
        }
        let live_text = self.engine.tokenizer.decode(live);
        if let Some(rest) = req.prompt_text.strip_prefix(live_text.as_str()) {
            if !rest.is_empty() {
                let mut prompt = live.to_vec();
                prompt.extend(self.engine.tokenizer.encode(rest, true));
                return Some((prompt, "memory-text"));
            }
        }
        None
    }

    /// §5.3 disk-text: loads the longest checkpoint whose key is a prefix of the rendered
    /// text into the live session; the prompt is its exact tokens plus the fresh tokenization
    /// of the rest of the text.
    fn disk_prompt(&mut self, req: &GenerationRequest) -> Option<Vec<u32>> {
        let disk = self.disk.as_mut()?;
        let hit = disk.lookup(&req.prompt_text)?;
        let rest = req.prompt_text.get(hit.text_bytes..)?;
        let mut prompt = hit.snapshot.tokens.clone();
        prompt.extend(self.engine.tokenizer.encode(rest, true));
        if prompt.len() >= self.engine.ctx() {
            return None;
        }
        if let Err(e) = self.engine.restore(&hit.snapshot) {
            tracing::warn!("kv cache {}: restoring failed: {e}", hit.name);
            return None;
        }
        let tokens = hit.snapshot.tokens.len();
        disk.last_store = tokens;
        disk.superseded = (tokens > disk.config().cold_max_tokens).then(|| hit.name.clone());
        tracing::info!(
            file = hit.name.as_str(),
            cached_tokens = tokens,
            prompt_tokens = prompt.len(),
            reason = hit.header.reason.name(),
            "kv cache hit"
        );
        Some(prompt)
    }

    /// Stores the live session (evict, shutdown) keyed by its visible transcript when one is
    /// bound to it (§5.5), else by its decoded tokens.
    fn store_live(&mut self, reason: SaveReason) {
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        let visible = self
            .visible
            .as_deref()
            .map(|v| (v, KeyKind::ThinkingVisible));
        if self.engine.session_tokens().len() > disk.last_store
            || disk.superseded.is_some()
            || reason == SaveReason::Shutdown
        {
            disk.store(&self.engine, visible, reason, None);
        }
    }

    fn serve(&mut self, job: Job) {
        let Job { req, tx } = job;
        let (prompt, decision) = self.select_prompt(&req);
        self.visible = None;
        let ctx = self.engine.ctx();
        if prompt.len() >= ctx {
            let _ = tx.send(GenerationEvent::Failed(format!(
                "Prompt has {} tokens, but the configured context size is {ctx} tokens",
                prompt.len()
            )));
            return;
        }
        let live = self.engine.session_tokens();
        let cached_guess = if live.len() <= prompt.len() && prompt[..live.len()] == live[..] {
            live.len()
        } else {
            0
        };
        let _ = tx.send(GenerationEvent::Started {
            prompt_tokens: prompt.len(),
            cached_tokens: cached_guess,
        });
        tracing::debug!(
            job = self.next_job,
            prompt_tokens = prompt.len(),
            cached_tokens = cached_guess,
            decision,
            "prefill"
        );
        if let Some(t) = &self.trace {
            t.request(
                self.next_job,
                &req.prompt_text,
                decision,
                cached_guess,
                prompt.len(),
            );
        }
        self.set_forced(&req);
        let max_tokens = req.max_tokens.min(ctx - prompt.len());
        let params = match req.thinking_mode {
            ThinkingMode::Thinking => req.params.for_thinking(),
            ThinkingMode::Chat => req.params,
        };
        let prefix = req.call_id_prefix;
        let mut parser = OutputParser::new(req.thinking_mode, req.tools_active)
            .with_call_ids(move |_| format!("{prefix}{}", random_hex(32)));
        let mut stop = StopMatcher::new(req.stops.iter().cloned());
        let mut stop_hit = false;
        let mut stop_index = None;
        let mut cancelled = false;
        let mut stopped_by_shutdown = false;
        let mut saw_think_end = false;
        let shutting_down = self.shutting_down.clone();
        let trace = self.trace.clone();
        let job_id = self.next_job;
        let stop_prefill = || cancel_requested(&tx, &shutting_down);
        let mut emitted = String::new();
        let in_dsml = Cell::new(false);
        let cold = match (&self.disk, cached_guess) {
            (Some(d), 0) => {
                let tok = &self.engine.tokenizer;
                d.config().cold_cut(&prompt, tok.user(), tok.assistant())
            }
            _ => None,
        };
        let breaks = self
            .disk
            .as_ref()
            .map(|d| d.breaks(cached_guess, prompt.len(), cold))
            .unwrap_or_default();
        let prompt_len = prompt.len();
        let prompt_text = req.prompt_text.as_str();
        let disk = &mut self.disk;
        // §5.5 cold and continued checkpoints, at prefill chunk ends and before each decoded
        // token; never inside a DSML tool call.
        let mut at_frontier = |engine: &Engine| {
            let Some(d) = disk.as_mut() else { return };
            let pos = engine.session_tokens().len();
            if cold == Some(pos) && pos > d.last_store {
                d.store(engine, None, SaveReason::Cold, Some(prompt_text));
            } else if d.continued_due(pos) && !in_dsml.get() {
                let within = (pos <= prompt_len).then_some(prompt_text);
                d.store(engine, None, SaveReason::Continued, within);
            }
        };
        let mut hooks = Hooks {
            cancel: &stop_prefill,
            breaks,
            at_frontier: Some(&mut at_frontier),
        };
        let result =
            self.engine
                .generate_hooked(&prompt, max_tokens, params, &mut hooks, |piece| {
                    if cancel_requested(&tx, &shutting_down) {
                        cancelled = true;
                        stopped_by_shutdown = !tx.is_closed();
                        return Control::Stop;
                    }
                    if let Some(t) = &trace {
                        t.piece(job_id, piece.id, &piece.text);
                    }
                    let emit = match stop.push(&piece.text) {
                        StopStep::Continue { emit } => emit,
                        StopStep::Stopped {
                            emit,
                            stop: matched,
                        } => {
                            stop_hit = true;
                            stop_index = Some(matched);
                            emit
                        }
                    };
                    if !emit.is_empty() {
                        saw_think_end |= emit.contains(ds4::chat::render::THINK_END);
                        emitted.push_str(&emit);
                        let _ = tx.send(GenerationEvent::Text(emit.clone()));
                        for ev in parser.feed(&emit) {
                            let _ = tx.send(GenerationEvent::Output(ev));
                        }
                    }
                    in_dsml.set(parser.dsml_state() != DsmlState::Outside);
                    if stop_hit || parser.is_done() {
                        Control::Stop
                    } else if parser.in_dsml_structure() {
                        Control::ContinueGreedy
                    } else {
                        Control::Continue
                    }
                });
        let stats = match result {
            Ok(stats) => stats,
            Err(ds4::engine::EngineError::Cancelled) => {
                // Between prefill chunks: the session holds whole chunks and stays usable.
                tracing::info!(job = job_id, "prefill cancelled");
                if !tx.is_closed() {
                    let _ = tx.send(GenerationEvent::Failed(SHUTTING_DOWN.into()));
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "generation failed");
                self.reset_live();
                let _ = tx.send(GenerationEvent::Failed(format!("generation failed: {e}")));
                return;
            }
        };
        if stopped_by_shutdown {
            // The stream ends with the protocol's error event (or a 503), not a finish.
            self.reset_live();
            tracing::info!(job = job_id, "generation stopped by shutdown");
            let _ = tx.send(GenerationEvent::Failed(SHUTTING_DOWN.into()));
            return;
        }
        if !stop_hit {
            let tail = stop.finish();
            if !tail.is_empty() {
                emitted.push_str(&tail);
                let _ = tx.send(GenerationEvent::Text(tail.clone()));
                for ev in parser.feed(&tail) {
                    let _ = tx.send(GenerationEvent::Output(ev));
                }
            }
        }
        let cause = if stop_hit {
            StopCause::StopSequence
        } else if cancelled {
            StopCause::Error
        } else {
            match stats.finish {
                FinishCause::Eos | FinishCause::Stopped => StopCause::Eos,
                FinishCause::Length => StopCause::Length,
            }
        };
        if stop_hit || cancelled {
            // §3.4: a stop sequence invalidates the live session; a cancelled one is partial.
            self.reset_live();
        }
        let (events, parsed) = parser.finish(cause);
        if parsed.finish == FinishReason::ToolCalls {
            self.remember_tool_calls(&req, &emitted, &parsed);
        }
        let toolless_thinking = req.thinking_mode == ThinkingMode::Thinking && !req.tools_active;
        if toolless_thinking && !stop_hit && !cancelled && saw_think_end {
            if let Some(base) = req.prompt_text.strip_suffix(ds4::chat::render::THINK_START) {
                let eos = if stats.finish == FinishCause::Eos {
                    ds4::chat::render::EOS
                } else {
                    ""
                };
                self.visible = Some(format!(
                    "{base}{}{}{eos}",
                    ds4::chat::render::THINK_END,
                    parsed.content
                ));
            }
        }
        for ev in events {
            let _ = tx.send(GenerationEvent::Output(ev));
        }
        let usage = Usage {
            prompt_tokens: stats.prompt_tokens,
            cached_tokens: stats.cached_tokens,
            completion_tokens: stats.completion_tokens,
        };
        self.metrics
            .record_generation(&usage, stats.prefill_secs, stats.decode_secs);
        let finish = finish_name(&parsed.finish);
        tracing::info!(
            job = job_id,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            finish,
            cancelled,
            "generation done"
        );
        if let Some(t) = &self.trace {
            t.finish(job_id, finish, &usage);
        }
        let stop_sequence = stop_index.and_then(|i| stop.stops().get(i).cloned());
        let _ = tx.send(GenerationEvent::Done(Finished {
            usage,
            parsed,
            stop_sequence,
        }));
    }

    /// Drops the live session (and with it the disk cache's view of it).
    fn reset_live(&mut self) {
        self.engine.reset();
        if let Some(d) = self.disk.as_mut() {
            d.last_store = 0;
            d.superseded = None;
        }
    }

    /// §5.7: maps the turn's call ids to the exact text sampled for their block.
    fn remember_tool_calls(&self, req: &GenerationRequest, emitted: &str, parsed: &ParsedOutput) {
        let Some(tools) = &self.tools else { return };
        let visible = match req.thinking_mode {
            ThinkingMode::Thinking => emitted
                .split_once(ds4::chat::render::THINK_END)
                .map_or("", |(_, v)| v),
            ThinkingMode::Chat => emitted,
        };
        let ids: Vec<String> = parsed.tool_calls.iter().map(|c| c.id.clone()).collect();
        match sampled_block(visible, &parsed.content) {
            Some(block) => tools.remember(&ids, block),
            None => tracing::debug!("tool calls: sampled DSML not found; replay will be canonical"),
        }
    }

    #[cfg(feature = "test-hooks")]
    fn set_forced(&mut self, req: &GenerationRequest) {
        let ids = match &req.forced_output {
            Some(text) => {
                let mut ids = self.engine.tokenizer.encode(text, true);
                ids.push(self.engine.tokenizer.eos());
                ids
            }
            None => Vec::new(),
        };
        self.engine.force_tokens(ids);
    }

    #[cfg(not(feature = "test-hooks"))]
    fn set_forced(&mut self, _req: &GenerationRequest) {}
}

/// Whether a running request must stop: its client is gone (the receiver was dropped) or the
/// server is shutting down. Checked after every sampled token; the engine does not yet offer
/// a hook between prefill chunks, so a prefill runs to its end before this is seen (a
/// shutdown still answers the client at once, see [`Scheduler::shutdown`]).
fn cancel_requested(tx: &UnboundedSender<GenerationEvent>, shutting_down: &AtomicBool) -> bool {
    tx.is_closed() || shutting_down.load(Ordering::SeqCst)
}

/// OpenAI finish reason text.
pub fn finish_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Error(_) => "error",
    }
}

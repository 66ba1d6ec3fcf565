//! SSE plumbing shared by every protocol (spec/serving.md §4.9–§4.10): framing, `: prefill`
//! keepalive comments while the request's own prefill runs, and cancellation on body drop (the
//! event receiver is dropped with the body, which the worker sees within one token). Protocol
//! files only turn [`GenerationEvent`]s into frames. Also the non-streaming collector.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use ds4::chat::OutputEvent;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ApiErrorKind};
use crate::scheduler::{Finished, GenerationEvent};

/// `data: JSON\n\n`.
pub fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// `event: NAME\ndata: JSON\n\n`.
pub fn event(name: &str, value: &Value) -> String {
    format!("event: {name}\ndata: {value}\n\n")
}

/// Turns generation events into SSE frames for one protocol.
pub trait StreamEncoder: Send + 'static {
    /// Frames for one event. `Done` and `Failed` must produce the terminal frames.
    fn encode(&mut self, event: GenerationEvent) -> Vec<String>;
}

struct State<E> {
    rx: UnboundedReceiver<GenerationEvent>,
    encoder: E,
    pending: VecDeque<String>,
    keepalive: Duration,
    prefilling: bool,
    done: bool,
}

/// An SSE response over `rx`; keepalive comments every `keepalive` while prefill runs.
pub fn response<E: StreamEncoder>(
    rx: UnboundedReceiver<GenerationEvent>,
    encoder: E,
    keepalive: Duration,
) -> Response {
    let state = State {
        rx,
        encoder,
        pending: VecDeque::new(),
        keepalive,
        prefilling: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.pending.pop_front() {
                return Some((
                    Ok::<Bytes, std::convert::Infallible>(Bytes::from(frame)),
                    st,
                ));
            }
            if st.done {
                return None;
            }
            let event = if st.prefilling {
                match tokio::time::timeout(st.keepalive, st.rx.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        st.pending.push_back(": prefill\n\n".into());
                        continue;
                    }
                }
            } else {
                st.rx.recv().await
            };
            match event {
                Some(ev) => {
                    match &ev {
                        GenerationEvent::Started { .. } => st.prefilling = true,
                        GenerationEvent::Done(_) | GenerationEvent::Failed(_) => st.done = true,
                        _ => st.prefilling = false,
                    }
                    let frames = st.encoder.encode(ev);
                    st.pending.extend(frames);
                }
                None => {
                    st.done = true;
                    let frames = st.encoder.encode(GenerationEvent::Failed(
                        "generation ended unexpectedly".into(),
                    ));
                    st.pending.extend(frames);
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Everything a non-streaming reply needs.
pub struct Collected {
    /// Raw generated text (stop-cut).
    pub text: String,
    /// The end.
    pub finished: Finished,
    /// Tool-call output events seen (ids as streamed).
    pub events: Vec<OutputEvent>,
}

/// Waits for the end of a generation. Dropping this future drops the receiver, which cancels.
pub async fn collect(mut rx: UnboundedReceiver<GenerationEvent>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut events = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerationEvent::Started { .. } => {}
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Output(e) => events.push(e),
            GenerationEvent::Done(finished) => {
                return Ok(Collected {
                    text,
                    finished,
                    events,
                })
            }
            GenerationEvent::Failed(msg) if msg == crate::scheduler::SHUTTING_DOWN => {
                return Err(ApiError::new(ApiErrorKind::Unavailable, msg))
            }
            GenerationEvent::Failed(msg) => return Err(ApiError::new(ApiErrorKind::Internal, msg)),
        }
    }
    Err(ApiError::new(
        ApiErrorKind::Internal,
        "generation ended unexpectedly",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Names;

    impl StreamEncoder for Names {
        fn encode(&mut self, event: GenerationEvent) -> Vec<String> {
            let name = match event {
                GenerationEvent::Started { .. } => "started",
                GenerationEvent::Text(_) | GenerationEvent::Output(_) => "piece",
                GenerationEvent::Done(_) => "done",
                GenerationEvent::Failed(_) => "failed",
            };
            vec![format!("data: {name}\n\n")]
        }
    }

    async fn next_frame(body: &mut Body) -> String {
        let frame = body.frame().await.expect("a frame").expect("no error");
        String::from_utf8(frame.into_data().expect("data").to_vec()).expect("utf-8")
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_comments_only_while_prefilling() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = response(rx, Names, Duration::from_secs(5)).into_body();
        tx.send(GenerationEvent::Started {
            prompt_tokens: 3,
            cached_tokens: 0,
        })
        .expect("send");
        assert_eq!(next_frame(&mut body).await, "data: started\n\n");
        // Nothing arrives for a while: the paused clock jumps to the keepalive.
        assert_eq!(next_frame(&mut body).await, ": prefill\n\n");
        assert_eq!(next_frame(&mut body).await, ": prefill\n\n");
        tx.send(GenerationEvent::Text("a".into())).expect("send");
        assert_eq!(next_frame(&mut body).await, "data: piece\n\n");
        tx.send(GenerationEvent::Failed("x".into())).expect("send");
        assert_eq!(next_frame(&mut body).await, "data: failed\n\n");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_body_closes_the_channel() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<GenerationEvent>();
        let body = response(rx, Names, Duration::from_secs(5)).into_body();
        assert!(!tx.is_closed());
        drop(body);
        assert!(tx.is_closed());
    }
}

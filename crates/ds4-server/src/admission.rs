//! Admission of request bodies (hardening): how much a request may cost before it is refused
//! or has to wait. Runs after the API-key check, before any handler.
//!
//! * A declared `Content-Length` over `--max-body-mb` is a 413 before a byte is read; a body
//!   that grows past it while being read is a 413 too.
//! * Bodies of 64 KiB or more take their size from a budget of `--body-budget-mb` (chunked
//!   bodies, whose size is unknown, take the largest size); a request waits until the budget
//!   has room, and gives it back when its handler returns (for a stream, when the stream
//!   starts). So the memory that bodies and what is parsed, rendered and tokenized from them
//!   can hold at once is bounded whatever the clients send; small requests never wait.
//! * The whole body must arrive within `--body-timeout-s` (408 after, connection closed), so
//!   a client that sends slowly cannot hold a connection or budget.
//! * A shutdown stops the wait and the read (503, connection closed).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiErrorKind};
use crate::AppState;

/// Bodies smaller than this never wait for the budget.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// The budget counts KiB (a semaphore permit is one KiB; `u32` permits cover 4 TiB).
const PERMIT_BYTES: usize = 1024;

/// The shared budget of body bytes, in permits of one KiB.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl Budget {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes / PERMIT_BYTES)
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Budget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes of the budget free now.
    pub fn available_bytes(&self) -> usize {
        self.permits
            .available_permits()
            .saturating_mul(PERMIT_BYTES)
    }

    /// Waits for room for a body of `bytes` (a body larger than the whole budget takes all).
    async fn acquire(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let want = u32::try_from(bytes.div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.permits
            .clone()
            .acquire_many_owned(want)
            .await
            .expect("invariant: the admission semaphore is never closed")
    }
}

/// The middleware: size check, budget, deadline; the handler then sees a buffered body.
pub async fn admit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let protocol = crate::protocol_of(req.uri().path());
    match admit_body(&app, req).await {
        Ok((req, permit)) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err((e, close)) => {
            let mut resp = e.with_protocol(protocol).into_response();
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

type Admitted = (Request, Option<tokio::sync::OwnedSemaphorePermit>);

/// The request with its body read, and the budget it holds; or the error and whether the
/// connection must close (the body was not read to its end).
async fn admit_body(app: &AppState, req: Request) -> Result<Admitted, (ApiError, bool)> {
    let limits = &app.config.limits;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.is_none() && !chunked {
        // No body (GET, OPTIONS, an empty POST): nothing to admit.
        return Ok((req, None));
    }
    let too_large = || {
        (
            ApiError::new(
                ApiErrorKind::PayloadTooLarge,
                format!(
                    "request body exceeds the limit of {} bytes (--max-body-mb)",
                    limits.max_body_bytes
                ),
            ),
            true,
        )
    };
    let size = match declared {
        Some(n) if n > u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX) => {
            return Err(too_large())
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => limits.max_body_bytes,
    };
    let shutting_down = || {
        (
            ApiError::new(ApiErrorKind::Unavailable, "server shutting down"),
            true,
        )
    };
    let permit = if size >= SMALL_BODY_BYTES {
        tokio::select! {
            p = app.admission.acquire(size) => Some(p),
            () = app.scheduler.shutdown_requested() => return Err(shutting_down()),
        }
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let bytes = tokio::select! {
        r = tokio::time::timeout(limits.body_timeout, read) => match r {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let is_limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(if is_limit {
                    too_large()
                } else {
                    (ApiError::invalid(format!("could not read the request body: {e}")), true)
                });
            }
            Err(_) => {
                return Err((
                    ApiError::new(
                        ApiErrorKind::Timeout,
                        format!(
                            "the request body was not received within {} s (--body-timeout-s)",
                            limits.body_timeout.as_secs()
                        ),
                    ),
                    true,
                ))
            }
        },
        () = app.scheduler.shutdown_requested() => return Err(shutting_down()),
    };
    Ok((Request::from_parts(parts, Body::from(bytes)), permit))
}

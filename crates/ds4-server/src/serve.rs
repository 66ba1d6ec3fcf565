//! The HTTP/1 listener (spec/serving.md §4.1–§4.2): accepts at most `--max-connections`
//! connections at once (the rest wait in the kernel's listen backlog, so the process never runs
//! out of descriptors), serves each with hyper's HTTP/1 connection, and shuts down gracefully
//! within a deadline. Every bound is one of the stack's own knobs:
//!
//! * hyper's `header_read_timeout`: the request head must arrive within `--header-timeout-s`
//!   of the connection opening or of the previous response ending (hyper starts the timer
//!   when it starts waiting for a head, so this is also the idle keep-alive timeout);
//! * hyper's `max_header_size`: 64 KiB of request head, as ds4 (431 above);
//! * `tokio-io-timeout`'s write timeout: a response write that makes no progress for
//!   `--write-timeout-s` (a client that stopped reading) fails and closes the connection;
//! * hyper-util's `GracefulShutdown`: idle and half-sent connections close at once, requests
//!   in progress finish, and whatever is still open at `--shutdown-timeout-s` is dropped.
//!
//! Body deadlines and sizes are per request, in [`crate::admission`].

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Largest request head (request line and headers), as ds4.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Descriptors kept free of connections: the model file, stdio, the trace, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Default connection cap when the descriptor limit allows more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Connection-level limits (flags `--max-connections`, `--header-timeout-s`,
/// `--write-timeout-s`, `--shutdown-timeout-s`).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request head (also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Time a response write may make no progress.
    pub write_timeout: Duration,
    /// Time a graceful shutdown waits for open connections.
    pub shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: default_max_connections(),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnLimits {
    /// The limits `args` ask for.
    pub fn from_args(args: &crate::Args) -> Self {
        ConnLimits {
            max_connections: args.max_connections.unwrap_or_else(default_max_connections),
            header_timeout: Duration::from_secs(args.header_timeout_s),
            write_timeout: Duration::from_secs(args.write_timeout_s),
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_s),
        }
    }
}

/// The soft descriptor limit less [`RESERVED_DESCRIPTORS`], at most
/// [`DEFAULT_MAX_CONNECTIONS`] and at least 1.
pub fn default_max_connections() -> usize {
    let soft = descriptor_limit().unwrap_or(1024);
    let free = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    usize::try_from(free)
        .unwrap_or(usize::MAX)
        .min(DEFAULT_MAX_CONNECTIONS)
}

/// A warning when `max_connections` leaves fewer than [`RESERVED_DESCRIPTORS`] descriptors
/// free: `accept` may then fail with EMFILE (connections wait in the backlog meanwhile).
pub fn descriptor_warning(max_connections: usize) -> Option<String> {
    let soft = descriptor_limit()?;
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_DESCRIPTORS);
    (wanted > soft).then(|| {
        format!(
            "--max-connections {max_connections} plus {RESERVED_DESCRIPTORS} reserved exceeds \
             the descriptor limit {soft} (ulimit -n); accept will fail at times"
        )
    })
}

/// The soft `RLIMIT_NOFILE`, if the platform has one.
fn descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down gracefully: stops
/// accepting, closes idle and half-sent connections, lets requests in progress finish, and
/// returns once all are closed or `limits.shutdown_timeout` has passed (the connections still
/// open are then dropped with the runtime). Returns the number of connections cut off.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("invariant: the slot semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and aborted handshakes: the connection waits in
                    // the backlog; back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {},
                        () = &mut shutdown => break,
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_write_timeout(Some(limits.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let service = app
            .clone()
            .map_request(|req: Request<Incoming>| req.map(Body::new));
        let conn = builder.serve_connection(io, TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "shutting down: waiting for open connections");
    match tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            let left = limits
                .max_connections
                .saturating_sub(slots.available_permits());
            tracing::warn!(
                connections = left,
                "shutdown deadline passed; dropping the connections still open"
            );
            left
        }
    }
}

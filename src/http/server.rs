//! The HTTP server: hyper's connection builder around the router, so slow clients and huge
//! headers are cut off before a request reaches the router (`axum::serve` does not expose
//! these settings), with connection hygiene and graceful shutdown of open connections.
//!
//! Hygiene: at most `max_connections` connections at once (the rest wait in the kernel's
//! accept queue, so the process never runs out of file descriptors), and a connection with no
//! request in progress that sends nothing for `idle_timeout` is closed, whether it never sent
//! a byte, sent only the HTTP/2 preface, or sits idle between keep-alive requests. hyper's own
//! header timeout only starts once bytes arrive, and its HTTP/2 keep-alive pings only catch
//! peers that stopped answering, so neither closes a live but silent peer.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client must send a request's whole header within this time, or the connection closes.
    pub header_read_timeout: Duration,
    /// Largest request header section, in bytes (HTTP/1: at least 8 KiB); larger gets a 431.
    pub max_header_bytes: usize,
    /// A connection with no request in progress that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted. Lowered to what the process's
    /// open-file limit allows.
    pub max_connections: usize,
    /// HTTP/2 streams (requests) one connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 PING interval; a peer that does not answer within `http2_keep_alive_timeout`
    /// is disconnected.
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            http2_max_concurrent_streams: 100,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// How long an idle connection being closed may take to close gracefully.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// File descriptors kept for everything but client connections: the database pool, the
/// Kubernetes client and its watches, log files.
const RESERVED_FILES: u64 = 256;

/// Serves `router` on `listener` until `shutdown` completes, then waits for open connections to
/// finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    let max_connections = connection_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(max_connections));
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        if permits.available_permits() == 0 {
            tracing::warn!(
                max_connections,
                "at the connection cap: new connections wait until one closes"
            );
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let activity = Arc::new(Activity::new());
        // The peer address, for `ConnectInfo` (the unauthenticated rate limit is keyed by it).
        let router = router.clone().layer(Extension(ConnectInfo(peer)));
        let service = TowerToHyperService::new(tracked(router, activity.clone()));
        let connection = builder
            .serve_connection(
                TokioIo::new(Watched::new(stream, activity.clone())),
                service,
            )
            .into_owned();
        let closing = closing.clone();
        let idle_timeout = limits.idle_timeout;
        // Runs the connection to its end, closing it gracefully once it has been idle for
        // `idle_timeout` or when the server shuts down.
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut closed = false;
            // When an idle connection is past its graceful close (an HTTP/2 peer must answer a
            // PING after the GOAWAY; a silent one never does): then it is dropped.
            let mut drop_at: Option<Instant> = None;
            loop {
                // While a request is in progress only its end can make the connection idle:
                // look again a little later.
                let check_at = match activity.in_flight() {
                    0 => activity.last() + idle_timeout,
                    _ => Instant::now() + idle_timeout.min(Duration::from_secs(1)),
                };
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection closed with an error");
                        }
                        break;
                    }
                    () = closing.cancelled(), if !closed => {
                        connection.as_mut().graceful_shutdown();
                        closed = true;
                    }
                    () = tokio::time::sleep_until(check_at), if !closed => {
                        if activity.in_flight() == 0 && activity.last() + idle_timeout <= Instant::now() {
                            tracing::debug!("closing an idle connection");
                            connection.as_mut().graceful_shutdown();
                            closed = true;
                            drop_at = Some(Instant::now() + CLOSE_GRACE);
                        }
                    }
                    () = tokio::time::sleep_until(drop_at.unwrap_or_else(Instant::now)), if drop_at.is_some() => {
                        tracing::debug!("an idle connection did not close gracefully; dropping it");
                        break;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a permit until it ends: having them all back means all ended.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// `wanted`, lowered to what the open-file limit leaves for connections. The soft limit is
/// first raised to the hard one, as Go's runtime does at start, since the default soft limit
/// (often 1,024) is far below what a server needs.
fn connection_cap(wanted: usize) -> usize {
    let files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => files,
        Err(error) => {
            tracing::debug!(%error, "could not read or raise the open-file limit");
            return wanted.max(1);
        }
    };
    let room = usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            open_file_limit = files,
            max_connections = room.max(1),
            "the open-file limit lowers the connection cap"
        );
    }
    wanted.min(room).max(1)
}

/// What one connection is doing: when it last read bytes or finished a request, and how many
/// requests are in progress (from the request until the end of its response body, so a long
/// log or event stream is never idle).
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in progress until it is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router, counting each request as in progress until its response body ends.
fn tracked(
    router: Router,
    activity: Arc<Activity>,
) -> impl tower::Service<
    axum::http::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    tower::service_fn(move |request: axum::http::Request<Incoming>| {
        let guard = InFlight::new(activity.clone());
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        }
    })
}

/// A response body that keeps its request counted as in progress until it is dropped.
struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that records when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Watched { stream, activity }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

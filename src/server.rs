//! Serving: one listener for REST and gRPC, the client-IP rule, and the bounds on what clients
//! can hold (header and request timeouts, open connections, requests in flight).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::edge::{ClientIp, ErrorBody, ErrorDetail, client_ip};

/// REST and gRPC on one listener: requests with an `application/grpc` content type go to tonic,
/// everything else to the REST router. Every request gets its [`ClientIp`]: the accept loop
/// ([`serve`]) sets the socket peer, and behind a trusted proxy this replaces it with the client
/// the proxies name ([`client_ip`]).
///
/// A plain tower service, served as it is: the request goes straight to the router it is for,
/// whose future is the answer (nothing boxed, nothing cloned). Wrapping it in an outer `Router`
/// cost every request a route match, a URL-parameter extension, a boxed future and a layer of
/// response mapping: about 2,000 instructions of a warm REST verify's 32,000 under callgrind.
///
/// `rest` is any service that is always ready, as a `Router` is.
#[derive(Clone)]
pub struct OnePort<R = Router> {
    rest: R,
    grpc: Router,
    trusted: Arc<Vec<IpNet>>,
}

impl<R> OnePort<R> {
    /// REST and gRPC on one listener, the client-IP rule with the `trusted` proxies.
    pub fn new(rest: R, grpc: Router, trusted: Arc<Vec<IpNet>>) -> Self {
        Self {
            rest,
            grpc,
            trusted,
        }
    }
}

impl<R> Service<Request> for OnePort<R>
where
    R: Service<Request, Response = Response, Error = Infallible>,
    R::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = OnePortFuture<R::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (`rest` by contract).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if !self.trusted.is_empty()
            && let Some(&ClientIp(peer)) = req.extensions().get::<ClientIp>()
        {
            let ip = client_ip(peer, req.headers(), &self.trusted);
            if ip != peer {
                req.extensions_mut().insert(ClientIp(ip));
            }
        }
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if is_grpc {
            OnePortFuture::Grpc(self.grpc.call(req))
        } else {
            OnePortFuture::Rest(self.rest.call(req))
        }
    }
}

/// The answer of a [`OnePort`].
// Boxing the router's future (as large as the others together) would cost each request an
// allocation; the future is held in place by its connection, never in a collection.
#[allow(clippy::large_enum_variant)]
pub enum OnePortFuture<F> {
    Rest(F),
    Grpc(RouteFuture<Infallible>),
}

impl<F> Future for OnePortFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            OnePortFuture::Rest(f) => Pin::new(f).poll(cx),
            OnePortFuture::Grpc(f) => Pin::new(f).poll(cx),
        }
    }
}

/// Sheds load instead of queueing it: beyond `max_in_flight` requests answer 503 with
/// `Retry-After` at once; a request that outlives the request timeout answers 408.
///
/// A tower service around the whole app (one wrap, where `Router::layer` would wrap each route),
/// with a named future (no allocation per request), and the timer is armed only for a request
/// that is not answered on its first poll: a verify answered from the cache never arms one.
#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    // `'static` (one small leak per server built) so that a request's slot copies a pointer:
    // an `Arc` clone and drop are two more writes to a count that every worker thread shares.
    in_flight: &'static InFlight,
    timeout: Duration,
}

/// Requests being answered and the most allowed. An atomic count rather than a semaphore: a
/// semaphore's release takes its waiters' lock, and nobody waits here.
struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One request's place in [`InFlight`], given back on drop.
struct Slot(&'static InFlight);

impl Slot {
    fn take(in_flight: &'static InFlight) -> Option<Slot> {
        if in_flight.count.fetch_add(1, Ordering::Acquire) >= in_flight.max {
            in_flight.count.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(Slot(in_flight))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Release);
    }
}

impl<S> Service<Request> for Bounded<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Unpin + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoundedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(slot) = Slot::take(self.in_flight) else {
            metrics::counter!("latchkey_overload_rejected_total").increment(1);
            let mut res = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is overloaded; retry shortly",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return BoundedFuture(Answer::Refused(Some(res)));
        };
        BoundedFuture(Answer::Running {
            answer: self.inner.call(req),
            _slot: slot,
            timeout: self.timeout,
            timer: None,
        })
    }
}

/// The answer of a [`Bounded`] service.
pub struct BoundedFuture<F>(Answer<F>);

enum Answer<F> {
    /// Over the in-flight bound: the 503, at once.
    Refused(Option<Response>),
    /// The inner service's answer, holding its place in the in-flight count; the timer exists
    /// once a poll has not answered.
    Running {
        answer: F,
        _slot: Slot,
        timeout: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Answered; the slot is given back.
    Done,
}

impl<F> Future for BoundedFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let res = match &mut this.0 {
            Answer::Refused(res) => match res.take() {
                Some(res) => res,
                None => return Poll::Pending,
            },
            Answer::Running {
                answer,
                timeout,
                timer,
                ..
            } => match Pin::new(answer).poll(cx) {
                Poll::Ready(Ok(res)) => res,
                Poll::Pending => {
                    // The request time counts from the first poll that did not answer, as
                    // `tokio::time::timeout` around the rest would.
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*timeout)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request took too long",
                    )
                }
            },
            Answer::Done => return Poll::Pending,
        };
        this.0 = Answer::Done;
        Poll::Ready(Ok(res))
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// Bounds on what clients can hold: slow clients are cut off, overload is refused early.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time a client may take to send a request's headers (default 10 s), counted from the
    /// connection's start or the end of the previous answer.
    pub header_timeout: Duration,
    /// Time from a request's headers to the end of its response (default 30 s).
    pub request_timeout: Duration,
    /// Most open connections (default 10,000).
    pub max_connections: usize,
    /// Most requests in flight; beyond it 503 with Retry-After (default 1024).
    pub max_in_flight: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_in_flight: 1024,
        }
    }
}

/// Adds the in-flight and request-time bounds to `app`.
pub fn bounded<S>(app: S, limits: &ServerLimits) -> Bounded<S> {
    Bounded {
        inner: app,
        in_flight: Box::leak(Box::new(InFlight {
            count: AtomicUsize::new(0),
            max: limits.max_in_flight,
        })),
        timeout: limits.request_timeout,
    }
}

/// Accepts connections until `shutdown` completes, then lets open connections finish their
/// requests (for at most `drain`). An HTTP/1 connection must send each request's headers within
/// the header timeout (from its start, or from the end of the previous answer), and one that has
/// not said which HTTP it speaks is held to the same ([`Watch`]); at most `max_connections` are
/// open at once (the rest wait in the listen backlog).
///
/// `app` must always be ready (`poll_ready` answers `Ready` at once, as for [`Bounded`] and
/// axum's `Router`): each connection calls its copy without asking.
///
/// # Errors
/// Only if accepting fails for a reason other than a transient one.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Unpin + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is each connection's `Watch`, not hyper's `header_read_timeout`, which
    // allocates, registers and drops a timer for every request head (about 1,700 instructions
    // of a warm REST verify under callgrind).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let svc = PerConnection {
            app: RefCell::new(app.clone()),
            // The socket peer is the client until the client-IP rule says otherwise (`OnePort`).
            peer: ClientIp(peer.ip()),
            watch: watch.clone(),
        };
        let io = TokioIo::new(Watched {
            io: stream,
            watch: watch.clone(),
            preface_seen: 0,
        });
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        let conn = graceful.watch(conn);
        let watchdog = Watchdog::new(watch, limits.header_timeout);
        tokio::spawn(async move {
            // Past the header timeout the connection is dropped, which closes it without an
            // answer (as hyper's own header timeout does).
            tokio::select! {
                biased;
                _ = conn => {}
                () = watchdog => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}

/// What the watch of one connection knows: how many requests are being answered, since when the
/// server has been waiting for the next request head, whether a write is stuck, and whether the
/// connection opened with the HTTP/2 preface.
///
/// The rule is hyper's `header_read_timeout` for HTTP/1: a request head must arrive within the
/// header timeout of the server starting to wait for it (the connection's start, or the end of
/// the previous answer; not while a request is answered or the client is not reading an answer).
/// It is kept by one timer per connection ([`Watchdog`]) that moves only when it fires, where
/// hyper arms and drops one for every request. It also holds while the server waits for the
/// bytes that tell HTTP/1 from HTTP/2, where hyper's held no timer: a client that connects and
/// sends nothing, or a part of the HTTP/2 preface, is cut off too. HTTP/2 connections are not
/// watched, as with hyper (their clients keep idle connections open on purpose).
///
/// Everything here is touched from the connection's own task only; the atomics make it `Sync`.
struct Watch {
    start: Instant,
    /// Requests whose head has arrived and whose answer is not complete.
    answering: AtomicU32,
    /// When the server started waiting for a head, in nanoseconds since `start`.
    waiting_since: AtomicU64,
    /// A write returned `Pending` and none has completed since: the client is not reading.
    write_stuck: AtomicBool,
    /// The connection opened with the HTTP/2 preface.
    http2: AtomicBool,
}

impl Watch {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            answering: AtomicU32::new(0),
            waiting_since: AtomicU64::new(0),
            write_stuck: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    /// The server waits for a head from now on.
    fn waiting(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waiting_since.store(since, Ordering::Relaxed);
    }
}

/// The hyper service of one connection: gives every request its [`ClientIp`] (the socket peer)
/// and counts it in the connection's [`Watch`] until its answer is complete.
///
/// The connection keeps its own copy of the app and calls it in place: the app is always ready
/// (see [`serve`]), and cloning it for each request (as `oneshot` needs) would write to its
/// reference counts, which every worker thread shares, twice per request.
struct PerConnection<S> {
    app: RefCell<S>,
    peer: ClientIp,
    watch: Arc<Watch>,
}

impl<S> hyper::service::Service<Request<hyper::body::Incoming>> for PerConnection<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answering<S>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        self.watch.answering.fetch_add(1, Ordering::Relaxed);
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(self.peer);
        // Held only for this call (hyper never calls it from inside another), so it cannot be
        // borrowed twice.
        let answer = self.app.borrow_mut().call(req);
        Answering {
            answer,
            watch: Some(self.watch.clone()),
        }
    }
}

/// One request's answer; once it is complete (or dropped), the connection waits for a head.
struct Answering<S: Service<Request>> {
    answer: S::Future,
    watch: Option<Arc<Watch>>,
}

impl<S: Service<Request>> Answering<S> {
    fn done(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.waiting();
            watch.answering.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S> Future for Answering<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        self.done();
        Poll::Ready(res)
    }
}

impl<S: Service<Request>> Drop for Answering<S> {
    fn drop(&mut self) {
        self.done();
    }
}

/// A connection's socket, telling its [`Watch`] whether the connection opened with the HTTP/2
/// preface and whether a write is stuck.
struct Watched {
    io: tokio::net::TcpStream,
    watch: Arc<Watch>,
    /// Bytes of the HTTP/2 preface matched so far; `usize::MAX` once decided either way.
    preface_seen: usize,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Watched {
    fn wrote<T>(&self, res: Poll<T>) -> Poll<T> {
        let stuck = res.is_pending();
        if self.watch.write_stuck.load(Ordering::Relaxed) != stuck {
            self.watch.write_stuck.store(stuck, Ordering::Relaxed);
            if !stuck && self.watch.answering.load(Ordering::Relaxed) == 0 {
                // The last answer is out only now: the wait for the next head starts here.
                self.watch.waiting();
            }
        }
        res
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.preface_seen != usize::MAX && res.is_ready() {
            let seen = self.preface_seen;
            let new = &buf.filled()[before..];
            let n = new.len().min(H2_PREFACE.len() - seen);
            self.preface_seen = if new[..n] != H2_PREFACE[seen..seen + n] {
                usize::MAX
            } else if seen + n == H2_PREFACE.len() {
                self.watch.http2.store(true, Ordering::Relaxed);
                usize::MAX
            } else {
                seen + n
            };
        }
        res
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Completes when the connection has kept the server waiting for a request head longer than
/// `limit`; never for an HTTP/2 connection. Its one timer is set for the earliest moment that
/// can be true and moved when it fires early.
struct Watchdog {
    watch: Arc<Watch>,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watchdog {
    fn new(watch: Arc<Watch>, limit: Duration) -> Self {
        let first = tokio::time::Instant::from_std(watch.start) + limit;
        Self {
            watch,
            limit,
            timer: Some(Box::pin(tokio::time::sleep_until(first))),
        }
    }
}

impl Future for Watchdog {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let Some(timer) = this.timer.as_mut() else {
                return Poll::Pending;
            };
            std::task::ready!(timer.as_mut().poll(cx));
            let w = &this.watch;
            if w.http2.load(Ordering::Relaxed) {
                // Not watched: the timer goes.
                this.timer = None;
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            let next = if w.answering.load(Ordering::Relaxed) > 0
                || w.write_stuck.load(Ordering::Relaxed)
            {
                // Not waiting for a head: look again later.
                now + this.limit
            } else {
                let since = Duration::from_nanos(w.waiting_since.load(Ordering::Relaxed));
                let deadline = tokio::time::Instant::from_std(w.start) + since + this.limit;
                if deadline <= now {
                    return Poll::Ready(());
                }
                deadline
            };
            timer.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The header timeout as the connections' watch keeps it, against real sockets.

    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const LIMIT: Duration = Duration::from_millis(500);

    async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(LIMIT * 3).await;
                    "ok"
                }),
            )
            .route("/big", get(|| async { vec![b'x'; 16 << 20] }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let limits = ServerLimits {
            header_timeout: LIMIT,
            ..ServerLimits::default()
        };
        let stop = async move {
            let _ = rx.await;
        };
        tokio::spawn(serve(listener, app, limits, stop, Duration::from_secs(1)));
        (addr, tx)
    }

    /// How long until the server closes `conn` (what it sends is read and dropped), or `None`
    /// when it is still open after `wait`.
    async fn closed_within(conn: &mut TcpStream, wait: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(wait, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return start.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    /// Sends one GET and reads its answer (the whole of it: `Content-Length` bytes of body).
    async fn get_on(conn: &mut TcpStream, path: &str) -> (String, usize) {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                return (head, len);
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_part_of_a_head_is_cut_off() {
        let (addr, _stop) = start().await;
        for sent in [
            &b""[..],
            b"P",
            b"PRI * HTTP/2",
            b"G",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(sent).await.unwrap();
            let took = closed_within(&mut conn, LIMIT * 6).await;
            let took = took.unwrap_or_else(|| panic!("still open after sending {sent:?}"));
            assert!(
                took >= LIMIT * 9 / 10,
                "closed too early ({took:?}) after {sent:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_keep_alive_connection_has_the_header_timeout_after_each_answer() {
        let (addr, _stop) = start().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        // Requests well within the limit of each other keep it open for many limits.
        for _ in 0..12 {
            let (head, _) = get_on(&mut conn, "/").await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            tokio::time::sleep(LIMIT / 5).await;
        }
        // A request that takes longer than the limit is answered: the wait had not begun.
        let (head, _) = get_on(&mut conn, "/slow").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        // Then idle: cut off one limit after the answer.
        let took = closed_within(&mut conn, LIMIT * 6)
            .await
            .expect("still open");
        assert!(took >= LIMIT * 9 / 10, "closed too early ({took:?})");
    }

    #[tokio::test]
    async fn a_client_slow_to_read_an_answer_is_not_cut_off_meanwhile() {
        let (addr, _stop) = start().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // 16 MiB do not fit in the socket buffers: the server's write is stuck while the client
        // reads nothing, which is not waiting for a head.
        tokio::time::sleep(LIMIT * 3).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while got < 16 << 20 {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "cut off after {got} bytes");
            got += n;
        }
        // And the next request is in time.
        let (head, _) = get_on(&mut conn, "/").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }

    #[tokio::test]
    async fn an_http2_connection_is_not_watched() {
        let (addr, _stop) = start().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame, then nothing: HTTP/2 keeps idle connections.
        conn.write_all(H2_PREFACE).await.unwrap();
        conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        assert_eq!(closed_within(&mut conn, LIMIT * 4).await, None);
    }
}

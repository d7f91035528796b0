//! Serving: one listener for REST and gRPC, the client-IP rule, and the bounds on what clients
//! can hold (header and request timeouts, open connections, requests in flight).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::edge::{ClientIp, ErrorBody, ErrorDetail, client_ip};

/// REST and gRPC on one listener: requests with an `application/grpc` content type go to tonic,
/// everything else to the REST router. Every request gets its [`ClientIp`]: the accept loop
/// ([`serve`]) sets the socket peer, and behind a trusted proxy this replaces it with the client
/// the proxies name ([`client_ip`]).
///
/// A `Router` around [`OnePort`], for callers that keep a `Router`; serving [`OnePort`] itself
/// spares every request the outer router (a route match, a URL-parameter extension, a boxed
/// future and a layer of response mapping: about 2,000 instructions of a warm REST verify's
/// 32,000 under callgrind).
pub fn one_port(rest: Router, grpc: Router, trusted: Arc<Vec<IpNet>>) -> Router {
    Router::new().fallback_service(OnePort::new(rest, grpc, trusted))
}

/// The REST/gRPC dispatch of [`one_port`] as a plain tower service: the request goes straight to
/// the router it is for, whose future is the answer (nothing boxed, nothing cloned).
#[derive(Clone)]
pub struct OnePort {
    rest: Router,
    grpc: Router,
    trusted: Arc<Vec<IpNet>>,
}

impl OnePort {
    /// REST and gRPC on one listener, the client-IP rule with the `trusted` proxies.
    pub fn new(rest: Router, grpc: Router, trusted: Arc<Vec<IpNet>>) -> Self {
        Self {
            rest,
            grpc,
            trusted,
        }
    }
}

impl Service<Request> for OnePort {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are `Router`s, which are always ready.
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
            self.grpc.call(req)
        } else {
            self.rest.call(req)
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
    in_flight: Arc<InFlight>,
    timeout: Duration,
}

/// Requests being answered and the most allowed. An atomic count rather than a semaphore: a
/// semaphore's release takes its waiters' lock, and nobody waits here.
struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One request's place in [`InFlight`], given back on drop.
struct Slot(Arc<InFlight>);

impl Slot {
    fn take(in_flight: &Arc<InFlight>) -> Option<Slot> {
        if in_flight.count.fetch_add(1, Ordering::Acquire) >= in_flight.max {
            in_flight.count.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(Slot(in_flight.clone()))
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
        let Some(slot) = Slot::take(&self.in_flight) else {
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
    /// Time a client may take to send a request's headers (default 10 s).
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
        in_flight: Arc::new(InFlight {
            count: AtomicUsize::new(0),
            max: limits.max_in_flight,
        }),
        timeout: limits.request_timeout,
    }
}

/// Accepts connections until `shutdown` completes, then lets open connections finish their
/// requests (for at most `drain`). Each connection must send its headers within the header
/// timeout; at most `max_connections` are open at once (the rest wait in the listen backlog).
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
    S::Future: Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
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
        // The socket peer is the client until the client-IP rule says otherwise (`OnePort`).
        let peer = ClientIp(peer.ip());
        let svc = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer);
                req.map(axum::body::Body::new)
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
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

//! Serving: one listener for REST and gRPC, the client-IP rule, and the bounds on what clients
//! can hold (header and request timeouts, open connections, requests in flight).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::edge::{ClientIp, ErrorBody, ErrorDetail, client_ip};

/// REST and gRPC on one listener: requests with an `application/grpc` content type go to tonic,
/// everything else to the REST router. Every request first gets its [`ClientIp`].
pub fn one_port(rest: Router, grpc: Router, trusted: Arc<Vec<IpNet>>) -> Router {
    let svc = tower::service_fn(move |mut req: Request| {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
            let ip = client_ip(peer.ip(), req.headers(), &trusted);
            req.extensions_mut().insert(ClientIp(ip));
        }
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let target = if is_grpc { grpc.clone() } else { rest.clone() };
        async move { target.oneshot(req).await }
    });
    Router::new().fallback_service(svc)
}

/// Sheds load instead of queueing it: beyond `max_in_flight` requests answer 503 with
/// `Retry-After` at once; a request that outlives the request timeout answers 408.
///
/// A tower service around the whole app (one wrap, where `Router::layer` would wrap each route),
/// and the timer is armed only for a request that is not answered on its first poll: a verify
/// answered from the cache never arms one.
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
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

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
            return Box::pin(std::future::ready(Ok(res)));
        };
        let answer = self.inner.call(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let _slot = slot;
            let mut answer = std::pin::pin!(answer);
            let first = std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await;
            if let Poll::Ready(res) = first {
                return res;
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(res) => res,
                Err(_) => Ok(error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request took too long",
                )),
            }
        })
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
        let svc = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
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

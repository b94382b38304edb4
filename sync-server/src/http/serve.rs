//! The dashboard's connection loop: hyper's HTTP/1 server per connection, with a deadline on
//! every request's head and body.
//!
//! Why not `axum::serve`: it gives hyper no timer, so hyper's `header_read_timeout` never
//! fires, and a byte-level idle deadline (any byte pushes it back) cannot tell a trickling
//! request from a live one. Here each connection is served by `hyper::server::conn::http1`
//! with tokio's timer, so:
//!
//! - a request's head must arrive whole within [`HttpLimits::header_timeout`] of the
//!   connection opening, or of the previous response on it (hyper starts that clock as soon as
//!   the connection waits for a head), so a keep-alive connection idles no longer than that;
//! - its body (at most [`MAX_BODY_BYTES`]) must then arrive whole within
//!   [`HttpLimits::body_timeout`], or the answer is 408 and the connection closes;
//! - a response being written is no request: a long export keeps its connection for as long
//!   as the client reads it ([`HttpLimits::idle_timeout`] ends one that stops reading).
//!
//! So however a client trickles, it holds a slot for at most the header and body deadlines.
//! The body is read here, before routing, because every dashboard and API body is small; the
//! handlers then see it whole. The peer's address goes into the request as
//! [`ConnectInfo`], for the login limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::conn::{CappedListener, HttpLimits};
use super::{ApiError, MAX_BODY_BYTES};

/// How long a stopping server lets requests in flight finish before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` turns true (or its sender is dropped).
pub(super) async fn serve(
    mut listener: CappedListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let app = app.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(dispatch(app, peer, body_timeout, request).await) }
        });
        let connection = http.serve_connection(TokioIo::new(io), service);
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                served = connection.as_mut() => Some(served),
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let served = match ended {
                Some(served) => served,
                // Finishes the request in flight, if any, then closes.
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still open at shutdown were dropped"
        );
        connections.abort_all();
    }
}

/// Reads the body of `request` within the body deadline, then hands it to the router.
async fn dispatch(
    app: Router,
    peer: SocketAddr,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let read = tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY_BYTES).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body is at most {} KiB", MAX_BODY_BYTES / 1024),
            ));
        }
        Ok(Err(e)) => {
            return closing(ApiError::bad_request(format!(
                "the request body could not be read: {e}"
            )));
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "request body not whole within its deadline");
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request did not arrive whole within {} s",
                    body_timeout.as_secs_f64()
                ),
            ));
        }
    };
    parts.extensions.insert(ConnectInfo(peer));
    match app
        .oneshot(Request::from_parts(parts, Body::from(bytes)))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `error` as an answer after which the connection closes (the rest of its request is unread).
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

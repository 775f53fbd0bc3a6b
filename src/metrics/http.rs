//! A minimal HTTP/1.1 server (hyper) for the metrics endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::Context;
use crate::shutdown::Shutdown;

/// Longest time `/readyz` waits for one upstream.
const READY_CONNECT_LIMIT: Duration = Duration::from_secs(2);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, mut shutdown: Shutdown) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics endpoint listening");
    }
    loop {
        let tcp = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, ctx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    ctx: Arc<Context>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::render(&ctx),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => match super::ready(&ctx, READY_CONNECT_LIMIT).await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".into()),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {e}\n"),
            ),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

//! The agent's own `/metrics` endpoint, for applications that do not serve one: `GET /metrics`
//! answers with the Prometheus text exposition of a registry.

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use tokio::{net::TcpListener, sync::watch};

/// Serves `registry` on `listener` until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(%err, "sonde agent: metrics endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, registry.clone()));
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "sonde agent: metrics endpoint connection");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    registry: Registry,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &'static str, body: Vec<u8>| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        resp
    };
    if req.uri().path() != "/metrics" {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found: try /metrics\n".to_vec(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"GET /metrics\n".to_vec(),
        ));
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = crate::metrics::exposition::encode(&registry, accept);
    let mut resp = response(StatusCode::OK, content_type, body);
    resp.headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("accept"));
    Ok(resp)
}

/// Binds the endpoint's address (synchronously, so `start()` reports a taken port at once).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

//! `GET /metrics` for Prometheus: the process's default registry in the text format, which is
//! where the mesh's metrics (handshakes, denials by source, certificate expiry, open
//! connections) are registered. A separate listener from the mesh's, so scraping needs no
//! client certificate and works with or without mesh mode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::TextEncoder;
use tokio::net::TcpStream;

use crate::listener::{self, Server};
use crate::SidecarError;

/// A scraper that does not finish sending its request head in this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (`--metrics-listen`) and serves `/metrics` until the returned server is dropped.
pub(crate) async fn start(addr: SocketAddr) -> Result<Server, SidecarError> {
    let listener = listener::bind("metrics-listen", addr).await?;
    tracing::info!(url = format!("http://{addr}/metrics"), "serving metrics");
    Ok(Server::spawn(listener, "metrics", |tcp, _| serve(tcp)))
}

async fn serve(tcp: TcpStream) {
    let service = service_fn(|request| async move { Ok::<_, Infallible>(respond(&request)) });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%error, "metrics connection failed");
    }
}

/// The answer to one request: the metrics for `GET /metrics`, an error otherwise.
fn respond<B>(request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match TextEncoder::new().encode_to_string(&prometheus::gather()) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;

//! A connector that caps the number of open connections.
//!
//! hyper-util's pool opens a new connection for every request that finds no idle one, and
//! keeps connecting in the background even after an idle one came back. When the generator
//! falls behind for a moment, the burst of late arrivals opens hundreds of connections, whose
//! setup makes it fall further behind: without a cap, an open-loop run at a rate near the
//! limit spirals into thousands of sockets and "too many open files". With the cap, a run
//! never holds more sockets than its concurrency.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`HttpConnector`] with at most `max` connections open or being opened.
#[derive(Clone)]
pub(super) struct CappedConnector {
    inner: HttpConnector,
    slots: Arc<Semaphore>,
    /// How long a connection attempt waits for a free slot; a background attempt that nobody
    /// needs any more then ends instead of waiting forever.
    wait: Duration,
}

impl CappedConnector {
    pub(super) fn new(inner: HttpConnector, max: usize, wait: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
            wait,
        }
    }
}

impl tower_service::Service<http::Uri> for CappedConnector {
    type Response = CappedStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CappedStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let slots = self.slots.clone();
        let wait = self.wait;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let slot = tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .map_err(|_| format!("no free connection slot within {wait:?}"))?
                .map_err(|_| "connection slots closed")?;
            let stream = inner.call(uri).await?;
            Ok(CappedStream {
                stream,
                _slot: slot,
            })
        })
    }
}

/// A connection holding its slot until it is closed.
pub(super) struct CappedStream {
    stream: TokioIo<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connection for CappedStream {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl Read for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl Write for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
}

//! Connections to upstreams, counted: a connector that wraps every new TCP connection so that
//! the pool's use shows in metrics (`upstream_connections_opened_total`, and
//! `upstream_connections_open` until the pool closes it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// What the connector counts into.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub opened: Counter,
    pub open: Gauge,
}

/// `HttpConnector`, counting what it opens.
#[derive(Clone, Debug)]
pub(crate) struct CountingConnector {
    pub(crate) inner: HttpConnector,
    pub(crate) counts: Counts,
}

/// A connection that leaves the `open` count when dropped.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    io: T,
    open: Gauge,
}

impl<T> Counted<T> {
    /// A connection just opened: counted as opened and open.
    pub(crate) fn new(io: T, counts: &Counts) -> Self {
        counts.opened.inc();
        counts.open.inc();
        Self {
            io,
            open: counts.open.clone(),
        }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl tower::Service<Uri> for CountingConnector {
    type Response = Counted<<HttpConnector as tower::Service<Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let counts = self.counts.clone();
        Box::pin(async move { Ok(Counted::new(connecting.await?, &counts)) })
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

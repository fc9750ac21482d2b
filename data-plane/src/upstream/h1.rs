//! HTTP/1.1 to plain `http://` upstreams, each connection driven on the task of the request
//! that uses it.
//!
//! hyper-util's pooled client runs every connection on a task of its own: a request hands its
//! message to that task and waits to be woken with the response head, and then every chunk of
//! the body is one more hop between the two tasks (for a stream, a wake-up and a write to the
//! client per upstream event). Here the request's own future polls the connection (while it
//! waits for the head, and inside every poll of the body), so what the socket holds is read,
//! decoded and forwarded in one go. An idle connection is kept unpolled in the pool; one poll
//! without a waker when it is taken sees whether the server closed it meanwhile.
//!
//! TLS upstreams (where ALPN may pick HTTP/2) keep hyper-util's client.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant as StdInstant;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ClientSettings;
use super::counted::{Counted, Counts};
use crate::error::{ErrorKind, ProxyError};

type Io = Counted<TokioIo<TcpStream>>;

/// One connection: the handle requests are sent through, and the connection itself, which
/// only moves when its user polls it.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
    /// `None` once it ended: dropped at once, which hands a request it never took back to
    /// its sender.
    conn: Option<Connection<Io, Full<Bytes>>>,
}

impl Conn {
    /// Polls the connection; whether it has ended (closed by the server, or failed).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = &mut self.conn
            && Pin::new(c).poll(cx).is_ready()
        {
            self.conn = None;
        }
        self.conn.is_none()
    }

    /// Whether an idle connection can take another request: polled once without a waker, it
    /// has not ended (a server's close is seen then) and is ready.
    fn reusable(&mut self) -> bool {
        !self.poll_ended(&mut Context::from_waker(Waker::noop())) && self.tx.is_ready()
    }
}

struct Idle {
    conn: Box<Conn>,
    since: StdInstant,
}

type IdleMap = HashMap<Authority, VecDeque<Idle>, foldhash::fast::RandomState>;

struct Inner {
    settings: ClientSettings,
    counts: Counts,
    /// Idle connections by upstream authority (the config's endpoints: foldhash), the most
    /// recently used last.
    idle: Mutex<IdleMap>,
}

/// The idle HTTP/1.1 connections to plain-HTTP upstreams, by authority.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Pool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(settings: ClientSettings, counts: Counts) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                counts,
                idle: Mutex::default(),
            }),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept connection to `to` that is still open, the most recently used first.
    fn take(&self, to: &Authority) -> Option<Box<Conn>> {
        let timeout = self.inner.settings.idle_timeout;
        let mut idle = self.idle();
        let list = idle.get_mut(to)?;
        while let Some(mut i) = list.pop_back() {
            if i.since.elapsed() < timeout && i.conn.reusable() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Keeps a connection whose response was read to the end, if it can take another request
    /// and there is room; the ones idle too long go.
    fn put(&self, to: Authority, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        let (max, timeout) = (
            self.inner.settings.max_idle_per_host,
            self.inner.settings.idle_timeout,
        );
        let mut idle = self.idle();
        let list = idle.entry(to).or_default();
        while list.front().is_some_and(|i| i.since.elapsed() >= timeout) {
            list.pop_front();
        }
        if list.len() < max {
            list.push_back(Idle {
                conn,
                since: StdInstant::now(),
            });
        }
    }

    /// A new connection (boxed: it is large, and moves between the pool and the bodies that
    /// use it).
    async fn connect(&self, to: &Authority) -> Result<Box<Conn>, ProxyError> {
        let failed = |e: std::io::Error| {
            ProxyError::new(ErrorKind::UpstreamConnect, "upstream connection failed").with_source(e)
        };
        let host = to.host().trim_start_matches('[').trim_end_matches(']');
        let port = to.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(
            self.inner.settings.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
        .map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&keepalive)
            .map_err(failed)?;
        let io = Counted::new(TokioIo::new(tcp), &self.inner.counts);
        let (tx, conn) = http1::handshake(io).await.map_err(|e| {
            ProxyError::new(ErrorKind::UpstreamConnect, "upstream connection failed").with_source(e)
        })?;
        Ok(Box::new(Conn {
            tx,
            conn: Some(conn),
        }))
    }

    /// Sends a request (an absolute `http://` URI) on a kept connection, or a new one, and
    /// waits for the response head until `first_byte`. A kept connection that turns out to be
    /// closed before the request went out is replaced by a new one, once.
    pub(crate) async fn send(
        &self,
        mut req: http::Request<Full<Bytes>>,
        first_byte: Instant,
    ) -> Result<http::Response<Body>, ProxyError> {
        let Some(to) = req.uri().authority().cloned() else {
            return Err(ProxyError::new(
                ErrorKind::Internal,
                "upstream URL has no host",
            ));
        };
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(v) = host_header(&to)
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(origin);
        let sent = tokio::time::timeout_at(first_byte, async {
            let (mut conn, mut fresh) = match self.take(&to) {
                Some(c) => (c, false),
                None => (self.connect(&to).await?, true),
            };
            loop {
                let sending = conn.tx.try_send_request(req);
                match (Drive {
                    conn: &mut conn,
                    sending: std::pin::pin!(sending),
                })
                .await
                {
                    Ok(resp) => return Ok((resp, conn)),
                    Err(mut e) => match e.take_message() {
                        // The kept connection was closed before the request went out.
                        Some(back) if !fresh => {
                            req = back;
                            conn = self.connect(&to).await?;
                            fresh = true;
                        }
                        _ => {
                            return Err(ProxyError::new(
                                ErrorKind::UpstreamProtocol,
                                "upstream request failed",
                            )
                            .with_source(e.into_error()));
                        }
                    },
                }
            }
        })
        .await;
        let (resp, conn) = match sent {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    "upstream did not answer in time",
                ));
            }
            Ok(r) => r?,
        };
        let (parts, body) = resp.into_parts();
        let ended = hyper::body::Body::is_end_stream(&body);
        Ok(http::Response::from_parts(
            parts,
            Body::OnTask(OnTask {
                body,
                conn: Some(conn),
                ended,
                pool: self.clone(),
                to,
            }),
        ))
    }
}

/// `Host` as hyper-util's client sends it: the host, with the port only when it is not 80,
/// and never the URL's user information.
fn host_header(to: &Authority) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    match to.port_u16() {
        None | Some(80) => http::HeaderValue::from_str(to.host()),
        // `host:port` as written.
        Some(_) if !to.as_str().contains('@') => http::HeaderValue::from_str(to.as_str()),
        Some(p) => http::HeaderValue::from_str(&format!("{}:{p}", to.host())),
    }
}

/// Waits for a response head while polling the connection it was sent on. A connection that
/// ends is dropped at once: the request's future then says why (with the request back, when
/// it never went out).
struct Drive<'a, 'b, F> {
    conn: &'a mut Conn,
    sending: Pin<&'b mut F>,
}

impl<F: Future> Future for Drive<'_, '_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.conn.poll_ended(cx);
        this.sending.as_mut().poll(cx)
    }
}

/// A response body whose connection is driven by whoever reads it; read to the end, it goes
/// back to the pool when dropped.
pub struct OnTask {
    body: Incoming,
    /// `None` once it ended.
    conn: Option<Box<Conn>>,
    /// The body was read to its end.
    ended: bool,
    pool: Pool,
    to: Authority,
}

impl std::fmt::Debug for OnTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnTask")
            .field("to", &self.to)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl OnTask {
    /// A reader that stops at its protocol's last event (`[DONE]`, `message_stop`) leaves the
    /// end of the body unread, though it has usually arrived with that event (a chunked
    /// body's last chunk): read what is already here, a few frames at most, without waiting.
    fn read_to_end_if_here(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..8 {
            if self.conn.as_mut().is_none_or(|c| c.poll_ended(&mut cx)) {
                return;
            }
            match hyper::body::Body::poll_frame(Pin::new(&mut self.body), &mut cx) {
                Poll::Ready(None) => {
                    self.ended = true;
                    return;
                }
                Poll::Ready(Some(Err(_))) => return,
                Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
            }
        }
    }
}

impl Drop for OnTask {
    fn drop(&mut self) {
        if !self.ended {
            self.read_to_end_if_here();
        }
        if self.ended
            && let Some(c) = self.conn.take()
        {
            self.pool.put(self.to.clone(), c);
        }
    }
}

impl hyper::body::Body for OnTask {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.conn.as_mut().is_some_and(|c| c.poll_ended(cx)) {
            // Closed or failed: the body reports how, and the connection is not kept.
            this.conn = None;
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An upstream response body: from hyper-util's pooled client, or driven on the reader's
/// task.
#[derive(Debug)]
pub enum Body {
    Pooled(Incoming),
    OnTask(OnTask),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Pooled(b) => Pin::new(b).poll_frame(cx),
            Self::OnTask(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pooled(b) => b.is_end_stream(),
            Self::OnTask(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Pooled(b) => b.size_hint(),
            Self::OnTask(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn pool() -> (Pool, Counts) {
        let counts = Counts::default();
        (Pool::new(ClientSettings::default(), counts.clone()), counts)
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn post(addr: std::net::SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
        http::Request::post(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    }

    /// A keep-alive HTTP/1.1 server on loopback: `/stream` answers with three chunks, each
    /// its own frame; anything else with a whole body naming the path and the Host it got.
    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                            let frames = ["one ", "two ", "three"]
                                .map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s))));
                            let body = if req.uri().path() == "/stream" {
                                StreamBody::new(futures_util::stream::iter(frames)).boxed()
                            } else if req.uri().path() == "/hang" {
                                // One chunk, then nothing, never ending.
                                let first = futures_util::StreamExt::take(
                                    futures_util::stream::iter(frames),
                                    1,
                                );
                                let never_ends = futures_util::StreamExt::chain(
                                    first,
                                    futures_util::stream::pending(),
                                );
                                StreamBody::new(never_ends).boxed()
                            } else {
                                let host = req
                                    .headers()
                                    .get("host")
                                    .map(|v| v.to_str().unwrap_or(""))
                                    .unwrap_or("");
                                Full::new(Bytes::from(format!("{} {host}", req.uri())))
                                    .map_err(|e: Infallible| match e {})
                                    .boxed()
                            };
                            Ok::<_, Infallible>(http::Response::new(body))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn text(resp: http::Response<Body>) -> String {
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_and_send_origin_form_with_host() {
        let addr = server().await;
        let (pool, counts) = pool();
        for path in ["/v1/a?x=1", "/stream", "/v1/b", "/stream"] {
            let resp = pool.send(post(addr, path), deadline()).await.expect("send");
            assert_eq!(resp.status(), 200);
            let got = text(resp).await;
            if path == "/stream" {
                assert_eq!(got, "one two three");
            } else {
                assert_eq!(got, format!("{path} {addr}"));
            }
        }
        assert_eq!(counts.opened.get(), 1, "one connection for four requests");
        assert_eq!(counts.open.get(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_after_its_last_data_still_returns_its_connection() {
        // A stream reader stops at its protocol's last event, before the body's end.
        let addr = server().await;
        let (pool, counts) = pool();
        for _ in 0..3 {
            let resp = pool
                .send(post(addr, "/stream"), deadline())
                .await
                .expect("send");
            let mut body = resp.into_body();
            let mut got = String::new();
            while !got.ends_with("three") {
                let f = body.frame().await.expect("a frame").expect("data");
                got.push_str(std::str::from_utf8(&f.into_data().expect("data")).expect("utf-8"));
            }
            drop(body);
        }
        assert_eq!(
            counts.opened.get(),
            1,
            "the connection was kept after each stream"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let addr = server().await;
        let (pool, counts) = pool();
        let resp = pool
            .send(post(addr, "/hang"), deadline())
            .await
            .expect("send");
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "one ");
        drop(body);
        assert_eq!(counts.open.get(), 0, "a half-read connection is not kept");
        let resp = pool
            .send(post(addr, "/v1/c"), deadline())
            .await
            .expect("send");
        assert_eq!(text(resp).await, format!("/v1/c {addr}"));
        assert_eq!(counts.opened.get(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        // Answers one request per connection with keep-alive, then closes it soon after.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tcp.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let (pool, counts) = pool();
        for _ in 0..3 {
            let resp = pool.send(post(addr, "/"), deadline()).await.expect("send");
            assert_eq!(text(resp).await, "ok");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(
            counts.opened.get(),
            3,
            "each closed connection was replaced"
        );
        drop(pool);
        assert_eq!(
            counts.open.get(),
            0,
            "every connection is closed with the pool"
        );
    }

    #[test]
    fn host_is_the_host_and_a_port_other_than_80_never_user_information() {
        let host = |a: &str| host_header(&a.parse().expect("authority")).expect("value");
        assert_eq!(host("model.svc:8000"), "model.svc:8000");
        assert_eq!(host("model.svc:80"), "model.svc");
        assert_eq!(host("model.svc"), "model.svc");
        assert_eq!(host("user:secret@model.svc:8000"), "model.svc:8000");
        assert_eq!(host("user:secret@model.svc"), "model.svc");
        assert_eq!(host("[::1]:8000"), "[::1]:8000");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_upstream_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let (pool, _) = pool();
        let e = pool
            .send(post(addr, "/"), deadline())
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::UpstreamConnect);
    }

    #[tokio::test]
    async fn no_answer_before_the_first_byte_deadline_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and never answers.
        let held = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(tcp);
        });
        let (pool, _) = pool();
        let soon = Instant::now() + Duration::from_millis(200);
        let e = pool
            .send(post(addr, "/"), soon)
            .await
            .expect_err("timed out");
        assert_eq!(e.kind, ErrorKind::UpstreamTimeout);
        held.abort();
    }
}

//! The accept loop both listeners run, on hyper's server builder (HTTP/1.1 and HTTP/2), so
//! that no client can hold a connection, a buffer or a slot longer than its limits:
//!
//! - **connections**: at most `max_connections` open; one beyond is closed at once;
//! - **request heads**: at most `max_header_bytes` (HTTP/1 read buffer, HTTP/2 header list),
//!   and complete within `header_read_timeout` of the connection opening or of the first
//!   byte of the next request;
//! - **idle connections**: closed after `idle_timeout` without a request in flight;
//! - **stalled writes**: a connection whose client stopped reading (a write to it waiting
//!   for room) is closed after `write_timeout`, so a response — a stream above all — cannot
//!   hold its request's slots for ever;
//! - **connections per client address**: at most `max_connections_per_peer` (off by
//!   default: behind a load balancer every client shares its address);
//! - **HTTP/2**: at most `max_streams` requests at once per connection, and a keep-alive ping
//!   that closes a connection whose peer stopped answering.
//!
//! A request body's deadline and least rate are the request path's (`frontdoor::read_body`):
//! a body is read after its key is known, under that key's share of the concurrency.
//!
//! Each connection's state — requests in flight, and since when it has been waiting for what —
//! is a few atomics written by its I/O and its service, and read by its own timer, re-armed
//! for the next deadline only (no periodic tick).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::telemetry::metrics::{ListenerLabels, ListenerReasonLabels, Metrics};

/// The limits of a listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerOptions {
    /// Longest a request head may take: from the connection opening, or from the first byte
    /// of a request on a kept-alive one.
    pub header_read_timeout: Duration,
    /// Longest a connection stays open with no request in flight.
    pub idle_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// HTTP/2: most requests in flight on one connection.
    pub max_streams: u32,
    /// Longest a write to the client may wait for room (its reader stopped); zero: no limit.
    pub write_timeout: Duration,
    /// Most connections open at once from one client address; 0: no limit.
    pub max_connections_per_peer: usize,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            max_streams: 128,
            write_timeout: Duration::from_secs(60),
            max_connections_per_peer: 0,
        }
    }
}

/// Milliseconds on the runtime's clock since the listener started.
fn now_ms(epoch: tokio::time::Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// What one connection is doing, for its timer.
#[derive(Debug)]
struct ConnState {
    epoch: tokio::time::Instant,
    in_flight: AtomicU32,
    /// When the current wait began (a request head, or idleness).
    since_ms: AtomicU64,
    /// Bytes of a request arrived while nothing was in flight: waiting for a head.
    reading_head: AtomicBool,
    /// When a write to the client began to wait for room, plus one (0: none waits).
    write_waiting: AtomicU64,
}

impl ConnState {
    fn new(epoch: tokio::time::Instant) -> Self {
        Self {
            epoch,
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(now_ms(epoch)),
            // A new connection must send its first request within the head timeout.
            reading_head: AtomicBool::new(true),
            write_waiting: AtomicU64::new(0),
        }
    }

    /// A write to the client returned: waiting (`Pending`) or not.
    fn wrote<T>(&self, r: &Poll<T>) {
        let waiting = self.write_waiting.load(Ordering::Relaxed);
        match (r.is_pending(), waiting) {
            (true, 0) => self
                .write_waiting
                .store(now_ms(self.epoch) + 1, Ordering::Relaxed),
            (false, w) if w != 0 => self.write_waiting.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Bytes arrived.
    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.reading_head.load(Ordering::Relaxed)
        {
            self.since_ms.store(now_ms(self.epoch), Ordering::Relaxed);
            self.reading_head.store(true, Ordering::Relaxed);
        }
    }

    /// A request head is complete: the request is in flight until its response ends.
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.reading_head.store(false, Ordering::Relaxed);
    }

    /// A response ended (or its client went away).
    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since_ms.store(now_ms(self.epoch), Ordering::Relaxed);
            self.reading_head.store(false, Ordering::Relaxed);
        }
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// request is in flight and its writes go out.
    fn deadline(&self, opts: &ListenerOptions) -> Option<(u64, &'static str)> {
        let waiting = self.write_waiting.load(Ordering::Relaxed);
        if waiting != 0 && !opts.write_timeout.is_zero() {
            return Some((
                waiting - 1 + opts.write_timeout.as_millis() as u64,
                "write_timeout",
            ));
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.since_ms.load(Ordering::Relaxed);
        Some(if self.reading_head.load(Ordering::Relaxed) {
            (
                since + opts.header_read_timeout.as_millis() as u64,
                "header_timeout",
            )
        } else {
            (since + opts.idle_timeout.as_millis() as u64, "idle_timeout")
        })
    }
}

/// A TCP stream that tells its connection's state when bytes arrive.
struct Tracked {
    tcp: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.state.wrote(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.state.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// A request in flight on its connection, until dropped: with its response body when the
/// response went out, or with the request's future when the client went away first.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.begin();
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Connections open by client address, when they are limited.
#[derive(Clone)]
struct Peers {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One of a client address's open connections (given back when dropped).
struct PeerSlot {
    peers: Peers,
    ip: std::net::IpAddr,
}

impl Peers {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A connection from `ip`: `None` when the address has its most open already; a slot
    /// that counts nothing when there is no limit. IPv6 addresses count by /64, the block
    /// one host is given.
    fn open(&self, ip: std::net::IpAddr) -> Option<Option<PeerSlot>> {
        if self.max == 0 {
            return Some(None);
        }
        let ip = match ip {
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
            v4 => v4,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(PeerSlot {
            peers: self.clone(),
            ip,
        }))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = open.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// The HTTP/1.1 + HTTP/2 server builder with the limits.
fn builder(opts: &ListenerOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The connection's own timer bounds heads and idleness (hyper's would tie the two).
        .header_read_timeout(None)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .max_headers(128);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes as u32)
        .max_concurrent_streams(opts.max_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to finish (HTTP/1: after its request in flight; HTTP/2: GOAWAY) and returns
/// when all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ListenerOptions,
    name: &'static str,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let builder = Arc::new(builder(&opts));
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let peers = Peers::new(opts.max_connections_per_peer);
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = tokio::time::Instant::now();
    let open = metrics
        .connections_open
        .get_or_create(&ListenerLabels { listener: name })
        .clone();
    let accepted = metrics
        .connections_accepted
        .get_or_create(&ListenerLabels { listener: name })
        .clone();
    let closed = |reason: &'static str| {
        metrics
            .connections_closed
            .get_or_create(&ListenerReasonLabels {
                listener: name,
                reason,
            })
            .inc();
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        accepted.inc();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            closed("refused");
            drop(tcp);
            continue;
        };
        let Some(from_peer) = peers.open(peer.ip()) else {
            closed("peer_limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::new(ConnState::new(epoch));
        let io = TokioIo::new(Tracked {
            tcp,
            state: state.clone(),
        });
        let service = {
            let state = state.clone();
            let router = router.clone();
            hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let in_flight = InFlight::begin(&state);
                let call = router.clone().oneshot(req);
                async move {
                    let resp = match call.await {
                        Ok(r) => r,
                        Err(e) => match e {},
                    };
                    // The request stays in flight until its response body ends.
                    Ok::<_, Infallible>(
                        resp.map(|body| crate::admission::Holding::body(body, in_flight)),
                    )
                }
            })
        };
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let open = open.clone();
        let timeouts = {
            let metrics = metrics.clone();
            move |reason: &'static str| {
                metrics
                    .connections_closed
                    .get_or_create(&ListenerReasonLabels {
                        listener: name,
                        reason,
                    })
                    .inc();
            }
        };
        open.inc();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                let deadline = state.deadline(&opts);
                let wake = match deadline {
                    Some((at, _)) => epoch + Duration::from_millis(at),
                    // A request in flight: look again after the shortest timeout.
                    None => {
                        let write = Some(opts.write_timeout).filter(|t| !t.is_zero());
                        tokio::time::Instant::now()
                            + opts
                                .header_read_timeout
                                .min(opts.idle_timeout)
                                .min(write.unwrap_or(Duration::MAX))
                                .max(Duration::from_millis(100))
                    }
                };
                tokio::select! {
                    _ = conn.as_mut() => break,
                    changed = stop.changed(), if !stopping => {
                        if changed.is_err() || *stop.borrow() {
                            stopping = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    () = tokio::time::sleep_until(wake) => {
                        if let Some((at, why)) = state.deadline(&opts)
                            && now_ms(epoch) >= at
                        {
                            timeouts(why);
                            break;
                        }
                    }
                }
            }
            open.dec();
            drop(from_peer);
            drop(slot);
        });
    }
    // Stop accepting; let every connection finish, then return.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = slots.acquire_many(opts.max_connections as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_address_holds_at_most_its_connections() {
        let peers = Peers::new(2);
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let one = peers.open(a).expect("first");
        let _two = peers.open(a).expect("second");
        assert!(peers.open(a).is_none(), "a third from the same address");
        let _other = peers.open(b).expect("another address is not affected");
        drop(one);
        let _again = peers
            .open(a)
            .expect("a connection closed gives its place back");
        let (h1, h2): (std::net::IpAddr, std::net::IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2:ffff::9".parse().unwrap(),
        );
        let _v6 = peers.open(h1).expect("first of a /64");
        let _v6b = peers.open(h2).expect("second of the /64");
        assert!(peers.open(h1).is_none(), "one /64 counts as one client");
        let unlimited = Peers::new(0);
        for _ in 0..10 {
            assert!(
                matches!(unlimited.open(a), Some(None)),
                "no limit, nothing counted"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_too_long_sets_the_deadline() {
        let opts = ListenerOptions {
            write_timeout: Duration::from_secs(3),
            ..ListenerOptions::default()
        };
        let state = ConnState::new(tokio::time::Instant::now());
        state.begin();
        assert_eq!(
            state.deadline(&opts),
            None,
            "a request in flight, writes flowing"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        state.wrote(&Poll::<()>::Pending);
        tokio::time::advance(Duration::from_secs(1)).await;
        state.wrote(&Poll::<()>::Pending);
        assert_eq!(
            state.deadline(&opts),
            Some((4000, "write_timeout")),
            "counted from the first write that waited"
        );
        let off = ListenerOptions {
            write_timeout: Duration::ZERO,
            ..opts
        };
        assert_eq!(state.deadline(&off), None, "zero: no write timeout");
        state.wrote(&Poll::Ready(()));
        assert_eq!(state.deadline(&opts), None, "the client read again");
    }
}

//! What a request holds while the gateway works on it, taken in this order:
//!
//! 1. its namespace's share of the concurrency (`--max-concurrency-per-namespace`) and its
//!    key's share within it (`--max-concurrency-per-key`), taken once the key is known and
//!    before the body is read: a key that sends bodies slowly, or a tenant with many keys,
//!    holds its own share, never every tenant's slots (429 beyond it);
//! 2. the body, read within a deadline and at a least rate (408 otherwise);
//! 3. a slot of the gateway's concurrency (`--max-concurrency`), taken once the body is in
//!    (503 beyond it).
//!
//! All are held until the response — a stream included — ends. A key entry's counters come
//! from a registry kept across config versions
//! ([`crate::policy::concurrency::InFlightRegistry`]), so a config push that
//! rebuilds every key forgets no request in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorKind, ProxyError};
use crate::policy::auth::KeyEntry;

/// The limits of request admission.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    per_key: u32,
    per_namespace: u32,
    pub body: BodyTiming,
}

/// How long a request body may take.
#[derive(Clone, Copy, Debug)]
pub struct BodyTiming {
    /// The whole body must arrive within this.
    pub timeout: Duration,
    /// After the first second, at least this many bytes a second on average (0: no floor).
    pub min_rate: u64,
}

impl BodyTiming {
    /// A body `elapsed` into its reading with `read` bytes so far: 408 when it is late, or
    /// slower than the least rate after its first second.
    fn check(&self, elapsed: Duration, read: usize) -> Result<(), ProxyError> {
        if elapsed >= self.timeout {
            return Err(slow(format!(
                "The request body did not arrive within {:?}.",
                self.timeout
            )));
        }
        if self.min_rate > 0
            && elapsed >= Duration::from_secs(1)
            && (read as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
        {
            return Err(slow(format!(
                "The request body arrived at {:.0} bytes a second, below the least rate of {} bytes a second.",
                read as f64 / elapsed.as_secs_f64(),
                self.min_rate
            )));
        }
        Ok(())
    }
}

impl Default for BodyTiming {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            min_rate: 1024,
        }
    }
}

/// Most requests in flight on one data plane, by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 10_000;

/// The shares of the gateway's concurrency.
#[derive(Clone, Copy, Debug)]
pub struct Shares {
    /// Most requests of one namespace (all its keys together) in flight.
    pub per_namespace: usize,
    /// Most requests of one key in flight.
    pub per_key: usize,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            per_namespace: DEFAULT_MAX_CONCURRENCY / 2,
            per_key: 1_000,
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(
            DEFAULT_MAX_CONCURRENCY,
            Shares::default(),
            BodyTiming::default(),
        )
    }
}

impl Admission {
    pub fn new(max_concurrency: usize, shares: Shares, body: BodyTiming) -> Self {
        let share = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            per_key: share(shares.per_key),
            per_namespace: share(shares.per_namespace),
            body,
        }
    }

    /// The key's share, within its namespace's: `Err` (429) when either has as many requests
    /// in flight here as its share allows.
    pub fn key_share(&self, key: &Arc<KeyEntry>) -> Result<KeyShare, ProxyError> {
        let refused = |whose: &str, n: u32| {
            let mut e = ProxyError::new(
                ErrorKind::RateLimitParallel,
                format!(
                    "{whose} has {n} requests in flight on this gateway instance, its share of the concurrency; retry when one ends."
                ),
            )
            .with_code("concurrency_limit_exceeded");
            e.set_retry_after(Some(HeaderValue::from_static("1")));
            e
        };
        let c = &key.in_flight;
        let n = c.namespace.fetch_add(1, Ordering::Relaxed);
        if n >= self.per_namespace {
            c.namespace.fetch_sub(1, Ordering::Relaxed);
            return Err(refused("This API key's namespace", n));
        }
        let n = c.key.fetch_add(1, Ordering::Relaxed);
        if n >= self.per_key {
            c.key.fetch_sub(1, Ordering::Relaxed);
            c.namespace.fetch_sub(1, Ordering::Relaxed);
            return Err(refused("This API key", n));
        }
        Ok(KeyShare(key.clone()))
    }

    /// A slot of the gateway's concurrency: `Err` (503) when every one is taken.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let mut e = ProxyError::new(
                ErrorKind::NotReady,
                "The gateway is at its concurrency limit; retry shortly.",
            );
            e.set_retry_after(Some(HeaderValue::from_static("1")));
            e
        })
    }
}

/// A key's request in flight on this gateway, counted for the key and its namespace
/// (released when dropped).
#[derive(Debug)]
pub struct KeyShare(Arc<KeyEntry>);

impl Drop for KeyShare {
    fn drop(&mut self) {
        let c = &self.0.in_flight;
        c.key.fetch_sub(1, Ordering::Relaxed);
        c.namespace.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an admitted request holds.
#[derive(Debug)]
pub struct Admitted {
    pub share: KeyShare,
    pub slot: OwnedSemaphorePermit,
}

impl Admitted {
    /// Keeps what the request holds until its response ends: a stream holds it until its
    /// last event (or its client leaves); a whole answer releases it now.
    pub fn hold(self, resp: Response) -> Response {
        let streaming = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !streaming {
            return resp;
        }
        resp.map(|body| Holding::body(body, self))
    }
}

/// A response body that keeps `T` alive until the body ends or is dropped: what a stream
/// holds (its admission here; the request's record and its in-flight mark elsewhere) lasts
/// as long as the stream, and is let go when the client leaves.
pub(crate) struct Holding<T> {
    body: Body,
    _held: T,
}

impl<T: Unpin + Send + 'static> Holding<T> {
    /// `body`, keeping `held` until it ends.
    pub(crate) fn body(body: Body, held: T) -> Body {
        Body::new(Self { body, _held: held })
    }
}

impl<T: Unpin> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Reads a body up to `limit` bytes (413 beyond it), within the timing (408 when it is late
/// or too slow).
pub async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    timing: BodyTiming,
) -> Result<Bytes, ProxyError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ProxyError::new(
            ErrorKind::BodyTooLarge,
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        linger(body);
        return Err(too_large());
    }
    let start = tokio::time::Instant::now();
    let deadline = start + timing.timeout;
    let mut out = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    loop {
        // Wake at least every second to check the rate when nothing arrives; a body that
        // trickles in is checked on every frame (a byte a second never wakes the timer).
        let check = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        let frame = match tokio::time::timeout_at(check, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProxyError::invalid(format!(
                    "Reading the request body failed: {e}"
                )));
            }
            Err(_) => {
                timing.check(start.elapsed(), out.len())?;
                continue;
            }
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                linger(body);
                return Err(too_large());
            }
            out.extend_from_slice(&data);
            // (the last frame is not judged: the body is whole)
            if declared != Some(out.len()) && !http_body::Body::is_end_stream(&body) {
                timing.check(start.elapsed(), out.len())?;
            }
        }
    }
    Ok(out.freeze())
}

fn slow(message: String) -> ProxyError {
    ProxyError::new(ErrorKind::BodyTimeout, message)
}

/// Most of a refused body read and thrown away, and for how long, so that a client that
/// sends it all before reading (Python's `urllib`) gets the 413 instead of a reset
/// connection (nginx's lingering close).
const LINGER_BYTES: u64 = 256 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(10);

/// Reads the rest of a refused body in the background, within the bounds above; the
/// response goes out meanwhile. Past the bounds the connection is closed.
fn linger(mut body: Body) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut left = LINGER_BYTES;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::concurrency::InFlightRegistry;
    use std::sync::atomic::AtomicU32;

    fn key(registry: &InFlightRegistry, id: &str) -> Arc<KeyEntry> {
        Arc::new(KeyEntry {
            id: id.into(),
            in_flight: registry.counters(id),
            ..KeyEntry::default()
        })
    }

    fn admission(per_namespace: usize, per_key: usize) -> Admission {
        Admission::new(
            10,
            Shares {
                per_namespace,
                per_key,
            },
            BodyTiming::default(),
        )
    }

    fn count(c: &AtomicU32) -> u32 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_key_holds_its_share_and_no_more() {
        let (a, r) = (admission(100, 2), InFlightRegistry::default());
        let k = key(&r, "ns/k");
        let one = a.key_share(&k).expect("first");
        let two = a.key_share(&k).expect("second");
        let third = a.key_share(&k).expect_err("over the share");
        assert_eq!(third.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            third.message.starts_with("This API key has 2"),
            "{}",
            third.message
        );
        drop(one);
        let _again = a.key_share(&k).expect("a share came back");
        drop(two);
        // Another key is not affected.
        let other = key(&r, "ns/other");
        let _theirs = a.key_share(&other).expect("another key's share");
        assert_eq!(count(&k.in_flight.key), 1);
        assert_eq!(count(&k.in_flight.namespace), 2);
    }

    /// A namespace's keys together hold at most its share; another namespace is untouched,
    /// and a key refused by its namespace's share takes nothing.
    #[test]
    fn a_namespace_holds_its_share_across_its_keys() {
        let (a, r) = (admission(3, 2), InFlightRegistry::default());
        let held: Vec<_> = ["tenant/a", "tenant/a", "tenant/b"]
            .iter()
            .map(|id| a.key_share(&key(&r, id)).expect("within the shares"))
            .collect();
        let c = key(&r, "tenant/c");
        let e = a.key_share(&c).expect_err("the namespace is full");
        assert!(e.message.contains("namespace has 3"), "{}", e.message);
        assert_eq!(count(&c.in_flight.key), 0);
        assert!(
            a.key_share(&key(&r, "other/a")).is_ok(),
            "another tenant is served"
        );
        drop(held);
        assert_eq!(count(&c.in_flight.namespace), 0);
    }

    /// A config push rebuilds every key entry: the requests in flight under the old entry
    /// still count against the new one, and give their share back when they end.
    #[test]
    fn shares_survive_a_rebuilt_key() {
        let (a, r) = (admission(100, 2), InFlightRegistry::default());
        let old = key(&r, "ns/k");
        let held = [a.key_share(&old).expect("1"), a.key_share(&old).expect("2")];
        let rebuilt = key(&r, "ns/k");
        drop(old);
        assert!(
            a.key_share(&rebuilt).is_err(),
            "the old requests still count"
        );
        drop(held);
        let _ = a.key_share(&rebuilt).expect("given back");
        assert_eq!(count(&rebuilt.in_flight.key), 0);
        // Once nothing holds a key's counters, a new entry starts afresh.
        drop(rebuilt);
        assert_eq!(count(&key(&r, "ns/k").in_flight.key), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_refused_and_a_late_one_too() {
        let timing = BodyTiming {
            timeout: Duration::from_secs(30),
            min_rate: 100,
        };
        // Ten bytes a second: below the floor after the first second.
        let (mut tx, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            (
                tx,
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
        };
        let sender = tokio::spawn(async move {
            for _ in 0..100 {
                if tx
                    .send(Ok(Bytes::from_static(b"0123456789")))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let _ = &mut tx;
        });
        let e = read_body(&HeaderMap::new(), body, 1 << 20, timing)
            .await
            .expect_err("too slow");
        assert_eq!(e.kind, ErrorKind::BodyTimeout);
        assert_eq!(e.status(), http::StatusCode::REQUEST_TIMEOUT);
        sender.abort();
        // A byte every 900 ms never leaves the reader a quiet second, and is refused at the
        // rate check all the same (not held until the deadline).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let sender = tokio::spawn(async move {
            loop {
                if tx.send(Ok(Bytes::from_static(b"x"))).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let e = read_body(&HeaderMap::new(), body, 1 << 20, timing)
            .await
            .expect_err("a trickle");
        assert!(e.message.contains("least rate"), "{}", e.message);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        sender.abort();
        // No floor: the deadline still holds.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let e = read_body(
            &HeaderMap::new(),
            body,
            1 << 20,
            BodyTiming {
                timeout: Duration::from_secs(5),
                min_rate: 0,
            },
        )
        .await
        .expect_err("late");
        assert!(e.message.contains("within"), "{}", e.message);
        // A body that arrives in time is read whole.
        let ok = read_body(&HeaderMap::new(), Body::from("hello"), 1 << 20, timing)
            .await
            .expect("read");
        assert_eq!(&ok[..], b"hello");
    }
}

//! [`SpanQueue`]: finished spans, encoded as they are recorded, batched in memory and sent
//! to the collector by one task, over OTLP/gRPC (tonic) or OTLP/HTTP with protobuf (hyper);
//! [`MetricsExport`]: what a binary's metrics hold, encoded and sent every interval.
//!
//! A request never waits for the exporter: recording a span is a short lock around writing
//! its bytes into the open batch. A batch goes when it holds [`BATCH`] spans (or
//! [`BATCH_BYTES`]), or [`FLUSH_EVERY`] after the exporter saw its first span. At most
//! `capacity` spans wait or are in flight; past that, and when an export fails after its
//! retries, spans are dropped and counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::proto::{self, Envelope, Head, MetricsWriter, SpanWriter};

/// Spans in one export.
const BATCH: usize = 512;
/// Bytes of spans in one export: well under a collector's default 4 MiB message limit.
const BATCH_BYTES: usize = 1 << 20;
/// The longest a span waits in the queue before its batch goes.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Retries of an export the collector may take later (unavailable, overloaded, timed out).
const RETRIES: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What [`SpanQueue`] counts.
#[derive(Clone, Debug, Default)]
pub struct QueueCounts {
    /// Spans a collector accepted.
    pub exported: Counter,
    /// Spans lost: the queue was full, the export failed, or the collector rejected them.
    pub dropped: Counter,
}

/// The bounded queue between finished spans and the exporter task.
#[derive(Clone, Debug)]
pub struct SpanQueue {
    shared: Arc<Shared>,
    /// Dropped with the last clone: the task then sends what is left and ends.
    _open: Arc<Open>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    capacity: usize,
    counts: QueueCounts,
    /// The exporter task, until [`SpanQueue::shutdown`] waits for it.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The batch being filled: encoded `ScopeSpans.spans` fields.
    open: Vec<u8>,
    open_spans: usize,
    /// Batches that are full, oldest first.
    full: VecDeque<(Vec<u8>, usize)>,
    /// Spans in `open` and `full`.
    waiting: usize,
    /// Buffers of sent batches, for the next ones.
    spare: Vec<Vec<u8>>,
    closed: bool,
}

#[derive(Debug)]
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SpanQueue {
    /// Starts the exporter task; it ends when every queue clone is gone or
    /// [`SpanQueue::shutdown`] is called, once what was queued has been exported (or
    /// dropped).
    pub(crate) fn start(
        exporter: Exporter,
        envelope: Envelope,
        capacity: usize,
        counts: QueueCounts,
    ) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            capacity: capacity.max(1),
            counts,
            task: Mutex::default(),
        });
        let task = tokio::spawn(run(shared.clone(), exporter, envelope));
        *shared.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        let open = Arc::new(Open(shared.clone()));
        Self {
            shared,
            _open: open,
        }
    }

    /// Sends what is queued and stops: spans recorded after this are dropped (counted).
    pub async fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Records a finished span: `head`, then what `body` writes (attributes, events, links,
    /// status). Counted dropped when the queue is full or shut down.
    pub fn span(&self, head: &Head<'_>, body: impl FnOnce(&mut SpanWriter<'_>)) {
        let p = self.shared.lock();
        if p.waiting >= self.shared.capacity || p.closed {
            drop(p);
            self.shared.counts.dropped.inc();
            return;
        }
        // A panic while writing takes back what was written, so the batch stays whole.
        struct Writing<'a> {
            p: std::sync::MutexGuard<'a, Pending>,
            mark: usize,
        }
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mark = self.mark;
                    self.p.open.truncate(mark);
                }
            }
        }
        let mut w = Writing {
            mark: p.open.len(),
            p,
        };
        proto::span(&mut w.p.open, head, body);
        let p = &mut w.p;
        p.open_spans += 1;
        p.waiting += 1;
        let first = p.open_spans == 1 && p.full.is_empty();
        if p.open_spans >= BATCH || p.open.len() >= BATCH_BYTES {
            let next = p.spare.pop().unwrap_or_default();
            let batch = std::mem::replace(&mut p.open, next);
            let n = std::mem::take(&mut p.open_spans);
            p.full.push_back((batch, n));
        } else if !first {
            return;
        }
        drop(w);
        self.shared.wake.notify_one();
    }
}

/// The exporter task: a batch goes when full, or [`FLUSH_EVERY`] after its first span.
async fn run(shared: Arc<Shared>, mut exporter: Exporter, envelope: Envelope) {
    let mut failing = false;
    loop {
        // Wait for a first span.
        loop {
            {
                let p = shared.lock();
                if p.waiting > 0 || p.closed {
                    break;
                }
            }
            shared.wake.notified().await;
        }
        // Then for a full batch, the deadline, or the end.
        let due = tokio::time::Instant::now() + FLUSH_EVERY;
        loop {
            {
                let p = shared.lock();
                if !p.full.is_empty() || p.closed {
                    break;
                }
            }
            if tokio::time::timeout_at(due, shared.wake.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let batches = {
            let mut p = shared.lock();
            let mut batches: Vec<_> = p.full.drain(..).collect();
            if batches.is_empty() && p.open_spans > 0 {
                let next = p.spare.pop().unwrap_or_default();
                let open = std::mem::replace(&mut p.open, next);
                batches.push((open, std::mem::take(&mut p.open_spans)));
            }
            batches
        };
        for (mut batch, n) in batches {
            let body = Bytes::from(envelope.request(&batch));
            let sent = n as u64;
            match exporter.export(body).await {
                Ok(rejected) => {
                    shared.counts.exported.inc_by(sent - rejected.min(sent));
                    shared.counts.dropped.inc_by(rejected.min(sent));
                    if failing {
                        tracing::info!("OTLP span export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    shared.counts.dropped.inc_by(sent);
                    if !failing {
                        tracing::warn!(error = %e, spans = sent, "OTLP span export failed; spans are dropped (counted) until it works");
                        failing = true;
                    }
                }
            }
            batch.clear();
            // A batch counts against the capacity until it is sent: what waits and what is
            // in flight together stay within it.
            let mut p = shared.lock();
            p.waiting -= n;
            p.spare.push(batch);
        }
        let closed = {
            let p = shared.lock();
            p.closed && p.waiting == 0
        };
        if closed {
            return;
        }
    }
}

/// How an export failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failed {
    message: String,
    /// The collector may take it later.
    retry: bool,
}

/// The transport of span batches.
pub(crate) enum Exporter {
    Grpc(Box<Grpc>),
    Http(Box<Http>),
}

/// OTLP/gRPC.
pub(crate) struct Grpc {
    pub(crate) grpc: tonic::client::Grpc<tonic::transport::Channel>,
    pub(crate) metadata: tonic::metadata::MetadataMap,
    /// The signal's `Export` method.
    pub(crate) path: http::uri::PathAndQuery,
}

/// OTLP/HTTP with protobuf bodies.
pub(crate) struct Http {
    pub(crate) client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    pub(crate) uri: http::Uri,
    pub(crate) headers: http::HeaderMap,
    pub(crate) timeout: Duration,
}

impl Exporter {
    /// Sends one `ExportTraceServiceRequest`, retried [`RETRIES`] times when the collector
    /// may take it later; the number of spans the collector says it rejected.
    async fn export(&mut self, body: Bytes) -> Result<u64, Failed> {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            match self.send(body.clone()).await {
                Err(e) if e.retry && tries < RETRIES => {
                    tries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                done => return done,
            }
        }
    }

    async fn send(&mut self, body: Bytes) -> Result<u64, Failed> {
        match self {
            Self::Grpc(g) => {
                let Grpc {
                    grpc,
                    metadata,
                    path,
                } = &mut **g;
                grpc.ready().await.map_err(|e| Failed {
                    message: format!("collector unreachable: {e}"),
                    retry: true,
                })?;
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = metadata.clone();
                let resp = grpc.unary(req, path.clone(), RawCodec).await.map_err(|s| {
                    use tonic::Code;
                    Failed {
                        message: format!("collector answered {:?}: {}", s.code(), s.message()),
                        // OTLP's retryable codes (RESOURCE_EXHAUSTED only with retry
                        // information, which a short retry honours anyway).
                        retry: matches!(
                            s.code(),
                            Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::Aborted
                                | Code::OutOfRange
                                | Code::Unavailable
                                | Code::DataLoss
                                | Code::ResourceExhausted
                        ),
                    }
                })?;
                Ok(resp.into_inner())
            }
            Self::Http(h) => {
                let Http {
                    client,
                    uri,
                    headers,
                    timeout,
                } = &**h;
                let mut req = http::Request::post(uri.clone())
                    .body(Full::new(body))
                    .map_err(|e| Failed {
                        message: e.to_string(),
                        retry: false,
                    })?;
                req.headers_mut().clone_from(headers);
                req.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                let sent = async {
                    let resp = client.request(req).await.map_err(|e| Failed {
                        message: format!("collector unreachable: {e}"),
                        retry: true,
                    })?;
                    let status = resp.status();
                    // An answer is a few bytes; a collector cannot make this hold more.
                    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                        .collect()
                        .await
                        .map_err(|e| Failed {
                            message: format!("collector's answer broke off or is too long: {e}"),
                            retry: true,
                        })?;
                    if status.is_success() {
                        Ok(rejected(&body.to_bytes()))
                    } else {
                        Err(Failed {
                            message: format!("collector answered HTTP {status}"),
                            retry: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                        })
                    }
                };
                tokio::time::timeout(*timeout, sent)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failed {
                            message: format!("no answer within {timeout:?}"),
                            retry: true,
                        })
                    })
            }
        }
    }
}

/// The export of a binary's metrics: every interval (and once more at shutdown), what
/// `collect` writes is sent as one `ExportMetricsServiceRequest`.
#[derive(Debug)]
pub struct MetricsExport {
    stop: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl MetricsExport {
    pub(crate) fn start(
        mut exporter: Exporter,
        envelope: Envelope,
        interval: Duration,
        collect: impl Fn(&mut MetricsWriter<'_>) + Send + 'static,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let start = std::time::SystemTime::now();
            let mut failing = false;
            let mut last = false;
            while !last {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stopped.notified() => last = true,
                }
                let mut buf = Vec::new();
                collect(&mut MetricsWriter::new(
                    &mut buf,
                    start,
                    std::time::SystemTime::now(),
                ));
                if buf.is_empty() {
                    continue;
                }
                match exporter.export(Bytes::from(envelope.request(&buf))).await {
                    Ok(_) if failing => {
                        tracing::info!("OTLP metric export works again");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "OTLP metric export failed; the next export carries the totals");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
        Self {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Sends what the metrics hold now and stops.
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// `ExportTraceServiceResponse` (and `ExportMetricsServiceResponse`, the same shape): what
/// the collector did not take.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// The spans an export response rejected (none when it cannot be read: it was accepted).
fn rejected(body: &[u8]) -> u64 {
    use prost::Message;
    let Some(p) = ExportResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
    else {
        return 0;
    };
    if p.rejected_spans > 0 {
        tracing::warn!(
            rejected = p.rejected_spans,
            reason = %p.error_message,
            "the OTLP collector rejected part of an export (spans or data points)"
        );
    }
    u64::try_from(p.rejected_spans).unwrap_or(0)
}

/// gRPC's codec for a request already encoded and the response read by [`rejected`].
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = u64;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = u64;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<u64>, tonic::Status> {
        let body = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        Ok(Some(rejected(&body)))
    }
}

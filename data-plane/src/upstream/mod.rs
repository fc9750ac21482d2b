//! Talking to providers: the keep-alive HTTP clients with their deadlines (HTTP/1.1 driven on
//! the request's task for plain-HTTP upstreams, [`h1`]; hyper-util's pooled client for TLS,
//! HTTP/2 by ALPN), stream framing (server-sent events, AWS event-stream) and request signing
//! (SigV4).

pub(crate) mod counted;
pub(crate) mod eventstream;
pub(crate) mod h1;
pub mod sigv4;
pub(crate) mod sse;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError};

pub use h1::Body;

/// The client of one [`ClientSettings`]: plain-HTTP upstreams through [`h1::Pool`], TLS ones
/// through hyper-util's pooled client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    tls: Client<HttpsConnector<counted::CountingConnector>, Full<Bytes>>,
    plain: h1::Pool,
}

/// How a client connects and keeps connections: the connect timeout, the idle keep-alive
/// connections kept per upstream host (beyond them, a finished request's connection is
/// closed), and how long one may stay idle. Pools that agree share a client.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: switchyard_crds::compile::DEFAULT_CONNECT_TIMEOUT,
            max_idle_per_host: 256,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Largest upstream (non-streaming) response body accepted.
pub const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// The HTTP clients, one per [`ClientSettings`], kept across config versions so connection
/// pools survive config changes; every connection they open is counted.
#[derive(Debug, Default)]
pub struct Clients {
    clients: Mutex<HashMap<ClientSettings, HttpClient>>,
    counts: counted::Counts,
}

impl Clients {
    /// Clients whose connections count in `counts`.
    pub fn new(counts: counted::Counts) -> Self {
        Self {
            clients: Mutex::default(),
            counts,
        }
    }

    /// The client for these settings, created on first use.
    pub fn client(&self, settings: ClientSettings) -> Result<HttpClient, ClientError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&settings) {
            return Ok(c.clone());
        }
        let c = new_client(settings, self.counts.clone())?;
        clients.insert(settings, c.clone());
        Ok(c)
    }
}

/// A pooled keep-alive client: HTTP/2 where the upstream offers it over TLS (ALPN), else
/// HTTP/1.1; idle connections bounded per host; every connection counted in metrics.
/// Why an HTTP client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS client setup failed")]
    Tls(#[source] rustls::Error),
}

fn new_client(s: ClientSettings, counts: counted::Counts) -> Result<HttpClient, ClientError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(s.connect_timeout));
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    let plain = h1::Pool::new(s, counts.clone());
    let http = counted::CountingConnector { inner: tcp, counts };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .map_err(ClientError::Tls)?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let tls = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(s.max_idle_per_host)
        .build(https);
    Ok(HttpClient { tls, plain })
}

/// Sends a request and waits for the response head until the first-byte deadline.
pub async fn send(
    client: &HttpClient,
    req: http::Request<Full<Bytes>>,
    first_byte: Instant,
) -> Result<http::Response<Body>, ProxyError> {
    if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
        return client.plain.send(req, first_byte).await;
    }
    match tokio::time::timeout_at(first_byte, client.tls.request(req)).await {
        Err(_) => Err(ProxyError::new(
            ErrorKind::UpstreamTimeout,
            "upstream did not answer in time",
        )),
        Ok(Err(e)) if e.is_connect() => Err(ProxyError::new(
            ErrorKind::UpstreamConnect,
            "upstream connection failed",
        )
        .with_source(e)),
        Ok(Err(e)) => Err(
            ProxyError::new(ErrorKind::UpstreamProtocol, "upstream request failed").with_source(e),
        ),
        Ok(Ok(resp)) => Ok(resp.map(Body::Pooled)),
    }
}

/// Reads a whole upstream body before the deadline.
pub async fn read_body(body: Body, deadline: Instant) -> Result<Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, MAX_UPSTREAM_BODY);
    match tokio::time::timeout_at(deadline, limited.collect()).await {
        Err(_) => Err(ProxyError::new(
            ErrorKind::UpstreamTimeout,
            "upstream response did not complete in time",
        )),
        Ok(Err(e)) => Err(ProxyError::new(
            ErrorKind::UpstreamProtocol,
            "reading upstream response failed",
        )
        .with_source(e)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// How an upstream frames its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Sse,
    EventStream,
}

/// One upstream stream event, whatever the framing: an SSE event (name and data) or an AWS
/// event-stream message (`:event-type` and payload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub event: Option<String>,
    pub data: String,
    /// An event-stream `exception` message (its type is in `event`).
    pub exception: bool,
}

impl Frame {
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            event: None,
            data: data.into(),
            exception: false,
        }
    }

    pub fn named(event: &str, data: impl Into<String>) -> Self {
        Self {
            event: Some(event.to_owned()),
            data: data.into(),
            exception: false,
        }
    }
}

/// Cuts an upstream body into [`Frame`]s by its framing.
#[derive(Debug)]
pub enum Framer {
    Sse(sse::Decoder),
    EventStream(eventstream::Decoder),
}

impl Framer {
    pub fn new(f: Framing) -> Self {
        match f {
            Framing::Sse => Self::Sse(sse::Decoder::default()),
            Framing::EventStream => Self::EventStream(eventstream::Decoder::default()),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        match self {
            Self::Sse(d) => d.push(bytes),
            Self::EventStream(d) => d.push(bytes),
        }
    }

    /// The next complete frame; an error means the stream is malformed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        match self {
            Self::Sse(d) => d.next_frame().map_err(|e| e.to_string()),
            Self::EventStream(d) => d.next_frame().map_err(|e| e.to_string()),
        }
    }

    /// What is left when the body ends.
    pub fn finish(&mut self) -> Result<Option<Frame>, String> {
        match self {
            Self::Sse(d) => d.finish().map_err(|e| e.to_string()),
            Self::EventStream(d) => d.finish().map_err(|e| e.to_string()),
        }
    }
}

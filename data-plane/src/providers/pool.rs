//! A provider pool as the request path sees it: its provider, endpoints (URL, credential,
//! health), timeouts, models and prices, and the HTTP client it sends with.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use switchyard_crds::compile;
use switchyard_proto::v1 as pb;

use super::{Auth, Provider};
use crate::health::balance::{Candidate, Strategy};
use crate::health::{EndpointHealth, Load, OutlierSettings};
use crate::llm::Price;
use crate::telemetry::metrics::{BackendLabels, Metrics};
use crate::upstream::sigv4::{AwsCredentials, Signer};
use crate::upstream::{ClientSettings, Clients, HttpClient};

/// What a pool is built over that outlives config versions.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    pub clients: &'a Clients,
    pub health: &'a crate::health::Registry,
    /// Where each endpoint's requests are counted (`None`: nowhere).
    pub metrics: Option<&'a Metrics>,
}

impl Shared<'_> {
    /// The request counter of a pool's endpoint (detached without metrics).
    fn picks(&self, pool: &str, endpoint: usize) -> Counter {
        self.metrics.map_or_else(Default::default, |m| {
            m.backend_requests
                .get_or_create(&BackendLabels {
                    pool: pool.to_owned(),
                    endpoint: endpoint.to_string(),
                })
                .clone()
        })
    }
}

/// One endpoint of a pool: where it is and how the gateway authenticates to it.
#[derive(Debug)]
pub struct EndpointEntry {
    /// Base URL without a trailing slash.
    pub base: String,
    pub weight: u32,
    pub auth: Auth,
    /// Headers every request to it carries (`anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What traffic taught about it (kept across config versions).
    pub health: Arc<EndpointHealth>,
    /// `pool#index`, for `x-switchyard-backend`.
    pub label: HeaderValue,
    /// Requests sent to it (`switchyard_backend_requests_total`).
    pub picks: prometheus_client::metrics::counter::Counter,
}

impl Candidate for EndpointEntry {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &Load {
        &self.health.load
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockBehaviour {
    pub latency: Duration,
    pub tokens_per_second: u32,
    pub completion_tokens: u32,
}

#[derive(Debug)]
pub struct PoolEntry {
    pub id: String,
    pub provider: Provider,
    pub endpoints: Vec<EndpointEntry>,
    pub strategy: Strategy,
    /// Round-robin position.
    pub turn: AtomicUsize,
    pub outlier: OutlierSettings,
    /// Every endpoint together (what a route balancing over pools sees).
    pub load: Arc<Load>,
    /// The pool id, for `x-switchyard-backend` when it has no endpoints (mock).
    pub label: HeaderValue,
    pub timeouts: Timeouts,
    pub models: Vec<String>,
    /// Prices by upstream model name (aliases included); `None`: listed without a price.
    pub prices: HashMap<String, Option<Price>>,
    /// The price of a model the pool does not list; `None`: unpriced.
    pub default_price: Option<Price>,
    pub client: HttpClient,
    /// Most requests in flight per endpoint (0: no cap).
    pub max_connections: u32,
    /// The active health checks of its endpoints; `None`: off.
    pub checks: Option<super::check::CheckSettings>,
}

/// Why a pool as sent cannot run here (the config NACKs it, naming the pool).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the pool names no provider")]
    NoProvider,
    #[error("a bedrock pool needs a region")]
    NoRegion,
    #[error("endpoint URL {0:?} is invalid")]
    InvalidUrl(String),
    #[error("endpoint URL {0:?} has no host")]
    NoHost(String),
    #[error("no endpoints")]
    NoEndpoints,
    /// The credential itself is never named.
    #[error("credential contains invalid characters")]
    BadCredential,
    #[error(
        "no AWS credentials: set awsCredentialsSecretRef, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on the data plane"
    )]
    NoAwsCredentials,
    #[error(transparent)]
    Client(#[from] crate::upstream::ClientError),
}

fn provider_of(p: &pb::Pool) -> Result<Provider, PoolError> {
    let mock = p.mock.unwrap_or_default();
    Ok(match p.provider() {
        pb::ProviderKind::Openai => Provider::OpenAi,
        pb::ProviderKind::AzureOpenai => Provider::Azure {
            api_version: p.api_version.clone(),
        },
        pb::ProviderKind::OpenaiCompatible => Provider::Compat,
        pb::ProviderKind::Anthropic => Provider::Anthropic,
        pb::ProviderKind::Gemini => Provider::Gemini {
            api_version: if p.api_version.is_empty() {
                "v1beta".into()
            } else {
                p.api_version.clone()
            },
        },
        pb::ProviderKind::Bedrock => {
            if p.region.is_empty() {
                return Err(PoolError::NoRegion);
            }
            Provider::Bedrock {
                region: p.region.clone(),
            }
        }
        pb::ProviderKind::Mock => Provider::Mock(MockBehaviour {
            latency: Duration::from_millis(mock.latency_ms),
            tokens_per_second: mock.tokens_per_second,
            completion_tokens: mock.completion_tokens.max(1),
        }),
        pb::ProviderKind::Unspecified => {
            return Err(PoolError::NoProvider);
        }
    })
}

/// How an endpoint of a provider authenticates, and the headers it always sends.
fn endpoint_auth(
    provider: &Provider,
    e: &pb::Endpoint,
) -> Result<(Auth, Vec<(HeaderName, HeaderValue)>), PoolError> {
    let secret = |v: &str| {
        let mut v = HeaderValue::from_str(v).map_err(|_| PoolError::BadCredential)?;
        v.set_sensitive(true);
        Ok::<_, PoolError>(v)
    };
    let header = |name: &'static str, value: HeaderValue| Auth::Header {
        name: HeaderName::from_static(name),
        value,
    };
    let none_if_empty = |auth: Auth| {
        if e.credential.is_empty() {
            Auth::None
        } else {
            auth
        }
    };
    Ok(match provider {
        Provider::OpenAi | Provider::Compat => (
            none_if_empty(Auth::Header {
                name: http::header::AUTHORIZATION,
                value: secret(&format!("Bearer {}", e.credential))?,
            }),
            Vec::new(),
        ),
        Provider::Azure { .. } => (
            none_if_empty(header("api-key", secret(&e.credential)?)),
            Vec::new(),
        ),
        Provider::Anthropic => (
            none_if_empty(header("x-api-key", secret(&e.credential)?)),
            vec![(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(crate::dialect::anthropic::API_VERSION),
            )],
        ),
        Provider::Gemini { .. } => (
            none_if_empty(header("x-goog-api-key", secret(&e.credential)?)),
            Vec::new(),
        ),
        Provider::Bedrock { region } => {
            let credentials = match &e.aws {
                Some(a) => AwsCredentials {
                    access_key_id: a.access_key_id.clone(),
                    secret_access_key: a.secret_access_key.clone(),
                    session_token: (!a.session_token.is_empty()).then(|| a.session_token.clone()),
                },
                None => AwsCredentials::from_env().ok_or(PoolError::NoAwsCredentials)?,
            };
            (
                Auth::SigV4(Arc::new(Signer {
                    region: region.clone(),
                    service: "bedrock",
                    credentials,
                })),
                Vec::new(),
            )
        }
        Provider::Mock(_) => (Auth::None, Vec::new()),
    })
}

fn price_of(m: &pb::Model) -> Price {
    Price {
        input: m.input_price_per_million_micros,
        output: m.output_price_per_million_micros,
        cache_read: m.cache_read_price_per_million_micros,
        cache_write: m.cache_write_price_per_million_micros,
    }
}

impl PoolEntry {
    /// The price of an upstream model: its own (or its alias's), else the pool's default;
    /// `None`: the pool has no price for it.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        match self.prices.get(model) {
            Some(listed) => *listed,
            None => self.default_price,
        }
    }
}

/// A header value of a resource id (ids are DNS names and `/`).
fn label(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl PoolEntry {
    /// A pool as the request path sees it, from the pool as sent; its endpoints' health and
    /// the HTTP client come from what outlives config versions. Pure apart from taking a
    /// client: the active health checks start once the config is installed
    /// ([`PoolEntry::ensure_checks`]).
    pub fn build(p: &pb::Pool, shared: Shared<'_>) -> Result<Self, PoolError> {
        let provider = provider_of(p)?;
        let mut endpoints = Vec::new();
        for e in &p.endpoints {
            let uri: http::Uri = e
                .url
                .parse()
                .map_err(|_| PoolError::InvalidUrl(e.url.clone()))?;
            if uri.host().is_none() {
                return Err(PoolError::NoHost(e.url.clone()));
            }
            let (auth, headers) = endpoint_auth(&provider, e)?;
            let base = e.url.trim_end_matches('/').to_owned();
            let index = endpoints.len();
            endpoints.push(EndpointEntry {
                health: shared.health.endpoint(&p.id, &base),
                label: label(&format!("{}#{index}", p.id)),
                picks: shared.picks(&p.id, index),
                base,
                weight: e.weight,
                auth,
                headers,
            });
        }
        if endpoints.is_empty() && !matches!(provider, Provider::Mock(_)) {
            return Err(PoolError::NoEndpoints);
        }
        let t = p.timeouts.unwrap_or_default();
        let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
        let timeouts = Timeouts {
            // The compiler fills these in; a snapshot without them gets the same defaults,
            // defined once, in `crds`.
            connect: ms(t.connect_ms, compile::DEFAULT_CONNECT_TIMEOUT),
            first_byte: ms(t.first_byte_ms, compile::DEFAULT_FIRST_BYTE_TIMEOUT),
            total: ms(t.total_ms, compile::DEFAULT_TOTAL_TIMEOUT),
            idle: ms(t.idle_ms, compile::DEFAULT_IDLE_TIMEOUT),
        };
        let outlier = match p.outlier_detection {
            Some(o) => OutlierSettings {
                consecutive_failures: o.consecutive_failures,
                consecutive_rate_limits: o.consecutive_rate_limits,
                base_ejection: Duration::from_millis(o.base_ejection_ms),
                max_ejection: Duration::from_millis(o.max_ejection_ms.max(o.base_ejection_ms)),
                max_ejected_percent: o.max_ejected_percent.min(100),
            },
            None => OutlierSettings::default(),
        };
        let defaults = ClientSettings::default();
        let client = shared.clients.client(ClientSettings {
            connect_timeout: timeouts.connect,
            max_idle_per_host: p
                .connection_pool
                .map_or(defaults.max_idle_per_host, |c| c.max_idle as usize),
            idle_timeout: p
                .connection_pool
                .filter(|c| c.idle_timeout_ms > 0)
                .map_or(defaults.idle_timeout, |c| {
                    Duration::from_millis(c.idle_timeout_ms)
                }),
        })?;
        let checks = super::check::CheckSettings::from_proto(p.health_check.as_ref());
        Ok(Self {
            id: p.id.clone(),
            provider,
            endpoints,
            strategy: Strategy::from_proto(p.load_balancing()),
            turn: AtomicUsize::new(0),
            outlier,
            load: shared.health.pool(&p.id),
            label: label(&p.id),
            timeouts,
            models: p.models.iter().map(|m| m.name.clone()).collect(),
            prices: p
                .models
                .iter()
                .flat_map(|m| {
                    let price = m.priced.then(|| price_of(m));
                    std::iter::once(&m.name)
                        .chain(&m.aliases)
                        .map(move |n| (n.clone(), price))
                })
                .collect(),
            default_price: p.default_price.as_ref().map(price_of),
            client,
            max_connections: p.connection_pool.map_or(0, |c| c.max_connections),
            checks,
        })
    }

    /// Starts, restarts or stops the active health checks of the pool's endpoints to match
    /// its settings (after the config holding it is installed).
    pub fn ensure_checks(&self, metrics: Option<&Arc<Metrics>>) {
        for (i, e) in self.endpoints.iter().enumerate() {
            super::check::ensure(&self.id, i, e, self.checks.as_ref(), &self.client, metrics);
        }
    }
}

//! One error type for the request path. It records where a failure came from, its failure
//! class and whether the request reached the upstream (retries and fallback decide from
//! those, never from strings), and is rendered once, at the edge, in the caller's dialect.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// How a client expects errors to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// Who caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Internal,
}

/// Why an upstream call failed, as retries and fallback see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    RateLimited,
    Overloaded,
    ServerError,
    Timeout,
    ContextWindowExceeded,
    ContentFiltered,
    /// The upstream refused the gateway's credential.
    Authentication,
    BadRequest,
}

impl FailureClass {
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ContextWindowExceeded => "context_window_exceeded",
            Self::ContentFiltered => "content_filtered",
            Self::Authentication => "authentication",
            Self::BadRequest => "bad_request",
        }
    }

    pub fn from_proto(c: switchyard_proto::v1::FailureClass) -> Option<Self> {
        use switchyard_proto::v1::FailureClass as P;
        Some(match c {
            P::Unspecified => return None,
            P::RateLimited => Self::RateLimited,
            P::Overloaded => Self::Overloaded,
            P::ServerError => Self::ServerError,
            P::Timeout => Self::Timeout,
            P::ContextWindowExceeded => Self::ContextWindowExceeded,
            P::ContentFiltered => Self::ContentFiltered,
            P::Authentication => Self::Authentication,
            P::BadRequest => Self::BadRequest,
        })
    }

    /// Whether the same request may succeed later or elsewhere.
    pub fn transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Overloaded | Self::ServerError | Self::Timeout
        )
    }
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidJson,
    InvalidRequest,
    MissingKey,
    InvalidKey,
    ExpiredKey,
    DisabledKey,
    ModelNotAllowed,
    ModelNotFound,
    UnknownEndpoint,
    BodyTooLarge,
    /// The request body did not arrive in time, or too slowly.
    BodyTimeout,
    /// The request is valid but cannot be served by the upstream it routes to (a field
    /// without a counterpart, an operation the provider lacks).
    Unsupported,
    NotReady,
    UpstreamTimeout,
    UpstreamConnect,
    UpstreamProtocol,
    /// The upstream answered with an error; see `class` and `upstream_status`.
    UpstreamStatus,
    RateLimitRequests,
    RateLimitTokens,
    RateLimitParallel,
    BudgetExceeded,
    /// A guardrail refused the request or ended the answer.
    GuardrailBlocked,
    /// The shared limit store is unreachable and the limiter fails closed.
    LimitsUnavailable,
    /// A guardrail's webhook could not decide and the guardrail fails closed.
    GuardrailUnavailable,
    Internal,
}

impl ErrorKind {
    pub fn origin(self) -> Origin {
        use ErrorKind::*;
        match self {
            InvalidJson | InvalidRequest | MissingKey | InvalidKey | ExpiredKey | DisabledKey
            | ModelNotAllowed | ModelNotFound | UnknownEndpoint | BodyTooLarge | BodyTimeout
            | Unsupported | RateLimitRequests | RateLimitTokens | RateLimitParallel
            | BudgetExceeded | GuardrailBlocked => Origin::Client,
            UpstreamTimeout | UpstreamConnect | UpstreamProtocol | UpstreamStatus => {
                Origin::Upstream
            }
            NotReady | LimitsUnavailable | GuardrailUnavailable | Internal => Origin::Internal,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidJson => "invalid_json",
            InvalidRequest => "invalid_request",
            MissingKey => "missing_key",
            InvalidKey => "invalid_key",
            ExpiredKey => "expired_key",
            DisabledKey => "disabled_key",
            ModelNotAllowed => "model_not_allowed",
            ModelNotFound => "model_not_found",
            UnknownEndpoint => "unknown_endpoint",
            BodyTooLarge => "body_too_large",
            BodyTimeout => "body_timeout",
            Unsupported => "unsupported",
            NotReady => "not_ready",
            UpstreamTimeout => "upstream_timeout",
            UpstreamConnect => "upstream_connect",
            UpstreamProtocol => "upstream_protocol",
            UpstreamStatus => "upstream_status",
            RateLimitRequests => "rate_limit_requests",
            RateLimitTokens => "rate_limit_tokens",
            RateLimitParallel => "rate_limit_parallel",
            BudgetExceeded => "budget_exceeded",
            GuardrailBlocked => "guardrail_blocked",
            LimitsUnavailable => "limits_unavailable",
            GuardrailUnavailable => "guardrail_unavailable",
            Internal => "internal",
        }
    }
}

/// An error on the request path.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// For upstream failures: why, as retries and fallback see it.
    pub class: Option<FailureClass>,
    /// Whether the request reached the upstream (a retry elsewhere may then double-spend).
    pub reached_upstream: bool,
    /// Status the upstream answered with (kind `UpstreamStatus`).
    pub upstream_status: Option<StatusCode>,
    /// Extra response headers (`retry-after`, `x-ratelimit-*`, `retry-after-ms`).
    pub headers: Option<Box<http::HeaderMap>>,
    /// A more precise code than the kind's (`malformed_event`, `upstream_disconnect`).
    pub code: Option<&'static str>,
    /// What caused it (an HTTP client's or a connection's error): rendered after the message
    /// and logged with its whole chain. Boxed twice: a thin pointer keeps every `Result`
    /// that carries a `ProxyError` small.
    #[allow(clippy::redundant_allocation)]
    source: Option<Box<Box<dyn std::error::Error + Send + Sync>>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let class = match kind {
            ErrorKind::UpstreamTimeout => Some(FailureClass::Timeout),
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol => {
                Some(FailureClass::ServerError)
            }
            _ => None,
        };
        Self {
            kind,
            message: message.into(),
            param: None,
            class,
            reached_upstream: matches!(kind, ErrorKind::UpstreamProtocol),
            upstream_status: None,
            headers: None,
            code: None,
            source: None,
        }
    }

    /// Keeps what caused the error.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(Box::new(source.into()));
        self
    }

    /// The message with the chain of its causes, as the client and the log read it.
    pub fn detail(&self) -> std::borrow::Cow<'_, str> {
        match &self.source {
            None => std::borrow::Cow::Borrowed(&self.message),
            Some(s) => std::borrow::Cow::Owned(format!("{}: {}", self.message, chain(&***s))),
        }
    }

    /// Sets the error's `code` (and its metric label).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 400: the request is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// A 400 naming a field the upstream's format has no counterpart for.
    pub fn unmappable(field: &str, target: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!(
                "`{field}` cannot be sent to this model: its provider ({target}) has no equivalent."
            ),
        )
        .with_param(field)
    }

    /// Sets `retry-after` (whole seconds, rounded up) and `retry-after-ms`.
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.set_retry_after(Some(HeaderValue::from(ms.div_ceil(1000).max(1))));
        self.headers
            .get_or_insert_default()
            .insert("retry-after-ms", HeaderValue::from(ms));
        self
    }

    /// The `retry-after` the client gets (the upstream's, or the gateway's own).
    pub fn retry_after(&self) -> Option<&HeaderValue> {
        self.headers.as_ref()?.get(header::RETRY_AFTER)
    }

    pub fn set_retry_after(&mut self, value: Option<HeaderValue>) {
        match value {
            Some(v) => {
                self.headers
                    .get_or_insert_default()
                    .insert(header::RETRY_AFTER, v);
            }
            None => {
                if let Some(h) = &mut self.headers {
                    h.remove(header::RETRY_AFTER);
                }
            }
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The upstream answered `status`, classified by its provider.
    pub fn upstream(status: StatusCode, class: FailureClass, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::UpstreamStatus, message);
        e.upstream_status = Some(status);
        e.class = Some(class);
        e.reached_upstream = true;
        e
    }

    /// Whether trying again (another backend, later) may succeed.
    pub fn retryable(&self) -> bool {
        self.class.is_some_and(FailureClass::transient)
    }

    /// Whether sending the request again is safe: nothing reached the upstream, or it
    /// answered with an error status or not at all (a first-byte timeout), so no answer was
    /// delivered. A broken or malformed answer (the upstream did the work) is not retried.
    pub fn safe_to_retry(&self) -> bool {
        self.retryable()
            && (!self.reached_upstream
                || matches!(
                    self.kind,
                    ErrorKind::UpstreamStatus | ErrorKind::UpstreamTimeout
                ))
    }

    /// The status returned to the client.
    pub fn status(&self) -> StatusCode {
        use ErrorKind::*;
        match self.kind {
            InvalidJson | InvalidRequest | Unsupported | GuardrailBlocked => {
                StatusCode::BAD_REQUEST
            }
            MissingKey | InvalidKey | ExpiredKey | DisabledKey => StatusCode::UNAUTHORIZED,
            ModelNotAllowed => StatusCode::FORBIDDEN,
            ModelNotFound | UnknownEndpoint => StatusCode::NOT_FOUND,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            NotReady | LimitsUnavailable | GuardrailUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RateLimitRequests | RateLimitTokens | RateLimitParallel | BudgetExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamConnect | UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            UpstreamStatus => match self.class {
                Some(FailureClass::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
                Some(FailureClass::Overloaded) => StatusCode::SERVICE_UNAVAILABLE,
                Some(FailureClass::Timeout) => StatusCode::GATEWAY_TIMEOUT,
                Some(FailureClass::ContextWindowExceeded | FailureClass::ContentFiltered) => {
                    StatusCode::BAD_REQUEST
                }
                // The upstream rejected the gateway's own credential: not the client's fault.
                Some(FailureClass::Authentication | FailureClass::ServerError) | None => {
                    StatusCode::BAD_GATEWAY
                }
                Some(FailureClass::BadRequest) => self
                    .upstream_status
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::BAD_REQUEST),
            },
        }
    }

    /// The status in a dialect: Anthropic says 529 where others say 503 for overload.
    pub fn status_in(&self, dialect: Dialect) -> StatusCode {
        let s = self.status();
        if dialect == Dialect::Anthropic
            && self.class == Some(FailureClass::Overloaded)
            && s == StatusCode::SERVICE_UNAVAILABLE
        {
            return StatusCode::from_u16(529).unwrap_or(s);
        }
        s
    }

    fn openai_type_and_code(&self) -> (&'static str, Option<&'static str>) {
        use ErrorKind::*;
        match self.kind {
            InvalidJson | InvalidRequest | BodyTooLarge => ("invalid_request_error", None),
            BodyTimeout => ("invalid_request_error", Some("request_timeout")),
            Unsupported => ("invalid_request_error", Some("unsupported_parameter")),
            MissingKey | InvalidKey | ExpiredKey | DisabledKey => {
                ("invalid_request_error", Some("invalid_api_key"))
            }
            ModelNotAllowed => ("permission_error", Some("model_not_allowed")),
            ModelNotFound => ("invalid_request_error", Some("model_not_found")),
            UnknownEndpoint => ("invalid_request_error", Some("unknown_url")),
            NotReady => ("server_error", Some("not_ready")),
            RateLimitRequests | RateLimitParallel => ("requests", Some("rate_limit_exceeded")),
            RateLimitTokens => ("tokens", Some("rate_limit_exceeded")),
            BudgetExceeded => ("insufficient_quota", Some("budget_exceeded")),
            GuardrailBlocked => ("invalid_request_error", Some("guardrail_blocked")),
            LimitsUnavailable => ("server_error", Some("limits_unavailable")),
            GuardrailUnavailable => ("server_error", Some("guardrail_unavailable")),
            UpstreamTimeout => ("timeout_error", Some("upstream_timeout")),
            UpstreamConnect | UpstreamProtocol => {
                ("upstream_error", Some(self.kind.metric_label()))
            }
            Internal => ("server_error", None),
            UpstreamStatus => match self.class {
                Some(FailureClass::RateLimited) => {
                    ("rate_limit_error", Some("rate_limit_exceeded"))
                }
                Some(FailureClass::Overloaded) => ("server_error", Some("overloaded")),
                Some(FailureClass::Timeout) => ("timeout_error", Some("upstream_timeout")),
                Some(FailureClass::ContextWindowExceeded) => {
                    ("invalid_request_error", Some("context_length_exceeded"))
                }
                Some(FailureClass::ContentFiltered) => {
                    ("invalid_request_error", Some("content_filter"))
                }
                Some(FailureClass::Authentication) => {
                    ("upstream_error", Some("upstream_authentication"))
                }
                Some(FailureClass::BadRequest) => ("invalid_request_error", None),
                Some(FailureClass::ServerError) | None => {
                    ("upstream_error", Some("upstream_status"))
                }
            },
        }
    }

    fn anthropic_type(&self) -> &'static str {
        match self.status_in(Dialect::Anthropic).as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 => "timeout_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// The error body in a dialect.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        match dialect {
            Dialect::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                let code = self.code.or(code);
                json!({"error": {"message": self.detail(), "type": kind, "param": self.param, "code": code}})
            }
            Dialect::Anthropic => {
                json!({"type": "error", "error": {"type": self.anthropic_type(), "message": self.detail()}})
            }
        }
    }

    /// Renders the error as an HTTP response in a dialect.
    pub fn into_response_in(self, dialect: Dialect) -> Response {
        let status = self.status_in(dialect);
        let body = self.body(dialect).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(h) = self.headers {
            resp.headers_mut().extend(*h);
        }
        resp.extensions_mut()
            .insert(ErrorLabel(self.kind.metric_label()));
        resp
    }

    /// A low-cardinality label: the failure class when there is one, else the kind.
    pub fn metric_label(&self) -> &'static str {
        self.code
            .or(self.class.map(FailureClass::label))
            .unwrap_or(self.kind.metric_label())
    }
}

/// Response extension read by the metrics layer: which error a response carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ErrorLabel(pub &'static str);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.metric_label(), self.message)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

/// An error and every cause under it, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause is kept (`source()`), rendered once after the message in either dialect and
    /// walked whole by `chain`, which is what the log line carries.
    #[test]
    fn the_cause_is_kept_and_rendered_after_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ProxyError::new(ErrorKind::UpstreamConnect, "upstream connection failed")
            .with_source(io);
        assert_eq!(e.detail(), "upstream connection failed: refused");
        assert_eq!(
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .as_deref(),
            Some("refused")
        );
        assert_eq!(
            chain(&e),
            "upstream_connect: upstream connection failed: refused"
        );
        assert_eq!(
            e.body(Dialect::OpenAi)["error"]["message"],
            "upstream connection failed: refused"
        );
        assert_eq!(
            e.body(Dialect::Anthropic)["error"]["message"],
            "upstream connection failed: refused"
        );
        let plain = ProxyError::invalid("bad");
        assert!(std::error::Error::source(&plain).is_none());
        assert_eq!(plain.detail(), "bad");
    }

    /// `retry-after` travels with the other headers: set, replaced, cleared.
    #[test]
    fn retry_after_is_one_header() {
        let mut e = ProxyError::new(ErrorKind::UpstreamStatus, "x").with_retry_after_ms(1500);
        assert_eq!(e.retry_after().map(|v| v.to_str().ok()), Some(Some("2")));
        e.set_retry_after(Some(HeaderValue::from_static("7")));
        let resp = ProxyError::new(ErrorKind::UpstreamStatus, "x")
            .with_retry_after_ms(1500)
            .into_response_in(Dialect::OpenAi);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()["retry-after-ms"], "1500");
        assert_eq!(e.retry_after().map(|v| v.to_str().ok()), Some(Some("7")));
        e.set_retry_after(None);
        assert!(e.retry_after().is_none());
    }

    #[test]
    fn statuses_follow_the_contract() {
        let cases = [
            (ErrorKind::InvalidJson, 400),
            (ErrorKind::Unsupported, 400),
            (ErrorKind::MissingKey, 401),
            (ErrorKind::ExpiredKey, 401),
            (ErrorKind::ModelNotAllowed, 403),
            (ErrorKind::ModelNotFound, 404),
            (ErrorKind::BodyTooLarge, 413),
            (ErrorKind::UpstreamTimeout, 504),
            (ErrorKind::UpstreamConnect, 502),
            (ErrorKind::UpstreamProtocol, 502),
        ];
        for (kind, status) in cases {
            assert_eq!(
                ProxyError::new(kind, "x").status().as_u16(),
                status,
                "{kind:?}"
            );
        }
        let up = |s: u16, c| ProxyError::upstream(StatusCode::from_u16(s).expect("status"), c, "x");
        assert_eq!(up(429, FailureClass::RateLimited).status().as_u16(), 429);
        assert_eq!(up(422, FailureClass::BadRequest).status().as_u16(), 422);
        assert_eq!(up(500, FailureClass::BadRequest).status().as_u16(), 400);
        assert_eq!(
            up(401, FailureClass::Authentication).status().as_u16(),
            502,
            "upstream credential errors are not the client's"
        );
        assert_eq!(up(500, FailureClass::ServerError).status().as_u16(), 502);
        let overloaded = up(529, FailureClass::Overloaded);
        assert_eq!(overloaded.status().as_u16(), 503);
        assert_eq!(overloaded.status_in(Dialect::Anthropic).as_u16(), 529);
        assert_eq!(
            overloaded.body(Dialect::Anthropic)["error"]["type"],
            "overloaded_error"
        );
        assert!(overloaded.retryable() && overloaded.reached_upstream);
        assert!(!up(400, FailureClass::ContextWindowExceeded).retryable());
        let connect = ProxyError::new(ErrorKind::UpstreamConnect, "refused");
        assert_eq!(connect.class, Some(FailureClass::ServerError));
        assert!(!connect.reached_upstream);
    }

    #[test]
    fn bodies_in_each_dialect() {
        let e = ProxyError::new(ErrorKind::InvalidKey, "bad key");
        let o = e.body(Dialect::OpenAi);
        assert_eq!(o["error"]["code"], "invalid_api_key");
        assert_eq!(o["error"]["message"], "bad key");
        let a = e.body(Dialect::Anthropic);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "authentication_error");
        let ctx = ProxyError::upstream(
            StatusCode::BAD_REQUEST,
            FailureClass::ContextWindowExceeded,
            "prompt is too long",
        );
        assert_eq!(
            ctx.body(Dialect::OpenAi)["error"]["code"],
            "context_length_exceeded"
        );
        assert_eq!(ctx.metric_label(), "context_window_exceeded");
    }
}

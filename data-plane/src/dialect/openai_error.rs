//! OpenAI's error envelope (`{"error": {"message", "type", "param", "code"}}`), shared by
//! every OpenAI-format endpoint, classified into failure classes.

use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use super::{class_of_status, mentions_context_window, upstream_error};
use crate::error::{FailureClass, ProxyError};

#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    error: Option<Inner>,
}

#[derive(Deserialize, Default)]
struct Inner {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl Inner {
    fn code(&self) -> &str {
        self.code
            .as_ref()
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }

    fn class(&self, fallback: FailureClass) -> FailureClass {
        let kind = self.kind.as_deref().unwrap_or("");
        match (kind, self.code()) {
            (_, "context_length_exceeded") => FailureClass::ContextWindowExceeded,
            (_, "content_filter" | "content_policy_violation") => FailureClass::ContentFiltered,
            (_, "rate_limit_exceeded") | ("rate_limit_error" | "requests" | "tokens", _) => {
                FailureClass::RateLimited
            }
            (_, "overloaded") => FailureClass::Overloaded,
            _ if fallback == FailureClass::BadRequest
                && self.message.as_deref().is_some_and(mentions_context_window) =>
            {
                FailureClass::ContextWindowExceeded
            }
            _ => fallback,
        }
    }
}

/// Classifies an error answer from an OpenAI-format upstream.
pub(crate) fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<HeaderValue>,
) -> ProxyError {
    let inner = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let class = match class_of_status(status) {
        // The body refines what a 4xx means; 5xx, 429 and credentials stand as they are.
        FailureClass::BadRequest => inner.class(FailureClass::BadRequest),
        c => c,
    };
    upstream_error(status, class, inner.message, body, retry_after)
}

/// An error event inside a stream (`data: {"error": {...}}`).
pub(crate) fn stream_error(data: &[u8]) -> ProxyError {
    let inner = serde_json::from_slice::<Envelope>(data)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let class = inner.class(FailureClass::ServerError);
    let status = match class {
        FailureClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        FailureClass::ContextWindowExceeded | FailureClass::ContentFiltered => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    upstream_error(status, class, inner.message, data, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_status_and_code() {
        let c = |s: u16, body: &str| {
            classify(
                StatusCode::from_u16(s).expect("status"),
                body.as_bytes(),
                None,
            )
            .class
        };
        let ctx = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(c(400, ctx), Some(FailureClass::ContextWindowExceeded));
        let filter = r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        assert_eq!(c(400, filter), Some(FailureClass::ContentFiltered));
        assert_eq!(c(429, "{}"), Some(FailureClass::RateLimited));
        assert_eq!(c(503, "{}"), Some(FailureClass::Overloaded));
        assert_eq!(c(500, "not json"), Some(FailureClass::ServerError));
        assert_eq!(c(401, "{}"), Some(FailureClass::Authentication));
        assert_eq!(
            c(404, r#"{"error":{"message":"no such model"}}"#),
            Some(FailureClass::BadRequest)
        );
        let e = classify(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"bad temperature"}}"#,
            None,
        );
        assert_eq!(e.message, "bad temperature");
        assert!(e.reached_upstream);
    }
}

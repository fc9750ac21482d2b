//! External detectors: a guardrail's `webhook` receives the text of a phase and answers
//! `allow`, `block` or the spans to redact. The protocol (docs/guardrails.md):
//!
//! ```text
//! POST <url>  {"phase": "request", "guardrail": "ns/name", "route": "ns/route",
//!              "model": "gpt-4o", "texts": ["...", "..."]}
//! 200         {"action": "allow"}
//!           | {"action": "block", "detector": "us_ssn"}
//!           | {"action": "redact", "redactions": [{"index": 0, "start": 11, "end": 21,
//!                                                  "label": "PERSON"}]}
//! ```
//!
//! `texts` are the phase's text strings in document order (as the built-in detectors see
//! them); a span's `start` and `end` count Unicode code points of `texts[index]` (what
//! Python's `str` indexes, so Presidio's offsets work as they are). A redacted span becomes
//! `[LABEL]`. A call that fails — timeout, no connection, a status other than 2xx, or an
//! answer that is not the protocol — refuses the request with 503 `guardrail_unavailable`
//! when the guardrail fails closed, and lets it through unchecked when it fails open; either
//! way it is logged and counted in `switchyard_guardrail_webhook_failures_total`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use switchyard_proto::v1 as pb;

use super::Action;
use super::enforce::{Decisions, Guard, GuardError, blocked, count};
use crate::error::{ErrorKind, ProxyError};
use crate::llm::text::{self, Place};
use crate::llm::{Body, Incoming};
use crate::telemetry::metrics::{Metrics, WebhookLabels};
use crate::upstream::Clients;

/// What calling webhooks uses of the runtime: the HTTP clients and the metrics.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub clients: &'a Clients,
    pub metrics: &'a Metrics,
}

/// Largest webhook answer read.
const MAX_ANSWER: usize = 1 << 20;

/// A guardrail's webhook, compiled.
#[derive(Debug)]
pub struct Webhook {
    uri: http::Uri,
    timeout: Duration,
    fail_open: bool,
}

impl Webhook {
    pub fn from_proto(w: &pb::GuardrailWebhook) -> Result<Self, GuardError> {
        let uri: http::Uri = w.url.parse().map_err(|source| GuardError::WebhookUrl {
            url: w.url.clone(),
            source,
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(GuardError::WebhookScheme(w.url.clone()));
        }
        Ok(Self {
            uri,
            timeout: Duration::from_millis(w.timeout_ms.max(1)),
            fail_open: w.fail_open,
        })
    }
}

/// Where a check runs, for the webhook's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Request,
    Response,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// What the webhook is told besides the text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Context {
    pub route: String,
    pub model: String,
}

#[derive(Serialize)]
struct Ask<'a> {
    phase: &'static str,
    guardrail: &'a str,
    route: &'a str,
    model: &'a str,
    texts: &'a [String],
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Answer {
    Allow,
    Block {
        #[serde(default)]
        detector: Option<String>,
    },
    Redact {
        redactions: Vec<Span>,
    },
}

#[derive(Debug, Deserialize)]
struct Span {
    index: usize,
    start: usize,
    end: usize,
    #[serde(default)]
    label: Option<String>,
}

/// Why a call gave no usable answer (the metric's `reason`).
#[derive(Debug)]
enum Failure {
    Timeout,
    Connect(String),
    Status(u16),
    Invalid(String),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Status(_) => "status",
            Self::Invalid(_) => "invalid",
        }
    }

    fn describe(&self, timeout: Duration) -> String {
        match self {
            Self::Timeout => format!("its webhook did not answer within {timeout:?}"),
            Self::Connect(e) => format!("its webhook is unreachable ({e})"),
            Self::Status(s) => format!("its webhook answered with status {s}"),
            Self::Invalid(e) => format!("its webhook's answer is not the protocol ({e})"),
        }
    }
}

impl Webhook {
    async fn ask(&self, clients: &Clients, body: Bytes) -> Result<Answer, Failure> {
        let client = clients
            .client(crate::upstream::ClientSettings::default())
            .map_err(|e| Failure::Connect(crate::error::chain(&e)))?;
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let upstream = |e: ProxyError| match e.kind {
            ErrorKind::UpstreamTimeout => Failure::Timeout,
            ErrorKind::UpstreamConnect => Failure::Connect(e.detail().into_owned()),
            _ => Failure::Invalid(e.detail().into_owned()),
        };
        let resp = crate::upstream::send(&client, req, deadline)
            .await
            .map_err(upstream)?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let bytes = match tokio::time::timeout_at(
            deadline,
            http_body_util::BodyExt::collect(limited),
        )
        .await
        {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(e)) => return Err(Failure::Invalid(format!("reading the answer: {e}"))),
            Ok(Ok(c)) => c.to_bytes(),
        };
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        serde_json::from_slice(&bytes).map_err(|e| Failure::Invalid(e.to_string()))
    }
}

/// The request phase's webhooks, on the prompt's text (after the built-in detectors).
pub(crate) async fn request(
    caller: Caller<'_>,
    guards: &[Arc<Guard>],
    ctx: &Context,
    incoming: &mut Incoming,
    decisions: &mut Decisions,
) -> Result<(), ProxyError> {
    if !guards.iter().any(|g| g.request && g.webhook.is_some()) {
        return Ok(());
    }
    let Body::Raw(raw) = &mut incoming.body else {
        return Ok(());
    };
    let hooked = guards.iter().filter(|g| g.request && g.webhook.is_some());
    let opts = text::Options::default();
    if let Some(new) = check(
        caller,
        hooked,
        Phase::Request,
        ctx,
        raw.text(),
        opts,
        decisions,
    )
    .await?
    {
        *raw = super::enforce::reread(new)?;
    }
    Ok(())
}

/// Runs the webhooks of `guards`, in order, over the texts of a JSON body (strings and
/// encoded text, as [`text::edit`] finds them); a redaction is written back (and seen by the
/// next webhook). `Some`: the body, redacted.
pub(crate) async fn check<'g>(
    caller: Caller<'_>,
    guards: impl Iterator<Item = &'g Arc<Guard>>,
    phase: Phase,
    ctx: &Context,
    json: &str,
    opts: text::Options,
    decisions: &mut Decisions,
) -> Result<Option<String>, ProxyError> {
    // Every text the built-in detectors read: strings, object keys, numbers, decoded text.
    let sent = |_: Place| true;
    let mut texts = Vec::new();
    text::edit(json, opts, &mut |t: &str, p| {
        if sent(p) {
            texts.push(t.to_owned());
        }
        Ok::<_, std::convert::Infallible>(None)
    })
    .map_err(|_| ProxyError::new(ErrorKind::Internal, "a checked body is not JSON"))?;
    if texts.is_empty() {
        return Ok(None);
    }
    let originals = texts.clone();
    let mut changed = false;
    for g in guards {
        let Some(hook) = &g.webhook else { continue };
        let body = serde_json::to_vec(&Ask {
            phase: phase.name(),
            guardrail: &g.id,
            route: &ctx.route,
            model: &ctx.model,
            texts: &texts,
        })
        .map_err(|e| ProxyError::new(ErrorKind::Internal, e.to_string()))?;
        let answer = hook
            .ask(caller.clients, body.into())
            .await
            .and_then(|a| match a {
                Answer::Redact { redactions } => redact(&mut texts, redactions)
                    .map(|()| Answer::Redact {
                        redactions: Vec::new(),
                    })
                    .map_err(Failure::Invalid),
                other => Ok(other),
            });
        match answer {
            Ok(Answer::Allow) => {}
            Ok(Answer::Redact { .. }) => {
                changed = true;
                count(caller.metrics, &g.id, "webhook", Action::Redact);
                decisions.note(&g.id, Action::Redact);
            }
            Ok(Answer::Block { detector }) => {
                let detector = match detector.as_deref().map(detector_name) {
                    Some(d) if !d.is_empty() => format!("webhook:{d}"),
                    _ => "webhook".to_owned(),
                };
                count(caller.metrics, &g.id, "webhook", Action::Block);
                tracing::info!(guardrail = %g.id, detector, phase = phase.name(), "guardrail webhook blocked");
                return Err(blocked(&g.id, &detector, phase.name()));
            }
            Err(f) => {
                caller
                    .metrics
                    .guardrail_webhook_failures
                    .get_or_create(&WebhookLabels {
                        guardrail: g.id.clone(),
                        reason: f.reason(),
                    })
                    .inc();
                let why = f.describe(hook.timeout);
                if hook.fail_open {
                    tracing::warn!(guardrail = %g.id, phase = phase.name(), "guardrail webhook failed; failing open, unchecked: {why}");
                    continue;
                }
                tracing::warn!(guardrail = %g.id, phase = phase.name(), "guardrail webhook failed; failing closed: {why}");
                return Err(ProxyError::new(
                    ErrorKind::GuardrailUnavailable,
                    format!(
                        "Guardrail {} could not check the {}: {why}.",
                        g.id,
                        phase.name()
                    ),
                )
                .with_code("guardrail_unavailable"));
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    // The same walk, in the same order: each text becomes its redacted self.
    let mut next = originals.into_iter().zip(texts);
    let edited = text::edit(json, opts, &mut |_: &str, p| {
        Ok::<_, std::convert::Infallible>(if sent(p) {
            next.next()
                .and_then(|(was, new)| (new != was).then_some(new))
        } else {
            None
        })
    })
    .map_err(|_| ProxyError::new(ErrorKind::Internal, "a checked body is not JSON"))?;
    Ok(edited)
}

/// A webhook's detector name as it may appear in an error: letters, digits, `_` and `-`,
/// at most 40 (it is the webhook's text, so nothing else of it is echoed).
fn detector_name(d: &str) -> String {
    d.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .take(40)
        .collect()
}

/// Replaces each span by `[LABEL]`; overlapping spans of one text merge. `Err`: a span
/// outside its text, said as the message of the webhook's `Failure::Invalid`.
fn redact(texts: &mut [String], mut spans: Vec<Span>) -> Result<(), String> {
    spans.sort_by_key(|s| (s.index, s.start));
    let mut i = 0;
    while i < spans.len() {
        let index = spans[i].index;
        let text = texts
            .get(index)
            .ok_or_else(|| format!("redaction of text {index}, of {}", texts.len()))?;
        let mut ranges: Vec<(Range<usize>, String)> = Vec::new();
        while i < spans.len() && spans[i].index == index {
            let s = &spans[i];
            let r = byte_range(text, s.start, s.end).ok_or_else(|| {
                format!(
                    "redaction {}..{} outside text {index} ({} characters)",
                    s.start,
                    s.end,
                    text.chars().count()
                )
            })?;
            let label = placeholder(s.label.as_deref());
            match ranges.last_mut() {
                Some((last, _)) if r.start < last.end => last.end = last.end.max(r.end),
                _ => ranges.push((r, label)),
            }
            i += 1;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (r, label) in ranges {
            out.push_str(&text[at..r.start]);
            out.push_str(&label);
            at = r.end;
        }
        out.push_str(&text[at..]);
        texts[index] = out;
    }
    Ok(())
}

fn placeholder(label: Option<&str>) -> String {
    let l: String = label
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase();
    if l.is_empty() {
        "[REDACTED]".to_owned()
    } else {
        format!("[{l}]")
    }
}

/// Code points `start..end` of `text` as a byte range.
fn byte_range(text: &str, start: usize, end: usize) -> Option<Range<usize>> {
    if start > end {
        return None;
    }
    let mut offsets = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()));
    let s = offsets.nth(start)?;
    let e = if end == start {
        s
    } else {
        offsets.nth(end - start - 1)?
    };
    Some(s..e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(index: usize, start: usize, end: usize, label: &str) -> Span {
        Span {
            index,
            start,
            end,
            label: Some(label.to_owned()),
        }
    }

    #[test]
    fn spans_count_code_points() {
        let mut texts = vec!["é mail a@b.co ok".to_owned(), "名前は太郎です".to_owned()];
        redact(
            &mut texts,
            vec![span(0, 7, 13, "email_address"), span(1, 3, 5, "PERSON")],
        )
        .expect("in range");
        assert_eq!(texts, ["é mail [EMAIL_ADDRESS] ok", "名前は[PERSON]です"]);
    }

    #[test]
    fn overlapping_spans_merge_and_order_does_not_matter() {
        let mut texts = vec!["call John Smith at 555-0100".to_owned()];
        redact(
            &mut texts,
            vec![
                span(0, 19, 27, "PHONE"),
                span(0, 5, 15, "PERSON"),
                span(0, 10, 15, "PERSON"),
            ],
        )
        .expect("in range");
        assert_eq!(texts, ["call [PERSON] at [PHONE]"]);
    }

    #[test]
    fn spans_outside_the_text_are_refused() {
        let mut texts = vec!["short".to_owned()];
        assert!(redact(&mut texts, vec![span(0, 2, 6, "X")]).is_err());
        assert!(redact(&mut texts, vec![span(1, 0, 1, "X")]).is_err());
        assert!(redact(&mut texts, vec![span(0, 3, 2, "X")]).is_err());
        assert_eq!(texts, ["short"], "nothing changed");
        redact(&mut texts, vec![span(0, 0, 5, "")]).expect("whole text");
        assert_eq!(texts, ["[REDACTED]"]);
    }

    #[test]
    fn answers_parse_by_action() {
        let a: Answer = serde_json::from_str(r#"{"action":"allow"}"#).expect("allow");
        assert!(matches!(a, Answer::Allow));
        let a: Answer =
            serde_json::from_str(r#"{"action":"block","detector":"us ssn!"}"#).expect("block");
        let Answer::Block { detector } = a else {
            panic!("block")
        };
        assert_eq!(detector_name(&detector.expect("named")), "usssn");
        assert!(serde_json::from_str::<Answer>(r#"{"action":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{"action":"redact"}"#).is_err());
    }
}

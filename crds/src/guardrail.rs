//! Guardrail: checks applied to requests and responses.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ResourceStatus;

/// Checks applied to prompts and/or completions: PII, deny patterns, input size.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "Guardrail",
    namespaced,
    status = "ResourceStatus",
    shortname = "gr",
    category = "switchyard",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailSpec {
    /// What the guardrail protects. Unset: every LLMRoute of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<GuardrailTargets>,
    /// Phases the guardrail runs in. Default `[Request]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<GuardrailPhase>,
    /// Personal data detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiSpec>,
    /// Regular expressions (Rust `regex` syntax); a match blocks the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_patterns: Vec<String>,
    /// Words or phrases that block the request wherever they stand as whole words, in any
    /// case (Unicode-aware).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_words: Vec<String>,
    /// Prompt-injection heuristics (a documented pattern set: "ignore previous
    /// instructions", requests for the system prompt, jailbreak personas, spoofed role
    /// markers) on the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_injection: Option<CheckAction>,
    /// When a request asks for structured output against a JSON schema (OpenAI
    /// `response_format`, Responses `text.format`, Anthropic `output_config`), check that the
    /// answer is JSON that validates. A stream is checked when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<CheckAction>,
    /// Largest prompt accepted, in (estimated) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// An external detector (Presidio, a moderation service, your own): the text of each
    /// phase is POSTed to it and it answers allow, block or the spans to redact. The protocol
    /// is in docs/guardrails.md. Answers (non-streamed) only in the Response phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// An external detector called over HTTP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// `http` or `https` URL the check is POSTed to.
    pub url: String,
    /// How long to wait for its answer, such as `500ms`. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What a failed call (timeout, refused, an error status, an answer that is not the
    /// protocol) does: `Closed` (default) refuses the request with 503
    /// `guardrail_unavailable`; `Open` lets it through unchecked, logged and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// Whether a guardrail that cannot decide lets traffic through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Refuse what could not be checked.
    Closed,
    /// Let it through unchecked.
    Open,
}

/// The routes and keys a guardrail applies to (either matching is enough), in its namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailTargets {
    /// LLMRoutes by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// LLMRoutes by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_selector: Option<crate::KeySelector>,
    /// VirtualKeys by name: every request made with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// VirtualKeys by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_selector: Option<crate::KeySelector>,
}

/// What a check that can only block or alert does when it fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckAction {
    /// `Block` (default) or `Alert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PiiAction>,
}

/// When a guardrail runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GuardrailPhase {
    /// On the prompt, before it goes upstream.
    Request,
    /// On the completion, before it reaches the client (streaming too).
    Response,
}

/// Personal data detection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PiiSpec {
    /// Entity types to detect.
    pub entities: Vec<PiiEntity>,
    /// What to do on detection. Default `Redact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PiiAction>,
}

/// Kinds of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PiiEntity {
    /// Email addresses.
    Email,
    /// Phone numbers.
    Phone,
    /// Payment card numbers (Luhn-checked).
    CreditCard,
    /// US social security numbers.
    Ssn,
    /// International bank account numbers.
    Iban,
    /// IPv4 and IPv6 addresses.
    IpAddress,
    /// API keys and other secrets.
    Secret,
}

/// Action on detected personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PiiAction {
    /// Replace with a placeholder naming the entity, e.g. `[EMAIL]`.
    Redact,
    /// Replace every character but the last four with `*`.
    Mask,
    /// Reject the request (or end the stream) with `guardrail_blocked`.
    Block,
    /// Let it through; log and count.
    Alert,
}

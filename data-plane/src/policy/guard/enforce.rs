//! Guardrails in the config and on the request path: which apply to a request (by route and
//! by key), and the request phase (prompt too long, deny patterns, personal data found in the
//! prompt's text: block, redact or mask, alert).
//!
//! What is checked is every text the model reads ([`crate::llm::text`]): every string, key
//! and number of the body at any depth (messages, system prompts, documents, tool
//! descriptions and schemas, tool inputs and results), JSON inside strings and encoded text
//! payloads, read by the one JSON reader every stage shares. A body that reader refuses never
//! gets this far (400), so no shape of request skips the checks. Only a text with a finding
//! is rewritten; the rest of the body stays the client's bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderValue;
use switchyard_proto::v1 as pb;

use super::detect::Entity;
use super::phrases::DenyWords;
use super::schema::SchemaCheck;
use super::{Action, Finding, Rules};
use crate::error::{ErrorKind, ProxyError};
use crate::llm::raw::RawObject;
use crate::llm::text::{self, Place, WalkError};
use crate::llm::{Body, Format, Incoming};
use crate::policy::auth::KeyEntry;
use crate::telemetry::metrics::{GuardrailLabels, Metrics};

/// One Guardrail, compiled.
#[derive(Debug)]
pub struct Guard {
    pub id: String,
    pub request: bool,
    pub response: bool,
    pub rules: Rules,
    deny: Option<regex::RegexSet>,
    deny_words: Option<DenyWords>,
    /// What the prompt-injection heuristics do (`None`: off).
    injection: Option<Action>,
    /// What an answer that misses its requested JSON schema gets (`None`: not checked).
    json_schema: Option<Action>,
    max_input_tokens: u64,
    /// An external detector, called after the built-in ones.
    pub webhook: Option<super::webhook::Webhook>,
    keys: Vec<String>,
    key_selector: BTreeMap<String, String>,
    routes: Vec<String>,
}

/// Why a guardrail as sent cannot run here (the config NACKs it, naming the guardrail).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("unknown PII action {0:?}")]
    UnknownPiiAction(String),
    #[error("unknown PII entity {0:?}")]
    UnknownEntity(String),
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("deny patterns")]
    DenyPatterns(#[source] regex::Error),
    #[error("deny words")]
    DenyWords(#[source] aho_corasick::BuildError),
    #[error("webhook url {url:?}")]
    WebhookUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("webhook url {0:?}: http or https")]
    WebhookScheme(String),
}

impl Guard {
    pub fn from_proto(g: &pb::Guardrail) -> Result<Self, GuardError> {
        let action = match g.pii_action.as_str() {
            "" => Action::Redact,
            a => Action::from_name(a).ok_or_else(|| GuardError::UnknownPiiAction(a.to_owned()))?,
        };
        let mut rules = Rules::default();
        for name in &g.pii_entities {
            let e =
                Entity::from_name(name).ok_or_else(|| GuardError::UnknownEntity(name.clone()))?;
            rules.add(e, action);
        }
        let deny = if g.deny_patterns.is_empty() {
            None
        } else {
            Some(
                regex::RegexSetBuilder::new(&g.deny_patterns)
                    .size_limit(1 << 22)
                    .build()
                    .map_err(GuardError::DenyPatterns)?,
            )
        };
        let deny_words = if g.deny_words.is_empty() {
            None
        } else {
            Some(DenyWords::new(&g.deny_words).map_err(GuardError::DenyWords)?)
        };
        let block_or_alert = |a: &str| match a {
            "" => Ok(None),
            a => Action::from_name(a)
                .map(Some)
                .ok_or_else(|| GuardError::UnknownAction(a.to_owned())),
        };
        let injection = block_or_alert(&g.prompt_injection)?;
        let json_schema = block_or_alert(&g.json_schema)?;
        let webhook = g
            .webhook
            .as_ref()
            .map(super::webhook::Webhook::from_proto)
            .transpose()?;
        Ok(Self {
            id: g.id.clone(),
            request: g.request_phase,
            response: g.response_phase,
            rules,
            deny,
            deny_words,
            injection,
            json_schema,
            max_input_tokens: g.max_input_tokens,
            webhook,
            keys: g.keys.clone(),
            key_selector: g.key_selector.clone().into_iter().collect(),
            routes: g.routes.clone(),
        })
    }

    /// Whether the guardrail protects a key it targets: one it names, or one its selector
    /// matches — of its own namespace only (a key's labels are its namespace's to choose,
    /// so another namespace's selector must not reach it).
    fn selects_key(&self, key: &KeyEntry) -> bool {
        let own = self.id.split_once('/').map(|(ns, _)| ns) == Some(key.namespace());
        own && (self.keys.contains(&key.id)
            || (!self.key_selector.is_empty()
                && self
                    .key_selector
                    .iter()
                    .all(|(k, v)| key.labels.get(k) == Some(v))))
    }
}

/// The config's guardrails, indexed by what they protect.
#[derive(Debug, Default)]
pub struct GuardSet {
    by_route: HashMap<String, Vec<Arc<Guard>>>,
    /// Guardrails that name keys (checked against every request's key).
    by_key: Vec<Arc<Guard>>,
}

impl GuardSet {
    pub fn new(guards: impl IntoIterator<Item = Guard>) -> Self {
        let mut set = Self::default();
        for g in guards {
            let g = Arc::new(g);
            for r in &g.routes {
                set.by_route.entry(r.clone()).or_default().push(g.clone());
            }
            if !g.keys.is_empty() || !g.key_selector.is_empty() {
                set.by_key.push(g);
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.by_route.is_empty() && self.by_key.is_empty()
    }

    /// The guardrails of a request (none: no allocation).
    pub fn of(&self, route: &str, key: &KeyEntry) -> Vec<Arc<Guard>> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<Arc<Guard>> = self.by_route.get(route).cloned().unwrap_or_default();
        for g in &self.by_key {
            if g.selects_key(key) && !out.iter().any(|o| Arc::ptr_eq(o, g)) {
                out.push(g.clone());
            }
        }
        out
    }
}

/// Fields of a request body that carry the conversation (the audit trail's prompt text).
pub(super) const TEXT_FIELDS: &[&str] = &["messages", "system", "prompt", "input", "instructions"];

/// Why a walk over a request's texts stopped.
enum Stop {
    /// A personal-data detector whose action is `Block`.
    Entity(Entity),
    /// A deny pattern, deny word or injection heuristic: the guardrail and the detector.
    Denied(String, String),
}

/// A walk that could not read a body it is given (the front door read it before: a bug,
/// refused rather than let through unchecked).
fn unreadable(e: crate::llm::json::JsonError) -> ProxyError {
    ProxyError::new(
        ErrorKind::InvalidJson,
        format!("The request body is not valid JSON: {e}"),
    )
}

/// The object after an edit, read again by the same reader (or a 500: the edit is ours).
pub(super) fn reread(new: String) -> Result<RawObject, ProxyError> {
    RawObject::parse(bytes::Bytes::from(new)).map_err(|e| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("a guardrail's edit is not a JSON object: {e}"),
        )
    })
}

/// What the guardrails did to a request, for the `x-switchyard-guardrails` header.
#[derive(Debug, Default)]
pub(crate) struct Decisions(Vec<(String, Action)>);

impl Decisions {
    pub(super) fn note(&mut self, guard: &str, action: Action) {
        match self.0.iter_mut().find(|(g, _)| g == guard) {
            Some((_, a)) => *a = (*a).max(action),
            None => self.0.push((guard.to_owned(), action)),
        }
    }

    /// `ns/name=redact, ns/other=alert`; `None` when nothing fired.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let v: Vec<String> = self
            .0
            .iter()
            .map(|(g, a)| format!("{g}={}", a.name().to_ascii_lowercase()))
            .collect();
        HeaderValue::from_str(&v.join(", ")).ok()
    }
}

pub(super) fn count(metrics: &Metrics, guard: &str, detector: &str, action: Action) {
    metrics
        .guardrail_decisions
        .get_or_create(&GuardrailLabels {
            guardrail: guard.to_owned(),
            detector: detector.to_owned(),
            action: action.name(),
        })
        .inc();
}

/// The error of a blocked request or stream: names the guardrail and the detector, never
/// the text that matched.
pub(crate) fn blocked(guard: &str, detector: &str, phase: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::GuardrailBlocked,
        format!("Guardrail {guard} blocked the {phase}: detector {detector} matched."),
    )
    .with_code("guardrail_blocked")
}

/// The request phase. `estimate_input` counts the prompt's tokens (only called when a
/// guardrail caps them).
pub(crate) fn request(
    metrics: &Metrics,
    guards: &[Arc<Guard>],
    incoming: &mut Incoming,
    estimate_input: impl FnOnce(&Incoming) -> u64,
    decisions: &mut Decisions,
) -> Result<(), ProxyError> {
    let guards: Vec<Arc<Guard>> = guards.iter().filter(|g| g.request).cloned().collect();
    if guards.is_empty() {
        return Ok(());
    }
    if let Some(cap) = guards
        .iter()
        .map(|g| g.max_input_tokens)
        .filter(|&c| c > 0)
        .min()
    {
        let n = estimate_input(incoming);
        if let Some(g) = guards
            .iter()
            .find(|g| g.max_input_tokens > 0 && n > g.max_input_tokens)
        {
            count(metrics, &g.id, "maxInputTokens", Action::Block);
            tracing::info!(guardrail = %g.id, tokens = n, cap, "guardrail blocked a request: prompt too long");
            let mut e = blocked(&g.id, "maxInputTokens", "request");
            e.message = format!(
                "{} The prompt has about {n} tokens; the limit is {}.",
                e.message, g.max_input_tokens
            );
            return Err(e);
        }
    }
    let rules = Rules::union(guards.iter().map(|g| &g.rules));
    let Body::Raw(raw) = &mut incoming.body else {
        return Ok(());
    };
    let mut findings = Vec::new();
    let edited = text::edit(
        raw.text(),
        text::Options::default(),
        &mut |t: &str, _: Place| {
            let norm = super::normalize::Normalized::new(t);
            for g in &guards {
                if let Some(set) = &g.deny
                    && let Some(i) = set.matches(norm.text()).iter().next()
                {
                    return Err(Stop::Denied(g.id.clone(), format!("denyPatterns[{i}]")));
                }
                if let Some(words) = &g.deny_words
                    && words.find(norm.text()).is_some()
                {
                    return Err(Stop::Denied(g.id.clone(), "denyWords".to_owned()));
                }
                if let Some(action) = g.injection
                    && let Some(name) = super::phrases::injection(norm.text())
                {
                    let detector = format!("promptInjection:{name}");
                    if action == Action::Block {
                        return Err(Stop::Denied(g.id.clone(), detector));
                    }
                    count(metrics, &g.id, &detector, Action::Alert);
                    decisions.note(&g.id, Action::Alert);
                    tracing::warn!(guardrail = %g.id, detector, "guardrail alert: the prompt looks like an injection");
                }
            }
            if rules.is_empty() {
                return Ok(None);
            }
            super::apply_normalized(t, &norm, &rules, &mut findings).map_err(Stop::Entity)
        },
    );
    match edited {
        Ok(None) => {}
        Ok(Some(new)) => *raw = reread(new)?,
        Err(WalkError::Json(e)) => return Err(unreadable(e)),
        Err(WalkError::Stop(Stop::Entity(entity))) => {
            let g = owner(&guards, entity, Action::Block);
            count(metrics, g, entity.name(), Action::Block);
            tracing::info!(guardrail = %g, detector = entity.name(), "guardrail blocked a request");
            return Err(blocked(g, entity.name(), "request"));
        }
        Err(WalkError::Stop(Stop::Denied(g, detector))) => {
            count(metrics, &g, &detector, Action::Block);
            tracing::info!(guardrail = %g, detector, "guardrail blocked a request");
            return Err(blocked(&g, &detector, "request"));
        }
    }
    record(metrics, &guards, &findings, decisions);
    Ok(())
}

/// The prompt's text (every text of its conversation fields, a line each), as the audit
/// trail records it.
pub(crate) fn prompt_text(incoming: &Incoming) -> String {
    let mut out = String::new();
    if let Some(raw) = incoming.raw() {
        for field in TEXT_FIELDS {
            if let Some(json) = raw.field_text(field) {
                text::words(json, &mut out);
            }
        }
    }
    out
}

/// Counts and logs findings, attributed to every guardrail that looks for them.
pub(crate) fn record(
    metrics: &Metrics,
    guards: &[Arc<Guard>],
    findings: &[Finding],
    decisions: &mut Decisions,
) {
    for f in findings {
        for g in guards.iter().filter(|g| g.rules.has(f.entity)) {
            count(metrics, &g.id, f.entity.name(), f.action);
            decisions.note(&g.id, f.action);
            if f.action == Action::Alert {
                tracing::warn!(guardrail = %g.id, detector = f.entity.name(), "guardrail alert: personal data or a secret passed");
            }
        }
    }
}

/// The guardrail whose rule for `entity` is `action` (the one an error names).
fn owner(guards: &[Arc<Guard>], entity: Entity, action: Action) -> &str {
    guards
        .iter()
        .find(|g| g.rules.has(entity) && g.rules.action(entity) == action)
        .or_else(|| guards.first())
        .map_or("", |g| g.id.as_str())
}

/// The response phase of a request: its guardrails that check answers, their rules, and the
/// JSON schema the answer must follow when the request asked for one and a guardrail checks
/// it.
#[derive(Debug)]
pub(crate) struct ResponsePhase {
    pub guards: Vec<Arc<Guard>>,
    pub rules: Rules,
    pub schema: Option<SchemaRule>,
    /// Some guardrail calls a webhook on answers (whole answers only).
    hooked: bool,
    ctx: super::webhook::Context,
}

/// A requested JSON schema, and the guardrail that checks answers against it.
#[derive(Debug)]
pub(crate) struct SchemaRule {
    check: SchemaCheck,
    action: Action,
    guard: String,
    format: Format,
}

impl ResponsePhase {
    /// `None` when no guardrail of the request checks answers. `Err`: the request asked for
    /// a schema that is not one, or a stream from a route whose answers a webhook checks
    /// (400).
    pub(crate) fn of(
        guards: &[Arc<Guard>],
        incoming: &Incoming,
        ctx: &super::webhook::Context,
    ) -> Result<Option<Self>, ProxyError> {
        let schema_guard = guards
            .iter()
            .filter_map(|g| g.json_schema.map(|a| (g, a)))
            .max_by_key(|(_, a)| *a);
        let schema = match (schema_guard, incoming.raw()) {
            (Some((g, action)), Some(raw)) => {
                match super::schema::requested(incoming.format, raw) {
                    Some(s) => Some(SchemaRule {
                        check: SchemaCheck::new(&s)
                            .map_err(|e| ProxyError::invalid(e.to_string()))?,
                        action,
                        guard: g.id.clone(),
                        format: incoming.format,
                    }),
                    None => None,
                }
            }
            _ => None,
        };
        let guards: Vec<Arc<Guard>> = guards.iter().filter(|g| g.response).cloned().collect();
        let rules = Rules::union(guards.iter().map(|g| &g.rules));
        let hooked = guards.iter().find(|g| g.webhook.is_some());
        if let Some(g) = hooked
            && incoming.facts.stream
        {
            return Err(ProxyError::new(
                ErrorKind::Unsupported,
                format!(
                    "Guardrail {} checks answers with a webhook, which needs the whole answer: ask without `stream`.",
                    g.id
                ),
            ));
        }
        let hooked = hooked.is_some();
        Ok(
            (!rules.is_empty() || schema.is_some() || hooked).then(|| Self {
                hooked,
                guards,
                rules,
                schema,
                ctx: ctx.clone(),
            }),
        )
    }

    /// A phase of built-in detectors only (no guardrail, schema or webhook), for tests of
    /// what runs on it.
    #[cfg(test)]
    pub(crate) fn of_rules(rules: Rules) -> Self {
        Self {
            guards: Vec::new(),
            rules,
            schema: None,
            hooked: false,
            ctx: super::webhook::Context::default(),
        }
    }

    /// A whole answer (the client's JSON) through the built-in detectors, then the webhooks.
    pub(crate) async fn answer(
        &self,
        caller: super::webhook::Caller<'_>,
        body: bytes::Bytes,
        decisions: &mut Decisions,
    ) -> Result<bytes::Bytes, ProxyError> {
        let body = self
            .json(caller.metrics, &body, decisions)?
            .map_or(body, bytes::Bytes::from);
        if !self.hooked {
            return Ok(body);
        }
        let json = std::str::from_utf8(&body).map_err(crate::dialect::upstream_garbage)?;
        let changed = Box::pin(super::webhook::check(
            caller,
            self.guards.iter(),
            super::webhook::Phase::Response,
            &self.ctx,
            json,
            text::Options::default(),
            decisions,
        ))
        .await?;
        Ok(changed.map_or(body, bytes::Bytes::from))
    }

    /// Checks an answer's text against the requested schema: `Err` when a `Block` guardrail
    /// refuses it; an `Alert` is counted and logged.
    pub(crate) fn check_schema(
        &self,
        metrics: &Metrics,
        text: &str,
        decisions: &mut Decisions,
    ) -> Result<(), ProxyError> {
        let Some(s) = &self.schema else {
            return Ok(());
        };
        let Err(why) = s.check.check(text) else {
            return Ok(());
        };
        count(metrics, &s.guard, "jsonSchema", s.action);
        decisions.note(&s.guard, s.action);
        if s.action == Action::Block {
            tracing::info!(guardrail = %s.guard, reason = %why, "guardrail blocked a response: schema");
            let mut e = blocked(&s.guard, "jsonSchema", "response");
            e.message = format!("{} {why}.", e.message);
            return Err(e);
        }
        tracing::warn!(guardrail = %s.guard, reason = %why, "guardrail alert: the answer does not follow its schema");
        Ok(())
    }

    /// The error that ends a blocked answer (counted and logged).
    pub(crate) fn blocked(&self, metrics: &Metrics, entity: Entity) -> ProxyError {
        let g = owner(&self.guards, entity, Action::Block);
        count(metrics, g, entity.name(), Action::Block);
        tracing::info!(guardrail = %g, detector = entity.name(), "guardrail blocked a response");
        blocked(g, entity.name(), "response")
    }

    /// The error that ends a stream whose tool call's arguments are too long to be held and
    /// checked whole (counted and logged).
    pub(crate) fn too_long(&self, metrics: &Metrics, why: &str) -> ProxyError {
        let g = self.guards.first().map_or("", |g| g.id.as_str());
        count(metrics, g, "toolArguments", Action::Block);
        tracing::info!(guardrail = %g, why, "guardrail blocked a response: a stream held more than it checks");
        let mut e = blocked(g, "toolArguments", "response");
        e.message = format!("{} {why}", e.message);
        e
    }

    /// A whole answer's JSON: every text walked as in the request phase, by the same
    /// reader (an answer it cannot read is the upstream's garbage, 502, never unchecked).
    /// `None`: unchanged.
    pub(crate) fn json(
        &self,
        metrics: &Metrics,
        body: &[u8],
        decisions: &mut Decisions,
    ) -> Result<Option<Vec<u8>>, ProxyError> {
        let json = std::str::from_utf8(body).map_err(crate::dialect::upstream_garbage)?;
        if let Some(s) = &self.schema {
            let answer = serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| super::schema::answer_text(s.format, &v))
                .unwrap_or_default();
            self.check_schema(metrics, &answer, decisions)?;
        }
        if self.rules.is_empty() {
            return Ok(None);
        }
        let mut findings = Vec::new();
        let edited = text::edit(json, text::Options::default(), &mut |t: &str, _| {
            super::apply(t, &self.rules, &mut findings)
        });
        let edited = match edited {
            Ok(e) => e,
            Err(WalkError::Stop(entity)) => return Err(self.blocked(metrics, entity)),
            Err(WalkError::Json(e)) => return Err(crate::dialect::upstream_garbage(e)),
        };
        record(metrics, &self.guards, &findings, decisions);
        Ok(edited.map(String::into_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(id: &str, keys: &[&str], selector: &[(&str, &str)]) -> Guard {
        Guard::from_proto(&pb::Guardrail {
            id: id.into(),
            request_phase: true,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            key_selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            pii_entities: vec!["Email".into()],
            ..Default::default()
        })
        .expect("guard")
    }

    /// A Guardrail's key selector and key list reach only keys of its own namespace: a key's
    /// labels are chosen by its namespace's owner, and copying them gains nothing elsewhere.
    #[test]
    fn key_targets_match_only_their_own_namespace() {
        let set = GuardSet::new([
            guard("evil/tap", &[], &[("team", "payments")]),
            guard("victim/pii", &["victim/app"], &[]),
        ]);
        let key = |id: &str| KeyEntry {
            id: id.into(),
            labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            ..KeyEntry::default()
        };
        let ids = |k: &KeyEntry| -> Vec<String> {
            set.of("victim/chat", k)
                .iter()
                .map(|g| g.id.clone())
                .collect()
        };
        assert_eq!(ids(&key("victim/app")), ["victim/pii"]);
        assert_eq!(ids(&key("victim/other")), Vec::<String>::new());
        assert_eq!(ids(&key("evil/own")), ["evil/tap"], "its own keys only");
    }
}

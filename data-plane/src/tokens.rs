//! Input-token estimates taken before the call, for token limits and budget reservations.
//!
//! OpenAI models (and fine-tunes of them) are counted exactly with their BPE encoding
//! (`tiktoken-rs`: `o200k_base` for gpt-4o, gpt-4.1, gpt-5 and the o-series, `cl100k_base`
//! for gpt-4 and gpt-3.5), plus the chat format's fixed overhead: 3 tokens per message, 1 per
//! name and 3 to prime the reply. Every other model (Claude, Llama, Mistral...) has no public
//! or no single tokenizer; those get one token per four bytes of text, the rule of thumb
//! OpenAI and Anthropic both publish for English, with the same per-message overhead. The
//! estimate is only a reservation: the usage the provider reports replaces it afterwards.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{LazyLock, Mutex};

use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::llm::Estimate;
use crate::llm::{Incoming, Op, Part, Request};

/// Output tokens reserved when the request sets no `max_tokens`/`max_completion_tokens`.
pub(crate) const DEFAULT_OUTPUT_ESTIMATE: u64 = 256;

/// The BPE a model uses, if it is an OpenAI model.
pub(crate) fn tokenizer_of(model: &str) -> Option<Tokenizer> {
    get_tokenizer(model)
}

/// Tokenizers whose load was started, and those that finished loading.
static STARTED: Mutex<Vec<Tokenizer>> = Mutex::new(Vec::new());
static LOADED: Mutex<Vec<Tokenizer>> = Mutex::new(Vec::new());

/// Loads BPE tables (o200k: ~0.2 s and ~35 MB) on a blocking thread, once each, so no request
/// waits for them (the gateway reports ready only once they are in, see [`loaded`]). Called
/// with the tokenizers of the OpenAI models of a config that has token limits or budgets;
/// other configs load nothing.
pub(crate) fn warm_up(tokenizers: &[Tokenizer]) {
    let todo: Vec<Tokenizer> = {
        let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
        let todo: Vec<Tokenizer> = tokenizers
            .iter()
            .copied()
            .filter(|t| !started.contains(t))
            .collect();
        started.extend(&todo);
        todo
    };
    if todo.is_empty() {
        return;
    }
    let load = move || {
        for t in todo {
            if let Err(e) = tiktoken_rs::bpe_for_tokenizer(t) {
                tracing::warn!(error = %e, "loading a BPE tokenizer failed; estimates fall back to 4 bytes per token");
            }
            LOADED.lock().unwrap_or_else(|p| p.into_inner()).push(t);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(load)),
        Err(_) => load(),
    }
}

/// Whether every tokenizer in the list finished loading.
pub(crate) fn loaded(tokenizers: &[Tokenizer]) -> bool {
    let loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    tokenizers.iter().all(|t| loaded.contains(t))
}

/// Counts of long texts, by tokenizer and text hash. System prompts and conversation history
/// come back request after request; counting them again costs ~25 us per KB, looking them up
/// well under one. Bounded: cleared when full. The hash is foldhash with a random seed, about
/// fifteen times cheaper than SipHash on a 1 KB prompt; a collision would only misestimate a
/// count that the provider's usage corrects after the call.
struct CountCache {
    hasher: foldhash::fast::RandomState,
    counts: Mutex<HashMap<u64, u32>>,
}

const CACHE_MIN_BYTES: usize = 256;
const CACHE_ENTRIES: usize = 16_384;

fn cache() -> &'static CountCache {
    static CACHE: LazyLock<CountCache> = LazyLock::new(|| CountCache {
        hasher: foldhash::fast::RandomState::default(),
        counts: Mutex::new(HashMap::new()),
    });
    &CACHE
}

fn bpe_count(t: Tokenizer, text: &str) -> u64 {
    let Ok(bpe) = tiktoken_rs::bpe_for_tokenizer(t) else {
        return approximate(text);
    };
    if text.len() < CACHE_MIN_BYTES {
        return bpe.count_ordinary(text) as u64;
    }
    let c = cache();
    let key = c.hasher.hash_one((t, text));
    if let Some(n) = c.counts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return u64::from(*n);
    }
    let n = bpe.count_ordinary(text);
    let mut counts = c.counts.lock().unwrap_or_else(|p| p.into_inner());
    if counts.len() >= CACHE_ENTRIES {
        counts.clear();
    }
    counts.insert(key, u32::try_from(n).unwrap_or(u32::MAX));
    n as u64
}

/// Counts the tokens of a text for a model.
pub(crate) fn count(model: &str, text: &str) -> u64 {
    match tokenizer_of(model) {
        Some(t) => bpe_count(t, text),
        None => approximate(text),
    }
}

/// One token per four bytes, rounded up.
pub(crate) fn approximate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Estimates a request's input tokens (exactly for OpenAI models: each message's text is
/// encoded on its own, as the chat format does) and reserves its output tokens.
pub(crate) fn estimate_request(req: &Request, upstream_model: &str) -> Estimate {
    let t = tokenizer_of(upstream_model);
    let n = |text: &str| match t {
        Some(t) => bpe_count(t, text),
        None => approximate(text),
    };
    let mut input = 3u64;
    for m in &req.messages {
        input += 3;
        if let Some(name) = &m.name {
            input += 1 + n(name);
        }
        for p in &m.parts {
            input += match p {
                Part::Text { text, .. } | Part::Thinking { text, .. } => n(text),
                Part::ToolCall(c) => n(&c.name) + n(&c.arguments),
                Part::ToolResult(r) => n(&r.text()),
                // Images and documents: a flat allowance (OpenAI's low-detail image cost).
                Part::Image(_) | Part::Document { .. } => 85,
                Part::RedactedThinking { .. } => 0,
            };
        }
    }
    for tool in &req.tools {
        input += n(&tool.name)
            + tool.description.as_deref().map_or(0, n)
            + n(&tool.parameters.to_string());
    }
    let output = req
        .max_output_tokens
        .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from);
    Estimate { input, output }
}

/// Estimates an incoming request before routing's answer is known: decodes its body (only
/// called when a token limit or a budget applies).
pub(crate) fn estimate_incoming(incoming: &Incoming, upstream_model: &str) -> Estimate {
    let Some(raw) = incoming.raw() else {
        return Estimate::default();
    };
    if incoming.op == Op::Embed {
        return estimate_texts(&crate::dialect::embeddings::texts(raw), upstream_model);
    }
    let decoded = crate::dialect::codec(incoming.format)
        .generation()
        .and_then(|g| (g.decode)(raw));
    match decoded {
        Ok((r, _)) => estimate_request(&r, upstream_model),
        // The body was checked for shape; a translation error surfaces later with its 400.
        Err(_) => Estimate {
            input: approximate(raw.text()),
            output: incoming
                .facts
                .max_output_tokens
                .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from),
        },
    }
}

/// Estimates an embeddings request: its inputs' tokens, no output.
pub(crate) fn estimate_texts<S: AsRef<str>>(texts: &[S], upstream_model: &str) -> Estimate {
    Estimate {
        input: texts
            .iter()
            .map(|t| count(upstream_model, t.as_ref()))
            .sum(),
        output: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_use_their_bpe() {
        // "hello world" is two tokens in both o200k_base and cl100k_base.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("gpt-4", "hello world"), 2);
        // A word the BPE splits differently from the four-byte rule.
        let text = "Switchyard tokenizes antidisestablishmentarianism";
        assert_ne!(count("gpt-4o-mini", text), approximate(text));
    }

    #[test]
    fn long_texts_are_counted_once_and_cached_per_tokenizer() {
        let text = "Switchyard counts long system prompts once. ".repeat(20);
        let first = count("gpt-4o", &text);
        assert_eq!(count("gpt-4o", &text), first);
        // Another tokenizer does not see the o200k count.
        let cl = count("gpt-4", &text);
        let bpe = tiktoken_rs::bpe_for_tokenizer(Tokenizer::Cl100kBase).expect("cl100k");
        assert_eq!(cl, bpe.count_ordinary(&text) as u64);
    }

    #[test]
    fn other_models_are_approximated() {
        assert_eq!(count("claude-sonnet-4", "hello world!"), 3);
        assert_eq!(count("llama-3.1-8b", ""), 0);
    }

    #[test]
    fn chat_estimate_counts_overhead_and_reserves_output() {
        use crate::llm::{Message, Role};
        let mut user = Message::text(Role::User, "hello world");
        user.name = Some("ann".into());
        let req = Request {
            model: "gpt-4o".into(),
            max_output_tokens: Some(50),
            messages: vec![Message::text(Role::System, "hello world"), user],
            ..Default::default()
        };
        let e = estimate_request(&req, "gpt-4o");
        // 2 + 2 text tokens, 3 + 3 + 1 (+1 for "ann") + 3 overhead.
        assert_eq!(e.input, 15, "{e:?}");
        assert_eq!(e.output, 50);
        let req = Request {
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };
        assert_eq!(estimate_request(&req, "x").output, DEFAULT_OUTPUT_ESTIMATE);
    }
}

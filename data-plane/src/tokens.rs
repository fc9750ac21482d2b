//! Input-token estimates taken before the call, for token limits and budget reservations.
//!
//! OpenAI models (and fine-tunes of them) are counted exactly with their BPE encoding
//! (`tiktoken-rs`: `o200k_base` for gpt-4o, gpt-4.1, gpt-5 and the o-series, `cl100k_base`
//! for gpt-4 and gpt-3.5), plus the chat format's fixed overhead: 3 tokens per message, 1 per
//! name and 3 to prime the reply. Every other model (Claude, Llama, Mistral...) has no public
//! or no single tokenizer; those get one token per four bytes of text, the rule of thumb
//! OpenAI and Anthropic both publish for English, with the same per-message overhead. The
//! estimate is only a reservation: the usage the provider reports replaces it afterwards.

use tiktoken_rs::tokenizer::get_tokenizer;

use crate::limits::Estimate;
use crate::openai::{ChatRequest, MessageContent};

/// Output tokens reserved when the request sets no `max_tokens`/`max_completion_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 256;

/// Loads the BPE tables (about 0.2 s and 30 MB) on a blocking thread, once, so the first
/// request that needs an estimate does not pay for it. Called when a config with token limits
/// or budgets arrives; configs without them never load the tables.
pub fn warm_up() {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let load = || {
        for t in [
            tiktoken_rs::tokenizer::Tokenizer::O200kBase,
            tiktoken_rs::tokenizer::Tokenizer::Cl100kBase,
        ] {
            if let Err(e) = tiktoken_rs::bpe_for_tokenizer(t) {
                tracing::warn!(error = %e, "loading a BPE tokenizer failed; estimates fall back to 4 bytes per token");
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(load)),
        Err(_) => load(),
    }
}

/// Counts the tokens of a text for a model.
pub fn count(model: &str, text: &str) -> u64 {
    match get_tokenizer(model) {
        Some(t) => match tiktoken_rs::bpe_for_tokenizer(t) {
            Ok(bpe) => bpe.count_ordinary(text) as u64,
            Err(_) => approximate(text),
        },
        None => approximate(text),
    }
}

/// One token per four bytes, rounded up.
pub fn approximate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Estimates a chat request's input tokens (exactly for OpenAI models) and reserves its
/// output tokens.
pub fn estimate_chat(req: &ChatRequest, upstream_model: &str) -> Estimate {
    let mut text = String::new();
    let mut overhead = 3u64;
    for m in &req.messages {
        overhead += 3;
        if m.name.is_some() {
            overhead += 1;
        }
        match &m.content {
            Some(MessageContent::Text(s)) => text.push_str(s),
            Some(c @ MessageContent::Parts(_)) => text.push_str(&c.text()),
            None => {}
        }
        text.push('\n');
        if let Some(calls) = &m.tool_calls {
            for c in calls {
                text.push_str(&c.function.name);
                text.push_str(&c.function.arguments);
            }
        }
    }
    if let Some(tools) = &req.tools
        && let Ok(json) = serde_json::to_string(tools)
    {
        text.push_str(&json);
    }
    let output = req
        .max_completion_tokens
        .or(req.max_tokens)
        .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from);
    Estimate {
        input: count(upstream_model, &text) + overhead,
        output,
    }
}

/// Estimates an embeddings request: its inputs' tokens, no output.
pub fn estimate_texts<S: AsRef<str>>(texts: &[S], upstream_model: &str) -> Estimate {
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
    fn other_models_are_approximated() {
        assert_eq!(count("claude-sonnet-4", "hello world!"), 3);
        assert_eq!(count("llama-3.1-8b", ""), 0);
    }

    #[test]
    fn chat_estimate_counts_overhead_and_reserves_output() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"system","content":"hello world"},{"role":"user","content":"hello world","name":"ann"}]}"#,
        )
        .expect("request");
        let e = estimate_chat(&req, "gpt-4o");
        // 2 + 2 text tokens plus two newlines, 3 + 3 + 1 + 3 overhead.
        assert!(e.input >= 14 && e.input <= 16, "{e:?}");
        assert_eq!(e.output, 50);
        let req: ChatRequest =
            serde_json::from_str(r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#)
                .expect("request");
        assert_eq!(estimate_chat(&req, "x").output, DEFAULT_OUTPUT_ESTIMATE);
    }
}

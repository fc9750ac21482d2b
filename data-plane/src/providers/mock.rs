//! The built-in `mock` provider: deterministic text, configurable latency and token rate, no
//! network. For demos, smoke tests and load tests of the gateway itself.

use std::time::Duration;

use bytes::Bytes;

use crate::config::MockBehaviour;
use crate::openai::{
    ChatChunk, ChatResponse, Choice, ChunkChoice, Delta, ResponseMessage, Usage, now_unix,
};
use crate::sse;

const WORDS: &[&str] = &[
    "This",
    " is",
    " a",
    " mock",
    " completion",
    " from",
    " Switchyard",
    ".",
    " It",
    " is",
    " deterministic",
    ",",
    " so",
    " tests",
    " can",
    " rely",
    " on",
    " it",
    ".",
];

/// The `i`-th token of the mock completion.
pub fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// The whole mock completion of `n` tokens.
pub fn text(n: u32) -> String {
    (0..n as usize).map(token).collect()
}

fn id() -> String {
    format!("chatcmpl-mock-{:016x}", fastrand::u64(..))
}

/// A complete (non-streaming) response.
pub fn response(model: &str, behaviour: &MockBehaviour, prompt_tokens: u64) -> ChatResponse {
    let n = behaviour.completion_tokens;
    ChatResponse {
        id: id(),
        object: "chat.completion".into(),
        created: now_unix(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(text(n)),
                tool_calls: None,
            },
            finish_reason: Some("stop".into()),
            logprobs: None,
        }],
        usage: Some(Usage::new(prompt_tokens, u64::from(n))),
    }
}

/// Delay between streamed tokens.
pub fn token_interval(behaviour: &MockBehaviour) -> Duration {
    match behaviour.tokens_per_second {
        0 => Duration::ZERO,
        tps => Duration::from_secs(1) / tps,
    }
}

/// The SSE events of a streamed completion, in order: role, tokens, finish, optional usage,
/// `[DONE]`.
#[derive(Debug)]
pub struct MockStream {
    id: String,
    model: String,
    created: u64,
    n: u32,
    next: u32,
    prompt_tokens: u64,
    include_usage: bool,
    done: bool,
}

impl MockStream {
    pub fn new(
        model: &str,
        behaviour: &MockBehaviour,
        prompt_tokens: u64,
        include_usage: bool,
    ) -> Self {
        Self {
            id: id(),
            model: model.to_owned(),
            created: now_unix(),
            n: behaviour.completion_tokens,
            next: 0,
            prompt_tokens,
            include_usage,
            done: false,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>, usage: Option<Usage>) -> Bytes {
        let c = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: if usage.is_some() {
                Vec::new()
            } else {
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish.map(str::to_owned),
                }]
            },
            usage,
        };
        sse::data(&serde_json::to_vec(&c).unwrap_or_default())
    }

    /// Usage of the whole completion.
    pub fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens, u64::from(self.n))
    }

    /// The next chunk of output, `None` at the end. Each token is one chunk; the final chunk
    /// carries the finish reason, usage and `[DONE]` together.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let i = self.next;
        self.next += 1;
        if i == 0 {
            return Some(self.chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
                None,
            ));
        }
        if i <= self.n {
            return Some(self.chunk(
                Delta {
                    content: Some(token(i as usize - 1).to_owned()),
                    ..Default::default()
                },
                None,
                None,
            ));
        }
        self.done = true;
        let mut tail = Vec::from(&self.chunk(Delta::default(), Some("stop"), None)[..]);
        if self.include_usage {
            tail.extend_from_slice(&self.chunk(Delta::default(), None, Some(self.usage())));
        }
        tail.extend_from_slice(sse::DONE);
        Some(Bytes::from(tail))
    }
}

/// A deterministic embedding: a unit vector derived from the text.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut rng = fastrand::Rng::with_seed(state);
    let v: Vec<f32> = (0..dims).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_has_role_tokens_finish_usage_done() {
        let b = MockBehaviour {
            completion_tokens: 3,
            ..Default::default()
        };
        let mut s = MockStream::new("demo", &b, 5, true);
        let mut chunks = Vec::new();
        while let Some(c) = s.next_chunk() {
            chunks.push(String::from_utf8(c.to_vec()).expect("utf8"));
        }
        assert_eq!(chunks.len(), 5);
        assert!(chunks[0].contains("\"role\":\"assistant\""));
        assert!(chunks[1].contains("\"content\":\"This\""));
        let tail = &chunks[4];
        assert!(tail.contains("\"finish_reason\":\"stop\""));
        assert!(tail.contains(
            "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}"
        ));
        assert!(tail.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn response_text_is_deterministic() {
        let b = MockBehaviour {
            completion_tokens: 4,
            ..Default::default()
        };
        let r = response("demo", &b, 2);
        assert_eq!(
            r.choices[0].message.content.as_deref(),
            Some("This is a mock")
        );
        assert_eq!(r.usage, Some(Usage::new(2, 4)));
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("world", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

//! The built-in `mock` provider: deterministic text, configurable latency and token rate, no
//! network. It answers in canonical form, so every front door renders it in its own format.
//! For demos, smoke tests and load tests of the gateway itself.

use std::time::Duration;

use crate::dialect::responses::Echo;
use crate::dialect::{self, embeddings};
use crate::error::ProxyError;
use crate::llm::{Block, Delta, Event, Finish, FinishReason, Incoming, Op, Part, Response, Usage};
use crate::providers::pool::MockBehaviour;

use super::Answer;

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
pub(crate) fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// The whole mock completion of `n` tokens.
pub(crate) fn text(n: u32) -> String {
    (0..n as usize).map(token).collect()
}

fn id() -> String {
    format!("chatcmpl-mock-{:016x}", fastrand::u64(..))
}

/// A deterministic embedding: a unit vector derived from the text.
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f32> {
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

/// Delay between streamed tokens.
pub(crate) fn token_interval(behaviour: &MockBehaviour) -> Duration {
    match behaviour.tokens_per_second {
        0 => Duration::ZERO,
        tps => Duration::from_secs(1) / tps,
    }
}

/// The mock's stream: role/start, one text delta per token (paced), then stop, usage and
/// finish.
#[derive(Debug)]
pub struct Events {
    id: String,
    model: String,
    n: u32,
    next: u32,
    usage: Usage,
    interval: Duration,
    done: bool,
}

impl Events {
    fn new(model: &str, b: &MockBehaviour, prompt_tokens: u64) -> Self {
        Self {
            id: id(),
            model: model.to_owned(),
            n: b.completion_tokens,
            next: 0,
            usage: Usage::new(prompt_tokens, u64::from(b.completion_tokens)),
            interval: token_interval(b),
            done: false,
        }
    }

    /// Usage of the whole stream.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The next batch of events, `None` at the end.
    pub async fn next_batch(&mut self) -> Option<Vec<Event>> {
        if self.done {
            return None;
        }
        let i = self.next;
        self.next += 1;
        if i == 0 {
            return Some(vec![
                Event::Start {
                    id: self.id.clone(),
                    model: self.model.clone(),
                },
                Event::BlockStart {
                    index: 0,
                    block: Block::Text,
                },
            ]);
        }
        if !self.interval.is_zero() && i > 1 {
            tokio::time::sleep(self.interval).await;
        }
        if i <= self.n {
            return Some(vec![Event::Delta {
                index: 0,
                delta: Delta::Text(token(i as usize - 1).to_owned()),
            }]);
        }
        self.done = true;
        Some(vec![
            Event::BlockStop { index: 0 },
            Event::Usage(self.usage),
            Event::Finish(Finish::new(FinishReason::Stop)),
        ])
    }
}

/// Answers a request the way a provider would, for any front door.
pub(crate) async fn answer(
    b: &MockBehaviour,
    model: &str,
    incoming: &Incoming,
) -> Result<Answer, ProxyError> {
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let raw = incoming
        .raw()
        .ok_or_else(|| ProxyError::new(crate::error::ErrorKind::Internal, "body consumed"))?;
    if incoming.op == Op::Embed {
        let dims = raw
            .parse_field::<u32>("dimensions")
            .ok()
            .flatten()
            .unwrap_or(8)
            .clamp(1, 4096) as usize;
        let base64 = raw
            .parse_field::<String>("encoding_format")
            .ok()
            .flatten()
            .is_some_and(|f| f == "base64");
        let texts = embeddings::texts(raw);
        let tokens: u64 = texts.iter().map(|t| (t.len() as u64).div_ceil(4)).sum();
        return Ok(Answer::Embeddings {
            embeddings: embeddings::Embeddings {
                model: model.to_owned(),
                vectors: texts.iter().map(|t| embedding(t, dims)).collect(),
                usage: Usage::new(tokens, 0),
            },
            base64,
        });
    }
    let (request, echo): (_, Option<Box<Echo>>) =
        (dialect::codec(incoming.format).generation()?.decode)(raw)?;
    if let Some(f) = request.unmapped_field() {
        return Err(ProxyError::unmappable(f, "the built-in mock"));
    }
    let prompt_tokens = request
        .texts()
        .map(|t| (t.len() as u64).div_ceil(4) + 1)
        .sum::<u64>()
        .max(1);
    if incoming.op == Op::CountTokens {
        return Ok(Answer::Tokens(prompt_tokens));
    }
    if incoming.facts.stream {
        return Ok(Answer::MockStream {
            events: Events::new(model, b, prompt_tokens),
            echo,
        });
    }
    Ok(Answer::Complete {
        response: Response {
            id: id(),
            model: model.to_owned(),
            created: crate::llm::now_unix(),
            parts: vec![Part::text(text(b.completion_tokens))],
            finish: Finish::new(FinishReason::Stop),
            usage: Usage::new(prompt_tokens, u64::from(b.completion_tokens)),
        },
        echo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stream_has_start_tokens_stop_usage_finish() {
        let b = MockBehaviour {
            completion_tokens: 3,
            ..Default::default()
        };
        let mut s = Events::new("demo", &b, 5);
        let mut all = Vec::new();
        while let Some(batch) = s.next_batch().await {
            all.extend(batch);
        }
        assert!(matches!(all[0], Event::Start { .. }));
        let text: String = all
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    delta: Delta::Text(t),
                    ..
                } => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "This is a");
        assert!(all.contains(&Event::Usage(Usage::new(5, 3))));
        assert_eq!(
            all.last(),
            Some(&Event::Finish(Finish::new(FinishReason::Stop)))
        );
    }

    #[test]
    fn text_and_embeddings_are_deterministic() {
        assert_eq!(text(4), "This is a mock");
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("world", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

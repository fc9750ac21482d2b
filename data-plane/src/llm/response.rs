//! The canonical response and usage.

use super::Part;

/// A complete answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub id: String,
    /// The model that answered (the upstream's name for it).
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// Text, thinking and tool calls, in the order the model produced them.
    pub parts: Vec<Part>,
    pub finish: Finish,
    pub usage: Usage,
}

impl Response {
    /// The text parts joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end.
    #[default]
    Stop,
    /// One of the request's stop sequences.
    StopSequence,
    /// The output cap.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A safety system or the model's refusal stopped it.
    ContentFilter,
    /// Anthropic paused a long-running turn for the client to continue.
    PauseTurn,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    /// Which stop sequence matched, when the format says.
    pub stop_sequence: Option<String>,
}

impl Finish {
    pub fn new(reason: FinishReason) -> Self {
        Self {
            reason,
            stop_sequence: None,
        }
    }
}

/// What a span says of a whole answer (`gen_ai.response.*`): read only for a traced request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Described {
    pub id: String,
    pub model: String,
    pub finish_reasons: Vec<String>,
}

/// Tokens of one call. `input` counts every input token, cached and cache-written ones
/// included (OpenAI's `prompt_tokens`); `cache_read` and `cache_write` are parts of it.
/// `output` counts every output token; `reasoning` is part of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    pub fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            ..Default::default()
        }
    }

    pub fn total(&self) -> u64 {
        self.input + self.output
    }

    /// Input tokens neither read from nor written to a cache (Anthropic's `input_tokens`).
    pub fn uncached_input(&self) -> u64 {
        self.input
            .saturating_sub(self.cache_read)
            .saturating_sub(self.cache_write)
    }

    /// Merges a later report of the same call: streams report usage cumulatively, some
    /// fields early (input) and some late (output), so each field keeps its largest value.
    pub fn merge(&mut self, later: Usage) {
        self.input = self.input.max(later.input);
        self.output = self.output.max(later.output);
        self.cache_read = self.cache_read.max(later.cache_read);
        self.cache_write = self.cache_write.max(later.cache_write);
        self.reasoning = self.reasoning.max(later.reasoning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_largest_report_of_each_field() {
        let mut u = Usage {
            input: 100,
            cache_read: 80,
            output: 1,
            ..Default::default()
        };
        u.merge(Usage::new(0, 42));
        assert_eq!(
            u,
            Usage {
                input: 100,
                cache_read: 80,
                output: 42,
                ..Default::default()
            }
        );
        assert_eq!(u.uncached_input(), 20);
        assert_eq!(u.total(), 142);
    }
}

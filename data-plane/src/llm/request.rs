//! The canonical request.

use serde_json::{Map, Value};

/// A model call in canonical form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    pub model: String,
    /// The conversation, system and developer instructions included, in order.
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub reasoning: Option<Reasoning>,
    /// End-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    pub stream: bool,
    /// Usage reported at the end of a stream (OpenAI `stream_options.include_usage`).
    pub stream_usage: bool,
    /// Fields of the client's format with no canonical meaning, kept by name. A translation
    /// into another format refuses any that is not null, naming it: nothing is dropped
    /// silently.
    pub extra: Map<String, Value>,
}

impl Request {
    /// The first field in `extra` that carries a value, for the "cannot be mapped" 400.
    pub fn unmapped_field(&self) -> Option<&str> {
        self.extra
            .iter()
            .find(|(_, v)| !v.is_null())
            .map(|(k, _)| k.as_str())
    }

    /// The text of every message, for token estimates.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.messages
            .iter()
            .flat_map(|m| m.parts.iter().flat_map(Part::texts))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    /// OpenAI's `developer`: system instructions for reasoning models.
    Developer,
    User,
    Assistant,
    /// Tool results (OpenAI `tool` messages; Anthropic `tool_result` blocks in user turns).
    Tool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// OpenAI's participant name.
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: Role, parts: Vec<Part>) -> Self {
        Self {
            role,
            parts,
            name: None,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::new(role, vec![Part::text(text)])
    }

    /// The message's text parts joined (tool results and media left out).
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            if let Part::Text { text, .. } = p {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(text);
            }
        }
        out
    }
}

/// One piece of content.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text {
        text: String,
        /// Anthropic prompt-caching breakpoint (`{"type": "ephemeral"}`); a hint that
        /// formats with automatic caching have no need of.
        cache_control: Option<Value>,
    },
    Image(Media),
    /// A document (PDF or plain text).
    Document {
        media: Media,
        title: Option<String>,
    },
    /// Model reasoning, with the provider's signature that lets it be sent back.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Reasoning the provider encrypted.
    RedactedThinking {
        data: String,
    },
    ToolCall(ToolCall),
    ToolResult(ToolResult),
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    fn texts(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Part::Text { text, .. } | Part::Thinking { text, .. } => {
                Box::new(std::iter::once(text.as_str()))
            }
            Part::ToolCall(c) => Box::new([c.name.as_str(), c.arguments.as_str()].into_iter()),
            Part::ToolResult(r) => Box::new(r.content.iter().flat_map(Part::texts)),
            Part::Document {
                media:
                    Media {
                        source: Source::Text(t),
                        ..
                    },
                ..
            } => Box::new(std::iter::once(t.as_str())),
            _ => Box::new(std::iter::empty()),
        }
    }
}

/// Where media bytes are.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Url(String),
    Base64 {
        media_type: String,
        data: String,
    },
    /// Plain text (text documents).
    Text(String),
}

impl Source {
    /// A `data:` URL becomes base64 with its media type; anything else stays a URL.
    pub fn from_url(url: &str) -> Self {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((meta, data)) = rest.split_once(',')
            && let Some(media_type) = meta.strip_suffix(";base64")
        {
            return Self::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
        Self::Url(url.to_owned())
    }

    /// As a URL (`data:` for inline bytes).
    pub fn to_url(&self) -> String {
        match self {
            Self::Url(u) => u.clone(),
            Self::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
            Self::Text(t) => format!("data:text/plain,{t}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Media {
    pub source: Source,
    /// OpenAI's image `detail` (low/high/auto).
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as the model produced them.
    pub arguments: String,
    /// Gemini's thought signature on a function call, to be sent back with it.
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub call_id: String,
    /// The tool's name, when the format carries it (Gemini needs it).
    pub name: Option<String>,
    /// Text and images.
    pub content: Vec<Part>,
    pub is_error: bool,
}

impl ToolResult {
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                Part::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    pub strict: Option<bool>,
    pub cache_control: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Named(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// How hard the model thinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Minimal => "minimal",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// The thinking budget in tokens a token-budget format (Anthropic, Gemini, Bedrock) gets
    /// for an effort. Anthropic's minimum budget is 1,024.
    pub fn budget_tokens(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Minimal | Self::Low => 1024,
            Self::Medium => 4096,
            Self::High => 16_384,
        }
    }

    /// The effort an effort-based format (OpenAI) gets for a token budget.
    pub fn from_budget(budget: u32) -> Self {
        match budget {
            0 => Self::None,
            1..=2047 => Self::Low,
            2048..=8191 => Self::Medium,
            _ => Self::High,
        }
    }
}

/// Reasoning settings: an effort (OpenAI) or a token budget (Anthropic, Gemini), whichever
/// the client gave; the other is derived when a translation needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reasoning {
    pub effort: Option<Effort>,
    pub budget_tokens: Option<u32>,
    /// Thinking switched off explicitly.
    pub disabled: bool,
    /// Responses API `reasoning.summary` (auto/concise/detailed).
    pub summary: Option<String>,
}

impl Reasoning {
    pub fn budget(&self) -> Option<u32> {
        if self.disabled {
            return None;
        }
        self.budget_tokens
            .or(self.effort.map(Effort::budget_tokens))
            .filter(|b| *b > 0)
    }

    pub fn effort(&self) -> Option<Effort> {
        if self.disabled {
            return Some(Effort::None);
        }
        self.effort.or(self.budget_tokens.map(Effort::from_budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_become_base64() {
        assert_eq!(
            Source::from_url("data:image/png;base64,AAAA"),
            Source::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into()
            }
        );
        assert_eq!(
            Source::from_url("https://x/y.png"),
            Source::Url("https://x/y.png".into())
        );
        let b = Source::Base64 {
            media_type: "image/jpeg".into(),
            data: "QQ==".into(),
        };
        assert_eq!(Source::from_url(&b.to_url()), b);
    }

    #[test]
    fn effort_and_budget_convert_both_ways() {
        for e in [Effort::Low, Effort::Medium, Effort::High] {
            assert_eq!(Effort::from_budget(e.budget_tokens()), e);
        }
        let r = Reasoning {
            budget_tokens: Some(10_000),
            ..Default::default()
        };
        assert_eq!(r.effort(), Some(Effort::High));
        let off = Reasoning {
            disabled: true,
            effort: Some(Effort::High),
            ..Default::default()
        };
        assert_eq!(off.budget(), None);
    }

    #[test]
    fn unmapped_fields_ignore_nulls() {
        let mut r = Request::default();
        r.extra.insert("logit_bias".into(), Value::Null);
        assert_eq!(r.unmapped_field(), None);
        r.extra.insert("logprobs".into(), Value::Bool(true));
        assert_eq!(r.unmapped_field(), Some("logprobs"));
    }
}

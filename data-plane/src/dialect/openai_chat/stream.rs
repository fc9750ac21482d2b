//! Chat Completions streams: upstream chunks decoded into canonical events, canonical events
//! rendered as chunks, and the same-format passthrough that only reads usage on the way.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::request::WireThinkingBlock;
use super::{WireUsage, finish_reason, parse_finish_reason};
use crate::dialect::{Flow, malformed, openai_error};
use crate::error::ProxyError;
use crate::llm::{Block, Delta, Event, Finish, FinishReason, Usage};
use crate::upstream::Frame;
use crate::upstream::sse;

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolDelta>,
}

#[derive(Deserialize)]
struct ToolDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize, Serialize, Default)]
struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arguments: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text(usize),
    Thinking(usize),
    Tool { openai: u32, block: usize },
}

/// Upstream chunks -> canonical events. Blocks open as content of a new kind arrives and
/// close when the next one opens, so tool calls keep their order and ids.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    open: Option<Open>,
    /// Id of the open tool call (servers that repeat it on every chunk continue the call).
    tool_id: String,
    next_block: usize,
    refused: bool,
}

impl Decoder {
    fn open(&mut self, want: Open, block: Block, out: &mut Vec<Event>) -> usize {
        if let Some(prev) = self.open {
            let index = match prev {
                Open::Text(i) | Open::Thinking(i) | Open::Tool { block: i, .. } => i,
            };
            out.push(Event::BlockStop { index });
        }
        let index = self.next_block;
        self.next_block += 1;
        let opened = match want {
            Open::Text(_) => Open::Text(index),
            Open::Thinking(_) => Open::Thinking(index),
            Open::Tool { openai, .. } => Open::Tool {
                openai,
                block: index,
            },
        };
        self.open = Some(opened);
        out.push(Event::BlockStart { index, block });
        index
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some(o) = self.open.take() {
            let index = match o {
                Open::Text(i) | Open::Thinking(i) | Open::Tool { block: i, .. } => i,
            };
            out.push(Event::BlockStop { index });
        }
    }

    fn text(&mut self, t: String, thinking: bool, out: &mut Vec<Event>) {
        if t.is_empty() {
            return;
        }
        let index = match (self.open, thinking) {
            (Some(Open::Text(i)), false) | (Some(Open::Thinking(i)), true) => i,
            (_, false) => self.open(Open::Text(0), Block::Text, out),
            (_, true) => self.open(Open::Thinking(0), Block::Thinking, out),
        };
        let delta = if thinking {
            Delta::Thinking(t)
        } else {
            Delta::Text(t)
        };
        out.push(Event::Delta { index, delta });
    }

    /// Handles one upstream event.
    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Event>) -> Result<Flow, ProxyError> {
        let data = f.data.as_bytes();
        if data == b"[DONE]" {
            self.close(out);
            return Ok(Flow::Done);
        }
        if data.starts_with(b"{\"error\"") {
            return Err(openai_error::stream_error(data));
        }
        let c: Chunk = serde_json::from_slice(data).map_err(malformed)?;
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: c.id.clone(),
                model: c.model.clone(),
            });
        }
        for choice in c.choices.into_iter().filter(|c| c.index == 0) {
            let d = choice.delta;
            if let Some(t) = d.reasoning_content.or(d.reasoning) {
                self.text(t, true, out);
            }
            if let Some(t) = d.content {
                self.text(t, false, out);
            }
            if let Some(r) = d.refusal.filter(|r| !r.is_empty()) {
                self.refused = true;
                self.text(r, false, out);
            }
            for t in d.tool_calls {
                let f = t.function.unwrap_or_default();
                let same_call = matches!(self.open, Some(Open::Tool { openai, .. }) if openai == t.index)
                    && t.id.as_ref().is_none_or(|id| *id == self.tool_id);
                let index = match self.open {
                    Some(Open::Tool { block, .. }) if same_call => block,
                    _ => {
                        self.tool_id = t.id.clone().unwrap_or_default();
                        self.open(
                            Open::Tool {
                                openai: t.index,
                                block: 0,
                            },
                            Block::ToolCall {
                                id: t.id.unwrap_or_default(),
                                name: f.name.clone().unwrap_or_default(),
                            },
                            out,
                        )
                    }
                };
                if let Some(a) = f.arguments.filter(|a| !a.is_empty()) {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::ToolArgs(a),
                    });
                }
            }
            if let Some(r) = choice.finish_reason {
                self.close(out);
                let mut reason = parse_finish_reason(&r);
                if self.refused {
                    reason = FinishReason::ContentFilter;
                }
                out.push(Event::Finish(Finish::new(reason)));
            }
        }
        if let Some(u) = c.usage {
            out.push(Event::Usage(Usage::from(&u)));
        }
        Ok(Flow::Continue)
    }
}

#[derive(Serialize)]
struct OutChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<OutChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct OutChoice {
    index: u32,
    delta: OutDelta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct OutDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<WireThinkingBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolDelta>,
}

#[derive(Serialize)]
struct OutToolDelta {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta,
}

/// Canonical events -> `chat.completion.chunk`s.
#[derive(Debug)]
pub struct Renderer {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    /// Canonical block index -> OpenAI tool-call index.
    tools: Vec<(usize, u32)>,
    usage: Usage,
}

impl Renderer {
    pub fn new(include_usage: bool) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created: crate::llm::now_unix(),
            include_usage,
            started: false,
            tools: Vec::new(),
            usage: Usage::default(),
        }
    }

    fn chunk(&self, delta: OutDelta, finish: Option<&'static str>, out: &mut Vec<Bytes>) {
        let c = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![OutChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: None,
        };
        if let Ok(v) = serde_json::to_vec(&c) {
            out.push(sse::data(&v));
        }
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if !self.started {
            self.started = true;
            let delta = OutDelta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Default::default()
            };
            self.chunk(delta, None, out);
        }
    }

    pub fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Start { id, model } => {
                self.id = id;
                self.model = model;
                self.start(out);
            }
            Event::BlockStart { index, block } => {
                self.start(out);
                match block {
                    Block::ToolCall { id, name } => {
                        let k = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                        self.tools.push((index, k));
                        let delta = OutDelta {
                            tool_calls: vec![OutToolDelta {
                                index: k,
                                id: Some(id),
                                kind: Some("function"),
                                function: FunctionDelta {
                                    name: Some(name),
                                    arguments: Some(String::new()),
                                },
                            }],
                            ..Default::default()
                        };
                        self.chunk(delta, None, out);
                    }
                    Block::RedactedThinking { data } => {
                        let delta = OutDelta {
                            thinking_blocks: vec![WireThinkingBlock::RedactedThinking { data }],
                            ..Default::default()
                        };
                        self.chunk(delta, None, out);
                    }
                    Block::Text | Block::Thinking => {}
                }
            }
            Event::Delta { index, delta } => {
                self.start(out);
                let d = match delta {
                    Delta::Text(t) => OutDelta {
                        content: Some(t),
                        ..Default::default()
                    },
                    Delta::Thinking(t) => OutDelta {
                        reasoning_content: Some(t),
                        ..Default::default()
                    },
                    Delta::Signature(s) => OutDelta {
                        thinking_blocks: vec![WireThinkingBlock::Thinking {
                            thinking: String::new(),
                            signature: Some(s),
                        }],
                        ..Default::default()
                    },
                    Delta::ToolArgs(a) => {
                        let Some(&(_, k)) = self.tools.iter().find(|(b, _)| *b == index) else {
                            return;
                        };
                        OutDelta {
                            tool_calls: vec![OutToolDelta {
                                index: k,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: Some(a),
                                },
                            }],
                            ..Default::default()
                        }
                    }
                };
                self.chunk(d, None, out);
            }
            Event::Usage(u) => self.usage.merge(u),
            Event::Finish(f) => {
                self.start(out);
                self.chunk(OutDelta::default(), Some(finish_reason(f.reason)), out);
            }
            Event::BlockStop { .. } | Event::Ping => {}
        }
    }

    /// The end of a complete stream: the usage chunk when asked for, then `[DONE]`.
    pub fn done(&mut self, out: &mut Vec<Bytes>) {
        if self.include_usage {
            let c = OutChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(self.usage.into()),
            };
            if let Ok(v) = serde_json::to_vec(&c) {
                out.push(sse::data(&v));
            }
        }
        out.push(Bytes::from_static(sse::DONE));
    }
}

/// Same-format passthrough: chunks go out as they came, usage is read on the way, and the
/// usage-only chunk the gateway asked for is dropped unless the client asked too.
#[derive(Debug)]
pub struct Sniffer {
    client_wants_usage: bool,
    pub usage: Option<Usage>,
    /// Bytes of text delivered (content, reasoning, refusals, tool arguments).
    pub delivered: u64,
}

/// Where a chunk carries generated text.
static TEXT: std::sync::LazyLock<crate::dialect::TextFields> = std::sync::LazyLock::new(|| {
    crate::dialect::TextFields::new(&["content", "reasoning_content", "refusal", "arguments"])
});

impl Sniffer {
    pub fn new(client_wants_usage: bool) -> Self {
        Self {
            client_wants_usage,
            usage: None,
            delivered: 0,
        }
    }

    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) -> Result<Flow, ProxyError> {
        let data = f.data.as_bytes();
        if data == b"[DONE]" {
            out.push(Bytes::from_static(sse::DONE));
            return Ok(Flow::Done);
        }
        if data.starts_with(b"{\"error\"") {
            out.push(sse::data(data));
            return Err(openai_error::stream_error(data));
        }
        self.delivered += TEXT.bytes(data);
        if memchr::memmem::find(data, b"\"usage\":{").is_some()
            || memchr::memmem::find(data, b"\"usage\": {").is_some()
        {
            #[derive(Deserialize)]
            struct Only {
                #[serde(default)]
                usage: Option<WireUsage>,
            }
            let parsed: Only = serde_json::from_slice(data).map_err(malformed)?;
            if let Some(u) = parsed.usage {
                self.usage = Some(Usage::from(&u));
                if !self.client_wants_usage
                    && memchr::memmem::find(data, b"\"choices\":[]").is_some()
                {
                    return Ok(Flow::Continue);
                }
            }
        } else if !data.starts_with(b"{")
            || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err()
        {
            return Err(malformed("a chunk that is not JSON"));
        }
        out.push(sse::data(data));
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &str) -> Frame {
        Frame::data(data)
    }

    #[test]
    fn decodes_parallel_tool_calls_with_their_ids_and_indexes() {
        let mut d = Decoder::default();
        let mut ev = Vec::new();
        for c in [
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#,
            "[DONE]",
        ] {
            d.frame(&frame(c), &mut ev).expect("chunk");
        }
        let starts: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::BlockStart {
                    index,
                    block: Block::ToolCall { id, name },
                } => Some((*index, id.as_str(), name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "call_a", "f"), (1, "call_b", "g")]);
        let args: String = ev
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    index: 0,
                    delta: Delta::ToolArgs(a),
                } => Some(a.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, "{\"x\":1}");
        assert!(ev.contains(&Event::Finish(Finish::new(FinishReason::ToolCalls))));
        assert!(ev.contains(&Event::Usage(Usage::new(5, 9))));

        // Rendered back for an OpenAI client, the indexes and ids survive.
        let mut r = Renderer::new(true);
        let mut out = Vec::new();
        for e in ev {
            r.event(e, &mut out);
        }
        r.done(&mut out);
        let text: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.contains(r#""tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":""}}]"#), "{text}");
        assert!(
            text.contains(r#""tool_calls":[{"index":0,"function":{"arguments":"1}"}}]"#),
            "{text}"
        );
        assert!(
            text.contains(r#""usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14"#),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn sniffer_counts_usage_and_hides_it_unless_asked() {
        let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#;
        let usage = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        for wants in [false, true] {
            let mut s = Sniffer::new(wants);
            let mut out = Vec::new();
            assert_eq!(s.frame(&frame(chunk), &mut out).expect("c"), Flow::Continue);
            assert_eq!(s.frame(&frame(usage), &mut out).expect("u"), Flow::Continue);
            assert_eq!(s.frame(&frame("[DONE]"), &mut out).expect("d"), Flow::Done);
            assert_eq!(out.len(), if wants { 3 } else { 2 });
            assert_eq!(
                s.usage.map(|u| (u.input, u.output, u.cache_read)),
                Some((3, 5, 2))
            );
        }
        let mut s = Sniffer::new(false);
        let mut out = Vec::new();
        assert!(s.frame(&frame("garbage"), &mut out).is_err());
        assert!(s.frame(&frame("{not json"), &mut out).is_err());
        assert!(
            s.frame(&frame(r#"{"usage":{"prompt_tokens":"x"}}"#), &mut out)
                .is_err()
        );
        let e = s
            .frame(
                &frame(r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#),
                &mut out,
            )
            .expect_err("error event");
        assert_eq!(e.class, Some(crate::error::FailureClass::RateLimited));
    }
}

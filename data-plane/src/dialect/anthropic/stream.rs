//! Messages streams: Anthropic's events decoded into canonical events, canonical events
//! rendered exactly as Anthropic emits them (`message_start`, `content_block_start`,
//! `content_block_delta`, `content_block_stop`, `message_delta` with usage, `message_stop`,
//! `ping`, `error`), and the same-format passthrough that reads usage on the way.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::response::message_id;
use super::{WireUsage, parse_stop_reason, stop_reason, stream_error};
use crate::dialect::{Flow, malformed};
use crate::error::{Dialect, ProxyError};
use crate::llm::{Block, Delta, Event, Finish, FinishReason, Usage};
use crate::upstream::Frame;
use crate::upstream::sse;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop {},
    Ping {},
    Error {},
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {},
    Thinking {},
    RedactedThinking {
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

/// `message_delta` usage: cumulative, with optional fields absent when unchanged.
#[derive(Deserialize, Default)]
struct DeltaUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// Anthropic events -> canonical events.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// Input usage from `message_start`, completed by `message_delta`.
    usage: WireUsage,
}

impl Decoder {
    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Event>) -> Result<Flow, ProxyError> {
        let ev: WireEvent = serde_json::from_str(&f.data).map_err(malformed)?;
        if !self.started
            && !matches!(
                ev,
                WireEvent::MessageStart { .. } | WireEvent::Ping {} | WireEvent::Error {}
            )
        {
            return Err(malformed("the stream did not start with message_start"));
        }
        match ev {
            WireEvent::MessageStart { message } => {
                self.started = true;
                self.usage = message.usage;
                out.push(Event::Start {
                    id: message.id,
                    model: message.model,
                });
                out.push(Event::Usage(message.usage.into()));
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    StartBlock::Text {} => Block::Text,
                    StartBlock::Thinking {} => Block::Thinking,
                    StartBlock::RedactedThinking { data } => Block::RedactedThinking { data },
                    StartBlock::ToolUse { id, name } => Block::ToolCall { id, name },
                    StartBlock::Other => return Ok(Flow::Continue),
                };
                out.push(Event::BlockStart { index, block });
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                let delta = match delta {
                    WireDelta::TextDelta { text } => Delta::Text(text),
                    WireDelta::ThinkingDelta { thinking } => Delta::Thinking(thinking),
                    WireDelta::SignatureDelta { signature } => Delta::Signature(signature),
                    WireDelta::InputJsonDelta { partial_json } => Delta::ToolArgs(partial_json),
                    WireDelta::Other => return Ok(Flow::Continue),
                };
                out.push(Event::Delta { index, delta });
            }
            WireEvent::ContentBlockStop { index } => out.push(Event::BlockStop { index }),
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.output_tokens = u.output_tokens;
                    if let Some(i) = u.input_tokens {
                        self.usage.input_tokens = i;
                    }
                    if let Some(c) = u.cache_creation_input_tokens {
                        self.usage.cache_creation_input_tokens = c;
                    }
                    if let Some(c) = u.cache_read_input_tokens {
                        self.usage.cache_read_input_tokens = c;
                    }
                    out.push(Event::Usage(self.usage.into()));
                }
                if let Some(r) = delta.stop_reason {
                    out.push(Event::Finish(Finish {
                        reason: parse_stop_reason(&r),
                        stop_sequence: delta.stop_sequence,
                    }));
                }
            }
            WireEvent::MessageStop {} => return Ok(Flow::Done),
            WireEvent::Ping {} => out.push(Event::Ping),
            WireEvent::Error {} => return Err(stream_error(f.data.as_bytes())),
        }
        Ok(Flow::Continue)
    }
}

fn event(name: &str, v: &Value) -> Bytes {
    sse::named(name, v.to_string().as_bytes())
}

/// Canonical events -> Anthropic's events. Blocks are renumbered from 0 in the order they
/// start (the SDKs index content by position) and closed before the next one opens.
#[derive(Debug, Default)]
pub struct Renderer {
    started: bool,
    /// Canonical block index -> Anthropic content index, for the block that is open.
    open: Option<(usize, usize)>,
    next: usize,
    usage: Usage,
    finish: Option<Finish>,
    id: String,
    model: String,
}

impl Renderer {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let u = WireUsage::from(self.usage);
        out.push(event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(&self.id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
                          "cache_read_input_tokens": u.cache_read_input_tokens, "output_tokens": u.output_tokens}}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((_, pos)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": pos}),
            ));
        }
    }

    fn open(&mut self, index: usize, block: Value, out: &mut Vec<Bytes>) -> usize {
        self.close(out);
        let pos = self.next;
        self.next += 1;
        self.open = Some((index, pos));
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": pos, "content_block": block}),
        ));
        pos
    }

    pub fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Start { id, model } => {
                self.id = id;
                self.model = model;
            }
            Event::Usage(u) => self.usage.merge(u),
            Event::BlockStart { index, block } => {
                self.start(out);
                let v = match block {
                    Block::Text => json!({"type": "text", "text": ""}),
                    Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    Block::RedactedThinking { data } => {
                        json!({"type": "redacted_thinking", "data": data})
                    }
                    Block::ToolCall { id, name } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                    }
                };
                self.open(index, v, out);
            }
            Event::Delta { index, delta } => {
                self.start(out);
                let pos = match self.open {
                    Some((i, pos)) if i == index => pos,
                    // A delta for a block that never started: start one of its kind.
                    _ => {
                        let v = match &delta {
                            Delta::Text(_) => json!({"type": "text", "text": ""}),
                            Delta::Thinking(_) | Delta::Signature(_) => {
                                json!({"type": "thinking", "thinking": "", "signature": ""})
                            }
                            Delta::ToolArgs(_) => return,
                        };
                        self.open(index, v, out)
                    }
                };
                let d = match delta {
                    Delta::Text(t) => json!({"type": "text_delta", "text": t}),
                    Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
                    Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
                    Delta::ToolArgs(a) => json!({"type": "input_json_delta", "partial_json": a}),
                };
                out.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": pos, "delta": d}),
                ));
            }
            Event::BlockStop { index } => {
                if self.open.is_some_and(|(i, _)| i == index) {
                    self.close(out);
                }
            }
            Event::Finish(f) => self.finish = Some(f),
            Event::Ping => {
                self.start(out);
                out.push(event("ping", &json!({"type": "ping"})));
            }
        }
    }

    /// The end of a complete stream: `message_delta` with the stop reason and the final
    /// usage, then `message_stop`.
    pub fn done(&mut self, out: &mut Vec<Bytes>) {
        self.start(out);
        self.close(out);
        let f = self
            .finish
            .take()
            .unwrap_or_else(|| Finish::new(FinishReason::Stop));
        let u = WireUsage::from(self.usage);
        out.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(f.reason), "stop_sequence": f.stop_sequence},
                    "usage": {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
                              "cache_read_input_tokens": u.cache_read_input_tokens, "output_tokens": u.output_tokens}}),
        ));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
    }
}

/// An error event in Anthropic's format.
pub fn error_event(e: &ProxyError) -> Bytes {
    event("error", &e.body(Dialect::Anthropic))
}

/// Same-format passthrough: events go out as they came; usage is read from `message_start`
/// and `message_delta`.
#[derive(Debug, Default)]
pub struct Sniffer {
    usage: WireUsage,
    seen_usage: bool,
    /// Bytes of text delivered (text, thinking, tool input JSON).
    pub delivered: u64,
}

/// Where a `content_block_delta` carries generated text.
static TEXT: std::sync::LazyLock<crate::dialect::TextFields> = std::sync::LazyLock::new(|| {
    crate::dialect::TextFields::new(&["text", "thinking", "partial_json"])
});

impl Sniffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.seen_usage.then(|| self.usage.into())
    }

    pub fn frame(&mut self, f: &Frame, out: &mut Vec<Bytes>) -> Result<Flow, ProxyError> {
        let name = f.event.as_deref().unwrap_or("");
        let encoded = || sse::named(name, f.data.as_bytes());
        match name {
            "message_start" | "message_delta" => {
                let ev: WireEvent = serde_json::from_str(&f.data).map_err(malformed)?;
                match ev {
                    WireEvent::MessageStart { message } => {
                        self.usage = message.usage;
                        self.seen_usage = true;
                    }
                    WireEvent::MessageDelta { usage: Some(u), .. } => {
                        self.usage.output_tokens = u.output_tokens;
                        if let Some(i) = u.input_tokens {
                            self.usage.input_tokens = i;
                        }
                        if let Some(c) = u.cache_creation_input_tokens {
                            self.usage.cache_creation_input_tokens = c;
                        }
                        if let Some(c) = u.cache_read_input_tokens {
                            self.usage.cache_read_input_tokens = c;
                        }
                        self.seen_usage = true;
                    }
                    _ => {}
                }
                out.push(encoded());
            }
            "message_stop" => {
                out.push(encoded());
                return Ok(Flow::Done);
            }
            "error" => {
                out.push(encoded());
                return Err(stream_error(f.data.as_bytes()));
            }
            _ => {
                if serde_json::from_str::<serde::de::IgnoredAny>(&f.data).is_err() {
                    return Err(malformed(format!("a `{name}` event that is not JSON")));
                }
                if name == "content_block_delta" {
                    self.delivered += TEXT.bytes(f.data.as_bytes());
                }
                out.push(encoded());
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[(&str, &str)] = &[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAh"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        ("ping", r#"{"type":"ping"}"#),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"loc"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ation\": \"Paris\"}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];

    #[test]
    fn decode_then_render_reproduces_anthropics_events() {
        let mut d = Decoder::default();
        let mut r = Renderer::new();
        let mut events = Vec::new();
        let mut out = Vec::new();
        for (name, data) in STREAM {
            let flow = d
                .frame(&Frame::named(name, *data), &mut events)
                .expect("event");
            for e in events.drain(..) {
                r.event(e, &mut out);
            }
            if flow == Flow::Done {
                r.done(&mut out);
            }
        }
        let text: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let got: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (n, d) = e.split_once('\n').expect("two lines");
                (
                    n.trim_start_matches("event: ").to_owned(),
                    serde_json::from_str(d.trim_start_matches("data: ")).expect("json"),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<&str> = STREAM.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, want);
        for ((_, g), (_, w)) in got.iter().zip(STREAM) {
            let w: Value = serde_json::from_str(w).expect("json");
            if g["type"] == "message_start" || g["type"] == "message_delta" {
                continue;
            }
            assert_eq!(g, &w);
        }
        assert_eq!(got[0].1["message"]["usage"]["cache_read_input_tokens"], 100);
        assert_eq!(got[0].1["message"]["usage"]["input_tokens"], 25);
        assert_eq!(got[10].1["usage"]["output_tokens"], 89);
        assert_eq!(got[10].1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn sniffer_reads_split_usage_and_error_events() {
        let mut s = Sniffer::new();
        let mut out = Vec::new();
        for (name, data) in STREAM {
            s.frame(&Frame::named(name, *data), &mut out)
                .expect("event");
        }
        assert_eq!(out.len(), STREAM.len());
        let u = s.usage().expect("usage");
        assert_eq!((u.input, u.cache_read, u.output), (125, 100, 89));
        let e = s
            .frame(&Frame::named("error", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#), &mut out)
            .expect_err("error");
        assert_eq!(e.class, Some(crate::error::FailureClass::Overloaded));
        assert!(
            s.frame(&Frame::named("content_block_delta", "{broken"), &mut out)
                .is_err()
        );
    }

    #[test]
    fn decoder_requires_message_start_first() {
        let mut d = Decoder::default();
        let mut ev = Vec::new();
        assert!(
            d.frame(
                &Frame::named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#
                ),
                &mut ev
            )
            .is_err()
        );
    }
}

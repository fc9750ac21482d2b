//! Canonical answers rendered as Responses API objects and events.

use bytes::Bytes;
use serde_json::{Value, json};

use super::WireUsage;
use super::request::Echo;
use crate::error::{Dialect, ProxyError};
use crate::llm::{Block, Delta, Event, FinishReason, Part, Response, Usage};
use crate::upstream::sse;

fn id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", fastrand::u128(..))
}

fn status_of(reason: FinishReason) -> (&'static str, Value) {
    match reason {
        FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// What varies between the response objects of one answer.
struct Object<'a> {
    id: &'a str,
    created_at: u64,
    model: &'a str,
    status: &'a str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Option<Usage>,
}

fn response_object(o: Object<'_>, echo: &Echo) -> Value {
    let Object {
        id,
        created_at,
        model,
        status,
        incomplete,
        output,
        usage,
    } = o;
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": null,
        "reasoning": echo.reasoning,
        "store": false,
        "temperature": echo.temperature,
        "text": {"format": echo.text_format},
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage.map(|u| serde_json::to_value(WireUsage::from(u)).unwrap_or(Value::Null)),
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn reasoning_item(id: &str, text: &str, signature: Option<&str>) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [],
           "content": [{"type": "reasoning_text", "text": text}],
           "encrypted_content": signature, "status": "completed"})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

/// Renders a canonical answer as a `response` object.
pub fn render_response(r: &Response, echo: &Echo) -> Result<Bytes, ProxyError> {
    let mut output = Vec::new();
    let mut text = String::new();
    for p in &r.parts {
        match p {
            Part::Text { text: t, .. } => text.push_str(t),
            Part::Thinking { text: t, signature } => {
                output.push(reasoning_item(&id("rs"), t, signature.as_deref()))
            }
            Part::RedactedThinking { data } => {
                output.push(reasoning_item(&id("rs"), "", Some(data)))
            }
            Part::ToolCall(c) => output.push(call_item(
                &id("fc"),
                &c.id,
                &c.name,
                &c.arguments,
                "completed",
            )),
            _ => {}
        }
    }
    if !text.is_empty() || output.is_empty() {
        // The message goes before tool calls, after reasoning, as OpenAI orders output.
        let at = output
            .iter()
            .position(|o| o["type"] == "function_call")
            .unwrap_or(output.len());
        output.insert(at, message_item(&id("msg"), &text, "completed"));
    }
    let (status, incomplete) = status_of(r.finish.reason);
    let obj = response_object(
        Object {
            id: &id("resp"),
            created_at: r.created,
            model: &r.model,
            status,
            incomplete,
            output,
            usage: Some(r.usage),
        },
        echo,
    );
    crate::llm::to_bytes(&obj)
}

/// One output item being streamed.
#[derive(Debug)]
struct Item {
    block: usize,
    output_index: usize,
    id: String,
    kind: Kind,
    text: String,
}

#[derive(Debug)]
enum Kind {
    Message,
    Reasoning { signature: Option<String> },
    Call { call_id: String, name: String },
}

/// Canonical events -> the Responses event stream (`response.created`, `.in_progress`,
/// `.output_item.added`, `.content_part.added`, `.output_text.delta` / `.reasoning_text.delta`
/// / `.function_call_arguments.delta`, the matching `.done` events, `response.completed` or
/// `.incomplete`), numbered by `sequence_number`.
#[derive(Debug)]
pub struct Renderer {
    echo: Echo,
    response_id: String,
    created_at: u64,
    model: String,
    seq: u64,
    started: bool,
    open: Option<Item>,
    done_items: Vec<Value>,
    usage: Usage,
    finish: FinishReason,
}

impl Renderer {
    pub fn new(echo: Echo) -> Self {
        Self {
            echo,
            response_id: id("resp"),
            created_at: crate::llm::now_unix(),
            model: String::new(),
            seq: 0,
            started: false,
            open: None,
            done_items: Vec::new(),
            usage: Usage::default(),
            finish: FinishReason::Stop,
        }
    }

    fn emit(&mut self, name: &str, mut v: Value, out: &mut Vec<Bytes>) {
        v["type"] = json!(name);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.push(sse::named(name, v.to_string().as_bytes()));
    }

    fn object(&self, status: &str, incomplete: Value, usage: Option<Usage>) -> Value {
        response_object(
            Object {
                id: &self.response_id,
                created_at: self.created_at,
                model: &self.model,
                status,
                incomplete,
                output: self.done_items.clone(),
                usage,
            },
            &self.echo,
        )
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.object("in_progress", Value::Null, None);
        self.emit("response.created", json!({"response": r}), out);
        let r = self.object("in_progress", Value::Null, None);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn open(&mut self, block: usize, kind: Kind, out: &mut Vec<Bytes>) {
        self.close(out);
        let output_index = self.done_items.len();
        let (item_id, item) = match &kind {
            Kind::Message => {
                let i = id("msg");
                let v = json!({"id": i, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
                (i, v)
            }
            Kind::Reasoning { .. } => {
                let i = id("rs");
                let v = json!({"id": i, "type": "reasoning", "summary": [], "content": []});
                (i, v)
            }
            Kind::Call { call_id, name } => {
                let i = id("fc");
                let v = call_item(&i, call_id, name, "", "in_progress");
                (i, v)
            }
        };
        self.emit(
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
            out,
        );
        if matches!(kind, Kind::Message) {
            self.emit(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                out,
            );
        }
        self.open = Some(Item {
            block,
            output_index,
            id: item_id,
            kind,
            text: String::new(),
        });
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        let Some(item) = self.open.take() else {
            return;
        };
        let (i, oi) = (item.id.clone(), item.output_index);
        let done = match &item.kind {
            Kind::Message => {
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": i, "output_index": oi, "content_index": 0, "text": item.text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": i, "output_index": oi, "content_index": 0,
                           "part": {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}}),
                    out,
                );
                message_item(&i, &item.text, "completed")
            }
            Kind::Reasoning { signature } => {
                self.emit(
                    "response.reasoning_text.done",
                    json!({"item_id": i, "output_index": oi, "content_index": 0, "text": item.text}),
                    out,
                );
                reasoning_item(&i, &item.text, signature.as_deref())
            }
            Kind::Call { call_id, name } => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": i, "output_index": oi, "name": name, "arguments": item.text}),
                    out,
                );
                call_item(&i, call_id, name, &item.text, "completed")
            }
        };
        self.emit(
            "response.output_item.done",
            json!({"output_index": oi, "item": done}),
            out,
        );
        self.done_items.push(done);
    }

    pub fn event(&mut self, ev: Event, out: &mut Vec<Bytes>) {
        match ev {
            Event::Start { model, .. } => {
                self.model = model;
                self.start(out);
            }
            Event::BlockStart { index, block } => {
                self.start(out);
                let kind = match block {
                    Block::Text => Kind::Message,
                    Block::Thinking => Kind::Reasoning { signature: None },
                    Block::RedactedThinking { data } => Kind::Reasoning {
                        signature: Some(data),
                    },
                    Block::ToolCall { id, name } => Kind::Call { call_id: id, name },
                };
                self.open(index, kind, out);
            }
            Event::Delta { index, delta } => {
                self.start(out);
                if self.open.as_ref().is_none_or(|o| o.block != index) {
                    let kind = match &delta {
                        Delta::Text(_) => Kind::Message,
                        Delta::Thinking(_) | Delta::Signature(_) => {
                            Kind::Reasoning { signature: None }
                        }
                        Delta::ToolArgs(_) => return,
                    };
                    self.open(index, kind, out);
                }
                let Some(item) = self.open.as_mut() else {
                    return;
                };
                let (i, oi) = (item.id.clone(), item.output_index);
                match delta {
                    Delta::Text(t) => {
                        item.text.push_str(&t);
                        self.emit(
                            "response.output_text.delta",
                            json!({"item_id": i, "output_index": oi, "content_index": 0, "delta": t, "logprobs": []}),
                            out,
                        );
                    }
                    Delta::Thinking(t) => {
                        item.text.push_str(&t);
                        self.emit(
                            "response.reasoning_text.delta",
                            json!({"item_id": i, "output_index": oi, "content_index": 0, "delta": t}),
                            out,
                        );
                    }
                    Delta::Signature(s) => {
                        if let Kind::Reasoning { signature } = &mut item.kind {
                            signature.get_or_insert_with(String::new).push_str(&s);
                        }
                    }
                    Delta::ToolArgs(a) => {
                        item.text.push_str(&a);
                        self.emit(
                            "response.function_call_arguments.delta",
                            json!({"item_id": i, "output_index": oi, "delta": a}),
                            out,
                        );
                    }
                }
            }
            Event::BlockStop { index } => {
                if self.open.as_ref().is_some_and(|o| o.block == index) {
                    self.close(out);
                }
            }
            Event::Usage(u) => self.usage.merge(u),
            Event::Finish(f) => self.finish = f.reason,
            Event::Ping => {}
        }
    }

    /// The end of a complete stream: `response.completed` (or `.incomplete`) with the whole
    /// response, usage included.
    pub fn done(&mut self, out: &mut Vec<Bytes>) {
        self.start(out);
        self.close(out);
        let (status, incomplete) = status_of(self.finish);
        let r = self.object(status, incomplete, Some(self.usage));
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(name, json!({"response": r}), out);
    }

    /// An `error` event.
    pub fn error(&mut self, e: &ProxyError, out: &mut Vec<Bytes>) {
        let body = e.body(Dialect::OpenAi);
        let err = &body["error"];
        self.emit(
            "error",
            json!({"code": err["code"], "message": err["message"], "param": err["param"]}),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Finish, ToolCall};

    #[test]
    fn stream_events_are_sequenced_and_consistent() {
        let mut r = Renderer::new(Echo::default());
        let mut out = Vec::new();
        for e in [
            Event::Start {
                id: "x".into(),
                model: "m".into(),
            },
            Event::BlockStart {
                index: 0,
                block: Block::Text,
            },
            Event::Delta {
                index: 0,
                delta: Delta::Text("Hel".into()),
            },
            Event::Delta {
                index: 0,
                delta: Delta::Text("lo".into()),
            },
            Event::BlockStop { index: 0 },
            Event::BlockStart {
                index: 1,
                block: Block::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                },
            },
            Event::Delta {
                index: 1,
                delta: Delta::ToolArgs("{}".into()),
            },
            Event::BlockStop { index: 1 },
            Event::Usage(Usage::new(3, 4)),
            Event::Finish(Finish::new(FinishReason::ToolCalls)),
        ] {
            r.event(e, &mut out);
        }
        r.done(&mut out);
        let events: Vec<Value> = out
            .iter()
            .map(|b| {
                let s = String::from_utf8_lossy(b);
                let data = s
                    .lines()
                    .nth(1)
                    .expect("data line")
                    .trim_start_matches("data: ")
                    .to_owned();
                serde_json::from_str(&data).expect("json")
            })
            .collect();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(types.first(), Some(&"response.created"));
        assert_eq!(types.last(), Some(&"response.completed"));
        let last = &events[events.len() - 1]["response"];
        assert_eq!(last["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["output"][1]["call_id"], "call_1");
        assert_eq!(last["output"][1]["arguments"], "{}");
        assert_eq!(last["usage"]["total_tokens"], 7);
    }

    #[test]
    fn complete_response_orders_reasoning_message_calls() {
        let r = Response {
            id: "x".into(),
            model: "m".into(),
            created: 1,
            parts: vec![
                Part::Thinking {
                    text: "t".into(),
                    signature: Some("s".into()),
                },
                Part::ToolCall(ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    signature: None,
                }),
                Part::text("done"),
            ],
            finish: Finish::new(FinishReason::Length),
            usage: Usage::new(1, 2),
        };
        let v: Value =
            serde_json::from_slice(&render_response(&r, &Echo::default()).expect("render"))
                .expect("json");
        let types: Vec<&str> = v["output"]
            .as_array()
            .expect("output")
            .iter()
            .filter_map(|o| o["type"].as_str())
            .collect();
        assert_eq!(types, ["reasoning", "message", "function_call"]);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["output"][0]["encrypted_content"], "s");
    }
}

//! The response phase on a stream's canonical events: one redactor per text block (text,
//! thinking), so a value split across deltas is seen whole and only the tail that could
//! still grow into a match is held. A tool call's arguments are JSON, whose escapes and
//! nested strings a redactor cannot read piece by piece: they are held until the call's
//! block ends (at most [`MAX_TOOL_ARGS`]) and then read as a whole answer's arguments are,
//! so both give the same decision. Tool-call names and ids and the answer's id are checked
//! as they start. The answer's text is kept for a JSON schema check at the end when the
//! request asked for one. The stream driver (`render/stream.rs`) passes every batch of
//! events through here before rendering.

use std::sync::Arc;

use super::Finding;
use super::detect::Entity;
use super::enforce::{Decisions, ResponsePhase};
use super::stream::Redactor;
use crate::error::ProxyError;
use crate::llm::observe::{End, Observer};
use crate::llm::text::{self, WalkError};
use crate::llm::{Block, Delta, Event};
use crate::telemetry::metrics::Metrics;

/// The most of a stream's tool-call arguments (all its open calls together) held to read
/// them whole; longer arguments end the stream (they cannot be checked, so they are not
/// released).
pub(crate) const MAX_TOOL_ARGS: usize = 1 << 20;

/// The most blocks a stream may hold open at once (text, thinking and tool calls): each
/// holds state, and an upstream that opens blocks without closing them ends the stream.
pub(crate) const MAX_OPEN_BLOCKS: usize = 256;

/// Guardrails on a stream: one redactor per text block, so a value split across deltas is
/// seen whole, and only the tail that could still grow into a match is held.
pub(crate) struct Guarded {
    phase: ResponsePhase,
    /// Where its findings and blocks are counted.
    metrics: Arc<Metrics>,
    blocks: Vec<GuardedBlock>,
    /// Tool calls' arguments so far, by block index.
    args: Vec<(usize, String)>,
    /// The bytes held in `args`, all calls together.
    args_held: usize,
    findings: Vec<Finding>,
    /// The answer's text as it went out, kept only when it must follow a JSON schema.
    answer: String,
    /// The answer outgrew what is kept for the check.
    answer_overflow: bool,
}

/// Answers kept for a schema check beyond this are not checked (and said so).
const MAX_SCHEMA_ANSWER: usize = 8 << 20;

/// A text block being redacted: its index, its redactor, and the kind of its deltas.
struct GuardedBlock {
    index: usize,
    redactor: Redactor,
    make: fn(String) -> Delta,
    /// An answer text block (what a JSON schema applies to).
    text: bool,
}

/// Why a stream stops.
enum Stop {
    Entity(Entity),
    /// Tool calls' arguments outgrew [`MAX_TOOL_ARGS`].
    ArgsTooLong,
    /// More than [`MAX_OPEN_BLOCKS`] blocks open at once.
    TooManyBlocks,
}

impl From<Entity> for Stop {
    fn from(e: Entity) -> Self {
        Self::Entity(e)
    }
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl Guarded {
    pub(crate) fn new(phase: ResponsePhase, metrics: Arc<Metrics>) -> Self {
        Self {
            phase,
            metrics,
            blocks: Vec::new(),
            args: Vec::new(),
            args_held: 0,
            findings: Vec::new(),
            answer: String::new(),
            answer_overflow: false,
        }
    }

    /// A batch of events through the guardrails: what to render, and the error that ends the
    /// stream when one blocks it (the events before it still go out).
    pub(crate) fn events(&mut self, events: Vec<Event>) -> (Vec<Event>, Option<ProxyError>) {
        let metrics = Arc::clone(&self.metrics);
        let metrics = &*metrics;
        let mut passed = Vec::with_capacity(events.len());
        for ev in events {
            let finish = matches!(ev, Event::Finish(_));
            let mut verdict = self.event(ev, &mut passed).map_err(|stop| match stop {
                Stop::Entity(entity) => self.phase.blocked(metrics, entity),
                Stop::ArgsTooLong => self.phase.too_long(
                    metrics,
                    &format!(
                        "A stream's tool-call arguments are longer than the {MAX_TOOL_ARGS} bytes held to check them."
                    ),
                ),
                Stop::TooManyBlocks => self.phase.too_long(
                    metrics,
                    &format!("A stream held more than {MAX_OPEN_BLOCKS} blocks open at once."),
                ),
            });
            if verdict.is_ok() && finish && !self.answer_overflow {
                // The whole answer is known: check it against its schema, if any.
                verdict = self
                    .phase
                    .check_schema(metrics, &self.answer, &mut Decisions::default());
                if verdict.is_err() {
                    passed.retain(|e| !matches!(e, Event::Finish(_)));
                }
            }
            if let Err(e) = verdict {
                return (passed, Some(e));
            }
        }
        (passed, None)
    }

    /// An event through the guardrails: what to render instead (a delta may shrink to
    /// nothing while its tail is held; a block's stop releases the rest first).
    fn event(&mut self, ev: Event, out: &mut Vec<Event>) -> Result<(), Stop> {
        match ev {
            Event::Delta {
                index,
                delta: Delta::ToolArgs(t),
            } => {
                if self.args_held + t.len() > MAX_TOOL_ARGS {
                    return Err(Stop::ArgsTooLong);
                }
                self.args_held += t.len();
                let pos = match self.args.iter().position(|(i, _)| *i == index) {
                    Some(p) => p,
                    None => {
                        self.open()?;
                        self.args.push((index, String::new()));
                        self.args.len() - 1
                    }
                };
                self.args[pos].1.push_str(&t);
            }
            Event::Start { id, model } => {
                let id = self.whole(id)?;
                out.push(Event::Start { id, model });
            }
            Event::BlockStart {
                index,
                block: Block::ToolCall { id, name },
            } => {
                let block = Block::ToolCall {
                    id: self.whole(id)?,
                    name: self.whole(name)?,
                };
                out.push(Event::BlockStart { index, block });
            }
            Event::Delta { index, delta } => {
                let (text, make, is_text): (String, fn(String) -> Delta, bool) = match delta {
                    Delta::Text(t) => (t, Delta::Text, true),
                    Delta::Thinking(t) => (t, Delta::Thinking, false),
                    other => {
                        out.push(Event::Delta {
                            index,
                            delta: other,
                        });
                        return Ok(());
                    }
                };
                let pos = match self.blocks.iter().position(|b| b.index == index) {
                    Some(p) => p,
                    None => {
                        self.open()?;
                        self.blocks.push(GuardedBlock {
                            index,
                            redactor: Redactor::new(self.phase.rules.clone()),
                            make,
                            text: is_text,
                        });
                        self.blocks.len() - 1
                    }
                };
                let r = &mut self.blocks[pos].redactor;
                let pass = r.push(&text);
                self.findings.append(&mut r.findings);
                let pass = pass?;
                if is_text {
                    self.keep(&pass);
                }
                if !pass.is_empty() {
                    out.push(Event::Delta {
                        index,
                        delta: make(pass),
                    });
                }
            }
            Event::BlockStop { index } => {
                self.release(Some(index), out)?;
                out.push(Event::BlockStop { index });
            }
            Event::Finish(f) => {
                self.release(None, out)?;
                out.push(Event::Finish(f));
            }
            other => out.push(other),
        }
        Ok(())
    }

    /// Room for one more open block, or the stream ends.
    fn open(&self) -> Result<(), Stop> {
        if self.blocks.len() + self.args.len() >= MAX_OPEN_BLOCKS {
            return Err(Stop::TooManyBlocks);
        }
        Ok(())
    }

    /// Keeps answer text for the schema check (only when there is one).
    fn keep(&mut self, text: &str) {
        if self.phase.schema.is_none() || self.answer_overflow {
            return;
        }
        if self.answer.len() + text.len() > MAX_SCHEMA_ANSWER {
            tracing::warn!("an answer over 8 MiB is not checked against its JSON schema");
            self.answer_overflow = true;
            self.answer = String::new();
            return;
        }
        self.answer.push_str(text);
    }

    /// A text that arrives whole (an id, a tool name), checked as a whole answer's is.
    fn whole(&mut self, t: String) -> Result<String, Entity> {
        Ok(super::apply(&t, &self.phase.rules, &mut self.findings)?.unwrap_or(t))
    }

    /// A tool call's arguments, complete: read as a whole answer's arguments string is.
    fn arguments(&mut self, args: String) -> Result<String, Entity> {
        let (rules, findings) = (&self.phase.rules, &mut self.findings);
        match text::edit_string(&args, &mut |t: &str, _| super::apply(t, rules, findings)) {
            Ok(new) => Ok(new.unwrap_or(args)),
            Err(WalkError::Stop(e)) => Err(e),
            Err(WalkError::Json(_)) => Ok(args),
        }
    }

    /// Ends the redactors of one block (or all): what they held, redacted.
    fn release(&mut self, index: Option<usize>, out: &mut Vec<Event>) -> Result<(), Entity> {
        let mut k = 0;
        while k < self.args.len() {
            if index.is_some_and(|x| x != self.args[k].0) {
                k += 1;
                continue;
            }
            let (i, args) = self.args.swap_remove(k);
            self.args_held -= args.len();
            let args = self.arguments(args)?;
            if !args.is_empty() {
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::ToolArgs(args),
                });
            }
        }
        let mut i = 0;
        while i < self.blocks.len() {
            if index.is_some_and(|x| x != self.blocks[i].index) {
                i += 1;
                continue;
            }
            let mut b = self.blocks.swap_remove(i);
            let rest = b.redactor.finish();
            self.findings.append(&mut b.redactor.findings);
            let rest = rest?;
            if b.text {
                self.keep(&rest);
            }
            if !rest.is_empty() {
                out.push(Event::Delta {
                    index: b.index,
                    delta: (b.make)(rest),
                });
            }
        }
        Ok(())
    }
}

impl Observer for Guarded {
    /// Counts and logs what the stream's guardrails found (when it ends: its headers went
    /// out before).
    fn on_end(&mut self, _end: &End) {
        super::enforce::record(
            &self.metrics,
            &self.phase.guards,
            &self.findings,
            &mut Decisions::default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::guard::{Action, Rules};

    fn guarded() -> Guarded {
        Guarded::new(
            ResponsePhase::of_rules(Rules::new(
                Entity::ALL.into_iter().map(|e| (e, Action::Redact)),
            )),
            Arc::new(Metrics::new()),
        )
    }

    fn args(index: usize, a: &str) -> Event {
        Event::Delta {
            index,
            delta: Delta::ToolArgs(a.to_owned()),
        }
    }

    fn passed_args(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    delta: Delta::ToolArgs(a),
                    ..
                } => Some(a.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A tool call's arguments are held until its block stops, then read whole: a secret
    /// split across deltas (and across a JSON escape) is redacted.
    #[test]
    fn tool_arguments_are_held_and_read_whole() {
        let mut g = guarded();
        let (out, err) = g.events(vec![
            args(0, r#"{"to":"jane.d"#),
            args(0, r#"oe@exam"#),
            args(0, r#"ple.com"}"#),
        ]);
        assert!(err.is_none());
        assert_eq!(
            passed_args(&out),
            "",
            "nothing released before the block stops"
        );
        let (out, err) = g.events(vec![Event::BlockStop { index: 0 }]);
        assert!(err.is_none());
        assert_eq!(passed_args(&out), r#"{"to":"[EMAIL]"}"#);
    }

    /// The arguments held are bounded across all of a stream's calls together, not per
    /// call: many calls each under the bound end the stream once their sum is over it.
    #[test]
    fn held_arguments_are_bounded_across_calls() {
        let mut g = guarded();
        let piece = "a".repeat(MAX_TOOL_ARGS / 4 + 1);
        let events: Vec<Event> = (0..4).map(|i| args(i, &piece)).collect();
        let (out, err) = g.events(events);
        let err = err.expect("the fourth call's arguments pass the bound");
        assert!(
            err.message.contains("tool-call arguments"),
            "{}",
            err.message
        );
        assert_eq!(passed_args(&out), "", "nothing unchecked is released");
        // Arguments released when their block stops no longer count.
        let mut g = guarded();
        for i in 0..8 {
            let (_, err) = g.events(vec![args(i, &piece), Event::BlockStop { index: i }]);
            assert!(err.is_none(), "call {i}: closed calls free their share");
        }
    }

    /// An upstream that opens blocks without closing them ends the stream at
    /// [`MAX_OPEN_BLOCKS`], text and tool calls alike.
    #[test]
    fn open_blocks_are_bounded() {
        for tool in [false, true] {
            let mut g = guarded();
            let events: Vec<Event> = (0..=MAX_OPEN_BLOCKS)
                .map(|index| {
                    if tool {
                        args(index, "{}")
                    } else {
                        Event::Delta {
                            index,
                            delta: Delta::Text("hi ".into()),
                        }
                    }
                })
                .collect();
            let (_, err) = g.events(events);
            let err = err.expect("one block too many");
            assert!(err.message.contains("blocks open"), "{}", err.message);
        }
    }
}

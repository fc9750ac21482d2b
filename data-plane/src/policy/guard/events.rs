//! The response phase on a stream's canonical events: one redactor per text block (text,
//! thinking, tool-call arguments), so a value split across deltas is seen whole and only the
//! tail that could still grow into a match is held; the answer's text is kept for a JSON
//! schema check at the end when the request asked for one. The stream driver
//! (`frontdoor/stream.rs`) passes every batch of events through here before rendering.

use super::Finding;
use super::detect::Entity;
use super::enforce::{Decisions, ResponsePhase};
use super::stream::Redactor;
use crate::error::ProxyError;
use crate::llm::{Delta, Event};
use crate::metrics::Metrics;

/// Guardrails on a stream: one redactor per text block, so a value split across deltas is
/// seen whole, and only the tail that could still grow into a match is held.
pub struct Guarded {
    phase: ResponsePhase,
    blocks: Vec<GuardedBlock>,
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

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl Guarded {
    pub fn new(phase: ResponsePhase) -> Self {
        Self {
            phase,
            blocks: Vec::new(),
            findings: Vec::new(),
            answer: String::new(),
            answer_overflow: false,
        }
    }

    /// A batch of events through the guardrails: what to render, and the error that ends the
    /// stream when one blocks it (the events before it still go out).
    pub fn events(
        &mut self,
        metrics: &Metrics,
        events: Vec<Event>,
    ) -> (Vec<Event>, Option<ProxyError>) {
        let mut passed = Vec::with_capacity(events.len());
        for ev in events {
            let finish = matches!(ev, Event::Finish(_));
            let mut verdict = self
                .event(ev, &mut passed)
                .map_err(|entity| self.phase.blocked(metrics, entity));
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

    /// Counts and logs what the stream's guardrails found (when it ends: its headers went
    /// out before).
    pub fn record(&self, metrics: &Metrics) {
        super::enforce::record(
            metrics,
            &self.phase.guards,
            &self.findings,
            &mut Decisions::default(),
        );
    }

    /// An event through the guardrails: what to render instead (a delta may shrink to
    /// nothing while its tail is held; a block's stop releases the rest first).
    fn event(&mut self, ev: Event, out: &mut Vec<Event>) -> Result<(), Entity> {
        match ev {
            Event::Delta { index, delta } => {
                let (text, make, is_text): (String, fn(String) -> Delta, bool) = match delta {
                    Delta::Text(t) => (t, Delta::Text, true),
                    Delta::Thinking(t) => (t, Delta::Thinking, false),
                    Delta::ToolArgs(t) => (t, Delta::ToolArgs, false),
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

    /// Ends the redactors of one block (or all): what they held, redacted.
    fn release(&mut self, index: Option<usize>, out: &mut Vec<Event>) -> Result<(), Entity> {
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

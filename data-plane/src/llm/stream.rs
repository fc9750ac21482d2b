//! Canonical stream events: what every upstream stream decoder produces and every front-door
//! renderer consumes. Blocks are numbered in the order they start; a block's deltas come
//! between its start and its stop.

use super::{Finish, Usage};

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The answer began.
    Start {
        id: String,
        model: String,
    },
    BlockStart {
        index: usize,
        block: Block,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    /// Usage so far (cumulative; merge with [`Usage::merge`]).
    Usage(Usage),
    Finish(Finish),
    /// Keep-alive.
    Ping,
}

/// What kind of content a block carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Text,
    Thinking,
    RedactedThinking { data: String },
    ToolCall { id: String, name: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Text(String),
    Thinking(String),
    /// The signature of a thinking block (or a Gemini thought signature of a tool call).
    Signature(String),
    /// A fragment of a tool call's JSON arguments.
    ToolArgs(String),
}

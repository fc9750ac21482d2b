//! Redaction of text that arrives in pieces (a streamed answer), without buffering it: after
//! each piece, everything is forwarded except the shortest tail that could still grow into
//! a match. For each entity that tail is the run of characters a match of it is made of
//! ([`Entity::continues`]), starting where a match can start and no longer than the longest
//! match; the text held is the longest of those tails (a word or a number, typically), plus
//! an open private-key block. A value split across any two pieces is therefore seen whole
//! before any of it is forwarded.

use super::detect::{self, Entity};
use super::{Action, Finding, Rules};

/// The most a stream holds for an unterminated private-key block; a longer one is let go
/// piece by piece (and a key that long is not a key).
const MAX_KEY_BLOCK: usize = 16 * 1024;

/// Redacts one text stream (one content block, one tool call's arguments).
#[derive(Debug)]
pub struct Redactor {
    rules: Rules,
    /// Text not yet forwarded, after `context` bytes already forwarded (kept as left context,
    /// so a match's word boundary is judged as in the whole text).
    buf: String,
    context: usize,
    /// What was found so far.
    pub findings: Vec<Finding>,
}

impl Redactor {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            buf: String::new(),
            context: 0,
            findings: Vec::new(),
        }
    }

    /// Adds a piece; returns what can be forwarded now (redacted), or the entity that blocks
    /// the stream.
    pub fn push(&mut self, piece: &str) -> Result<String, Entity> {
        self.buf.push_str(piece);
        let hold = self.hold_from();
        self.emit(hold)
    }

    /// The end of the stream: the rest, redacted.
    pub fn finish(&mut self) -> Result<String, Entity> {
        self.emit(self.buf.len())
    }

    /// Text held back now (for tests and metrics).
    pub fn held(&self) -> &str {
        &self.buf[self.context..]
    }

    /// Where the tail that could still grow into a match begins.
    fn hold_from(&self) -> usize {
        let text = &self.buf;
        let len = text.len();
        let mut from = len;
        if self.rules.has(Entity::Secret)
            && let Some(at) = detect::open_key_block(&text[self.context..])
            && len - (self.context + at) <= MAX_KEY_BLOCK
        {
            from = self.context + at;
        }
        for e in self.rules.entities() {
            let mut start = len;
            for (i, c) in text[self.context..].char_indices().rev() {
                let i = self.context + i;
                if !e.continues(c) || len - i > e.max_len() {
                    break;
                }
                start = i;
            }
            // A held tail starts where a match can: a character a match starts with, at a
            // word boundary where the pattern needs one, beginning what could be a match.
            // ASCII, as the patterns' `(?-u:\b)`.
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            while let Some(c) = text[start..].chars().next()
                && !(e.starts(c)
                    && !(e.needs_boundary() && word(text[..start].chars().next_back()))
                    && e.could_begin(&text[start..]))
            {
                start += c.len_utf8();
            }
            from = from.min(start);
        }
        from
    }

    /// Forwards `[context, upto)`, redacted; keeps the rest, with one character of context.
    fn emit(&mut self, mut upto: usize) -> Result<String, Entity> {
        let spans = detect::find_from(&self.buf, self.context, self.rules.entities());
        // A finding that reaches into the held tail is held whole.
        for s in &spans {
            if s.start < upto && s.end > upto {
                upto = s.start.max(self.context);
            }
        }
        let mut out = String::with_capacity(upto - self.context);
        let mut at = self.context;
        for s in spans
            .iter()
            .filter(|s| s.start >= self.context && s.end <= upto)
        {
            let action = self.rules.action(s.entity);
            self.findings.push(Finding {
                entity: s.entity,
                action,
            });
            match action {
                Action::Block => return Err(s.entity),
                Action::Alert => continue,
                Action::Redact | Action::Mask => {
                    out.push_str(&self.buf[at..s.start]);
                    super::replace(&self.buf[s.start..s.end], s.entity, action, &mut out);
                    at = s.end;
                }
            }
        }
        out.push_str(&self.buf[at..upto]);
        // Keep the held text and, as context, the last character forwarded.
        let keep_from = if upto > self.context {
            self.buf[..upto]
                .char_indices()
                .next_back()
                .map_or(0, |(i, _)| i)
        } else {
            0
        };
        self.buf.drain(..keep_from);
        self.context = upto - keep_from;
        Ok(out)
    }
}

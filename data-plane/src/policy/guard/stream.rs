//! Redaction of text that arrives in pieces (a streamed answer), without buffering it: after
//! each piece, everything is forwarded except the shortest tail that could still grow into
//! a match. For each entity that tail is the run of characters a match of it is made of
//! ([`Entity::continues`]), starting where a match can start and no longer than the longest
//! match; the text held is the longest of those tails (a word or a number, typically), plus
//! an open private-key block. A value split across any two pieces is therefore seen whole
//! before any of it is forwarded.
//!
//! The detectors read the normal form of the text ([`super::normalize`]), built character by
//! character as pieces arrive, so a stream is judged exactly as the whole text would be.
//! Secrets have no longest match: a candidate still growing past [`SECRET_BOUND`] blocks the
//! stream (an error event), so none of it is released — the whole answer gets the same
//! decision ([`detect::Span::overlong`]).

use super::detect::{self, Entity, SECRET_BOUND};
use super::normalize::{each_unit, is_normal, partial_escape, push_normal};
use super::{Action, Finding, Rules};

/// The most original text a redactor holds before it drops the invisible characters in it
/// (they normalise to nothing, so the detectors never see them): a held tail is bounded in
/// its normal form, and this bounds what stands behind it.
pub(super) const MAX_HELD: usize = 2 * SECRET_BOUND;

/// Redacts one text stream (one content block).
#[derive(Debug)]
pub(crate) struct Redactor {
    rules: Rules,
    /// Original text not yet forwarded, after `context` units already forwarded (kept as
    /// left context, so a match's word boundary is judged as in the whole text).
    orig: String,
    /// The normal form of `orig`.
    norm: String,
    /// Per original character: where its normal form starts in `norm` and where it starts
    /// in `orig`. `None` while the buffer is ASCII (its own normal form).
    units: Option<Vec<(usize, usize)>>,
    /// Bytes of `norm` (and, with `units`, the units) that are context only.
    context: usize,
    /// The end of what arrived when it may be the start of a `\uXXXX` escape: read once the
    /// next piece completes it (or the stream ends).
    pending: String,
    /// What was found so far.
    pub findings: Vec<Finding>,
}

impl Redactor {
    pub(crate) fn new(rules: Rules) -> Self {
        Self {
            rules,
            orig: String::new(),
            norm: String::new(),
            units: None,
            context: 0,
            pending: String::new(),
            findings: Vec::new(),
        }
    }

    /// Adds a piece; returns what can be forwarded now (redacted), or the entity that blocks
    /// the stream.
    pub(crate) fn push(&mut self, piece: &str) -> Result<String, Entity> {
        if self.pending.is_empty() && partial_escape(piece) == 0 {
            self.append(piece);
        } else {
            self.pending.push_str(piece);
            let ready = self.pending.len() - partial_escape(&self.pending);
            let rest = self.pending.split_off(ready);
            let ready = std::mem::replace(&mut self.pending, rest);
            self.append(&ready);
        }
        if self.orig.len() - self.orig_at(self.context) > MAX_HELD {
            self.drop_invisible();
        }
        let hold = self.hold_from()?;
        self.emit_to(hold)
    }

    /// Adds text to the buffer and its normal form.
    fn append(&mut self, piece: &str) {
        if self.units.is_none() && !is_normal(piece) {
            // From here on the normal form differs: map what is buffered one to one.
            self.units = Some(self.orig.char_indices().map(|(i, _)| (i, i)).collect());
        }
        match &mut self.units {
            None => {
                self.orig.push_str(piece);
                self.norm.push_str(piece);
            }
            Some(units) => {
                let base = self.orig.len();
                let norm = &mut self.norm;
                each_unit(piece, |i, c| {
                    units.push((norm.len(), base + i));
                    push_normal(c, norm);
                });
                self.orig.push_str(piece);
            }
        }
    }

    /// Drops the held characters whose normal form is empty (zero-width and the like): an
    /// upstream that sends them without end inside a held tail would otherwise grow the
    /// buffer, and the work of every piece, without bound.
    fn drop_invisible(&mut self) {
        let Some(units) = &mut self.units else {
            return;
        };
        let first = units.partition_point(|&(n, _)| n < self.context);
        let Some(&(_, held_at)) = units.get(first) else {
            return;
        };
        let mut orig = String::with_capacity(self.orig.len());
        orig.push_str(&self.orig[..held_at]);
        let mut kept = units[..first].to_vec();
        for k in first..units.len() {
            let (n, o) = units[k];
            let (next_n, next_o) = units
                .get(k + 1)
                .copied()
                .unwrap_or((self.norm.len(), self.orig.len()));
            if next_n > n {
                kept.push((n, orig.len()));
                orig.push_str(&self.orig[o..next_o]);
            }
        }
        tracing::debug!(
            dropped = self.orig.len() - orig.len(),
            "a streamed text held invisible characters beyond the bound: dropped"
        );
        *units = kept;
        self.orig = orig;
    }

    /// The end of the stream: the rest, redacted (an escape cut off is read as it stands).
    pub(crate) fn finish(&mut self) -> Result<String, Entity> {
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            if self.units.is_none() {
                self.units = Some(self.orig.char_indices().map(|(i, _)| (i, i)).collect());
            }
            if let Some(units) = &mut self.units {
                for (i, c) in pending.char_indices() {
                    units.push((self.norm.len(), self.orig.len() + i));
                    push_normal(c, &mut self.norm);
                }
            }
            self.orig.push_str(&pending);
        }
        self.emit_to(self.norm.len())
    }

    /// Text held back now (for tests), in its original form.
    #[cfg(test)]
    pub(crate) fn held(&self) -> &str {
        &self.orig[self.orig_at(self.context)..]
    }

    /// The original offset of a normal-form offset at a unit boundary: where the first
    /// character whose normal form starts there (or later) starts. Invisible characters at
    /// the end wait for what follows them (or the end of the stream).
    fn orig_at(&self, at: usize) -> usize {
        match &self.units {
            None => at,
            Some(u) => {
                let i = u.partition_point(|&(n, _)| n < at);
                u.get(i).map_or(self.orig.len(), |&(_, o)| o)
            }
        }
    }

    /// Where the character whose normal form holds byte `at` starts in the original
    /// (invisible characters before it are not part of it).
    fn unit_orig(&self, at: usize) -> usize {
        match &self.units {
            None => at,
            Some(u) => {
                let i = u.partition_point(|&(n, _)| n <= at);
                i.checked_sub(1).map_or(0, |i| u[i].1)
            }
        }
    }

    /// `at` moved back to the start of the unit that holds it (a character whose normal form
    /// is several bytes is held or forwarded whole).
    fn unit_start(&self, at: usize) -> usize {
        match &self.units {
            Some(u) if at < self.norm.len() => {
                let i = u.partition_point(|&(n, _)| n <= at);
                i.checked_sub(1).map_or(0, |i| u[i].0)
            }
            _ => at,
        }
    }

    /// Where the tail that could still grow into a match begins (in the normal form); a
    /// secret candidate grown past its bound blocks the stream.
    fn hold_from(&self) -> Result<usize, Entity> {
        let text = &self.norm;
        let len = text.len();
        let mut from = len;
        if self.rules.has(Entity::Secret)
            && let Some(at) = detect::open_key_block(&text[self.context..])
        {
            if len - (self.context + at) > SECRET_BOUND {
                if self.rules.action(Entity::Secret) > Action::Alert {
                    return Err(Entity::Secret);
                }
            } else {
                from = self.context + at;
            }
        }
        for e in self.rules.entities() {
            let bounded = *e != Entity::Secret || self.rules.action(*e) == Action::Alert;
            // The run of characters a match is made of, back from the end: a bounded
            // pattern's growing match starts within its longest match of the end; a secret's
            // run is followed one byte further, to see it pass its bound.
            let reach = e.max_len() + usize::from(!bounded);
            let mut start = len;
            for (i, c) in text[self.context..].char_indices().rev() {
                let i = self.context + i;
                if !e.continues(c) || len - i > reach {
                    break;
                }
                start = i;
            }
            // A held tail starts where a match can: a character a match starts with, at a
            // word boundary where the pattern needs one, beginning what could be a match.
            // ASCII, as the patterns' `(?-u:\b)`.
            while let Some(c) = text[start..].chars().next()
                && !(e.starts(c)
                    && e.may_start(text[..start].chars().next_back(), &text[start..])
                    && e.could_begin(&text[start..]))
            {
                start += c.len_utf8();
            }
            if !bounded && len - start > e.max_len() {
                return Err(*e);
            }
            from = from.min(start);
        }
        Ok(self.unit_start(from))
    }

    /// Forwards `[context, upto)` of the normal form — the original text behind it,
    /// redacted (with nothing held, the invisible characters after it too); keeps the rest,
    /// with one character of context.
    fn emit_to(&mut self, mut upto: usize) -> Result<String, Entity> {
        let spans = detect::find_from(&self.norm, self.context, self.rules.entities());
        // A finding that reaches into the held tail is held whole.
        for s in &spans {
            if s.start < upto && s.end > upto {
                upto = self.unit_start(s.start.max(self.context));
            }
        }
        // Nothing held: invisible characters at the end go out too (they cannot be part of
        // what follows them).
        let all = upto == self.norm.len();
        let orig_upto = if all {
            self.orig.len()
        } else {
            self.orig_at(upto)
        };
        let mut out = String::with_capacity(orig_upto.saturating_sub(self.orig_at(self.context)));
        let mut at = self.orig_at(self.context);
        for s in spans
            .iter()
            .filter(|s| s.start >= self.context && s.end <= upto)
        {
            let action = super::action_for(&self.rules, s);
            self.findings.push(Finding {
                entity: s.entity,
                action,
            });
            match action {
                Action::Block => return Err(s.entity),
                Action::Alert => continue,
                Action::Redact | Action::Mask => {
                    let start = self.unit_orig(s.start).max(at);
                    let end = self.orig_at(s.end);
                    if end <= at {
                        continue;
                    }
                    out.push_str(&self.orig[at..start]);
                    super::replace(&self.orig[start..end], s.entity, action, &mut out);
                    at = end;
                }
            }
        }
        out.push_str(&self.orig[at..orig_upto]);
        self.keep_from(upto, all);
        Ok(out)
    }

    /// Drops what is forwarded, keeping the last unit before `upto` as context (`all`: the
    /// invisible characters after it were forwarded too).
    fn keep_from(&mut self, upto: usize, all: bool) {
        let keep = if upto > self.context {
            self.unit_start(
                self.norm[..upto]
                    .char_indices()
                    .next_back()
                    .map_or(0, |(i, _)| i),
            )
        } else {
            0
        };
        let orig_keep = self.orig_at(keep);
        self.norm.drain(..keep);
        self.orig.drain(..orig_keep);
        if let Some(units) = &mut self.units {
            let first = units.partition_point(|&(n, _)| n < keep);
            units.drain(..first);
            for u in units.iter_mut() {
                u.0 -= keep;
                u.1 -= orig_keep;
            }
            if all {
                let trailing = units.partition_point(|&(n, _)| n < self.norm.len());
                if let Some(&(_, o)) = units.get(trailing) {
                    self.orig.truncate(o);
                    units.truncate(trailing);
                }
            }
            if is_normal(&self.orig) {
                self.units = None;
            }
        }
        self.context = upto - keep;
    }
}

//! The one JSON reader of a request: a tokenizer over text that is already UTF-8, strict
//! (RFC 8259: no comments, no trailing commas, no lone surrogates, no control characters in
//! strings) and iterative (any depth, memory in proportion to the depth, never to the size).
//! Numbers are located, never converted, so `1e400` is a number like any other.
//!
//! Every stage that reads a request body reads it through this module: the front door
//! checks the whole body and locates its top-level fields with it ([`super::raw`]), the
//! guardrails walk every string, key and number with it, the cache key and the audit trail's
//! prompt text come from it. A body it refuses is refused whole (400); a body it accepts is
//! read the same way by every stage, so no stage can skip what another lets through.

use std::borrow::Cow;
use std::ops::Range;

/// Why a text is not JSON, with the byte offset where that was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct JsonError {
    pub what: &'static str,
    pub at: usize,
}

fn err<T>(what: &'static str, at: usize) -> Result<T, JsonError> {
    Err(JsonError { what, at })
}

/// One token and where it is in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    ObjectStart(usize),
    /// The end of an object: the offset just past its `}`.
    ObjectEnd(usize),
    ArrayStart(usize),
    ArrayEnd(usize),
    /// An object member's name.
    Key(Str),
    String(Str),
    /// A number's text, as written.
    Number(Range32),
    True(Range32),
    False(Range32),
    Null(Range32),
}

impl Token {
    /// Where the token starts in the text.
    pub(crate) fn start(&self) -> usize {
        match *self {
            Token::ObjectStart(p) | Token::ArrayStart(p) => p,
            Token::ObjectEnd(p) | Token::ArrayEnd(p) => p - 1,
            Token::Key(s) | Token::String(s) => s.span.start as usize,
            Token::Number(r) | Token::True(r) | Token::False(r) | Token::Null(r) => {
                r.start as usize
            }
        }
    }
}

/// A byte range that fits in a token (bodies are far below 4 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range32 {
    pub start: u32,
    pub end: u32,
}

impl Range32 {
    fn new(r: Range<usize>) -> Self {
        Self {
            start: r.start as u32,
            end: r.end as u32,
        }
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A string token: its span with the quotes, and whether it holds an escape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Str {
    pub span: Range32,
    pub escaped: bool,
}

impl Str {
    /// The string's value: a slice of the text when it has no escape.
    pub(crate) fn value<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let inner = &text[self.span.start as usize + 1..self.span.end as usize - 1];
        if self.escaped {
            Cow::Owned(unescape(inner))
        } else {
            Cow::Borrowed(inner)
        }
    }
}

/// Where the tokenizer is in the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object.
    Key,
    /// After a value: `,`, the closing bracket, or the end of the text.
    Next,
    Done,
}

/// The tokens of a JSON text, in order; the first error ends them.
#[derive(Debug)]
pub(crate) struct Tokens<'t> {
    b: &'t [u8],
    at: usize,
    /// Open containers: `true` for an object.
    open: Vec<bool>,
    want: Want,
}

impl<'t> Tokens<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            b: text.as_bytes(),
            at: 0,
            open: Vec::new(),
            want: Want::Value,
        }
    }

    /// How many containers are open.
    pub(crate) fn depth(&self) -> usize {
        self.open.len()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn close(&mut self, object: bool) -> Token {
        self.at += 1;
        self.open.pop();
        self.want = if self.open.is_empty() {
            Want::Done
        } else {
            Want::Next
        };
        if object {
            Token::ObjectEnd(self.at)
        } else {
            Token::ArrayEnd(self.at)
        }
    }

    fn after_value(&mut self) {
        self.want = if self.open.is_empty() {
            Want::Done
        } else {
            Want::Next
        };
    }

    fn value(&mut self) -> Result<Token, JsonError> {
        let start = self.at;
        let Some(&c) = self.b.get(start) else {
            return err("expected a value, found the end", start);
        };
        let t = match c {
            b'{' => {
                self.at += 1;
                self.open.push(true);
                self.want = Want::KeyOrEnd;
                return Ok(Token::ObjectStart(start));
            }
            b'[' => {
                self.at += 1;
                self.open.push(false);
                self.want = Want::ValueOrEnd;
                return Ok(Token::ArrayStart(start));
            }
            b'"' => Token::String(self.string()?),
            b'-' | b'0'..=b'9' => Token::Number(self.number()?),
            b't' => Token::True(self.literal(b"true")?),
            b'f' => Token::False(self.literal(b"false")?),
            b'n' => Token::Null(self.literal(b"null")?),
            _ => return err("expected a value", start),
        };
        self.after_value();
        Ok(t)
    }

    fn literal(&mut self, word: &[u8]) -> Result<Range32, JsonError> {
        let start = self.at;
        if self.b.get(start..start + word.len()) != Some(word) {
            return err("expected true, false or null", start);
        }
        self.at += word.len();
        Ok(Range32::new(start..self.at))
    }

    fn digits(&mut self) -> usize {
        let from = self.at;
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - from
    }

    fn number(&mut self) -> Result<Range32, JsonError> {
        let start = self.at;
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.b.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return err("expected a digit", self.at),
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return err("expected a digit after the decimal point", self.at);
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.b.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return err("expected a digit in the exponent", self.at);
            }
        }
        Ok(Range32::new(start..self.at))
    }

    /// A string from its opening quote; escapes are checked (surrogates paired).
    fn string(&mut self) -> Result<Str, JsonError> {
        let start = self.at;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            // Runs of plain characters: everything but `"`, `\` and control characters.
            i = plain_run(self.b, i);
            match self.b.get(i) {
                None => return err("unterminated string", start),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    i = self.escape(i)?;
                }
                Some(_) => return err("control character in a string", i),
            }
        }
        self.at = i + 1;
        Ok(Str {
            span: Range32::new(start..self.at),
            escaped,
        })
    }

    /// Checks the escape at `i` (its backslash); returns the offset after it.
    fn escape(&self, i: usize) -> Result<usize, JsonError> {
        match self.b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let unit = hex4(self.b, i + 2).ok_or(JsonError {
                    what: "bad \\u escape",
                    at: i,
                })?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (self.b.get(i + 6) == Some(&b'\\')
                            && self.b.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(self.b, i + 8))
                        .flatten();
                        match low {
                            Some(0xDC00..=0xDFFF) => Ok(i + 12),
                            _ => err("lone surrogate in a \\u escape", i),
                        }
                    }
                    0xDC00..=0xDFFF => err("lone surrogate in a \\u escape", i),
                    _ => Ok(i + 6),
                }
            }
            _ => err("bad escape", i),
        }
    }
}

/// The offset of the first byte at or after `i` that is `"`, `\` or a control character
/// (or the end), eight bytes at a time: a word has one when one of its bytes, XORed with
/// the quote or the backslash, or left as is, is below the limit (0 or 0x20), which the
/// borrow of a subtraction shows in that byte's high bit. Bytes after the first such byte
/// may show falsely, the first never does, so the lowest flag is exact.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES * 0x80;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    while let Some(word) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let flags = (below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20))
            & HIGHS;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

impl Iterator for Tokens<'_> {
    type Item = Result<Token, JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.step();
        if r.is_err() {
            self.want = Want::Done;
            self.at = self.b.len();
        }
        r.transpose()
    }
}

impl Tokens<'_> {
    fn step(&mut self) -> Result<Option<Token>, JsonError> {
        self.ws();
        let at = self.at;
        let c = self.b.get(at).copied();
        let t = match self.want {
            Want::Done => {
                return match c {
                    None => Ok(None),
                    Some(_) => err("text after the end of the JSON value", at),
                };
            }
            Want::Value => self.value()?,
            Want::ValueOrEnd if c == Some(b']') => self.close(false),
            Want::ValueOrEnd => self.value()?,
            Want::KeyOrEnd if c == Some(b'}') => self.close(true),
            Want::KeyOrEnd | Want::Key => {
                if c != Some(b'"') {
                    return err("expected a string key", at);
                }
                let key = self.string()?;
                self.ws();
                if self.b.get(self.at) != Some(&b':') {
                    return err("expected `:` after a key", self.at);
                }
                self.at += 1;
                self.want = Want::Value;
                Token::Key(key)
            }
            Want::Next => {
                let object = self.open.last().copied().unwrap_or(false);
                match (object, c) {
                    (true, Some(b',')) => {
                        self.at += 1;
                        self.want = Want::Key;
                        return self.step();
                    }
                    (false, Some(b',')) => {
                        self.at += 1;
                        self.want = Want::Value;
                        return self.step();
                    }
                    (true, Some(b'}')) => self.close(true),
                    (false, Some(b']')) => self.close(false),
                    (_, None) => return err("unexpected end of the text", at),
                    _ => return err("expected `,` or a closing bracket", at),
                }
            }
        };
        Ok(Some(t))
    }
}

/// Checks that `text` is one JSON value.
pub(crate) fn validate(text: &str) -> Result<(), JsonError> {
    Tokens::new(text).try_for_each(|t| t.map(drop))
}

/// Decodes a string's escapes (the text between its quotes, already checked).
pub(crate) fn unescape(inner: &str) -> String {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < b.len() {
        let Some(n) = memchr::memchr(b'\\', &b[i..]) else {
            out.push_str(&inner[i..]);
            break;
        };
        out.push_str(&inner[i..i + n]);
        i += n;
        let c = match b.get(i + 1) {
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let unit = hex4(b, i + 2).unwrap_or(0xFFFD);
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex4(b, i + 8).unwrap_or(0);
                    i += 6;
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00)))
                        .unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(unit).unwrap_or('\u{FFFD}')
                }
            }
            Some(&c) => char::from(c),
            None => break,
        };
        i += if b.get(i + 1) == Some(&b'u') { 6 } else { 2 };
        out.push(c);
    }
    out
}

/// Writes `s` as a JSON string (with its quotes).
pub(crate) fn quote(s: &str, out: &mut String) {
    out.push('"');
    let mut from = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push_str(esc);
        }
        from = i + c.len_utf8();
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// `s` as a JSON string.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote(s, &mut out);
    out
}

/// Replacements of byte ranges of a text, applied in one pass (ranges in order, disjoint).
#[derive(Debug, Default)]
pub(crate) struct Splice {
    edits: Vec<(Range<usize>, String)>,
}

impl Splice {
    pub(crate) fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// Replaces `range`; ranges come in text order and never overlap.
    pub(crate) fn replace(&mut self, range: Range<usize>, with: String) {
        self.edits.push((range, with));
    }

    /// The text with every replacement made.
    pub(crate) fn apply(mut self, text: &str) -> String {
        self.edits.sort_by_key(|(r, _)| r.start);
        let extra: usize = self.edits.iter().map(|(_, w)| w.len()).sum();
        let mut out = String::with_capacity(text.len() + extra);
        let mut at = 0;
        for (r, with) in &self.edits {
            if r.start < at {
                continue;
            }
            out.push_str(&text[at..r.start]);
            out.push_str(with);
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Vec<Token>, JsonError> {
        Tokens::new(text).collect()
    }

    #[test]
    fn accepts_what_serde_json_accepts_and_refuses_the_rest() {
        for ok in [
            "{}",
            "[]",
            r#"{"a":[1,-2.5e+10,0,true,false,null,"x\"y\\u00e9"]}"#,
            " [ 1 , 2 ] ",
            "1e400",
            "-0.0E-7",
            r#""\ud83d\ude00""#,
            r#"{"a":{"b":{"c":[[[]]]}}}"#,
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(ok).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "01",
            "1.",
            "1e",
            "-",
            "tru",
            "nul",
            "[1 2]",
            "{} {}",
            "\"\\x\"",
            "\"a\nb\"",
            "\"abc",
            "[1]]",
            "{\"a\":1}}",
            "// c\n{}",
            "NaN",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(bad).is_err(),
                "serde_json refuses {bad:?} too"
            );
        }
        // Stricter than serde_json's skipping (its `String` refuses them too): a lone
        // surrogate is not text any upstream reads the same way.
        for bad in ["\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\""] {
            assert!(validate(bad).is_err(), "{bad:?}");
            assert!(serde_json::from_str::<String>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn any_depth_is_read_without_recursion() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert!(validate(&deep).is_ok());
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(validate(&deep_obj).is_ok());
    }

    #[test]
    fn tokens_carry_their_spans() {
        let text = r#"{"k":"v\n","n":12,"a":[null]}"#;
        let t = tokens(text).expect("valid");
        assert_eq!(t.len(), 10);
        let Token::Key(k) = t[1] else {
            panic!("{:?}", t[1])
        };
        assert_eq!(k.value(text), "k");
        let Token::String(v) = t[2] else {
            panic!("{:?}", t[2])
        };
        assert!(v.escaped);
        assert_eq!(v.value(text), "v\n");
        assert_eq!(&text[v.span.range()], r#""v\n""#);
        let Token::Number(n) = t[4] else {
            panic!("{:?}", t[4])
        };
        assert_eq!(&text[n.range()], "12");
        assert_eq!(t[9], Token::ObjectEnd(text.len()));
    }

    /// The word-at-a-time scan stops where the byte-at-a-time one does, for every byte
    /// value at every offset.
    #[test]
    fn plain_runs_end_where_a_byte_scan_ends() {
        let naive = |b: &[u8], i: usize| {
            i + b[i..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(b.len() - i)
        };
        let mut rng = fastrand::Rng::with_seed(11);
        for stop in 0..=255u8 {
            for at in 0..20 {
                let mut b: Vec<u8> = (0..24).map(|_| rng.u8(0x20..=0xff)).collect();
                b.retain(|&c| c != b'"' && c != b'\\');
                if at < b.len() {
                    b[at] = stop;
                }
                for start in 0..b.len().min(10) {
                    assert_eq!(plain_run(&b, start), naive(&b, start), "{b:?} from {start}");
                }
            }
        }
    }

    #[test]
    fn strings_decode_as_serde_json_decodes_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        const PIECES: &[&str] = &[
            "a",
            "é",
            "😀",
            "\\n",
            "\\t",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\r",
            "\\u0041",
            "\\u00e9",
            "\\u20ac",
            "\\ud83d\\ude00",
            "\\u0000",
            " ",
            "\\u200b",
        ];
        for _ in 0..5000 {
            let inner: String = (0..rng.usize(0..12))
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            let text = format!("\"{inner}\"");
            let t = tokens(&text).expect("valid");
            let Token::String(s) = t[0] else {
                panic!("{t:?}")
            };
            let ours = s.value(&text);
            let theirs: String = serde_json::from_str(&text).expect("serde_json");
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(
                serde_json::from_str::<String>(&quoted(&ours)).expect("quoted"),
                theirs
            );
        }
    }

    #[test]
    fn splices_replace_ranges_in_order() {
        let mut s = Splice::default();
        s.replace(6..9, "\"Z\"".into());
        s.replace(0..1, "[".into());
        assert_eq!(s.apply("{\"a\": \"b\"}"), "[\"a\": \"Z\"}");
    }
}

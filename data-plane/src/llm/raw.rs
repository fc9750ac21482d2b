//! A JSON object kept as the client's bytes: its top-level fields are located, their values
//! are not parsed. Same-format passthrough edits a field or two (the upstream model name,
//! usage reporting on streams) and writes the rest back byte for byte, unknown fields
//! included.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::json::{JsonError, Token, Tokens};

#[derive(Clone, Debug)]
struct Field {
    key: Box<str>,
    /// The value's span of the text.
    value: Range<usize>,
}

/// A top-level JSON object over the client's bytes.
///
/// The body is checked to be UTF-8 and JSON once, here; every later read of a field reads the
/// checked text, and `bytes` shares its allocation. An edit writes a new text and reads it
/// again, so every reader after it sees the edited object.
#[derive(Clone, Debug)]
pub struct RawObject {
    text: Arc<str>,
    bytes: Bytes,
    fields: Vec<Field>,
}

/// Lends an `Arc<str>` to `Bytes` without copying it.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Why a body is not a JSON object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not UTF-8 (at byte {at})")]
    Utf8 { at: usize },
    #[error("the body is not valid JSON: {0}")]
    Json(#[from] JsonError),
    #[error("the body must be a JSON object")]
    NotObject,
    #[error("duplicate field `{0}`")]
    Duplicate(String),
}

/// The top-level fields of an object text: their names and value spans.
fn top_level(text: &str) -> Result<Vec<Field>, ParseError> {
    let mut tokens = Tokens::new(text);
    match tokens.next() {
        Some(Ok(Token::ObjectStart(_))) => {}
        Some(Err(e)) => return Err(e.into()),
        _ => return Err(ParseError::NotObject),
    }
    let mut fields: Vec<Field> = Vec::with_capacity(8);
    // The member being read: its name, and where its value starts.
    let mut member: Option<(Box<str>, Option<usize>)> = None;
    while let Some(t) = tokens.next() {
        let t = t?;
        let depth = tokens.depth();
        if let Token::Key(k) = t
            && depth == 1
        {
            let name = k.value(text);
            if fields.iter().any(|f| *f.key == *name) {
                return Err(ParseError::Duplicate(name.into_owned()));
            }
            member = Some((name.into(), None));
            continue;
        }
        if let Some((_, start @ None)) = &mut member {
            *start = Some(t.start());
        }
        // A value ended at depth 1: a scalar there, or a container closing back to it.
        let end = match t {
            Token::ObjectEnd(_) if depth == 0 => break,
            Token::String(s) if depth == 1 => s.span.end as usize,
            Token::Number(r) | Token::True(r) | Token::False(r) | Token::Null(r) if depth == 1 => {
                r.end as usize
            }
            Token::ObjectEnd(e) | Token::ArrayEnd(e) if depth == 1 => e,
            _ => continue,
        };
        if let Some((key, Some(start))) = member.take() {
            fields.push(Field {
                key,
                value: start..end,
            });
        }
    }
    // The rest of the text must be nothing but whitespace.
    for t in tokens {
        t?;
    }
    Ok(fields)
}

impl RawObject {
    /// Locates the top-level fields; the whole body is checked to be one valid JSON object
    /// (by [`super::json`], the reader every stage shares).
    pub fn parse(bytes: Bytes) -> Result<Self, ParseError> {
        let text: Arc<str> = match std::str::from_utf8(&bytes) {
            Ok(t) => Arc::from(t),
            Err(e) => {
                return Err(ParseError::Utf8 {
                    at: e.valid_up_to(),
                });
            }
        };
        let fields = top_level(&text)?;
        Ok(Self {
            bytes: Bytes::from_owner(SharedText(text.clone())),
            text,
            fields,
        })
    }

    /// The JSON text of a field's value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.field_text(key).map(str::as_bytes)
    }

    /// The JSON text of a field's value, as `str`.
    pub fn field_text(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| &*f.key == key)
            .map(|f| &self.text[f.value.clone()])
    }

    /// A field parsed as `T`; absent and `null` are `None`.
    pub fn parse_field<'a, T: Deserialize<'a>>(
        &'a self,
        key: &str,
    ) -> Result<Option<T>, serde_json::Error> {
        match self.field_text(key) {
            None | Some("null") => Ok(None),
            Some(t) => serde_json::from_str(t).map(Some),
        }
    }

    /// Sets a field to a JSON value (replacing it, or appending it).
    pub fn set(&mut self, key: &str, json: impl Into<Bytes>) -> Result<(), ParseError> {
        self.edit(&[(key, json.into())], None)
    }

    /// Sets a field to a string.
    pub fn set_str(&mut self, key: &str, s: &str) -> Result<(), ParseError> {
        self.set(key, super::json::quoted(s))
    }

    pub fn remove(&mut self, key: &str) -> Result<(), ParseError> {
        self.edit(&[], Some(key))
    }

    /// Replaces (or appends) fields and drops one, then reads the new text again: a value
    /// that is not JSON leaves the object as it was and is an error.
    pub fn edit(&mut self, edits: &[(&str, Bytes)], drop: Option<&str>) -> Result<(), ParseError> {
        if edits.is_empty() && drop.is_none_or(|d| self.get(d).is_none()) {
            return Ok(());
        }
        *self = Self::parse(self.write(edits, drop))?;
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| &*f.key)
    }

    /// The object as JSON.
    pub fn to_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The object as JSON with some fields replaced (or appended) by JSON values, leaving
    /// the object itself as it is.
    pub fn to_bytes_with(&self, edits: &[(&str, Bytes)]) -> Bytes {
        if edits.is_empty() {
            return self.to_bytes();
        }
        self.write(edits, None)
    }

    fn write(&self, edits: &[(&str, Bytes)], drop: Option<&str>) -> Bytes {
        let extra: usize = edits.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = BytesMut::with_capacity(self.bytes.len() + extra + 2);
        out.extend_from_slice(b"{");
        let mut first = true;
        let mut field = |out: &mut BytesMut, key: &str, value: &[u8]| {
            if !std::mem::take(&mut first) {
                out.extend_from_slice(b",");
            }
            write_key(out, key);
            out.extend_from_slice(b":");
            out.extend_from_slice(value);
        };
        for f in self.fields.iter().filter(|f| Some(&*f.key) != drop) {
            match edits.iter().find(|(k, _)| *k == &*f.key) {
                Some((_, v)) => field(&mut out, &f.key, v),
                None => field(&mut out, &f.key, self.text[f.value.clone()].as_bytes()),
            }
        }
        for (k, v) in edits {
            if !self.fields.iter().any(|f| &*f.key == *k) {
                field(&mut out, k, v);
            }
        }
        out.extend_from_slice(b"}");
        out.freeze()
    }

    /// The body as text (checked once, when read; after an edit, the edited body).
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn write_key(out: &mut BytesMut, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\"");
    } else {
        out.extend_from_slice(super::json::quoted(key).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unedited_objects_are_the_original_bytes() {
        let body = Bytes::from_static(br#"{"model":"a", "x": [1, {"y": "\u00e9"}]}"#);
        let o = RawObject::parse(body.clone()).expect("parse");
        assert_eq!(o.to_bytes(), body);
        assert_eq!(o.get("x"), Some(&br#"[1, {"y": "\u00e9"}]"#[..]));
        assert_eq!(o.keys().collect::<Vec<_>>(), ["model", "x"]);
    }

    #[test]
    fn edits_keep_every_other_field_byte_for_byte() {
        let body = Bytes::from_static(
            br#"{"model":"client-name","messages":[{"role":"user","content":"hi\n"}],"seed":7,"odd\"key":true}"#,
        );
        let mut o = RawObject::parse(body).expect("parse");
        o.set_str("model", "upstream-name").expect("set");
        o.set("stream_options", &br#"{"include_usage":true}"#[..])
            .expect("set");
        o.remove("seed").expect("remove");
        assert!(o.set("x", &b"{"[..]).is_err(), "an edit must be JSON");
        assert!(o.text().contains("upstream-name"), "text() sees the edit");
        let v: serde_json::Value = serde_json::from_slice(&o.to_bytes()).expect("valid JSON");
        assert_eq!(v["model"], "upstream-name");
        assert_eq!(v["messages"][0]["content"], "hi\n");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["odd\"key"], true);
        assert!(v.get("seed").is_none());
        assert_eq!(
            o.parse_field::<String>("model").expect("str").as_deref(),
            Some("upstream-name")
        );
    }

    #[test]
    fn edits_over_the_bytes_leave_the_object_alone() {
        let body = Bytes::from_static(br#"{"model":"client","messages":[],"stream":true}"#);
        let o = RawObject::parse(body.clone()).expect("parse");
        let out = o.to_bytes_with(&[
            ("model", Bytes::from_static(br#""upstream""#)),
            (
                "stream_options",
                Bytes::from_static(br#"{"include_usage":true}"#),
            ),
        ]);
        assert_eq!(
            &out[..],
            br#"{"model":"upstream","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(o.to_bytes(), body, "the object is unchanged");
        assert_eq!(o.to_bytes_with(&[]), body);
    }

    #[test]
    fn non_objects_and_duplicates_are_refused() {
        for bad in [
            &b"[1]"[..],
            b"\"x\"",
            b"{\"a\":1,\"a\":2}",
            b"{\"a\":",
            b"",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                RawObject::parse(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}

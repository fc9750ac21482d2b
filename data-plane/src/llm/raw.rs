//! A JSON object kept as the client's bytes: its top-level fields are located, their values
//! are not parsed. Same-format passthrough edits a field or two (the upstream model name,
//! usage reporting on streams) and writes the rest back byte for byte, unknown fields
//! included.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Clone, Debug)]
enum Value {
    /// A span of the original bytes.
    Span(Range<usize>),
    /// A replacement, already JSON.
    Owned(Bytes),
}

#[derive(Clone, Debug)]
struct Field {
    key: Box<str>,
    value: Value,
}

/// A top-level JSON object over the client's bytes.
///
/// The body is checked to be UTF-8 once, here; every later parse of a field reads the checked
/// text (`serde_json::from_str` does not validate again), and `bytes` shares its allocation.
#[derive(Clone, Debug)]
pub struct RawObject {
    text: Arc<str>,
    bytes: Bytes,
    fields: Vec<Field>,
    edited: bool,
}

/// Lends an `Arc<str>` to `Bytes` without copying it.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                    }
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl RawObject {
    /// Locates the top-level fields; the whole body is still checked to be valid JSON.
    pub fn parse(bytes: Bytes) -> Result<Self, serde_json::Error> {
        let text: Arc<str> = match std::str::from_utf8(&bytes) {
            Ok(t) => Arc::from(t),
            // serde_json names the position of the bad byte.
            Err(_) => {
                return Err(serde_json::from_slice::<de::IgnoredAny>(&bytes)
                    .err()
                    .unwrap_or_else(|| de::Error::custom("the body is not UTF-8")));
            }
        };
        let base = text.as_ptr() as usize;
        let fields = {
            let Fields(found) = serde_json::from_str::<Fields<'_>>(&text)?;
            found
                .into_iter()
                .map(|(k, v)| {
                    let start = v.get().as_ptr() as usize - base;
                    Field {
                        key: k.into(),
                        value: Value::Span(start..start + v.get().len()),
                    }
                })
                .collect()
        };
        Ok(Self {
            bytes: Bytes::from_owner(SharedText(text.clone())),
            text,
            fields,
            edited: false,
        })
    }

    fn value<'a>(&'a self, v: &'a Value) -> &'a [u8] {
        match v {
            Value::Span(r) => &self.bytes[r.clone()],
            Value::Owned(b) => b,
        }
    }

    /// The JSON text of a field's value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| &*f.key == key)
            .map(|f| self.value(&f.value))
    }

    /// A field parsed as `T`; absent and `null` are `None`.
    pub fn parse_field<'a, T: Deserialize<'a>>(
        &'a self,
        key: &str,
    ) -> Result<Option<T>, serde_json::Error> {
        match self
            .fields
            .iter()
            .find(|f| &*f.key == key)
            .map(|f| &f.value)
        {
            None => Ok(None),
            Some(Value::Span(r)) if &self.text[r.clone()] == "null" => Ok(None),
            Some(Value::Span(r)) => serde_json::from_str(&self.text[r.clone()]).map(Some),
            Some(Value::Owned(b)) if &b[..] == b"null" => Ok(None),
            Some(Value::Owned(b)) => serde_json::from_slice(b).map(Some),
        }
    }

    /// Sets a field to a JSON value (replacing it, or appending it).
    pub fn set(&mut self, key: &str, json: impl Into<Bytes>) {
        self.edited = true;
        let value = Value::Owned(json.into());
        match self.fields.iter_mut().find(|f| &*f.key == key) {
            Some(f) => f.value = value,
            None => self.fields.push(Field {
                key: key.into(),
                value,
            }),
        }
    }

    /// Sets a field to a string.
    pub fn set_str(&mut self, key: &str, s: &str) {
        let json = serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec());
        self.set(key, json);
    }

    pub fn remove(&mut self, key: &str) {
        let before = self.fields.len();
        self.fields.retain(|f| &*f.key != key);
        self.edited |= self.fields.len() != before;
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| &*f.key)
    }

    /// The object as JSON: the original bytes when nothing was edited.
    pub fn to_bytes(&self) -> Bytes {
        if !self.edited {
            return self.bytes.clone();
        }
        let mut out = BytesMut::with_capacity(self.bytes.len() + 64);
        out.extend_from_slice(b"{");
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",");
            }
            write_key(&mut out, &f.key);
            out.extend_from_slice(b":");
            out.extend_from_slice(self.value(&f.value));
        }
        out.extend_from_slice(b"}");
        out.freeze()
    }

    /// The object as JSON with some fields replaced (or appended) by JSON values, leaving
    /// the object itself as it is.
    pub fn to_bytes_with(&self, edits: &[(&str, Bytes)]) -> Bytes {
        if edits.is_empty() {
            return self.to_bytes();
        }
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
        for f in &self.fields {
            match edits.iter().find(|(k, _)| *k == &*f.key) {
                Some((_, v)) => field(&mut out, &f.key, v),
                None => field(&mut out, &f.key, self.value(&f.value)),
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

    /// The original bytes.
    pub fn original(&self) -> &Bytes {
        &self.bytes
    }

    /// The original body as text (checked once, when parsed).
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn write_key(out: &mut BytesMut, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\"");
    } else if let Ok(v) = serde_json::to_vec(key) {
        out.extend_from_slice(&v);
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
        o.set_str("model", "upstream-name");
        o.set("stream_options", &br#"{"include_usage":true}"#[..]);
        o.remove("seed");
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

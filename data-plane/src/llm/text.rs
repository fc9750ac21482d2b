//! Every text a model reads in a JSON body: each string, object key and number, at any
//! depth and under any name (tool inputs are arbitrary JSON, so a value named `data`, `url`
//! or `id` is text like any other), a string that is itself JSON (tool-call arguments) read
//! again inside, and base64 or percent-encoded payloads that decode to text. What is left
//! out is what no model reads as text:
//!
//! - binary payloads: base64 that does not decode to UTF-8 text (images, audio, PDFs), in a
//!   `data:` URL, a base64 `source`, `input_audio` or `file_data`;
//! - opaque signed blobs the provider checks: a thinking block's `signature`, a reasoning
//!   item's `encrypted_content`, a redacted thinking block's `data` — only where such blocks
//!   are on the wire (an element of a `content`, `input`, `output` or `thinking_blocks`
//!   array), never inside a tool's input, which the model reads whatever it claims to be.
//!
//! [`edit`] walks a body with the one JSON reader ([`super::json`]) and lets a check replace
//! any text; the body is rewritten only where a text changed.

use base64::Engine as _;

use super::json::{self, JsonError, Splice, Str, Token, Tokens};

/// What kind of text a check is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// An object member's name.
    Key,
    /// A string value.
    String,
    /// A number, as written.
    Number,
    /// The text a base64 or percent-encoded payload decodes to.
    Encoded,
}

/// How a walk reads a body (nothing to choose yet: every text is read).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {}

/// A walk that ended early.
#[derive(Debug)]
pub(crate) enum WalkError<E> {
    /// The text is not JSON.
    Json(JsonError),
    /// The check stopped it.
    Stop(E),
}

/// Names whose string value is judged when its object ends (by the object's `type`).
const OPAQUE_WHEN_TYPED: &[&str] = &["data", "signature", "encrypted_content", "file_data"];

/// One open container.
#[derive(Debug, Default)]
struct Frame {
    object: bool,
    /// The member name this container is the value of.
    parent_key: Option<String>,
    /// For an element of an array: the member name of that array.
    in_array: Option<String>,
    /// The member being read.
    key: Option<String>,
    /// The object's `type` and `media_type`, once read.
    kind: Option<String>,
    /// Members named in [`OPAQUE_WHEN_TYPED`], judged at the end.
    deferred: Vec<(String, Str)>,
}

/// Calls `check` on every text of `json` (see the module doc); it returns a replacement or
/// `None`. The result is the JSON text with every replacement made, or `None` when nothing
/// changed.
pub(crate) fn edit<E, F>(
    json: &str,
    _opts: Options,
    check: &mut F,
) -> Result<Option<String>, WalkError<E>>
where
    F: FnMut(&str, Place) -> Result<Option<String>, E>,
{
    let mut splice = Splice::default();
    let mut frames: Vec<Frame> = Vec::new();
    for t in Tokens::new(json) {
        let t = t.map_err(WalkError::Json)?;
        match t {
            Token::ObjectStart(_) | Token::ArrayStart(_) => {
                let parent = frames.last_mut();
                let in_array = parent
                    .as_ref()
                    .filter(|p| !p.object)
                    .and_then(|p| p.parent_key.clone());
                let parent_key = parent.and_then(|f| f.key.take());
                frames.push(Frame {
                    object: matches!(t, Token::ObjectStart(_)),
                    parent_key,
                    in_array,
                    ..Frame::default()
                });
            }
            Token::ObjectEnd(_) | Token::ArrayEnd(_) => {
                if let Some(f) = frames.pop() {
                    for (key, s) in &f.deferred {
                        let value = s.value(json);
                        let new = if opaque(key, &f) {
                            None
                        } else {
                            text(&value, check, payload(key, &f))?
                        };
                        if let Some(new) = new {
                            splice.replace(s.span.range(), json::quoted(&new));
                        }
                    }
                }
            }
            Token::Key(k) => {
                let name = k.value(json);
                let new = check(&name, Place::Key).map_err(WalkError::Stop)?;
                if let Some(new) = new {
                    splice.replace(k.span.range(), json::quoted(&new));
                }
                if let Some(f) = frames.last_mut() {
                    f.key = Some(name.into_owned());
                }
            }
            Token::String(s) => {
                if let Some(f) = frames.last_mut()
                    && f.object
                    && let Some(k) = f.key.take()
                {
                    if k == "type" {
                        f.kind = Some(s.value(json).into_owned());
                    }
                    if OPAQUE_WHEN_TYPED.contains(&k.as_str()) {
                        f.deferred.push((k, s));
                        continue;
                    }
                }
                if let Some(new) = text(&s.value(json), check, false)? {
                    splice.replace(s.span.range(), json::quoted(&new));
                }
            }
            Token::Number(r) => {
                frames.last_mut().map(|f| f.key.take());
                let new = check(&json[r.range()], Place::Number).map_err(WalkError::Stop)?;
                if let Some(new) = new {
                    splice.replace(r.range(), json::quoted(&new));
                }
            }
            Token::True(_) | Token::False(_) | Token::Null(_) => {
                frames.last_mut().map(|f| f.key.take());
            }
        }
    }
    Ok((!splice.is_empty()).then(|| splice.apply(json)))
}

/// One string value read as [`edit`] reads a string of a body (JSON inside it, an encoded
/// payload): a streamed tool call's arguments, once whole.
pub(crate) fn edit_string<E, F>(value: &str, check: &mut F) -> Result<Option<String>, WalkError<E>>
where
    F: FnMut(&str, Place) -> Result<Option<String>, E>,
{
    text(value, check, false)
}

/// Arrays whose elements are the wire's blocks and items (where signed blobs are).
const BLOCK_ARRAYS: &[&str] = &["content", "input", "output", "thinking_blocks"];

/// Whether a deferred member is an opaque blob no model reads as text: a signed field of a
/// block on the wire, never one inside a tool's input.
fn opaque(key: &str, f: &Frame) -> bool {
    if !f
        .in_array
        .as_deref()
        .is_some_and(|a| BLOCK_ARRAYS.contains(&a))
    {
        return false;
    }
    let kind = f.kind.as_deref();
    match key {
        "signature" => kind == Some("thinking"),
        "encrypted_content" => kind == Some("reasoning"),
        "data" => kind == Some("redacted_thinking"),
        _ => false,
    }
}

/// Whether a deferred member holds a binary payload when it is base64 (a base64 `source`,
/// `input_audio`, a file's data).
fn payload(key: &str, f: &Frame) -> bool {
    match key {
        "data" => {
            f.kind.as_deref() == Some("base64") || f.parent_key.as_deref() == Some("input_audio")
        }
        "file_data" => true,
        _ => false,
    }
}

/// What a base64 (or percent-encoded) payload is.
enum Decoded {
    /// Not that encoding: the string is text as it stands.
    No,
    /// Bytes no model reads as text.
    Binary,
    Text(String),
}

/// One string value (`payload`: in a place that carries base64 payloads): a data URL's
/// payload, a binary payload (left out), JSON inside a string (read again), text. A string
/// that is valid base64 of text is read both as it stands and decoded.
fn text<E, F>(value: &str, check: &mut F, payload: bool) -> Result<Option<String>, WalkError<E>>
where
    F: FnMut(&str, Place) -> Result<Option<String>, E>,
{
    let stop = WalkError::Stop;
    if let Some((media, base64, data)) = data_url(value) {
        let decoded = if base64 {
            base64_payload(data)
        } else {
            percent_payload(data)
        };
        match decoded {
            Decoded::Binary => return Ok(None),
            Decoded::Text(t) => {
                return Ok(check(&t, Place::Encoded)
                    .map_err(stop)?
                    .map(|new| format!("data:{media};base64,{}", BASE64.encode(new))));
            }
            Decoded::No => {}
        }
    } else if payload {
        match base64_payload(value) {
            Decoded::Binary => return Ok(None),
            Decoded::Text(t) => {
                return Ok(check(&t, Place::Encoded)
                    .map_err(stop)?
                    .map(|new| BASE64.encode(new)));
            }
            Decoded::No => {}
        }
    }
    let trimmed = value.trim_start();
    let inner = if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && json::validate(value).is_ok()
    {
        edit(value, Options::default(), check)?
    } else {
        None
    };
    let read = inner.as_deref().unwrap_or(value);
    if let Some(new) = check(read, Place::String).map_err(stop)? {
        return Ok(Some(new));
    }
    if !payload
        && let Decoded::Text(t) = base64_payload(read)
        && let Some(new) = check(&t, Place::Encoded).map_err(stop)?
    {
        return Ok(Some(BASE64.encode(new)));
    }
    Ok(inner)
}

/// `data:[<media type>][;base64],<payload>`: its media type, whether it is base64, and the
/// payload.
fn data_url(value: &str) -> Option<(&str, bool, &str)> {
    let rest = value.strip_prefix("data:")?;
    let (head, payload) = rest.split_once(',')?;
    Some(match head.strip_suffix(";base64") {
        Some(m) => (m, true, payload),
        None => (head, false, payload),
    })
}

/// Standard base64, padded or not.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A base64 string (16 characters or more, line breaks allowed): UTF-8 text without
/// control characters, or binary. A binary payload is recognised from its first bytes
/// without decoding all of it.
fn base64_payload(s: &str) -> Decoded {
    let s = s.trim_end_matches(['\n', '\r']);
    if s.len() < 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
    {
        return Decoded::No;
    }
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // The first 4 KiB (a whole number of quanta) decide binary, then all of it is read.
    let head = &compact[..compact.len().min(4096) / 4 * 4];
    match BASE64.decode(head) {
        Ok(h) if !printable(&h) => return Decoded::Binary,
        Ok(_) => {}
        Err(_) => return Decoded::No,
    }
    match BASE64.decode(&compact) {
        Err(_) => Decoded::No,
        Ok(bytes) if !printable(&bytes) => Decoded::Binary,
        Ok(bytes) => String::from_utf8(bytes).map_or(Decoded::Binary, Decoded::Text),
    }
}

/// A percent-encoded payload: its text, or binary when it is not UTF-8 text.
fn percent_payload(s: &str) -> Decoded {
    match percent_decode(s) {
        Some(t) if printable(t.as_bytes()) => Decoded::Text(t),
        _ => Decoded::Binary,
    }
}

/// UTF-8 with no control character but tab, newline and carriage return (a payload cut in
/// the middle of a character still counts).
fn printable(b: &[u8]) -> bool {
    let valid = match std::str::from_utf8(b) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&b[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !valid
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// `%XX` escapes decoded, when the result is UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Members whose values are not words of a message (roles, kinds, ids, names, media,
/// signatures): what the audit trail's prompt text and the semantic cache's embedded text
/// leave out. (Guardrails read them all: see [`edit`].)
pub(crate) const NOT_WORDS: &[&str] = &[
    "role",
    "type",
    "id",
    "tool_call_id",
    "tool_use_id",
    "call_id",
    "name",
    "signature",
    "data",
    "media_type",
    "mime_type",
    "url",
    "file_id",
    "detail",
    "format",
    "status",
    "encrypted_content",
    "cache_control",
];

/// The words of a JSON value, in order, each string on a line of its own: every string but
/// those under a [`NOT_WORDS`] member (whole subtrees left out).
pub(crate) fn words(json: &str, out: &mut String) {
    // The next value is a left-out member's.
    let mut skip_next = false;
    // Inside a left-out container opened at this depth.
    let mut skipping: Option<usize> = None;
    let mut tokens = Tokens::new(json);
    while let Some(Ok(t)) = tokens.next() {
        let depth = tokens.depth();
        if let Some(d) = skipping {
            if depth < d {
                skipping = None;
            }
            continue;
        }
        match t {
            Token::Key(k) => skip_next = NOT_WORDS.contains(&k.value(json).as_ref()),
            Token::ObjectStart(_) | Token::ArrayStart(_) => {
                if std::mem::take(&mut skip_next) {
                    skipping = Some(depth);
                }
            }
            Token::String(s) => {
                if !std::mem::take(&mut skip_next) {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(&s.value(json));
                }
            }
            _ => skip_next = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text the walk shows, with its place.
    fn shown(json: &str) -> Vec<(String, Place)> {
        let mut seen = Vec::new();
        edit(json, Options::default(), &mut |t: &str, p| {
            seen.push((t.to_owned(), p));
            Ok::<_, ()>(None)
        })
        .expect("json");
        seen
    }

    fn strings(json: &str) -> Vec<String> {
        shown(json)
            .into_iter()
            .filter(|(_, p)| *p != Place::Key)
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn every_value_at_every_depth_under_every_name() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result",
            "content":[{"type":"text","text":"a"}],"tool_use_id":"b"}]}],
            "tools":[{"name":"c","description":"d","input_schema":{"properties":{"url":{"description":"e"}}}}],
            "x":{"data":"f","id":"g","url":"h","name":"i","n":4111111111111111}}"#;
        assert_eq!(
            strings(body),
            [
                "m",
                "user",
                "tool_result",
                "text",
                "a",
                "b",
                "c",
                "d",
                "e",
                "g",
                "h",
                "i",
                "4111111111111111",
                "f"
            ]
        );
        assert!(shown(body).contains(&("url".to_owned(), Place::Key)));
    }

    #[test]
    fn opaque_blobs_and_binary_payloads_are_left_out() {
        let png = BASE64.encode([
            0x89u8, b'P', b'N', b'G', 0, 0, 0, 13, 0xff, 0xfe, 1, 2, 3, 4, 5, 6,
        ]);
        let body = format!(
            r#"{{"content":[{{"type":"thinking","thinking":"t","signature":"s"}},
                            {{"type":"redacted_thinking","data":"r"}}],
               "input":[{{"type":"reasoning","encrypted_content":"e"}}],
               "d":{{"type":"base64","media_type":"image/png","data":"{png}"}},
               "e":{{"image_url":{{"url":"data:image/png;base64,{png}"}}}},
               "f":{{"input_audio":{{"data":"{png}","format":"wav"}}}},
               "g":{{"signature":"kept"}},
               "h":[{{"type":"tool_use","input":{{"type":"thinking","signature":"read"}}}}]}}"#
        );
        let got = strings(&body);
        assert_eq!(
            got,
            [
                "thinking",
                "t",
                "redacted_thinking",
                "reasoning",
                "base64",
                "image/png",
                "wav",
                "kept",
                "tool_use",
                "thinking",
                "read"
            ],
            "{got:?}"
        );
    }

    #[test]
    fn encoded_text_and_json_in_strings_are_read_inside() {
        let card = "card 4111 1111 1111 1111";
        let b64 = BASE64.encode(card);
        let body = format!(
            r#"{{"a":"data:text/plain;base64,{b64}","b":"data:,card%204111","c":{{"type":"base64","media_type":"text/plain","data":"{b64}"}},
               "d":"{{\"k\":\"v\\u0020w\"}}"}}"#
        );
        let got = shown(&body);
        assert!(got.contains(&(card.to_owned(), Place::Encoded)), "{got:?}");
        assert!(got.contains(&("card 4111".to_owned(), Place::Encoded)));
        assert!(got.contains(&("v w".to_owned(), Place::String)), "{got:?}");
    }

    #[test]
    fn replacements_rewrite_only_what_changed() {
        let body = r#"{"model":"4111","a":[ "x4111y" , {"4111":4111}], "b":"{\"c\":\"4111\"}"}"#;
        let out = edit(body, Options::default(), &mut |t: &str, _| {
            Ok::<_, ()>(t.contains("4111").then(|| t.replace("4111", "#")))
        })
        .expect("json")
        .expect("changed");
        assert_eq!(
            out,
            r##"{"model":"#","a":[ "x#y" , {"#":"#"}], "b":"{\"c\":\"#\"}"}"##
        );
        let b64 = BASE64.encode("my 4111 text");
        let out = edit(
            &format!(r#"{{"u":"data:text/plain;base64,{b64}"}}"#),
            Options::default(),
            &mut |t: &str, _| Ok::<_, ()>(t.contains("4111").then(|| t.replace("4111", "#"))),
        )
        .expect("json")
        .expect("changed");
        assert_eq!(
            out,
            format!(
                r#"{{"u":"data:text/plain;base64,{}"}}"#,
                BASE64.encode("my # text")
            )
        );
    }

    #[test]
    fn words_leave_out_structure() {
        let mut out = String::new();
        words(
            r#"[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}}]},
               {"role":"assistant","content":"b","tool_calls":[{"id":"c","function":{"name":"n","arguments":"d"}}]},
               {"data":{"x":"hidden","y":["hidden"]},"after":"e"}]"#,
            &mut out,
        );
        assert_eq!(out, "a\nb\nd\ne");
    }

    #[test]
    fn a_stop_ends_the_walk_and_bad_json_is_an_error() {
        let r = edit(
            r#"{"a":"x","b":"stop"}"#,
            Options::default(),
            &mut |t: &str, _| {
                if t == "stop" {
                    Err("stopped")
                } else {
                    Ok(None)
                }
            },
        );
        assert!(matches!(r, Err(WalkError::Stop("stopped"))));
        let r = edit(r#"{"a":"#, Options::default(), &mut |_: &str, _| {
            Ok::<_, ()>(None)
        });
        assert!(matches!(r, Err(WalkError::Json(_))));
    }
}

//! Bedrock: Converse, ConverseStream (AWS event-stream framing, written with the AWS SDK's
//! own encoder), CountTokens, errors with `x-amzn-ErrorType`, and SigV4 verification: every
//! request must carry a valid signature over its method, path, headers and body, computed
//! here independently of the gateway's signer.

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::{Response, StatusCode};
use ring::{digest, hmac};
use serde_json::{Value, json};

use super::script::{Script, Stop};
use super::{Body, Knobs, fixture, full, json_response, stream_response};

/// The credentials the mock accepts.
pub const MOCK_AWS_ACCESS_KEY_ID: &str = "AKIAMOCKEXAMPLE00001";
pub const MOCK_AWS_SECRET_ACCESS_KEY: &str = "mock/Secret+Key/EXAMPLE0000000000000000";

pub(crate) fn error_with_type(status: u16, kind: &str, message: &str) -> Response<Body> {
    let mut r = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"message": message}),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

pub(crate) fn error_response(status: u16, message: &str) -> Response<Body> {
    let kind = match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    };
    error_with_type(status, kind, message)
}

/// Percent-decodes a path segment.
pub(crate) fn decode_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn uri_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// Checks the SigV4 signature: (status, error type, message) when it is wrong.
pub(crate) fn verify_signature(
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<(), (u16, &'static str, String)> {
    let missing = |what: &str| {
        (
            403,
            "MissingAuthenticationTokenException",
            format!("Missing {what}"),
        )
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or_else(|| missing("Authentication Token"))?;
    let amz_date = header("x-amz-date").ok_or_else(|| missing("x-amz-date"))?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| missing("AWS4-HMAC-SHA256 authorization"))?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|f| f.strip_prefix(name))
            .ok_or_else(|| missing(name))
    };
    let credential = field("Credential=")?;
    let signed_headers = field("SignedHeaders=")?;
    let signature = field("Signature=")?;
    let mut scope = credential.splitn(2, '/');
    let access_key = scope.next().unwrap_or_default();
    let scope = scope.next().unwrap_or_default();
    if access_key != MOCK_AWS_ACCESS_KEY_ID {
        return Err((
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    }
    let parts_of_scope: Vec<&str> = scope.split('/').collect();
    if parts_of_scope.len() != 4
        || parts_of_scope[2] != "bedrock"
        || parts_of_scope[3] != "aws4_request"
    {
        return Err((
            403,
            "InvalidSignatureException",
            format!("bad credential scope {scope}"),
        ));
    }
    let canonical_uri = parts
        .uri
        .path()
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<&str> = parts
        .uri
        .query()
        .map(|q| q.split('&').collect())
        .unwrap_or_default();
    query.sort_unstable();
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = header(name).ok_or_else(|| missing(name))?;
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        canonical_uri,
        query.join("&"),
        canonical_headers,
        signed_headers,
        sha256_hex(body)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut key = hmac_sha256(
        format!("AWS4{MOCK_AWS_SECRET_ACCESS_KEY}").as_bytes(),
        parts_of_scope[0].as_bytes(),
    );
    for part in &parts_of_scope[1..] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let expected = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    if expected != signature {
        return Err((
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.".into(),
        ));
    }
    Ok(())
}

fn stop_reason(s: &Script) -> &'static str {
    match s.stop {
        Stop::End => "end_turn",
        Stop::Length => "max_tokens",
        Stop::Tools => "tool_use",
    }
}

fn usage(s: &Script) -> Value {
    let out = s.output_tokens();
    let mut u = json!({"inputTokens": s.uncached_tokens(), "outputTokens": out, "totalTokens": s.prompt_tokens + out});
    if s.cache_read + s.cache_write > 0 {
        u["cacheReadInputTokens"] = json!(s.cache_read);
        u["cacheWriteInputTokens"] = json!(s.cache_write);
    }
    u
}

pub(crate) fn converse(s: &Script, knobs: &Knobs) -> Response<Body> {
    if knobs.malformed {
        return full(StatusCode::OK, "application/json", "{\"output\": {");
    }
    let mut v = fixture(include_str!("../../fixtures/bedrock/converse.json"));
    let mut content = Vec::new();
    if let Some(t) = &s.thinking {
        content.push(
            json!({"reasoningContent": {"reasoningText": {"text": t, "signature": s.signature}}}),
        );
    }
    if !s.chunks.is_empty() {
        content.push(json!({"text": s.text()}));
    }
    for c in &s.calls {
        content.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.args}}));
    }
    v["output"]["message"]["content"] = Value::Array(content);
    v["stopReason"] = json!(stop_reason(s));
    v["usage"] = usage(s);
    json_response(StatusCode::OK, &v)
}

fn frame(kind: &str, payload: &Value, exception: bool) -> Bytes {
    let type_header = if exception {
        ":exception-type"
    } else {
        ":event-type"
    };
    let m = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(if exception { "exception" } else { "event" }.into()),
        ))
        .add_header(Header::new(
            type_header,
            HeaderValue::String(kind.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    // A message the AWS encoder itself built always encodes.
    let _ = write_message_to(&m, &mut out);
    Bytes::from(out)
}

pub(crate) fn stream(s: &Script, knobs: &Knobs) -> Response<Body> {
    let f = fixture(include_str!("../../fixtures/bedrock/stream.json"));
    let mut events = vec![frame("messageStart", &f["messageStart"], false)];
    let mut index = 0;
    let delta = |index: usize, d: Value| {
        let mut e = f["contentBlockDelta"].clone();
        e["contentBlockIndex"] = json!(index);
        e["delta"] = d;
        e["p"] = json!("abcdefghijklmnop");
        frame("contentBlockDelta", &e, false)
    };
    let stop = |index: usize| {
        frame(
            "contentBlockStop",
            &json!({"contentBlockIndex": index}),
            false,
        )
    };
    if let Some(t) = &s.thinking {
        for w in t.split_inclusive(' ') {
            events.push(delta(index, json!({"reasoningContent": {"text": w}})));
        }
        events.push(delta(
            index,
            json!({"reasoningContent": {"signature": s.signature}}),
        ));
        events.push(stop(index));
        index += 1;
    }
    if !s.chunks.is_empty() {
        for (i, t) in s.chunks.iter().enumerate() {
            if knobs.malformed && i == s.chunks.len() / 2 {
                events.push(frame("contentBlockDelta", &json!("{broken"), false));
            }
            events.push(delta(index, json!({"text": t})));
        }
        events.push(stop(index));
        index += 1;
    }
    for c in &s.calls {
        let mut start = f["contentBlockStart"].clone();
        start["contentBlockIndex"] = json!(index);
        start["start"] = json!({"toolUse": {"toolUseId": c.id, "name": c.name}});
        events.push(frame("contentBlockStart", &start, false));
        let args = c.args.to_string();
        let (a, b) = args.split_at(args.len() / 2);
        for piece in [a, b] {
            events.push(delta(index, json!({"toolUse": {"input": piece}})));
        }
        events.push(stop(index));
        index += 1;
    }
    if knobs.error_event {
        events.push(frame(
            "serviceUnavailableException",
            &json!({"message": "Bedrock is unable to process your request."}),
            true,
        ));
        return stream_response(events, knobs, "application/vnd.amazon.eventstream");
    }
    events.push(frame(
        "messageStop",
        &json!({"stopReason": stop_reason(s)}),
        false,
    ));
    let mut meta = f["metadata"].clone();
    meta["usage"] = usage(s);
    events.push(frame("metadata", &meta, false));
    stream_response(events, knobs, "application/vnd.amazon.eventstream")
}

pub(crate) fn count(s: &Script) -> Response<Body> {
    let mut v = fixture(include_str!("../../fixtures/bedrock/count_tokens.json"));
    v["inputTokens"] = json!(s.prompt_tokens);
    json_response(StatusCode::OK, &v)
}

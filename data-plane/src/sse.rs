//! Server-sent events: an incremental decoder with a maximum event size, and encoders.

use bytes::{Buf, Bytes, BytesMut};

/// Largest SSE event accepted from an upstream.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One decoded event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("SSE event is not UTF-8")]
    NotUtf8,
}

/// Incremental decoder: feed bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            let Some((end, sep)) = find_boundary(&self.buf) else {
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                return Ok(None);
            };
            let raw = self.buf.split_to(end);
            self.buf.advance(sep);
            let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
            if let Some(ev) = parse_event(text) {
                return Ok(Some(ev));
            }
        }
    }

    /// Whatever is left when the stream ends (an event without its final blank line).
    pub fn finish(&mut self) -> Result<Option<Event>, SseError> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        let raw = std::mem::take(&mut self.buf);
        let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
        Ok(parse_event(text))
    }
}

fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i] == b'\r'
            && buf.get(i + 1) == Some(&b'\n')
            && buf.get(i + 2) == Some(&b'\r')
            && buf.get(i + 3) == Some(&b'\n')
        {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

fn parse_event(text: &str) -> Option<Event> {
    let mut ev = Event::default();
    let mut has_data = false;
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.event = Some(value.to_owned()),
            "data" => {
                if has_data {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    (has_data || ev.event.is_some()).then_some(ev)
}

/// `data: <payload>\n\n`.
pub fn data(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// `event: <name>\ndata: <payload>\n\n`.
pub fn named(event: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + event.len() + 16);
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(event.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// The OpenAI stream terminator.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_split_anywhere() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\ndata: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n";
        for split in 0..input.len() {
            let mut d = Decoder::default();
            let mut events = Vec::new();
            for part in [&input[..split], &input[split..]] {
                d.push(part);
                while let Some(e) = d.next_event().expect("decode") {
                    events.push(e);
                }
            }
            assert_eq!(events.len(), 3, "split at {split}: {events:?}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "line1\nline2");
            assert_eq!(events[2].data, "[DONE]");
        }
    }

    #[test]
    fn rejects_oversized_events() {
        let mut d = Decoder::default();
        d.push(b"data: ");
        d.push(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert_eq!(d.next_event(), Err(SseError::TooLarge));
    }

    #[test]
    fn finish_returns_a_trailing_event() {
        let mut d = Decoder::default();
        d.push(b"data: tail");
        assert_eq!(d.next_event(), Ok(None));
        assert_eq!(
            d.finish().expect("finish").map(|e| e.data),
            Some("tail".into())
        );
    }
}

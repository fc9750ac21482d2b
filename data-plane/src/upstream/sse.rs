//! Server-sent events: an incremental decoder with a maximum event size, and encoders.
//!
//! The decoder remembers how far it has searched for the blank line that ends an event, so
//! each byte is scanned once however the event is split across reads (an event arriving a
//! byte at a time costs O(n), not O(n^2)).

use bytes::{Buf, Bytes, BytesMut};

use super::Frame;

/// Largest SSE event accepted from an upstream.
pub(crate) const MAX_EVENT_BYTES: usize = 1024 * 1024;

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
    /// Bytes of `buf` already searched for an event boundary.
    scanned: usize,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SseError> {
        loop {
            let Some((end, sep)) = find_boundary(&self.buf, self.scanned) else {
                // A separator may straddle the end: the last 3 bytes are searched again.
                self.scanned = self.buf.len().saturating_sub(3);
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                return Ok(None);
            };
            let raw = self.buf.split_to(end);
            self.buf.advance(sep);
            self.scanned = 0;
            let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
            if let Some(f) = parse_event(text) {
                return Ok(Some(f));
            }
        }
    }

    /// Whatever is left when the stream ends (an event without its final blank line).
    pub fn finish(&mut self) -> Result<Option<Frame>, SseError> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let raw = std::mem::take(&mut self.buf);
        self.scanned = 0;
        let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
        Ok(parse_event(text))
    }
}

/// The first `\n\n` or `\r\n\r\n` at or after `from`: (where the event ends, separator length).
fn find_boundary(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(off) = memchr::memchr(b'\n', buf.get(at..)?) {
        let i = at + off;
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') && i > 0 && buf[i - 1] == b'\r' => {
                return Some((i - 1, 4));
            }
            _ => at = i + 1,
        }
    }
    None
}

fn parse_event(text: &str) -> Option<Frame> {
    let mut f = Frame::default();
    let mut has_data = false;
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => f.event = Some(value.to_owned()),
            "data" => {
                if has_data {
                    f.data.push('\n');
                }
                f.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    (has_data || f.event.is_some()).then_some(f)
}

/// `data: <payload>\n\n`.
pub(crate) fn data(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// `event: <name>\ndata: <payload>\n\n`.
pub(crate) fn named(event: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + event.len() + 16);
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(event.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// The OpenAI stream terminator.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_events_split_anywhere() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\ndata: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n";
        for split in 0..input.len() {
            let mut d = Decoder::default();
            let mut events = Vec::new();
            for part in [&input[..split], &input[split..]] {
                d.push(part);
                while let Some(e) = d.next_frame().expect("decode") {
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
        assert_eq!(d.next_frame(), Err(SseError::TooLarge));
    }

    #[test]
    fn finish_returns_a_trailing_event() {
        let mut d = Decoder::default();
        d.push(b"data: tail");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish().expect("finish").map(|e| e.data),
            Some("tail".into())
        );
    }

    #[test]
    fn a_large_event_fed_byte_by_byte_is_scanned_once() {
        // 200 KB in one-byte pushes: a decoder that rescans from the start does ~2e10 byte
        // comparisons here and would not finish; this one does ~2e5.
        let body = format!("data: {}\n\n", "y".repeat(200_000));
        let mut d = Decoder::default();
        let mut got = None;
        for b in body.as_bytes() {
            d.push(std::slice::from_ref(b));
            if let Some(f) = d.next_frame().expect("decode") {
                got = Some(f);
            }
            assert!(d.scanned + 3 >= d.buf.len(), "scan position falls behind");
        }
        assert_eq!(got.map(|f| f.data.len()), Some(200_000));
    }

    proptest! {
        /// Any bytes, split anywhere: no panic, and every event is within the size limit.
        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..4096), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut d = Decoder::default();
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            for c in cuts.into_iter().chain([input.len()]) {
                d.push(&input[at..c.max(at)]);
                at = c.max(at);
                while let Ok(Some(f)) = d.next_frame() {
                    prop_assert!(f.data.len() <= MAX_EVENT_BYTES);
                }
            }
            let _ = d.finish();
        }

        /// Well-formed events survive any split, in order.
        #[test]
        fn events_survive_any_split(datas in proptest::collection::vec("[a-z0-9{}\":, ]{0,40}", 1..10), split in any::<usize>()) {
            let wire: String = datas.iter().map(|d| format!("data: {d}\n\n")).collect();
            let cut = split % (wire.len() + 1);
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for part in [&wire.as_bytes()[..cut], &wire.as_bytes()[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().expect("decode") {
                    got.push(f.data);
                }
            }
            prop_assert_eq!(got, datas);
        }
    }
}

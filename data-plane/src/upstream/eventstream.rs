//! AWS event-stream framing (`application/vnd.amazon.eventstream`, Bedrock ConverseStream),
//! decoded with the AWS SDK's own frame decoder (`aws-smithy-eventstream`), which checks both
//! the prelude and the message CRC32. A message's `:event-type` (or `:exception-type`) and
//! UTF-8 payload become a [`Frame`].

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::BytesMut;

use super::Frame;

/// Largest message accepted (AWS's own limit is 16 MiB; Bedrock's events are small).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const PRELUDE: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventStreamError {
    #[error("event-stream message of {0} bytes is larger than {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("event-stream prelude checksum mismatch")]
    PreludeCrc,
    #[error("event-stream message is invalid: {0}")]
    Invalid(String),
    #[error("event-stream payload is not UTF-8")]
    NotUtf8,
}

/// Incremental decoder: feed bytes as they arrive, take complete messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    inner: MessageFrameDecoder,
    /// The prelude of the message being assembled was checked.
    prelude_checked: bool,
}

fn header_str<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Checks a prelude before waiting for the body it announces: a corrupt length must not
    /// make the decoder buffer gigabytes.
    fn check_prelude(&mut self) -> Result<(), EventStreamError> {
        if self.prelude_checked || self.buf.len() < PRELUDE {
            return Ok(());
        }
        let p = &self.buf[..PRELUDE];
        let total = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        let crc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        if crc32fast::hash(&p[..8]) != crc {
            return Err(EventStreamError::PreludeCrc);
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(EventStreamError::TooLarge(total));
        }
        self.prelude_checked = true;
        Ok(())
    }

    /// The next complete message, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EventStreamError> {
        self.check_prelude()?;
        if !self.prelude_checked {
            return Ok(None);
        }
        let decoded = self
            .inner
            .decode_frame(&mut self.buf)
            .map_err(|e| EventStreamError::Invalid(e.to_string()))?;
        let msg = match decoded {
            DecodedFrame::Incomplete => return Ok(None),
            DecodedFrame::Complete(m) => m,
        };
        self.prelude_checked = false;
        let payload = std::str::from_utf8(msg.payload()).map_err(|_| EventStreamError::NotUtf8)?;
        let exception = header_str(&msg, ":message-type") == Some("exception")
            || header_str(&msg, ":message-type") == Some("error");
        let event = if exception {
            header_str(&msg, ":exception-type").or(header_str(&msg, ":error-code"))
        } else {
            header_str(&msg, ":event-type")
        };
        Ok(Some(Frame {
            event: event.map(str::to_owned),
            data: payload.to_owned(),
            exception,
        }))
    }

    /// Bytes left over at the end of the body (a truncated message) are an error.
    pub fn finish(&mut self) -> Result<Option<Frame>, EventStreamError> {
        if self.buf.is_empty() && !self.prelude_checked {
            return Ok(None);
        }
        Err(EventStreamError::Invalid(
            "the stream ended inside a message".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn message(event: &str, payload: &str) -> Vec<u8> {
        let m = Message::new(Bytes::copy_from_slice(payload.as_bytes()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(event.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        write_message_to(&m, &mut out).expect("encode");
        out
    }

    #[test]
    fn decodes_messages_split_anywhere() {
        let wire = [
            message("messageStart", r#"{"role":"assistant"}"#),
            message(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
            ),
        ]
        .concat();
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.push(part);
                while let Some(f) = d.next_frame().expect("decode") {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0].event.as_deref(), Some("messageStart"));
            assert_eq!(
                got[1].data,
                r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#
            );
            assert!(d.finish().expect("clean end").is_none());
        }
    }

    #[test]
    fn checksums_are_checked() {
        let mut wire = message("metadata", r#"{"usage":{}}"#);
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        let mut d = Decoder::default();
        d.push(&wire);
        assert!(
            matches!(d.next_frame(), Err(EventStreamError::Invalid(_))),
            "message CRC"
        );
        let mut wire = message("metadata", "{}");
        wire[9] ^= 0x01;
        let mut d = Decoder::default();
        d.push(&wire);
        assert_eq!(d.next_frame(), Err(EventStreamError::PreludeCrc));
        let mut d = Decoder::default();
        d.push(&message("x", "{}")[..20]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.finish().is_err(), "a truncated message");
    }

    #[test]
    fn exceptions_are_marked() {
        let m = Message::new(Bytes::from_static(br#"{"message":"Too many requests"}"#))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("exception".into()),
            ))
            .add_header(Header::new(
                ":exception-type",
                HeaderValue::String("throttlingException".into()),
            ));
        let mut wire = Vec::new();
        write_message_to(&m, &mut wire).expect("encode");
        let mut d = Decoder::default();
        d.push(&wire);
        let f = d.next_frame().expect("decode").expect("frame");
        assert!(f.exception);
        assert_eq!(f.event.as_deref(), Some("throttlingException"));
    }

    proptest! {
        /// Any bytes: no panic, no unbounded buffering.
        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut d = Decoder::default();
            d.push(&input);
            for _ in 0..64 {
                match d.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let _ = d.finish();
        }

        /// A valid stream with one corrupted byte is rejected or still decodes every
        /// message's payload intact; it never yields a corrupted payload.
        #[test]
        fn corruption_is_detected(pos in any::<usize>(), bit in 0u8..8) {
            let payload = r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#;
            let mut wire = message("contentBlockDelta", payload);
            let at = pos % wire.len();
            wire[at] ^= 1 << bit;
            let mut d = Decoder::default();
            d.push(&wire);
            if let Ok(Some(f)) = d.next_frame() {
                prop_assert_eq!(f.data, payload, "a corrupted message was accepted");
            }
        }
    }
}

//! The hash chain of audit lines, and its check.
//!
//! A sealed line is one JSON object on one line:
//!
//! ```text
//! {"seq":7,"chain":"dp-1/file/18c2…","prev":"<hash of seq 6>","time":"…","kind":"request",…,"hash":"<sha256>"}
//! ```
//!
//! `hash` is the SHA-256 of every byte of the line before `,"hash":` — so it covers `seq`,
//! `chain` and `prev`, and an edit anywhere shows. `prev` links each line to the one before.
//! A chain starts with a `checkpoint` at `seq` 0 whose `prev` is 64 zeros; checkpoints also
//! open each rotated file, follow a time interval, and close the chain on shutdown. With a
//! key, a checkpoint carries `"sig"`: the HMAC-SHA256 of its hash. Anyone can recompute a
//! chain, but not the signatures, so a rewritten chain fails at its next checkpoint.

use ring::hmac;
use sha2::{Digest, Sha256};

/// `prev` of a chain's first line.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is needed to undo the seals of a batch that was not delivered.
#[derive(Clone, Debug)]
pub(crate) struct Mark {
    seq: u64,
    prev: String,
}

/// One chain: its id, the next sequence number and the hash of the last line.
#[derive(Debug)]
pub(crate) struct Chain {
    id: String,
    seq: u64,
    prev: String,
    key: Option<hmac::Key>,
}

impl Chain {
    pub(crate) fn new(id: String, key: Option<&[u8]>) -> Self {
        Self {
            id,
            seq: 0,
            prev: GENESIS.to_owned(),
            key: key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)),
        }
    }

    /// Lines sealed so far.
    pub(crate) fn len(&self) -> u64 {
        self.seq
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            seq: self.seq,
            prev: self.prev.clone(),
        }
    }

    /// Forgets what was sealed after `m` (its lines were not delivered).
    pub(crate) fn rewind(&mut self, m: Mark) {
        self.seq = m.seq;
        self.prev = m.prev;
    }

    /// Seals one line of `kind`; `fields` is the rest of the object as JSON members, each
    /// starting with `,` (empty for none). Checkpoints are signed when there is a key.
    pub(crate) fn seal(&mut self, kind: &str, time: &str, fields: &str) -> String {
        let mut line = format!(
            r#"{{"seq":{},"chain":{},"prev":"{}","time":"{time}","kind":"{kind}"{fields}"#,
            self.seq,
            serde_json::Value::from(self.id.as_str()),
            self.prev,
        );
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        line.push_str(r#","hash":""#);
        line.push_str(&hash);
        line.push('"');
        if kind == "checkpoint"
            && let Some(k) = &self.key
        {
            line.push_str(r#","sig":""#);
            line.push_str(&hex::encode(hmac::sign(k, hash.as_bytes())));
            line.push('"');
        }
        line.push_str("}\n");
        self.seq += 1;
        self.prev = hash;
        line
    }
}

/// A line taken apart for checking.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub seq: u64,
    pub chain: String,
    pub prev: String,
    pub kind: String,
    pub hash: String,
    pub sig: Option<String>,
    /// The hash matches the line's bytes.
    pub intact: bool,
}

/// Parses a sealed line (without its newline); `None`: not one.
pub(crate) fn parse(line: &str) -> Option<Parsed> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let at = line.rfind(r#","hash":""#)?;
    let body = &line[..at];
    let hash = v["hash"].as_str()?.to_owned();
    let recomputed = hex::encode(Sha256::digest(body.as_bytes()));
    // Nothing but the hash and the signature may follow the hashed bytes.
    let tail = &line[at..];
    let expected_tail = match v.get("sig").and_then(|s| s.as_str()) {
        Some(sig) => format!(r#","hash":"{hash}","sig":"{sig}"}}"#),
        None => format!(r#","hash":"{hash}"}}"#),
    };
    Some(Parsed {
        seq: v["seq"].as_u64()?,
        chain: v["chain"].as_str()?.to_owned(),
        prev: v["prev"].as_str()?.to_owned(),
        kind: v["kind"].as_str()?.to_owned(),
        sig: v.get("sig").and_then(|s| s.as_str()).map(str::to_owned),
        intact: recomputed == hash && tail == expected_tail,
        hash,
    })
}

/// Whether a checkpoint's signature is the key's.
pub(crate) fn signed_by(p: &Parsed, key: &[u8]) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    p.sig
        .as_deref()
        .and_then(|s| hex::decode(s).ok())
        .is_some_and(|sig| hmac::verify(&k, p.hash.as_bytes(), &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_link_and_checkpoints_sign() {
        let mut c = Chain::new("dp/file/1".into(), Some(b"secret"));
        let a = c.seal("checkpoint", "t0", r#","reason":"start""#);
        let b = c.seal("request", "t1", r#","status":200"#);
        let (pa, pb) = (
            parse(a.trim_end()).expect("a"),
            parse(b.trim_end()).expect("b"),
        );
        assert!(pa.intact && pb.intact);
        assert_eq!((pa.seq, pb.seq), (0, 1));
        assert_eq!(pa.prev, GENESIS);
        assert_eq!(pb.prev, pa.hash);
        assert!(signed_by(&pa, b"secret"));
        assert!(!signed_by(&pa, b"other"));
        assert!(pb.sig.is_none(), "only checkpoints are signed");
        let edited = b.trim_end().replace("200", "500");
        assert!(!parse(&edited).expect("parses").intact);
        // Something slipped in after the hash is an edit too.
        let appended = b
            .trim_end()
            .replacen(r#","hash""#, r#","hash":"x","hash""#, 1);
        assert!(parse(&appended).is_none_or(|p| !p.intact));
    }

    #[test]
    fn a_rewound_chain_reseals_the_same_numbers() {
        let mut c = Chain::new("x".into(), None);
        c.seal("checkpoint", "t", "");
        let m = c.mark();
        let lost = c.seal("request", "t", r#","n":1"#);
        c.rewind(m);
        let again = c.seal("request", "t", r#","n":1"#);
        assert_eq!(lost, again);
        assert_eq!(c.len(), 2);
    }
}

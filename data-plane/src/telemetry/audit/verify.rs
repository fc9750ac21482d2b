//! `switchyard-data-plane audit verify FILES...`: checks audit files and names the first
//! line that was edited, deleted, inserted or reordered.
//!
//! Lines are grouped by chain (a proxy and sink since its start; a Redis export interleaves
//! many). Files are put in order within a chain by the sequence number they start at, then
//! each chain is walked line by line: every line's hash must match its bytes, its `seq` must
//! follow the one before and its `prev` must be that line's hash. A chain must start with its
//! first checkpoint (`seq` 0): a chain whose oldest records were deleted does not verify, unless
//! `--from CHAIN@SEQ` names the checkpoint to start from (older files rotated away on
//! purpose), and the report says so. Every record must be followed by a checkpoint (the
//! writer seals each batch with one), and with the key every checkpoint's signature is
//! checked: a chain recomputed after a forgery, or records rewritten after the last
//! checkpoint, fail.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::chain::{GENESIS, Parsed, parse, signed_by};

/// Where a line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// What is wrong, at the first line where it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The line is not a sealed record, or its hash does not match its bytes.
    Edited { at: Place, seq: Option<u64> },
    /// Records `from..=to` are missing before this line.
    Deleted { at: Place, from: u64, to: u64 },
    /// This line does not follow the line before it: it was added.
    Inserted { at: Place, seq: u64 },
    /// This record is out of its place.
    Reordered { at: Place, seq: u64, expected: u64 },
    /// A checkpoint whose signature is missing or not the key's.
    Forged { at: Place, seq: u64 },
    /// The chain's first line is not a checkpoint.
    Headless { at: Place, seq: u64 },
    /// The chain starts at a later checkpoint than its first, and `--from` did not name it.
    Truncated { at: Place, chain: String, seq: u64 },
    /// Records after the chain's last checkpoint: nothing seals them.
    Unsealed { at: Place, records: u64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Edited { at, seq: Some(s) } => {
                write!(
                    f,
                    "{at}: record {s} was edited (its hash does not match its contents)"
                )
            }
            Self::Edited { at, seq: None } => write!(f, "{at}: not an audit record (edited)"),
            Self::Deleted { at, from, to } if from == to => {
                write!(f, "{at}: record {from} was deleted before this line")
            }
            Self::Deleted { at, from, to } => {
                write!(
                    f,
                    "{at}: records {from} to {to} were deleted before this line"
                )
            }
            Self::Inserted { at, seq } => write!(
                f,
                "{at}: a record claiming number {seq} was inserted (it does not follow the record before it)"
            ),
            Self::Reordered { at, seq, expected } => write!(
                f,
                "{at}: record {seq} is out of order (record {expected} was expected here)"
            ),
            Self::Forged { at, seq } => write!(
                f,
                "{at}: checkpoint {seq} is not signed by the key (the chain before it was rewritten)"
            ),
            Self::Headless { at, seq } => write!(
                f,
                "{at}: the chain starts at record {seq}, which is not a checkpoint (records before it were deleted)"
            ),
            Self::Truncated { at, chain, seq } => write!(
                f,
                "{at}: chain {chain} starts at checkpoint {seq}, not at its first: the records before it are missing (if older files were rotated away on purpose, verify from here with --from {chain}@{seq})"
            ),
            Self::Unsealed { at, records } => write!(
                f,
                "{at}: {records} record(s) after the chain's last checkpoint are not sealed (cut off mid-write, or rewritten)"
            ),
        }
    }
}

/// What a clean check saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub chains: usize,
    pub records: u64,
    pub checkpoints: u64,
    /// Chains whose last line is not the closing checkpoint (still open, or cut short).
    pub open: Vec<String>,
    /// Records the proxy itself reported dropped (`gap` lines).
    pub dropped: u64,
    /// Chains verified from a later checkpoint than their first (`--from`): `chain@seq`.
    pub from: Vec<String>,
}

struct Line {
    at: Place,
    parsed: Option<Parsed>,
    closing: bool,
    dropped: u64,
}

/// Checks the files; `Err`: the first problem, in the order of the files' chains. `from`:
/// checkpoints (`chain@seq`) that chains may start at instead of their first.
pub fn verify(
    files: &[PathBuf],
    key: Option<&[u8]>,
    from: &[String],
) -> std::io::Result<Result<Summary, Problem>> {
    // chain -> files' lines, each file's lines in file order.
    let mut chains: BTreeMap<String, Vec<Vec<Line>>> = BTreeMap::new();
    let mut unparsed: Vec<Line> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)?;
        let mut per_chain: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let at = Place {
                file: file.clone(),
                line: i + 1,
            };
            let v: Option<serde_json::Value> = serde_json::from_str(raw).ok();
            let closing = v
                .as_ref()
                .is_some_and(|v| v["kind"] == "checkpoint" && v["reason"] == "close");
            let dropped = v
                .as_ref()
                .filter(|v| v["kind"] == "gap")
                .and_then(|v| v["dropped"].as_u64())
                .unwrap_or(0);
            let parsed = parse(raw);
            let line = Line {
                at,
                parsed,
                closing,
                dropped,
            };
            match &line.parsed {
                Some(p) => per_chain.entry(p.chain.clone()).or_default().push(line),
                None => unparsed.push(line),
            }
        }
        for (chain, lines) in per_chain {
            chains.entry(chain).or_default().push(lines);
        }
    }
    if let Some(l) = unparsed.into_iter().next() {
        return Ok(Err(Problem::Edited {
            at: l.at,
            seq: None,
        }));
    }
    let mut summary = Summary::default();
    for (chain, mut files) in chains {
        files.sort_by_key(|f| f.first().and_then(|l| l.parsed.as_ref()).map(|p| p.seq));
        let lines: Vec<Line> = files.into_iter().flatten().collect();
        let start = from
            .iter()
            .filter_map(|f| f.rsplit_once('@'))
            .find(|(c, _)| *c == chain)
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        if let Err(p) = walk(&chain, &lines, key, start, &mut summary) {
            return Ok(Err(p));
        }
        summary.chains += 1;
        if !lines.last().is_some_and(|l| l.closing) {
            summary.open.push(chain);
        }
    }
    Ok(Ok(summary))
}

fn walk(
    chain: &str,
    lines: &[Line],
    key: Option<&[u8]>,
    from: Option<u64>,
    summary: &mut Summary,
) -> Result<(), Problem> {
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.parsed.as_ref().map(|p| p.seq))
        .collect();
    let present: HashSet<u64> = seqs.iter().copied().collect();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut last: Option<(u64, &str)> = None;
    for l in lines {
        let Some(p) = &l.parsed else {
            return Err(Problem::Edited {
                at: l.at.clone(),
                seq: None,
            });
        };
        if !p.intact {
            return Err(Problem::Edited {
                at: l.at.clone(),
                seq: Some(p.seq),
            });
        }
        if p.kind == "checkpoint" {
            if let Some(k) = key
                && !signed_by(p, k)
            {
                return Err(Problem::Forged {
                    at: l.at.clone(),
                    seq: p.seq,
                });
            }
            summary.checkpoints += 1;
        }
        match last {
            None => {
                if p.kind != "checkpoint" {
                    return Err(Problem::Headless {
                        at: l.at.clone(),
                        seq: p.seq,
                    });
                }
                let first = p.seq == 0 && p.prev == GENESIS;
                if !first && from != Some(p.seq) {
                    return Err(Problem::Truncated {
                        at: l.at.clone(),
                        chain: chain.to_owned(),
                        seq: p.seq,
                    });
                }
                if !first {
                    summary.from.push(format!("{chain}@{}", p.seq));
                }
            }
            Some((seq, hash)) => {
                let expected = seq + 1;
                if p.seq == expected && p.prev != hash {
                    return Err(Problem::Inserted {
                        at: l.at.clone(),
                        seq: p.seq,
                    });
                }
                if p.seq > expected {
                    // Missing numbers that show up later were moved, not deleted.
                    return Err(if present.contains(&expected) {
                        Problem::Reordered {
                            at: l.at.clone(),
                            seq: p.seq,
                            expected,
                        }
                    } else {
                        Problem::Deleted {
                            at: l.at.clone(),
                            from: expected,
                            to: p.seq - 1,
                        }
                    });
                }
                if p.seq < expected {
                    return Err(if seen.contains(&p.seq) {
                        Problem::Inserted {
                            at: l.at.clone(),
                            seq: p.seq,
                        }
                    } else {
                        Problem::Reordered {
                            at: l.at.clone(),
                            seq: p.seq,
                            expected,
                        }
                    });
                }
            }
        }
        seen.insert(p.seq);
        summary.records += 1;
        summary.dropped += l.dropped;
        last = Some((p.seq, &p.hash));
    }
    // Nothing after the last checkpoint.
    let unsealed = lines
        .iter()
        .rev()
        .take_while(|l| l.parsed.as_ref().is_some_and(|p| p.kind != "checkpoint"))
        .count();
    if unsealed > 0 {
        let first = &lines[lines.len() - unsealed];
        return Err(Problem::Unsealed {
            at: first.at.clone(),
            records: unsealed as u64,
        });
    }
    Ok(())
}

/// The shortest checkpoint key accepted: an HMAC-SHA256 key of fewer bytes than the hash is
/// weaker than the hash, and an empty one signs nothing.
pub const MIN_KEY_BYTES: usize = 32;

/// A checkpoint key from its file (a Secret's value, whitespace around it trimmed).
pub fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("reading the audit key {}: {e}", path.display()))?;
    let key = raw.trim_ascii().to_vec();
    if key.len() < MIN_KEY_BYTES {
        anyhow::bail!(
            "the audit key in {} has {} bytes; at least {MIN_KEY_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

/// The `audit verify` command: prints the verdict; exit code 0 intact, 1 not.
pub fn command(files: &[PathBuf], key_file: Option<&Path>, from: &[String]) -> anyhow::Result<i32> {
    let key = key_file.map(read_key).transpose()?;
    let key = key.as_deref();
    match verify(files, key, from)? {
        Ok(s) => {
            println!(
                "intact: {} records in {} chain(s), {} checkpoint(s){}",
                s.records,
                s.chains,
                s.checkpoints,
                if key.is_some() {
                    ", every checkpoint signed by the key"
                } else {
                    " (signatures not checked: no --key-file)"
                }
            );
            for f in &s.from {
                println!(
                    "chain {f}: verified from this checkpoint, as --from asked; records before it were not checked"
                );
            }
            if s.dropped > 0 {
                println!(
                    "the proxies reported {} record(s) dropped while a sink was down",
                    s.dropped
                );
            }
            for c in &s.open {
                println!(
                    "chain {c} has no closing checkpoint: its proxy is still running, stopped without draining, or records after its last line were cut off"
                );
            }
            Ok(0)
        }
        Err(p) => {
            println!("TAMPERED: {p}");
            Ok(1)
        }
    }
}

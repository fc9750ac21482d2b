//! `switchyard-data-plane audit verify FILES...`: checks audit files and names the first
//! line that was edited, deleted, inserted or reordered.
//!
//! Lines are grouped by chain (a proxy and sink since its start; a Redis export interleaves
//! many). Files are put in order within a chain by the sequence number they start at, then
//! each chain is walked line by line: every line's hash must match its bytes, its `seq` must
//! follow the one before and its `prev` must be that line's hash. A chain must start with a
//! checkpoint (`seq` 0, or a later checkpoint when older files were rotated away); with the
//! key, every checkpoint's signature is checked, so a chain recomputed after a forgery fails
//! at its next checkpoint.

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
}

struct Line {
    at: Place,
    parsed: Option<Parsed>,
    closing: bool,
    dropped: u64,
}

/// Checks the files; `Err`: the first problem, in the order of the files' chains.
pub fn verify(files: &[PathBuf], key: Option<&[u8]>) -> std::io::Result<Result<Summary, Problem>> {
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
        if let Err(p) = walk(&lines, key, &mut summary) {
            return Ok(Err(p));
        }
        summary.chains += 1;
        if !lines.last().is_some_and(|l| l.closing) {
            summary.open.push(chain);
        }
    }
    Ok(Ok(summary))
}

fn walk(lines: &[Line], key: Option<&[u8]>, summary: &mut Summary) -> Result<(), Problem> {
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
                let starts = p.kind == "checkpoint" && (p.seq > 0 || p.prev == GENESIS);
                if !starts {
                    return Err(Problem::Headless {
                        at: l.at.clone(),
                        seq: p.seq,
                    });
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
    Ok(())
}

/// The `audit verify` command: prints the verdict; exit code 0 intact, 1 not.
pub fn command(files: &[PathBuf], key_file: Option<&Path>) -> anyhow::Result<i32> {
    let key = key_file
        .map(|p| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("reading the key {}: {e}", p.display()))
        })
        .transpose()?;
    let key = key.as_deref().map(<[u8]>::trim_ascii);
    match verify(files, key)? {
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

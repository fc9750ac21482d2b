//! `cargo xtask layers`: the data plane's modules use only modules below them.
//!
//! `data-plane/LAYERS` lists the top-level modules of `data-plane/src`, lowest first, and
//! under `[debt]` the upward uses still waiting to be moved, each with its reason. The check
//! reads every `crate::…` path outside test code (a `tests.rs` file, or a file's part from its
//! first `#[cfg(test)]` on) and fails when:
//!
//! - a module uses one listed above it and the use is not a debt entry;
//! - a debt entry is paid (no such use is left): delete it, so the list only shrinks;
//! - a module of `src/` is not listed, or a listed one does not exist;
//! - the README's architecture section does not show the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The declared order and the debt.
#[derive(Debug, Default, PartialEq)]
struct Layers {
    /// Lowest first.
    order: Vec<String>,
    /// (from, to) → why it is still there.
    debt: BTreeMap<(String, String), String>,
}

fn parse_layers(text: &str) -> Result<Layers> {
    let mut l = Layers::default();
    let mut in_debt = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line == "[debt]" {
            in_debt = true;
            continue;
        }
        let (head, why) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(h, w)| (h, w.trim()));
        if in_debt {
            let Some((from, to)) = head.split_once("->") else {
                bail!("LAYERS line {}: a debt entry is `from->to  why`", n + 1);
            };
            if why.is_empty() {
                bail!("LAYERS line {}: say why {head} is still there", n + 1);
            }
            l.debt
                .insert((from.trim().into(), to.trim().into()), why.into());
        } else {
            if l.order.iter().any(|m| m == head) {
                bail!("LAYERS line {}: {head} is listed twice", n + 1);
            }
            l.order.push(head.into());
        }
    }
    Ok(l)
}

/// The code of a file that is not test code.
fn non_test(path: &Path, text: &str) -> Option<String> {
    if path.file_name().is_some_and(|f| f == "tests.rs") {
        return None;
    }
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    Some(text[..end].to_owned())
}

/// The top-level modules a piece of code names through `crate::`.
fn used_modules(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `switchyard_crds::…` and the like are other crates.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each item at depth 1.
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The top-level module of a file under `src`, `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Which module uses which, from the sources under `src`.
fn edges(src: &Path, modules: &BTreeSet<String>) -> Result<BTreeMap<(String, String), String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    let mut out = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file)?;
        let Some(code) = non_test(&file, &text) else {
            continue;
        };
        for to in used_modules(&code) {
            if to != from && modules.contains(&to) {
                let rel = file
                    .strip_prefix(src)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                out.entry((from.clone(), to)).or_insert(rel);
            }
        }
    }
    Ok(out)
}

/// How the README shows the order: "`a` → `b` → …".
fn readme_line(order: &[String]) -> String {
    order
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// What is wrong, one line each (empty: the layers hold).
fn check(
    layers: &Layers,
    on_disk: &BTreeSet<String>,
    edges: &BTreeMap<(String, String), String>,
    readme: &str,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let rank: BTreeMap<&str, usize> = layers
        .order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    for m in on_disk {
        if !rank.contains_key(m.as_str()) {
            wrong.push(format!("module `{m}` is not in LAYERS: give it its place"));
        }
    }
    for m in &layers.order {
        if !on_disk.contains(m) {
            wrong.push(format!("LAYERS lists `{m}`, which is not a module of src/"));
        }
    }
    for ((from, to), file) in edges {
        let (Some(f), Some(t)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
            continue;
        };
        if t > f && !layers.debt.contains_key(&(from.clone(), to.clone())) {
            wrong.push(format!(
                "`{from}` uses `{to}`, which is above it ({file}): move what it needs down"
            ));
        }
    }
    for (from, to) in layers.debt.keys() {
        if !edges.contains_key(&(from.clone(), to.clone())) {
            wrong.push(format!(
                "the debt `{from} -> {to}` is paid: delete its line from LAYERS"
            ));
        }
    }
    let line = readme_line(&layers.order);
    if !readme.contains(&line) {
        wrong.push(format!(
            "the README's architecture section must show the order as: {line}"
        ));
    }
    wrong
}

pub(crate) fn run(root: &Path) -> Result<()> {
    let text = std::fs::read_to_string(root.join("data-plane/LAYERS"))?;
    let layers = parse_layers(&text)?;
    let src = root.join("data-plane/src");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&src)? {
        let path = entry?.path();
        if let Some(m) = module_of(&src, &path)
            && (path.is_dir() || path.extension().is_some_and(|e| e == "rs"))
        {
            on_disk.insert(m);
        }
    }
    let edges = edges(&src, &on_disk)?;
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let wrong = check(&layers, &on_disk, &edges, &readme);
    if !wrong.is_empty() {
        for w in &wrong {
            eprintln!("layers: {w}");
        }
        bail!(
            "the data plane's layers do not hold ({} problems)",
            wrong.len()
        );
    }
    println!(
        "layers: {} modules, {} uses between them, {} upward uses left as debt",
        on_disk.len(),
        edges.len(),
        layers.debt.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn paths_and_groups_name_their_modules() {
        let code = "use crate::llm::{Usage, Price};\nuse crate::{error::ProxyError, policy::{auth, limits}};\nlet x = crate::glob::matches(a);\nuse switchyard_crds::x;\n/// [`crate::config::Entry`]";
        assert_eq!(
            used_modules(code),
            set(&["config", "error", "glob", "llm", "policy"])
        );
    }

    #[test]
    fn test_code_is_not_read() {
        let p = Path::new("src/a/mod.rs");
        assert_eq!(
            non_test(
                p,
                "use crate::b;\n#[cfg(test)]\nmod tests { use crate::c; }"
            )
            .as_deref(),
            Some("use crate::b;\n")
        );
        assert_eq!(non_test(Path::new("src/a/tests.rs"), "use crate::c;"), None);
    }

    #[test]
    fn upward_uses_fail_unless_owed_and_paid_debt_fails_too() {
        let layers = parse_layers("low  the bottom\nmid\nhigh\n[debt]\nmid->high  waiting\n")
            .expect("parse");
        let disk = set(&["low", "mid", "high"]);
        let readme = "`low` → `mid` → `high`";
        let e = |pairs: &[(&str, &str)]| -> BTreeMap<(String, String), String> {
            pairs
                .iter()
                .map(|(a, b)| (((*a).into(), (*b).into()), "f.rs".into()))
                .collect()
        };
        assert!(
            check(
                &layers,
                &disk,
                &e(&[("high", "low"), ("mid", "high")]),
                readme
            )
            .is_empty()
        );
        let w = check(
            &layers,
            &disk,
            &e(&[("low", "mid"), ("mid", "high")]),
            readme,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`low` uses `mid`"), "{w:?}");
        let w = check(&layers, &disk, &e(&[]), readme);
        assert!(w[0].contains("is paid"), "{w:?}");
        let w = check(
            &layers,
            &set(&["low", "mid", "high", "new"]),
            &e(&[("mid", "high")]),
            "",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            parse_layers("a\n[debt]\na->b\n").is_err(),
            "a debt names its reason"
        );
    }
}

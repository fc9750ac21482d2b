//! `cargo xtask layers`: the data plane's modules use only modules below them.
//!
//! `data-plane/LAYERS` lists the top-level modules of `data-plane/src`, lowest first, and
//! under `[debt]` the upward uses still waiting to be moved, each with its reason. The check
//! reads every `crate::…` path, every `super::` chain that climbs to the crate root and every
//! name `lib.rs` brings into the root, outside test code (`tests.rs` files and items marked
//! `#[cfg(test)]`), comments and literals, and fails when:
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

/// The code of a file that is not test code: a `tests.rs` file is all test code; elsewhere
/// each item marked `#[cfg(test)]` (a test module, a test-only helper) is left out, and
/// comments and the insides of string and character literals are blanked, so neither a
/// brace in a string nor a path in a comment misleads the reading.
fn non_test(path: &Path, text: &str) -> Option<String> {
    if path.file_name().is_some_and(|f| f == "tests.rs") {
        return None;
    }
    let code = blank_comments_and_literals(text);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        rest = skip_item(&rest[i + "#[cfg(test)]".len()..]);
    }
    out.push_str(rest);
    Some(out)
}

/// What follows the item at the start of `code`: through its `;`, or its `{ … }` block.
fn skip_item(code: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in code.char_indices() {
        match c {
            ';' if depth == 0 => return &code[i + 1..],
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &code[i + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

/// `text` with comments, string literals (raw ones too) and character literals replaced by
/// spaces, line breaks kept.
fn blank_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, part: &[u8]| {
        out.extend(part.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .skip(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 4)
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"…", r#"…"#, br"…": up to the quote followed by as many `#`.
            let open = rest.iter().position(|&c| c == b'"').unwrap_or(0) + 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            rest[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| open + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            match rest.get(1) {
                Some(b'\\') => rest[2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(1, |p| p + 3),
                Some(_) if rest.get(2) == Some(&b'\'') => 3,
                _ => {
                    // A multi-byte character: its closing quote within four bytes.
                    match rest[1..].iter().take(5).position(|&c| c == b'\'') {
                        Some(p) if !rest[1].is_ascii() => p + 2,
                        _ => 0,
                    }
                }
            }
        } else {
            0
        };
        if end == 0 {
            out.push(rest[0]);
            i += 1;
        } else {
            blank(&mut out, &rest[..end]);
            i += end;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The number of `#` of a raw string literal starting here (`r"`, `r#"`, `br"`), if it is
/// one (and not the end of an identifier such as `for`).
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let body = rest
        .strip_prefix(b"br")
        .or_else(|| rest.strip_prefix(b"r"))?;
    let hashes = body.iter().take_while(|&&c| c == b'#').count();
    (body.get(hashes) == Some(&b'"')).then_some(hashes)
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

/// Which module uses which, from the sources under `src`. Besides `crate::…` paths, a
/// `super::` chain that climbs to the crate root counts, and so do the names `lib.rs` brings
/// into the crate root (`use gateway::Gateway;` makes `crate::Gateway` a use of `gateway`).
fn edges(src: &Path, modules: &BTreeSet<String>) -> Result<BTreeMap<(String, String), String>> {
    let aliases = root_aliases(&std::fs::read_to_string(src.join("lib.rs"))?, modules);
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
        let mut used = used_modules(&code);
        used.extend(root_via_super(&code, depth_of(src, &file)));
        for name in used {
            let to = aliases.get(&name).cloned().unwrap_or(name);
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

/// How deep a file's module is: `src/a.rs` and `src/a/mod.rs` 1, `src/a/b.rs` 2.
fn depth_of(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The first names after each `super::` chain that climbs exactly to the crate root.
fn root_via_super(code: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if depth == 0 {
        return out;
    }
    let chain = "super::".repeat(depth);
    let mut rest = code;
    while let Some(i) = rest.find(&chain) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + chain.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if rest.starts_with("super::") {
            // A longer chain climbs past the root: not a path (nor is what it ends in).
            rest = rest.trim_start_matches("super::");
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Names `lib.rs` brings into the crate root from a module (`use m::X;`, `pub use m::{X, Y};`),
/// each to its module.
fn root_aliases(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in blank_comments_and_literals(lib).split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("use "))
        else {
            continue;
        };
        let path = path
            .trim()
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        let names = rest.rsplit("::").next().unwrap_or(rest);
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.split(" as ").last().unwrap_or(name).trim();
            if !name.is_empty() && name != "self" && name != "*" {
                out.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    out
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
    fn test_code_is_not_read_and_code_after_it_is() {
        let p = Path::new("src/a/mod.rs");
        let code = non_test(
            p,
            "use crate::b;\n#[cfg(test)]\nconst T: &str = \"}\";\n#[cfg(test)]\nmod tests { fn f() { let s = \"{\"; use crate::c; } }\nfn g() -> char { '{' }\nuse crate::d; // crate::e\n",
        )
        .expect("code");
        assert_eq!(used_modules(&code), set(&["b", "d"]), "{code}");
        assert_eq!(non_test(Path::new("src/a/tests.rs"), "use crate::c;"), None);
        let raw =
            blank_comments_and_literals("let j = r#\"{\"a\": \"}\"}\"#; use crate::x; 'a: loop {}");
        assert_eq!(used_modules(&raw), set(&["x"]), "{raw}");
    }

    #[test]
    fn super_chains_to_the_root_and_root_aliases_count() {
        assert_eq!(
            root_via_super("use super::gateway::X; super::super::y", 1),
            set(&["gateway"])
        );
        assert_eq!(
            root_via_super("use super::super::gateway::X; super::y", 2),
            set(&["gateway"])
        );
        let modules = set(&["gateway", "policy", "telemetry"]);
        let aliases = root_aliases(
            "pub mod gateway;\nuse gateway::Gateway;\npub use policy::limits;\nuse telemetry::{audit, metrics as m};\nuse std::sync::Arc;\n",
            &modules,
        );
        assert_eq!(aliases.get("Gateway").map(String::as_str), Some("gateway"));
        assert_eq!(aliases.get("limits").map(String::as_str), Some("policy"));
        assert_eq!(aliases.get("m").map(String::as_str), Some("telemetry"));
        assert!(!aliases.contains_key("Arc"));
        assert_eq!(depth_of(Path::new("src"), Path::new("src/a/b.rs")), 2);
        assert_eq!(depth_of(Path::new("src"), Path::new("src/a/mod.rs")), 1);
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

//! Every relative link in the documentation leads somewhere: the file (or
//! directory) exists, and an `#anchor` names a heading of its target as GitHub
//! renders it. The documents are split over several files that link into each
//! other; a renamed heading or a moved section must fail here, not on a reader.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents checked: the README, everything under `docs/`, and the load
/// generator's manual (which the others link to).
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md"), root.join("bench/README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// A line with its inline code spans blanked out (a `](` inside backticks is
/// an example, not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if in_code {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links on a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        // `[text](target "title")`: the target is the first word.
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    out
}

/// GitHub's anchor for a heading: inline markup reduced to its text, lowercase,
/// every character but letters, digits, `_`, `-` and spaces dropped, spaces
/// to `-`.
fn slug(heading: &str) -> String {
    // `[text](url)` → `text`.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a document offers, with GitHub's `-1`, `-2`, … for repeated
/// headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let heading = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// What is wrong with one link of `doc`, if anything.
fn check_link(doc: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if is_external(target) {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else if path.starts_with('/') {
        return Some(format!("{target}: absolute paths do not work on GitHub"));
    } else {
        doc.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Some(format!("{target}: no such file or directory"));
    }
    let anchor = anchor?;
    if file.is_dir() || file.extension().is_none_or(|x| x != "md") {
        return Some(format!("{target}: an anchor into something not Markdown"));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    if anchors(&text).contains(anchor) {
        None
    } else {
        Some(format!("{target}: no heading with anchor #{anchor}"))
    }
}

fn broken_links(doc: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(doc).unwrap();
    let name = doc
        .strip_prefix(root())
        .unwrap_or(doc)
        .display()
        .to_string();
    let mut broken = Vec::new();
    for (n, line) in prose(&text) {
        for target in link_targets(line) {
            if let Some(why) = check_link(doc, &target) {
                broken.push(format!("{name}:{n}: {why}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_resolves() {
    let docs = documents();
    assert!(
        docs.len() >= 6,
        "README, bench/README and docs/*.md: {docs:?}"
    );
    let broken: Vec<String> = docs.iter().flat_map(|d| broken_links(d)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_document() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let linked: HashSet<String> = prose(&readme)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .map(|t| t.split('#').next().unwrap().to_string())
        .collect();
    for doc in documents() {
        let rel = doc.strip_prefix(root()).unwrap().display().to_string();
        if rel != "README.md" {
            assert!(linked.contains(&rel), "README.md does not link {rel}");
        }
    }
}

#[test]
fn the_readme_stays_short() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 400,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        slug("Protocol v2 for modern clients"),
        "protocol-v2-for-modern-clients"
    );
    assert_eq!(
        slug("Sender's echo and idempotent send"),
        "senders-echo-and-idempotent-send"
    );
    assert_eq!(slug("`room_members`"), "room_members");
    assert_eq!(
        slug("Limits and abuse handling"),
        "limits-and-abuse-handling"
    );
    assert_eq!(slug("At 100,000+ connections"), "at-100000-connections");
    assert_eq!(slug("Behind nginx (TLS)"), "behind-nginx-tls");
    assert_eq!(slug("See [the map](src/lib.rs)"), "see-the-map");
    assert_eq!(slug("Lifetime of a `msg`"), "lifetime-of-a-msg");
    let doc = "# A\n```sh\n# not a heading\n```\n## A\n### B c\n";
    let a = anchors(doc);
    assert!(
        a.contains("a") && a.contains("a-1") && a.contains("b-c"),
        "{a:?}"
    );
    assert!(!a.contains("not-a-heading"), "{a:?}");
}

#[test]
fn links_are_found_outside_code_only() {
    assert_eq!(
        link_targets("see [ops](docs/operations.md#limits) and ![x](a.png \"t\")"),
        vec!["docs/operations.md#limits", "a.png"]
    );
    assert!(link_targets("`[not](a/link)` in code").is_empty());
    let text = "[a](x.md)\n```\n[b](y.md)\n```\n";
    let found: Vec<String> = prose(text)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .collect();
    assert_eq!(found, vec!["x.md"]);
}

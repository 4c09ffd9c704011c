//! The shell's layout rules, checked on its source: no two modules import each other (directly
//! or through others), and no file grows past what one can hold in one's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a file may have before its test module.
const MAX_LINES: usize = 800;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `transport/listener.rs` → `transport::listener`; `sinks/console/mod.rs` → `sinks::console`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// The code before the file's unit-test module (tests may reach anywhere).
fn without_tests(text: &str) -> &str {
    let cut = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    &text[..cut]
}

/// Paths after each `marker` (`crate::a::b`), with a braced list expanded one level
/// (`crate::a::{b, c::D}` → `a::b`, `a::c::D`).
fn paths_after(code: &str, marker: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in code.match_indices(marker) {
        let rest = &code[i + marker.len()..];
        let end = rest.find(|c: char| !is_path(c)).unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':');
        match rest[end..].strip_prefix('{') {
            Some(list) if rest[..end].ends_with("::") => {
                let list = &list[..list.find('}').unwrap_or(list.len())];
                for item in list.split(',') {
                    let item = item.trim();
                    let head = &item[..item.find(|c: char| !is_path(c)).unwrap_or(item.len())];
                    match head.trim_end_matches(':') {
                        "" | "self" => out.push(path.to_owned()),
                        h => out.push(format!("{path}::{h}")),
                    }
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let texts: BTreeMap<String, String> = files
        .iter()
        .filter(|f| !f.ends_with("lib.rs") && !f.ends_with("main.rs") && !f.ends_with("tests.rs"))
        .map(|f| (module_of(&src, f), std::fs::read_to_string(f).unwrap()))
        .collect();
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    let mut g = BTreeMap::new();
    for (m, text) in &texts {
        let code = without_tests(text);
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.extend(resolve(&p, &modules));
        }
        for p in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                p.to_owned()
            } else {
                format!("{parent}::{p}")
            };
            deps.extend(resolve(&full, &modules));
        }
        // A child naming its own parent is how Rust nests modules, not a cycle.
        deps.retain(|d| d != m && d != parent);
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle through `from`, if any, as the list of modules along it.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in g.get(&at).into_iter().flatten() {
            if next == from {
                let mut c = path.clone();
                c.push(from.to_owned());
                return Some(c);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(g.len() > 20, "the scan found the modules: {:?}", g.keys());
    assert!(
        g["server"].contains("http")
            && g["http::deprecated"].contains("http::api")
            && g["http"].contains("transport::listener"),
        "the scan sees imports, braced lists included: {g:?}"
    );
    let cycles: Vec<Vec<String>> = g.keys().filter_map(|m| cycle(&g, m)).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    g.insert("d".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    assert!(cycle(&g, "d").is_none());
}

#[test]
fn files_stay_small() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<(String, usize)> = files
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            (module_of(&src, f), without_tests(&text).lines().count())
        })
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

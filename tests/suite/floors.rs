//! The crate's layering, as `src/lib.rs` states it: every top-level module sits on a floor,
//! imports point down (or across a floor) only, and no two source files import each other,
//! directly or through others. An import is any `crate::a::b` path outside a unit-test block,
//! in code or in doc links, resolved to the longest module file that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of every source file: `runner/race.rs` -> ["runner", "race"].
fn files() -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src()).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts != ["lib"] && parts != ["main"] {
                    out.insert(parts, path);
                }
            }
        }
    }
    out
}

/// The floors table of lib.rs's header: `//! | 3 | train, score |`.
fn floors() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! |")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(floor) = cells[0].parse::<u32>() else { continue };
        for module in cells[1].split(',') {
            out.insert(module.trim().trim_matches('`').to_string(), floor);
        }
    }
    out
}

/// `crate::` paths of a file, unit-test blocks left out, each as its segments.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    paths_after(text, "crate::")
}

/// The paths that follow `marker` (`crate::` or `super::`) in a file, unit-test blocks left out.
fn paths_after(text: &str, marker: &str) -> Vec<Vec<String>> {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices(marker) {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::` or `a::super::`
        }
        let rest = &text[i + marker.len()..];
        if rest.starts_with('{') {
            let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
            out.extend(inner.split(',').map(|item| segments(item.trim())));
        } else {
            let mut path = segments(rest);
            if let Some(j) = rest.find("::{").filter(|&j| j == path.join("::").len()) {
                let inner = &rest[j + 3..rest[j..].find('}').map_or(rest.len(), |k| j + k)];
                for item in inner.split(',').map(str::trim) {
                    out.push([path.clone(), segments(item)].concat());
                }
                path.clear();
            }
            out.push(path);
        }
    }
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

fn segments(s: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        if end == 0 || &rest[..end] == "self" {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(r) if r.starts_with(ident) => rest = r,
            _ => break,
        }
    }
    out
}

/// What each module file re-exports from its children: (module, item) -> child module, from
/// `pub use child::Item;` and `pub use child::{A, B};` lines.
fn reexports(files: &BTreeMap<Vec<String>, PathBuf>) -> BTreeMap<(Vec<String>, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for (module, file) in files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
            let Some((child, items)) = line.trim_end_matches(';').split_once("::") else { continue };
            let child: Vec<String> = [module.clone(), vec![child.to_string()]].concat();
            if !files.contains_key(&child) {
                continue;
            }
            for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
                let name = item.split(" as ").last().unwrap_or(item).trim();
                out.insert((module.clone(), name.to_string()), child.clone());
            }
        }
    }
    out
}

/// The file-level import graph: file -> files it imports, a re-exported item resolved to the
/// file that defines it (so a loop through a `mod.rs` re-export is still a loop).
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = files();
    let reexported = reexports(&files);
    let resolve = |path: &[String]| {
        let k = (1..=path.len()).rev().find(|&k| files.contains_key(&path[..k]))?;
        let module = path[..k].to_vec();
        Some(match path.get(k) {
            Some(item) => reexported.get(&(module.clone(), item.clone())).cloned().unwrap_or(module),
            None => module,
        })
    };
    files
        .iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            let parent = &module[..module.len() - 1];
            let supers = paths_after(&text, "super::").into_iter().map(|p| [parent, &p[..]].concat());
            let paths = crate_paths(&text).into_iter().chain(supers);
            let targets = paths.filter_map(|p| resolve(&p)).filter(|t| t != module).collect();
            (module.clone(), targets)
        })
        .collect()
}

#[test]
fn every_module_sits_on_a_floor() {
    let floors = floors();
    assert!(floors.len() > 10, "lib.rs states no floors table: {floors:?}");
    let tops: BTreeSet<String> = files().keys().map(|m| m[0].clone()).collect();
    let missing: Vec<&String> = tops.iter().filter(|m| !floors.contains_key(*m)).collect();
    assert!(missing.is_empty(), "modules with no floor in lib.rs: {missing:?}");
}

#[test]
fn imports_point_down_only() {
    let floors = floors();
    let floor = |m: &[String]| floors.get(&m[0]).copied().unwrap_or(u32::MAX);
    let mut upward = Vec::new();
    for (file, targets) in graph() {
        for t in targets.iter().filter(|t| floor(t) > floor(&file)) {
            upward.push(format!(
                "{} (floor {}) imports {} (floor {})",
                file.join("/"),
                floor(&file),
                t.join("/"),
                floor(t)
            ));
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_two_files_import_each_other() {
    let graph = graph();
    let mut cycles = Vec::new();
    for start in graph.keys() {
        // every file reachable from `start`; a cycle when `start` is among them
        let (mut seen, mut stack) = (BTreeSet::new(), vec![start.clone()]);
        while let Some(m) = stack.pop() {
            for t in &graph[&m] {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        if seen.contains(start) {
            cycles.push(start.join("/"));
        }
    }
    assert!(cycles.is_empty(), "files on an import cycle: {cycles:?}");
}

#[test]
fn the_path_reader_sees_grouped_and_nested_imports() {
    let paths = crate_paths("use crate::report::{self, Report, table::Table};\nlet x = crate::curve::median(&v);");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["report", "report::Report", "report::table::Table", "curve::median"]);
}

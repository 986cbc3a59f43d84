//! The layering of `src/` (see `src/lib.rs`): imports point down, never in a circle.
//!
//! CLI -> runtime -> pipeline -> stage core <- stages -> kernels. The runtime never names a
//! concrete stage kind (it sees `StageDef` objects); kernels (`simulate`, `features`, `preprocess`,
//! `dic`, `train`, `formats`) are plain functions on slices: no Arrow, no stages. Read from the
//! source text, so a new `use` that breaks a rule fails here with the file that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo;

const KERNELS: [&str; 6] = ["simulate", "features", "preprocess", "dic", "train", "formats"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's text without comments (a doc comment may name another module freely).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module of a file under `src/`: `src/runtime/run.rs` -> `runtime`, `src/cli.rs` -> `cli`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// `crate::X` references of every top-level module, with the files that make them.
fn imports() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code_of(&f);
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + 7..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != from {
                out.entry(from.clone()).or_default().entry(name).or_default().insert(f.strip_prefix(&src).unwrap().display().to_string());
            }
            rest = after;
        }
        out.entry(from).or_default();
    }
    out
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = imports();
    // Depth-first search for a back edge; report the cycle with the files that close it.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            match state.get(&m).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| *s == m).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m);
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(&m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(n, &graph, &mut state, &mut Vec::new()) {
                let edges: Vec<String> =
                    cycle.windows(2).map(|w| format!("{} -> {} ({:?})", w[0], w[1], graph[&w[0]][&w[1]])).collect();
                panic!("import cycle between top-level modules: {}", edges.join("; "));
            }
        }
    }
}

#[test]
fn the_runtime_and_the_kernels_never_import_the_stage_kinds() {
    let graph = imports();
    let mut bad = Vec::new();
    for from in KERNELS.iter().chain(["runtime", "stage", "checkpoint"].iter()) {
        if let Some(files) = graph.get(*from).and_then(|e| e.get("stages")) {
            bad.push(format!("{from} imports crate::stages in {files:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn kernels_import_neither_arrow_nor_parquet_nor_the_stage_core() {
    let src = repo().join("src");
    let mut bad = Vec::new();
    for k in KERNELS {
        let mut files = Vec::new();
        rust_files(&src.join(k), &mut files);
        for f in files {
            let code = code_of(&f);
            for needle in ["arrow::", "parquet::", "crate::stage::", "crate::stages::", "crate::runtime::", "crate::pipeline::"] {
                if code.contains(needle) {
                    bad.push(format!("{} uses {needle}", f.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "kernels must stay plain functions on slices:\n{}", bad.join("\n"));
}

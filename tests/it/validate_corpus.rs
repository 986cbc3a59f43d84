//! The malformed-pipeline corpus: every file in `tests/malformed/` must be rejected by the real
//! binary with exit code 2, every expected `line:column: message` in its `.expected` file (and no
//! other diagnostic), and nothing created in the run directory, by `validate` and by `run` alike.

use std::path::{Path, PathBuf};

use crate::support::{cli, fixtures, repo};

fn corpus() -> Vec<PathBuf> {
    let dir = repo().join("tests/malformed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Parses `L:C: message` lines.
fn expected(path: &Path) -> Vec<(usize, usize, String)> {
    let text = std::fs::read_to_string(path.with_extension("expected")).expect("every corpus file has a .expected");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ':');
            let line = parts.next().unwrap().trim().parse().unwrap();
            let col = parts.next().unwrap().trim().parse().unwrap();
            (line, col, parts.next().unwrap().trim().to_string())
        })
        .collect()
}

#[test]
fn corpus_has_at_least_twenty_files() {
    assert!(corpus().len() >= 20, "only {} malformed files", corpus().len());
}

#[test]
fn every_malformed_file_reports_all_its_errors_at_the_right_place() {
    let mut failures = Vec::new();
    for file in corpus() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let want = expected(&file);
        assert!(!want.is_empty(), "{name}: empty .expected");
        let out = cli(file.parent().unwrap(), &["validate", &name]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.code() != Some(2) {
            failures.push(format!("{name}: exit {:?}, expected 2\n{stderr}", out.status.code()));
            continue;
        }
        let diags: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&format!("{name}:"))).collect();
        if diags.len() != want.len() {
            failures.push(format!("{name}: {} diagnostics, expected {}:\n{stderr}", diags.len(), want.len()));
        }
        for (line, col, msg) in &want {
            let prefix = format!("{name}:{line}:{col}: ");
            if !diags.iter().any(|d| d.starts_with(&prefix) && d.contains(msg.as_str())) {
                failures.push(format!("{name}: missing `{prefix}{msg}` in:\n{stderr}"));
            }
        }
        assert!(stderr.contains(&format!("{} error", want.len())), "{name}: summary line missing");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn run_refuses_malformed_files_before_creating_anything() {
    for file in corpus() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("malformed");
        std::fs::create_dir_all(&dst).unwrap();
        // Same relative layout, so paths to the fixtures resolve as in the repository.
        std::os::unix::fs::symlink(fixtures(), tmp.path().join("fixtures")).unwrap();
        let name = file.file_name().unwrap();
        std::fs::copy(&file, dst.join(name)).unwrap();
        let out = cli(&dst, &["run", name.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!dst.join("runs").exists(), "{name:?}: run created a run directory");
        let leftovers: Vec<_> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != name).collect();
        assert!(leftovers.is_empty(), "{name:?}: run left {leftovers:?}");
    }
}

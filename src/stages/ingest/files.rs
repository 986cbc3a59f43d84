//! What every file-reading source shares: listing its files (paths, globs, folders) with all
//! issues at once, content ids (`recording_id` = a prefix of the file's blake3 hash), emitting each
//! distinct file once, and the folder `run --watch` watches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::stage::{Emitter, Issue, StageContext, WatchSource};

/// The checks every file-reading source shares, all issues at once: at least one entry in `paths`,
/// every entry naming a file with `extension` (`what` names it in the message, e.g. "ABF file"),
/// and a `hash_hex_chars` in 8..=64.
pub(crate) fn check_file_source(ctx: &StageContext, paths: &[String], extension: &str, what: &str, hash_hex_chars: usize) -> Vec<Issue> {
    let mut issues = Vec::new();
    if paths.is_empty() {
        issues.push(Issue::at(&["paths"], format!("give at least one {what}, glob pattern or folder")));
    } else if let Err(mut e) = expand_paths(ctx, "paths", paths, extension) {
        issues.append(&mut e);
    }
    if !(8..=64).contains(&hash_hex_chars) {
        issues.push(Issue::at(&["hash_hex_chars"], format!("{hash_hex_chars} is outside 8..=64 hex digits")));
    }
    issues
}

/// The files of a file-reading source at run time (the first issue becomes the stage's error).
pub(crate) fn source_files(ctx: &StageContext, paths: &[String], extension: &str) -> Result<Vec<PathBuf>> {
    expand_paths(ctx, "paths", paths, extension).map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i[0].message)))
}

/// The files a list of paths/globs/folders names, sorted and deduplicated; an issue per entry
/// that names nothing.
pub(crate) fn expand_paths(ctx: &StageContext, key: &str, paths: &[String], extension: &str) -> std::result::Result<Vec<PathBuf>, Vec<Issue>> {
    let mut files = Vec::new();
    let mut issues = Vec::new();
    let has_ext = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension));
    for (i, pattern) in paths.iter().enumerate() {
        let full = ctx.resolve(pattern);
        let before = files.len();
        let listed = if full.is_dir() {
            std::fs::read_dir(&full)
                .map(|entries| files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && has_ext(p))))
                .map_err(|e| format!("cannot list folder `{}`: {e}", full.display()))
        } else {
            glob::glob(&full.to_string_lossy())
                .map(|matches| files.extend(matches.flatten().filter(|p| p.is_file())))
                .map_err(|e| format!("bad glob pattern: {e}"))
        };
        if let Err(message) = listed {
            issues.push(Issue::at_index(key, i, message));
        } else if files.len() == before {
            let what = if full.is_dir() { format!("no `*.{extension}` file in folder `{}`", full.display()) } else { format!("no file matches `{}`", full.display()) };
            issues.push(Issue::at_index(key, i, what));
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Emits one file's batch unless a byte-identical file was already emitted (same recording id), or
/// fails that file alone with the reader's message.
pub(crate) fn emit_file_once(out: &mut Emitter, seen: &mut HashSet<String>, path: &Path, read: std::result::Result<(String, RecordBatch), String>) {
    let label = path.display().to_string();
    match read {
        Ok((id, batch)) => {
            if seen.insert(id.clone()) {
                out.emit(batch);
            } else {
                tracing::warn!("{label}: same content as an earlier file (recording {id}); skipped");
            }
        }
        Err(message) => out.fail(label, message),
    }
}

/// `recording_id` of a file's bytes: the first `hex_chars` hex digits of their blake3 hash.
pub fn content_id(bytes: &[u8], hex_chars: usize) -> String {
    let hex = blake3::hash(bytes).to_hex();
    hex.as_str()[..hex_chars.min(64)].to_string()
}

/// The folder and pattern `run --watch` watches for a source given one folder or one
/// `folder/*.ext` glob (`None` for explicit file lists).
pub(crate) fn single_folder_watch(ctx: &StageContext, paths: &[String], ext: &str) -> Option<WatchSource> {
    let [only] = paths else { return None };
    let full = ctx.resolve(only);
    if full.is_dir() {
        return Some(WatchSource { folder: full, pattern: glob::Pattern::new(&format!("*.{ext}")).ok()? });
    }
    let name = full.file_name()?.to_string_lossy().to_string();
    let folder = full.parent()?.to_path_buf();
    (name.contains('*') && folder.is_dir() && !folder.to_string_lossy().contains('*'))
        .then(|| glob::Pattern::new(&name).ok().map(|pattern| WatchSource { folder, pattern }))
        .flatten()
}

/// `recording_id` of a file, hashed by streaming (equal to [`content_id`] of its bytes).
pub(crate) fn streamed_content_id(path: &Path, hex_chars: usize) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex = hasher.finalize().to_hex();
    Ok(hex.as_str()[..hex_chars.min(64)].to_string())
}


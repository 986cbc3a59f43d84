//! What every file-reading source shares: listing its files (paths, globs, folders) with all
//! issues at once, content ids (`recording_id` = a prefix of the file's blake3 hash), reading one
//! file per call and emitting each distinct file once ([`FileBatches`]), and the folder
//! `run --watch` watches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::stage::{Emitter, Issue, SourceOperator, StageContext, WatchSource};

/// Hex digits of a file's blake3 hash kept as `recording_id` unless a stage says otherwise.
pub(crate) fn default_hash_hex_chars() -> usize {
    16
}

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

/// A reader's error as the stage's, its message unchanged (the readers name the file, the record
/// and the field).
pub(crate) fn reader_error(e: impl std::fmt::Display) -> Error {
    Error::msg(e.to_string())
}

/// Whether a file with recording id `id` is new: a byte-identical copy of an earlier file is the
/// same recording, skipped with a warning.
pub(crate) fn first_time(seen: &mut HashSet<String>, path: &Path, id: &str) -> bool {
    let new = seen.insert(id.to_string());
    if !new {
        tracing::warn!("{}: same content as an earlier file (recording {id}); skipped", path.display());
    }
    new
}

/// A source that reads one file per call into one batch (`read` gives the recording id and the
/// batch), emits each distinct file once, and fails a file that cannot be read alone, with the
/// reader's message.
pub(crate) struct FileBatches<F> {
    files: Vec<PathBuf>,
    next: usize,
    seen: HashSet<String>,
    read: F,
}

impl<F> FileBatches<F>
where
    F: FnMut(&Path) -> Result<(String, RecordBatch)> + Send,
{
    pub(crate) fn new(files: Vec<PathBuf>, read: F) -> Self {
        FileBatches { files, next: 0, seen: HashSet::new(), read }
    }
}

impl<F> SourceOperator for FileBatches<F>
where
    F: FnMut(&Path) -> Result<(String, RecordBatch)> + Send,
{
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next).cloned() else {
            return Ok(false);
        };
        self.next += 1;
        match (self.read)(&path) {
            Ok((id, batch)) => {
                if first_time(&mut self.seen, &path, &id) {
                    out.emit(batch);
                }
            }
            Err(e) => out.fail(path.display().to_string(), e.to_string()),
        }
        Ok(self.next < self.files.len())
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


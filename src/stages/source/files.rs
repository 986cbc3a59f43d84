//! What the table sources (`source.parquet`, `source.csv`) share: the files a list of paths or
//! glob patterns names.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::stage::{Issue, StageContext};

/// The files `paths` names (each a file or glob pattern, relative to the pipeline file), sorted and
/// deduplicated. The first entry that names no file (or is not a valid pattern) is the issue.
pub(crate) fn glob_files(ctx: &StageContext, paths: &[String]) -> std::result::Result<Vec<PathBuf>, Issue> {
    let mut files = Vec::new();
    for (i, pattern) in paths.iter().enumerate() {
        let full = ctx.resolve(pattern);
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| Issue::at_index("paths", i, format!("bad glob pattern: {e}")))?;
        let before = files.len();
        files.extend(matches.flatten().filter(|p| p.is_file()));
        if files.len() == before {
            return Err(Issue::at_index("paths", i, format!("no file matches `{}`", full.display())));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// A listing issue at run time (fingerprint, build), as the stage's error.
pub(crate) fn listing_error(ctx: &StageContext, issue: Issue) -> Error {
    Error::msg(format!("stage `{}`: {}", ctx.name, issue.message))
}

/// [`glob_files`] at run time: the issue becomes the stage's error.
pub(crate) fn listed_files(ctx: &StageContext, paths: &[String]) -> Result<Vec<PathBuf>> {
    glob_files(ctx, paths).map_err(|i| listing_error(ctx, i))
}

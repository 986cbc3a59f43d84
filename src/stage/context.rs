//! What a stage knows about where it runs, at validation, fingerprint and build time.

use std::path::{Path, PathBuf};

/// The stage's place in its pipeline.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The stage's name in the pipeline file.
    pub name: String,
    /// Directory of the pipeline file: relative paths in stage options resolve against it.
    pub base_dir: PathBuf,
    /// The stage's own seed, derived from the pipeline seed and the stage name.
    pub seed: u64,
    /// The pipeline's run directory (`runs/<name>/`).
    pub run_dir: PathBuf,
    /// Where the stage writes files beside its checkpoint (models, figures, reports), when the
    /// caller decides it: `run --watch` puts each refit of a training stage in its own version folder.
    pub artifacts_override: Option<PathBuf>,
}

impl StageContext {
    pub fn new(name: impl Into<String>, base_dir: impl Into<PathBuf>, seed: u64, run_dir: impl Into<PathBuf>) -> Self {
        StageContext { name: name.into(), base_dir: base_dir.into(), seed, run_dir: run_dir.into(), artifacts_override: None }
    }

    /// The stage's artifacts folder: the caller's override, else the stage's own `artifacts`
    /// option (relative to the pipeline file), else `<run dir>/artifacts/<stage>`.
    pub fn artifacts_dir(&self, configured: Option<&str>) -> PathBuf {
        match (&self.artifacts_override, configured) {
            (Some(dir), _) => dir.clone(),
            (None, Some(c)) => self.resolve(c),
            (None, None) => self.run_dir.join("artifacts").join(&self.name),
        }
    }

    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}

/// A folder a source reads, with the pattern its files match (for `run --watch`).
#[derive(Debug, Clone)]
pub struct WatchSource {
    pub folder: PathBuf,
    pub pattern: glob::Pattern,
}

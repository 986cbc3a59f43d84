//! Diagnostics for pipeline files: `file:line:column: message`, collected rather than thrown.
//!
//! Validation never stops at the first problem: every check appends to a [`Diagnostics`] list, and
//! the caller prints them all at once, sorted by position, so a scientist fixes a file in one pass.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a pipeline file, located by line and column (both 1-based, columns in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    /// Sorts by position and removes exact duplicates (two checks may find the same fault).
    pub fn finish(&mut self) {
        self.0.sort_by(|a, b| (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message)));
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one source text to line and column.
#[derive(Debug, Clone)]
pub struct SourceMap {
    pub file: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub fn new(file: impl AsRef<Path>, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap { file: file.as_ref().to_path_buf(), text: text.to_string(), line_starts }
    }
    pub fn text(&self) -> &str {
        &self.text
    }
    /// Line and column (1-based; column counted in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        (line + 1, self.text[start..end].chars().count() + 1)
    }
    pub fn diagnostic(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(span.start);
        Diagnostic { file: self.file.clone(), line, column, message: message.into() }
    }
}

/// The closest candidate by edit distance, if it is close enough to be a plausible typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The hint "; did you mean `x`?" for the [`nearest`] candidate, if there is one.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    nearest(word, candidates).map(|n| format!("; did you mean `{n}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_not_bytes() {
        let map = SourceMap::new("p.toml", "a = 1\nµb = 2\n");
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        // 'µ' is two bytes; the 'b' after it is column 2.
        assert_eq!(map.position(8), (2, 2));
    }

    #[test]
    fn nearest_suggests_typos_only() {
        let kinds = ["transform.select", "transform.filter", "sink.parquet"];
        assert_eq!(nearest("transform.selct", kinds), Some("transform.select"));
        assert_eq!(nearest("completely.else", kinds), None);
        assert_eq!(did_you_mean("sink.parquett", kinds).as_deref(), Some("; did you mean `sink.parquet`?"));
    }
}

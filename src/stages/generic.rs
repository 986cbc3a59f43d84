//! The generic stages every pipeline needs: read Parquet, export Parquet or CSV, select columns,
//! filter rows by a predicate on scalar columns.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{column_list, is_numeric, is_scalar, is_string, type_name};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result, ResultExt};
use crate::checkpoint;
use crate::stage::parquet::ParquetSource;

fn default_batch_rows() -> usize {
    65_536
}

/// Reads Parquet files (paths or glob patterns) or the checkpoint of another pipeline's stage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceParquet {
    /// Parquet files or glob patterns (`data/*.parquet`), relative to the pipeline file. Files are
    /// read in sorted order; every file must have the same columns.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Instead of `paths`: a stage folder of another pipeline's run directory
    /// (`runs/<pipeline>/<stage>`, whose newest complete checkpoint is read) or one checkpoint folder.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Rows per emitted batch [rows].
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

impl SourceParquet {
    fn files(&self, ctx: &StageContext) -> std::result::Result<Vec<PathBuf>, Issue> {
        if let Some(cp) = &self.checkpoint {
            let dir = ctx.resolve(cp);
            let found = checkpoint::resolve_checkpoint_dir(&dir)
                .map_err(|e| Issue::at(&["checkpoint"], e.to_string()))?;
            return Ok(found.part_files());
        }
        let mut files = Vec::new();
        for (i, pattern) in self.paths.iter().enumerate() {
            let full = ctx.resolve(pattern);
            let full_str = full.to_string_lossy().to_string();
            let matches = glob::glob(&full_str).map_err(|e| Issue::at_index("paths", i, format!("bad glob pattern: {e}")))?;
            let mut n = 0;
            for m in matches.flatten() {
                if m.is_file() {
                    files.push(m);
                    n += 1;
                }
            }
            if n == 0 {
                return Err(Issue::at_index("paths", i, format!("no file matches `{}`", full.display())));
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }
}

impl StageConfig for SourceParquet {
    const KIND: &'static str = "source.parquet";
    const SUMMARY: &'static str = "Read Parquet files, globs, or another pipeline's checkpoint";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        match (self.paths.is_empty(), &self.checkpoint) {
            (true, None) => issues.push(Issue::at(&[], "give `paths` (files or globs) or `checkpoint`")),
            (false, Some(_)) => issues.push(Issue::at(&["checkpoint"], "give either `paths` or `checkpoint`, not both")),
            _ => {}
        }
        if self.batch_rows == 0 {
            issues.push(Issue::at(&["batch_rows"], "batch_rows must be at least 1"));
        }
        issues
    }

    /// The schema of the first readable file. Files that turn out unreadable or different fail at
    /// run time as single recordings (named by path), so one bad file does not stop the others.
    fn output_schema(&self, ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let files = self.files(ctx).map_err(|i| vec![i])?;
        let key = if self.checkpoint.is_some() { "checkpoint" } else { "paths" };
        let mut errors = Vec::new();
        for f in &files {
            match crate::stage::parquet::read_schema(f) {
                Ok(s) => return Ok(s),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Err(vec![Issue::at(&[key], "no Parquet file to read")])
        } else {
            Err(vec![Issue::at(&[key], format!("no readable Parquet file: {}", errors.join("; ")))])
        }
    }

    /// Watchable when it reads one glob whose folder part has no wildcard (`inbox/*.parquet`).
    fn watch(&self, ctx: &StageContext) -> Option<crate::stage::WatchSource> {
        if self.checkpoint.is_some() || self.paths.len() != 1 {
            return None;
        }
        let full = ctx.resolve(&self.paths[0]);
        let folder = full.parent()?.to_path_buf();
        if folder.to_string_lossy().contains(['*', '?', '[']) {
            return None;
        }
        let pattern = glob::Pattern::new(&full.file_name()?.to_string_lossy()).ok()?;
        Some(crate::stage::WatchSource { folder, pattern })
    }

    fn restrict_to(&self, files: &[PathBuf]) -> Option<Self> {
        Some(SourceParquet {
            paths: files.iter().map(|f| glob::Pattern::escape(&f.to_string_lossy())).collect(),
            checkpoint: None,
            batch_rows: self.batch_rows,
        })
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        self.files(ctx).map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i.message)))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = self.external_inputs(ctx)?;
        Ok(Operator::Source(Box::new(ParquetSource {
            files,
            next_file: 0,
            reader: None,
            batch_rows: self.batch_rows,
            schema: output.clone(),
        })))
    }
}

/// Exports its input to one Parquet file (zstd), written whole and renamed into place.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkParquet {
    /// Output file, relative to the pipeline file.
    pub path: String,
}

impl StageConfig for SinkParquet {
    const KIND: &'static str = "sink.parquet";
    const SUMMARY: &'static str = "Export the input to one Parquet file (zstd), atomically";
    const CODE_VERSION: u32 = 1;
    fn arity() -> Arity {
        Arity::Sink { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        if self.path.trim().is_empty() { vec![Issue::at(&["path"], "path must not be empty")] } else { vec![] }
    }
    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(Arc::new(Schema::empty()))
    }
    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![ctx.resolve(&self.path)]
    }
    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(FileSink::new(ctx.resolve(&self.path), inputs[0].clone(), SinkFormat::Parquet))))
    }
}

/// Exports its input to one CSV file (scalar columns only), written whole and renamed into place.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkCsv {
    /// Output file, relative to the pipeline file.
    pub path: String,
}

impl StageConfig for SinkCsv {
    const KIND: &'static str = "sink.csv";
    const SUMMARY: &'static str = "Export the input's scalar columns to one CSV file, atomically";
    const CODE_VERSION: u32 = 1;
    fn arity() -> Arity {
        Arity::Sink { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        if self.path.trim().is_empty() { vec![Issue::at(&["path"], "path must not be empty")] } else { vec![] }
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let issues: Vec<Issue> = inputs[0]
            .fields()
            .iter()
            .filter(|f| !is_scalar(f.data_type()))
            .map(|f| {
                Issue::inputs(format!(
                    "column `{}` is {}; CSV holds scalar columns only (drop it with a transform.select stage first)",
                    f.name(),
                    type_name(f.data_type())
                ))
            })
            .collect();
        if issues.is_empty() { Ok(Arc::new(Schema::empty())) } else { Err(issues) }
    }
    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![ctx.resolve(&self.path)]
    }
    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(FileSink::new(ctx.resolve(&self.path), inputs[0].clone(), SinkFormat::Csv))))
    }
}

enum SinkFormat {
    Parquet,
    Csv,
}

enum SinkWriter {
    Parquet(ArrowWriter<File>),
    Csv(arrow::csv::Writer<File>),
}

/// Writes to `<path>.tmp-<pid>` and renames onto `path` in `finish`, so a reader never sees half a file.
struct FileSink {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    format: SinkFormat,
    writer: Option<SinkWriter>,
}

impl FileSink {
    fn new(path: PathBuf, schema: SchemaRef, format: SinkFormat) -> Self {
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        FileSink { path, tmp: tmp.into(), schema, format, writer: None }
    }
    fn open(&mut self) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        if let Some(parent) = self.path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let file = File::create(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        self.writer = Some(match self.format {
            SinkFormat::Parquet => SinkWriter::Parquet(
                ArrowWriter::try_new(file, self.schema.clone(), Some(crate::stage::parquet::writer_properties()))
                    .map_err(|e| Error::parquet(self.path.display().to_string(), e))?,
            ),
            SinkFormat::Csv => SinkWriter::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(file)),
        });
        Ok(())
    }
}

impl TransformOperator for FileSink {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.open()?;
        let path = self.path.display().to_string();
        match self.writer.as_mut().expect("opened") {
            SinkWriter::Parquet(w) => {
                w.write(&batch).map_err(|e| Error::parquet(path.clone(), e))?;
                // Cut row groups by size too: rows of long traces would otherwise buffer gigabytes.
                if w.in_progress_size() >= crate::stage::parquet::ROW_GROUP_BYTES {
                    w.flush().map_err(|e| Error::parquet(path, e))?;
                }
                Ok(())
            }
            SinkWriter::Csv(w) => w.write(&batch).map_err(|e| Error::arrow(path, e)),
        }
    }
    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        self.open()?; // an empty input still yields a file with the header / schema
        let path = self.path.display().to_string();
        match self.writer.take().expect("opened") {
            SinkWriter::Parquet(w) => {
                let f = w.into_inner().map_err(|e| Error::parquet(path.clone(), e))?;
                f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
            }
            SinkWriter::Csv(w) => {
                let f = w.into_inner();
                f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
            }
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e)).context(format!("committing {path}"))
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Keeps (or drops) named columns, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// Columns to keep, in this order.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Columns to remove (instead of `columns`).
    #[serde(default)]
    pub drop: Vec<String>,
}

impl Select {
    fn indices(&self, schema: &Schema) -> std::result::Result<Vec<usize>, Vec<Issue>> {
        let mut issues = Vec::new();
        let check = |key: &str, cols: &[String], issues: &mut Vec<Issue>| {
            for (i, c) in cols.iter().enumerate() {
                if schema.index_of(c).is_err() {
                    let hint = crate::diag::nearest(c, schema.fields().iter().map(|f| f.name().as_str()))
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_else(|| format!("; the input has {}", column_list(schema)));
                    issues.push(Issue::at_index(key, i, format!("no column `{c}` in the input{hint}")));
                }
            }
        };
        check("columns", &self.columns, &mut issues);
        check("drop", &self.drop, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        if !self.columns.is_empty() {
            Ok(self.columns.iter().map(|c| schema.index_of(c).expect("checked")).collect())
        } else {
            Ok((0..schema.fields().len()).filter(|&i| !self.drop.contains(schema.field(i).name())).collect())
        }
    }
}

impl StageConfig for Select {
    const KIND: &'static str = "transform.select";
    const SUMMARY: &'static str = "Keep or drop named columns";
    const CODE_VERSION: u32 = 1;
    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        match (self.columns.is_empty(), self.drop.is_empty()) {
            (true, true) => issues.push(Issue::at(&[], "give `columns` to keep or `drop` to remove")),
            (false, false) => issues.push(Issue::at(&["drop"], "give either `columns` or `drop`, not both")),
            _ => {}
        }
        for (i, c) in self.columns.iter().enumerate() {
            if self.columns[..i].contains(c) {
                issues.push(Issue::at_index("columns", i, format!("column `{c}` listed twice")));
            }
        }
        issues
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let idx = self.indices(&inputs[0])?;
        Ok(Arc::new(inputs[0].project(&idx).map_err(|e| vec![Issue::at(&[], e.to_string())])?))
    }
    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        let idx = self.indices(&inputs[0]).map_err(|i| Error::msg(i[0].message.clone()))?;
        Ok(Operator::Transform(Box::new(SelectOp { idx })))
    }
}

struct SelectOp {
    idx: Vec<usize>,
}

impl TransformOperator for SelectOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        out.emit(batch.project(&self.idx)?);
        Ok(())
    }
}

/// Keeps the rows for which a predicate on scalar columns holds, e.g.
/// `stimulus_kind == 'Long Square' and amplitude_pa >= 50`. Rows where the predicate is null
/// (a null in a compared column) are dropped.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The predicate: comparisons `column OP literal` (OP one of == != < <= > >=; literals are
    /// numbers, 'strings' or true/false), `column is null`, `column is not null`, combined with
    /// `and`, `or`, `not` and parentheses.
    #[serde(rename = "where")]
    pub predicate: String,
}

impl StageConfig for Filter {
    const KIND: &'static str = "transform.filter";
    const SUMMARY: &'static str = "Keep rows matching a predicate on scalar columns";
    const CODE_VERSION: u32 = 1;
    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        match predicate::parse(&self.predicate) {
            Ok(_) => vec![],
            Err((offset, msg)) => vec![Issue { path: vec![crate::stage::PathSeg::Key("where".into())], message: msg, offset: Some(offset) }],
        }
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let Ok(expr) = predicate::parse(&self.predicate) else {
            return Err(vec![]); // reported by `check`
        };
        let issues: Vec<Issue> = expr
            .type_check(&inputs[0])
            .into_iter()
            .map(|(offset, msg)| Issue { path: vec![crate::stage::PathSeg::Key("where".into())], message: msg, offset: Some(offset) })
            .collect();
        if issues.is_empty() { Ok(inputs[0].clone()) } else { Err(issues) }
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        let expr = predicate::parse(&self.predicate).map_err(|(_, m)| Error::msg(m))?;
        Ok(Operator::Transform(Box::new(FilterOp { expr })))
    }
}

struct FilterOp {
    expr: predicate::Expr,
}

impl TransformOperator for FilterOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let mask = self.expr.evaluate(&batch)?;
        out.emit(arrow::compute::filter_record_batch(&batch, &mask)?);
        Ok(())
    }
}

/// The little predicate language of `transform.filter`.
pub mod predicate {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Literal {
        Number(f64),
        Text(String),
        Bool(bool),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Eq,
        Ne,
        Lt,
        Le,
        Gt,
        Ge,
    }

    #[derive(Debug, Clone, PartialEq)]
    pub enum Expr {
        Compare { column: String, offset: usize, op: Op, literal: Literal },
        IsNull { column: String, offset: usize, negated: bool },
        And(Box<Expr>, Box<Expr>),
        Or(Box<Expr>, Box<Expr>),
        Not(Box<Expr>),
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Num(f64),
        Str(String),
        Op(Op),
        LParen,
        RParen,
    }

    fn lex(src: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
        let chars: Vec<(usize, char)> = src.chars().enumerate().collect();
        let mut i = 0;
        let mut out = Vec::new();
        while i < chars.len() {
            let (pos, c) = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if c == '(' || c == ')' {
                out.push((pos, if c == '(' { Tok::LParen } else { Tok::RParen }));
                i += 1;
            } else if c == '\'' || c == '"' {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err((pos, "unterminated string".into())),
                        Some((_, ch)) if *ch == c => break,
                        Some((_, ch)) => s.push(*ch),
                    }
                    i += 1;
                }
                i += 1;
                out.push((pos, Tok::Str(s)));
            } else if "=!<>".contains(c) {
                let next = chars.get(i + 1).map(|x| x.1);
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => (Op::Eq, 2),
                    ('!', Some('=')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', _) => (Op::Gt, 1),
                    ('=', _) => return Err((pos, "use `==` to compare".into())),
                    _ => return Err((pos, format!("unexpected `{c}`"))),
                };
                out.push((pos, Tok::Op(op)));
                i += len;
            } else if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || ".+-_".contains(chars[i].1)) {
                    // stop a sign that is not part of an exponent
                    if (chars[i].1 == '-' || chars[i].1 == '+') && !matches!(chars[i - 1].1, 'e' | 'E') {
                        break;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().map(|x| x.1).filter(|c| *c != '_').collect();
                let v: f64 = text.parse().map_err(|_| (pos, format!("`{text}` is not a number")))?;
                out.push((pos, Tok::Num(v)));
            } else if c.is_alphabetic() || c == '_' || c == '`' {
                let quoted = c == '`';
                let start = if quoted { i + 1 } else { i };
                i = start;
                while i < chars.len() && if quoted { chars[i].1 != '`' } else { chars[i].1.is_alphanumeric() || chars[i].1 == '_' } {
                    i += 1;
                }
                let text: String = chars[start..i].iter().map(|x| x.1).collect();
                if quoted {
                    if i >= chars.len() {
                        return Err((pos, "unterminated `quoted` column name".into()));
                    }
                    i += 1;
                }
                out.push((pos, Tok::Ident(text)));
            } else {
                return Err((pos, format!("unexpected `{c}`")));
            }
        }
        Ok(out)
    }

    struct Parser {
        toks: Vec<(usize, Tok)>,
        pos: usize,
        end: usize,
    }

    impl Parser {
        fn peek_kw(&self, kw: &str) -> bool {
            matches!(self.toks.get(self.pos), Some((_, Tok::Ident(w))) if w.eq_ignore_ascii_case(kw))
        }
        fn here(&self) -> usize {
            self.toks.get(self.pos).map(|t| t.0).unwrap_or(self.end)
        }
        fn or(&mut self) -> Result<Expr, (usize, String)> {
            let mut left = self.and()?;
            while self.peek_kw("or") {
                self.pos += 1;
                left = Expr::Or(Box::new(left), Box::new(self.and()?));
            }
            Ok(left)
        }
        fn and(&mut self) -> Result<Expr, (usize, String)> {
            let mut left = self.unary()?;
            while self.peek_kw("and") {
                self.pos += 1;
                left = Expr::And(Box::new(left), Box::new(self.unary()?));
            }
            Ok(left)
        }
        fn unary(&mut self) -> Result<Expr, (usize, String)> {
            if self.peek_kw("not") {
                self.pos += 1;
                return Ok(Expr::Not(Box::new(self.unary()?)));
            }
            match self.toks.get(self.pos).cloned() {
                Some((_, Tok::LParen)) => {
                    self.pos += 1;
                    let e = self.or()?;
                    match self.toks.get(self.pos) {
                        Some((_, Tok::RParen)) => {
                            self.pos += 1;
                            Ok(e)
                        }
                        _ => Err((self.here(), "expected `)`".into())),
                    }
                }
                Some((offset, Tok::Ident(column))) => {
                    self.pos += 1;
                    if self.peek_kw("is") {
                        self.pos += 1;
                        let negated = self.peek_kw("not");
                        if negated {
                            self.pos += 1;
                        }
                        if !self.peek_kw("null") {
                            return Err((self.here(), "expected `null` after `is`".into()));
                        }
                        self.pos += 1;
                        return Ok(Expr::IsNull { column, offset, negated });
                    }
                    let op = match self.toks.get(self.pos) {
                        Some((_, Tok::Op(op))) => *op,
                        _ => return Err((self.here(), format!("expected a comparison (==, !=, <, <=, >, >=) after `{column}`"))),
                    };
                    self.pos += 1;
                    let literal = match self.toks.get(self.pos).cloned() {
                        Some((_, Tok::Num(v))) => Literal::Number(v),
                        Some((_, Tok::Str(s))) => Literal::Text(s),
                        Some((_, Tok::Ident(w))) if w == "true" || w == "false" => Literal::Bool(w == "true"),
                        _ => return Err((self.here(), "expected a number, a 'string', true or false".into())),
                    };
                    self.pos += 1;
                    Ok(Expr::Compare { column, offset, op, literal })
                }
                _ => Err((self.here(), "expected a column name, `not` or `(`".into())),
            }
        }
    }

    /// Parses a predicate; errors carry the character offset in the source.
    pub fn parse(src: &str) -> Result<Expr, (usize, String)> {
        let toks = lex(src)?;
        let end = src.chars().count();
        let mut p = Parser { toks, pos: 0, end };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            return Err((p.here(), "unexpected text after the predicate (use `and` / `or` to combine)".into()));
        }
        Ok(e)
    }

    impl Expr {
        /// Every column that is missing or not comparable with its literal.
        pub fn type_check(&self, schema: &Schema) -> Vec<(usize, String)> {
            let mut out = Vec::new();
            self.walk_check(schema, &mut out);
            out
        }
        fn walk_check(&self, schema: &Schema, out: &mut Vec<(usize, String)>) {
            match self {
                Expr::And(a, b) | Expr::Or(a, b) => {
                    a.walk_check(schema, out);
                    b.walk_check(schema, out);
                }
                Expr::Not(a) => a.walk_check(schema, out),
                Expr::IsNull { column, offset, .. } | Expr::Compare { column, offset, .. } => {
                    let Ok(f) = schema.field_with_name(column) else {
                        let hint = crate::diag::nearest(column, schema.fields().iter().map(|f| f.name().as_str()))
                            .map(|n| format!("; did you mean `{n}`?"))
                            .unwrap_or_default();
                        out.push((*offset, format!("no column `{column}` in the input{hint}")));
                        return;
                    };
                    if let Expr::Compare { literal, .. } = self {
                        let t = f.data_type();
                        let ok = match literal {
                            Literal::Number(_) => is_numeric(t),
                            Literal::Text(_) => is_string(t),
                            Literal::Bool(_) => *t == DataType::Boolean,
                        };
                        if !ok {
                            let lit = match literal {
                                Literal::Number(_) => "a number",
                                Literal::Text(_) => "a string",
                                Literal::Bool(_) => "a boolean",
                            };
                            out.push((*offset, format!("column `{column}` is {}; it cannot be compared with {lit}", type_name(t))));
                        }
                    }
                }
            }
        }

        pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
            Ok(match self {
                Expr::And(a, b) => boolean::and_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
                Expr::Or(a, b) => boolean::or_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
                Expr::Not(a) => boolean::not(&a.evaluate(batch)?)?,
                Expr::IsNull { column, negated, .. } => {
                    let col = column_of(batch, column)?;
                    if *negated { arrow::compute::is_not_null(col.as_ref())? } else { arrow::compute::is_null(col.as_ref())? }
                }
                Expr::Compare { column, op, literal, .. } => {
                    let col = column_of(batch, column)?;
                    let (left, right): (ArrayRef, ArrayRef) = match literal {
                        Literal::Number(v) => (arrow::compute::cast(&col, &DataType::Float64)?, Arc::new(Float64Array::from(vec![*v]))),
                        Literal::Text(s) => (arrow::compute::cast(&col, &DataType::Utf8)?, Arc::new(StringArray::from(vec![s.as_str()]))),
                        Literal::Bool(b) => (col.clone(), Arc::new(BooleanArray::from(vec![*b]))),
                    };
                    let right = arrow::array::Scalar::new(right);
                    let left = left.as_ref();
                    match op {
                        Op::Eq => cmp::eq(&left, &right)?,
                        Op::Ne => cmp::neq(&left, &right)?,
                        Op::Lt => cmp::lt(&left, &right)?,
                        Op::Le => cmp::lt_eq(&left, &right)?,
                        Op::Gt => cmp::gt(&left, &right)?,
                        Op::Ge => cmp::gt_eq(&left, &right)?,
                    }
                }
            })
        }
    }

    fn column_of(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
        batch.column_by_name(name).cloned().ok_or_else(|| Error::msg(format!("no column `{name}` in the batch")))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_precedence_and_offsets() {
            let e = parse("a > 1 or b == 'x' and not c is null").unwrap();
            assert!(matches!(e, Expr::Or(_, _)));
            assert_eq!(parse("a >").unwrap_err().0, 3);
            assert_eq!(parse("a = 1").unwrap_err().1, "use `==` to compare");
            assert_eq!(parse("x > -1.5e-3").unwrap(), Expr::Compare {
                column: "x".into(),
                offset: 0,
                op: Op::Gt,
                literal: Literal::Number(-1.5e-3)
            });
        }

        #[test]
        fn evaluates_with_nulls_as_false() {
            let schema = Arc::new(Schema::new(vec![
                arrow::datatypes::Field::new("a", DataType::Int32, true),
                arrow::datatypes::Field::new("s", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(arrow::array::Int32Array::from(vec![Some(1), None, Some(5)])),
                    Arc::new(StringArray::from(vec![Some("x"), Some("y"), None])),
                ],
            )
            .unwrap();
            let m = parse("a >= 1 and s == 'x'").unwrap().evaluate(&batch).unwrap();
            let kept = arrow::compute::filter_record_batch(&batch, &m).unwrap();
            assert_eq!(kept.num_rows(), 1);
            let m = parse("s is null or a < 2").unwrap().evaluate(&batch).unwrap();
            assert_eq!(arrow::compute::filter_record_batch(&batch, &m).unwrap().num_rows(), 2);
        }
    }
}

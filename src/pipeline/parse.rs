//! From TOML text to a validated [`Pipeline`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diag::{Diagnostic, Diagnostics, SourceMap, nearest};
use crate::error::{Error, Result};
use crate::stage::{Arity, Issue, KindEntry, PathSeg, StageContext, StageDef, WatchSource};
use crate::stages;

fn default_channel_rows() -> usize {
    65_536
}
fn default_channel_bytes() -> usize {
    64 << 20
}
fn default_row_group_rows() -> usize {
    131_072
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name of the pipeline; checkpoints go to `runs/<name>/` beside the pipeline file.
    pub name: String,
    /// One seed for the whole pipeline; every stage derives its own from it and its name.
    #[serde(default)]
    pub seed: u64,
    /// What the pipeline is for (free text).
    #[serde(default)]
    pub description: Option<String>,
    /// Run directory, relative to the pipeline file (default `runs/<name>`).
    #[serde(default)]
    pub run_dir: Option<String>,
    /// Bound on rows in flight on each edge between two stages [rows].
    #[serde(default = "default_channel_rows")]
    pub channel_rows: usize,
    /// Bound on bytes in flight on each edge between two stages [bytes].
    #[serde(default = "default_channel_bytes")]
    pub channel_bytes: usize,
    /// Rows per Parquet row group in checkpoints (row groups are also cut at 128 MiB) [rows].
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

/// One validated stage.
pub struct StageNode {
    pub name: String,
    pub kind: &'static str,
    /// Indices (into `Pipeline::stages`) of the inputs, in the file's order.
    pub inputs: Vec<usize>,
    pub def: Box<dyn StageDef>,
    pub ctx: StageContext,
    pub input_schemas: Vec<SchemaRef>,
    pub output_schema: SchemaRef,
}

/// A validated pipeline: stages in topological order (inputs before consumers).
pub struct Pipeline {
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub section: PipelineSection,
    pub run_dir: PathBuf,
    pub stages: Vec<StageNode>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.section.name
    }
    /// Drops the named stages and everything downstream of them (stages stay in topological
    /// order; input indices are renumbered). `run --watch` runs its per-file increments without
    /// the training stages, which need every row and refit on their own schedule.
    pub fn without(&mut self, names: &[String]) {
        let mut dropped = vec![false; self.stages.len()];
        for (i, s) in self.stages.iter().enumerate() {
            dropped[i] = names.contains(&s.name) || s.inputs.iter().any(|&j| dropped[j]);
        }
        let mut new_index = vec![usize::MAX; self.stages.len()];
        let mut k = 0;
        for (i, d) in dropped.iter().enumerate() {
            if !d {
                new_index[i] = k;
                k += 1;
            }
        }
        let old = std::mem::take(&mut self.stages);
        for (i, mut s) in old.into_iter().enumerate() {
            if !dropped[i] {
                s.inputs = s.inputs.iter().map(|&j| new_index[j]).collect();
                self.stages.push(s);
            }
        }
    }
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
    /// (consumer index, input port) for every edge leaving stage `i`.
    pub fn consumers(&self, i: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (c, s) in self.stages.iter().enumerate() {
            for (port, &inp) in s.inputs.iter().enumerate() {
                if inp == i {
                    out.push((c, port));
                }
            }
        }
        out
    }
    /// Stage `i` and every stage downstream of it.
    pub fn descendants(&self, i: usize) -> Vec<bool> {
        let mut mark = vec![false; self.stages.len()];
        mark[i] = true;
        // Topological order: one forward sweep suffices.
        for (c, s) in self.stages.iter().enumerate() {
            if s.inputs.iter().any(|&p| mark[p]) {
                mark[c] = true;
            }
        }
        mark
    }
    /// Overrides the run directory (the CLI's `--run-dir`) for every stage.
    pub fn set_run_dir(&mut self, dir: PathBuf) {
        for s in &mut self.stages {
            s.ctx.run_dir = dir.clone();
        }
        self.run_dir = dir;
    }
}

/// Reads and validates a pipeline file. Invalid files give [`Error::Invalid`] with every diagnostic.
pub fn load(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read(path).map_err(|e| Error::Usage(format!("{}: cannot read pipeline file: {e}", path.display())))?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::Invalid(Diagnostics(vec![SourceMap::new(path, "").diagnostic(0..0, format!("the file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))]))
    })?;
    parse_str(path, &text).map_err(Error::Invalid)
}

/// Derives a stage's seed from the pipeline seed and the stage name (stable across runs and machines).
pub fn stage_seed(pipeline_seed: u64, stage: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&pipeline_seed.to_le_bytes());
    h.update(stage.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The watchable sources of a pipeline file, found without full validation (the watched folder
/// may still be empty, so schemas cannot be checked yet).
pub fn watch_sources(path: &Path, text: &str) -> Vec<(String, WatchSource)> {
    let mut out = Vec::new();
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return out;
    }
    let root = root.into_inner();
    let base_dir = path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from("."));
    let Some(DeValue::Table(stages_tbl)) = root.get("stages").map(|v| v.get_ref()) else { return out };
    for (key, value) in stages_tbl.iter() {
        let DeValue::Table(tbl) = value.get_ref() else { continue };
        let Some(kind) = tbl.get("kind").and_then(|k| k.get_ref().as_str()) else { continue };
        let Some(entry) = stages::find_kind(kind) else { continue };
        if entry.arity != Arity::Source {
            continue;
        }
        let mut options = tbl.clone();
        options.remove("kind");
        options.remove("inputs");
        let Ok(def) = (entry.parse)(ValueDeserializer::from(Spanned::new(value.span(), DeValue::Table(options)))) else { continue };
        let ctx = StageContext::new(key.get_ref().to_string(), base_dir.clone(), 0, base_dir.clone());
        if let Some(w) = def.watch(&ctx) {
            out.push((key.get_ref().to_string(), w));
        }
    }
    out
}

struct RawStage<'i> {
    name: String,
    key_span: Range<usize>,
    value: Spanned<DeValue<'i>>,
    kind: Option<KindEntry>,
    kind_name: String,
    inputs: Vec<(String, Range<usize>)>,
    inputs_span: Option<Range<usize>>,
    def: Option<Box<dyn StageDef>>,
}

/// Parses and validates pipeline text; `path` is used for messages and to resolve relative paths.
pub fn parse_str(path: &Path, text: &str) -> std::result::Result<Pipeline, Diagnostics> {
    parse_str_with(path, text, &[])
}

/// As [`parse_str`], with source stages restricted to given files (one increment of `run --watch`).
pub fn parse_str_with(path: &Path, text: &str, restrict: &[(String, Vec<PathBuf>)]) -> std::result::Result<Pipeline, Diagnostics> {
    let map = SourceMap::new(path, text);
    let mut diags = Vec::new();
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            diags.push(map.diagnostic(e.span().unwrap_or(0..0), format!("TOML syntax: {}", e.message().trim())));
        }
        let mut d = Diagnostics(diags);
        d.finish();
        return Err(d);
    }
    let root_span = root.span();
    let root = root.into_inner();
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };

    let mut section: Option<PipelineSection> = None;
    let mut stages_table: Option<(DeTable, Range<usize>)> = None;
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "pipeline" => {
                let (s, d) = deserialize_collect::<PipelineSection>(value, &map, "the [pipeline] table");
                diags.extend(d);
                section = s;
            }
            "stages" => match value.get_ref() {
                DeValue::Table(t) => stages_table = Some((t.clone(), value.span())),
                other => diags.push(map.diagnostic(value.span(), format!("`stages` must be a table of stages, not {}", other.type_str()))),
            },
            other => {
                let hint = nearest(other, ["pipeline", "stages"]).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
                diags.push(map.diagnostic(key.span(), format!("unknown top-level key `{other}` (expected `[pipeline]` and `[stages.<name>]`){hint}")));
            }
        }
    }
    if !root.iter().any(|(k, _)| k.get_ref() == "pipeline") {
        diags.push(map.diagnostic(root_span.start..root_span.start, "missing [pipeline] table (with at least `name = \"...\"`)"));
    }
    if let Some(s) = &section {
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            let span = field_span(&root, &["pipeline", "name"]).unwrap_or(0..0);
            diags.push(map.diagnostic(span, format!("pipeline name `{}` must be non-empty and use only letters, digits, `_` and `-` (it names the run directory)", s.name)));
        }
        for (key, v, min) in [("channel_rows", s.channel_rows, 1), ("channel_bytes", s.channel_bytes, 1024), ("row_group_rows", s.row_group_rows, 1)] {
            if v < min {
                let span = field_span(&root, &["pipeline", key]).unwrap_or(0..0);
                diags.push(map.diagnostic(span, format!("{key} must be at least {min}")));
            }
        }
    }
    let seed = section.as_ref().map(|s| s.seed).unwrap_or(0);
    let run_dir = match &section {
        Some(PipelineSection { run_dir: Some(d), .. }) => base_dir.join(d),
        Some(s) => base_dir.join("runs").join(&s.name),
        None => base_dir.join("runs"),
    };

    // Stages, in file order.
    let mut raw: Vec<RawStage> = Vec::new();
    let Some((stages_tbl, stages_span)) = stages_table else {
        diags.push(map.diagnostic(root_span.end..root_span.end, "no stages: add at least one `[stages.<name>]` table"));
        let mut d = Diagnostics(diags);
        d.finish();
        return Err(d);
    };
    let mut entries: Vec<_> = stages_tbl.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    if entries.is_empty() {
        diags.push(map.diagnostic(stages_span, "no stages: add at least one `[stages.<name>]` table"));
    }
    let registry = stages::registry();
    for (key, value) in entries {
        let name = key.get_ref().to_string();
        let key_span = key.span();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            diags.push(map.diagnostic(key_span.clone(), format!("stage name `{name}` must use only letters, digits, `_` and `-` (it names a checkpoint folder)")));
        }
        let DeValue::Table(tbl) = value.get_ref() else {
            diags.push(map.diagnostic(value.span(), format!("stage `{name}` must be a table, not {}", value.get_ref().type_str())));
            continue;
        };
        let mut rs = RawStage { name: name.clone(), key_span: key_span.clone(), value: value.clone(), kind: None, kind_name: String::new(), inputs: vec![], inputs_span: None, def: None };
        // kind
        match tbl.get("kind") {
            None => diags.push(map.diagnostic(key_span.clone(), format!("stage `{name}` has no `kind` (run `neurostream stages` for the list)"))),
            Some(k) => match k.get_ref().as_str() {
                None => diags.push(map.diagnostic(k.span(), format!("`kind` must be a string, not {}", k.get_ref().type_str()))),
                Some(kind) => {
                    rs.kind_name = kind.to_string();
                    match registry.iter().position(|e| e.kind == kind) {
                        Some(_) => rs.kind = stages::find_kind(kind),
                        None => {
                            let hint = nearest(kind, registry.iter().map(|e| e.kind))
                                .map(|n| format!("; did you mean `{n}`?"))
                                .unwrap_or_else(|| " (run `neurostream stages` for the list)".into());
                            diags.push(map.diagnostic(k.span(), format!("unknown stage kind `{kind}`{hint}")));
                        }
                    }
                }
            },
        }
        // inputs
        if let Some(inp) = tbl.get("inputs") {
            rs.inputs_span = Some(inp.span());
            match inp.get_ref() {
                DeValue::String(s) => rs.inputs.push((s.to_string(), inp.span())),
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref().as_str() {
                            Some(s) => rs.inputs.push((s.to_string(), item.span())),
                            None => diags.push(map.diagnostic(item.span(), format!("each input must be a stage name (string), not {}", item.get_ref().type_str()))),
                        }
                    }
                }
                other => diags.push(map.diagnostic(inp.span(), format!("`inputs` must be a list of stage names, not {}", other.type_str()))),
            }
        }
        // options
        if let Some(entry) = &rs.kind {
            let mut options = tbl.clone();
            options.remove("kind");
            options.remove("inputs");
            let opt_value = Spanned::new(value.span(), DeValue::Table(options));
            let (def, d) = collect_with(&opt_value, &map, |de| (entry.parse)(de), &format!("stage `{name}` ({})", entry.kind));
            diags.extend(d);
            rs.def = def;
            if let Some((_, files)) = restrict.iter().find(|(s, _)| *s == name) {
                match rs.def.as_ref().map(|d| d.restrict_to(files)) {
                    Some(Some(restricted)) => rs.def = Some(restricted),
                    Some(None) => diags.push(map.diagnostic(key_span.clone(), format!("stage `{name}` ({}) cannot be restricted to single files", entry.kind))),
                    None => {}
                }
            }
        }
        raw.push(rs);
    }

    // Inputs: existence, duplicates, arity.
    let names: Vec<String> = raw.iter().map(|r| r.name.clone()).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
    let mut broken = vec![false; raw.len()];
    for (i, r) in raw.iter().enumerate() {
        for (j, (inp, span)) in r.inputs.iter().enumerate() {
            if r.inputs[..j].iter().any(|(p, _)| p == inp) {
                diags.push(map.diagnostic(span.clone(), format!("input `{inp}` is listed twice")));
                continue;
            }
            match names.iter().position(|n| n == inp) {
                Some(k) => edges[i].push(k),
                None => {
                    broken[i] = true;
                    let hint = nearest(inp, names.iter().map(String::as_str))
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_else(|| format!("; stages are: {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")));
                    diags.push(map.diagnostic(span.clone(), format!("unknown input `{inp}`{hint}")));
                }
            }
        }
        if let Some(kind) = &r.kind {
            let n = r.inputs.len();
            let at = r.inputs_span.clone().unwrap_or(r.key_span.clone());
            match kind.arity {
                Arity::Source if n > 0 => diags.push(map.diagnostic(at, format!("stage `{}` is a source ({}) and takes no inputs", r.name, kind.kind))),
                Arity::Transform { min, max } | Arity::Sink { min, max } => {
                    if n < min {
                        broken[i] = true;
                        diags.push(map.diagnostic(at, format!("stage `{}` ({}) needs {} input{}: add `inputs = [\"...\"]`", r.name, kind.kind, min, if min == 1 { "" } else { "s" })));
                    } else if let Some(max) = max.filter(|&m| n > m) {
                        diags.push(map.diagnostic(at, format!("stage `{}` ({}) takes at most {max} input{}", r.name, kind.kind, if max == 1 { "" } else { "s" })));
                    }
                }
                _ => {}
            }
        }
    }
    // Sinks produce nothing to consume.
    for (i, r) in raw.iter().enumerate() {
        for (inp, span) in &r.inputs {
            if let Some(k) = names.iter().position(|n| n == inp) {
                if matches!(raw[k].kind.as_ref().map(|e| e.arity), Some(Arity::Sink { .. })) {
                    broken[i] = true;
                    diags.push(map.diagnostic(span.clone(), format!("input `{inp}` is a sink ({}) and produces no batches", raw[k].kind_name)));
                }
            }
        }
    }

    // Cycles and topological order (Kahn).
    let n = raw.len();
    let mut indegree: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut order = Vec::with_capacity(n);
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    ready.reverse();
    while let Some(i) = ready.pop() {
        order.push(i);
        for c in 0..n {
            for &p in &edges[c] {
                if p == i {
                    indegree[c] -= 1;
                    if indegree[c] == 0 {
                        ready.push(c);
                    }
                }
            }
        }
    }
    if order.len() < n {
        let mut reported = vec![false; n];
        for start in 0..n {
            if indegree[start] == 0 || reported[start] {
                continue;
            }
            // Walk inputs among the remaining nodes until one repeats: that is a cycle.
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = *edges[cur].iter().find(|&&p| indegree[p] > 0).expect("a node left by Kahn has a remaining input");
                if let Some(pos) = path.iter().position(|&x| x == next) {
                    let cycle: Vec<usize> = path[pos..].to_vec();
                    if !cycle.iter().any(|&c| reported[c]) {
                        let first = *cycle.iter().min_by_key(|&&c| raw[c].key_span.start).expect("non-empty");
                        // Show the cycle in data-flow order, starting at the stage that appears first.
                        let mut flow: Vec<usize> = cycle.iter().rev().copied().collect();
                        let at = flow.iter().position(|&c| c == first).expect("in cycle");
                        flow.rotate_left(at);
                        let text: Vec<&str> = flow.iter().chain(std::iter::once(&first)).map(|&c| raw[c].name.as_str()).collect();
                        let span = raw[first].inputs_span.clone().unwrap_or(raw[first].key_span.clone());
                        diags.push(map.diagnostic(span, format!("cycle: {}", text.join(" -> "))));
                    }
                    for &c in &cycle {
                        reported[c] = true;
                    }
                    break;
                }
                path.push(next);
                cur = next;
            }
            for &c in &path {
                reported[c] = true;
            }
        }
    }

    // Value checks and schema propagation in topological order.
    let mut schemas: Vec<Option<SchemaRef>> = vec![None; n];
    let mut ctxs: Vec<StageContext> = Vec::with_capacity(n);
    for r in &raw {
        ctxs.push(StageContext::new(r.name.clone(), base_dir.clone(), stage_seed(seed, &r.name), run_dir.clone()));
    }
    for &i in &order {
        let r = &raw[i];
        let Some(def) = &r.def else { continue };
        let issues = def.check(&ctxs[i]);
        let had_value_issues = !issues.is_empty();
        for issue in issues {
            diags.push(issue_diagnostic(&map, r, &issue));
        }
        if broken[i] {
            continue;
        }
        let inputs: Option<Vec<SchemaRef>> = edges[i].iter().map(|&p| schemas[p].clone()).collect();
        let Some(inputs) = inputs else { continue }; // an input is itself invalid: do not cascade
        // The schema checks run even when a value is bad, so that one pass reports every error
        // (a wrong column or unit next to a bad number); the stage's schema is then not
        // recorded, so its consumers are not checked against it. An issue that both passes
        // find (a formula that does not parse) is reported once.
        match def.output_schema(&ctxs[i], &inputs) {
            Ok(s) if !had_value_issues => schemas[i] = Some(s),
            Ok(_) => {}
            Err(issues) => {
                for issue in issues {
                    let d = issue_diagnostic(&map, r, &issue);
                    if !diags.contains(&d) {
                        diags.push(d);
                    }
                }
            }
        }
    }

    if !diags.is_empty() {
        let mut d = Diagnostics(diags);
        d.finish();
        return Err(d);
    }
    let section = section.expect("no diagnostics implies a parsed [pipeline] table");
    // Build nodes in topological order, remapping input indices.
    let mut position = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        position[i] = k;
    }
    let mut defs: Vec<Option<Box<dyn StageDef>>> = raw.iter_mut().map(|r| r.def.take()).collect();
    let mut stages_out = Vec::with_capacity(n);
    for &i in &order {
        let r = &raw[i];
        stages_out.push(StageNode {
            name: r.name.clone(),
            kind: r.kind.as_ref().expect("valid").kind,
            inputs: edges[i].iter().map(|&p| position[p]).collect(),
            def: defs[i].take().expect("valid"),
            ctx: ctxs[i].clone(),
            input_schemas: edges[i].iter().map(|&p| schemas[p].clone().expect("valid")).collect(),
            output_schema: schemas[i].clone().unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())),
        });
    }
    Ok(Pipeline { file: path.to_path_buf(), base_dir, section, run_dir, stages: stages_out })
}

fn issue_diagnostic(map: &SourceMap, r: &RawStage, issue: &Issue) -> Diagnostic {
    let mut span = if issue.path.is_empty() { Some(r.key_span.clone()) } else { value_span(&r.value, &issue.path) };
    if span.is_none() && issue.path.first() == Some(&PathSeg::Key("inputs".into())) {
        span = r.inputs_span.clone();
    }
    let span = span.unwrap_or(r.key_span.clone());
    let span = match issue.offset {
        // Inside a string value: skip the opening quote, then count characters.
        Some(off) => {
            let text = &map.text()[span.start..span.end.min(map.text().len())];
            let quote = if text.starts_with("'''") || text.starts_with("\"\"\"") { 3 } else { 1 };
            let inner = &text[quote.min(text.len())..];
            let byte = inner.char_indices().nth(off).map(|(b, _)| b).unwrap_or(inner.len());
            let start = span.start + quote + byte;
            start..start
        }
        None => span,
    };
    map.diagnostic(span, format!("stage `{}`: {}", r.name, issue.message))
}

fn value_span(value: &Spanned<DeValue>, path: &[PathSeg]) -> Option<Range<usize>> {
    let mut cur = value;
    for seg in path {
        cur = match (seg, cur.get_ref()) {
            (PathSeg::Key(k), DeValue::Table(t)) => t.get(k.as_str())?,
            (PathSeg::Index(i), DeValue::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur.span())
}

fn field_span(root: &DeTable, path: &[&str]) -> Option<Range<usize>> {
    let first = root.get(path[0])?;
    let rest: Vec<PathSeg> = path[1..].iter().map(|k| PathSeg::Key(k.to_string())).collect();
    value_span(first, &rest)
}

/// Deserializes `value` as `T`, collecting every error: unknown keys are reported and removed, then
/// the value is deserialized again, so one pass reports all of them; a wrongly typed key is
/// reported and removed too (a later "missing field" for it is a consequence, not a new fault).
fn deserialize_collect<T: DeserializeOwned>(value: &Spanned<DeValue>, map: &SourceMap, what: &str) -> (Option<T>, Vec<Diagnostic>) {
    collect_with(value, map, |de| T::deserialize(de), what)
}

fn collect_with<T>(
    value: &Spanned<DeValue>,
    map: &SourceMap,
    parse: impl Fn(ValueDeserializer<'_>) -> std::result::Result<T, toml::de::Error>,
    what: &str,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut current = value.clone();
    let mut diags = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..64 {
        match parse(ValueDeserializer::from(current.clone())) {
            Ok(t) => return (if diags.is_empty() { Some(t) } else { None }, diags),
            Err(e) => {
                let msg = e.message().trim().to_string();
                let span = e.span().unwrap_or(value.span());
                if let Some(field) = missing_field(&msg) {
                    if removed.iter().any(|r| r == field) {
                        break;
                    }
                    diags.push(map.diagnostic(span, format!("{what}: missing option `{field}`")));
                    break;
                }
                diags.push(map.diagnostic(span.clone(), format!("{what}: {}", improve_message(&msg))));
                match remove_at(&mut current, &span) {
                    Some(k) => removed.push(k),
                    None => break,
                }
            }
        }
    }
    (None, diags)
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Adds "did you mean" to serde's unknown-field and unknown-variant messages.
fn improve_message(msg: &str) -> String {
    let msg = &msg.replacen("unknown field `", "unknown key `", 1);
    let unknown = msg.strip_prefix("unknown key `").or_else(|| msg.strip_prefix("unknown variant `"));
    if let Some(rest) = unknown {
        let word = rest.split('`').next().unwrap_or("");
        if let Some(idx) = msg.find("expected") {
            let candidates: Vec<&str> = msg[idx..].split('`').skip(1).step_by(2).collect();
            if let Some(n) = nearest(word, candidates.iter().copied()) {
                return format!("{msg}; did you mean `{n}`?");
            }
        }
    }
    msg.to_string()
}

/// Removes the innermost table key whose key or value span contains `span`; returns its name.
fn remove_at(value: &mut Spanned<DeValue>, span: &Range<usize>) -> Option<String> {
    let contains = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end.max(outer.start + 1);
    match value.get_mut() {
        DeValue::Table(t) => {
            let mut hit: Option<Spanned<toml::de::DeString>> = None;
            for (k, v) in t.iter_mut() {
                if contains(&v.span()) && v.span() != *span || (contains(&v.span()) && matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_))) {
                    if let Some(inner) = remove_at(v, span) {
                        return Some(inner);
                    }
                }
                if contains(&k.span()) || contains(&v.span()) {
                    hit = Some(k.clone());
                }
            }
            let k = hit?;
            t.remove(k.get_ref().as_ref());
            Some(k.get_ref().to_string())
        }
        DeValue::Array(a) => {
            for v in a.iter_mut() {
                if contains(&v.span()) {
                    return remove_at(v, span);
                }
            }
            None
        }
        _ => None,
    }
}

//! From TOML text to a validated [`Pipeline`]: reading the file with spans into raw stages (each
//! diagnostic located in the text), then the graph checks of [`super::checks`], then the
//! [`Pipeline`] in topological order.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::checks;
use crate::diag::{Diagnostic, Diagnostics, SourceMap, did_you_mean, nearest};
use crate::error::{Error, Result};
use crate::stage::{Arity, Issue, KindEntry, PathSeg, StageContext, StageDef, WatchSource};
use crate::stages;

// Kept reachable here too: these were defined in this module before the model moved out.
pub use super::model::{Pipeline, PipelineSection, StageNode, stage_seed};

/// Reads and validates a pipeline file. Invalid files give [`Error::Invalid`] with every diagnostic.
pub fn load(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read(path).map_err(|e| Error::Usage(format!("{}: cannot read pipeline file: {e}", path.display())))?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::Invalid(Diagnostics(vec![SourceMap::new(path, "").diagnostic(0..0, format!("the file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))]))
    })?;
    parse_str(path, &text).map_err(Error::Invalid)
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
        let Ok(def) = (entry.parse)(ValueDeserializer::from(options_of(value, tbl))) else { continue };
        let ctx = StageContext::new(key.get_ref().to_string(), base_dir.clone(), 0, base_dir.clone());
        if let Some(w) = def.watch(&ctx) {
            out.push((key.get_ref().to_string(), w));
        }
    }
    out
}

/// Parses and validates pipeline text; `path` is used for messages and to resolve relative paths.
pub fn parse_str(path: &Path, text: &str) -> std::result::Result<Pipeline, Diagnostics> {
    parse_str_with(path, text, &[])
}

/// As [`parse_str`], with source stages restricted to given files (one increment of `run --watch`).
pub fn parse_str_with(path: &Path, text: &str, restrict: &[(String, Vec<PathBuf>)]) -> std::result::Result<Pipeline, Diagnostics> {
    let map = SourceMap::new(path, text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(finished(syntax.iter().map(|e| map.diagnostic(e.span().unwrap_or(0..0), format!("TOML syntax: {}", e.message().trim()))).collect()));
    }
    let root_span = root.span();
    let root = root.into_inner();
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };

    let (top, mut diags) = read_top_level(&root, root_span.clone(), &map);
    let seed = top.section.as_ref().map(|s| s.seed).unwrap_or(0);
    let run_dir = match &top.section {
        Some(PipelineSection { run_dir: Some(d), .. }) => base_dir.join(d),
        Some(s) => base_dir.join("runs").join(&s.name),
        None => base_dir.join("runs"),
    };
    let Some((stages_tbl, stages_span)) = top.stages else {
        diags.push(map.diagnostic(root_span.end..root_span.end, "no stages: add at least one `[stages.<name>]` table"));
        return Err(finished(diags));
    };
    let (mut raw, d) = read_stages(&stages_tbl, stages_span, &map, restrict);
    diags.extend(d);

    let ctxs: Vec<StageContext> = raw.iter().map(|r| StageContext::new(r.name.clone(), base_dir.clone(), stage_seed(seed, &r.name), run_dir.clone())).collect();
    let (graph, d) = checks::check_graph(&raw, &map, &ctxs);
    diags.extend(d);
    if !diags.is_empty() {
        return Err(finished(diags));
    }
    let section = top.section.expect("no diagnostics implies a parsed [pipeline] table");
    let stages = nodes(&mut raw, ctxs, graph);
    Ok(Pipeline { file: path.to_path_buf(), base_dir, section, run_dir, stages })
}

/// Diagnostics sorted by position, duplicates removed.
fn finished(diags: Vec<Diagnostic>) -> Diagnostics {
    let mut d = Diagnostics(diags);
    d.finish();
    d
}

/// The validated stages in topological order, with input indices renumbered to that order.
fn nodes(raw: &mut [RawStage], ctxs: Vec<StageContext>, graph: checks::CheckedGraph) -> Vec<StageNode> {
    let checks::CheckedGraph { edges, order, schemas } = graph;
    let mut position = vec![0; raw.len()];
    for (k, &i) in order.iter().enumerate() {
        position[i] = k;
    }
    let mut ctxs: Vec<Option<StageContext>> = ctxs.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&i| {
            let r = &mut raw[i];
            StageNode {
                name: r.name.clone(),
                kind: r.kind.as_ref().expect("valid").kind,
                inputs: edges[i].iter().map(|&p| position[p]).collect(),
                def: r.def.take().expect("valid"),
                ctx: ctxs[i].take().expect("one node per stage"),
                input_schemas: edges[i].iter().map(|&p| schemas[p].clone().expect("valid")).collect(),
                output_schema: schemas[i].clone().unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())),
            }
        })
        .collect()
}

/// What the root table holds: the `[pipeline]` table (if it parsed) and the `[stages]` table.
struct TopLevel<'i> {
    section: Option<PipelineSection>,
    stages: Option<(DeTable<'i>, Range<usize>)>,
}

/// Reads the root table: `[pipeline]` (with its value checks) and `[stages]`; every other key,
/// and a missing `[pipeline]`, is a diagnostic.
fn read_top_level<'i>(root: &DeTable<'i>, root_span: Range<usize>, map: &SourceMap) -> (TopLevel<'i>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut top = TopLevel { section: None, stages: None };
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "pipeline" => {
                let (s, d) = deserialize_collect::<PipelineSection>(value, map, "the [pipeline] table");
                diags.extend(d);
                top.section = s;
            }
            "stages" => match value.get_ref() {
                DeValue::Table(t) => top.stages = Some((t.clone(), value.span())),
                other => diags.push(map.diagnostic(value.span(), format!("`stages` must be a table of stages, not {}", other.type_str()))),
            },
            other => {
                let hint = did_you_mean(other, ["pipeline", "stages"]).unwrap_or_default();
                diags.push(map.diagnostic(key.span(), format!("unknown top-level key `{other}` (expected `[pipeline]` and `[stages.<name>]`){hint}")));
            }
        }
    }
    if !root.iter().any(|(k, _)| k.get_ref() == "pipeline") {
        diags.push(map.diagnostic(root_span.start..root_span.start, "missing [pipeline] table (with at least `name = \"...\"`)"));
    }
    if let Some(s) = &top.section {
        diags.extend(check_section(s, root, map));
    }
    (top, diags)
}

/// Value checks of the `[pipeline]` table, at the offending key.
fn check_section(s: &PipelineSection, root: &DeTable, map: &SourceMap) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    if !is_name(&s.name) {
        let span = field_span(root, &["pipeline", "name"]).unwrap_or(0..0);
        diags.push(map.diagnostic(span, format!("pipeline name `{}` must be non-empty and use only letters, digits, `_` and `-` (it names the run directory)", s.name)));
    }
    for (key, v, min) in [("channel_rows", s.channel_rows, 1), ("channel_bytes", s.channel_bytes, 1024), ("row_group_rows", s.row_group_rows, 1)] {
        if v < min {
            let span = field_span(root, &["pipeline", key]).unwrap_or(0..0);
            diags.push(map.diagnostic(span, format!("{key} must be at least {min}")));
        }
    }
    diags
}

/// A pipeline or stage name: it names a folder, so letters, digits, `_` and `-` only.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One `[stages.<name>]` table as read from the file, before the graph checks: its spans (for
/// diagnostics), its kind, its inputs by name, and its parsed options.
pub(super) struct RawStage<'i> {
    pub(super) name: String,
    pub(super) key_span: Range<usize>,
    value: Spanned<DeValue<'i>>,
    pub(super) kind: Option<KindEntry>,
    pub(super) kind_name: String,
    pub(super) inputs: Vec<(String, Range<usize>)>,
    pub(super) inputs_span: Option<Range<usize>>,
    pub(super) def: Option<Box<dyn StageDef>>,
}

impl RawStage<'_> {
    /// Where the stage's `inputs` are, or its name when it has none.
    pub(super) fn inputs_or_key_span(&self) -> Range<usize> {
        self.inputs_span.clone().unwrap_or(self.key_span.clone())
    }

    /// A stage's issue as a diagnostic, located at the value its path names (inside a string value
    /// when the issue has an offset), else at the stage's name.
    pub(super) fn diagnostic(&self, map: &SourceMap, issue: &Issue) -> Diagnostic {
        let mut span = if issue.path.is_empty() { Some(self.key_span.clone()) } else { value_span(&self.value, &issue.path) };
        if span.is_none() && issue.path.first() == Some(&PathSeg::Key("inputs".into())) {
            span = self.inputs_span.clone();
        }
        let span = span.unwrap_or(self.key_span.clone());
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
        map.diagnostic(span, format!("stage `{}`: {}", self.name, issue.message))
    }
}

/// Reads every `[stages.<name>]` table, in file order.
fn read_stages<'i>(stages_tbl: &DeTable<'i>, stages_span: Range<usize>, map: &SourceMap, restrict: &[(String, Vec<PathBuf>)]) -> (Vec<RawStage<'i>>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut entries: Vec<_> = stages_tbl.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    if entries.is_empty() {
        diags.push(map.diagnostic(stages_span, "no stages: add at least one `[stages.<name>]` table"));
    }
    let registry = stages::registry();
    let mut raw = Vec::new();
    for (key, value) in entries {
        let name = key.get_ref().to_string();
        if !is_name(&name) {
            diags.push(map.diagnostic(key.span(), format!("stage name `{name}` must use only letters, digits, `_` and `-` (it names a checkpoint folder)")));
        }
        let DeValue::Table(tbl) = value.get_ref() else {
            diags.push(map.diagnostic(value.span(), format!("stage `{name}` must be a table, not {}", value.get_ref().type_str())));
            continue;
        };
        let mut rs = RawStage { name, key_span: key.span(), value: value.clone(), kind: None, kind_name: String::new(), inputs: vec![], inputs_span: None, def: None };
        diags.extend(read_kind(&mut rs, tbl, &registry, map));
        diags.extend(read_inputs(&mut rs, tbl, map));
        diags.extend(read_options(&mut rs, tbl, map, restrict));
        raw.push(rs);
    }
    (raw, diags)
}

/// The stage's `kind`, looked up in the registry (with the nearest kind when unknown).
fn read_kind(rs: &mut RawStage, tbl: &DeTable, registry: &[KindEntry], map: &SourceMap) -> Vec<Diagnostic> {
    let Some(k) = tbl.get("kind") else {
        return vec![map.diagnostic(rs.key_span.clone(), format!("stage `{}` has no `kind` (run `neurostream stages` for the list)", rs.name))];
    };
    let Some(kind) = k.get_ref().as_str() else {
        return vec![map.diagnostic(k.span(), format!("`kind` must be a string, not {}", k.get_ref().type_str()))];
    };
    rs.kind_name = kind.to_string();
    if registry.iter().any(|e| e.kind == kind) {
        rs.kind = stages::find_kind(kind);
        return vec![];
    }
    let hint = did_you_mean(kind, registry.iter().map(|e| e.kind)).unwrap_or_else(|| " (run `neurostream stages` for the list)".into());
    vec![map.diagnostic(k.span(), format!("unknown stage kind `{kind}`{hint}"))]
}

/// The stage's `inputs`: one name or a list of names, each with its span.
fn read_inputs(rs: &mut RawStage, tbl: &DeTable, map: &SourceMap) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let Some(inp) = tbl.get("inputs") else { return diags };
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
    diags
}

/// The kind's own options (the table without `kind` and `inputs`), every error collected; for a
/// `run --watch` increment, restricted to the given files.
fn read_options(rs: &mut RawStage, tbl: &DeTable, map: &SourceMap, restrict: &[(String, Vec<PathBuf>)]) -> Vec<Diagnostic> {
    let Some(entry) = &rs.kind else { return vec![] };
    let (def, mut diags) = collect_with(&options_of(&rs.value, tbl), map, |de| (entry.parse)(de), &format!("stage `{}` ({})", rs.name, entry.kind));
    rs.def = def;
    if let Some((_, files)) = restrict.iter().find(|(s, _)| *s == rs.name) {
        match rs.def.as_ref().map(|d| d.restrict_to(files)) {
            Some(Some(restricted)) => rs.def = Some(restricted),
            Some(None) => diags.push(map.diagnostic(rs.key_span.clone(), format!("stage `{}` ({}) cannot be restricted to single files", rs.name, entry.kind))),
            None => {}
        }
    }
    diags
}

/// A stage table without `kind` and `inputs`: what the kind's config type deserializes.
fn options_of<'i>(value: &Spanned<DeValue<'i>>, tbl: &DeTable<'i>) -> Spanned<DeValue<'i>> {
    let mut options = tbl.clone();
    options.remove("kind");
    options.remove("inputs");
    Spanned::new(value.span(), DeValue::Table(options))
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

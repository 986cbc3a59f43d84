//! The graph checks of a parsed pipeline file, each a small function that returns every issue it
//! finds (as `file:line:column` diagnostics): inputs that name no stage or repeat, arity, inputs
//! that are sinks, cycles, and then, in topological order, each stage's value checks and the fit
//! of its inputs' schemas. A stage whose inputs are missing is marked broken and its schema is not
//! checked, so one fault does not cascade into its consumers.

use arrow::datatypes::SchemaRef;

use super::parse::RawStage;
use crate::diag::{Diagnostic, SourceMap, did_you_mean};
use crate::stage::{Arity, StageContext};

/// What the checks establish about a graph without errors.
pub(super) struct CheckedGraph {
    /// Per stage, the indices (into the raw stages) of its inputs, in the file's order.
    pub(super) edges: Vec<Vec<usize>>,
    /// The raw stages in topological order (inputs before consumers).
    pub(super) order: Vec<usize>,
    /// Per stage, its output schema (`None` where a check failed).
    pub(super) schemas: Vec<Option<SchemaRef>>,
}

/// Runs every graph check; the graph is only meaningful when no diagnostic is returned.
pub(super) fn check_graph(raw: &[RawStage], map: &SourceMap, ctxs: &[StageContext]) -> (CheckedGraph, Vec<Diagnostic>) {
    let mut broken = vec![false; raw.len()];
    let (edges, mut diags) = resolve_inputs(raw, map, &mut broken);
    diags.extend(check_arity(raw, map, &mut broken));
    diags.extend(check_sink_inputs(raw, map, &mut broken));
    let (order, remaining) = topological_order(&edges);
    diags.extend(report_cycles(raw, map, &edges, &remaining));
    let (schemas, d) = check_values_and_schemas(raw, map, ctxs, &edges, &order, &broken);
    diags.extend(d);
    (CheckedGraph { edges, order, schemas }, diags)
}

/// Inputs by name: a name listed twice, or one that names no stage (with the nearest name, else
/// the list of stages). Returns each stage's resolved input edges.
fn resolve_inputs(raw: &[RawStage], map: &SourceMap, broken: &mut [bool]) -> (Vec<Vec<usize>>, Vec<Diagnostic>) {
    let names: Vec<&str> = raw.iter().map(|r| r.name.as_str()).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
    let mut diags = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        for (j, (inp, span)) in r.inputs.iter().enumerate() {
            if r.inputs[..j].iter().any(|(p, _)| p == inp) {
                diags.push(map.diagnostic(span.clone(), format!("input `{inp}` is listed twice")));
                continue;
            }
            match names.iter().position(|n| *n == inp.as_str()) {
                Some(k) => edges[i].push(k),
                None => {
                    broken[i] = true;
                    let hint = did_you_mean(inp, names.iter().copied())
                        .unwrap_or_else(|| format!("; stages are: {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")));
                    diags.push(map.diagnostic(span.clone(), format!("unknown input `{inp}`{hint}")));
                }
            }
        }
    }
    (edges, diags)
}

/// The number of inputs each kind takes: none for a source, `min..=max` otherwise. Too few
/// inputs mark the stage broken.
fn check_arity(raw: &[RawStage], map: &SourceMap, broken: &mut [bool]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let Some(kind) = &r.kind else { continue };
        let n = r.inputs.len();
        let at = r.inputs_or_key_span();
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
    diags
}

/// Sinks produce nothing to consume: an input that is a sink marks its consumer broken.
fn check_sink_inputs(raw: &[RawStage], map: &SourceMap, broken: &mut [bool]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        for (inp, span) in &r.inputs {
            let Some(k) = raw.iter().position(|s| s.name == *inp) else { continue };
            if matches!(raw[k].kind.as_ref().map(|e| e.arity), Some(Arity::Sink { .. })) {
                broken[i] = true;
                diags.push(map.diagnostic(span.clone(), format!("input `{inp}` is a sink ({}) and produces no batches", raw[k].kind_name)));
            }
        }
    }
    diags
}

/// Kahn's algorithm: the stages in topological order (ties in file order), and each stage's
/// count of inputs not yet ordered (non-zero exactly for the stages on or after a cycle).
fn topological_order(edges: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let n = edges.len();
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
    (order, indegree)
}

/// Each cycle once, in data-flow order from the stage that appears first in the file, at that
/// stage's `inputs`. `remaining` is [`topological_order`]'s count of unordered inputs.
fn report_cycles(raw: &[RawStage], map: &SourceMap, edges: &[Vec<usize>], remaining: &[usize]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut reported = vec![false; raw.len()];
    for start in 0..raw.len() {
        if remaining[start] == 0 || reported[start] {
            continue;
        }
        // Walk inputs among the remaining nodes until one repeats: that is a cycle.
        let mut path = vec![start];
        let mut cur = start;
        loop {
            let next = *edges[cur].iter().find(|&&p| remaining[p] > 0).expect("a node left by Kahn has a remaining input");
            if let Some(pos) = path.iter().position(|&x| x == next) {
                let cycle = &path[pos..];
                if !cycle.iter().any(|&c| reported[c]) {
                    diags.push(cycle_diagnostic(raw, map, cycle));
                }
                for &c in cycle {
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
    diags
}

/// `cycle: a -> b -> a` for a cycle found walking inputs (so in reverse data-flow order).
fn cycle_diagnostic(raw: &[RawStage], map: &SourceMap, cycle: &[usize]) -> Diagnostic {
    let first = *cycle.iter().min_by_key(|&&c| raw[c].key_span.start).expect("non-empty");
    // Show the cycle in data-flow order, starting at the stage that appears first.
    let mut flow: Vec<usize> = cycle.iter().rev().copied().collect();
    let at = flow.iter().position(|&c| c == first).expect("in cycle");
    flow.rotate_left(at);
    let text: Vec<&str> = flow.iter().chain(std::iter::once(&first)).map(|&c| raw[c].name.as_str()).collect();
    map.diagnostic(raw[first].inputs_or_key_span(), format!("cycle: {}", text.join(" -> ")))
}

/// Each stage's value checks, then its output schema from its inputs' schemas, in topological
/// order. Returns the schemas of the stages whose checks all passed.
fn check_values_and_schemas(
    raw: &[RawStage],
    map: &SourceMap,
    ctxs: &[StageContext],
    edges: &[Vec<usize>],
    order: &[usize],
    broken: &[bool],
) -> (Vec<Option<SchemaRef>>, Vec<Diagnostic>) {
    let mut schemas: Vec<Option<SchemaRef>> = vec![None; raw.len()];
    let mut diags = Vec::new();
    for &i in order {
        let r = &raw[i];
        let Some(def) = &r.def else { continue };
        let issues = def.check(&ctxs[i]);
        let had_value_issues = !issues.is_empty();
        diags.extend(issues.iter().map(|issue| r.diagnostic(map, issue)));
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
                    let d = r.diagnostic(map, &issue);
                    if !diags.contains(&d) {
                        diags.push(d);
                    }
                }
            }
        }
    }
    (schemas, diags)
}

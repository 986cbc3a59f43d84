//! The registry-wide stage contract: every kind `neurostream stages` lists has an option schema,
//! an example configuration (`StageConfig::EXAMPLE`) that parses, round-trips through its
//! canonical form and (where it reads no files) validates, and a description with a `[unit]` for
//! every option.

use neurostream::stage::config::split_unit;
use neurostream::stage::{KindEntry, StageContext};

/// The kinds of the generic family (sources, sinks, transforms every pipeline needs).
const GENERIC: [&str; 7] = ["source.parquet", "source.csv", "sink.parquet", "sink.csv", "transform.select", "transform.filter", "transform.derive"];

/// Everything `entry` breaks of the contract, one line each (empty when it keeps it).
fn contract_problems(entry: &KindEntry) -> Vec<String> {
    let mut problems = option_problems(entry);
    if entry.example.trim().is_empty() {
        problems.push("no EXAMPLE".into());
        return problems;
    }
    let def = match entry.parse_options(entry.example) {
        Ok(def) => def,
        Err(e) => {
            problems.push(format!("its EXAMPLE does not parse: {e}"));
            return problems;
        }
    };
    // Round trip: the canonical form (what fingerprints hash), written back as TOML, is the same config.
    let canonical = def.canonical_json();
    match json_to_toml(&canonical).map(|v| toml::to_string(&v)) {
        Some(Ok(text)) => match entry.parse_options(&text) {
            Ok(again) if again.canonical_json() == canonical => {}
            Ok(again) => problems.push(format!("its canonical form changes when written back as TOML: {canonical} vs {}", again.canonical_json())),
            Err(e) => problems.push(format!("its canonical form, written back as TOML, does not parse: {e}\n{text}")),
        },
        _ => problems.push(format!("its canonical form cannot be written as TOML: {canonical}")),
    }
    // Validation where the kind reads no files. A kind that does (its external inputs: recordings,
    // tables, model or configuration files) is only parsed: its example names files that need not
    // exist, so its `check` would rightly report them missing.
    let dir = tempfile::tempdir().unwrap();
    let ctx = StageContext::new("example", dir.path(), 1, dir.path().join("runs"));
    if def.external_inputs(&ctx).is_ok_and(|files| files.is_empty()) {
        let issues = def.check(&ctx);
        if !issues.is_empty() {
            problems.push(format!("its EXAMPLE does not validate: {}", issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; ")));
        }
    }
    problems
}

/// The option schema generates, and every option in it has a description ending in a `[unit]`.
fn option_problems(entry: &KindEntry) -> Vec<String> {
    let schema = serde_json::to_value((entry.schema)()).unwrap();
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return vec![format!("its option schema has no properties: {schema}")];
    };
    let mut problems = Vec::new();
    for (name, prop) in props {
        let (text, unit) = split_unit(prop.get("description").and_then(|d| d.as_str()).unwrap_or(""));
        if text.is_empty() {
            problems.push(format!("option `{name}` has no description"));
        }
        if unit.is_empty() {
            problems.push(format!("option `{name}` has no [unit]"));
        }
    }
    problems
}

/// A JSON value as TOML: object keys holding null are left out (an absent option), other nulls
/// and integers beyond i64 cannot be written (`None`).
fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None if n.is_f64() => toml::Value::Float(n.as_f64()?),
            None => return None,
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => toml::Value::Array(items.iter().map(json_to_toml).collect::<Option<_>>()?),
        J::Object(map) => toml::Value::Table(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| Some((k.clone(), json_to_toml(v)?))).collect::<Option<_>>()?),
    })
}

fn report(entries: &[KindEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            let p = contract_problems(e);
            (!p.is_empty()).then(|| format!("{}:\n  {}", e.kind, p.join("\n  ")))
        })
        .collect()
}

#[test]
fn the_generic_kinds_keep_the_contract() {
    let entries: Vec<KindEntry> = neurostream::stages::registry().into_iter().filter(|e| GENERIC.contains(&e.kind)).collect();
    assert_eq!(entries.len(), GENERIC.len());
    let broken = report(&entries);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn every_registered_kind_keeps_the_contract() {
    let broken = report(&neurostream::stages::registry());
    assert!(broken.is_empty(), "{} kinds break the stage contract:\n{}", broken.len(), broken.join("\n"));
}

/// The round trip itself: an option left at its default and one set are both kept.
#[test]
fn an_example_round_trips_through_its_canonical_form() {
    let entry = neurostream::stages::find_kind("source.csv").unwrap();
    let def = entry.parse_options("paths = [\"a.csv\"]\ndelimiter = \";\"").unwrap();
    let json = def.canonical_json();
    assert_eq!(json["delimiter"], ";");
    assert_eq!(json["batch_rows"], 65_536, "defaults are part of the canonical form");
    let text = toml::to_string(&json_to_toml(&json).unwrap()).unwrap();
    assert_eq!(entry.parse_options(&text).unwrap().canonical_json(), json);
}

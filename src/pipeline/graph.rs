//! Rendering the stage graph (`neurostream graph`) as Graphviz dot or Mermaid, with the plan drawn
//! in: each segment (a source and the per-unit stages that run with its units) is a box, and the
//! stages that need every row stand outside them.

use super::{Pipeline, Placement, Plan};

pub fn to_dot(p: &Pipeline) -> String {
    let plan = Plan::of(p);
    let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n", p.name());
    let node = |i: usize| {
        let st = &p.stages[i];
        format!("\"{}\" [label=\"{}\\n{}\"];", st.name, st.name, st.kind)
    };
    for (k, seg) in plan.segments.iter().enumerate() {
        s += &format!("  subgraph \"cluster_{k}\" {{\n    label=\"segment {} (per unit)\";\n    style=dashed;\n", seg.name);
        for &i in &seg.stages {
            s += &format!("    {}\n", node(i));
        }
        s += "  }\n";
    }
    for &i in &plan.gathered {
        s += &format!("  {}\n", node(i).replace("];", ", style=bold];"));
    }
    for st in &p.stages {
        for &i in &st.inputs {
            s += &format!("  \"{}\" -> \"{}\";\n", p.stages[i].name, st.name);
        }
    }
    s += "}\n";
    s
}

pub fn to_mermaid(p: &Pipeline) -> String {
    let plan = Plan::of(p);
    let id = |i: usize| p.stages[i].name.replace('-', "_");
    let node = |i: usize| format!("{}[\"{}<br/><small>{}</small>\"]", id(i), p.stages[i].name, p.stages[i].kind);
    let mut s = String::from("flowchart LR\n");
    for seg in &plan.segments {
        s += &format!("  subgraph segment_{}[\"segment {} (per unit)\"]\n", seg.name.replace('-', "_"), seg.name);
        for &i in &seg.stages {
            s += &format!("    {}\n", node(i));
        }
        s += "  end\n";
    }
    for (i, placement) in plan.placement.iter().enumerate() {
        if *placement == Placement::Gathered {
            s += &format!("  {}\n", node(i));
        }
    }
    for st in &p.stages {
        for &i in &st.inputs {
            s += &format!("  {} --> {}\n", id(i), st.name.replace('-', "_"));
        }
    }
    s
}

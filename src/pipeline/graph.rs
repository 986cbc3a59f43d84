//! Rendering the stage graph (`neurostream graph`) as Graphviz dot or Mermaid.

use super::Pipeline;

pub fn to_dot(p: &Pipeline) -> String {
    let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n", p.name());
    for st in &p.stages {
        s += &format!("  \"{}\" [label=\"{}\\n{}\"];\n", st.name, st.name, st.kind);
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
    let mut s = String::from("flowchart LR\n");
    for st in &p.stages {
        s += &format!("  {}[\"{}<br/><small>{}</small>\"]\n", st.name.replace('-', "_"), st.name, st.kind);
    }
    for st in &p.stages {
        for &i in &st.inputs {
            s += &format!("  {} --> {}\n", p.stages[i].name.replace('-', "_"), st.name.replace('-', "_"));
        }
    }
    s
}

//! The plan: which stages can run piece by piece, and where every row must meet.
//!
//! Built only from what each kind declares ([`Partitioning`]) and the graph, never from names.
//! Stages are grouped into *segments*: a source and the per-unit stages (row-wise or per unit of a
//! key) that hang off it, all of whose inputs lie in that same segment. A segment can run on any
//! split of its source's units (one watched file at a time; one shard of a cluster job array), and
//! the union of the pieces' outputs equals one run over everything. Every other stage is
//! *gathered*: it needs every row (training, population statistics, a sink writing one file), or it
//! reads from a gathered stage or from two segments at once. Gathered stages run once, after the
//! segments they read are complete; the segment stages they read are the *gather points*.
//!
//! Example: `ingest.abf -> features.spikes -> features.sweep -> train.classify -> predict.model` is
//! one segment (`ingest.abf`, `features.spikes`, `features.sweep`) and two gathered stages, with
//! one gather point (`features.sweep`, read by `train.classify`).
//!
//! This module is pure (no files, no actors) so that every rule above has a unit test.

use serde::Serialize;

use super::Pipeline;
use crate::stage::{Arity, Partitioning};

/// The planner's view of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    pub name: String,
    /// Indices of the inputs; every input comes before its consumer.
    pub inputs: Vec<usize>,
    pub source: bool,
    pub partitioning: Partitioning,
}

/// Where a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// In segment `n`: piece by piece, with its source's units.
    Segment(usize),
    /// Once, over every row of its inputs.
    Gathered,
}

/// A source and the per-unit stages that run with its units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// The source stage's name (segments are named after their source).
    pub name: String,
    /// Stage indices, the source first, in topological order.
    pub stages: Vec<usize>,
    /// The unit keys the segment's stages declare (`PerUnit { key }`), in order of appearance: a
    /// split of the source must keep each unit of each key whole.
    pub unit_keys: Vec<String>,
    /// Stages of this segment read by gathered stages: where its rows must meet.
    pub gather_points: Vec<usize>,
}

/// The plan of a whole pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Per stage (same indices as the pipeline's stages).
    pub placement: Vec<Placement>,
    pub segments: Vec<Segment>,
    /// Gathered stages, in topological order.
    pub gathered: Vec<usize>,
}

impl Plan {
    /// The plan of a validated pipeline.
    pub fn of(p: &Pipeline) -> Plan {
        let nodes: Vec<PlanNode> = p
            .stages
            .iter()
            .map(|s| PlanNode {
                name: s.name.clone(),
                inputs: s.inputs.clone(),
                source: s.def.arity() == Arity::Source,
                partitioning: s.def.partitioning(),
            })
            .collect();
        Plan::new(&nodes)
    }

    /// The plan of a graph given in topological order (inputs before consumers).
    pub fn new(nodes: &[PlanNode]) -> Plan {
        let mut placement = Vec::with_capacity(nodes.len());
        let mut segments: Vec<Segment> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let here = if n.source {
                segments.push(Segment { name: n.name.clone(), stages: vec![], unit_keys: vec![], gather_points: vec![] });
                Placement::Segment(segments.len() - 1)
            } else if !n.partitioning.is_per_unit() {
                Placement::Gathered
            } else {
                // Per unit: stays in its inputs' segment if they all lie in one.
                let mut homes = n.inputs.iter().map(|&j| placement[j]);
                match homes.next() {
                    Some(Placement::Segment(k)) if homes.all(|h| h == Placement::Segment(k)) => Placement::Segment(k),
                    _ => Placement::Gathered,
                }
            };
            if let Placement::Segment(k) = here {
                let seg = &mut segments[k];
                seg.stages.push(i);
                if let Some(key) = n.partitioning.key() {
                    if !seg.unit_keys.iter().any(|u| u == key) {
                        seg.unit_keys.push(key.to_string());
                    }
                }
            }
            placement.push(here);
        }
        let gathered: Vec<usize> = (0..nodes.len()).filter(|&i| placement[i] == Placement::Gathered).collect();
        for &g in &gathered {
            for &j in &nodes[g].inputs {
                if let Placement::Segment(k) = placement[j] {
                    if !segments[k].gather_points.contains(&j) {
                        segments[k].gather_points.push(j);
                    }
                }
            }
        }
        for s in &mut segments {
            s.gather_points.sort_unstable();
        }
        Plan { placement, segments, gathered }
    }

    /// The segment whose source is the stage named `source`.
    pub fn segment_of_source(&self, source: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == source)
    }

    /// Whether stage `i` runs in segment `segment`.
    pub fn in_segment(&self, i: usize, segment: &Segment) -> bool {
        segment.stages.contains(&i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, inputs: &[usize], source: bool, partitioning: Partitioning) -> PlanNode {
        PlanNode { name: name.into(), inputs: inputs.to_vec(), source, partitioning }
    }
    fn src(name: &str) -> PlanNode {
        node(name, &[], true, Partitioning::RowWise)
    }
    fn row(name: &str, inputs: &[usize]) -> PlanNode {
        node(name, inputs, false, Partitioning::RowWise)
    }
    fn gather(name: &str, inputs: &[usize]) -> PlanNode {
        node(name, inputs, false, Partitioning::Gather)
    }

    #[test]
    fn a_chain_of_per_unit_stages_is_one_segment() {
        let plan = Plan::new(&[src("abf"), row("spikes", &[0]), node("cell", &[1], false, Partitioning::per_unit("cell_id"))]);
        assert_eq!(plan.segments.len(), 1);
        assert_eq!(plan.segments[0].stages, vec![0, 1, 2]);
        assert_eq!(plan.segments[0].unit_keys, vec!["cell_id".to_string()]);
        assert!(plan.gathered.is_empty());
        assert!(plan.segments[0].gather_points.is_empty());
    }

    #[test]
    fn training_is_a_gather_point_and_what_follows_it_is_gathered() {
        // source -> features -> train -> predict: predict is row-wise, but reads a gathered stage.
        let plan = Plan::new(&[src("inbox"), row("features", &[0]), gather("train", &[1]), row("predict", &[2])]);
        assert_eq!(plan.placement, vec![Placement::Segment(0), Placement::Segment(0), Placement::Gathered, Placement::Gathered]);
        assert_eq!(plan.gathered, vec![2, 3]);
        assert_eq!(plan.segments[0].gather_points, vec![1]);
    }

    #[test]
    fn a_stage_reading_two_segments_is_gathered_and_both_inputs_are_gather_points() {
        let plan = Plan::new(&[src("a"), src("b"), row("fa", &[0]), row("join", &[2, 1])]);
        assert_eq!(plan.segments.len(), 2);
        assert_eq!(plan.placement[3], Placement::Gathered);
        assert_eq!(plan.segments[0].gather_points, vec![2]);
        assert_eq!(plan.segments[1].gather_points, vec![1]);
    }

    #[test]
    fn a_per_unit_stage_with_two_inputs_of_one_segment_stays_in_it() {
        let plan = Plan::new(&[src("a"), row("x", &[0]), row("y", &[0]), row("xy", &[1, 2])]);
        assert_eq!(plan.segments[0].stages, vec![0, 1, 2, 3]);
        assert!(plan.gathered.is_empty());
    }

    #[test]
    fn a_gather_with_several_inputs_lists_each_as_a_gather_point_once() {
        let plan = Plan::new(&[src("a"), row("x", &[0]), row("y", &[0]), gather("train", &[1, 2]), gather("sink", &[1])]);
        assert_eq!(plan.gathered, vec![3, 4]);
        assert_eq!(plan.segments[0].gather_points, vec![1, 2]);
    }

    #[test]
    fn per_unit_keys_are_collected_once_in_order() {
        let plan = Plan::new(&[
            src("a"),
            node("r", &[0], false, Partitioning::per_unit("recording_id")),
            node("c", &[1], false, Partitioning::per_unit("cell")),
            node("r2", &[2], false, Partitioning::per_unit("recording_id")),
        ]);
        assert_eq!(plan.segments[0].unit_keys, vec!["recording_id".to_string(), "cell".to_string()]);
    }

    #[test]
    fn a_segment_is_found_by_its_source() {
        let plan = Plan::new(&[src("a"), src("b"), row("y", &[1])]);
        let b = plan.segment_of_source("b").unwrap();
        assert_eq!(b.stages, vec![1, 2]);
        assert!(plan.in_segment(2, b));
        assert!(plan.segment_of_source("y").is_none());
    }
}

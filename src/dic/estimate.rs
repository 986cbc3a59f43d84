//! The DIC estimate of a spike train without DICsNet: k-nearest-neighbour regression in
//! ISI-statistics space over a simulated [`ReferenceSet`], and the refinement of an estimate
//! (from it or from trained regressors) by simulating candidate targets around it.

use serde::{Deserialize, Serialize};

use super::DicStageError;
use super::features::{ActivityClass, extract_features, van_rossum_distance};
use super::isi::{N_ISI_STATS, isi_statistics};
use super::population::{PopulationProtocol, population_for_target, simulate_trains};
use super::reference::{ReferenceCell, ReferenceSet};
use super::validation::mean_pairwise_van_rossum;
use crate::simulate::stg::{GateTables, SimulationConfig};

/// Raster step (ms) and kernel cut-off of the van Rossum distances of the refinement (the thesis
/// defaults, as `features.bursts` and `dic.validate` use them).
const VR_DT_MS: f64 = 0.1;
const VR_EPSILON: f64 = 1e-6;

/// An estimated target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub class: ActivityClass,
    pub g_s: f64,
    pub g_u: f64,
    /// Mean z-scored distance to the neighbours used (how typical the train is of the reference).
    pub distance: f64,
    pub neighbours: usize,
}

/// The activity class of a train the estimate can work with: not silent, valid.
pub fn estimable_class(times_ms: &[f64]) -> Result<ActivityClass, DicStageError> {
    let f = extract_features(times_ms).map_err(|e| DicStageError::BadTrain(e.to_string()))?;
    if f.label == ActivityClass::Silent {
        return Err(DicStageError::Silent);
    }
    Ok(f.label)
}

/// k-nearest-neighbour estimate: the mean (g_s, g_u) target of the `k` reference cells of the
/// same activity class nearest in z-scored ISI-statistics space (Euclidean, each statistic
/// divided by its [`ReferenceSet::scale`]).
pub fn estimate_targets(reference: &ReferenceSet, times_ms: &[f64], k: usize) -> Result<Estimate, DicStageError> {
    let class = estimable_class(times_ms)?;
    let stats = isi_statistics(times_ms).ok_or_else(|| DicStageError::BadTrain("zero or non-finite ISI".into()))?;
    let mut d: Vec<(f64, &ReferenceCell)> = reference
        .cells
        .iter()
        .filter(|c| c.class == class)
        .map(|c| {
            let d2: f64 = (0..N_ISI_STATS).map(|j| ((c.stats[j] - stats[j]) / reference.scale[j]).powi(2)).sum();
            (d2.sqrt(), c)
        })
        .collect();
    if d.is_empty() {
        return Err(DicStageError::NoReference(class));
    }
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = k.max(1).min(d.len());
    let near = &d[..n];
    Ok(Estimate {
        class,
        g_s: near.iter().map(|x| x.1.g_s).sum::<f64>() / n as f64,
        g_u: near.iter().map(|x| x.1.g_u).sum::<f64>() / n as f64,
        distance: near.iter().map(|x| x.0).sum::<f64>() / n as f64,
        neighbours: n,
    })
}

/// What ranks the refinement candidates whose cells match the train's class equally often.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefineCriterion {
    // Mean van Rossum distance from the train to the candidate's cells (the numerator of R).
    // (Plain comments: doc comments would turn the option's schema into a `oneOf`.)
    #[default]
    Distance,
    // The R proxy of `dic.validate` on the candidate's cells.
    Ratio,
}

/// How an estimate is refined by simulation (see [`refine_estimate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefineProtocol {
    /// Grid steps in g_s and g_u of the first round (g_leak).
    pub step_g_s: f64,
    pub step_g_u: f64,
    /// Grid half-width in steps.
    pub radius: usize,
    pub rounds: usize,
    pub criterion: RefineCriterion,
    /// The cells of each candidate (`population.cells` per candidate).
    pub population: PopulationProtocol,
    pub sim: SimulationConfig,
}

/// One candidate's score: the share of its cells in the train's class and the criterion value
/// (lower is better); `None` when it has no simulated cell or no finite score.
fn score_candidate(p: &RefineProtocol, class: ActivityClass, (gs, gu): (f64, f64), train_ms: &[f64], seed: u64, tables: &GateTables) -> Option<(f64, f64)> {
    let pop = population_for_target(&p.population, seed, gs, gu).ok()?;
    if pop.conductances.is_empty() {
        return None;
    }
    let trains: Vec<Vec<f64>> = simulate_trains(&pop.conductances, &p.sim, tables).into_iter().flatten().collect();
    if trains.is_empty() {
        return None;
    }
    let matched = trains.iter().filter(|t| extract_features(t).is_ok_and(|f| f.label == class)).count();
    // Every cell counts, silent ones included (their distance is the train's own energy), as
    // in features.bursts / dic.validate.
    let d: Vec<f64> = trains.iter().filter_map(|t| van_rossum_distance(train_ms, t, VR_DT_MS, VR_EPSILON).ok()).collect();
    if d.is_empty() {
        return None;
    }
    let mean_d = d.iter().sum::<f64>() / d.len() as f64;
    let value = match p.criterion {
        RefineCriterion::Distance => mean_d,
        RefineCriterion::Ratio => mean_d / mean_pairwise_van_rossum(&trains, VR_DT_MS, VR_EPSILON),
    };
    value.is_finite().then_some((matched as f64 / trains.len() as f64, value))
}

/// Refinement of an estimate by simulation: the (2r+1)² targets on a grid of `step` around the
/// estimate each get a population, simulated with `p.sim`; the target whose population matches
/// the train's class in most cells, then scores lowest on `p.criterion`, replaces the estimate.
/// The estimate stays when no candidate matches the class in more than half its cells. Each
/// round's grid is centred on the previous choice with half the step; a round's candidates get
/// seeds of their own (round and grid position), so later rounds do not re-score the same cells.
///
/// Why: a regression gives the conditional mean of (g_s, g_u), which for a degenerate train
/// (tonic spiking) or one near the spiking/bursting border can fall where the population does
/// something else; a few simulations check it against the train itself.
pub fn refine_estimate(p: &RefineProtocol, e: Estimate, train_ms: &[f64], seed: u64) -> Result<Estimate, DicStageError> {
    let tables = GateTables::new(p.sim.dt_ms)?;
    let k = p.radius as i64;
    let mut centre = (e.g_s, e.g_u);
    let mut chosen: Option<(f64, f64)> = None;
    let (mut step_s, mut step_u) = (p.step_g_s, p.step_g_u);
    for round in 0..p.rounds {
        let mut best: Option<(f64, f64, (f64, f64))> = None;
        let mut c = 0u64;
        for i in -k..=k {
            for j in -k..=k {
                let (gs, gu) = (centre.0 + i as f64 * step_s, centre.1 + j as f64 * step_u);
                if gu < 0.0 {
                    continue;
                }
                // Round 0 keeps the seeds of the single-round refinement (CODE_VERSION 1).
                let cand_seed = seed ^ (c + 1000 * round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                c += 1;
                let Some((share, value)) = score_candidate(p, e.class, (gs, gu), train_ms, cand_seed, &tables) else {
                    continue;
                };
                if share > 0.5 && best.is_none_or(|b| share > b.0 || (share == b.0 && value < b.1)) {
                    best = Some((share, value, (gs, gu)));
                }
            }
        }
        match best {
            Some((_, _, g)) => {
                centre = g;
                chosen = Some(g);
            }
            None => break,
        }
        step_s /= 2.0;
        step_u /= 2.0;
    }
    Ok(match chosen {
        Some((gs, gu)) => Estimate { g_s: gs, g_u: gu, ..e },
        None => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(g_s: f64, g_u: f64, class: ActivityClass, stats: [f64; N_ISI_STATS]) -> ReferenceCell {
        ReferenceCell { g_s, g_u, class, stats }
    }

    /// A tonic train of 100-ms ISIs: stats [ln 100 ×4, 0].
    fn tonic() -> Vec<f64> {
        (0..10).map(|k| 100.0 * k as f64).collect()
    }

    #[test]
    fn nearest_neighbours_of_the_same_class_are_averaged() {
        let l = 100f64.ln();
        let reference = ReferenceSet {
            cells: vec![
                cell(1.0, 2.0, ActivityClass::Spiking, [l, l, l, l, 0.0]),
                cell(3.0, 4.0, ActivityClass::Spiking, [l + 1.0, l, l, l, 0.0]),
                cell(9.0, 9.0, ActivityClass::Spiking, [l + 5.0, l, l, l, 0.0]),
                // Closest of all, but bursting: never a neighbour of a tonic train.
                cell(-9.0, -9.0, ActivityClass::Bursting, [l, l, l, l, 0.0]),
            ],
            scale: [1.0; N_ISI_STATS],
            empty_targets: 0,
        };
        let e = estimate_targets(&reference, &tonic(), 2).unwrap();
        assert_eq!(e.class, ActivityClass::Spiking);
        assert_eq!((e.g_s, e.g_u, e.neighbours), (2.0, 3.0, 2));
        assert!((e.distance - 0.5).abs() < 1e-12, "distances 0 and 1: {}", e.distance);
        // k larger than the class: every cell of the class.
        assert_eq!(estimate_targets(&reference, &tonic(), 10).unwrap().neighbours, 3);
        let bursting_only = ReferenceSet { cells: reference.cells[3..].to_vec(), ..reference.clone() };
        assert_eq!(estimate_targets(&bursting_only, &tonic(), 2), Err(DicStageError::NoReference(ActivityClass::Spiking)));
        assert_eq!(estimate_targets(&reference, &[0.0, 1.0], 2), Err(DicStageError::Silent));
    }
}

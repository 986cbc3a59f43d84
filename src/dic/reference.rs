//! The reference set of the k-nearest-neighbour DIC estimate: simulated cells with known target
//! (g_s, g_u), their activity class and [`isi_statistics`], built with the thesis data-set
//! protocol on a grid of targets instead of a Latin hypercube (spec §4.3, §6).

use std::collections::HashSet;

use super::features::{ActivityClass, extract_features, mean_std};
use super::isi::{N_ISI_STATS, isi_statistics};
use super::population::{PopulationProtocol, population_for_target, simulate_trains, unit_seed};
use super::DicStageError;
use crate::simulate::stg::{GateTables, SimulationConfig};

/// One simulated reference cell: its target DICs, class and ISI statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceCell {
    pub g_s: f64,
    pub g_u: f64,
    pub class: ActivityClass,
    pub stats: [f64; N_ISI_STATS],
}

/// The estimator's reference set, with the per-dimension scale (std over all cells) used to
/// z-score distances.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSet {
    pub cells: Vec<ReferenceCell>,
    pub scale: [f64; N_ISI_STATS],
    /// Targets of the grid that gave no usable cell (unreachable or silent).
    pub empty_targets: usize,
}

/// How the reference set is built (thesis data-set protocol on a grid instead of a Latin
/// hypercube).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceProtocol {
    /// g_s grid: (first, last, points).
    pub g_s_range: (f64, f64, usize),
    /// g_u grid: (first, last, points).
    pub g_u_range: (f64, f64, usize),
    /// Cells per target (`population.cells`) and which of them are kept.
    pub population: PopulationProtocol,
    pub sim: SimulationConfig,
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy `linspace`; `[a]` for one point).
pub fn linspace((a, b, n): (f64, f64, usize)) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect(),
    }
}

/// Simulates the reference set: for every (g_s, g_u) of the grid, the kept cells of a
/// neuromodulated population ([`population_for_target`], seeded per target), each simulated with
/// the exponential-Euler kernel (gate tables) and summarised by its class and
/// [`isi_statistics`] over the recorded window. Silent cells are not kept.
pub fn build_reference(p: &ReferenceProtocol, seed: u64) -> Result<ReferenceSet, DicStageError> {
    let tables = GateTables::new(p.sim.dt_ms)?;
    let mut cells_g = Vec::new();
    let mut labels = Vec::new();
    let mut k = 0u64;
    for &gs in &linspace(p.g_s_range) {
        for &gu in &linspace(p.g_u_range) {
            k += 1;
            let pop = population_for_target(&p.population, unit_seed(seed, &format!("ref{k}")), gs, gu)?;
            labels.extend(std::iter::repeat_n((gs, gu, k), pop.conductances.len()));
            cells_g.extend(pop.conductances);
        }
    }
    let trains = simulate_trains(&cells_g, &p.sim, &tables);
    let mut cells = Vec::new();
    let mut used_targets = HashSet::new();
    for (train, &(g_s, g_u, k)) in trains.iter().zip(&labels) {
        let Some(train) = train else { continue };
        let Ok(f) = extract_features(train) else { continue };
        if f.label == ActivityClass::Silent {
            continue;
        }
        if let Some(stats) = isi_statistics(train) {
            cells.push(ReferenceCell { g_s, g_u, class: f.label, stats });
            used_targets.insert(k);
        }
    }
    let scale = zscore_scale(&cells);
    Ok(ReferenceSet { cells, scale, empty_targets: k as usize - used_targets.len() })
}

/// Per ISI statistic, its population std over the cells (1 with fewer than 2 cells or a
/// constant statistic), the unit of the estimate's distances.
fn zscore_scale(cells: &[ReferenceCell]) -> [f64; N_ISI_STATS] {
    let mut scale = [1.0; N_ISI_STATS];
    if cells.len() >= 2 {
        for (d, s) in scale.iter_mut().enumerate() {
            let column: Vec<f64> = cells.iter().map(|c| c.stats[d]).collect();
            let sd = mean_std(&column).1;
            if sd > 1e-12 {
                *s = sd;
            }
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace((-20.0, 20.0, 5)), vec![-20.0, -10.0, 0.0, 10.0, 20.0]);
        assert_eq!(linspace((1.0, 19.0, 1)), vec![1.0]);
        assert!(linspace((1.0, 19.0, 0)).is_empty());
    }

    #[test]
    fn scale_is_the_population_std_of_each_statistic() {
        let cell = |x: f64| ReferenceCell { g_s: 0.0, g_u: 0.0, class: ActivityClass::Spiking, stats: [x, 1.0, 0.0, 0.0, 0.0] };
        // Stats 1 and 3: mean 2, population std 1; the constant ones keep scale 1.
        assert_eq!(zscore_scale(&[cell(1.0), cell(3.0)]), [1.0, 1.0, 1.0, 1.0, 1.0]);
        let s = zscore_scale(&[cell(0.0), cell(4.0)]);
        assert_eq!(s, [2.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(zscore_scale(&[cell(5.0)]), [1.0; N_ISI_STATS], "one cell: no spread");
    }
}

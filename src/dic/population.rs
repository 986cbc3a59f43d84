//! The cells of one (g_s, g_u) target (spec §4.3): generated with the compensation kernels,
//! kept when their achieved DICs lie within a residual of the target, and simulated to spike
//! trains. Shared by `dic.population`, the reference set of the estimate and its refinement, so
//! a target's cells are made one way everywhere.

use super::compensation::{NeuromodulationConfig, SeedConfig, generate_neuromodulated_population, residual_gs_gu};
use super::{CalciumRoute, DicStageError, dics};
use crate::simulate::stg::{self, GateTables, N_CONDUCTANCES, SimulationConfig, StgParams};

/// How the cells of a target are generated and which are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PopulationProtocol {
    /// Cells generated per target (M).
    pub cells: usize,
    /// Voltage at which the DICs are set (mV).
    pub v_th_mv: f64,
    /// Fixed-point iterations of the iterative compensation.
    pub iterations: usize,
    /// Largest ‖(g_s, g_u) − target‖₂ a kept cell may have (g_leak).
    pub max_residual: f64,
}

/// The cells generated for one target: kept conductances with their achieved DICs, and why
/// the others were dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPopulation {
    pub conductances: Vec<[f64; N_CONDUCTANCES]>,
    pub achieved_gs_gu: Vec<(f64, f64)>,
    pub residuals: Vec<f64>,
    pub dropped_negative: usize,
    pub dropped_residual: usize,
    /// Mean residual over every cell that had a non-negative solution (kept or not).
    pub mean_residual_all: f64,
}

/// Generates `p.cells` cells for (g_s*, g_u*) with the kernels (spiking seed population,
/// iterative neuromodulation with the reachability set and fitted priors, cleaning of negative
/// cells), then drops cells whose achieved (g_s, g_u) at V_th is farther than `p.max_residual`
/// from the target.
pub fn population_for_target(p: &PopulationProtocol, seed: u64, g_s: f64, g_u: f64) -> Result<TargetPopulation, DicStageError> {
    let params = StgParams::default();
    let route = CalciumRoute::default();
    let ncfg = NeuromodulationConfig { v_th_mv: p.v_th_mv, iterations: p.iterations, ..NeuromodulationConfig::default() };
    let pop = generate_neuromodulated_population(p.cells, seed, g_s, g_u, &SeedConfig::default(), &ncfg, &params, route)?;
    let mut out = TargetPopulation {
        conductances: Vec::new(),
        achieved_gs_gu: Vec::new(),
        residuals: Vec::new(),
        dropped_negative: pop.dropped.len(),
        dropped_residual: 0,
        mean_residual_all: f64::NAN,
    };
    let mut sum = 0.0;
    for g in pop.conductances {
        // Cannot fail: the generator cleans every cell to finite, non-negative conductances.
        let d = dics(p.v_th_mv, &g, &params, route)?;
        let r = residual_gs_gu(&d, g_s, g_u);
        sum += r;
        if r <= p.max_residual {
            out.conductances.push(g);
            out.achieved_gs_gu.push((d.g_s, d.g_u));
            out.residuals.push(r);
        } else {
            out.dropped_residual += 1;
        }
    }
    let n_solved = out.conductances.len() + out.dropped_residual;
    if n_solved > 0 {
        out.mean_residual_all = sum / n_solved as f64;
    }
    Ok(out)
}

/// The spike trains (ms, recorded window) of `cells` simulated with the exponential-Euler kernel
/// and shared gate tables from the default initial state; `None` for a cell whose simulation
/// failed. In cell order.
pub fn simulate_trains(cells: &[[f64; N_CONDUCTANCES]], sim: &SimulationConfig, tables: &GateTables) -> Vec<Option<Vec<f64>>> {
    stg::simulate_population_with_tables(cells, &stg::default_initial_state(), &StgParams::default(), sim, tables)
        .into_iter()
        .map(|r| r.ok().map(|s| s.spike_times_ms))
        .collect()
}

/// Per-unit seed: FNV-1a of the unit's id mixed into the stage seed (SplitMix64's finaliser), so
/// a target's population does not depend on batch boundaries or row order.
pub fn unit_seed(stage_seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = stage_seed ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_unit_and_are_stable() {
        assert_ne!(unit_seed(1, "a"), unit_seed(1, "b"));
        assert_eq!(unit_seed(7, "x"), unit_seed(7, "x"));
    }

    #[test]
    fn unit_seed_known_answer() {
        // FNV-1a of the empty id is the offset basis; with stage seed = basis · φ the mixer sees
        // 0, and SplitMix64's finaliser maps 0 to 0.
        let basis: u64 = 0xcbf2_9ce4_8422_2325;
        assert_eq!(unit_seed(basis.wrapping_mul(0x9E37_79B9_7F4A_7C15), ""), 0);
    }

    #[test]
    fn kept_cells_lie_within_the_residual_of_the_target() {
        let p = PopulationProtocol { cells: 8, v_th_mv: -51.0, iterations: 5, max_residual: 0.1 };
        let pop = population_for_target(&p, 3, -4.0, 6.0).unwrap();
        assert!(!pop.conductances.is_empty());
        assert_eq!(pop.conductances.len() + pop.dropped_residual + pop.dropped_negative, 8);
        for (&(gs, gu), &r) in pop.achieved_gs_gu.iter().zip(&pop.residuals) {
            assert!(r <= 0.1 && ((gs + 4.0).powi(2) + (gu - 6.0).powi(2)).sqrt() == r);
        }
        assert_eq!(pop, population_for_target(&p, 3, -4.0, 6.0).unwrap(), "seeded");
    }
}

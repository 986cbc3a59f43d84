//! The iterative-compensation residual study of the thesis (spec dic_stg.md §4.2): 5,000
//! targets drawn uniformly in g_s ∈ [−15, 15] × g_u ∈ [0.5, 15], M = 250 spiking seed cells
//! each, (CaS, A) compensated with the target-dependent priors, and the mean L2 residual
//! ‖(g_s, g_u) − target‖ at V_th = −51 mV after 0, 1, 2, 3, 5 and 10 iterations, beside the
//! thesis table (plus Fyon's fixed prior without iterations).
//!
//! Three means are printed per variant, because the thesis notebook's source for the table is
//! not in the spec and they differ by orders of magnitude:
//! - over the cells that survive cleaning (every conductance ≥ 0, what upstream
//!   `generate_neuromodulated_population(clean=True)` returns and the population stages keep);
//! - over every solved cell, negative conductances included;
//! - over the solved cells whose residual is below 1 (the converged ones), with their share.
//!
//!     cargo run --release --example compensation_residuals [-- TARGETS CELLS]
//!     BEST_SET=1 cargo run --release --example compensation_residuals   # the reachability set
//!     SET=CaS,H cargo run --release --example compensation_residuals    # another pair everywhere
use neurostream::dic::compensation::{
    CalciumPriors, Channel, DicTargets, SeedConfig, best_compensation_set, clean, compensate_iterative, fitted_priors, generate_spiking_population,
};
use neurostream::dic::{CalciumRoute, sensitivity_matrix};
use neurostream::simulate::stg::StgParams;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("TARGETS CELLS as integers")).collect();
    let n_targets = args.first().copied().unwrap_or(5000);
    let m = args.get(1).copied().unwrap_or(250);
    let best_set = std::env::var("BEST_SET").is_ok();
    // SET=CaS,H (any two channel names) forces another pair on every target.
    let forced: [Channel; 2] = match std::env::var("SET") {
        Ok(v) => {
            let c: Vec<Channel> = v.split(',').map(|x| Channel::from_name(x.trim()).expect("SET: two channel names, e.g. CaS,H")).collect();
            [c[0], c[1]]
        }
        Err(_) => [Channel::CaS, Channel::A],
    };
    let p = StgParams::default();
    let route = CalciumRoute::ThesisTauCa;
    let mut rng = StdRng::seed_from_u64(2024);
    let targets: Vec<(f64, f64)> = (0..n_targets).map(|_| (rng.random_range(-15.0..15.0), rng.random_range(0.5..15.0))).collect();
    let variants: Vec<(&str, Option<CalciumPriors>, usize, &str)> = vec![
        ("Fyon (prior g_CaS = 10, no iteration)", Some(CalciumPriors::default()), 0, "0.9801"),
        ("target-dependent prior only", None, 0, "0.9151"),
        ("1 iteration", None, 1, "0.4072"),
        ("2 iterations", None, 2, "0.2434"),
        ("3 iterations", None, 3, "0.1536"),
        ("5 iterations", None, 5, "0.0667"),
        ("10 iterations", None, 10, "0.0106"),
    ];
    let t0 = std::time::Instant::now();
    let set_name = if best_set { "reachability set (get_best_set)".to_string() } else { format!("{forced:?} on every target") };
    println!("{n_targets} targets x {m} cells, {set_name}, V_th = -51 mV");
    println!("| variant | thesis mean | ours: mean over cleaned cells (kept share) | ours: mean, all solved cells | ours: median, all solved | ours: mean of cells with residual < 1 (share) |");
    println!("|---|---|---|---|---|---|");
    for (name, priors, iterations, thesis) in variants {
        // per cell: (residual, survives cleaning)
        let per_target: Vec<Vec<(f64, bool)>> = targets
            .par_iter()
            .enumerate()
            .map(|(k, &(gs, gu))| {
                let seeds = generate_spiking_population(m, k as u64, &SeedConfig::default(), &p, route).expect("seed population");
                let pr = priors.unwrap_or_else(|| fitted_priors(gs));
                let t = DicTargets { g_f: None, g_s: Some(gs), g_u: Some(gu) };
                let set = if best_set { best_compensation_set(gs, gu) } else { forced };
                let mut acc = Vec::with_capacity(m);
                for seed in seeds.into_iter().flatten() {
                    let Ok(g) = compensate_iterative(-51.0, &t, &seed, &set, &pr, iterations, &p, route) else { continue };
                    if g.iter().any(|x| !x.is_finite()) {
                        continue;
                    }
                    let Ok(s) = sensitivity_matrix(-51.0, &g, &p, route, true) else { continue };
                    let d = s.apply(&g);
                    acc.push((((d.g_s - gs).powi(2) + (d.g_u - gu).powi(2)).sqrt(), clean(g).is_ok()));
                }
                acc
            })
            .collect();
        let cells: Vec<(f64, bool)> = per_target.into_iter().flatten().collect();
        let mut all: Vec<f64> = cells.iter().map(|c| c.0).collect();
        let kept: Vec<f64> = cells.iter().filter(|c| c.1).map(|c| c.0).collect();
        all.sort_by(f64::total_cmp);
        let n = all.len();
        let conv: Vec<f64> = all.iter().copied().filter(|&r| r < 1.0).collect();
        println!(
            "| {name} | {thesis} | {:.3e} ({:.1}%) | {:.3e} | {:.4} ({n} cells) | {:.4} ({:.1}%) |",
            mean(&kept),
            100.0 * kept.len() as f64 / n as f64,
            mean(&all),
            all[n / 2],
            mean(&conv),
            100.0 * conv.len() as f64 / n as f64
        );
    }
    println!("elapsed {:.1} s", t0.elapsed().as_secs_f64());
}

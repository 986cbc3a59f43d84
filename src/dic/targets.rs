//! The (g_s, g_u) targets of a training data set (spec §4.3, §6): drawn over a rectangle of the
//! DIC plane by Latin hypercube (the thesis notebook) or uniformly (the data-set generator
//! repository), a seeded share of them held out as a test set.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// How the targets fill the plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetSampling {
    /// One target per stratum of each axis (thesis notebook).
    #[default]
    LatinHypercube,
    /// Independent uniform draws (data-set generator repository).
    Uniform,
}

/// One drawn target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub g_s: f64,
    pub g_u: f64,
    /// Held out (`test`) rather than trained on.
    pub test: bool,
}

/// `n` values over `[lo, hi]`: uniform draws, or one per stratum of width (hi − lo)/n in a
/// random (Fisher–Yates) order, uniform inside its stratum.
fn draw_axis(rng: &mut StdRng, sampling: TargetSampling, n: usize, [lo, hi]: [f64; 2]) -> Vec<f64> {
    match sampling {
        TargetSampling::Uniform => (0..n).map(|_| rng.random_range(lo..=hi)).collect(),
        TargetSampling::LatinHypercube => {
            let mut strata: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                let j = rng.random_range(0..=i);
                strata.swap(i, j);
            }
            strata.iter().map(|&k| lo + (hi - lo) * (k as f64 + rng.random_range(0.0..1.0)) / n as f64).collect()
        }
    }
}

/// Draws `n` targets over `g_s_range` × `g_u_range` and marks round(`test_fraction`·n) of them,
/// chosen by a partial Fisher–Yates shuffle, as test targets. One seeded stream (g_s axis, g_u
/// axis, then the test draw), so the result depends on the seed only.
pub fn draw_targets(n: usize, sampling: TargetSampling, g_s_range: [f64; 2], g_u_range: [f64; 2], test_fraction: f64, seed: u64) -> Vec<Target> {
    let mut rng = StdRng::seed_from_u64(seed);
    let gs = draw_axis(&mut rng, sampling, n, g_s_range);
    let gu = draw_axis(&mut rng, sampling, n, g_u_range);
    let n_test = (test_fraction * n as f64).round() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    for i in 0..n_test.min(n) {
        let j = rng.random_range(i..n);
        order.swap(i, j);
    }
    let mut test = vec![false; n];
    for &i in &order[..n_test.min(n)] {
        test[i] = true;
    }
    (0..n).map(|i| Target { g_s: gs[i], g_u: gu[i], test: test[i] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_hypercube_puts_one_target_in_every_stratum_and_holds_out_the_fraction() {
        let draw = |seed| draw_targets(200, TargetSampling::LatinHypercube, [-20.0, 20.0], [0.0, 20.0], 0.25, seed);
        let d = draw(3);
        let mut gs: Vec<usize> = d.iter().map(|x| ((x.g_s + 20.0) / 40.0 * 200.0) as usize).collect();
        let mut gu: Vec<usize> = d.iter().map(|x| (x.g_u / 20.0 * 200.0) as usize).collect();
        gs.sort();
        gu.sort();
        assert_eq!(gs, (0..200).collect::<Vec<_>>());
        assert_eq!(gu, (0..200).collect::<Vec<_>>());
        assert_eq!(d.iter().filter(|x| x.test).count(), 50);
        assert_eq!(d, draw(3), "seeded");
        assert_ne!(d, draw(4));
    }

    #[test]
    fn uniform_targets_stay_in_the_rectangle() {
        let d = draw_targets(500, TargetSampling::Uniform, [-1.0, 1.0], [2.0, 3.0], 0.0, 9);
        assert!(d.iter().all(|t| (-1.0..=1.0).contains(&t.g_s) && (2.0..=3.0).contains(&t.g_u) && !t.test));
    }
}

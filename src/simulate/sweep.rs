//! Parameter sweeps: the list of model configurations a simulation study runs. A [`SweepSpec`]
//! (serde-tagged by `method`) expands into a [`SweepTable`], one row per configuration and one
//! column per named parameter: a cartesian grid (values absolute or factors of a base value),
//! uniform or log-uniform random draws, or a Latin hypercube.
//!
//! Reproducibility: every random number of configuration i comes from its own `StdRng` seeded with
//! [`stream_seed`]`(seed, i)` (SplitMix64 mixing of seed and index), so configuration i is the same
//! whatever the thread count, the chunking, or how many configurations are generated; the Latin
//! hypercube's per-dimension permutations use streams of their own. Rows are generated in parallel
//! with rayon and come back in index order.
//!
//! Grid order is that of `itertools.product` / nested loops: the first parameter varies slowest,
//! the last fastest. Study 3 (LSTM-GLIF, `specs/studies.md`) is a 5-parameter grid with 5
//! values each, 3,125 configurations.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Sweeps larger than this are refused (a typo must not allocate gigabytes).
pub const MAX_CONFIGS: usize = 100_000_000;

/// Errors of sweep validation.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SweepError {
    #[error("parameter `{name}`: field `{field}`: {reason}")]
    Parameter {
        name: String,
        field: &'static str,
        reason: String,
    },
    #[error("the sweep has no parameters")]
    NoParameters,
    #[error("parameter name `{0}` is used twice")]
    DuplicateName(String),
    #[error("the sweep has {0} configurations (limit {MAX_CONFIGS})")]
    TooLarge(f64),
    #[error("`n` must be >= 1")]
    ZeroConfigs,
}

/// One axis of a grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridAxis {
    /// Parameter name, e.g. "C" or "th_inf".
    pub name: String,
    /// Grid values, in the parameter's unit, or factors of `base` when it is given [as parameter].
    pub values: Vec<f64>,
    /// If given, `values` are factors and the configuration gets base · value [as parameter].
    #[serde(default)]
    pub base: Option<f64>,
}

/// Distribution of a random or Latin-hypercube axis between its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Uniform in [low, high).
    #[default]
    Uniform,
    /// Uniform in log between low and high (both > 0): equal mass per decade.
    LogUniform,
}

/// One axis of a random or Latin-hypercube sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeAxis {
    /// Parameter name.
    pub name: String,
    /// Lower bound (a factor of `base` when it is given) [as parameter].
    pub low: f64,
    /// Upper bound (a factor of `base` when it is given) [as parameter].
    pub high: f64,
    /// Uniform or log-uniform between the bounds.
    #[serde(default)]
    pub distribution: Distribution,
    /// If given, the bounds are factors and the configuration gets base · value [as parameter].
    #[serde(default)]
    pub base: Option<f64>,
}

/// A parameter sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum SweepSpec {
    /// Cartesian product of the axes' values (first axis slowest).
    Grid {
        /// The axes, in the order of the table's columns.
        parameters: Vec<GridAxis>,
    },
    /// `n` independent draws, each axis from its distribution.
    Random {
        /// The axes, in the order of the table's columns.
        parameters: Vec<RangeAxis>,
        /// Number of configurations [1].
        n: usize,
        /// Seed of the per-configuration streams [1].
        seed: u64,
    },
    /// Latin hypercube of `n` points: each axis's range is cut into n equal strata (in log for
    /// log-uniform axes) and every stratum holds exactly one configuration.
    LatinHypercube {
        /// The axes, in the order of the table's columns.
        parameters: Vec<RangeAxis>,
        /// Number of configurations (and strata per axis) [1].
        n: usize,
        /// Seed of the permutation and jitter streams [1].
        seed: u64,
    },
}

/// The expanded sweep: `values` is row-major, `names.len()` values per configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepTable {
    pub names: Vec<String>,
    pub values: Vec<f64>,
}

impl SweepTable {
    /// Number of configurations.
    pub fn len(&self) -> usize {
        if self.names.is_empty() {
            0
        } else {
            self.values.len() / self.names.len()
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Parameter values of configuration i, in the order of `names`.
    pub fn config(&self, i: usize) -> &[f64] {
        let d = self.names.len();
        &self.values[i * d..(i + 1) * d]
    }
    /// All values of one parameter, in configuration order.
    pub fn column(&self, j: usize) -> impl Iterator<Item = f64> + '_ {
        self.values
            .iter()
            .skip(j)
            .step_by(self.names.len())
            .copied()
    }
}

/// SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer whose outputs for
/// consecutive inputs are statistically independent, used to derive stream seeds.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of configuration `index`'s random stream: a function of (seed, index) only.
pub fn stream_seed(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(index))
}

/// Seeds of the Latin hypercube's permutation streams, kept apart from the per-index streams.
fn permutation_seed(seed: u64, axis: u64) -> u64 {
    stream_seed(seed ^ 0x4C48_5350_4552_4D31, axis) // "LHSPERM1"
}

impl RangeAxis {
    fn bounds(&self) -> (f64, f64) {
        let b = self.base.unwrap_or(1.0);
        (self.low * b, self.high * b)
    }
    /// Maps u in [0, 1) onto the axis.
    fn at(&self, u: f64) -> f64 {
        let (lo, hi) = self.bounds();
        match self.distribution {
            Distribution::Uniform => lo + u * (hi - lo),
            Distribution::LogUniform => (lo.ln() + u * (hi.ln() - lo.ln())).exp(),
        }
    }
    fn validate(&self) -> Result<(), SweepError> {
        let err = |field, reason: &str| SweepError::Parameter {
            name: self.name.clone(),
            field,
            reason: reason.to_string(),
        };
        for (field, v) in [("low", self.low), ("high", self.high)] {
            if !v.is_finite() {
                return Err(err(field, &format!("{v} is not a finite number")));
            }
        }
        if let Some(b) = self.base
            && !(b.is_finite() && b != 0.0)
        {
            return Err(err("base", &format!("{b} must be finite and non-zero")));
        }
        let (lo, hi) = self.bounds();
        if lo > hi {
            return Err(err("high", &format!("the range [{lo}, {hi}] is reversed")));
        }
        if self.distribution == Distribution::LogUniform && lo <= 0.0 {
            return Err(err(
                "low",
                &format!("log_uniform needs a range above 0, got [{lo}, {hi}]"),
            ));
        }
        Ok(())
    }
}

fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), SweepError> {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        if n.is_empty() {
            return Err(SweepError::Parameter {
                name: String::new(),
                field: "name",
                reason: "empty".to_string(),
            });
        }
        if seen.contains(&n) {
            return Err(SweepError::DuplicateName(n.to_string()));
        }
        seen.push(n);
    }
    if seen.is_empty() {
        return Err(SweepError::NoParameters);
    }
    Ok(())
}

impl SweepSpec {
    /// Parameter names, in column order.
    pub fn names(&self) -> Vec<String> {
        match self {
            SweepSpec::Grid { parameters } => parameters.iter().map(|a| a.name.clone()).collect(),
            SweepSpec::Random { parameters, .. } | SweepSpec::LatinHypercube { parameters, .. } => {
                parameters.iter().map(|a| a.name.clone()).collect()
            }
        }
    }

    /// Checks names, values, bounds and the size.
    pub fn validate(&self) -> Result<(), SweepError> {
        match self {
            SweepSpec::Grid { parameters } => {
                check_names(parameters.iter().map(|a| a.name.as_str()))?;
                let mut size = 1.0f64;
                for a in parameters {
                    let err = |field, reason: String| SweepError::Parameter {
                        name: a.name.clone(),
                        field,
                        reason,
                    };
                    if a.values.is_empty() {
                        return Err(err("values", "no values".to_string()));
                    }
                    if let Some(v) = a.values.iter().find(|v| !v.is_finite()) {
                        return Err(err("values", format!("{v} is not a finite number")));
                    }
                    if let Some(b) = a.base
                        && !b.is_finite()
                    {
                        return Err(err("base", format!("{b} is not a finite number")));
                    }
                    size *= a.values.len() as f64;
                }
                if size > MAX_CONFIGS as f64 {
                    return Err(SweepError::TooLarge(size));
                }
            }
            SweepSpec::Random { parameters, n, .. }
            | SweepSpec::LatinHypercube { parameters, n, .. } => {
                check_names(parameters.iter().map(|a| a.name.as_str()))?;
                for a in parameters {
                    a.validate()?;
                }
                if *n == 0 {
                    return Err(SweepError::ZeroConfigs);
                }
                if *n > MAX_CONFIGS {
                    return Err(SweepError::TooLarge(*n as f64));
                }
            }
        }
        Ok(())
    }

    /// Number of configurations.
    pub fn n_configs(&self) -> Result<usize, SweepError> {
        self.validate()?;
        Ok(match self {
            SweepSpec::Grid { parameters } => parameters.iter().map(|a| a.values.len()).product(),
            SweepSpec::Random { n, .. } | SweepSpec::LatinHypercube { n, .. } => *n,
        })
    }

    /// Expands the sweep (rows in parallel; identical for any thread count).
    pub fn generate(&self) -> Result<SweepTable, SweepError> {
        let n = self.n_configs()?;
        let names = self.names();
        let d = names.len();
        let mut values = vec![0.0; n * d];
        match self {
            SweepSpec::Grid { parameters } => {
                values.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                    // mixed radix, last axis fastest
                    let mut rest = i;
                    for (j, a) in parameters.iter().enumerate().rev() {
                        let k = a.values.len();
                        row[j] = a.values[rest % k] * a.base.unwrap_or(1.0);
                        rest /= k;
                    }
                });
            }
            SweepSpec::Random {
                parameters, seed, ..
            } => {
                values.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                    let mut rng = StdRng::seed_from_u64(stream_seed(*seed, i as u64));
                    for (x, a) in row.iter_mut().zip(parameters) {
                        *x = a.at(rng.random::<f64>());
                    }
                });
            }
            SweepSpec::LatinHypercube {
                parameters, seed, ..
            } => {
                // One permutation of the strata per axis (Fisher-Yates), then per configuration a
                // uniform jitter inside its stratum from the configuration's own stream.
                let perms: Vec<Vec<u32>> = (0..d)
                    .into_par_iter()
                    .map(|j| {
                        let mut rng = StdRng::seed_from_u64(permutation_seed(*seed, j as u64));
                        let mut p: Vec<u32> = (0..n as u32).collect();
                        for k in (1..n).rev() {
                            let r = rng.random_range(0..=k);
                            p.swap(k, r);
                        }
                        p
                    })
                    .collect();
                let nf = n as f64;
                values.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                    let mut rng = StdRng::seed_from_u64(stream_seed(*seed, i as u64));
                    for (j, (x, a)) in row.iter_mut().zip(parameters).enumerate() {
                        let u = (f64::from(perms[j][i]) + rng.random::<f64>()) / nf;
                        *x = a.at(u.min(1.0 - f64::EPSILON / 2.0));
                    }
                });
            }
        }
        Ok(SweepTable { names, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Study 3 (`specs/studies.md`, from lstm_glif `gen_training_data.py`): 5 parameters × 5 values.
    const STUDY3: &str = r#"{
        "method": "grid",
        "parameters": [
            {"name": "C", "values": [0.01, 0.05, 0.1, 0.5, 1], "base": 1e-9},
            {"name": "El", "values": [-0.1, -0.5, 0, 0.5, 0.1]},
            {"name": "R_input", "values": [0.01834, 0.05834, 0.1834, 0.5834, 1.834], "base": 1e9},
            {"name": "dt", "values": [1e-5, 3e-5, 5e-5, 7e-5, 9e-5]},
            {"name": "th_inf", "values": [0.00541, 0.0141, 0.0341, 0.0741, 0.141]}
        ]
    }"#;

    #[test]
    fn study3_grid_size_and_order() {
        let spec: SweepSpec = serde_json::from_str(STUDY3).unwrap();
        let t = spec.generate().unwrap();
        assert_eq!(t.len(), 3125);
        assert_eq!(t.names, ["C", "El", "R_input", "dt", "th_inf"]);
        assert_eq!(
            t.config(0),
            [0.01 * 1e-9, -0.1, 0.01834 * 1e9, 1e-5, 0.00541]
        );
        assert_eq!(
            t.config(1),
            [0.01 * 1e-9, -0.1, 0.01834 * 1e9, 1e-5, 0.0141]
        ); // last axis fastest
        assert_eq!(t.config(5)[3], 3e-5);
        assert_eq!(t.config(625)[0], 0.05 * 1e-9); // first axis slowest: changes every 5^4
        assert_eq!(t.config(3124), [1.0 * 1e-9, 0.1, 1.834 * 1e9, 9e-5, 0.141]);
        // every combination exactly once
        let mut rows: Vec<Vec<u64>> = (0..3125)
            .map(|i| t.config(i).iter().map(|v| v.to_bits()).collect())
            .collect();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), 3125);
        assert!(t.column(1).filter(|&v| v == 0.5).count() == 625);
    }

    #[test]
    fn latin_hypercube_stratifies_every_axis() {
        let n = 97;
        let spec = SweepSpec::LatinHypercube {
            parameters: vec![
                RangeAxis {
                    name: "a".into(),
                    low: 0.0,
                    high: 1.0,
                    distribution: Distribution::Uniform,
                    base: None,
                },
                RangeAxis {
                    name: "b".into(),
                    low: -3.0,
                    high: 5.0,
                    distribution: Distribution::Uniform,
                    base: None,
                },
                RangeAxis {
                    name: "g".into(),
                    low: 1e-3,
                    high: 1e2,
                    distribution: Distribution::LogUniform,
                    base: None,
                },
                RangeAxis {
                    name: "f".into(),
                    low: 0.8,
                    high: 1.2,
                    distribution: Distribution::Uniform,
                    base: Some(150.0),
                },
            ],
            n,
            seed: 42,
        };
        let t = spec.generate().unwrap();
        let strata = |j: usize, lo: f64, hi: f64, log: bool| {
            let mut s: Vec<usize> = t
                .column(j)
                .map(|x| {
                    let u = if log {
                        (x.ln() - lo.ln()) / (hi.ln() - lo.ln())
                    } else {
                        (x - lo) / (hi - lo)
                    };
                    assert!((0.0..1.0).contains(&u), "axis {j}: {x}");
                    (u * n as f64).floor() as usize
                })
                .collect();
            s.sort();
            s
        };
        let all: Vec<usize> = (0..n).collect();
        assert_eq!(strata(0, 0.0, 1.0, false), all);
        assert_eq!(strata(1, -3.0, 5.0, false), all);
        assert_eq!(strata(2, 1e-3, 1e2, true), all);
        assert_eq!(strata(3, 120.0, 180.0, false), all);
        // the axes are permuted independently (not the identity pairing)
        let a: Vec<usize> = t.column(0).map(|x| (x * n as f64) as usize).collect();
        let b: Vec<usize> = t
            .column(1)
            .map(|x| ((x + 3.0) / 8.0 * n as f64) as usize)
            .collect();
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 10);
    }

    #[test]
    fn random_sweeps_have_the_right_ranges_and_spread() {
        let spec: SweepSpec = serde_json::from_str(
            r#"{"method": "random", "n": 20000, "seed": 9, "parameters": [
                {"name": "u", "low": 2, "high": 4},
                {"name": "g", "low": 1e-2, "high": 1e2, "distribution": "log_uniform"}]}"#,
        )
        .unwrap();
        let t = spec.generate().unwrap();
        let u: Vec<f64> = t.column(0).collect();
        let g: Vec<f64> = t.column(1).collect();
        assert!(u.iter().all(|&x| (2.0..4.0).contains(&x)));
        assert!(g.iter().all(|&x| (1e-2..1e2).contains(&x)));
        // uniform: mean 3, var 1/3 (SE 0.004); log-uniform: a quarter of the draws per decade
        let mean = u.iter().sum::<f64>() / 2e4;
        assert!((mean - 3.0).abs() < 0.02, "{mean}");
        for (lo, hi) in [(1e-2, 1e-1), (1e-1, 1.0), (1.0, 1e1), (1e1, 1e2)] {
            let frac = g.iter().filter(|&&x| x >= lo && x < hi).count() as f64 / 2e4;
            assert!((frac - 0.25).abs() < 0.015, "decade {lo}: {frac}");
        }
        // configuration i does not depend on n (its own stream)
        let SweepSpec::Random {
            parameters, seed, ..
        } = spec.clone()
        else {
            unreachable!()
        };
        let small = SweepSpec::Random {
            parameters,
            n: 10,
            seed,
        }
        .generate()
        .unwrap();
        assert_eq!(small.values[..], t.values[..20]);
    }

    #[test]
    fn same_output_with_one_and_four_threads() {
        let specs = [
            serde_json::from_str::<SweepSpec>(STUDY3).unwrap(),
            serde_json::from_str(
                r#"{"method": "random", "n": 5000, "seed": 1, "parameters": [{"name": "x", "low": 0, "high": 1}]}"#,
            )
            .unwrap(),
            serde_json::from_str(
                r#"{"method": "latin_hypercube", "n": 5000, "seed": 1, "parameters": [
                    {"name": "x", "low": 0, "high": 1}, {"name": "y", "low": 1, "high": 10, "distribution": "log_uniform"}]}"#,
            )
            .unwrap(),
        ];
        for spec in specs {
            let with = |k| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(k)
                    .build()
                    .unwrap()
                    .install(|| spec.generate().unwrap())
            };
            assert_eq!(with(1), with(4));
        }
    }

    #[test]
    fn bad_sweeps_are_errors() {
        let parse = |s: &str| serde_json::from_str::<SweepSpec>(s);
        assert!(parse(r#"{"method": "grid", "parameters": [], "extra": 1}"#).is_err());
        assert!(
            parse(r#"{"method": "grid", "parameters": [{"name": "a", "value": [1]}]}"#).is_err()
        );
        let g = |s: &str| parse(s).unwrap().generate();
        assert_eq!(
            g(r#"{"method": "grid", "parameters": []}"#),
            Err(SweepError::NoParameters)
        );
        assert!(matches!(
            g(r#"{"method": "grid", "parameters": [{"name": "a", "values": []}]}"#),
            Err(SweepError::Parameter {
                field: "values",
                ..
            })
        ));
        assert_eq!(
            g(
                r#"{"method": "grid", "parameters": [{"name": "a", "values": [1]}, {"name": "a", "values": [2]}]}"#
            ),
            Err(SweepError::DuplicateName("a".into()))
        );
        let ten: Vec<f64> = (0..100).map(f64::from).collect();
        let huge = SweepSpec::Grid {
            parameters: (0..5)
                .map(|i| GridAxis {
                    name: format!("p{i}"),
                    values: ten.clone(),
                    base: None,
                })
                .collect(),
        };
        assert!(matches!(huge.generate(), Err(SweepError::TooLarge(_))));
        assert!(matches!(
            g(
                r#"{"method": "random", "n": 3, "seed": 0, "parameters": [{"name": "a", "low": 0, "high": 1, "distribution": "log_uniform"}]}"#
            ),
            Err(SweepError::Parameter { field: "low", .. })
        ));
        assert!(matches!(
            g(
                r#"{"method": "latin_hypercube", "n": 3, "seed": 0, "parameters": [{"name": "a", "low": 2, "high": 1}]}"#
            ),
            Err(SweepError::Parameter { field: "high", .. })
        ));
        assert_eq!(
            g(
                r#"{"method": "latin_hypercube", "n": 0, "seed": 0, "parameters": [{"name": "a", "low": 0, "high": 1}]}"#
            ),
            Err(SweepError::ZeroConfigs)
        );
    }
}

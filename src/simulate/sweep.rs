//! Parameter sweeps: the model configurations a simulation study runs, as named fields of a base
//! configuration varied over a grid or drawn at random. A [`SweepSpec`] (the `sweep` table of
//! `simulate.glif`) expands into a [`SweepPlan`], one row of values per point, which applies to
//! any configuration type that names its fields ([`Sweepable`]; GLIF configs in
//! [`crate::simulate::glif_params`]).
//!
//! Grid order is that of `itertools.product` / nested loops: the first parameter varies slowest,
//! the last fastest. Study 3 (LSTM-GLIF, `specs/studies.md`) is a 5-parameter grid with 5 values
//! each, 3,125 configurations. Random methods draw from one `StdRng` seeded by the caller,
//! sequentially, so a plan is the same whatever the thread count.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest sweep expanded (points per base configuration).
pub const MAX_SWEEP_POINTS: usize = 10_000_000;

/// A field a sweep names that the configuration does not have or cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sweep parameter `{name}`: {reason}")]
pub struct SweepError {
    pub name: String,
    pub reason: String,
}

impl SweepError {
    pub fn new(name: &str, reason: impl Into<String>) -> Self {
        SweepError { name: name.to_string(), reason: reason.into() }
    }
}

/// A model configuration whose numeric fields a sweep can read and write by name.
pub trait Sweepable: Clone {
    /// Why a configuration is not one the model accepts.
    type Invalid: std::fmt::Display;
    /// The value of field `name`.
    fn get(&self, name: &str) -> Result<f64, SweepError>;
    /// Sets field `name`; a failed write leaves the configuration unchanged.
    fn set(&mut self, name: &str, value: f64) -> Result<(), SweepError>;
    /// Whether the model accepts the configuration as a whole (e.g. no negative capacitance).
    fn check(&self) -> Result<(), Self::Invalid>;
}

/// How sweep points are chosen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SweepMethod {
    /// Cartesian product of every parameter's `values` / `factors` (first parameter varies slowest).
    #[default]
    Grid,
    /// `n` points, each parameter uniform in [min, max].
    Uniform,
    /// `n` points, each parameter log-uniform in [min, max] (min > 0).
    LogUniform,
    /// `n` points, one per stratum of each parameter's [min, max] (Latin hypercube, uniform strata).
    LatinHypercube,
}

/// One swept parameter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepParam {
    /// Allen config field: `R_input`, `C`, `El`, `th_inf`, `dt`, `init_voltage`, `init_threshold`,
    /// `spike_cut_length`, `coeffs.th_inf`, `coeffs.C`, `coeffs.G`, `coeffs.a`, `coeffs.b`,
    /// `asc_amp_array[j]`, `asc_tau_array[j]`, `coeffs.asc_amp_array[j]`, `a_spike`, `b_spike`,
    /// `a_voltage`, `b_voltage`, `voltage_reset_a`, `voltage_reset_b` [name].
    pub name: String,
    /// Grid: absolute values [the field's SI unit].
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    /// Grid: factors applied to the base config's value [1].
    #[serde(default)]
    pub factors: Option<Vec<f64>>,
    /// Random methods: lower bound [the field's SI unit, or a factor if `relative`].
    #[serde(default)]
    pub min: Option<f64>,
    /// Random methods: upper bound [the field's SI unit, or a factor if `relative`].
    #[serde(default)]
    pub max: Option<f64>,
    /// Random methods: `min` / `max` are factors of the base config's value [bool].
    #[serde(default)]
    pub relative: bool,
}

/// A parameter sweep (empty `params` = the base configs only).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// `grid`, `uniform`, `log_uniform` or `latin_hypercube` [enum].
    #[serde(default)]
    pub method: SweepMethod,
    /// Number of points of the random methods [configs].
    #[serde(default)]
    pub n: Option<usize>,
    /// The swept parameters, in column order [list].
    #[serde(default)]
    pub params: Vec<SweepParam>,
}

/// Where in a [`SweepSpec`] a problem is: `field` of parameter `param` (its `item`-th value), or a
/// top-level `field` (`n`, `params`) when `param` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepProblem {
    pub param: Option<usize>,
    pub field: &'static str,
    pub item: Option<usize>,
    pub message: String,
}

impl SweepProblem {
    fn top(field: &'static str, message: impl Into<String>) -> Self {
        SweepProblem { param: None, field, item: None, message: message.into() }
    }
    fn at(param: usize, field: &'static str, message: impl Into<String>) -> Self {
        SweepProblem { param: Some(param), field, item: None, message: message.into() }
    }
    fn item(param: usize, field: &'static str, item: usize, message: impl Into<String>) -> Self {
        SweepProblem { param: Some(param), field, item: Some(item), message: message.into() }
    }
}

/// The expanded sweep: per point, one value per parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    pub names: Vec<String>,
    /// Row-major `[points][names.len()]`; with `relative` parameters the values are factors,
    /// resolved per base config by [`SweepPlan::config`].
    pub points: Vec<Vec<f64>>,
    /// Per parameter: whether `points` holds factors of the base value.
    pub relative: Vec<bool>,
}

impl SweepSpec {
    /// Value problems, all at once. With a `base` configuration, also every parameter name it
    /// lacks and every grid value that alone would give a configuration the model refuses.
    pub fn problems<T: Sweepable>(&self, base: Option<&T>) -> Vec<SweepProblem> {
        let mut out = self.method_problems();
        let random = self.method != SweepMethod::Grid;
        let mut seen = std::collections::HashSet::new();
        let mut grid_size: f64 = 1.0;
        for (i, p) in self.params.iter().enumerate() {
            if !seen.insert(p.name.as_str()) {
                out.push(SweepProblem::at(i, "name", format!("`{}` is swept twice", p.name)));
            }
            if let Some(base) = base {
                if let Err(e) = base.get(&p.name) {
                    out.push(SweepProblem::at(i, "name", e.to_string()));
                    continue;
                }
            }
            if random {
                out.extend(self.range_problems(i, p));
            } else {
                grid_size *= grid_problems(i, p, &mut out);
            }
            if let (Some(base), Some(values)) = (base, p.values.as_ref()) {
                out.extend(value_problems(i, p, values, base));
            }
        }
        if grid_size > MAX_SWEEP_POINTS as f64 {
            out.push(SweepProblem::top("params", format!("the grid has {grid_size} points, more than {MAX_SWEEP_POINTS}")));
        }
        out
    }

    /// `n` against the method.
    fn method_problems(&self) -> Vec<SweepProblem> {
        let random = self.method != SweepMethod::Grid;
        match (random, self.n) {
            (true, None) | (true, Some(0)) => vec![SweepProblem::top("n", "random sweeps need `n` >= 1")],
            (true, Some(n)) if n > MAX_SWEEP_POINTS => vec![SweepProblem::top("n", format!("more than {MAX_SWEEP_POINTS} points"))],
            (false, Some(_)) => vec![SweepProblem::top("n", "`n` is for random methods; a grid's size is the product of its value lists")],
            _ => Vec::new(),
        }
    }

    /// A random method's parameter: finite bounds, positive for log-uniform, no value lists.
    fn range_problems(&self, i: usize, p: &SweepParam) -> Vec<SweepProblem> {
        let mut out = Vec::new();
        if p.values.is_some() || p.factors.is_some() {
            out.push(SweepProblem::at(i, "values", "random methods take `min` and `max`, not value lists"));
        }
        match (p.min, p.max) {
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo <= hi => {
                if self.method == SweepMethod::LogUniform && lo <= 0.0 {
                    out.push(SweepProblem::at(i, "min", "log-uniform bounds must be > 0"));
                }
            }
            _ => out.push(SweepProblem::at(i, "min", "give finite `min` <= `max`")),
        }
        out
    }

    /// Expands the sweep (seeded; sequential, so independent of the thread count).
    pub fn expand(&self, seed: u64) -> SweepPlan {
        let names: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
        let (points, relative) = match self.method {
            SweepMethod::Grid => self.grid_points(),
            method => (self.random_points(method, seed), self.params.iter().map(|p| p.relative).collect()),
        };
        let points = if names.is_empty() { vec![Vec::new()] } else { points };
        SweepPlan { names, points, relative }
    }

    /// The cartesian product of the value lists, last parameter fastest (itertools.product order),
    /// and which parameters are factors.
    fn grid_points(&self) -> (Vec<Vec<f64>>, Vec<bool>) {
        let relative = self.params.iter().map(|p| p.factors.is_some()).collect();
        let lists: Vec<&Vec<f64>> = self.params.iter().map(|p| p.values.as_ref().or(p.factors.as_ref()).expect("checked")).collect();
        let total: usize = lists.iter().map(|l| l.len()).product();
        let points = (0..total)
            .map(|mut idx| {
                let mut row = vec![0.0; lists.len()];
                for d in (0..lists.len()).rev() {
                    row[d] = lists[d][idx % lists[d].len()];
                    idx /= lists[d].len();
                }
                row
            })
            .collect();
        (points, relative)
    }

    /// `n` points of a random method: unit-cube samples (Latin hypercube strata or independent
    /// uniforms, in that order from one stream) mapped onto each parameter's [min, max].
    fn random_points(&self, method: SweepMethod, seed: u64) -> Vec<Vec<f64>> {
        let n = self.n.unwrap_or(0);
        let mut rng = StdRng::seed_from_u64(seed);
        let bounds: Vec<(f64, f64)> = self.params.iter().map(|p| (p.min.unwrap_or(0.0), p.max.unwrap_or(0.0))).collect();
        let mut unit = vec![vec![0.0; bounds.len()]; n];
        if method == SweepMethod::LatinHypercube {
            for d in 0..bounds.len() {
                let mut strata: Vec<usize> = (0..n).collect();
                // Fisher-Yates with the stage's rng.
                for i in (1..n).rev() {
                    let j = rng.random_range(0..=i);
                    strata.swap(i, j);
                }
                for (row, s) in unit.iter_mut().zip(&strata) {
                    row[d] = (*s as f64 + rng.random::<f64>()) / n as f64;
                }
            }
        } else {
            for row in unit.iter_mut() {
                for x in row.iter_mut() {
                    *x = rng.random::<f64>();
                }
            }
        }
        let log = method == SweepMethod::LogUniform;
        unit.into_iter()
            .map(|row| {
                row.iter()
                    .zip(&bounds)
                    .map(|(&u, &(lo, hi))| if log { (lo.ln() + u * (hi.ln() - lo.ln())).exp() } else { lo + u * (hi - lo) })
                    .collect()
            })
            .collect()
    }
}

/// A grid parameter: exactly one non-empty list of finite values or factors, no random-method
/// fields. Returns the list's length (1 when it is missing) for the grid size.
fn grid_problems(i: usize, p: &SweepParam, out: &mut Vec<SweepProblem>) -> f64 {
    let mut size = 1.0;
    match (&p.values, &p.factors) {
        (Some(v), None) | (None, Some(v)) => {
            let field = if p.values.is_some() { "values" } else { "factors" };
            if v.is_empty() {
                out.push(SweepProblem::at(i, field, "empty list"));
            }
            for (j, x) in v.iter().enumerate() {
                if !x.is_finite() {
                    out.push(SweepProblem::item(i, field, j, format!("{x} is not finite")));
                }
            }
            size = v.len().max(1) as f64;
        }
        _ => out.push(SweepProblem::at(i, "values", "a grid parameter needs exactly one of `values` and `factors`")),
    }
    if p.min.is_some() || p.max.is_some() || p.relative {
        out.push(SweepProblem::at(i, "min", "`min`, `max` and `relative` are for random methods"));
    }
    size
}

/// Each absolute value on its own must give a configuration the model accepts.
fn value_problems<T: Sweepable>(i: usize, p: &SweepParam, values: &[f64], base: &T) -> Vec<SweepProblem> {
    let mut out = Vec::new();
    for (j, &x) in values.iter().enumerate() {
        let mut c = base.clone();
        let r = c.set(&p.name, x).and_then(|_| c.check().map_err(|e| SweepError::new(&p.name, e.to_string())));
        if let Err(e) = r {
            out.push(SweepProblem::item(i, "values", j, e.to_string()));
        }
    }
    out
}

impl SweepPlan {
    /// Number of configs per base config.
    pub fn len(&self) -> usize {
        self.points.len()
    }
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
    /// Absolute parameter values and the configuration of point `i` applied to `base`.
    pub fn config<T: Sweepable>(&self, base: &T, i: usize) -> Result<(Vec<f64>, T), SweepError> {
        let mut c = base.clone();
        let mut values = Vec::with_capacity(self.names.len());
        for ((name, &x), &rel) in self.names.iter().zip(&self.points[i]).zip(&self.relative) {
            let v = if rel { x * base.get(name)? } else { x };
            c.set(name, v)?;
            values.push(v);
        }
        Ok((values, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two named fields, `a` > 0 required.
    #[derive(Clone, Debug, PartialEq)]
    struct Two {
        a: f64,
        b: f64,
    }

    impl Sweepable for Two {
        type Invalid = String;
        fn get(&self, name: &str) -> Result<f64, SweepError> {
            match name {
                "a" => Ok(self.a),
                "b" => Ok(self.b),
                _ => Err(SweepError::new(name, "unknown parameter")),
            }
        }
        fn set(&mut self, name: &str, value: f64) -> Result<(), SweepError> {
            match name {
                "a" => self.a = value,
                "b" => self.b = value,
                _ => return Err(SweepError::new(name, "unknown parameter")),
            }
            Ok(())
        }
        fn check(&self) -> Result<(), String> {
            if self.a > 0.0 { Ok(()) } else { Err(format!("a = {} must be > 0", self.a)) }
        }
    }

    fn param(name: &str) -> SweepParam {
        SweepParam { name: name.into(), values: None, factors: None, min: None, max: None, relative: false }
    }

    #[test]
    fn grid_is_cartesian_in_product_order() {
        let spec = SweepSpec {
            method: SweepMethod::Grid,
            n: None,
            params: vec![SweepParam { values: Some(vec![1.0, 2.0]), ..param("a") }, SweepParam { factors: Some(vec![0.5, 1.0, 2.0]), ..param("b") }],
        };
        let plan = spec.expand(0);
        assert_eq!(plan.len(), 6);
        assert_eq!(plan.points[1], vec![1.0, 1.0]);
        assert_eq!(plan.points[3], vec![2.0, 0.5]);
        // Factors apply to the base value; absolute values replace it.
        let (values, c) = plan.config(&Two { a: 9.0, b: 4.0 }, 5).unwrap();
        assert_eq!((values, c), (vec![2.0, 8.0], Two { a: 2.0, b: 8.0 }));
    }

    #[test]
    fn latin_hypercube_fills_every_stratum() {
        let spec = SweepSpec { method: SweepMethod::LatinHypercube, n: Some(50), params: vec![SweepParam { min: Some(0.0), max: Some(1.0), ..param("a") }] };
        let plan = spec.expand(3);
        let mut strata: Vec<usize> = plan.points.iter().map(|p| (p[0] * 50.0) as usize).collect();
        strata.sort();
        assert_eq!(strata, (0..50).collect::<Vec<_>>());
        assert_eq!(plan, spec.expand(3));
    }

    #[test]
    fn log_uniform_points_stay_in_their_bounds() {
        let spec = SweepSpec { method: SweepMethod::LogUniform, n: Some(1000), params: vec![SweepParam { min: Some(1e-3), max: Some(1e2), ..param("a") }] };
        let plan = spec.expand(1);
        assert!(plan.points.iter().all(|p| (1e-3..=1e2).contains(&p[0])));
        let below_one = plan.points.iter().filter(|p| p[0] < 1.0).count();
        assert!((540..660).contains(&below_one), "3 of 5 decades below 1: {below_one}");
    }

    #[test]
    fn problems_are_all_reported_with_their_place() {
        let spec = SweepSpec {
            method: SweepMethod::Grid,
            n: Some(3),
            params: vec![SweepParam { values: Some(vec![1.0, -1.0, f64::NAN]), ..param("a") }, param("zzz"), SweepParam { factors: Some(vec![]), ..param("b") }],
        };
        let p = spec.problems(Some(&Two { a: 1.0, b: 1.0 }));
        let at = |param: Option<usize>, field: &str, item: Option<usize>| p.iter().find(|q| q.param == param && q.field == field && q.item == item).map(|q| q.message.clone());
        assert!(at(None, "n", None).unwrap().contains("random methods"));
        assert!(at(Some(0), "values", Some(1)).unwrap().contains("a = -1 must be > 0"));
        assert!(at(Some(0), "values", Some(2)).unwrap().contains("not finite"));
        assert_eq!(at(Some(1), "name", None).unwrap(), "sweep parameter `zzz`: unknown parameter");
        assert_eq!(at(Some(2), "factors", None).unwrap(), "empty list");
        // Without a base only the spec itself is checked: no name or value is checked against the
        // model, while the grid's own problems (the empty factors) are still found.
        let without_base = spec.problems::<Two>(None);
        assert!(!without_base.iter().any(|q| q.message.contains("unknown parameter") || q.message.contains("must be > 0")));
        assert!(without_base.iter().any(|q| q.param == Some(2) && q.field == "factors"));
    }
}

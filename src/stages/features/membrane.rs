//! `features.membrane`: input resistance, capacitance, resting potential and membrane time
//! constant of each sweep, fitted to its subthreshold samples (the kernel and its method:
//! [`crate::features::membrane`], the Allen Institute's GLIF fitting of Teeter et al. 2018).
//!
//! Role: study 3 asks which GLIF parameters a trace identifies. Summary statistics of the response
//! see R and C only through the gain and the autocorrelation, blurred by the spikes' resets; the
//! membrane equation fitted sample by sample reads them off directly, wherever the trace has
//! subthreshold samples and the current varies. On recordings it is the classic passive-property
//! estimate from a noise stimulus, with spikes kept out by time windows around each spike.
//!
//! Added columns (`<prefix>` defaults to `membrane`): `<prefix>_r_mohm` (MΩ), `_c_pf` (pF),
//! `_el_mv` (mV), `_tau_ms` (ms), `_fit_pairs` (sample pairs used) and `_fit_r2` (R² of the dV/dt
//! regression). A sweep with too few usable pairs, or whose V and I are collinear (a step, a
//! constant current), gets null estimates and its pair count: the parameters are not identifiable
//! from it, which is a result, not an error. A row whose trace, current or rate is missing, or
//! whose spike times are not a list of times, fails alone, named.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::passed_columns::{numeric_list, passed_columns, passed_fields, unit_label};
use crate::stage::columns::{as_f64_list, column_list, field, is_numeric, require, row_values, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::features::membrane::{FitWindow, MembraneFit, NoFit, NotATime, Scheme, fit_membrane, usable_samples};

/// Passive membrane parameters per sweep from a least-squares fit of C·dV/dt = I − (V − El)/R.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesMembrane {
    /// List column of the injected current, in pA [column].
    #[serde(default = "d_stimulus")]
    pub stimulus: String,
    /// List column of the membrane potential, in mV [column].
    #[serde(default = "d_response")]
    pub response: String,
    /// Column with each row's sampling rate [Hz].
    #[serde(default = "d_rate")]
    pub sampling_rate_column: String,
    /// Which samples pair with each step V[n] -> V[n+1]: `midpoint` (recordings: means of V and I
    /// over the step), `forward` (V[n], I[n]) or `allensdk` (V[n], I[n+1], AllenSDK's GLIF output) [enum].
    #[serde(default = "d_scheme")]
    pub scheme: Scheme,
    /// Start of the fitted window [s].
    #[serde(default)]
    pub start_s: f64,
    /// End of the fitted window (default: the whole trace) [s].
    #[serde(default)]
    pub end_s: Option<f64>,
    /// List column of spike times (s) whose neighbourhoods are left out of the fit [column].
    #[serde(default)]
    pub spike_times: Option<String>,
    /// Left out before each spike time [s].
    #[serde(default = "d_before")]
    pub exclude_before_s: f64,
    /// Left out after each spike time (the spike and its after-hyperpolarisation) [s].
    #[serde(default = "d_after")]
    pub exclude_after_s: f64,
    /// Fewest usable sample pairs for a fit (at least 3: three unknowns) [count].
    #[serde(default = "d_min_pairs")]
    pub min_pairs: usize,
    /// Prefix of the added columns [name].
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// Keep the list columns in the output (default: only scalar columns travel on) [bool].
    #[serde(default)]
    pub keep_lists: bool,
}

fn d_stimulus() -> String {
    "stimulus".into()
}
fn d_response() -> String {
    "response".into()
}
fn d_rate() -> String {
    "sampling_rate_hz".into()
}
fn d_scheme() -> Scheme {
    Scheme::Midpoint
}
fn d_before() -> f64 {
    0.002
}
fn d_after() -> f64 {
    0.01
}
fn d_min_pairs() -> usize {
    10
}
fn d_prefix() -> String {
    "membrane".into()
}

/// (suffix, unit, integer) of the added columns, in output order.
const ADDED: [(&str, &str, bool); 6] = [
    ("r_mohm", "MΩ", false),
    ("c_pf", "pF", false),
    ("el_mv", "mV", false),
    ("tau_ms", "ms", false),
    ("fit_pairs", "1", true),
    ("fit_r2", "1", false),
];

impl StageConfig for FeaturesMembrane {
    const KIND: &'static str = "features.membrane";
    const SUMMARY: &'static str =
        "Input resistance, capacitance, resting potential and time constant per sweep, by least squares of dV/dt on V and I over subthreshold samples";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "scheme = \"midpoint\"\nmin_pairs = 10";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !self.start_s.is_finite() || self.start_s < 0.0 {
            issues.push(Issue::at(&["start_s"], format!("must be a time >= 0 s, got {}", self.start_s)));
        }
        if let Some(e) = self.end_s
            && !(e.is_finite() && e > self.start_s)
        {
            issues.push(Issue::at(&["end_s"], format!("must be after start_s ({} s), got {e}", self.start_s)));
        }
        for (key, v) in [("exclude_before_s", self.exclude_before_s), ("exclude_after_s", self.exclude_after_s)] {
            if !(v.is_finite() && v >= 0.0) {
                issues.push(Issue::at(&[key], format!("must be a duration >= 0 s, got {v}")));
            }
        }
        if self.min_pairs < 3 {
            issues.push(Issue::at(&["min_pairs"], format!("three unknowns need at least 3 pairs, got {}", self.min_pairs)));
        }
        if self.prefix.trim().is_empty() {
            issues.push(Issue::at(&["prefix"], "must not be empty"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        let list = "a numeric list column";
        for (key, col, unit) in [("stimulus", &self.stimulus, "pA"), ("response", &self.response, "mV")] {
            if let Err(i) = require(input, "input", col, list, numeric_list, Some(unit), &[key]) {
                issues.push(i);
            }
        }
        if let Err(i) = require(input, "input", &self.sampling_rate_column, "a numeric column", is_numeric, Some("Hz"), &["sampling_rate_column"]) {
            issues.push(i);
        }
        if let Some(t) = &self.spike_times {
            match input.field_with_name(t) {
                Err(_) => issues.push(Issue::at(&["spike_times"], format!("the input has no column `{t}`; it has: {}", column_list(input)))),
                Ok(f) if !numeric_list(f.data_type()) => issues.push(Issue::at(&["spike_times"], format!("`{t}` must be a list of times"))),
                Ok(f) if unit_of(f) != Some("s") => {
                    issues.push(Issue::at(&["spike_times"], format!("`{t}` is in {}, but s is needed", unit_of(f).unwrap_or("no unit"))))
                }
                _ => {}
            }
        }
        let mut fields = passed_fields(input, self.keep_lists);
        let names: BTreeSet<String> = fields.iter().map(|f| f.name().clone()).collect();
        for (suffix, unit, int) in ADDED {
            let name = format!("{}_{suffix}", self.prefix);
            if names.contains(&name) {
                issues.push(Issue::at(&["prefix"], format!("the input already has a column `{name}`; choose another prefix")));
            }
            fields.push(field(&name, if int { DataType::Int64 } else { DataType::Float64 }, true, Some(unit)));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(MembraneOp { cfg: self.clone(), schema: output.clone() })))
    }
}

struct MembraneOp {
    cfg: FeaturesMembrane,
    schema: SchemaRef,
}

/// A row's fit, or why the fit is not defined (a result, with its pair count).
type RowFit = std::result::Result<MembraneFit, NoFit>;

impl FeaturesMembrane {
    /// The fit of one row, or why the row cannot be analysed.
    fn fit_row(&self, v: Option<Vec<f64>>, i: Option<Vec<f64>>, rate: Option<f64>, spikes: Option<Vec<f64>>) -> Result<RowFit> {
        let v = v.ok_or_else(|| Error::msg(format!("`{}` is null", self.response)))?;
        let i = i.ok_or_else(|| Error::msg(format!("`{}` is null", self.stimulus)))?;
        let rate = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| Error::msg(format!("`{}` is missing or not positive", self.sampling_rate_column)))?;
        if v.len() != i.len() {
            return Err(Error::msg(format!("`{}` has {} samples but `{}` has {}", self.response, v.len(), self.stimulus, i.len())));
        }
        let window = FitWindow {
            start_s: self.start_s,
            end_s: self.end_s,
            exclude_before_s: self.exclude_before_s,
            exclude_after_s: self.exclude_after_s,
        };
        let usable = usable_samples(v.len(), rate, &window, spikes.as_deref().unwrap_or_default()).map_err(|NotATime { index, value }| {
            Error::msg(format!("`{}`[{index}] is {value}, not a time", self.spike_times.as_deref().unwrap_or_default()))
        })?;
        Ok(fit_membrane(&v, &i, rate, self.scheme, self.min_pairs, |k| usable[k]))
    }
}

impl TransformOperator for MembraneOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let cfg = &self.cfg;
        let rates: Vec<Option<f64>> =
            arrow::compute::cast(batch.column_by_name(&cfg.sampling_rate_column).expect("checked schema"), &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .iter()
                .collect();
        let v = as_f64_list(&batch, &cfg.response)?;
        let i = as_f64_list(&batch, &cfg.stimulus)?;
        let spikes = match &cfg.spike_times {
            Some(t) => Some(as_f64_list(&batch, t)?),
            None => None,
        };
        let fits: Vec<Result<RowFit>> = (0..n)
            .into_par_iter()
            .map(|r| {
                // A row without a spike list has no spikes to leave out.
                let times = spikes.as_ref().and_then(|s| row_values(s, r));
                cfg.fit_row(row_values(&v, r), row_values(&i, r), rates[r], times)
            })
            .collect();
        let mut rows = Vec::with_capacity(n);
        for (r, f) in fits.iter().enumerate() {
            match f {
                Ok(_) => rows.push(r),
                Err(e) => out.fail(unit_label(&batch, r), e.to_string()),
            }
        }
        let mut columns = passed_columns(&batch, &rows, cfg.keep_lists)?;
        let fit = |r: usize| fits[r].as_ref().ok().and_then(|f| f.as_ref().ok());
        let f64s = |g: &dyn Fn(&MembraneFit) -> f64| -> ArrayRef {
            Arc::new(rows.iter().map(|&r| fit(r).map(g).filter(|x| x.is_finite())).collect::<Float64Array>())
        };
        columns.push(f64s(&|f| f.r_mohm));
        columns.push(f64s(&|f| f.c_pf));
        columns.push(f64s(&|f| f.el_mv));
        columns.push(f64s(&|f| f.tau_ms));
        columns.push(Arc::new(
            rows.iter()
                .map(|&r| match &fits[r] {
                    Ok(Ok(f)) => Some(f.pairs as i64),
                    Ok(Err(no)) => Some(no.pairs() as i64),
                    Err(_) => None,
                })
                .collect::<Int64Array>(),
        ));
        columns.push(f64s(&|f| f.r2));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

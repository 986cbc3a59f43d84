//! `simulate.hh`: a source that simulates many independent Hodgkin-Huxley neurons (classic 1952
//! kinetics or the Traub-Miles variant of brian2's examples) with exponential Euler, one row per
//! neuron (the sweeps table: stimulus, response, model spike times).
//!
//! The numerics are the brian2-checked kernel [`crate::simulate::hh`]; this module expands the
//! neuron population (per-neuron bias current and stimulus gain), renders the optional shared
//! stimulus protocol ([`crate::simulate::stimulus`]) and packs the results into Arrow batches.
//! Neurons are simulated `block_size` at a time (split across threads), so memory is bounded by
//! one block whatever the population size.
//!
//! The stimulus is sampled at its own explicit rate `stimulus_rate_hz` and read by the kernel
//! with sample-and-hold (brian2's `TimedArray` semantics); it is never silently reinterpreted at
//! the integration step: when the rates differ the stage says so through `stimulus_rate_hz`, and
//! a stimulus shorter than the run is refused at validation.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::list_columns::list_column;
use crate::error::{Error, Result};
use crate::simulate::hh::{self, HhDrive, HhError, HhParams, HhRun, Interpolation, Waveform};
use crate::simulate::stimulus::StimulusSpec;
use crate::stage::columns::{f32_trace, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

/// Which parameter set the neurons start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum HhModel {
    /// brian2's HH examples (`peers/bench/hh_model.py`): Traub-Miles rates, 20,000 µm², VT −63 mV.
    #[default]
    TraubMiles,
    /// Hodgkin & Huxley (1952), rest −65 mV, rates at 6.3 °C.
    Classic,
}

/// Per-field overrides of the model's parameters (absent = the model's value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HhOverrides {
    /// Membrane area [µm²].
    pub area_um2: Option<f64>,
    /// Specific capacitance [µF/cm²].
    pub cm_uf_per_cm2: Option<f64>,
    /// Leak conductance density [mS/cm²].
    pub gl_ms_per_cm2: Option<f64>,
    /// Leak reversal [mV].
    pub el_mv: Option<f64>,
    /// Sodium conductance density [mS/cm²].
    pub gna_ms_per_cm2: Option<f64>,
    /// Sodium reversal [mV].
    pub ena_mv: Option<f64>,
    /// Potassium conductance density [mS/cm²].
    pub gk_ms_per_cm2: Option<f64>,
    /// Potassium reversal [mV].
    pub ek_mv: Option<f64>,
    /// Traub-Miles rate shift [mV].
    pub vt_mv: Option<f64>,
    /// Initial membrane potential [mV].
    pub v0_mv: Option<f64>,
}

/// Bias current per neuron: one value for all, an explicit list (one per neuron), or a linear
/// range from the first to the last neuron (brian2's `I = linspace(...)` idiom).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum BiasSpec {
    /// Every neuron's bias [pA].
    Constant(f64),
    /// Neuron i's bias, one per neuron [pA].
    List(Vec<f64>),
    /// First neuron `from`, last neuron `to`, linear in between [pA].
    Range { from: f64, to: f64 },
}

impl Default for BiasSpec {
    fn default() -> Self {
        BiasSpec::Constant(0.0)
    }
}

impl BiasSpec {
    fn value(&self, i: usize, n: usize) -> f64 {
        match self {
            BiasSpec::Constant(v) => *v,
            BiasSpec::List(v) => v[i],
            BiasSpec::Range { from, to } => {
                if n <= 1 {
                    *from
                } else {
                    from + (to - from) * i as f64 / (n - 1) as f64
                }
            }
        }
    }
}

fn default_dt_ms() -> f64 {
    0.01
}
fn default_threshold_mv() -> f64 {
    -20.0
}
fn default_block_size() -> usize {
    1000
}
fn default_one() -> usize {
    1
}

/// Simulates `neurons` independent HH neurons: neuron i gets `bias_pa(i)` plus the optional
/// stimulus; one row per neuron with its spike times and, if asked, its voltage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateHh {
    /// `traub_miles` (brian2 examples) or `classic` (Hodgkin & Huxley 1952) [enum].
    #[serde(default)]
    pub model: HhModel,
    /// Parameter overrides of the model (`area_um2`, `gna_ms_per_cm2`, ...) [table].
    #[serde(default)]
    pub params: HhOverrides,
    /// Number of neurons [1].
    pub neurons: usize,
    /// Constant current per neuron: a number, a list (one per neuron) or `{ from, to }` spread
    /// linearly over the neurons [pA].
    #[serde(default)]
    pub bias_pa: BiasSpec,
    /// Optional current protocol added to every neuron's bias (shared stimulus module:
    /// `protocol = "long_square" | "ramp" | "ornstein_uhlenbeck" | ...`, in pA and s) [table].
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub stimulus: Option<StimulusSpec>,
    /// Sampling rate the stimulus is rendered at (default 1/dt); read with sample-and-hold [Hz].
    #[serde(default)]
    pub stimulus_rate_hz: Option<f64>,
    /// Integration step [ms].
    #[serde(default = "default_dt_ms")]
    pub dt_ms: f64,
    /// Simulated time [ms].
    pub duration_ms: f64,
    /// Spike detection level (upward crossing, brian2's `v > -20*mV` with refractoriness) [mV].
    #[serde(default = "default_threshold_mv")]
    pub threshold_mv: f64,
    /// Emit each neuron's membrane potential as `response` [bool].
    #[serde(default)]
    pub record_voltage: bool,
    /// Keep every this many integration steps in `response` [steps].
    #[serde(default = "default_one")]
    pub record_every_steps: usize,
    /// Neurons simulated and emitted per batch [neurons].
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

impl SimulateHh {
    fn params(&self) -> HhParams {
        let mut p = match self.model {
            HhModel::TraubMiles => HhParams::traub_miles(),
            HhModel::Classic => HhParams::classic(),
        };
        let o = &self.params;
        for (slot, v) in [
            (&mut p.area_um2, o.area_um2),
            (&mut p.cm_uf_per_cm2, o.cm_uf_per_cm2),
            (&mut p.gl_ms_per_cm2, o.gl_ms_per_cm2),
            (&mut p.el_mv, o.el_mv),
            (&mut p.gna_ms_per_cm2, o.gna_ms_per_cm2),
            (&mut p.ena_mv, o.ena_mv),
            (&mut p.gk_ms_per_cm2, o.gk_ms_per_cm2),
            (&mut p.ek_mv, o.ek_mv),
            (&mut p.vt_mv, o.vt_mv),
            (&mut p.v0_mv, o.v0_mv),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        p
    }

    fn n_steps(&self) -> usize {
        (self.duration_ms / self.dt_ms).round() as usize
    }

    fn stimulus_rate(&self) -> f64 {
        self.stimulus_rate_hz.unwrap_or(1e3 / self.dt_ms)
    }

    /// The stimulus samples at [`Self::stimulus_rate`], refused when shorter than the run.
    fn render_stimulus(&self) -> Result<Option<Vec<f64>>> {
        let Some(spec) = &self.stimulus else { return Ok(None) };
        let rate = self.stimulus_rate();
        let samples = spec.render(rate).map_err(|e| Error::msg(e.to_string()))?;
        let needed_ms = self.n_steps() as f64 * self.dt_ms;
        let have_ms = samples.len() as f64 * 1e3 / rate;
        if have_ms + 1e-9 < needed_ms {
            return Err(Error::msg(format!("the stimulus lasts {have_ms} ms at {rate} Hz but the run needs {needed_ms} ms")));
        }
        Ok(Some(samples))
    }

    fn model_name(&self) -> &'static str {
        match self.model {
            HhModel::TraubMiles => "traub_miles",
            HhModel::Classic => "classic",
        }
    }
}

impl StageConfig for SimulateHh {
    const KIND: &'static str = "simulate.hh";
    const SUMMARY: &'static str = "Simulate many independent Hodgkin-Huxley neurons (classic or Traub-Miles), exponential Euler";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "neurons = 10\nduration_ms = 200.0\nbias_pa = { from = 0.0, to = 1000.0 }";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each row is one neuron, simulated on its own bias (the neurons do not interact).
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.neurons == 0 || self.neurons > 100_000_000 {
            issues.push(Issue::at(&["neurons"], format!("{} neurons; give 1..=100000000", self.neurons)));
        }
        if !(self.dt_ms.is_finite() && self.dt_ms > 0.0 && self.dt_ms <= 0.1) {
            issues.push(Issue::at(&["dt_ms"], format!("{} must be in (0, 0.1] ms (exponential Euler on HH needs small steps)", self.dt_ms)));
        }
        if !(self.duration_ms.is_finite() && self.duration_ms > 0.0) {
            issues.push(Issue::at(&["duration_ms"], format!("{} must be finite and > 0", self.duration_ms)));
        } else if self.dt_ms > 0.0 && self.duration_ms / self.dt_ms > 1e9 {
            issues.push(Issue::at(&["duration_ms"], "more than 1e9 integration steps"));
        }
        if !self.threshold_mv.is_finite() {
            issues.push(Issue::at(&["threshold_mv"], "must be finite"));
        }
        if self.block_size == 0 {
            issues.push(Issue::at(&["block_size"], "must be at least 1"));
        }
        if self.record_every_steps == 0 {
            issues.push(Issue::at(&["record_every_steps"], "must be at least 1"));
        }
        match &self.bias_pa {
            BiasSpec::List(v) if v.len() != self.neurons => {
                issues.push(Issue::at(&["bias_pa"], format!("{} values for {} neurons: give one per neuron", v.len(), self.neurons)))
            }
            BiasSpec::List(v) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    issues.push(Issue::at_index("bias_pa", i, "not a finite number"));
                }
            }
            BiasSpec::Constant(v) if !v.is_finite() => issues.push(Issue::at(&["bias_pa"], "not a finite number")),
            BiasSpec::Range { from, to } if !(from.is_finite() && to.is_finite()) => issues.push(Issue::at(&["bias_pa"], "`from` and `to` must be finite")),
            _ => {}
        }
        if let Some(r) = self.stimulus_rate_hz {
            if !(r.is_finite() && r > 0.0) {
                issues.push(Issue::at(&["stimulus_rate_hz"], format!("{r} must be finite and > 0")));
            }
        }
        if let Err(e) = self.params().validate() {
            issues.push(Issue::at(&["params"], e.to_string()));
        }
        if issues.is_empty() {
            if let Err(e) = self.render_stimulus() {
                issues.push(Issue::at(&["stimulus"], e.to_string()));
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let spikes = DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false)));
        let mut fields = vec![
            field("recording_id", DataType::Utf8, false, None),
            field("neuron", DataType::Int64, false, None),
            field("model", DataType::Utf8, false, None),
            field("bias_pa", DataType::Float64, false, Some("pA")),
            field("dt_ms", DataType::Float64, false, Some("ms")),
            field("duration_ms", DataType::Float64, false, Some("ms")),
            field("model_spike_times", spikes, false, Some("s")),
            field("spike_count", DataType::Int64, false, None),
        ];
        if self.record_voltage {
            fields.push(field("sampling_rate_hz", DataType::Float64, false, Some("Hz")));
            fields.push(f32_trace("response", "mV"));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let stimulus = self.render_stimulus().map_err(|e| e.context(format!("stage `{}`: stimulus", ctx.name)))?;
        Ok(Operator::Source(Box::new(HhSource { cfg: self.clone(), params: self.params(), stimulus, schema: output.clone(), next: 0 })))
    }
}

struct HhSource {
    cfg: SimulateHh,
    params: HhParams,
    stimulus: Option<Vec<f64>>,
    schema: SchemaRef,
    next: usize,
}

impl HhSource {
    /// Simulates neurons `start..end`, in per-thread chunks (the kernel vectorizes across the
    /// neurons of a chunk).
    fn block(&self, start: usize, end: usize) -> std::result::Result<(Vec<Vec<f64>>, Vec<Vec<f64>>), HhError> {
        let n_total = self.cfg.neurons;
        let bias: Vec<f64> = (start..end).map(|i| self.cfg.bias_pa.value(i, n_total)).collect();
        let threads = rayon::current_num_threads().max(1);
        let chunk = bias.len().div_ceil(threads).max(64);
        let run_for = |b: &[f64]| -> std::result::Result<hh::HhOutput, HhError> {
            let run = HhRun {
                dt_ms: self.cfg.dt_ms,
                n_steps: self.cfg.n_steps(),
                threshold_mv: self.cfg.threshold_mv,
                record_neurons: if self.cfg.record_voltage { (0..b.len()).collect() } else { Vec::new() },
                record_every_steps: self.cfg.record_every_steps,
            };
            let waveform = self.stimulus.as_deref().map(|s| Waveform { samples_pa: s, sample_dt_ms: 1e3 / self.cfg.stimulus_rate(), interpolation: Interpolation::Hold });
            let drive = HhDrive { bias_pa: b, waveform, waveform_gain: None };
            hh::simulate(&self.params, &run, &drive)
        };
        let outs: Vec<std::result::Result<hh::HhOutput, HhError>> = bias.par_chunks(chunk).map(run_for).collect();
        let (mut spikes, mut volts) = (Vec::with_capacity(bias.len()), Vec::new());
        for o in outs {
            let o = o?;
            for i in 0..o.spike_steps.len() {
                spikes.push(o.spike_times_s(i));
            }
            volts.extend(o.voltage_mv);
        }
        Ok((spikes, volts))
    }
}

impl SourceOperator for HhSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let start = self.next;
        let end = (start + self.cfg.block_size).min(self.cfg.neurons);
        if start >= end {
            return Ok(false);
        }
        self.next = end;
        let model = self.cfg.model_name();
        match self.block(start, end) {
            Err(e) => out.fail(format!("hh neurons {start}..{end}"), e.to_string()),
            Ok((spikes, volts)) => {
                let n = end - start;
                let n_total = self.cfg.neurons;
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values((start..end).map(|i| format!("hh-{model}-{i}")))),
                    Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64))),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model, n))),
                    Arc::new(Float64Array::from_iter_values((start..end).map(|i| self.cfg.bias_pa.value(i, n_total)))),
                    Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(self.cfg.dt_ms, n))),
                    Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(self.cfg.n_steps() as f64 * self.cfg.dt_ms, n))),
                    Arc::new(list_column::<Float64Type, _>(spikes.iter().map(Some), false)?),
                    Arc::new(Int64Array::from_iter_values(spikes.iter().map(|s| s.len() as i64))),
                ];
                if self.cfg.record_voltage {
                    let rate = 1e3 / (self.cfg.dt_ms * self.cfg.record_every_steps as f64);
                    columns.push(Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(rate, n))));
                    let mv = volts.into_iter().map(|v| Some(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>()));
                    columns.push(Arc::new(list_column::<Float32Type, _>(mv, false)?));
                }
                out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
            }
        }
        Ok(self.next < self.cfg.neurons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> SimulateHh {
        toml::from_str(toml_text).unwrap()
    }

    /// The stage must give the kernel's spike counts (the kernel is checked against brian2 in
    /// `simulate::hh`), in blocks, whatever the block size.
    #[test]
    fn stage_rows_equal_kernel_counts_across_blocks() {
        let c = cfg("neurons = 10\nbias_pa = { from = 0.0, to = 1000.0 }\nduration_ms = 200.0\nblock_size = 3\nrecord_voltage = true\nrecord_every_steps = 10");
        assert!(c.check(&ctx()).is_empty());
        let schema = c.output_schema(&ctx(), &[]).unwrap();
        let Operator::Source(mut src) = c.build(&ctx(), &[], &schema).unwrap() else { panic!() };
        let mut counts = Vec::new();
        loop {
            let mut em = Emitter::default();
            let more = src.next(&mut em).unwrap();
            for b in em.into_batches() {
                assert!(b.num_rows() <= 3);
                let col = b.column_by_name("spike_count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
                counts.extend(col.values().iter().copied());
                let resp = b.column_by_name("response").unwrap().as_any().downcast_ref::<arrow::array::LargeListArray>().unwrap();
                assert_eq!(resp.value_length(0) as usize, 20_000 / 10, "200 ms at 0.01 ms, every 10th step");
            }
            if !more {
                break;
            }
        }
        let bias: Vec<f64> = (0..10).map(|i| 1000.0 * i as f64 / 9.0).collect();
        let run = HhRun { dt_ms: 0.01, n_steps: 20000, threshold_mv: -20.0, record_neurons: vec![], record_every_steps: 1 };
        let k = hh::simulate(&HhParams::traub_miles(), &run, &HhDrive { bias_pa: &bias, waveform: None, waveform_gain: None }).unwrap();
        assert_eq!(counts, k.spike_counts().iter().map(|&c| c as i64).collect::<Vec<_>>());
        assert_eq!(counts[0], 0, "no current, no spike");
        assert!(counts[9] > 5, "1 nA drives the Traub-Miles cell: {counts:?}");
    }

    #[test]
    fn bad_values_are_all_reported() {
        let c = cfg("neurons = 2\nbias_pa = [1.0]\ndt_ms = 0.5\nduration_ms = -1.0\nparams = { cm_uf_per_cm2 = -1.0 }");
        let issues = c.check(&ctx());
        let text: Vec<String> = issues.iter().map(|i| format!("{:?} {}", i.path, i.message)).collect();
        assert!(text.iter().any(|t| t.contains("bias_pa") && t.contains("one per neuron")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("dt_ms")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("duration_ms")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("params")), "{text:?}");
        assert!(toml::from_str::<SimulateHh>("neurons = 1\nduration_ms = 1.0\nparams = { gna = 1.0 }").is_err(), "unknown parameter name");
    }

    #[test]
    fn a_stimulus_shorter_than_the_run_is_refused() {
        let c = cfg("neurons = 1\nduration_ms = 100.0\nstimulus = { protocol = \"long_square\", amplitude_pa = 100.0, onset_s = 0.01, duration_s = 0.02, total_s = 0.05 }");
        let issues = c.check(&ctx());
        assert!(issues.iter().any(|i| i.message.contains("the run needs")), "{:?}", issues.iter().map(|i| &i.message).collect::<Vec<_>>());
    }

    fn ctx() -> StageContext {
        StageContext::new("hh", ".", 0, ".")
    }

    #[test]
    fn the_example_parses_and_checks() {
        assert!(cfg(SimulateHh::EXAMPLE).check(&ctx()).is_empty());
    }
}

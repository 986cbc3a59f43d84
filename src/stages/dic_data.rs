//! Study 4's learned map from spike times to DICs, as pipeline stages (spec dic_stg.md §4.3, §6):
//!
//! * `dic.targets`: the (g_s, g_u) targets of a data set, drawn by Latin hypercube or uniformly
//!   over the thesis plane [−20, 20] × [0, 20], each tagged `train` or `test` (a held-out set
//!   generated the same way), seeded and independent of the thread count;
//! * `features.isi`: a fixed-length vector of ISI statistics of a spike train, the input of the
//!   regression (the thesis feeds the ISI sequence to a transformer; a tree ensemble on these
//!   summaries is what `pipelines/dic_train.toml` trains instead).
//!
//! The rest of the loop is made of the general stages: `dic.population` (cells per target),
//! `simulate.stg` (6 s, 3 s discarded), `features.bursts` (class), `train.regress` /
//! `train.classify`, `predict.model`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::old_dic::{lists_ms, ms_per_unit, no_clash};
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::dic::features::{ActivityClass, extract_features};
use crate::error::Result;

// ================================================================================================
// dic.targets
// ================================================================================================

/// How the targets fill the plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetSampling {
    /// One target per stratum of each axis (thesis notebook).
    #[default]
    LatinHypercube,
    /// Independent uniform draws (data-set generator repository).
    Uniform,
}

fn d_n() -> usize {
    1000
}
fn d_gs() -> [f64; 2] {
    [-20.0, 20.0]
}
fn d_gu() -> [f64; 2] {
    [0.0, 20.0]
}
fn d_test() -> f64 {
    0.2
}

/// Draws `n` DIC targets (g_s, g_u) over a rectangle, each marked `train` or `test`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicTargets {
    /// Number of targets [targets].
    #[serde(default = "d_n")]
    pub n: usize,
    /// `latin_hypercube` or `uniform` [enum].
    #[serde(default)]
    pub sampling: TargetSampling,
    /// Range of g_s [g_leak].
    #[serde(default = "d_gs")]
    pub g_s_range: [f64; 2],
    /// Range of g_u [g_leak].
    #[serde(default = "d_gu")]
    pub g_u_range: [f64; 2],
    /// Fraction of the targets held out as `test` (chosen at random, seeded) [fraction].
    #[serde(default = "d_test")]
    pub test_fraction: f64,
}

impl DicTargets {
    /// (g_s, g_u, is_test) per target, in target order.
    fn draw(&self, seed: u64) -> Vec<(f64, f64, bool)> {
        let n = self.n;
        let mut rng = StdRng::seed_from_u64(seed);
        let axis = |rng: &mut StdRng, [lo, hi]: [f64; 2]| -> Vec<f64> {
            match self.sampling {
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
        };
        let gs = axis(&mut rng, self.g_s_range);
        let gu = axis(&mut rng, self.g_u_range);
        let n_test = (self.test_fraction * n as f64).round() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..n_test.min(n) {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
        let mut test = vec![false; n];
        for &i in &order[..n_test.min(n)] {
            test[i] = true;
        }
        (0..n).map(|i| (gs[i], gu[i], test[i])).collect()
    }
}

impl StageConfig for DicTargets {
    const KIND: &'static str = "dic.targets";
    const SUMMARY: &'static str = "Draw (g_s, g_u) DIC targets over a rectangle (Latin hypercube or uniform), tagged train/test";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.n == 0 || self.n > 10_000_000 {
            issues.push(Issue::at(&["n"], format!("{} targets; give 1..=10000000", self.n)));
        }
        for (key, [lo, hi]) in [("g_s_range", self.g_s_range), ("g_u_range", self.g_u_range)] {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                issues.push(Issue::at(&[key], format!("[{lo}, {hi}] must be finite with low < high")));
            }
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            issues.push(Issue::at(&["test_fraction"], format!("{} must be in [0, 1)", self.test_fraction)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("target_index", DataType::Int64, false, None),
            field("g_s_target", DataType::Float64, false, Some("g_leak")),
            field("g_u_target", DataType::Float64, false, Some("g_leak")),
            field("split", DataType::Utf8, false, None),
        ])))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(TargetsSource { targets: self.draw(ctx.seed), schema: output.clone(), next: 0 })))
    }
}

struct TargetsSource {
    targets: Vec<(f64, f64, bool)>,
    schema: SchemaRef,
    next: usize,
}

/// Targets per emitted batch: a batch becomes one `dic.population` call, so keep it small
/// enough for the downstream stages to overlap.
const TARGETS_PER_BATCH: usize = 256;

impl SourceOperator for TargetsSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let start = self.next;
        let end = (start + TARGETS_PER_BATCH).min(self.targets.len());
        self.next = end;
        let t = &self.targets[start..end];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((start..end).map(|i| format!("target-{i}")))),
            Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64))),
            Arc::new(Float64Array::from_iter_values(t.iter().map(|x| x.0))),
            Arc::new(Float64Array::from_iter_values(t.iter().map(|x| x.1))),
            Arc::new(StringArray::from_iter_values(t.iter().map(|x| if x.2 { "test" } else { "train" }))),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(self.next < self.targets.len())
    }
}

// ================================================================================================
// features.isi
// ================================================================================================

/// Names of the entries of [`isi_feature_vector`], in order (units in brackets).
pub const ISI_FEATURE_NAMES: [&str; 23] = [
    "rate_hz",
    "log_isi_mean",
    "log_isi_std",
    "log_isi_min",
    "log_isi_max",
    "log_isi_q05",
    "log_isi_q10",
    "log_isi_q25",
    "log_isi_q50",
    "log_isi_q75",
    "log_isi_q90",
    "log_isi_q95",
    "isi_cv",
    "dlog_isi_abs_mean",
    "dlog_isi_std",
    "log_isi_lag1_autocorrelation",
    "fraction_short_isi",
    "class_bursting",
    "spikes_per_burst",
    "burst_duration_ms",
    "f_intra_burst_hz",
    "f_inter_burst_hz",
    "f_spiking_hz",
];

/// numpy's default (linear) quantile of sorted data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The ISI summary of a train in ms (see [`ISI_FEATURE_NAMES`]): the firing rate over the train,
/// the distribution of ln ISI (ms) — mean, std, extremes, quantiles —, CV, the size and
/// correlation of successive ln-ISI changes (bursts alternate short and long intervals), the share
/// of ISIs below the Spike2Pop burst threshold (max + min ISI)/2, and the Spike2Pop class and burst
/// metrics (0 where they do not apply). Shift- and window-length-invariant (rates, not counts), so
/// a 1-s recorded train and a 3-s simulated one are comparable. `None` for fewer than 3 spikes
/// (silent, as Spike2Pop labels them) or a non-increasing train.
pub fn isi_feature_vector(times_ms: &[f64]) -> Option<[f64; 23]> {
    let f = extract_features(times_ms).ok()?;
    if f.label == ActivityClass::Silent {
        return None;
    }
    let isi: Vec<f64> = times_ms.windows(2).map(|w| w[1] - w[0]).collect();
    if isi.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
        return None;
    }
    let n = isi.len() as f64;
    let l: Vec<f64> = isi.iter().map(|d| d.ln()).collect();
    let mut ls = l.clone();
    ls.sort_by(f64::total_cmp);
    let mean_l = l.iter().sum::<f64>() / n;
    let std_l = (l.iter().map(|x| (x - mean_l).powi(2)).sum::<f64>() / n).sqrt();
    let mean_isi = isi.iter().sum::<f64>() / n;
    let cv = (isi.iter().map(|x| (x - mean_isi).powi(2)).sum::<f64>() / n).sqrt() / mean_isi;
    let dl: Vec<f64> = l.windows(2).map(|w| w[1] - w[0]).collect();
    let (dabs, dstd) = if dl.is_empty() {
        (0.0, 0.0)
    } else {
        let m = dl.iter().sum::<f64>() / dl.len() as f64;
        (dl.iter().map(|x| x.abs()).sum::<f64>() / dl.len() as f64, (dl.iter().map(|x| (x - m).powi(2)).sum::<f64>() / dl.len() as f64).sqrt())
    };
    // The interval-structure features (successive changes, lag-1 correlation, short-ISI share)
    // describe bursts; on a regular train (CV ≤ 0.15, Spike2Pop's tonic rule) they measure only
    // integration jitter, which differs between simulators (a BDF-simulated 10 Hz train fed to
    // trees trained on exponential-Euler trains landed in the bursting region). They are 0 there.
    let regular = cv <= 0.15;
    let (dabs, dstd) = if regular { (0.0, 0.0) } else { (dabs, dstd) };
    let lag1 = if !regular && l.len() >= 3 && std_l > 1e-12 {
        let c: f64 = l.windows(2).map(|w| (w[0] - mean_l) * (w[1] - mean_l)).sum::<f64>() / (n - 1.0);
        c / (std_l * std_l)
    } else {
        0.0
    };
    let (min_i, max_i) = (isi.iter().copied().fold(f64::INFINITY, f64::min), isi.iter().copied().fold(0.0, f64::max));
    let thr = 0.5 * (min_i + max_i);
    let short = if regular { 0.0 } else { isi.iter().filter(|&&d| d < thr).count() as f64 / n };
    let z = |x: f64| if x.is_finite() { x } else { 0.0 };
    let span = times_ms[times_ms.len() - 1] - times_ms[0];
    Some([
        1000.0 * n / span,
        mean_l,
        std_l,
        ls[0],
        ls[ls.len() - 1],
        quantile(&ls, 0.05),
        quantile(&ls, 0.10),
        quantile(&ls, 0.25),
        quantile(&ls, 0.50),
        quantile(&ls, 0.75),
        quantile(&ls, 0.90),
        quantile(&ls, 0.95),
        cv,
        dabs,
        dstd,
        lag1,
        short,
        if f.label == ActivityClass::Bursting { 1.0 } else { 0.0 },
        z(f.nbr_spikes_bursting),
        z(f.duration_bursting_ms),
        z(f.f_intra_bursting_hz),
        z(f.f_inter_bursting_hz),
        z(f.f_spiking_hz),
    ])
}

fn d_spikes() -> String {
    "spike_times".into()
}

/// Appends `isi_features` (list of the 23 numbers of [`ISI_FEATURE_NAMES`]; null for a silent or
/// invalid train) computed from a spike-time column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesIsi {
    /// Column with the spike times (list<float64> in ms or s) [column].
    #[serde(default = "d_spikes")]
    pub spike_column: String,
}

impl StageConfig for FeaturesIsi {
    const KIND: &'static str = "features.isi";
    const SUMMARY: &'static str = "Spike train -> fixed vector of ISI statistics (rate, ln-ISI distribution, CV, burst metrics)";
    const CODE_VERSION: u32 = 2;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &["isi_features"]);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut f = Field::new("isi_features", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), true);
        f.set_metadata(std::collections::HashMap::from([("names".to_string(), ISI_FEATURE_NAMES.join(","))]));
        fields.push(f);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let scale = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| crate::error::Error::msg(i.message))?;
        Ok(Operator::Transform(Box::new(IsiOperator { column: self.spike_column.clone(), scale, schema: output.clone() })))
    }
}

struct IsiOperator {
    column: String,
    scale: f64,
    schema: SchemaRef,
}

impl TransformOperator for IsiOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let trains = lists_ms(&batch, &self.column, self.scale)?;
        let vecs: Vec<Option<[f64; 23]>> = trains.iter().map(|t| t.as_deref().and_then(isi_feature_vector)).collect();
        let mut offsets = vec![0i64];
        let mut values = Vec::new();
        for v in &vecs {
            if let Some(v) = v {
                values.extend_from_slice(v);
            }
            offsets.push(values.len() as i64);
        }
        let nulls = NullBuffer::from(vecs.iter().map(Option::is_some).collect::<Vec<bool>>());
        let list = LargeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float64, false)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(Float64Array::from(values)),
            Some(nulls),
        )?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(list));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_hypercube_puts_one_target_in_every_stratum_and_holds_out_the_fraction() {
        let t = DicTargets { n: 200, sampling: TargetSampling::LatinHypercube, g_s_range: [-20.0, 20.0], g_u_range: [0.0, 20.0], test_fraction: 0.25 };
        let d = t.draw(3);
        let mut gs: Vec<usize> = d.iter().map(|x| ((x.0 + 20.0) / 40.0 * 200.0) as usize).collect();
        let mut gu: Vec<usize> = d.iter().map(|x| (x.1 / 20.0 * 200.0) as usize).collect();
        gs.sort();
        gu.sort();
        assert_eq!(gs, (0..200).collect::<Vec<_>>());
        assert_eq!(gu, (0..200).collect::<Vec<_>>());
        assert_eq!(d.iter().filter(|x| x.2).count(), 50);
        assert_eq!(d, t.draw(3), "seeded");
        assert_ne!(d, t.draw(4));
    }

    #[test]
    fn isi_features_of_a_periodic_train_and_of_a_burster() {
        let tonic: Vec<f64> = (0..20).map(|k| 3000.0 + 100.0 * k as f64).collect();
        let v = isi_feature_vector(&tonic).unwrap();
        assert!((v[0] - 10.0).abs() < 1e-9, "rate {}", v[0]);
        assert!((v[1] - 100f64.ln()).abs() < 1e-12 && v[2].abs() < 1e-12 && v[12].abs() < 1e-12);
        assert_eq!(v[17], 0.0, "tonic");
        assert_eq!(&v[13..17], &[0.0; 4], "no burst structure on a regular train");
        // Bursts of 4 spikes 10 ms apart every 500 ms.
        let burst: Vec<f64> = (0..8).flat_map(|b| (0..4).map(move |s| 500.0 * b as f64 + 10.0 * s as f64)).collect();
        let v = isi_feature_vector(&burst).unwrap();
        assert_eq!(v[17], 1.0, "bursting");
        assert!((v[18] - 4.0).abs() < 1e-12, "spikes per burst {}", v[18]);
        assert!((v[16] - 24.0 / 31.0).abs() < 1e-12, "short-ISI share {}", v[16]);
        assert!(v[15] < 0.0, "short and long intervals alternate: negative lag-1 correlation");
        assert!(isi_feature_vector(&[1.0, 2.0]).is_none(), "fewer than 3 spikes is silent");
        assert!(isi_feature_vector(&[1.0, 3.0, 2.0, 4.0]).is_none(), "unsorted");
    }
}

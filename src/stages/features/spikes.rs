//! `features.spikes`: IPFX spike detection and per-spike features on every sweep of the sweeps
//! table; one row per spike.
//!
//! Each sweep (`response` mV, `sampling_rate_hz`, optional `stimulus` pA) becomes IPFX's spike
//! table with the kernel of [`crate::features::spikes`] (IPFX 2.1.2 `SpikeFeatureExtractor`, every
//! option exposed with IPFX's default; the per-sweep analysis is shared with `features.sweep`, see
//! [`super::sweep_analysis`]).
//!
//! Simulated sweeps: when the input has a `model_spike_times` column (s) and a row holds a
//! non-null list, those times are the spikes (the simulator knows when its model fired; detecting
//! on the voltage counted spikes that were not there in study 3). Then only `threshold_t` (the
//! model time), `threshold_index` (nearest sample), `threshold_v` and `threshold_i` (the sample
//! there) are filled; every other spike column is null and `detection` says `model_spike_times`.
//!
//! Chunk rows (`ingest.abf` with `chunk_s`, columns `chunk_start_s`, `chunk_end_s`,
//! `trace_start_s`): detection runs on the row's trace (the chunk and its overlap margins) and
//! keeps the spikes whose peak lies in the chunk's core `[chunk_start_s, chunk_end_s)`, with
//! indices and times in the whole sweep's time base (`index · dt`, the values a whole-sweep run
//! gives) and spike numbers counted on across the chunks of a sweep. The peak, not the threshold,
//! assigns a spike to a chunk: the peak depends only on the dV/dt crossing and the voltage next to
//! it, so two overlapping chunks always agree on it, whereas IPFX's threshold is refined with the
//! mean upstroke of all spikes in the analysed trace, which differs between chunks. Hence what
//! equals a whole-sweep run and what does not: the spikes found and their peaks are the same when
//! the margins hold the context of every spike; thresholds (and what is measured from them) can
//! move by a sample when a chunk's spikes have a different mean upstroke than the sweep's; the last
//! spike of a trace gets its trough searched to the trace end, not to the next spike or the sweep
//! end.
//!
//! Every sweep is processed independently (rayon, one reused
//! [`crate::features::spikes::SpikeWorkspace`] per worker); a sweep that cannot be processed (too
//! short, NaN samples, mismatched lengths, a sampling rate too low for the Bessel filter) fails
//! alone as `out.fail("<recording_id>/<sweep>", reason)`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Schema, SchemaRef};

use super::sweep_analysis::{
    Detection, SweepColumns, SweepResult, SweepSpikes, WindowMode, analyse_batch, check_chunk_columns, check_sweeps_input, detection_config,
    is_chunked, list_row,
};
use crate::error::Result;
use crate::features::spikes::{IsiType, SlopePoint, TracePoint};
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

detection_config! {
    /// Detects spikes in every sweep with IPFX's algorithm; one row per spike.
    FeaturesSpikes
}

const POINTS: [&str; 6] = ["threshold", "peak", "trough", "fast_trough", "adp", "slow_trough"];
const SLOPES: [&str; 2] = ["upstroke", "downstroke"];

/// The spikes table: keys, then IPFX's columns (with `_i` current columns), units in metadata.
pub fn spikes_schema() -> SchemaRef {
    let mut fields = vec![
        field("recording_id", DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("spike", DataType::Int64, false, None),
        field("detection", DataType::Utf8, false, None),
    ];
    for p in POINTS {
        fields.push(field(&format!("{p}_index"), DataType::Int64, true, None));
        fields.push(field(&format!("{p}_t"), DataType::Float64, true, Some("s")));
        fields.push(field(&format!("{p}_v"), DataType::Float64, true, Some("mV")));
        fields.push(field(&format!("{p}_i"), DataType::Float64, true, Some("pA")));
    }
    for s in SLOPES {
        fields.push(field(&format!("{s}_index"), DataType::Int64, true, None));
        fields.push(field(&format!("{s}_t"), DataType::Float64, true, Some("s")));
        fields.push(field(&format!("{s}_v"), DataType::Float64, true, Some("mV")));
        fields.push(field(s, DataType::Float64, true, Some("V/s")));
    }
    fields.push(field("isi_type", DataType::Utf8, true, None));
    fields.push(field("width", DataType::Float64, true, Some("s")));
    fields.push(field("upstroke_downstroke_ratio", DataType::Float64, true, Some("1")));
    fields.push(field("clipped", DataType::Boolean, true, None));
    Arc::new(Schema::new(fields))
}

/// One output row, before it becomes columns.
struct SpikeRow<'a> {
    recording_id: &'a str,
    sweep: i64,
    spike: i64,
    model: bool,
    points: [Option<TracePoint>; 6],
    slopes: [Option<SlopePoint>; 2],
    isi_type: Option<IsiType>,
    width_s: Option<f64>,
    ratio: Option<f64>,
    clipped: Option<bool>,
}

/// With chunk rows, the sweep whose chunks are arriving and its next spike number (chunks of a
/// sweep arrive in order, one source file after the other).
type SpikeCounter = Option<(String, i64, i64)>;

fn spike_rows<'a>(cols: &'a SweepColumns, results: &[(usize, SweepResult)], counter: &mut SpikeCounter) -> Vec<SpikeRow<'a>> {
    let mut rows = Vec::new();
    for (row, res) in results {
        let (recording_id, sweep) = (cols.recording_id.value(*row), cols.sweep.value(*row));
        // Spike numbers continue across the chunks of one sweep.
        let first_number = match counter {
            Some((id, s, next)) if cols.chunk.is_some() && id == recording_id && *s == sweep => *next,
            _ => 0,
        };
        match &res.spikes {
            SweepSpikes::Detected(spikes) => {
                if cols.chunk.is_some() {
                    *counter = Some((recording_id.to_string(), sweep, first_number + spikes.len() as i64));
                }
                for (k, s) in spikes.iter().enumerate() {
                    rows.push(SpikeRow {
                        recording_id,
                        sweep,
                        spike: first_number + k as i64,
                        model: false,
                        points: [Some(s.threshold), Some(s.peak), s.trough, s.fast_trough, s.adp, s.slow_trough],
                        slopes: [s.upstroke, s.downstroke],
                        isi_type: s.isi_type,
                        width_s: s.width_s,
                        ratio: s.upstroke_downstroke_ratio,
                        clipped: Some(s.clipped),
                    });
                }
            }
            SweepSpikes::Model(times) => {
                let response = list_row::<Float32Type>(&cols.response, *row, "response").unwrap_or(&[]);
                let stimulus = cols.stimulus.as_ref().and_then(|s| list_row::<Float32Type>(s, *row, "stimulus").ok());
                for (k, &(t_s, index)) in times.iter().enumerate() {
                    let threshold = TracePoint {
                        index,
                        t_s,
                        v_mv: response.get(index).map_or(f64::NAN, |&v| f64::from(v)),
                        i_pa: stimulus.and_then(|s| s.get(index)).map(|&i| f64::from(i)),
                    };
                    rows.push(SpikeRow {
                        recording_id,
                        sweep,
                        spike: k as i64,
                        model: true,
                        points: [Some(threshold), None, None, None, None, None],
                        slopes: [None, None],
                        isi_type: None,
                        width_s: None,
                        ratio: None,
                        clipped: None,
                    });
                }
            }
        }
    }
    rows
}

fn spikes_batch(schema: &SchemaRef, rows: &[SpikeRow<'_>]) -> Result<RecordBatch> {
    let f64s = |f: &dyn Fn(&SpikeRow) -> Option<f64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Float64Array>()) };
    let i64s = |f: &dyn Fn(&SpikeRow) -> Option<i64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Int64Array>()) };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(r.recording_id)).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.sweep).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.spike).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| Some(if r.model { "model_spike_times" } else { "ipfx" })).collect::<StringArray>()),
    ];
    for p in 0..POINTS.len() {
        columns.push(i64s(&|r| r.points[p].map(|x| x.index as i64)));
        columns.push(f64s(&|r| r.points[p].map(|x| x.t_s)));
        columns.push(f64s(&|r| r.points[p].map(|x| x.v_mv).filter(|v| !v.is_nan())));
        columns.push(f64s(&|r| r.points[p].and_then(|x| x.i_pa)));
    }
    for s in 0..SLOPES.len() {
        columns.push(i64s(&|r| r.slopes[s].map(|x| x.index as i64)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.t_s)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.v_mv)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.dvdt_v_per_s)));
    }
    columns.push(Arc::new(
        rows.iter()
            .map(|r| {
                r.isi_type.map(|t| match t {
                    IsiType::Direct => "direct",
                    IsiType::Detour => "detour",
                })
            })
            .collect::<StringArray>(),
    ));
    columns.push(f64s(&|r| r.width_s));
    columns.push(f64s(&|r| r.ratio));
    columns.push(Arc::new(rows.iter().map(|r| r.clipped).collect::<BooleanArray>()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl StageConfig for FeaturesSpikes {
    const KIND: &'static str = "features.spikes";
    const SUMMARY: &'static str = "IPFX spike detection and per-spike features on every sweep; one row per spike";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "filter_khz = 10.0\ndv_cutoff_v_per_s = 20.0";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let window_needs_stimulus = matches!(self.window, Some(WindowMode::Stimulus | WindowMode::FirstStep));
        check_sweeps_input(&inputs[0], window_needs_stimulus)?;
        if is_chunked(&inputs[0]) {
            check_chunk_columns(&inputs[0])?;
            let mut issues = Vec::new();
            if self.window.is_some_and(|w| w != WindowMode::Sweep) || self.start_s.is_some() || self.end_s.is_some() {
                issues.push(Issue::at(&["window"], "the input holds chunk rows (ingest.abf chunk_s): only window = \"sweep\" applies; remove window/start_s/end_s or chunk_s"));
            }
            if inputs[0].field_with_name("model_spike_times").is_ok() {
                issues.push(Issue::at(&["inputs"], "chunk rows with `model_spike_times` are not supported"));
            }
            if !issues.is_empty() {
                return Err(issues);
            }
        }
        Ok(spikes_schema())
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SpikesOp { detection: self.detection(WindowMode::Sweep), schema: output.clone(), counter: None })))
    }
}

struct SpikesOp {
    detection: Detection,
    schema: SchemaRef,
    counter: SpikeCounter,
}

impl TransformOperator for SpikesOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let (cols, results) = analyse_batch(&batch, &self.detection, out)?;
        let rows = spike_rows(&cols, &results, &mut self.counter);
        out.emit(spikes_batch(&self.schema, &rows)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;

    use super::super::detection::{Cutoff, NoFilter};
    use super::super::sweep_analysis::test_support::{run_transform, seven_sweeps};
    use super::*;
    use crate::features::spikes::SpikeDetectionParams;

    #[test]
    fn bad_sweeps_fail_alone_and_model_times_are_used() {
        let batch = seven_sweeps();
        let cfg: FeaturesSpikes = toml::from_str("").unwrap();
        let out = run_transform(&cfg, batch);
        let failures: Vec<(String, String)> = out.failures.iter().map(|f| (f.unit.clone(), f.message.clone())).collect();
        let units: Vec<&str> = failures.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(units, ["r/1", "r/2", "r/3", "r/4", "r/6"], "{failures:?}");
        assert!(failures[0].1.contains("v_mv[5] is not finite"), "{}", failures[0].1);
        assert!(failures[1].1.contains("10 samples"), "{}", failures[1].1);
        assert!(failures[2].1.contains("stimulus has 999 samples but response has 1000"), "{}", failures[2].1);
        assert!(failures[3].1.contains("20000 Hz") && failures[3].1.contains("filter_khz = \"none\""), "{}", failures[3].1);
        assert!(failures[4].1.contains("sampling_rate_hz = 0"), "{}", failures[4].1);
        // sweep 5: the model's three spike times, nothing detected on the flat trace
        assert_eq!(out.batches.len(), 1);
        let b = &out.batches[0];
        assert_eq!(b.num_rows(), 3);
        let t = b.column_by_name("threshold_t").unwrap().as_primitive::<Float64Type>();
        assert_eq!(t.values().to_vec(), vec![0.001, 0.005, 0.019]);
        let idx = b.column_by_name("threshold_index").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(idx.values().to_vec(), vec![50, 250, 950]);
        let i = b.column_by_name("threshold_i").unwrap().as_primitive::<Float64Type>();
        assert_eq!(i.values().to_vec(), vec![0.0, 50.0, 0.0]);
        assert!(b.column_by_name("peak_index").unwrap().is_null(0));
        assert_eq!(b.column_by_name("detection").unwrap().as_string::<i32>().value(0), "model_spike_times");
    }

    #[test]
    fn filter_option_accepts_numbers_and_none() {
        let c: FeaturesSpikes = toml::from_str("filter_khz = \"none\"\nheavy_filter_khz = 2").unwrap();
        assert_eq!(c.filter_khz, Cutoff::Off(NoFilter::None));
        assert_eq!(c.heavy_filter_khz, Cutoff::Khz(2.0));
        assert_eq!(c.detection(WindowMode::Sweep).params.filter_khz, None);
        let d: FeaturesSpikes = toml::from_str("").unwrap();
        assert_eq!(d.detection(WindowMode::Sweep).params, SpikeDetectionParams::default());
        assert!(toml::from_str::<FeaturesSpikes>("filter_khz = \"off\"").is_err());
        assert!(toml::from_str::<FeaturesSpikes>("filter = 5").is_err());
        let bad: FeaturesSpikes = toml::from_str("max_interval_s = -1\nstart_s = 2\nend_s = 1\nwindow = \"sweep\"").unwrap();
        let issues = bad.issues();
        let keys: Vec<String> = issues.iter().map(|i| format!("{:?}", i.path)).collect();
        assert_eq!(issues.len(), 3, "{keys:?}");
    }
}

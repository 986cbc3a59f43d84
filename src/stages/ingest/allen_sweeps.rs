//! `ingest.allen_sweeps`: per-sweep metadata and spike counts of Allen `ephys_sweeps.json` files
//! (one specimen each), with the numbers of the cell's fitted GLIF model beside them.
//!
//! Role in study 1 (specs/studies.md): the study's features were constant within a cell (a stale
//! stimulus window), so its model could not see the amplitude. This stage gives each sweep its
//! real stimulus (type, amplitude, onset, duration from Allen's metadata) and each cell a few
//! numbers of its fitted GLIF model, computed without looking at any spike count.
//!
//! Allen's `num_spikes` is null both when a sweep had no spike and when it was not analysed;
//! for current-clamp sweeps the Allen feature extractor runs on every sweep, so `spike_count`
//! takes null as 0 (the raw value stays in `num_spikes`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::expand_paths;
use crate::error::{Error, Result};
use crate::formats::allen::read_ephys_sweeps;
use crate::simulate::glif;
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

/// Allen stimulus names and the code `stimulus_code` gives them (a number a model can split on;
/// the order is the Allen protocol's, not a magnitude). Any other name gets 99.
pub const STIMULUS_CODES: [(&str, i64); 11] = [
    ("Test", 0),
    ("Long Square", 1),
    ("Short Square", 2),
    ("Short Square - Triple", 3),
    ("Short Square - Hold -60mV", 4),
    ("Ramp", 5),
    ("Ramp to Rheobase", 6),
    ("Noise 1", 7),
    ("Noise 2", 8),
    ("Square - 2s Suprathreshold", 9),
    ("Square - 0.5ms Subthreshold", 10),
];

fn stimulus_code(name: &str) -> i64 {
    STIMULUS_CODES.iter().find(|(n, _)| *n == name).map_or(99, |(_, c)| *c)
}

fn d_config_name() -> Option<String> {
    Some("neuron_config.json".into())
}
fn yes() -> bool {
    true
}

/// Reads Allen `ephys_sweeps.json` files (one specimen each) into one row per sweep.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestAllenSweeps {
    /// `ephys_sweeps.json` files, glob patterns (`data/cells/*/ephys_sweeps.json`) or folders
    /// (every `*.json` directly inside), relative to the pipeline file [paths].
    pub paths: Vec<String>,
    /// Keep only current-clamp sweeps (`stimulus_units` "Amps" or "pA") [bool].
    #[serde(default = "yes")]
    pub current_clamp_only: bool,
    /// File name of the cell's GLIF `neuron_config.json`, looked up beside each sweeps file; its
    /// parameters become the `model_*` columns and its text the `neuron_config` column (null
    /// when the file is absent). Empty string = do not look [file name].
    #[serde(default = "d_config_name")]
    pub neuron_config: Option<String>,
}

impl IngestAllenSweeps {
    fn files(&self, ctx: &StageContext) -> std::result::Result<Vec<PathBuf>, Vec<Issue>> {
        expand_paths(ctx, "paths", &self.paths, "json")
    }

    /// The files at run time (the first issue becomes the stage's error).
    fn run_files(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        self.files(ctx).map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i[0].message)))
    }

    fn config_beside(&self, sweeps_file: &Path) -> Option<PathBuf> {
        let name = self.neuron_config.as_deref().filter(|n| !n.is_empty())?;
        let p = sweeps_file.parent()?.join(name);
        p.is_file().then_some(p)
    }
}

/// The table this stage emits.
pub fn allen_sweeps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("stimulus_name", DataType::Utf8, false, None),
        field("stimulus_code", DataType::Int64, false, None),
        field("stimulus_amplitude", DataType::Float64, true, Some("pA")),
        field("stimulus_start_s", DataType::Float64, true, Some("s")),
        field("stimulus_duration_s", DataType::Float64, true, Some("s")),
        field("num_spikes", DataType::Int64, true, None),
        field("spike_count", DataType::Int64, false, None),
        field("neuronal_model_id", DataType::Utf8, true, None),
        field("model_r_input_mohm", DataType::Float64, true, Some("MΩ")),
        field("model_c_pf", DataType::Float64, true, Some("pF")),
        field("model_tau_ms", DataType::Float64, true, Some("ms")),
        field("model_threshold_mv", DataType::Float64, true, Some("mV")),
        field("model_rheobase_pa", DataType::Float64, true, Some("pA")),
        field("drive_over_model_rheobase", DataType::Float64, true, Some("1")),
        field("neuron_config", DataType::Utf8, true, None),
    ]))
}

impl StageConfig for IngestAllenSweeps {
    const KIND: &'static str = "ingest.allen_sweeps";
    const SUMMARY: &'static str =
        "Read Allen ephys_sweeps.json files: one row per sweep (stimulus type, amplitude, onset, duration, Allen's spike count) plus the cell's GLIF model";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"data/cells/*/ephys_sweeps.json\"]";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each row is one sweep of the one file it is read from.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        if self.paths.is_empty() {
            return vec![Issue::at(&["paths"], "give at least one ephys_sweeps.json file, glob pattern or folder")];
        }
        self.files(ctx).err().unwrap_or_default()
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(allen_sweeps_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let files = self.run_files(ctx)?;
        let mut all = files.clone();
        all.extend(files.iter().filter_map(|f| self.config_beside(f)));
        Ok(all)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(AllenSweepsSource { files: self.run_files(ctx)?, next: 0, cfg: self.clone(), schema: output.clone() })))
    }
}

/// Emits one cell (file) per call; a file that cannot be read fails alone.
struct AllenSweepsSource {
    files: Vec<PathBuf>,
    next: usize,
    cfg: IngestAllenSweeps,
    schema: SchemaRef,
}

impl SourceOperator for AllenSweepsSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next).cloned() else { return Ok(false) };
        self.next += 1;
        match read_cell(&path, &self.cfg, &self.schema) {
            Ok(batch) => out.emit(batch),
            Err(e) => out.fail(path.display().to_string(), e.to_string()),
        }
        Ok(self.next < self.files.len())
    }
}

/// Model numbers of one cell, from its GLIF config.
struct CellModel {
    id: Option<String>,
    text: String,
    r_mohm: f64,
    c_pf: f64,
    tau_ms: f64,
    threshold_mv: f64,
    rheobase_pa: f64,
}

fn read_model(path: &Path) -> Result<CellModel> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::msg(format!("{}: cannot read the file: {e}", path.display())))?;
    let configs = glif::parse_neuron_configs(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let [c] = configs.as_slice() else {
        return Err(Error::msg(format!("{}: holds {} configs; one cell has one model", path.display(), configs.len())));
    };
    let m = c.effective_membrane();
    Ok(CellModel {
        id: c.neuronal_model_id.clone(),
        text,
        r_mohm: m.r_ohm * 1e-6,
        c_pf: m.c_farad * 1e12,
        tau_ms: m.tau_s * 1e3,
        threshold_mv: m.th_inf_v * 1e3,
        rheobase_pa: c.rough_rheobase_a() * 1e12,
    })
}

/// One cell's sweeps (current clamp only, if asked) with its model's numbers on every row.
fn read_cell(path: &Path, cfg: &IngestAllenSweeps, schema: &SchemaRef) -> Result<RecordBatch> {
    let sweeps = read_ephys_sweeps(path).map_err(|e| Error::msg(e.to_string()))?;
    let sweeps: Vec<_> = sweeps.into_iter().filter(|s| !cfg.current_clamp_only || s.is_current_clamp()).collect();
    if let Some(s) = sweeps.windows(2).find(|w| w[0].specimen_id != w[1].specimen_id) {
        return Err(Error::msg(format!("{}: sweeps of two specimens ({} and {}); one file per cell", path.display(), s[0].specimen_id, s[1].specimen_id)));
    }
    let model = cfg.config_beside(path).map(|p| read_model(&p)).transpose()?;
    let n = sweeps.len();
    let amp: Vec<Option<f64>> = sweeps.iter().map(|s| s.amplitude_pa()).collect();
    let m = |f: &dyn Fn(&CellModel) -> f64| -> ArrayRef { Arc::new(Float64Array::from(vec![model.as_ref().map(f); n])) };
    let drive: Float64Array = amp.iter().map(|a| Some((*a)? / model.as_ref()?.rheobase_pa)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(sweeps.iter().map(|s| s.specimen_id.to_string()))),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| i64::from(s.sweep_number)))),
        Arc::new(StringArray::from_iter_values(sweeps.iter().map(|s| s.stimulus_name.clone()))),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| stimulus_code(&s.stimulus_name)))),
        Arc::new(Float64Array::from(amp.clone())),
        Arc::new(sweeps.iter().map(|s| s.stimulus_start_time_s).collect::<Float64Array>()),
        Arc::new(sweeps.iter().map(|s| s.stimulus_duration_s).collect::<Float64Array>()),
        Arc::new(sweeps.iter().map(|s| s.num_spikes.map(i64::from)).collect::<Int64Array>()),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| i64::from(s.num_spikes.unwrap_or(0))))),
        Arc::new(StringArray::from(vec![model.as_ref().and_then(|m| m.id.clone()); n])),
        m(&|c| c.r_mohm),
        m(&|c| c.c_pf),
        m(&|c| c.tau_ms),
        m(&|c| c.threshold_mv),
        m(&|c| c.rheobase_pa),
        Arc::new(drive),
        Arc::new(StringArray::from(vec![model.as_ref().map(|m| m.text.clone()); n])),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stimulus_codes_are_distinct() {
        let mut c: Vec<i64> = STIMULUS_CODES.iter().map(|x| x.1).collect();
        c.sort_unstable();
        c.dedup();
        assert_eq!(c.len(), STIMULUS_CODES.len());
        assert_eq!(stimulus_code("Long Square"), 1);
        assert_eq!(stimulus_code("Something new"), 99);
    }

    #[test]
    fn the_example_parses() {
        let cfg: IngestAllenSweeps = toml::from_str(IngestAllenSweeps::EXAMPLE).unwrap();
        assert_eq!(cfg.neuron_config.as_deref(), Some("neuron_config.json"));
    }
}

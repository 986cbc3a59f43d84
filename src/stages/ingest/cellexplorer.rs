//! `ingest.cellexplorer`: CellExplorer files into the units table.
//!
//! Reads CellExplorer `*.cell_metrics.cellinfo.mat` files (v5 or v7.3, with
//! [`crate::formats::matlab::read_cell_metrics`]) and emits the units table of DESIGN.md, one
//! batch per file, one row per unit: its spike times (s), its mean filtered waveform (µV) on its
//! own time axis (ms), its session, brain region, CellExplorer's putative cell type and, where
//! the file carries `groundTruthClassification`, a ground-truth class. As in `ingest.abf`, a
//! unit's `recording_id` comes from the content of its file (the first hex digits of the file's
//! blake3 hash) plus the unit's position in the file, so a renamed file keeps its units' ids. A
//! file that cannot be read fails alone (`out.fail(path, reader error)`); the others flow.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{check_file_source, content_id, source_files};
use crate::error::Result;
use crate::formats::matlab::{CellExplorerUnit, read_cell_metrics};
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

fn default_hash_hex_chars() -> usize {
    16
}

/// Reads CellExplorer `cell_metrics` files into the units table, one batch per file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestCellExplorer {
    /// CellExplorer `*.cell_metrics.cellinfo.mat` files, glob patterns or folders (every `*.mat`
    /// directly inside), relative to the pipeline file; read in sorted path order [paths].
    pub paths: Vec<String>,
    /// Hex digits of the file's blake3 hash that start each unit's `recording_id` (8..=64) [digits].
    #[serde(default = "default_hash_hex_chars")]
    pub hash_hex_chars: usize,
}

fn f64_list_type() -> DataType {
    DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false)))
}

fn f64_list(name: &str, unit: &str) -> Field {
    field(name, f64_list_type(), false, Some(unit))
}

/// The units table this stage emits (DESIGN.md "units"; the waveform is a variable-length list
/// because its length follows the recording's sampling rate: 16 samples at 10 kHz, 32 at 20 kHz).
pub fn units_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("unit_id", DataType::Int64, false, None),
        field("session", DataType::Utf8, false, None),
        field("file", DataType::Utf8, false, None),
        field("brain_region", DataType::Utf8, false, None),
        field("putative_cell_type", DataType::Utf8, false, None),
        field("ground_truth", DataType::Utf8, true, None),
        field("ground_truth_source", DataType::Utf8, true, None),
        field("sampling_rate_hz", DataType::Float64, true, Some("Hz")),
        field("spike_count", DataType::Int64, false, None),
        f64_list("spike_times", "s"),
        f64_list("waveform", "uV"),
        f64_list("waveform_time", "ms"),
    ]))
}

/// The class a CellExplorer ground-truth tag implies. CellExplorer's ground-truth set tags
/// opto-tagged or otherwise identified cells by type: PV, SST, VIP, VGAT and axo-axonic cells
/// (all GABAergic interneurons) and pyramidal cells (cellexplorer.org, "Ground truth data").
/// Other tags name how a cell was identified, not what it is (`Juxta`: a juxtacellular recording
/// of the hc-1 set), and give no class.
pub fn ground_truth_class(tags: &[String]) -> Option<&'static str> {
    let norm = |t: &str| t.to_ascii_lowercase().replace(['-', '_', ' '], "");
    let mut class = None;
    for t in tags {
        let c = match norm(t).as_str() {
            "pv" | "sst" | "vip" | "vgat" | "axoaxonic" | "interneuron" => "interneuron",
            "pyramidal" | "pyramidalcell" => "pyramidal",
            _ => continue,
        };
        if class.is_some_and(|k| k != c) {
            return None; // contradictory tags: no class rather than a guess
        }
        class = Some(c);
    }
    class
}

impl StageConfig for IngestCellExplorer {
    const KIND: &'static str = "ingest.cellexplorer";
    const SUMMARY: &'static str =
        "Read CellExplorer cell_metrics .mat files (v5, v7.3) into the units table: spike times, mean waveform, labels";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"units/*.cell_metrics.cellinfo.mat\"]";

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        check_file_source(ctx, &self.paths, "mat", ".mat file", self.hash_hex_chars)
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(units_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        source_files(ctx, &self.paths, "mat")
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(CellExplorerSource {
            files: self.external_inputs(ctx)?,
            next_file: 0,
            seen: HashSet::new(),
            hash_hex_chars: self.hash_hex_chars,
            schema: output.clone(),
        })))
    }
}

/// Emits one file per call.
struct CellExplorerSource {
    files: Vec<PathBuf>,
    next_file: usize,
    /// File hashes already emitted: a byte-identical copy holds the same units.
    seen: HashSet<String>,
    hash_hex_chars: usize,
    schema: SchemaRef,
}

impl SourceOperator for CellExplorerSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        let label = path.display().to_string();
        match read_units_batch(&path, self.hash_hex_chars, &self.schema) {
            Ok((id, batch)) => {
                if self.seen.insert(id.clone()) {
                    out.emit(batch);
                } else {
                    tracing::warn!("{label}: same content as an earlier file ({id}); skipped");
                }
            }
            Err(message) => out.fail(label, message),
        }
        Ok(self.next_file < self.files.len())
    }
}

/// A `large_list<float64>` column from per-row slices.
fn f64_list_array(rows: &[&[f64]]) -> std::result::Result<LargeListArray, arrow::error::ArrowError> {
    let mut values = Vec::with_capacity(rows.iter().map(|r| r.len()).sum());
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i64);
    for r in rows {
        values.extend_from_slice(r);
        offsets.push(values.len() as i64);
    }
    LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float64, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(Float64Array::from(values)),
        None,
    )
}

/// Reads one file into a units batch; the error is the reader's message (it names the file and
/// the variable).
fn read_units_batch(path: &Path, hex_chars: usize, schema: &SchemaRef) -> std::result::Result<(String, RecordBatch), String> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{label}: cannot read the file: {e}"))?;
    let id = content_id(&bytes, hex_chars);
    drop(bytes);
    let cm = read_cell_metrics(path).map_err(|e| e.to_string())?;
    let units: &[CellExplorerUnit] = &cm.units;
    for (k, u) in units.iter().enumerate() {
        if !(u.uid.is_finite() && u.uid.fract() == 0.0 && u.uid.abs() < 9.0e15) {
            return Err(format!("{label}: cell_metrics.UID({}) = {} is not an integer unit id", k + 1, u.uid));
        }
    }
    if let Some(sr) = cm.sampling_rate_hz
        && !(sr.is_finite() && sr > 0.0)
    {
        return Err(format!("{label}: cell_metrics.sr = {sr} is not a positive sampling rate [Hz]"));
    }
    let stem = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let stem = stem.strip_suffix(".cell_metrics.cellinfo.mat").or_else(|| stem.strip_suffix(".mat")).unwrap_or(&stem).to_string();
    let n = units.len();
    let strings = |f: &dyn Fn(&CellExplorerUnit) -> Option<String>| -> ArrayRef {
        Arc::new(units.iter().map(f).collect::<StringArray>())
    };
    let lists = |f: &dyn Fn(&CellExplorerUnit) -> &[f64]| -> std::result::Result<ArrayRef, String> {
        let rows: Vec<&[f64]> = units.iter().map(f).collect();
        Ok(Arc::new(f64_list_array(&rows).map_err(|e| format!("{label}: {e}"))?))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values((0..n).map(|k| format!("{id}-{k}")))),
        Arc::new(units.iter().map(|u| u.uid as i64).collect::<Int64Array>()),
        strings(&|u| Some(u.session_name.clone())),
        Arc::new(StringArray::from(vec![stem.as_str(); n])),
        strings(&|u| Some(u.brain_region.clone())),
        strings(&|u| Some(u.putative_cell_type.clone())),
        strings(&|u| ground_truth_class(&u.ground_truth).map(str::to_string)),
        strings(&|u| (!u.ground_truth.is_empty()).then(|| u.ground_truth.join("+"))),
        Arc::new(Float64Array::from(vec![cm.sampling_rate_hz; n])),
        Arc::new(units.iter().map(|u| u.spike_times_s.len() as i64).collect::<Int64Array>()),
        lists(&|u| &u.spike_times_s)?,
        lists(&|u| &u.waveform_filt_uv)?,
        lists(&|u| &u.waveform_time_ms)?,
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("{label}: {e}"))?;
    Ok((id, batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_tags_map_to_classes() {
        let t = |v: &[&str]| ground_truth_class(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["PV"]), Some("interneuron"));
        assert_eq!(t(&["Axo_Axonic"]), Some("interneuron"));
        assert_eq!(t(&["axo-axonic", "SST"]), Some("interneuron"));
        assert_eq!(t(&["Pyramidal"]), Some("pyramidal"));
        assert_eq!(t(&["Juxta"]), None);
        assert_eq!(t(&[]), None);
        assert_eq!(t(&["PV", "Pyramidal"]), None);
    }
}

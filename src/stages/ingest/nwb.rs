//! `ingest.nwb`: NWB 2 intracellular-electrophysiology recordings into the same sweeps table as
//! `ingest.abf` ([`super::sweeps_table`]), read with [`crate::formats::nwb`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{FileBatches, check_file_source, content_id, default_hash_hex_chars, reader_error, single_folder_watch, source_files};
use super::sweeps_table::{list_item_field, sweeps_schema};
use crate::error::{Error, Result};
use crate::stage::columns::f32_list_array;
use crate::stage::{Arity, Issue, Operator, Partitioning, StageConfig, StageContext};

/// Reads NWB 2 intracellular-electrophysiology files (`CurrentClampSeries` with their paired
/// `CurrentClampStimulusSeries`, pynwb's layout) into the same sweeps table as `ingest.abf`:
/// membrane potential in mV and command in pA (NWB stores volts and amperes with a conversion
/// factor; the reader applies it), one batch per file, each file one recording named by its
/// content hash. A file with missing or mistyped pieces fails alone, naming the file and the
/// HDF5 path.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestNwb {
    /// NWB files, glob patterns or folders (every `*.nwb` directly inside), relative to the
    /// pipeline file [paths].
    pub paths: Vec<String>,
    /// Hex digits of the file's blake3 hash kept as `recording_id` (8..=64) [digits].
    #[serde(default = "default_hash_hex_chars")]
    pub hash_hex_chars: usize,
}

impl StageConfig for IngestNwb {
    const KIND: &'static str = "ingest.nwb";
    const SUMMARY: &'static str = "Read NWB 2 current-clamp files (paths, globs, folders) into the sweeps table, one batch per file";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"recordings/*.nwb\"]";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each row is one sweep of the one file it is read from.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        check_file_source(ctx, &self.paths, "nwb", "NWB file", self.hash_hex_chars)
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(sweeps_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        source_files(ctx, &self.paths, "nwb")
    }

    fn watch(&self, ctx: &StageContext) -> Option<crate::stage::WatchSource> {
        single_folder_watch(ctx, &self.paths, "nwb")
    }

    fn restrict_to(&self, files: &[PathBuf]) -> Option<Self> {
        Some(IngestNwb { paths: files.iter().map(|f| f.to_string_lossy().to_string()).collect(), ..self.clone() })
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let (hex_chars, schema) = (self.hash_hex_chars, output.clone());
        Ok(Operator::Source(Box::new(FileBatches::new(self.external_inputs(ctx)?, move |path: &Path| read_nwb_batch(path, hex_chars, &schema)))))
    }
}

/// Reads one file into a sweeps batch; a missing or mistyped piece fails the file, naming it.
fn read_nwb_batch(path: &Path, hash_hex_chars: usize, schema: &SchemaRef) -> Result<(String, RecordBatch)> {
    let bytes = std::fs::read(path).map_err(|e| Error::msg(format!("{}: cannot read the file: {e}", path.display())))?;
    let id = content_id(&bytes, hash_hex_chars);
    drop(bytes);
    let label = path.display().to_string();
    let nwb = crate::formats::nwb::read_nwb_icephys(path).map_err(reader_error)?;
    if nwb.sweeps.is_empty() {
        return Err(Error::msg(format!("{label}: no CurrentClampSeries in /acquisition")));
    }
    let n = nwb.sweeps.len();
    let mut responses: Vec<&[f32]> = Vec::with_capacity(n);
    let mut stimuli: Vec<&[f32]> = Vec::with_capacity(n);
    for s in &nwb.sweeps {
        let Some(st) = &s.stimulus else {
            return Err(Error::msg(format!("{label}: response `{}` has no paired CurrentClampStimulusSeries", s.response.path)));
        };
        if st.values.len() != s.response.values.len() || (st.rate_hz - s.response.rate_hz).abs() > 1e-9 * s.response.rate_hz {
            return Err(Error::msg(format!(
                "{label}: stimulus `{}` ({} samples at {} Hz) does not match response `{}` ({} samples at {} Hz)",
                st.path,
                st.values.len(),
                st.rate_hz,
                s.response.path,
                s.response.values.len(),
                s.response.rate_hz
            )));
        }
        responses.push(&s.response.values);
        stimuli.push(&st.values);
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let repeat = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; n])) };
    let columns: Vec<ArrayRef> = vec![
        repeat(&id),
        Arc::new(Int64Array::from_iter_values(nwb.sweeps.iter().enumerate().map(|(i, s)| s.sweep_number.map_or(i as i64, |k| k as i64)))),
        Arc::new(StringArray::from_iter_values(nwb.sweeps.iter().map(|s| s.response.stimulus_description.clone().unwrap_or_default()))),
        Arc::new(Float64Array::from_iter_values(nwb.sweeps.iter().map(|s| s.response.rate_hz))),
        Arc::new(f32_list_array(&list_item_field(schema, "stimulus"), &stimuli).map_err(reader_error)?),
        Arc::new(f32_list_array(&list_item_field(schema, "response"), &responses).map_err(reader_error)?),
        repeat(&stem),
        Arc::new(StringArray::from_iter_values(nwb.sweeps.iter().map(|s| s.response.electrode.clone().unwrap_or_else(|| s.response.path.clone())))),
        repeat("mV"),
        repeat("pA"),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::msg(format!("{label}: {e}")))?;
    Ok((id, batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses() {
        let cfg: IngestNwb = toml::from_str(IngestNwb::EXAMPLE).unwrap();
        assert_eq!(cfg.hash_hex_chars, 16);
    }
}

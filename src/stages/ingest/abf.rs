//! `ingest.abf`: Axon ABF2 recordings into the sweeps table ([`super::sweeps_table`]).
//!
//! It reads ABF2 files (paths, glob patterns or folders) with
//! [`crate::formats::abf::AbfFile`] and emits one batch per file: one row per sweep with the recorded
//! membrane potential (`response`, mV) and the command current rebuilt from the protocol's epoch
//! table (`stimulus`, pA). A recording is named by the content of its file (the first hex digits of
//! its blake3 hash), so renaming or moving a file keeps its identity and two different files with
//! the same name do not collide; the file stem travels along in the `file` column. A file that
//! cannot be read (truncated, corrupt, not ABF2, wrong units) fails only itself: `out.fail(path,
//! reader error)`, and the other files still flow.
//!
//! Bounded memory (`chunk_s`): a long recording (a gap-free hour at 20 kHz is 72 M samples) is
//! never held whole. The file is opened header-only ([`AbfReader`]), hashed by streaming, and every
//! sweep is emitted as consecutive chunk rows of `chunk_s` seconds (the chunk's "core"), each row's
//! traces extended by `chunk_overlap_s` on both sides (clipped at the sweep ends) so that filters
//! and spike detection downstream have context; `chunks_per_batch` rows make one batch. The extra
//! columns say where a row lies in its sweep: `chunk`, `chunk_start_s` / `chunk_end_s` (the core,
//! end exclusive) and `trace_start_s` (time of the row's first sample), all from the sweep start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{FileBatches, check_file_source, content_id, default_hash_hex_chars, first_time, reader_error, single_folder_watch, source_files, streamed_content_id};
use super::sweeps_table::{chunked_sweeps_schema, list_item_field, sweeps_schema};
use crate::error::{Error, Result};
use crate::formats::abf::{AbfFile, AbfReader};
use crate::stage::columns::f32_list_array;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

fn default_chunk_overlap_s() -> f64 {
    0.1
}
fn default_chunks_per_batch() -> usize {
    4
}

/// Reads ABF2 current-clamp recordings into the sweeps table, one batch per file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestAbf {
    /// ABF files, glob patterns (`data/abf/*.abf`) or folders (every `*.abf` directly inside),
    /// relative to the pipeline file. Files are read in sorted path order [paths].
    pub paths: Vec<String>,
    /// Recorded (ADC) channel holding the membrane potential; it must be in mV [index].
    #[serde(default)]
    pub adc_channel: usize,
    /// Command (DAC) channel whose rebuilt waveform becomes `stimulus`; it must be in pA [index].
    #[serde(default)]
    pub dac_channel: usize,
    /// Hex digits of the file's blake3 hash kept as `recording_id` (8..=64) [digits].
    #[serde(default = "default_hash_hex_chars")]
    pub hash_hex_chars: usize,
    /// Split every sweep into consecutive chunk rows of this duration (the last one shorter),
    /// read from the file range by range, so memory stays bounded for long (gap-free) recordings;
    /// adds the columns `chunk`, `chunk_start_s`, `chunk_end_s`, `trace_start_s`. Unset: one row
    /// per whole sweep [s].
    #[serde(default)]
    pub chunk_s: Option<f64>,
    /// Context added on both sides of each chunk's traces (clipped at the sweep ends), so that
    /// filters and spike detection see the neighbourhood of the chunk's edges [s].
    #[serde(default = "default_chunk_overlap_s")]
    pub chunk_overlap_s: f64,
    /// Chunk rows per emitted batch (with `chunk_s`) [rows].
    #[serde(default = "default_chunks_per_batch")]
    pub chunks_per_batch: usize,
}

impl StageConfig for IngestAbf {
    const KIND: &'static str = "ingest.abf";
    const SUMMARY: &'static str = "Read ABF2 current-clamp files (paths, globs, folders) into the sweeps table, one batch per file";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"recordings/*.abf\"]";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each row is one sweep (or chunk of one) of the one file it is read from.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = check_file_source(ctx, &self.paths, "abf", "ABF file", self.hash_hex_chars);
        if let Some(c) = self.chunk_s
            && !(c.is_finite() && c > 0.0)
        {
            issues.push(Issue::at(&["chunk_s"], format!("{c} s must be a positive finite duration")));
        }
        if !(self.chunk_overlap_s.is_finite() && self.chunk_overlap_s >= 0.0) {
            issues.push(Issue::at(&["chunk_overlap_s"], format!("{} s must be a finite duration >= 0", self.chunk_overlap_s)));
        }
        if self.chunks_per_batch == 0 {
            issues.push(Issue::at(&["chunks_per_batch"], "must be at least 1"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(if self.chunk_s.is_some() { chunked_sweeps_schema() } else { sweeps_schema() })
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        source_files(ctx, &self.paths, "abf")
    }

    /// A single folder or `folder/*.abf` glob can be watched (`run --watch`): each new recording
    /// is one increment.
    fn watch(&self, ctx: &StageContext) -> Option<crate::stage::WatchSource> {
        single_folder_watch(ctx, &self.paths, "abf")
    }

    fn restrict_to(&self, files: &[PathBuf]) -> Option<Self> {
        Some(IngestAbf { paths: files.iter().map(|f| f.to_string_lossy().to_string()).collect(), ..self.clone() })
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = self.external_inputs(ctx)?;
        let (config, schema) = (self.clone(), output.clone());
        if self.chunk_s.is_some() {
            return Ok(Operator::Source(Box::new(ChunkedAbfSource { files, next_file: 0, seen: HashSet::new(), cursor: None, config, schema })));
        }
        Ok(Operator::Source(Box::new(FileBatches::new(files, move |path: &Path| read_abf_batch(path, &config, &schema)))))
    }
}

/// The response channel's name and units and the stimulus units, after checking that the chosen
/// channels exist and are a current-clamp pair (mV recorded, pA commanded).
fn check_channels(abf: &AbfFile, cfg: &IngestAbf, label: &str) -> Result<(String, String, String)> {
    let adc = abf.adc_channels().get(cfg.adc_channel).ok_or_else(|| {
        Error::msg(format!("{label}: adc_channel {} does not exist (the file has {} ADC channels)", cfg.adc_channel, abf.channel_count()))
    })?;
    if adc.units != "mV" {
        return Err(Error::msg(format!(
            "{label}: ADC channel {} (`{}`) is in `{}`, not mV: not a current-clamp membrane potential (choose another adc_channel)",
            cfg.adc_channel, adc.name, adc.units
        )));
    }
    let dac = abf.dac_channels().get(cfg.dac_channel).ok_or_else(|| {
        Error::msg(format!("{label}: dac_channel {} does not exist (the file has {} DACs)", cfg.dac_channel, abf.dac_channels().len()))
    })?;
    let dac_units = dac.units.clone().unwrap_or_else(|| "?".into());
    if dac_units != "pA" {
        return Err(Error::msg(format!(
            "{label}: DAC {} command is in `{dac_units}`, not pA: not a current-clamp stimulus (choose another dac_channel)",
            cfg.dac_channel
        )));
    }
    Ok((adc.name.clone(), adc.units.clone(), dac_units))
}

/// Reads one file into a sweeps batch; the error is the reader's message (it names the file).
fn read_abf_batch(path: &Path, cfg: &IngestAbf, schema: &SchemaRef) -> Result<(String, RecordBatch)> {
    let bytes = std::fs::read(path).map_err(|e| Error::msg(format!("{}: cannot read the file: {e}", path.display())))?;
    let id = content_id(&bytes, cfg.hash_hex_chars);
    let label = path.display().to_string();
    let abf = AbfFile::from_bytes(&bytes, &label).map_err(reader_error)?;
    drop(bytes);
    let (adc_name, adc_units, dac_units) = check_channels(&abf, cfg, &label)?;
    let n_sweeps = abf.sweep_count();
    let mut responses: Vec<&[f32]> = Vec::with_capacity(n_sweeps);
    let mut stimuli: Vec<Vec<f32>> = Vec::with_capacity(n_sweeps);
    for s in 0..n_sweeps {
        responses.push(abf.sweep_adc(cfg.adc_channel, s).map_err(reader_error)?);
        stimuli.push(abf.sweep_command_f32(cfg.dac_channel, s).map_err(reader_error)?);
    }
    let stimulus_refs: Vec<&[f32]> = stimuli.iter().map(Vec::as_slice).collect();
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let repeat = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; n_sweeps])) };
    let columns: Vec<ArrayRef> = vec![
        repeat(&id),
        Arc::new(Int64Array::from_iter_values(0..n_sweeps as i64)),
        repeat(abf.protocol()),
        Arc::new(Float64Array::from(vec![f64::from(abf.sampling_rate_hz()); n_sweeps])),
        Arc::new(f32_list_array(&list_item_field(schema, "stimulus"), &stimulus_refs).map_err(reader_error)?),
        Arc::new(f32_list_array(&list_item_field(schema, "response"), &responses).map_err(reader_error)?),
        repeat(&stem),
        repeat(&adc_name),
        repeat(&adc_units),
        repeat(&dac_units),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::msg(format!("{label}: {e}")))?;
    Ok((id, batch))
}

/// Where the chunked reading of one file stands.
struct ChunkCursor {
    reader: AbfReader,
    label: String,
    id: String,
    stem: String,
    response_channel: String,
    response_units: String,
    stimulus_units: String,
    adc_channel: usize,
    dac_channel: usize,
    sweep: usize,
    /// First sample of the next chunk's core in `sweep`.
    next_start: usize,
    chunk: i64,
    core_samples: usize,
    margin_samples: usize,
}

/// With `chunk_s`: emits at most `chunks_per_batch` chunk rows per call, opening files as
/// needed.
struct ChunkedAbfSource {
    files: Vec<PathBuf>,
    next_file: usize,
    /// Recording ids already emitted: a byte-identical copy of a file is the same recording.
    seen: HashSet<String>,
    /// The file being emitted chunk by chunk.
    cursor: Option<ChunkCursor>,
    config: IngestAbf,
    schema: SchemaRef,
}

impl SourceOperator for ChunkedAbfSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        while self.cursor.is_none() {
            let Some(path) = self.files.get(self.next_file).cloned() else {
                return Ok(false);
            };
            self.next_file += 1;
            match open_chunked(&path, &self.config) {
                Ok(cursor) => {
                    if first_time(&mut self.seen, &path, &cursor.id) {
                        self.cursor = Some(cursor);
                    }
                }
                Err(e) => out.fail(path.display().to_string(), e.to_string()),
            }
        }
        let cursor = self.cursor.as_mut().expect("a file is open");
        match chunk_batch(cursor, self.config.chunks_per_batch, &self.schema) {
            Ok((batch, done)) => {
                out.emit(batch);
                if done {
                    self.cursor = None;
                }
            }
            Err(e) => {
                // A read error mid-file (the file changed or is damaged) fails the recording.
                out.fail(cursor.label.clone(), e.to_string());
                self.cursor = None;
            }
        }
        Ok(self.cursor.is_some() || self.next_file < self.files.len())
    }
}

/// Opens a file header-only and checks its channels, as [`read_abf_batch`] does.
fn open_chunked(path: &Path, cfg: &IngestAbf) -> Result<ChunkCursor> {
    let label = path.display().to_string();
    let id = streamed_content_id(path, cfg.hash_hex_chars).map_err(|e| Error::msg(format!("{label}: cannot read the file: {e}")))?;
    let reader = AbfReader::open(path).map_err(reader_error)?;
    let abf = reader.header();
    let (adc_name, adc_units, dac_units) = check_channels(abf, cfg, &label)?;
    let rate = f64::from(abf.sampling_rate_hz());
    let chunk_s = cfg.chunk_s.unwrap_or(f64::INFINITY);
    let core_samples = ((chunk_s * rate).round().max(1.0) as usize).min(abf.samples_per_sweep().max(1));
    let margin_samples = ((cfg.chunk_overlap_s * rate).round() as usize).min(abf.samples_per_sweep());
    Ok(ChunkCursor {
        reader,
        label,
        id,
        stem: path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        response_channel: adc_name,
        response_units: adc_units,
        stimulus_units: dac_units,
        adc_channel: cfg.adc_channel,
        dac_channel: cfg.dac_channel,
        sweep: 0,
        next_start: 0,
        chunk: 0,
        core_samples,
        margin_samples,
    })
}

/// The next up-to-`max_rows` chunk rows of the cursor's file; `true` when the file is done.
fn chunk_batch(c: &mut ChunkCursor, max_rows: usize, schema: &SchemaRef) -> Result<(RecordBatch, bool)> {
    let (sweeps, n, rate) = {
        let h = c.reader.header();
        (h.sweep_count(), h.samples_per_sweep(), h.sampling_rate_hz())
    };
    let dt_s = 1.0 / f64::from(rate);
    let (mut sweep_col, mut chunk_col, mut core_start, mut core_end, mut trace_start) = (vec![], vec![], vec![], vec![], vec![]);
    let mut responses: Vec<Vec<f32>> = Vec::new();
    let mut stimuli: Vec<Vec<f32>> = Vec::new();
    while responses.len() < max_rows && c.sweep < sweeps {
        let (c0, c1) = (c.next_start, (c.next_start + c.core_samples).min(n));
        let (t0, t1) = (c0.saturating_sub(c.margin_samples), (c1 + c.margin_samples).min(n));
        responses.push(c.reader.read_adc_range(c.adc_channel, c.sweep, t0, t1 - t0).map_err(reader_error)?);
        stimuli.push(c.reader.header().sweep_command_range_f32(c.dac_channel, c.sweep, t0, t1 - t0).map_err(reader_error)?);
        sweep_col.push(c.sweep as i64);
        chunk_col.push(c.chunk);
        // Times as k·dt, the values a whole-sweep analysis gives sample k.
        core_start.push(c0 as f64 * dt_s);
        core_end.push(c1 as f64 * dt_s);
        trace_start.push(t0 as f64 * dt_s);
        c.chunk += 1;
        c.next_start = c1;
        if c1 >= n {
            c.sweep += 1;
            c.next_start = 0;
            c.chunk = 0;
        }
    }
    let rows = responses.len();
    let h = c.reader.header();
    let repeat = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; rows])) };
    let response_refs: Vec<&[f32]> = responses.iter().map(Vec::as_slice).collect();
    let stimulus_refs: Vec<&[f32]> = stimuli.iter().map(Vec::as_slice).collect();
    let columns: Vec<ArrayRef> = vec![
        repeat(&c.id),
        Arc::new(Int64Array::from(sweep_col)),
        repeat(h.protocol()),
        Arc::new(Float64Array::from(vec![f64::from(rate); rows])),
        Arc::new(f32_list_array(&list_item_field(schema, "stimulus"), &stimulus_refs).map_err(reader_error)?),
        Arc::new(f32_list_array(&list_item_field(schema, "response"), &response_refs).map_err(reader_error)?),
        repeat(&c.stem),
        repeat(&c.response_channel),
        repeat(&c.response_units),
        repeat(&c.stimulus_units),
        Arc::new(Int64Array::from(chunk_col)),
        Arc::new(Float64Array::from(core_start)),
        Arc::new(Float64Array::from(core_end)),
        Arc::new(Float64Array::from(trace_start)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::msg(format!("{}: {e}", c.label)))?;
    Ok((batch, c.sweep >= sweeps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses() {
        let cfg: IngestAbf = toml::from_str(IngestAbf::EXAMPLE).unwrap();
        assert_eq!((cfg.hash_hex_chars, cfg.chunk_s), (16, None));
    }
}

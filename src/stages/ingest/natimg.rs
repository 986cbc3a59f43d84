//! `ingest.natimg`: Stringer, Pachitariu et al. 2018b natimg2800 recordings (study 2) into the
//! activity table.
//!
//! Reads the Stringer layout (`stim.resp` [presentations x neurons], `stim.spont` [timepoints x
//! neurons], `stim.istim`, `med` [neurons x 3]) with [`crate::formats::matlab::read_natimg2800`]
//! and the image classes with [`crate::formats::matlab::read_class_assignment_mat`] / `_csv`, and
//! emits the activity table of DESIGN.md: one row per stimulus presentation (`period` =
//! `stimulus`) and, so that the normalization is a stage of its own (`preprocess.spontaneous`),
//! one row per spontaneous frame (`period` = `spontaneous`). `activity` is a
//! `large_list<float32>` over neurons rather than a fixed-size list: the neuron count belongs to
//! the file, which is read after the schema is fixed, and recordings of different sizes share one
//! table. The neuron positions (`med`, as stored) travel as a companion column `neuron_xyz` =
//! [x0, y0, z0, x1, ...] on the FIRST row of each recording only (null on the others), so they
//! are not copied onto thousands of rows; stages that need them keep them per `recording_id`
//! (rows of one recording arrive in order). This file defines that layout ([`activity_schema`],
//! [`positions_column`]) for the stages that rewrite the table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{check_file_source, content_id, source_files};
use crate::error::{Error, Result};
use crate::formats::matlab::{ImageClasses, NatImgRecording, read_class_assignment_csv, read_class_assignment_mat, read_natimg2800};
use crate::stage::columns::{f32_list_array, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

/// The positions column of the activity table: x, y, z per neuron, flat, on a recording's first row.
pub const POSITIONS: &str = "neuron_xyz";

fn default_hash_hex_chars() -> usize {
    16
}
fn yes() -> bool {
    true
}

/// Reads Stringer et al. natimg2800 recordings into the activity table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestNatImg {
    /// natimg2800 `.mat` files (`stim.resp`, `stim.spont`, `stim.istim`, `med`; MATLAB v5 or
    /// v7.3), glob patterns or folders (every `*.mat` directly inside), relative to the pipeline
    /// file [paths].
    pub paths: Vec<String>,
    /// The image class file: MouseLand's `stimuli_class_assignment_confident.mat` (or
    /// `stimuli_class_assignment.mat`), or its CSV conversion
    /// `image_index_0based,image_id_1based_matlab,class_id,class_name` [path].
    pub classes: String,
    /// Keep presentations of image ids beyond the class file's images (the gray screen: id
    /// 2801 in the natimg2800 recordings, which the study drops) with label `blank`; default:
    /// drop them (their count is logged) [bool].
    #[serde(default)]
    pub keep_blank: bool,
    /// Emit the spontaneous frames (`period` = `spontaneous`), which `preprocess.spontaneous`
    /// needs [bool].
    #[serde(default = "yes")]
    pub spontaneous: bool,
    /// Hex digits of the file's blake3 hash kept as `recording_id` (8..=64) [digits].
    #[serde(default = "default_hash_hex_chars")]
    pub hash_hex_chars: usize,
}

/// The item field of the activity table's lists (float32, no null items).
pub fn f32_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

/// The type of the activity table's lists over neurons: `large_list<float32>`.
pub fn f32_list_type() -> DataType {
    DataType::LargeList(f32_item())
}

/// The activity table `ingest.natimg` emits.
pub fn activity_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("file", DataType::Utf8, false, None),
        field("period", DataType::Utf8, false, None),
        field("trial", DataType::Int64, false, None),
        field("stimulus_id", DataType::Int64, true, None),
        field("repeat", DataType::Int64, true, None),
        field("label", DataType::Utf8, true, None),
        field("activity", f32_list_type(), false, Some("a.u.")),
        field(POSITIONS, f32_list_type(), true, None),
    ]))
}

/// The positions column of `rows` rows of one recording: `positions` on the first row, null on
/// the others (see the module docs).
pub fn positions_column(positions: Option<&[f32]>, rows: usize) -> std::result::Result<LargeListArray, ArrowError> {
    let values = positions.unwrap_or_default();
    let mut offsets = vec![0i64];
    offsets.extend(std::iter::repeat_n(values.len() as i64, rows));
    let valid: Vec<bool> = (0..rows).map(|r| r == 0 && positions.is_some()).collect();
    let nulls = valid.contains(&false).then(|| NullBuffer::from(valid));
    LargeListArray::try_new(f32_item(), OffsetBuffer::new(offsets.into()), Arc::new(Float32Array::from(values.to_vec())), nulls)
}

fn read_classes(path: &Path) -> Result<ImageClasses> {
    let csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let classes = if csv { read_class_assignment_csv(path) } else { read_class_assignment_mat(path) }.map_err(|e| Error::msg(e.to_string()))?;
    if classes.class_of_image.is_empty() {
        return Err(Error::msg(format!("{}: no image has a class", path.display())));
    }
    Ok(classes)
}

impl StageConfig for IngestNatImg {
    const KIND: &'static str = "ingest.natimg";
    const SUMMARY: &'static str =
        "Read Stringer et al. natimg2800 .mat recordings into the activity table: one row per presentation (image id, class label) and per spontaneous frame";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"data/natimg/*.mat\"]\nclasses = \"data/natimg/stimuli_class_assignment_confident.mat\"";

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        // Every row comes from one file, read on its own.
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = check_file_source(ctx, &self.paths, "mat", ".mat file", self.hash_hex_chars);
        if let Err(e) = read_classes(&ctx.resolve(&self.classes)) {
            issues.push(Issue::at(&["classes"], e.to_string()));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(activity_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let mut files = source_files(ctx, &self.paths, "mat")?;
        files.push(ctx.resolve(&self.classes));
        Ok(files)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = source_files(ctx, &self.paths, "mat")?;
        let classes = read_classes(&ctx.resolve(&self.classes))?;
        Ok(Operator::Source(Box::new(NatImgSource { cfg: self.clone(), files, next_file: 0, classes, schema: output.clone() })))
    }
}

struct NatImgSource {
    cfg: IngestNatImg,
    files: Vec<PathBuf>,
    next_file: usize,
    classes: ImageClasses,
    schema: SchemaRef,
}

impl SourceOperator for NatImgSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        match natimg_batch(&path, &self.cfg, &self.classes, &self.schema) {
            Ok(batch) => out.emit(batch),
            Err(e) => out.fail(path.display().to_string(), e.to_string()),
        }
        Ok(self.next_file < self.files.len())
    }
}

/// The rows of one recording's activity table, column by column (the activity rows borrow the
/// recording's matrices).
#[derive(Default)]
struct ActivityRows<'a> {
    period: Vec<&'static str>,
    trial: Vec<i64>,
    stimulus: Vec<Option<i64>>,
    repeat: Vec<Option<i64>>,
    label: Vec<Option<String>>,
    activity: Vec<&'a [f32]>,
}

impl<'a> ActivityRows<'a> {
    /// One row per presentation of a classified image, numbered by its repeat; the presentations
    /// of other image ids (the gray screen) are labelled `blank` with `keep_blank`, or dropped and
    /// counted (the count is returned).
    fn push_presentations(&mut self, rec: &'a NatImgRecording, classes: &ImageClasses, keep_blank: bool) -> usize {
        let n = rec.n_neurons;
        let n_images = classes.class_of_image.len();
        let mut seen: HashMap<u32, i64> = HashMap::new();
        let mut blank = 0usize;
        for (p, &istim) in rec.istim.iter().enumerate() {
            let image = (istim - 1) as usize;
            let name = if image < n_images {
                classes.class_names[usize::from(classes.class_of_image[image])].clone()
            } else if keep_blank {
                "blank".to_string()
            } else {
                blank += 1;
                continue;
            };
            let r = seen.entry(istim).or_insert(0);
            self.period.push("stimulus");
            self.trial.push(p as i64);
            self.stimulus.push(Some(image as i64));
            self.repeat.push(Some(*r));
            *r += 1;
            self.label.push(Some(name));
            self.activity.push(&rec.resp[p * n..(p + 1) * n]);
        }
        blank
    }

    /// One row per spontaneous frame.
    fn push_spontaneous(&mut self, rec: &'a NatImgRecording) {
        let n = rec.n_neurons;
        for t in 0..rec.n_spont_timepoints {
            self.period.push("spontaneous");
            self.trial.push(t as i64);
            self.stimulus.push(None);
            self.repeat.push(None);
            self.label.push(None);
            self.activity.push(&rec.spont[t * n..(t + 1) * n]);
        }
    }
}

fn natimg_batch(path: &Path, cfg: &IngestNatImg, classes: &ImageClasses, schema: &SchemaRef) -> Result<RecordBatch> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::msg(format!("{label}: cannot read the file: {e}")))?;
    let id = content_id(&bytes, cfg.hash_hex_chars);
    drop(bytes);
    let rec = read_natimg2800(path).map_err(|e| Error::msg(e.to_string()))?;
    if rec.n_neurons == 0 {
        return Err(Error::msg(format!("{label}: stim.resp has no neurons")));
    }
    let stem = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let mut rows = ActivityRows::default();
    let blank = rows.push_presentations(&rec, classes, cfg.keep_blank);
    if blank > 0 {
        tracing::info!("{label}: {blank} presentations of image ids above {} (gray screen) dropped", classes.class_of_image.len());
    }
    if cfg.spontaneous {
        rows.push_spontaneous(&rec);
    }
    let m = rows.period.len();
    if m == 0 {
        return Err(Error::msg(format!("{label}: no presentation of a classified image and no spontaneous frame")));
    }
    let xyz: Vec<f32> = rec.med.iter().flatten().copied().collect();
    let in_file = |e: ArrowError| Error::arrow(label.clone(), e);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![id.as_str(); m])),
        Arc::new(StringArray::from(vec![stem.as_str(); m])),
        Arc::new(StringArray::from(rows.period)),
        Arc::new(Int64Array::from(rows.trial)),
        Arc::new(Int64Array::from(rows.stimulus)),
        Arc::new(Int64Array::from(rows.repeat)),
        Arc::new(StringArray::from(rows.label)),
        Arc::new(f32_list_array(&f32_item(), &rows.activity).map_err(in_file)?),
        Arc::new(positions_column(Some(&xyz), m).map_err(in_file)?),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(in_file)
}

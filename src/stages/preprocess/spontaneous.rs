//! Population-activity stages (study 2, Stringer, Pachitariu et al. 2018b): the natimg2800
//! recordings into the activity table, normalization by the spontaneous period, and binning of
//! neurons into a 3-D voxel grid.
//!
//! `ingest.natimg` reads the Stringer layout (`stim.resp` [presentations x neurons], `stim.spont`
//! [timepoints x neurons], `stim.istim`, `med` [neurons x 3]) with
//! [`crate::formats::matlab::read_natimg2800`] and the image classes with
//! [`crate::formats::matlab::read_class_assignment_mat`] / `_csv`, and emits the activity table
//! of DESIGN.md: one row per stimulus presentation (`period` = `stimulus`) and, so that the
//! normalization is a stage of its own, one row per spontaneous frame (`period` =
//! `spontaneous`). `activity` is a `large_list<float32>` over neurons rather than a fixed-size
//! list: the neuron count belongs to the file, which is read after the schema is fixed, and
//! recordings of different sizes share one table. The neuron positions (`med`, as stored) travel
//! as a companion column `neuron_xyz` = [x0, y0, z0, x1, ...] on the FIRST row of each
//! recording only (null on the others), so they are not copied onto thousands of rows; stages
//! that need them keep them per `recording_id` (rows of one recording arrive in order).
//!
//! `preprocess.spontaneous` gathers a recording's rows, z-scores every neuron by its mean and
//! standard deviation over the spontaneous frames, projects the stimulus responses off the top-k
//! principal components of the z-scored spontaneous activity, and mean-centers each neuron over
//! the presentations: the study's `dataset.load_mat` steps 2–4 (see `shared/specs/studies.md`).
//!
//! `preprocess.voxelize` averages the neurons of each voxel of a dense grid spanning the
//! recording's positions, edges inclusive, so that the neuron at the maximum coordinate falls in
//! the last bin (the study's 2019 `divide_space` used strict comparisons and a fixed range, which
//! left voxels empty by construction). Empty voxels are 0, counted per row and listed in
//! `occupancy.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array, LargeListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stages::ingest::files::{check_file_source, content_id, source_files};
use crate::stage::columns::{UNIT_KEY, column_list, field, is_string, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::formats::matlab::{ImageClasses, read_class_assignment_csv, read_class_assignment_mat, read_natimg2800};
use crate::preprocess::normalize::{SpontaneousParams, normalize_by_spontaneous};
use crate::preprocess::voxel::{BinSpec, VoxelGrid, voxel_grid};

// =============================================================================================
// Arrow helpers
// =============================================================================================

fn f32_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

fn f32_list_type() -> DataType {
    DataType::LargeList(f32_item())
}

/// A `large_list<float32>` column from rows; a `None` row is null.
fn f32_lists(rows: &[Option<&[f32]>]) -> std::result::Result<LargeListArray, String> {
    let mut values = Vec::with_capacity(rows.iter().flatten().map(|r| r.len()).sum());
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i64);
    for r in rows {
        if let Some(r) = r {
            values.extend_from_slice(r);
        }
        offsets.push(values.len() as i64);
    }
    let nulls = rows.iter().any(Option::is_none).then(|| NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>()));
    LargeListArray::try_new(f32_item(), OffsetBuffer::new(offsets.into()), Arc::new(Float32Array::from(values)), nulls).map_err(|e| e.to_string())
}

/// The rows of a numeric list column as f32 vectors (None for a null row).
fn list_rows(batch: &RecordBatch, column: &str) -> std::result::Result<Vec<Option<Vec<f32>>>, String> {
    let col = batch.column_by_name(column).ok_or_else(|| format!("no column `{column}`"))?;
    let col = arrow::compute::cast(col, &DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, true))))
        .map_err(|e| format!("column `{column}`: {e}"))?;
    let l = col.as_list::<i64>();
    Ok((0..l.len())
        .map(|r| {
            (!l.is_null(r)).then(|| {
                let v = l.value(r);
                let v = v.as_primitive::<Float32Type>();
                (0..v.len()).map(|i| if v.is_null(i) { f32::NAN } else { v.value(i) }).collect()
            })
        })
        .collect())
}

fn string_rows(batch: &RecordBatch, column: &str) -> std::result::Result<Vec<Option<String>>, String> {
    let col = batch.column_by_name(column).ok_or_else(|| format!("no column `{column}`"))?;
    let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| format!("column `{column}`: {e}"))?;
    Ok(col.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
}

fn is_numeric_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().is_numeric(),
        _ => false,
    }
}

fn need_column(input: &Schema, column: &str, what: &str, accept: fn(&DataType) -> bool, key: &str, issues: &mut Vec<Issue>) {
    match input.field_with_name(column) {
        Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{column}` ({what}); it has: {}", column_list(input)))),
        Ok(f) if !accept(f.data_type()) => issues.push(Issue::at(
            &[key],
            format!("column `{column}` is {}; {what} is needed", crate::stage::columns::type_name(f.data_type())),
        )),
        _ => {}
    }
}

/// The distinct values of `recording_id`, in order of first appearance, with their rows.
fn rows_by_recording(batch: &RecordBatch) -> std::result::Result<Vec<(String, Vec<u32>)>, String> {
    let ids = string_rows(batch, "recording_id")?;
    let mut order: Vec<(String, Vec<u32>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (r, id) in ids.into_iter().enumerate() {
        let id = id.unwrap_or_default();
        let k = *index.entry(id.clone()).or_insert_with(|| {
            order.push((id, Vec::new()));
            order.len() - 1
        });
        order[k].1.push(r as u32);
    }
    Ok(order)
}

// =============================================================================================
// ingest.natimg
// =============================================================================================

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
        field("neuron_xyz", f32_list_type(), true, None),
    ]))
}

fn read_classes(path: &Path) -> std::result::Result<ImageClasses, String> {
    let csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let classes = if csv { read_class_assignment_csv(path) } else { read_class_assignment_mat(path) }.map_err(|e| e.to_string())?;
    if classes.class_of_image.is_empty() {
        return Err(format!("{}: no image has a class", path.display()));
    }
    Ok(classes)
}

impl StageConfig for IngestNatImg {
    const KIND: &'static str = "ingest.natimg";
    const SUMMARY: &'static str =
        "Read Stringer et al. natimg2800 .mat recordings into the activity table: one row per presentation (image id, class label) and per spontaneous frame";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = check_file_source(ctx, &self.paths, "mat", ".mat file", self.hash_hex_chars);
        if let Err(e) = read_classes(&ctx.resolve(&self.classes)) {
            issues.push(Issue::at(&["classes"], e));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(activity_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let mut files =
            source_files(ctx, &self.paths, "mat")?;
        files.push(ctx.resolve(&self.classes));
        Ok(files)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = source_files(ctx, &self.paths, "mat")?;
        let classes = read_classes(&ctx.resolve(&self.classes)).map_err(Error::msg)?;
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
            Err(message) => out.fail(path.display().to_string(), message),
        }
        Ok(self.next_file < self.files.len())
    }
}

fn natimg_batch(path: &Path, cfg: &IngestNatImg, classes: &ImageClasses, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{label}: cannot read the file: {e}"))?;
    let id = content_id(&bytes, cfg.hash_hex_chars);
    drop(bytes);
    let rec = read_natimg2800(path).map_err(|e| e.to_string())?;
    let n = rec.n_neurons;
    if n == 0 {
        return Err(format!("{label}: stim.resp has no neurons"));
    }
    let stem = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let n_images = classes.class_of_image.len();
    let mut period = Vec::new();
    let mut trial = Vec::new();
    let mut stimulus = Vec::new();
    let mut repeat = Vec::new();
    let mut labels: Vec<Option<String>> = Vec::new();
    let mut rows: Vec<Option<&[f32]>> = Vec::new();
    let mut seen: HashMap<u32, i64> = HashMap::new();
    let mut blank = 0usize;
    for (p, &istim) in rec.istim.iter().enumerate() {
        let image = (istim - 1) as usize;
        let name = if image < n_images {
            classes.class_names[usize::from(classes.class_of_image[image])].clone()
        } else if cfg.keep_blank {
            "blank".to_string()
        } else {
            blank += 1;
            continue;
        };
        let r = seen.entry(istim).or_insert(0);
        period.push("stimulus");
        trial.push(p as i64);
        stimulus.push(Some(image as i64));
        repeat.push(Some(*r));
        *r += 1;
        labels.push(Some(name));
        rows.push(Some(&rec.resp[p * n..(p + 1) * n]));
    }
    if blank > 0 {
        tracing::info!("{label}: {blank} presentations of image ids above {n_images} (gray screen) dropped");
    }
    if cfg.spontaneous {
        for t in 0..rec.n_spont_timepoints {
            period.push("spontaneous");
            trial.push(t as i64);
            stimulus.push(None);
            repeat.push(None);
            labels.push(None);
            rows.push(Some(&rec.spont[t * n..(t + 1) * n]));
        }
    }
    let m = period.len();
    if m == 0 {
        return Err(format!("{label}: no presentation of a classified image and no spontaneous frame"));
    }
    let xyz: Vec<f32> = rec.med.iter().flatten().copied().collect();
    let mut xyz_rows: Vec<Option<&[f32]>> = vec![None; m];
    xyz_rows[0] = Some(&xyz);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![id.as_str(); m])),
        Arc::new(StringArray::from(vec![stem.as_str(); m])),
        Arc::new(StringArray::from(period)),
        Arc::new(Int64Array::from(trial)),
        Arc::new(Int64Array::from(stimulus)),
        Arc::new(Int64Array::from(repeat)),
        Arc::new(StringArray::from(labels)),
        Arc::new(f32_lists(&rows).map_err(|e| format!("{label}: {e}"))?),
        Arc::new(f32_lists(&xyz_rows).map_err(|e| format!("{label}: {e}"))?),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("{label}: {e}"))
}

// =============================================================================================
// preprocess.spontaneous
// =============================================================================================

fn d_components() -> usize {
    32
}
fn d_epsilon() -> f64 {
    1e-6
}
fn d_activity() -> String {
    "activity".into()
}
fn d_positions() -> String {
    "neuron_xyz".into()
}

/// Normalizes stimulus responses by the spontaneous period, per recording (Stringer et al.).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpontaneous {
    /// Principal components of the z-scored spontaneous activity projected out of the
    /// responses; 0 = z-score only (study: 32) [components].
    #[serde(default = "d_components")]
    pub n_components: usize,
    /// Added to each neuron's spontaneous standard deviation before dividing (study: 1e-6)
    /// [activity unit].
    #[serde(default = "d_epsilon")]
    pub epsilon: f64,
    /// Subtract each neuron's mean over the presentations at the end (study: yes) [bool].
    #[serde(default = "yes")]
    pub center: bool,
    /// Also emit the z-scored spontaneous frames (no projection, no centering) [bool].
    #[serde(default)]
    pub keep_spontaneous: bool,
    /// The activity column (a numeric list over neurons) [column].
    #[serde(default = "d_activity")]
    pub column: String,
}

impl StageConfig for PreprocessSpontaneous {
    const KIND: &'static str = "preprocess.spontaneous";
    const SUMMARY: &'static str =
        "Per recording: z-score neurons by the spontaneous period, project responses off the top-k spontaneous PCs, mean-center";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // One recording at a time, whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            issues.push(Issue::at(&["epsilon"], format!("{} is not a finite value >= 0", self.epsilon)));
        }
        if self.n_components > 10_000 {
            issues.push(Issue::at(&["n_components"], format!("{} components is more than 10000", self.n_components)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        need_column(input, "recording_id", "a string recording id", is_string, "inputs", &mut issues);
        need_column(input, "period", "`stimulus` / `spontaneous` strings", is_string, "inputs", &mut issues);
        need_column(input, &self.column, "a numeric list over neurons", is_numeric_list, "column", &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| {
                if f.name() == &self.column {
                    let mut md = f.metadata().clone();
                    md.insert(UNIT_KEY.to_string(), "z".to_string());
                    Field::new(f.name(), f32_list_type(), false).with_metadata(md)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SpontaneousOperator {
            cfg: self.clone(),
            schema: output.clone(),
            order: Vec::new(),
            batches: HashMap::new(),
        })))
    }
}

struct SpontaneousOperator {
    cfg: PreprocessSpontaneous,
    schema: SchemaRef,
    order: Vec<String>,
    batches: HashMap<String, Vec<RecordBatch>>,
}

impl TransformOperator for SpontaneousOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        for (id, rows) in rows_by_recording(&batch).map_err(Error::msg)? {
            let part = arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
            if !self.batches.contains_key(&id) {
                self.order.push(id.clone());
            }
            self.batches.entry(id).or_default().push(part);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        for id in std::mem::take(&mut self.order) {
            let parts = self.batches.remove(&id).unwrap_or_default();
            match normalize_recording(&self.cfg, &self.schema, &parts) {
                Ok(b) => out.emit(b),
                Err(message) => out.fail(id.clone(), format!("recording {id}: {message}")),
            }
        }
        Ok(())
    }
}

fn normalize_recording(cfg: &PreprocessSpontaneous, schema: &SchemaRef, parts: &[RecordBatch]) -> std::result::Result<RecordBatch, String> {
    let Some(first) = parts.first() else { return Err("no rows".into()) };
    let batch = arrow::compute::concat_batches(&first.schema(), parts).map_err(|e| e.to_string())?;
    let periods = string_rows(&batch, "period")?;
    let activity = list_rows(&batch, &cfg.column)?;
    let mut n = None;
    let (mut stim_rows, mut spont_rows) = (Vec::new(), Vec::new());
    let (mut resp, mut spont) = (Vec::new(), Vec::new());
    for (r, (p, a)) in periods.iter().zip(&activity).enumerate() {
        let a = a.as_ref().ok_or_else(|| format!("row {r}: `{}` is null", cfg.column))?;
        if *n.get_or_insert(a.len()) != a.len() {
            return Err(format!("row {r}: `{}` has {} neurons, earlier rows {}", cfg.column, a.len(), n.unwrap_or(0)));
        }
        if let Some(i) = a.iter().position(|x| !x.is_finite()) {
            return Err(format!("row {r}: `{}`[{i}] is not finite", cfg.column));
        }
        match p.as_deref() {
            Some("stimulus") => {
                stim_rows.push(r as u32);
                resp.extend(a.iter().map(|&x| f64::from(x)));
            }
            Some("spontaneous") => {
                spont_rows.push(r as u32);
                spont.extend(a.iter().map(|&x| f64::from(x)));
            }
            other => return Err(format!("row {r}: period {other:?} is neither `stimulus` nor `spontaneous`")),
        }
    }
    let n = n.unwrap_or(0);
    if spont_rows.is_empty() {
        return Err("no spontaneous frames (period = `spontaneous`): nothing to normalize by".into());
    }
    let params = SpontaneousParams { n_components: cfg.n_components, epsilon: cfg.epsilon, center: cfg.center };
    let (z_resp, z_spont) = normalize_by_spontaneous(&resp, &spont, n, params).map_err(|e| e.to_string())?;
    let mut keep = stim_rows.clone();
    let mut values: Vec<f32> = z_resp.iter().map(|&x| x as f32).collect();
    if cfg.keep_spontaneous {
        keep.extend(&spont_rows);
        values.extend(z_spont.iter().map(|&x| x as f32));
    }
    if keep.is_empty() {
        return Err("no stimulus presentations".into());
    }
    let taken = arrow::compute::take_record_batch(&batch, &UInt32Array::from(keep.clone())).map_err(|e| e.to_string())?;
    let rows: Vec<Option<&[f32]>> = values.chunks_exact(n).map(Some).collect();
    let new_activity: ArrayRef = Arc::new(f32_lists(&rows)?);
    // The positions go onto the first emitted row, wherever they were in the input.
    let positions = batch.schema().field_with_name("neuron_xyz").ok().map(|_| list_rows(&batch, "neuron_xyz")).transpose()?;
    let positions = positions.and_then(|p| p.into_iter().flatten().next());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        if f.name() == &cfg.column {
            columns.push(new_activity.clone());
        } else if f.name() == "neuron_xyz" && matches!(f.data_type(), DataType::LargeList(_)) {
            let mut rows: Vec<Option<&[f32]>> = vec![None; keep.len()];
            rows[0] = positions.as_deref();
            columns.push(Arc::new(f32_lists(&rows)?) as ArrayRef);
        } else {
            columns.push(taken.column_by_name(f.name()).ok_or_else(|| format!("no column `{}`", f.name()))?.clone());
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

// =============================================================================================
// preprocess.voxelize
// =============================================================================================

/// Bins neurons by position into a dense 3-D grid and averages the activity in each voxel.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessVoxelize {
    /// Bins per axis [x, y, z] over each recording's range of positions; the `voxels` column is
    /// then a fixed-size list of x*y*z values. Give this or `bin_size` [bins].
    #[serde(default)]
    pub bins: Option<[usize; 3]>,
    /// Bin width per axis [x, y, z] in the unit of the positions; bins start at the minimum and
    /// as many as cover the range are used (the grid then varies by recording and `voxels` is a
    /// variable-length list). Give this or `bins` [position unit].
    #[serde(default)]
    pub bin_size: Option<[f64; 3]>,
    /// The activity column (a numeric list over neurons) [column].
    #[serde(default = "d_activity")]
    pub column: String,
    /// The positions column (x, y, z per neuron, flat), present on at least the first row of
    /// each recording, as `ingest.natimg` and `preprocess.spontaneous` emit it [column].
    #[serde(default = "d_positions")]
    pub positions: String,
    /// Keep the per-neuron activity column beside `voxels` [bool].
    #[serde(default)]
    pub keep_activity: bool,
    /// Where to write `occupancy.json` (grid, neurons per voxel, empty voxels per recording),
    /// relative to the pipeline file (default: `<run dir>/artifacts/<stage>`) [path].
    #[serde(default)]
    pub artifacts: Option<String>,
}

impl PreprocessVoxelize {
    fn spec(&self) -> Option<BinSpec> {
        match (self.bins, self.bin_size) {
            (Some(c), None) => Some(BinSpec::Count(c)),
            (None, Some(s)) => Some(BinSpec::Size(s)),
            _ => None,
        }
    }
    fn artifacts_dir(&self, ctx: &StageContext) -> PathBuf {
        ctx.artifacts_dir(self.artifacts.as_deref())
    }
}

impl StageConfig for PreprocessVoxelize {
    const KIND: &'static str = "preprocess.voxelize";
    const SUMMARY: &'static str =
        "Bin neurons by position into a dense 3-D grid (inclusive edges, range from the data) and average activity per voxel; empty voxels counted";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // One recording at a time, whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        match (self.bins, self.bin_size) {
            (None, None) => issues.push(Issue::at(&[], "give `bins` (bins per axis) or `bin_size` (width per axis)")),
            (Some(_), Some(_)) => issues.push(Issue::at(&["bin_size"], "give `bins` or `bin_size`, not both")),
            (Some(c), None) => {
                if c.contains(&0) {
                    issues.push(Issue::at(&["bins"], format!("{c:?}: every axis needs at least one bin")));
                }
                if c.iter().map(|&x| x as u128).product::<u128>() > 50_000_000 {
                    issues.push(Issue::at(&["bins"], format!("{c:?} is more than 50 million voxels")));
                }
            }
            (None, Some(s)) => {
                if s.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    issues.push(Issue::at(&["bin_size"], format!("{s:?}: every width must be positive")));
                }
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        need_column(input, "recording_id", "a string recording id", is_string, "inputs", &mut issues);
        need_column(input, &self.column, "a numeric list over neurons", is_numeric_list, "column", &mut issues);
        need_column(input, &self.positions, "a numeric list of x, y, z per neuron", is_numeric_list, "positions", &mut issues);
        for name in ["voxels", "voxels_occupied", "voxels_empty"] {
            if input.field_with_name(name).is_ok() {
                issues.push(Issue::inputs(format!("the input already has a column `{name}`")));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let unit = input.field_with_name(&self.column).ok().and_then(|f| unit_of(f).map(str::to_string));
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| f.name() != &self.positions && (self.keep_activity || f.name() != &self.column))
            .map(|f| f.as_ref().clone())
            .collect();
        let voxels_type = match self.bins {
            Some(c) => DataType::FixedSizeList(f32_item(), (c[0] * c[1] * c[2]) as i32),
            None => f32_list_type(),
        };
        let mut voxels = field("voxels", voxels_type, false, unit.as_deref());
        let mut md = voxels.metadata().clone();
        md.insert("order", "flat index (ix * ny + iy) * nz + iz; empty voxels are 0");
        if let Some(c) = self.bins {
            md.insert("grid", format!("{}x{}x{}", c[0], c[1], c[2]));
        }
        voxels = voxels.with_metadata(md);
        fields.push(voxels);
        fields.push(field("voxels_occupied", DataType::Int64, false, None));
        fields.push(field("voxels_empty", DataType::Int64, false, None));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![self.artifacts_dir(ctx).join("occupancy.json")]
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let spec = self.spec().ok_or_else(|| Error::msg(format!("stage `{}`: give `bins` or `bin_size`", ctx.name)))?;
        Ok(Operator::Transform(Box::new(VoxelizeOperator {
            cfg: self.clone(),
            spec,
            schema: output.clone(),
            artifacts: self.artifacts_dir(ctx),
            grids: HashMap::new(),
            order: Vec::new(),
            failed: HashMap::new(),
        })))
    }
}

/// One recording's grid, as `occupancy.json` reports it.
#[derive(Debug, Clone, Serialize)]
struct RecordingOccupancy {
    recording_id: String,
    neurons: usize,
    voxels: usize,
    voxels_occupied: usize,
    voxels_empty: usize,
    /// (ix, iy, iz) of the empty voxels (their value is 0 in every row).
    empty_voxels: Vec<[usize; 3]>,
    #[serde(flatten)]
    grid: VoxelGrid,
}

struct VoxelizeOperator {
    cfg: PreprocessVoxelize,
    spec: BinSpec,
    schema: SchemaRef,
    artifacts: PathBuf,
    grids: HashMap<String, VoxelGrid>,
    order: Vec<String>,
    failed: HashMap<String, String>,
}

impl VoxelizeOperator {
    fn grid_from(&self, xyz: &[f32]) -> std::result::Result<VoxelGrid, String> {
        if xyz.len() % 3 != 0 {
            return Err(format!("`{}` holds {} values, not x, y, z per neuron", self.cfg.positions, xyz.len()));
        }
        let pos: Vec<[f32; 3]> = xyz.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        voxel_grid(&pos, self.spec).map_err(|e| e.to_string())
    }
}

impl TransformOperator for VoxelizeOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let ids = string_rows(&batch, "recording_id").map_err(Error::msg)?;
        let xyz = list_rows(&batch, &self.cfg.positions).map_err(Error::msg)?;
        let activity = list_rows(&batch, &self.cfg.column).map_err(Error::msg)?;
        let mut keep = Vec::new();
        let mut voxels: Vec<f32> = Vec::new();
        let mut voxel_rows: Vec<(usize, usize)> = Vec::new();
        let (mut occupied, mut empty) = (Vec::new(), Vec::new());
        for r in 0..batch.num_rows() {
            let id = ids[r].clone().unwrap_or_default();
            if self.failed.contains_key(&id) {
                continue;
            }
            if let Some(p) = &xyz[r] {
                match self.grid_from(p) {
                    Ok(g) => {
                        if g.empty_voxels() > 0 {
                            tracing::warn!("recording {id}: {} of {} voxels hold no neuron (value 0)", g.empty_voxels(), g.len());
                        }
                        if !self.grids.contains_key(&id) {
                            self.order.push(id.clone());
                        }
                        self.grids.insert(id.clone(), g);
                    }
                    Err(e) => {
                        let msg = format!("recording {id}: neuron positions: {e}");
                        out.fail(id.clone(), msg.clone());
                        self.failed.insert(id, msg);
                        continue;
                    }
                }
            }
            let Some(grid) = self.grids.get(&id) else {
                let msg = format!(
                    "recording {id}: no row carrying `{}` arrived before its activity (was the recording's first row filtered out?)",
                    self.cfg.positions
                );
                out.fail(id.clone(), msg.clone());
                self.failed.insert(id, msg);
                continue;
            };
            let Some(a) = &activity[r] else {
                let msg = format!("recording {id}: row {r}: `{}` is null", self.cfg.column);
                out.fail(id.clone(), msg.clone());
                self.failed.insert(id, msg);
                continue;
            };
            if a.len() != grid.voxel_of_neuron.len() {
                let msg = format!("recording {id}: `{}` has {} neurons but there are {} positions", self.cfg.column, a.len(), grid.voxel_of_neuron.len());
                out.fail(id.clone(), msg.clone());
                self.failed.insert(id, msg);
                continue;
            }
            let start = voxels.len();
            voxels.extend(grid.mean(a));
            voxel_rows.push((start, voxels.len()));
            occupied.push((grid.len() - grid.empty_voxels()) as i64);
            empty.push(grid.empty_voxels() as i64);
            keep.push(r as u32);
        }
        if keep.is_empty() {
            return Ok(());
        }
        let taken = arrow::compute::take_record_batch(&batch, &UInt32Array::from(keep))?;
        let voxel_col: ArrayRef = match self.cfg.bins {
            Some(c) => Arc::new(FixedSizeListArray::try_new(f32_item(), (c[0] * c[1] * c[2]) as i32, Arc::new(Float32Array::from(voxels)), None)?),
            None => {
                let rows: Vec<Option<&[f32]>> = voxel_rows.iter().map(|&(s, e)| Some(&voxels[s..e])).collect();
                Arc::new(f32_lists(&rows).map_err(Error::msg)?)
            }
        };
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            match f.name().as_str() {
                "voxels" => columns.push(voxel_col.clone()),
                "voxels_occupied" => columns.push(Arc::new(Int64Array::from(occupied.clone())) as ArrayRef),
                "voxels_empty" => columns.push(Arc::new(Int64Array::from(empty.clone())) as ArrayRef),
                name => columns.push(taken.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}`")))?.clone()),
            }
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        let report: Vec<RecordingOccupancy> = self
            .order
            .iter()
            .filter(|id| !self.failed.contains_key(*id))
            .filter_map(|id| self.grids.get(id).map(|g| (id, g)))
            .map(|(id, g)| RecordingOccupancy {
                recording_id: id.clone(),
                neurons: g.voxel_of_neuron.len(),
                voxels: g.len(),
                voxels_occupied: g.len() - g.empty_voxels(),
                voxels_empty: g.empty_voxels(),
                empty_voxels: g.empty_voxel_coordinates(),
                grid: g.clone(),
            })
            .collect();
        let path = self.artifacts.join("occupancy.json");
        let tmp = self.artifacts.join(".occupancy.json.tmp");
        let io = |e: std::io::Error| Error::msg(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(&self.artifacts).map_err(io)?;
        let text = serde_json::to_string_pretty(&serde_json::json!({ "recordings": report }))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }
}

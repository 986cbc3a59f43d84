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

use super::ingest::files::{check_file_source, content_id, source_files};
use crate::stage::columns::{UNIT_KEY, column_list, field, is_string, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::formats::matlab::{ImageClasses, read_class_assignment_csv, read_class_assignment_mat, read_natimg2800};

// =============================================================================================
// Numeric kernels
// =============================================================================================

/// Per-neuron mean and standard deviation (population, ddof = 0 as numpy's `std`) of a row-major
/// `rows x n` matrix.
pub fn column_mean_sd(x: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / n.max(1);
    let mut mean = vec![0.0; n];
    for r in x.chunks_exact(n) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0; n];
    for r in x.chunks_exact(n) {
        for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    let sd = var.into_iter().map(|s| (s / rows as f64).sqrt()).collect();
    (mean, sd)
}

/// Eigenvalues and eigenvectors of a symmetric `m x m` matrix (row-major, overwritten) by the
/// cyclic Jacobi method (Golub & Van Loan, "Matrix Computations", 4th ed., §8.5; rotation as in
/// Numerical Recipes §11.1). Returns eigenvalues in descending order and the eigenvectors as
/// the columns of a row-major `m x m` matrix in the same order.
pub fn symmetric_eigen(a: &mut [f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..m {
            for q in p + 1..m {
                off += a[p * m + q] * a[p * m + q];
            }
        }
        if off <= 1e-30 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let (akp, akq) = (a[k * m + p], a[k * m + q]);
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let (apk, aqk) = (a[p * m + k], a[q * m + k]);
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let (vkp, vkq) = (v[k * m + p], v[k * m + q]);
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]));
    let values = order.iter().map(|&i| a[i * m + i]).collect();
    let mut vectors = vec![0.0; m * m];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..m {
            vectors[k * m + col] = v[k * m + i];
        }
    }
    (values, vectors)
}

/// The top `k` principal axes (unit vectors over neurons) of a row-major `t x n` matrix `z`, as
/// the study computes them: the leading eigenvectors of `z^T z` (scipy `eigsh(spont.T @ spont,
/// k)`; `z` is already z-scored, so this is the uncentered second-moment matrix). Works on the
/// smaller of `z^T z` (n x n) and `z z^T` (t x t, then `u = z^T v / sqrt(lambda)`), so its cost is
/// O(min(t, n)^3). Returned as `k` vectors of length `n`.
pub fn top_principal_axes(z: &[f64], t: usize, n: usize, k: usize) -> std::result::Result<Vec<Vec<f64>>, String> {
    if k == 0 {
        return Ok(Vec::new());
    }
    if k > t.min(n) {
        return Err(format!("{k} components asked of {t} spontaneous frames x {n} neurons (at most {})", t.min(n)));
    }
    let axes = if n <= t {
        let mut c = vec![0.0; n * n];
        for row in z.chunks_exact(n) {
            for i in 0..n {
                let ri = row[i];
                if ri == 0.0 {
                    continue;
                }
                let ci = &mut c[i * n..(i + 1) * n];
                for (cij, rj) in ci.iter_mut().zip(row) {
                    *cij += ri * rj;
                }
            }
        }
        let (values, vectors) = symmetric_eigen(&mut c, n);
        if values[k - 1] <= 1e-12 * values[0].abs().max(f64::MIN_POSITIVE) {
            return Err(format!("the spontaneous activity has fewer than {k} non-zero principal components"));
        }
        (0..k).map(|j| (0..n).map(|i| vectors[i * n + j]).collect()).collect()
    } else {
        let mut g = vec![0.0; t * t];
        for a in 0..t {
            for b in a..t {
                let dot: f64 = z[a * n..(a + 1) * n].iter().zip(&z[b * n..(b + 1) * n]).map(|(x, y)| x * y).sum();
                g[a * t + b] = dot;
                g[b * t + a] = dot;
            }
        }
        let (values, vectors) = symmetric_eigen(&mut g, t);
        if values[k - 1] <= 1e-12 * values[0].abs().max(f64::MIN_POSITIVE) {
            return Err(format!("the spontaneous activity has fewer than {k} non-zero principal components"));
        }
        (0..k)
            .map(|j| {
                let scale = 1.0 / values[j].sqrt();
                let mut u = vec![0.0; n];
                for a in 0..t {
                    let va = vectors[a * t + j] * scale;
                    for (ui, zi) in u.iter_mut().zip(&z[a * n..(a + 1) * n]) {
                        *ui += va * zi;
                    }
                }
                u
            })
            .collect()
    };
    Ok(axes)
}

/// What [`normalize_by_spontaneous`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpontaneousParams {
    /// Principal components of the spontaneous activity projected out (study: 32).
    pub n_components: usize,
    /// Added to the spontaneous standard deviation before dividing (study: 1e-6).
    pub epsilon: f64,
    /// Mean-center each neuron over the presentations after the projection (study: yes).
    pub center: bool,
}

/// The study's normalization (`dataset.load_mat` steps 2–4) of row-major `resp` [p x n] by
/// `spont` [t x n]: z-score both by the spontaneous mean and `sd + epsilon`, project `resp` off
/// the top `n_components` axes of the z-scored spontaneous frames (`resp -= resp @ u @ u.T`),
/// then mean-center each neuron over the presentations. Returns (responses, z-scored
/// spontaneous frames).
pub fn normalize_by_spontaneous(
    resp: &[f64],
    spont: &[f64],
    n: usize,
    params: SpontaneousParams,
) -> std::result::Result<(Vec<f64>, Vec<f64>), String> {
    if n == 0 {
        return Err("the recording has no neurons".into());
    }
    let t = spont.len() / n;
    if t < 2 {
        return Err(format!("{t} spontaneous frames: at least 2 are needed for a standard deviation"));
    }
    let (mean, sd) = column_mean_sd(spont, n);
    let scale: Vec<f64> = sd.iter().map(|s| 1.0 / (s + params.epsilon)).collect();
    let zs = |x: &[f64]| -> Vec<f64> {
        let mut out = x.to_vec();
        for r in out.chunks_exact_mut(n) {
            for ((v, m), s) in r.iter_mut().zip(&mean).zip(&scale) {
                *v = (*v - m) * s;
            }
        }
        out
    };
    let z_spont = zs(spont);
    let mut z_resp = zs(resp);
    let axes = top_principal_axes(&z_spont, t, n, params.n_components)?;
    for r in z_resp.chunks_exact_mut(n) {
        let coefs: Vec<f64> = axes.iter().map(|u| u.iter().zip(r.iter()).map(|(a, b)| a * b).sum()).collect();
        for (u, c) in axes.iter().zip(&coefs) {
            for (v, ui) in r.iter_mut().zip(u) {
                *v -= c * ui;
            }
        }
    }
    if params.center && !z_resp.is_empty() {
        let (m, _) = column_mean_sd(&z_resp, n);
        for r in z_resp.chunks_exact_mut(n) {
            for (v, mi) in r.iter_mut().zip(&m) {
                *v -= mi;
            }
        }
    }
    Ok((z_resp, z_spont))
}

/// How the voxel grid is sized along each axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinSpec {
    /// This many bins per axis (x, y, z) over the data's range.
    Count([usize; 3]),
    /// Bins of this width per axis (same unit as the positions); as many as cover the range.
    Size([f64; 3]),
}

/// Neurons assigned to the voxels of a dense grid over their positions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoxelGrid {
    /// Bins per axis (x, y, z).
    pub dims: [usize; 3],
    /// Lower edge of the first bin per axis (the data's minimum).
    pub origin: [f64; 3],
    /// The data's maximum per axis (inside the last bin: edges are inclusive).
    pub max: [f64; 3],
    /// Bin width per axis (0 for an axis where every neuron has the same coordinate).
    pub width: [f64; 3],
    /// Flat voxel index `(ix * ny + iy) * nz + iz` of every neuron.
    #[serde(skip)]
    pub voxel_of_neuron: Vec<usize>,
    /// Neurons per voxel, flat in the same order.
    pub neurons_per_voxel: Vec<u32>,
}

impl VoxelGrid {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn empty_voxels(&self) -> usize {
        self.neurons_per_voxel.iter().filter(|&&c| c == 0).count()
    }
    /// The (ix, iy, iz) of every voxel holding no neuron.
    pub fn empty_voxel_coordinates(&self) -> Vec<[usize; 3]> {
        let [_, ny, nz] = self.dims;
        (0..self.len()).filter(|&v| self.neurons_per_voxel[v] == 0).map(|v| [v / (ny * nz), (v / nz) % ny, v % nz]).collect()
    }
    /// Mean of `values` (one per neuron) in each voxel; 0 where a voxel holds no neuron.
    pub fn mean(&self, values: &[f32]) -> Vec<f32> {
        let mut sum = vec![0.0f64; self.len()];
        for (&v, &x) in self.voxel_of_neuron.iter().zip(values) {
            sum[v] += f64::from(x);
        }
        sum.iter().zip(&self.neurons_per_voxel).map(|(s, &c)| if c == 0 { 0.0 } else { (s / f64::from(c)) as f32 }).collect()
    }
}

/// Bins neurons at `positions` into a dense grid over [min, max] of each axis. Bin `i` of an
/// axis holds `origin + i*width <= p < origin + (i+1)*width`, except that the last bin also
/// holds `p == max` (inclusive upper edge), so no neuron falls outside the grid. With
/// [`BinSpec::Size`] the bin count is `max(1, ceil(range / width))` and an axis with zero range
/// has one bin; with [`BinSpec::Count`] the grid keeps the asked shape and an axis with zero range
/// puts every neuron in its first bin (the others are empty, and reported as such).
pub fn voxel_grid(positions: &[[f32; 3]], bins: BinSpec) -> std::result::Result<VoxelGrid, String> {
    if positions.is_empty() {
        return Err("no neuron positions".into());
    }
    if let Some((i, p)) = positions.iter().enumerate().find(|(_, p)| p.iter().any(|x| !x.is_finite())) {
        return Err(format!("neuron {i} has a non-finite position {p:?}"));
    }
    let mut origin = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    for p in positions {
        for a in 0..3 {
            origin[a] = origin[a].min(f64::from(p[a]));
            max[a] = max[a].max(f64::from(p[a]));
        }
    }
    let mut dims = [1usize; 3];
    let mut width = [0.0; 3];
    for a in 0..3 {
        let range = max[a] - origin[a];
        match bins {
            BinSpec::Count(c) => {
                if c[a] == 0 {
                    return Err(format!("axis {a}: 0 bins"));
                }
                dims[a] = c[a];
                width[a] = range / dims[a] as f64;
            }
            BinSpec::Size(s) => {
                if !(s[a] > 0.0 && s[a].is_finite()) {
                    return Err(format!("axis {a}: bin size {} is not positive", s[a]));
                }
                dims[a] = ((range / s[a]).ceil() as usize).max(1);
                width[a] = if range > 0.0 { s[a] } else { 0.0 };
            }
        }
    }
    let total = dims.iter().product::<usize>();
    if total > 50_000_000 {
        return Err(format!("a {}x{}x{} grid is too large", dims[0], dims[1], dims[2]));
    }
    let index = |a: usize, x: f64| -> usize {
        if width[a] == 0.0 {
            return 0;
        }
        (((x - origin[a]) / width[a]).floor() as usize).min(dims[a] - 1)
    };
    let mut neurons_per_voxel = vec![0u32; total];
    let voxel_of_neuron: Vec<usize> = positions
        .iter()
        .map(|p| {
            let v = (index(0, f64::from(p[0])) * dims[1] + index(1, f64::from(p[1]))) * dims[2] + index(2, f64::from(p[2]));
            neurons_per_voxel[v] += 1;
            v
        })
        .collect();
    Ok(VoxelGrid { dims, origin, max, width, voxel_of_neuron, neurons_per_voxel })
}

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
    let (z_resp, z_spont) = normalize_by_spontaneous(&resp, &spont, n, params)?;
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
        voxel_grid(&pos, self.spec)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from `tests/fixtures/natimg/spont_reference.py` (numpy 2 / scipy eigsh, the
    /// study's own steps) on the fixed 12 x 5 spontaneous and 4 x 5 response matrices there.
    fn reference() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/natimg/spont_reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn matrix(v: &serde_json::Value) -> (Vec<f64>, usize) {
        let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
        let n = rows[0].len();
        (rows.into_iter().flatten().collect(), n)
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs reference {y}");
        }
    }

    #[test]
    fn zscore_and_pc_removal_match_numpy_scipy() {
        let r = reference();
        let (spont, n) = matrix(&r["spont"]);
        let (resp, _) = matrix(&r["resp"]);
        for (key, k, center) in [("zscore_only", 0, false), ("k2", 2, false), ("k2_centered", 2, true), ("k3_centered", 3, true)] {
            let params = SpontaneousParams { n_components: k, epsilon: 1e-6, center };
            let (out, z_spont) = normalize_by_spontaneous(&resp, &spont, n, params).unwrap();
            let (expected, _) = matrix(&r[key]);
            close(&out, &expected, 1e-9, key);
            let (zs, _) = matrix(&r["z_spont"]);
            close(&z_spont, &zs, 1e-9, "z_spont");
        }
        // The eigenvalues of spont_z.T @ spont_z against numpy's eigh.
        let (zs, _) = matrix(&r["z_spont"]);
        let t = zs.len() / n;
        let mut c = vec![0.0; n * n];
        for row in zs.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    c[i * n + j] += row[i] * row[j];
                }
            }
        }
        let (values, _) = symmetric_eigen(&mut c, n);
        let expected: Vec<f64> = serde_json::from_value(r["eigenvalues_desc"].clone()).unwrap();
        close(&values, &expected, 1e-9, "eigenvalues");
        // The wide case (more neurons than frames) goes through z z^T: same projection.
        let axes_wide = top_principal_axes(&zs[..3 * n], 3, n, 2).unwrap();
        let expected_wide: Vec<Vec<f64>> = serde_json::from_value(r["wide_projector_k2"].clone()).unwrap();
        for i in 0..n {
            for j in 0..n {
                let pij: f64 = axes_wide.iter().map(|u| u[i] * u[j]).sum();
                assert!((pij - expected_wide[i][j]).abs() < 1e-9, "wide projector[{i}][{j}] {pij} vs {}", expected_wide[i][j]);
            }
        }
        assert!(t > n);
    }

    #[test]
    fn too_many_components_and_too_few_frames_are_clear_errors() {
        let spont = vec![1.0, 2.0, 3.0, 4.0, 0.5, 1.0];
        let e = normalize_by_spontaneous(&[0.0, 0.0], &spont, 2, SpontaneousParams { n_components: 5, epsilon: 1e-6, center: true }).unwrap_err();
        assert!(e.contains("5 components"), "{e}");
        let e = normalize_by_spontaneous(&[0.0, 0.0], &spont[..2], 2, SpontaneousParams { n_components: 0, epsilon: 1e-6, center: true })
            .unwrap_err();
        assert!(e.contains("1 spontaneous frames"), "{e}");
    }

    /// The issue's acceptance test: neurons spread uniformly over a range fill every voxel of
    /// the grid (no empty voxel made by the binning), and the neuron at the maximum coordinate
    /// lands in the last bin, not outside the grid.
    #[test]
    fn uniform_neurons_leave_no_empty_voxel_and_max_is_in_last_bin() {
        // A regular lattice 0, 10, ..., 1190 in x and y, 11 planes 0, 35, ..., 350 in z (the
        // study's 2019 `divide_space` used 6 bins of 200 over 0..1200 with strict comparisons).
        let mut pos = Vec::new();
        for ix in 0..120 {
            for iy in 0..120 {
                for iz in 0..11 {
                    pos.push([ix as f32 * 10.0, iy as f32 * 10.0, iz as f32 * 35.0]);
                }
            }
        }
        for bins in [[6, 6, 11], [7, 5, 3], [120, 120, 11], [1, 1, 1]] {
            let g = voxel_grid(&pos, BinSpec::Count(bins)).unwrap();
            assert_eq!(g.dims, bins);
            assert_eq!(g.empty_voxels(), 0, "bins {bins:?}: empty voxels {:?}", g.empty_voxel_coordinates());
            assert_eq!(g.neurons_per_voxel.iter().map(|&c| c as usize).sum::<usize>(), pos.len());
            let last = g.len() - 1;
            let max_neuron = pos.iter().position(|p| *p == [1190.0, 1190.0, 350.0]).unwrap();
            assert_eq!(g.voxel_of_neuron[max_neuron], last, "bins {bins:?}: the max-coordinate neuron");
            assert_eq!(g.voxel_of_neuron[0], 0);
        }
        // Counts: 120 lattice values in 6 bins of width 1190/6 = 198.33: 20 values per bin.
        let g = voxel_grid(&pos, BinSpec::Count([6, 1, 1])).unwrap();
        assert_eq!(g.neurons_per_voxel, vec![20 * 120 * 11; 6]);
        // Bin size 200 over 0..1190 gives 6 bins; 350/35 = 10 exactly: 10 bins, max in the last.
        let g = voxel_grid(&pos, BinSpec::Size([200.0, 200.0, 35.0])).unwrap();
        assert_eq!(g.dims, [6, 6, 10]);
        assert_eq!(g.empty_voxels(), 0);
        let max_neuron = pos.len() - 1;
        assert_eq!(g.voxel_of_neuron[max_neuron], g.len() - 1);
        // Uniform random positions (seeded LCG): no empty voxel with 10 neurons per voxel on average.
        let mut s: u64 = 12345;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f32 / (1u64 << 53) as f32
        };
        let random: Vec<[f32; 3]> = (0..4000).map(|_| [next() * 1000.0, next() * 1000.0, next() * 300.0]).collect();
        let g = voxel_grid(&random, BinSpec::Count([5, 5, 4])).unwrap();
        assert_eq!(g.empty_voxels(), 0);
    }

    #[test]
    fn voxel_means_and_empty_voxels() {
        // Two neurons in voxel (0,0,0), one in the last voxel, the middle of a 3-bin x axis empty.
        let pos = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [30.0, 0.0, 0.0]];
        let g = voxel_grid(&pos, BinSpec::Count([3, 1, 1])).unwrap();
        assert_eq!(g.dims, [3, 1, 1]);
        // y and z have zero range: with bin counts the shape stays, every neuron in bin 0 there.
        let g2 = voxel_grid(&pos, BinSpec::Count([3, 2, 1])).unwrap();
        assert_eq!(g2.neurons_per_voxel, vec![2, 0, 0, 0, 1, 0]);
        assert_eq!(voxel_grid(&pos, BinSpec::Size([10.0, 5.0, 5.0])).unwrap().dims, [3, 1, 1]);
        assert_eq!(g.neurons_per_voxel, vec![2, 0, 1]);
        assert_eq!(g.empty_voxel_coordinates(), vec![[1, 0, 0]]);
        assert_eq!(g.mean(&[1.0, 3.0, -5.0]), vec![2.0, 0.0, -5.0]);
        assert!(voxel_grid(&[[f32::NAN, 0.0, 0.0]], BinSpec::Count([1, 1, 1])).is_err());
    }
}

//! `preprocess.voxelize`: the neurons of each recording binned by position into a dense 3-D grid
//! ([`voxel_grid`]: inclusive edges over the recording's range), one value per voxel: the mean
//! activity of its neurons. Empty voxels are 0, counted per row and listed in `occupancy.json`.
//!
//! The positions come on the first row of each recording (`neuron_xyz`, see `ingest.natimg`); the
//! grid is kept per `recording_id` for the rows after it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lists::{is_numeric_list, list_rows, need_column, string_rows};
use crate::error::{Error, Result};
use crate::preprocess::voxel::{BinSpec, MAX_VOXELS, VoxelGrid, voxel_grid};
use crate::stage::columns::{f32_list_array, field, is_string, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::ingest::natimg::{POSITIONS, f32_item, f32_list_type};

fn d_activity() -> String {
    "activity".into()
}
fn d_positions() -> String {
    POSITIONS.into()
}

/// Bins neurons by position into a dense 3-D grid and averages the activity in each voxel.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessVoxelize {
    /// Bins per axis [x, y, z] over each recording's range of positions; the `voxels` column is
    /// then a fixed-size list of x*y*z values. Give this or `bin_size` [count].
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
    const EXAMPLE: &'static str = "bins = [6, 6, 3]";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // A recording's grid comes from the positions on its first row and serves its later rows.
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
                if c.iter().map(|&x| x as u128).product::<u128>() > MAX_VOXELS as u128 {
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
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| f.name() != &self.positions && (self.keep_activity || f.name() != &self.column))
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(self.voxels_field(input));
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
            failed: HashSet::new(),
        })))
    }
}

impl PreprocessVoxelize {
    /// The `voxels` column: a fixed-size list with `bins`, a list per row with `bin_size` (the
    /// grid then depends on the recording), in the activity's unit.
    fn voxels_field(&self, input: &Schema) -> Field {
        let unit = input.field_with_name(&self.column).ok().and_then(|f| unit_of(f).map(str::to_string));
        let voxels_type = match self.bins {
            Some(c) => DataType::FixedSizeList(f32_item(), (c[0] * c[1] * c[2]) as i32),
            None => f32_list_type(),
        };
        let voxels = field("voxels", voxels_type, false, unit.as_deref());
        let mut md = voxels.metadata().clone();
        md.insert("order".to_string(), "flat index (ix * ny + iy) * nz + iz; empty voxels are 0".to_string());
        if let Some(c) = self.bins {
            md.insert("grid".to_string(), format!("{}x{}x{}", c[0], c[1], c[2]));
        }
        voxels.with_metadata(md)
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
    /// Recordings in order of their grid's arrival (the order of `occupancy.json`).
    order: Vec<String>,
    /// Recordings that failed: their later rows are skipped.
    failed: HashSet<String>,
}

/// The output of one batch, row by row: the kept input rows and their voxel values.
#[derive(Default)]
struct VoxelRows {
    keep: Vec<u32>,
    voxels: Vec<f32>,
    /// Each kept row's span of `voxels`.
    spans: Vec<(usize, usize)>,
    occupied: Vec<i64>,
    empty: Vec<i64>,
}

impl VoxelizeOperator {
    /// The grid of a recording from the positions on its row (x, y, z per neuron, flat).
    fn set_grid(&mut self, id: &str, xyz: &[f32]) -> Result<()> {
        if xyz.len() % 3 != 0 {
            return Err(Error::msg(format!("neuron positions: `{}` holds {} values, not x, y, z per neuron", self.cfg.positions, xyz.len())));
        }
        let pos: Vec<[f32; 3]> = xyz.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        let g = voxel_grid(&pos, self.spec).map_err(|e| Error::msg(format!("neuron positions: {e}")))?;
        if g.empty_voxels() > 0 {
            tracing::warn!("recording {id}: {} of {} voxels hold no neuron (value 0)", g.empty_voxels(), g.len());
        }
        if !self.grids.contains_key(id) {
            self.order.push(id.to_string());
        }
        self.grids.insert(id.to_string(), g);
        Ok(())
    }

    /// Row `r` of recording `id` into voxels: its positions (if it carries them) set the grid,
    /// its activity is averaged per voxel of the recording's grid.
    fn voxelize_row(&mut self, id: &str, r: usize, xyz: Option<&[f32]>, activity: Option<&[f32]>, rows: &mut VoxelRows) -> Result<()> {
        if let Some(p) = xyz {
            self.set_grid(id, p)?;
        }
        let Some(grid) = self.grids.get(id) else {
            return Err(Error::msg(format!(
                "no row carrying `{}` arrived before its activity (was the recording's first row filtered out?)",
                self.cfg.positions
            )));
        };
        let Some(a) = activity else {
            return Err(Error::msg(format!("row {r}: `{}` is null", self.cfg.column)));
        };
        if a.len() != grid.voxel_of_neuron.len() {
            return Err(Error::msg(format!("`{}` has {} neurons but there are {} positions", self.cfg.column, a.len(), grid.voxel_of_neuron.len())));
        }
        let start = rows.voxels.len();
        rows.voxels.extend(grid.mean(a));
        rows.spans.push((start, rows.voxels.len()));
        rows.occupied.push((grid.len() - grid.empty_voxels()) as i64);
        rows.empty.push(grid.empty_voxels() as i64);
        rows.keep.push(r as u32);
        Ok(())
    }

    /// The kept rows of `batch` with the voxel columns, in the declared schema's order.
    fn output_batch(&self, batch: &RecordBatch, rows: VoxelRows) -> Result<RecordBatch> {
        let taken = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows.keep))?;
        let voxel_col: ArrayRef = match self.cfg.bins {
            Some(c) => Arc::new(FixedSizeListArray::try_new(f32_item(), (c[0] * c[1] * c[2]) as i32, Arc::new(Float32Array::from(rows.voxels)), None)?),
            None => {
                let spans: Vec<&[f32]> = rows.spans.iter().map(|&(s, e)| &rows.voxels[s..e]).collect();
                Arc::new(f32_list_array(&f32_item(), &spans)?)
            }
        };
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            match f.name().as_str() {
                "voxels" => columns.push(voxel_col.clone()),
                "voxels_occupied" => columns.push(Arc::new(Int64Array::from(rows.occupied.clone())) as ArrayRef),
                "voxels_empty" => columns.push(Arc::new(Int64Array::from(rows.empty.clone())) as ArrayRef),
                name => columns.push(taken.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}`")))?.clone()),
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl TransformOperator for VoxelizeOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let ids = string_rows(&batch, "recording_id")?;
        let xyz = list_rows(&batch, &self.cfg.positions)?;
        let activity = list_rows(&batch, &self.cfg.column)?;
        let mut rows = VoxelRows::default();
        for r in 0..batch.num_rows() {
            let id = ids[r].clone().unwrap_or_default();
            if self.failed.contains(&id) {
                continue;
            }
            if let Err(e) = self.voxelize_row(&id, r, xyz[r].as_deref(), activity[r].as_deref(), &mut rows) {
                out.fail(id.clone(), format!("recording {id}: {e}"));
                self.failed.insert(id);
            }
        }
        if rows.keep.is_empty() {
            return Ok(());
        }
        out.emit(self.output_batch(&batch, rows)?);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        let report: Vec<RecordingOccupancy> = self
            .order
            .iter()
            .filter(|id| !self.failed.contains(*id))
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

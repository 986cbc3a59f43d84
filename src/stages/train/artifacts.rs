//! What a training stage writes beside its checkpoint, and how it tells `predict.model` where.
//!
//! The artifacts folder (metrics.json, metrics.parquet, the model files and the figures) is
//! committed atomically: written under a temporary name, then renamed into place. The training
//! stage commits it *before* it emits its table, so a stage that reads its output (a
//! `predict.model` with the training stage as its second input) finds the model file written.
//!
//! The output schema of a training stage announces the model in its metadata ([`announce_model`]):
//! `neurostream.model` (the absolute path of `model.json`; absent when the stage writes one model
//! file per target), `neurostream.model_task` and `neurostream.model_columns` (a JSON list of the
//! input columns the model reads). [`AnnouncedModel::of`] reads it back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::config::{TaskKind, Train};
use crate::error::{Error, Result};
use crate::train::models::Task;

/// Schema metadata key: the absolute path of the model file the training stage writes.
const MODEL_KEY: &str = "neurostream.model";
/// Schema metadata key: the task the model was trained for (`regression`, `classification`, `clustering`).
const MODEL_TASK_KEY: &str = "neurostream.model_task";
/// Schema metadata key: the input columns the model reads, as a JSON list.
const MODEL_COLUMNS_KEY: &str = "neurostream.model_columns";

/// The schema metadata that announces the model a training stage writes into `dir`.
pub(super) fn announce_model<K: TaskKind>(cfg: &Train<K>, dir: &Path) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if cfg.targets().len() <= 1 {
        let file = dir.join("model.json");
        let file = std::path::absolute(&file).unwrap_or(file);
        metadata.insert(MODEL_KEY.to_string(), file.display().to_string());
    }
    let task = serde_json::to_value(K::TASK).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    metadata.insert(MODEL_TASK_KEY.to_string(), task);
    metadata.insert(MODEL_COLUMNS_KEY.to_string(), serde_json::to_string(&cfg.features).unwrap_or_default());
    metadata
}

/// A model announced by a training stage's output schema.
#[derive(Debug, Clone)]
pub(crate) struct AnnouncedModel {
    /// The model file, absent when the stage writes several (one per target).
    pub file: Option<PathBuf>,
    pub task: Task,
    /// The input columns the model reads.
    pub columns: Vec<String>,
}

impl AnnouncedModel {
    /// The model a training stage's output schema announces; `None` for any other schema.
    pub(crate) fn of(schema: &Schema) -> Option<Self> {
        let metadata = schema.metadata();
        let task = serde_json::from_value(serde_json::Value::String(metadata.get(MODEL_TASK_KEY)?.clone())).ok()?;
        let columns = serde_json::from_str(metadata.get(MODEL_COLUMNS_KEY)?).ok()?;
        Some(AnnouncedModel { file: metadata.get(MODEL_KEY).map(PathBuf::from), task, columns })
    }
}

/// One row of metrics.parquet: scope (`pooled`, `fold`, `<report_by>=<value>`, ...), fold
/// (-1 = not one fold), target, metric, value.
#[derive(Debug, Clone)]
pub(super) struct MetricRow {
    pub scope: String,
    pub fold: i64,
    pub target: String,
    pub metric: String,
    pub value: f64,
}

impl MetricRow {
    pub(super) fn new(scope: impl Into<String>, fold: i64, target: impl Into<String>, metric: impl Into<String>, value: f64) -> Self {
        MetricRow { scope: scope.into(), fold, target: target.into(), metric: metric.into(), value }
    }
}

/// Writes the artifacts folder atomically: every file (metrics, models, figures) into
/// `<dir>.tmp-<pid>`, fsynced, then the folder renamed into place (an older one is moved aside
/// first and removed after). A reader sees the old folder or the new one, never a mix.
pub(super) fn commit_artifacts(dir: &Path, report: &serde_json::Value, rows: &[MetricRow], files: &[(String, Vec<u8>)]) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::msg(format!("{}: no parent folder", dir.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = PathBuf::from(format!("{}.tmp-{}", dir.display(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_synced(&tmp.join("metrics.json"), serde_json::to_string_pretty(report)?.as_bytes())?;
    for (name, bytes) in files {
        write_synced(&tmp.join(name), bytes)?;
    }
    write_metrics_parquet(&tmp.join("metrics.parquet"), rows)?;
    let old = PathBuf::from(format!("{}.old-{}", dir.display(), std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// metrics.parquet: scope, fold (-1 = pooled), target, metric, value.
fn write_metrics_parquet(path: &Path, rows: &[MetricRow]) -> Result<()> {
    // The rows used to travel to this function through JSON, where a NaN or infinite value
    // becomes null and the whole list failed to read back: such a stage wrote a metrics.parquet
    // without rows. Kept so that this move changes no output; writing them is a change of its
    // own (with a CODE_VERSION bump).
    let rows = if rows.iter().all(|r| r.value.is_finite()) { rows } else { &[] };
    let schema = Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("fold", DataType::Int64, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.scope.clone()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.fold))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.target.clone()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.metric.clone()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        ],
    )?;
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(crate::stage::parquet::writer_properties()))?;
    w.write(&batch)?;
    let f = w.into_inner()?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::StageConfig;
    use crate::stages::train::regress::TrainRegress;

    #[test]
    fn the_announced_model_reads_back() {
        let cfg: TrainRegress = toml::from_str(TrainRegress::EXAMPLE).unwrap();
        let schema = Schema::new_with_metadata(Vec::<Field>::new(), announce_model(&cfg, Path::new("/runs/study/artifacts/fit")));
        let a = AnnouncedModel::of(&schema).expect("announced");
        assert_eq!(a.file, Some(PathBuf::from("/runs/study/artifacts/fit/model.json")));
        assert_eq!((a.task, a.columns), (Task::Regression, vec!["stimulus_amplitude".to_string()]));
        // One model file per target: the task and columns, but no single file to name.
        let two: TrainRegress = toml::from_str(&TrainRegress::EXAMPLE.replace("target = \"spike_count\"", "target = [\"spike_count\", \"latency\"]")).unwrap();
        let schema = Schema::new_with_metadata(Vec::<Field>::new(), announce_model(&two, Path::new("/runs/study/artifacts/fit")));
        assert!(AnnouncedModel::of(&schema).is_some_and(|a| a.file.is_none()));
        assert!(AnnouncedModel::of(&Schema::empty()).is_none(), "any other stage announces nothing");
    }
}

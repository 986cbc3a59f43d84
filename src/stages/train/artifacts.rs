//! What a training stage writes beside its checkpoint: the artifacts folder (metrics.json,
//! metrics.parquet, the model files and the figures), committed atomically: written under a
//! temporary name, then renamed into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};

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

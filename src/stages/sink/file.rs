//! What the sinks (`sink.parquet`, `sink.csv`) share: the path check, and the operator that writes
//! the whole input to one file and renames it into place.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use crate::error::{Error, Result, ResultExt};
use crate::stage::{Emitter, Issue, TransformOperator};

/// The sinks' one value check: an output path.
pub(crate) fn check_path(path: &str) -> Vec<Issue> {
    if path.trim().is_empty() { vec![Issue::at(&["path"], "path must not be empty")] } else { vec![] }
}

/// The file format a [`FileSink`] writes.
pub(crate) enum SinkFormat {
    Parquet,
    Csv,
}

enum SinkWriter {
    Parquet(ArrowWriter<File>),
    Csv(arrow::csv::Writer<File>),
}

/// Writes to `<path>.tmp-<pid>` and renames onto `path` in `finish`, so a reader never sees half a file.
pub(crate) struct FileSink {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    format: SinkFormat,
    writer: Option<SinkWriter>,
}

impl FileSink {
    pub(crate) fn new(path: PathBuf, schema: SchemaRef, format: SinkFormat) -> Self {
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        FileSink { path, tmp: tmp.into(), schema, format, writer: None }
    }
    fn open(&mut self) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        if let Some(parent) = self.path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let file = File::create(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        self.writer = Some(match self.format {
            SinkFormat::Parquet => SinkWriter::Parquet(
                ArrowWriter::try_new(file, self.schema.clone(), Some(crate::stage::parquet::writer_properties()))
                    .map_err(|e| Error::parquet(self.path.display().to_string(), e))?,
            ),
            SinkFormat::Csv => SinkWriter::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(file)),
        });
        Ok(())
    }
}

impl TransformOperator for FileSink {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.open()?;
        let path = self.path.display().to_string();
        match self.writer.as_mut().expect("opened") {
            SinkWriter::Parquet(w) => {
                w.write(&batch).map_err(|e| Error::parquet(path.clone(), e))?;
                // Cut row groups by size too: rows of long traces would otherwise buffer gigabytes.
                if w.in_progress_size() >= crate::stage::parquet::ROW_GROUP_BYTES {
                    w.flush().map_err(|e| Error::parquet(path, e))?;
                }
                Ok(())
            }
            SinkWriter::Csv(w) => w.write(&batch).map_err(|e| Error::arrow(path, e)),
        }
    }
    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        self.open()?; // an empty input still yields a file with the header / schema
        let path = self.path.display().to_string();
        match self.writer.take().expect("opened") {
            SinkWriter::Parquet(w) => {
                let f = w.into_inner().map_err(|e| Error::parquet(path.clone(), e))?;
                f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
            }
            SinkWriter::Csv(w) => {
                let f = w.into_inner();
                f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
            }
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e)).context(format!("committing {path}"))
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

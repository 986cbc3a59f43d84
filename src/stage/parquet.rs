//! Parquet as neurostream writes and reads it: the writer settings shared by checkpoints and
//! `sink.parquet`, and the streaming reader behind `source.parquet` and checkpoint replay.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::columns::{column_list, same_columns};
use super::{Emitter, SourceOperator};
use crate::error::{Error, Result};

/// A row group is closed once its buffered data reaches this size, whatever its row count.
pub const ROW_GROUP_BYTES: usize = 128 << 20;
/// Parquet settings shared by checkpoints and `sink.parquet`.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// The Arrow schema of a Parquet file (with the unit metadata neurostream stores in it).
pub fn read_schema(path: &std::path::Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet(format!("{}: not a readable Parquet file", path.display()), e))?;
    Ok(builder.schema().clone())
}

/// Streams the row groups of a list of Parquet files, one batch per call.
pub struct ParquetSource {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) next_file: usize,
    pub(crate) reader: Option<(PathBuf, ParquetRecordBatchReader)>,
    pub(crate) batch_rows: usize,
    pub(crate) schema: SchemaRef,
}

impl ParquetSource {
    pub fn new(files: Vec<PathBuf>, batch_rows: usize, schema: SchemaRef) -> Self {
        ParquetSource { files, next_file: 0, reader: None, batch_rows, schema }
    }
}

impl SourceOperator for ParquetSource {
    /// One batch per call. A file that cannot be read (corrupt, truncated, vanished, unexpected
    /// schema) fails as one recording named by its path; the other files still flow.
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        loop {
            if let Some((path, reader)) = &mut self.reader {
                let path = path.clone();
                match reader.next() {
                    Some(Ok(batch)) => {
                        if !same_columns(batch.schema().as_ref(), &self.schema) {
                            self.reader = None;
                            out.fail(
                                path.display().to_string(),
                                format!(
                                    "unexpected schema: columns {} where {} were expected",
                                    column_list(&batch.schema()),
                                    column_list(&self.schema)
                                ),
                            );
                            return Ok(true);
                        }
                        // Keep the declared schema (with its unit metadata) on every batch.
                        match RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()) {
                            Ok(b) => out.emit(b),
                            Err(e) => {
                                self.reader = None;
                                out.fail(path.display().to_string(), format!("does not fit the expected schema: {e}"));
                            }
                        }
                        return Ok(true);
                    }
                    Some(Err(e)) => {
                        self.reader = None;
                        out.fail(path.display().to_string(), format!("not a readable Parquet file: {e}"));
                        return Ok(true);
                    }
                    None => self.reader = None,
                }
            }
            if self.next_file >= self.files.len() {
                return Ok(false);
            }
            let path = self.files[self.next_file].clone();
            self.next_file += 1;
            let opened = File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).and_then(|b| b.with_batch_size(self.batch_rows).build()).map_err(|e| e.to_string()));
            match opened {
                Ok(reader) => self.reader = Some((path, reader)),
                Err(e) => {
                    out.fail(path.display().to_string(), format!("not a readable Parquet file: {e}"));
                    return Ok(true);
                }
            }
        }
    }
}


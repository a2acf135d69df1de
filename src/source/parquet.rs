//! Parquet: typed columns read with the arrow-rs Parquet reader, row group by row group.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{FileSource, assemble};
use crate::error::{Error, Result};

fn builder(name: &str, path: &std::path::Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| {
        Error::source(
            name,
            format!("{} is not a readable Parquet file: {e}", path.display()),
        )
    })
}

/// The schema of the first file; every other file must have the same columns.
pub(crate) fn infer_schema(name: &str, files: &[PathBuf]) -> Result<SchemaRef> {
    let first = builder(name, &files[0])?.schema().clone();
    for f in &files[1..] {
        let s = builder(name, f)?.schema().clone();
        if s.fields() != first.fields() {
            return Err(Error::source(
                name,
                format!(
                    "{} has different columns than {}",
                    f.display(),
                    files[0].display()
                ),
            ));
        }
    }
    Ok(first)
}

/// Iterator over the batches of a Parquet source.
pub(crate) struct ParquetBatches {
    source: FileSource,
    schema: SchemaRef,
    next_file: usize,
    current: Option<(ParquetRecordBatchReader, String, u64)>,
}

impl ParquetBatches {
    pub(crate) fn new(source: FileSource, schema: SchemaRef) -> Self {
        ParquetBatches {
            source,
            schema,
            next_file: 0,
            current: None,
        }
    }
}

impl super::ReadBatch for ParquetBatches {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.source.files().get(self.next_file).cloned() else {
                    return Ok(None);
                };
                self.next_file += 1;
                let reader = builder(self.source.name(), &path)?
                    .with_batch_size(self.source.batch_size())
                    .build()?;
                self.current = Some((reader, path.display().to_string(), 1));
            }
            let (reader, display, next_row) = self.current.as_mut().expect("opened above");
            match reader.next() {
                None => self.current = None,
                Some(b) => {
                    let b = b?;
                    let n = b.num_rows();
                    let rows: Vec<u64> = (*next_row..*next_row + n as u64).collect();
                    *next_row += n as u64;
                    let display = display.clone();
                    return assemble(
                        &self.schema,
                        b.columns().to_vec(),
                        &display,
                        rows,
                        vec![None; n],
                        vec![None; n],
                    )
                    .map(Some);
                }
            }
        }
    }
}

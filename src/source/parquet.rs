//! Parquet: typed columns read with the arrow-rs Parquet reader, row group by row group.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use bytes::Bytes;
use parquet::file::reader::{ChunkReader, Length};

use super::{FileSource, Piece, PieceUnit, assemble};
use crate::error::{Error, Result};
use crate::store;

/// A Parquet file on disk or an object in a store. The reader asks for the footer and for
/// each column chunk by byte range, so an object is fetched with range requests, never whole.
pub(crate) enum Input {
    Local(File),
    Store { object: store::Object, len: u64 },
}

impl Input {
    fn open(name: &str, path: &std::path::Path) -> Result<Input> {
        if store::is_remote(path) {
            let object = store::Object::at(name, path)?;
            let len = object.size(name)?;
            return Ok(Input::Store { object, len });
        }
        Ok(Input::Local(
            File::open(path).map_err(|e| Error::io("opening", path, e))?,
        ))
    }
}

impl Length for Input {
    fn len(&self) -> u64 {
        match self {
            Input::Local(f) => f.len(),
            Input::Store { len, .. } => *len,
        }
    }
}

impl ChunkReader for Input {
    type T = Box<dyn std::io::Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            Input::Local(f) => Ok(Box::new(f.get_read(start)?)),
            Input::Store { object, len } => object
                .reader("input file", start, Some(*len))
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e))),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Input::Local(f) => f.get_bytes(start, length),
            Input::Store { object, .. } => object
                .read_range(start, length as u64)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e))),
        }
    }
}

fn builder(name: &str, path: &std::path::Path) -> Result<ParquetRecordBatchReaderBuilder<Input>> {
    ParquetRecordBatchReaderBuilder::try_new(Input::open(name, path)?).map_err(|e| {
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

/// Splits a Parquet file into runs of whole row groups of about `target` compressed bytes,
/// numbering their first rows from the row counts in the metadata. `None` for a file no larger
/// than `target` or with a single row group.
// Pieces are for cluster runs, which only the `ballista` feature builds.
#[cfg_attr(not(feature = "ballista"), allow(dead_code))]
pub fn split(path: &std::path::Path, target: u64) -> Result<Option<Vec<Piece>>> {
    let meta = builder("(split)", path)?.metadata().clone();
    let groups = meta.row_groups();
    let size: u64 = groups
        .iter()
        .map(|g| g.compressed_size().max(0) as u64)
        .sum();
    if groups.len() < 2 || size <= target {
        return Ok(None);
    }
    let mut pieces = Vec::new();
    let (mut start, mut bytes, mut first_row, mut next_row) = (0usize, 0u64, 1u64, 1u64);
    for (i, g) in groups.iter().enumerate() {
        bytes += g.compressed_size().max(0) as u64;
        next_row += g.num_rows().max(0) as u64;
        if bytes >= target || i + 1 == groups.len() {
            pieces.push(Piece {
                unit: PieceUnit::RowGroups,
                start: start as u64,
                end: i as u64 + 1,
                first_row,
            });
            (start, bytes, first_row) = (i + 1, 0, next_row);
        }
    }
    Ok(Some(pieces))
}

/// One Parquet file (or run of row groups) being read.
pub(crate) struct ParquetFile {
    reader: ParquetRecordBatchReader,
    display: String,
    next_row: u64,
}

impl super::files::FileReader for ParquetFile {
    fn open(source: &FileSource, _: &SchemaRef, index: usize) -> Result<Self> {
        let path = &source.files()[index];
        let piece = source
            .range(index)
            .filter(|p| p.unit == PieceUnit::RowGroups);
        let mut b = builder(source.name(), path)?.with_batch_size(source.batch_size());
        let mut next_row = 1;
        if let Some(p) = piece {
            b = b.with_row_groups((p.start as usize..p.end as usize).collect());
            next_row = p.first_row;
        }
        let reader = b.build().map_err(|e| {
            Error::source(
                source.name(),
                format!("{} is not a readable Parquet file: {e}", path.display()),
            )
        })?;
        Ok(ParquetFile {
            reader,
            display: path.display().to_string(),
            next_row,
        })
    }

    fn next_batch(
        &mut self,
        source: &FileSource,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        // A corrupt page can make the decoder panic rather than fail (an arithmetic overflow
        // on a garbage length): caught here, so that the error names the file like any other.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reader.next()))
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the decoder failed".into());
                Error::source(
                    source.name(),
                    format!(
                        "{}: cannot read the rows from row {} on: corrupt data ({why})",
                        self.display, self.next_row
                    ),
                )
            })?;
        let Some(b) = next else {
            return Ok(None);
        };
        // A corrupt page surfaces here, long after the file was opened: the error names the
        // file and the rows read before it.
        let b = b.map_err(|e| {
            Error::source(
                source.name(),
                format!(
                    "{}: cannot read the rows from row {} on: {e}",
                    self.display, self.next_row
                ),
            )
        })?;
        let n = b.num_rows();
        let rows: Vec<u64> = (self.next_row..self.next_row + n as u64).collect();
        self.next_row += n as u64;
        assemble(
            schema,
            b.columns().to_vec(),
            &self.display,
            rows,
            vec![None; n],
            vec![None; n],
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsvOptions, InputFormat};
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, UInt64Type};
    use std::sync::Arc;

    fn read(path: &std::path::Path, pieces: Vec<Option<Piece>>) -> Vec<(u64, i64)> {
        let schema = infer_schema("t", &[path.to_path_buf()]).unwrap();
        let files = pieces
            .into_iter()
            .map(|p| (path.to_path_buf(), p))
            .collect();
        let source = FileSource::for_files(
            "t",
            InputFormat::Parquet,
            CsvOptions::default(),
            schema,
            files,
            64,
        );
        let mut out = Vec::new();
        for b in source.batches().unwrap() {
            let b = b.unwrap();
            let x = b.column(0).as_primitive::<Int64Type>();
            let rows = b
                .column_by_name(crate::source::ROW_COL)
                .unwrap()
                .as_primitive::<UInt64Type>();
            for i in 0..b.num_rows() {
                out.push((rows.value(i), x.value(i)));
            }
        }
        out
    }

    #[test]
    fn row_group_pieces_read_the_same_rows_with_the_same_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            Arc::clone(&schema),
            Some(props),
        )
        .unwrap();
        let batch = arrow::array::RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..1000))],
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let whole = read(&path, vec![None]);
        assert_eq!(whole.len(), 1000);
        assert_eq!(whole[999], (1000, 999));
        let pieces = split(&path, 1).unwrap().unwrap();
        assert_eq!(pieces.len(), 10, "{pieces:?}");
        assert_eq!(
            (pieces[3].start, pieces[3].end, pieces[3].first_row),
            (3, 4, 301)
        );
        assert_eq!(read(&path, pieces.into_iter().map(Some).collect()), whole);
        assert!(split(&path, 1 << 30).unwrap().is_none());
    }
}

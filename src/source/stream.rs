//! In-memory sources: any stream of Arrow record batches a job already holds (a DataFusion
//! plan's `SendableRecordBatchStream`, a `RecordBatchReader`, a Python object with
//! `__arrow_c_stream__`), read batch by batch and never collected.
//!
//! A stream can be read once. The mapper's sample is taken by buffering the stream's first
//! batches (up to the sample's rows), and the full pass replays that buffer before it reads
//! on, so the sampled rows are neither lost nor read twice. The provenance of a row is the
//! name the caller gives the data ([`StreamSource::with_label`], `<memory>` by default) and
//! its 1-based position in the stream.
//!
//! Column types are kept, except encodings that are a matter of representation: dictionary
//! encoding is decoded, view types (`Utf8View`, `BinaryView`, Polars' defaults) and large
//! strings become plain strings, at any depth of structs, lists and maps. Every other type
//! (decimals, timestamps with zones, nested structs and lists) reaches the mapper and the
//! checks as a Parquet column of that type would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchReader};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::physical_plan::SendableRecordBatchStream;

use crate::error::{Error, Result};

/// What a stream source yields: record batches, or why the next one could not be made.
pub type BatchIterator =
    Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

/// The name a stream's rows carry as their `source_file` when the caller gives none.
pub const DEFAULT_LABEL: &str = "<memory>";

/// An in-memory source: a schema and the batches that follow it.
pub struct StreamSource {
    schema: SchemaRef,
    batches: BatchIterator,
    label: String,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource")
            .field("schema", &self.schema)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl StreamSource {
    /// A source over `batches`, each of which has the columns of `schema`.
    pub fn new(schema: SchemaRef, batches: BatchIterator) -> StreamSource {
        StreamSource {
            schema,
            batches,
            label: DEFAULT_LABEL.to_string(),
        }
    }

    /// A source over a blocking reader (Arrow's C stream interface, an IPC reader, …).
    pub fn from_reader(reader: impl RecordBatchReader + Send + 'static) -> StreamSource {
        StreamSource::new(reader.schema(), Box::new(reader))
    }

    /// A source over an async stream of batches: a DataFusion plan's output, or any
    /// `Stream` of `RecordBatch` wrapped in a `RecordBatchStreamAdapter`. It is polled from
    /// the reader's blocking thread, which runs inside the pipeline's tokio runtime.
    pub fn from_stream(stream: SendableRecordBatchStream) -> StreamSource {
        let schema = stream.schema();
        let blocking = futures::executor::block_on_stream(stream)
            .map(|r| r.map_err(|e| ArrowError::ExternalError(Box::new(e))));
        StreamSource::new(schema, Box::new(blocking))
    }

    /// The name the rows carry as their `source_file` (default `<memory>`).
    pub fn with_label(mut self, label: impl Into<String>) -> StreamSource {
        self.label = label.into();
        self
    }

    /// The stream's columns as the caller gave them.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// The shared state of an opened stream source: the buffered head and the rest.
pub(crate) struct StreamInput {
    name: String,
    label: String,
    /// The columns as read: the caller's schema with representations normalised.
    data_schema: SchemaRef,
    state: Mutex<State>,
}

impl std::fmt::Debug for StreamInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamInput")
            .field("name", &self.name)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

struct State {
    /// Batches read for the sample and not yet replayed, with provenance, oldest first.
    head: VecDeque<RecordBatch>,
    head_rows: usize,
    /// The unread rest; `None` once it ended or failed.
    rest: Option<BatchIterator>,
    /// An error met while sampling after some rows: the full pass reports it after them.
    pending_error: Option<Error>,
    /// Position of the next row in the stream (1-based).
    next_row: u64,
    /// Batches pulled so far, for messages.
    batches_read: u64,
    /// The full pass has begun: the stream cannot be read again.
    taken: bool,
}

impl StreamInput {
    /// Checks the stream's columns and wraps it for reading.
    pub(crate) fn try_new(name: &str, source: StreamSource) -> Result<StreamInput> {
        let data_schema = Arc::new(normalized_schema(&source.schema));
        let mut seen = std::collections::HashSet::new();
        for f in data_schema.fields() {
            if !seen.insert(f.name().as_str()) {
                return Err(Error::source(
                    name,
                    format!("the stream has two columns named `{}`", f.name()),
                ));
            }
        }
        Ok(StreamInput {
            name: name.to_string(),
            label: source.label,
            data_schema,
            state: Mutex::new(State {
                head: VecDeque::new(),
                head_rows: 0,
                rest: Some(source.batches),
                pending_error: None,
                next_row: 1,
                batches_read: 0,
                taken: false,
            }),
        })
    }

    pub(crate) fn data_schema(&self) -> SchemaRef {
        Arc::clone(&self.data_schema)
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch of the stream with provenance, or `None` at its end.
    fn pull(&self, state: &mut State, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
        // Bounded by the stream: every turn reads one batch; empty batches are skipped.
        loop {
            let Some(rest) = state.rest.as_mut() else {
                return Ok(None);
            };
            let batch = match rest.next() {
                None => {
                    state.rest = None;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    state.rest = None;
                    return Err(Error::source(
                        &self.name,
                        format!(
                            "the stream failed after {} rows: {e}",
                            state.next_row.saturating_sub(1)
                        ),
                    ));
                }
                Some(Ok(b)) => b,
            };
            state.batches_read += 1;
            if batch.num_rows() == 0 {
                continue;
            }
            let columns = match self.columns_of(&batch, state.batches_read) {
                Ok(c) => c,
                Err(e) => {
                    state.rest = None;
                    return Err(e);
                }
            };
            let n = batch.num_rows() as u64;
            let rows: Vec<u64> = (state.next_row..state.next_row + n).collect();
            state.next_row += n;
            let len = rows.len();
            return super::assemble(
                schema,
                columns,
                &self.label,
                rows,
                vec![None; len],
                vec![None; len],
            )
            .map(Some);
        }
    }

    /// The batch's columns in the normalised types; a batch whose columns differ from the
    /// stream's schema is an error naming them.
    fn columns_of(&self, batch: &RecordBatch, number: u64) -> Result<Vec<ArrayRef>> {
        let expected = self.data_schema.fields();
        let got = batch.schema();
        let names = |fields: &Fields| {
            fields
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if got.fields().len() != expected.len()
            || got
                .fields()
                .iter()
                .zip(expected.iter())
                .any(|(a, b)| a.name() != b.name())
        {
            return Err(Error::source(
                &self.name,
                format!(
                    "batch {number} of the stream has the columns [{}], but the stream's schema has [{}]",
                    names(got.fields()),
                    names(expected)
                ),
            ));
        }
        batch
            .columns()
            .iter()
            .zip(expected.iter())
            .map(|(col, field)| {
                if col.data_type() == field.data_type() {
                    return Ok(Arc::clone(col));
                }
                arrow::compute::cast(col, field.data_type()).map_err(|e| {
                    Error::source(
                        &self.name,
                        format!(
                            "batch {number}, column `{}`: cannot read {} as {}: {e}",
                            field.name(),
                            col.data_type(),
                            field.data_type()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The first `n` rows, buffered for the full pass to replay.
    pub(crate) fn sample(&self, n: usize, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut state = self.lock();
        if state.taken {
            return Err(self.read_once());
        }
        // Bounded: every turn buffers one more batch, or the stream ends.
        while state.head_rows < n && state.pending_error.is_none() {
            match self.pull(&mut state, schema) {
                Ok(Some(b)) => {
                    state.head_rows += b.num_rows();
                    state.head.push_back(b);
                }
                Ok(None) => break,
                // An error after some rows leaves the sample at them; the full pass reports
                // it after replaying them, as a file source does.
                Err(e) if state.head_rows > 0 => state.pending_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        let batches: Vec<RecordBatch> = state.head.iter().cloned().collect();
        drop(state);
        let all = arrow::compute::concat_batches(schema, &batches)?;
        Ok(all.slice(0, n.min(all.num_rows())))
    }

    /// Starts the one full pass over the stream.
    pub(crate) fn take(self: &Arc<Self>, schema: SchemaRef) -> Result<StreamBatches> {
        let mut state = self.lock();
        if state.taken {
            return Err(self.read_once());
        }
        state.taken = true;
        Ok(StreamBatches {
            input: Arc::clone(self),
            schema,
        })
    }

    fn read_once(&self) -> Error {
        Error::source(
            &self.name,
            "an in-memory stream can be read only once, and it was read already; hand conform a new stream",
        )
    }
}

/// The full pass: the buffered head, then the rest of the stream.
pub(crate) struct StreamBatches {
    input: Arc<StreamInput>,
    schema: SchemaRef,
}

impl super::ReadBatch for StreamBatches {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut state = self.input.lock();
        if let Some(b) = state.head.pop_front() {
            state.head_rows -= b.num_rows();
            return Ok(Some(b));
        }
        if let Some(e) = state.pending_error.take() {
            return Err(e);
        }
        self.input.pull(&mut state, &self.schema)
    }
}

/// The type a column of `dt` is read as: representations normalised, at any depth.
pub fn normalized_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, value) => normalized_type(value),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::List(f) | DataType::ListView(f) => DataType::List(normalized_field(f)),
        DataType::LargeList(f) | DataType::LargeListView(f) => {
            DataType::LargeList(normalized_field(f))
        }
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(normalized_field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(normalized_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(normalized_field(f), *sorted),
        other => other.clone(),
    }
}

fn normalized_field(f: &FieldRef) -> FieldRef {
    Arc::new(
        f.as_ref()
            .clone()
            .with_data_type(normalized_type(f.data_type())),
    )
}

fn normalized_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| normalized_field(f).as_ref().clone())
        .collect();
    Schema::new(fields)
}

#[cfg(test)]
mod tests {
    use super::super::ReadBatch;
    use super::*;
    use arrow::array::{DictionaryArray, Int8Array, Int32Array, StringViewArray};
    use arrow::datatypes::Int8Type;

    #[test]
    fn representations_are_normalised_at_any_depth() {
        let dict = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8View));
        assert_eq!(normalized_type(&dict), DataType::Utf8);
        let nested = DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(vec![Field::new("s", DataType::LargeUtf8, true)].into()),
            true,
        )));
        let DataType::List(item) = normalized_type(&nested) else {
            panic!("a list stays a list")
        };
        let DataType::Struct(fields) = item.data_type() else {
            panic!("a struct stays a struct")
        };
        assert_eq!(fields[0].data_type(), &DataType::Utf8);
        let ts = DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            Some("+02:00".into()),
        );
        assert_eq!(normalized_type(&ts), ts);
    }

    fn batch(schema: &SchemaRef, values: &[&str]) -> RecordBatch {
        let keys = Int8Array::from_iter_values(0..values.len() as i8);
        let dict = DictionaryArray::<Int8Type>::try_new(
            keys,
            Arc::new(StringViewArray::from_iter_values(values.iter().copied())),
        )
        .unwrap();
        let n = Int32Array::from_iter_values(0..values.len() as i32);
        RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(dict), Arc::new(n)]).unwrap()
    }

    /// What Polars hands over: dictionary-encoded string views, and a number column.
    fn raw_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "name",
                DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8View)),
                true,
            ),
            Field::new("n", DataType::Int32, false),
        ]))
    }

    fn input(batches: Vec<std::result::Result<RecordBatch, ArrowError>>) -> Arc<StreamInput> {
        let source = StreamSource::new(raw_schema(), Box::new(batches.into_iter()));
        Arc::new(StreamInput::try_new("s", source.with_label("part-1")).unwrap())
    }

    fn schema_of(i: &StreamInput) -> SchemaRef {
        super::super::with_provenance(&i.data_schema())
    }

    #[test]
    fn the_sample_is_replayed_and_rows_are_numbered_in_stream_order() {
        let raw = raw_schema();
        let i = input(vec![
            Ok(batch(&raw, &["a", "b"])),
            Ok(batch(&raw, &[])),
            Ok(batch(&raw, &["c", "d", "e"])),
        ]);
        let schema = schema_of(&i);
        let sample = i.sample(3, &schema).unwrap();
        assert_eq!(sample.num_rows(), 3);
        let mut full = i.take(Arc::clone(&schema)).unwrap();
        let mut rows = Vec::new();
        let mut names = Vec::new();
        while let Some(b) = full.read_batch().unwrap() {
            let r = b
                .column_by_name(super::super::ROW_COL)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap();
            rows.extend(r.values().iter().copied());
            let n = arrow::array::AsArray::as_string::<i32>(b.column(0));
            names.extend(n.iter().map(|v| v.unwrap().to_string()));
            let f = arrow::array::AsArray::as_string::<i32>(
                b.column_by_name(super::super::FILE_COL).unwrap(),
            );
            assert_eq!(f.value(0), "part-1");
        }
        assert_eq!(rows, vec![1, 2, 3, 4, 5]);
        assert_eq!(names, vec!["a", "b", "c", "d", "e"]);
        let again = i.take(schema).err().unwrap().to_string();
        assert!(again.contains("read only once"), "{again}");
    }

    #[test]
    fn an_error_after_sampled_rows_comes_after_them() {
        let raw = raw_schema();
        let i = input(vec![
            Ok(batch(&raw, &["a"])),
            Err(ArrowError::ComputeError("the producer stopped".into())),
            Ok(batch(&raw, &["never"])),
        ]);
        let schema = schema_of(&i);
        assert_eq!(i.sample(10, &schema).unwrap().num_rows(), 1);
        let mut full = i.take(schema).unwrap();
        assert_eq!(full.read_batch().unwrap().unwrap().num_rows(), 1);
        let e = full.read_batch().unwrap_err().to_string();
        assert!(
            e.contains("after 1 rows") && e.contains("the producer stopped"),
            "{e}"
        );
    }

    #[test]
    fn a_batch_with_other_columns_is_an_error_naming_them() {
        let raw = raw_schema();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(vec![1]))],
        )
        .unwrap();
        let i = input(vec![Ok(batch(&raw, &["a"])), Ok(other)]);
        let schema = schema_of(&i);
        let mut full = i.take(schema).unwrap();
        full.read_batch().unwrap();
        let e = full.read_batch().unwrap_err().to_string();
        assert!(e.contains("batch 2") && e.contains("[x]"), "{e}");
    }
}

//! `conform._conform`: the Python module over the conform library. The Python package
//! (`python/conform/`) wraps it in typed objects; everything here takes and returns plain
//! values (config text or path, JSON text, Arrow streams).
//!
//! The engine runs on one multi-threaded tokio runtime owned by the module. Every call releases
//! the GIL while the engine works and checks for Ctrl-C every 100 ms; an interrupt cancels the
//! run (unfinished outputs are removed, as in the CLI) and raises `KeyboardInterrupt`.

use std::collections::VecDeque;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use arrow::array::{
    ArrayRef, ListArray, RecordBatch, RecordBatchReader, StringArray, StructArray, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ffi_stream::FFI_ArrowArrayStream;
use conform::{Config, Error, InvalidRow, MapperChoice, Pipeline, StreamSource};
use futures::StreamExt;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

create_exception!(
    _conform,
    ConformError,
    PyException,
    "Base of conform's errors."
);
create_exception!(
    _conform,
    ConfigError,
    ConformError,
    "The configuration or the internal schema cannot be used."
);
create_exception!(
    _conform,
    SourceError,
    ConformError,
    "A source could not be read."
);
create_exception!(
    _conform,
    CredentialsError,
    SourceError,
    "A source or store rejected its credentials."
);
create_exception!(
    _conform,
    MappingError,
    ConformError,
    "No usable mapping could be made or read for a source."
);

/// The engine's runtime, started on first use and kept for the life of the process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("conform")
            .enable_all()
            .build()
            .expect("conform's runtime")
    })
}

/// The library's error as the matching Python exception, with the same message (which never
/// holds a secret: the library's errors are written that way).
fn to_py(e: Error) -> PyErr {
    let text = e.to_string();
    match e {
        Error::Config { .. } | Error::Schema(_) => ConfigError::new_err(text),
        Error::Credentials { .. } => CredentialsError::new_err(text),
        Error::Source { .. } | Error::Io { .. } => SourceError::new_err(text),
        Error::Mapping { .. } | Error::Llm { .. } => MappingError::new_err(text),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(text),
        _ => ConformError::new_err(text),
    }
}

/// Runs `fut` on the runtime without the GIL, waking every 100 ms to let Python handle
/// signals: Ctrl-C cancels the run and raises `KeyboardInterrupt`.
fn wait<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = conform::Result<T>> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    // `allow_threads` needs a `Sync` closure; the receiver is only used from this thread.
    let rx = Mutex::new(rx);
    let handle = runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    loop {
        match py.allow_threads(|| {
            rx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(Duration::from_millis(100))
        }) {
            Ok(result) => return result.map_err(to_py),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    handle.abort();
                    // Dropping the run's futures removes its unfinished outputs; wait for that.
                    // The writer threads it no longer awaits then drop their files on their
                    // own; an interpreter exiting right after the `KeyboardInterrupt` would
                    // otherwise cut that short and leave temporary files. Bounded, as the CLI's
                    // shutdown grace is.
                    py.allow_threads(|| {
                        let _ = futures::executor::block_on(handle);
                        conform::wait_for_open_outputs(Duration::from_secs(2));
                    });
                    return Err(interrupt);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ConformError::new_err(
                    "internal error: the run stopped without a result",
                ));
            }
        }
    }
}

/// A config from a file path, or from JSON text whose relative paths resolve against the
/// working directory.
fn load_config(config: &str, is_text: bool) -> conform::Result<Config> {
    if !is_text {
        return Config::load(Path::new(config));
    }
    let base = std::env::current_dir().map_err(|e| Error::io("reading", ".", e))?;
    Config::from_str_with_env(config, &base, &|k| std::env::var(k).ok())
}

fn mapper_choice(mapper: &str) -> PyResult<MapperChoice> {
    match mapper {
        "auto" => Ok(MapperChoice::Auto),
        "heuristic" => Ok(MapperChoice::Heuristic),
        "llm" => Ok(MapperChoice::Llm),
        "file" => Ok(MapperChoice::File),
        other => Err(PyValueError::new_err(format!(
            "unknown mapper `{other}`; valid mappers are `auto`, `heuristic`, `llm`, `file`"
        ))),
    }
}

fn pipeline(config: Config) -> conform::Result<Pipeline> {
    let p = Pipeline::try_new(config)?.with_cluster(None)?;
    Ok(p.with_remote_engine(Arc::new(conform::cluster::Ballista)))
}

/// `conform run`: every selected source, the same output files and `run_summary.json`;
/// returns the summary as JSON text.
#[pyfunction]
#[pyo3(signature = (config, is_text, sources, mapper, output_format=None, output_dir=None, run_id=None))]
#[allow(clippy::too_many_arguments)]
fn run(
    py: Python<'_>,
    config: String,
    is_text: bool,
    sources: Vec<String>,
    mapper: &str,
    output_format: Option<String>,
    output_dir: Option<String>,
    run_id: Option<String>,
) -> PyResult<String> {
    let choice = mapper_choice(mapper)?;
    let mut config = load_config(&config, is_text).map_err(to_py)?;
    if let Some(f) = output_format {
        config.output_format = f
            .parse()
            .map_err(|e: String| to_py(Error::config("output_format", e)))?;
    }
    if let Some(d) = output_dir {
        config.set_output_directory(PathBuf::from(d));
    }
    let mut pipeline = pipeline(config).map_err(to_py)?;
    if let Some(id) = run_id {
        pipeline = pipeline.with_run_id(&id).map_err(to_py)?;
    }
    let names = pipeline.select(&sources).map_err(to_py)?;
    wait(py, async move {
        let summary = pipeline.run(&names, choice, &|_| None, &mut |_| {}).await?;
        Ok(serde_json::to_string(&summary)?)
    })
}

/// `conform map`: each selected source's mapping document, written for review as the CLI
/// does; returns `(source, document JSON)` pairs in config order.
#[pyfunction]
#[pyo3(signature = (config, is_text, sources, mapper))]
fn map(
    py: Python<'_>,
    config: String,
    is_text: bool,
    sources: Vec<String>,
    mapper: &str,
) -> PyResult<Vec<(String, String)>> {
    let choice = mapper_choice(mapper)?;
    let pipeline = pipeline(load_config(&config, is_text).map_err(to_py)?).map_err(to_py)?;
    let names = pipeline.select(&sources).map_err(to_py)?;
    wait(py, async move {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let prepared = pipeline.prepare(&name, choice).await?;
            prepared.save()?;
            out.push((name, serde_json::to_string(&prepared.document)?));
        }
        Ok(out)
    })
}

fn decisions(text: &str) -> PyResult<conform::review::Decisions> {
    serde_json::from_str(text)
        .map_err(|e| PyValueError::new_err(format!("not valid decisions: {e}")))
}

/// `conform review`'s data for one source: the mapping (stored, or proposed in memory), the
/// decisions applied, the sample run of it and of every field's candidates; returns the
/// review as JSON text. Nothing is written.
#[pyfunction]
#[pyo3(signature = (config, is_text, source, mapper, rows, decisions))]
fn review(
    py: Python<'_>,
    config: String,
    is_text: bool,
    source: String,
    mapper: &str,
    rows: usize,
    decisions: &str,
) -> PyResult<String> {
    let choice = mapper_choice(mapper)?;
    let decisions = self::decisions(decisions)?;
    let pipeline = pipeline(load_config(&config, is_text).map_err(to_py)?)
        .map_err(to_py)?
        .without_learning();
    wait(py, async move {
        pipeline.select(std::slice::from_ref(&source))?;
        let base =
            Arc::new(conform::review::ReviewBase::load(&pipeline, &source, choice, rows).await?);
        Ok(base
            .review(&pipeline, &decisions, conform::review::Scope::Everything)
            .await?
            .to_json()
            .to_string())
    })
}

/// The review page's "Pin": writes the document with the decisions, pinned, when the stored
/// document is still at version `base`; returns what was written as JSON text.
#[pyfunction]
#[pyo3(signature = (config, is_text, source, mapper, rows, decisions, base, reviewer=None))]
#[allow(clippy::too_many_arguments)]
fn pin(
    py: Python<'_>,
    config: String,
    is_text: bool,
    source: String,
    mapper: &str,
    rows: usize,
    decisions: &str,
    base: String,
    reviewer: Option<String>,
) -> PyResult<String> {
    let choice = mapper_choice(mapper)?;
    let decisions = self::decisions(decisions)?;
    let pipeline = pipeline(load_config(&config, is_text).map_err(to_py)?)
        .map_err(to_py)?
        .without_learning();
    wait(py, async move {
        pipeline.select(std::slice::from_ref(&source))?;
        let loaded =
            Arc::new(conform::review::ReviewBase::load(&pipeline, &source, choice, rows).await?);
        if loaded.version != base {
            return Err(Error::mapping(
                &source,
                format!(
                    "not pinned: {} changed since the review was made (version {base} → {}); review it again",
                    loaded.path.display(),
                    loaded.version
                ),
            ));
        }
        let review = loaded
            .review(&pipeline, &decisions, conform::review::Scope::FirstLook(0))
            .await?;
        let pinned =
            conform::review::pin(&review, &conform::review::reviewer(reviewer.as_deref()))?;
        Ok(serde_json::to_string(&pinned)?)
    })
}

/// One source's valid and invalid rows as two Arrow streams.
#[pyfunction]
#[pyo3(signature = (config, is_text, source, mapper))]
fn transform(
    py: Python<'_>,
    config: String,
    is_text: bool,
    source: String,
    mapper: &str,
) -> PyResult<(ArrowStream, ArrowStream)> {
    let choice = mapper_choice(mapper)?;
    let pipeline = pipeline(load_config(&config, is_text).map_err(to_py)?).map_err(to_py)?;
    pipeline
        .select(std::slice::from_ref(&source))
        .map_err(to_py)?;
    let stream = wait(py, async move {
        let prepared = pipeline.prepare(&source, choice).await?;
        prepared.save()?;
        pipeline.execute(&prepared).await
    })?;
    Ok(split_streams(stream))
}

/// A pipeline over in-memory data: the config (path or text, optional) with the caller's
/// settings over it, `data` added as source `name` and, if given, its mapping document.
#[allow(clippy::too_many_arguments)]
fn data_pipeline(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    config: Option<String>,
    is_text: bool,
    overrides: &str,
    name: &str,
    label: String,
    document: Option<String>,
) -> PyResult<Pipeline> {
    let (text, base) = match config {
        Some(c) if !is_text => {
            let (text, base) = Config::read(Path::new(&c)).map_err(to_py)?;
            (Some(text), base)
        }
        other => (other, std::env::current_dir()?),
    };
    let overrides: serde_json::Map<String, serde_json::Value> = serde_json::from_str(overrides)
        .map_err(|e| PyValueError::new_err(format!("the settings are not JSON values: {e}")))?;
    let config = Config::for_data(text.as_deref(), overrides, &base, &|k| {
        std::env::var(k).ok()
    })
    .map_err(to_py)?;
    let mut pipeline = pipeline(config).map_err(to_py)?;
    if let Some(doc) = document {
        let doc =
            conform::MappingDocument::from_json(Path::new("<mapping>"), &doc).map_err(to_py)?;
        pipeline = pipeline.with_document(name, doc);
    }
    let reader = import_stream(py, data)?;
    pipeline
        .add_stream(name, StreamSource::from_reader(reader).with_label(label))
        .map_err(to_py)?;
    Ok(pipeline)
}

/// The Arrow C stream of any object with `__arrow_c_stream__` (pyarrow, Polars, DuckDB, …),
/// taken over without a copy. It is read later on the engine's threads; a producer that
/// runs Python code (a generator behind a pyarrow reader) takes the GIL itself.
fn import_stream(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
) -> PyResult<arrow::ffi_stream::ArrowArrayStreamReader> {
    let _ = py;
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "data must implement the Arrow PyCapsule interface (`__arrow_c_stream__`): a pyarrow Table or RecordBatchReader, a Polars DataFrame, a DuckDB relation, …; got {}",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.downcast::<PyCapsule>()?;
    if capsule.name()? != Some(c"arrow_array_stream") {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "`__arrow_c_stream__` did not return an `arrow_array_stream` capsule",
        ));
    }
    // SAFETY: the capsule holds an `ArrowArrayStream` (its name says so); `from_raw` moves
    // it out and marks the capsule's copy released, so the capsule's destructor does not
    // release it a second time.
    let stream =
        unsafe { FFI_ArrowArrayStream::from_raw(capsule.pointer() as *mut FFI_ArrowArrayStream) };
    arrow::ffi_stream::ArrowArrayStreamReader::try_new(stream)
        .map_err(|e| PyValueError::new_err(format!("cannot read the Arrow stream: {e}")))
}

/// `conform.map(data, schema)`: the mapping document of in-memory data; nothing is written.
#[pyfunction]
#[pyo3(signature = (data, config, is_text, overrides, name, label, mapper))]
#[allow(clippy::too_many_arguments)]
fn map_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    config: Option<String>,
    is_text: bool,
    overrides: &str,
    name: String,
    label: String,
    mapper: &str,
) -> PyResult<String> {
    let choice = mapper_choice(mapper)?;
    let pipeline = data_pipeline(py, data, config, is_text, overrides, &name, label, None)?;
    wait(py, async move {
        let prepared = pipeline.prepare(&name, choice).await?;
        Ok(serde_json::to_string(&prepared.document)?)
    })
}

/// `conform.transform(data, schema)`: in-memory data's valid and invalid rows as two Arrow
/// streams; nothing is written.
#[pyfunction]
#[pyo3(signature = (data, config, is_text, overrides, name, label, mapper, document=None))]
#[allow(clippy::too_many_arguments)]
fn transform_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    config: Option<String>,
    is_text: bool,
    overrides: &str,
    name: String,
    label: String,
    mapper: &str,
    document: Option<String>,
) -> PyResult<(ArrowStream, ArrowStream)> {
    let choice = mapper_choice(mapper)?;
    let pipeline = data_pipeline(py, data, config, is_text, overrides, &name, label, document)?;
    let stream = wait(py, async move {
        let prepared = pipeline.prepare(&name, choice).await?;
        pipeline.execute(&prepared).await
    })?;
    Ok(split_streams(stream))
}

/// The two reading ends of a source's split: valid rows and invalid rows.
fn split_streams(stream: conform::SplitStream) -> (ArrowStream, ArrowStream) {
    let valid_schema = stream.valid_schema();
    let split = Arc::new(Split {
        state: Mutex::new(State {
            sides: [Side::default(), Side::default()],
            finished: false,
            error: None,
        }),
        changed: Condvar::new(),
    });
    let pump = Arc::clone(&split);
    // The plan's stream is polled from a blocking thread: pushing may wait for a reader.
    runtime().spawn_blocking(move || pump.pump(stream));
    (
        ArrowStream::new(Arc::clone(&split), VALID, valid_schema),
        ArrowStream::new(split, INVALID, invalid_schema()),
    )
}

const VALID: usize = 0;
const INVALID: usize = 1;

/// Bytes of batches a side holds in memory before its producer waits (or spills, when the
/// other side's reader is waiting and would otherwise never be served).
const SIDE_BYTES: usize = 64 << 20;

/// The schema of the invalid-rows stream.
fn invalid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source_file", DataType::Utf8, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
        Field::new(
            "errors",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(conform::RowError::arrow_fields()),
                false,
            ))),
            false,
        ),
    ]))
}

/// Invalid rows as one batch of [`invalid_schema`]: the record as its JSON text, the errors
/// as a list of (field, rule, message).
fn invalid_batch(rows: &[InvalidRow]) -> Result<RecordBatch, ArrowError> {
    let files = StringArray::from_iter_values(rows.iter().map(|r| r.source_file.as_str()));
    let numbers = UInt64Array::from_iter_values(rows.iter().map(|r| r.row));
    let records = StringArray::from_iter_values(rows.iter().map(|r| r.record.as_json()));
    let raws: StringArray = rows.iter().map(|r| r.raw.as_deref()).collect();
    let errors = rows.iter().flat_map(|r| r.errors.iter());
    let fields: StringArray = errors.clone().map(|e| e.field.as_deref()).collect();
    let rules: StringArray = errors.clone().map(|e| Some(e.rule.as_str())).collect();
    let messages: StringArray = errors.map(|e| Some(e.message.as_str())).collect();
    let items = StructArray::try_new(
        conform::RowError::arrow_fields(),
        vec![
            Arc::new(fields) as ArrayRef,
            Arc::new(rules),
            Arc::new(messages),
        ],
        None,
    )?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.errors.len()));
    let schema = invalid_schema();
    let DataType::List(item) = schema.field(4).data_type().clone() else {
        unreachable!("errors is a list column")
    };
    let lists = ListArray::try_new(item, offsets, Arc::new(items), None)?;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(files),
            Arc::new(numbers),
            Arc::new(records),
            Arc::new(raws),
            Arc::new(lists),
        ],
    )
}

/// One of the two outputs of a transform, as seen by its reader.
#[derive(Default)]
struct Side {
    /// Batches not yet read, oldest first.
    memory: VecDeque<RecordBatch>,
    memory_bytes: usize,
    /// Batches written to disk because the other side's reader needed the producer to go on;
    /// all of them are newer than those in `memory`.
    spill: Option<Spill>,
    /// The reader is blocked waiting for a batch.
    waiting: bool,
    /// The reader was dropped: its batches are discarded.
    dropped: bool,
}

struct State {
    sides: [Side; 2],
    finished: bool,
    error: Option<String>,
}

/// The valid and invalid outputs of one source's plan, read by two independent streams.
/// Each side holds up to [`SIDE_BYTES`] in memory; when one side is full the producer waits
/// for its reader, unless the other side's reader is waiting, in which case the full side
/// spills to a temporary Arrow IPC file. Reading the streams one after the other (all valid
/// rows first, say) therefore works, with bounded memory, and reading them side by side
/// never touches the disk.
struct Split {
    state: Mutex<State>,
    changed: Condvar,
}

impl Split {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the plan to its end (or until both readers are gone), dealing its batches.
    fn pump(&self, mut stream: conform::SplitStream) {
        /// Ends the streams however the pump stops, a panic included, so that no reader
        /// waits forever.
        struct Finish<'a>(&'a Split);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                if std::thread::panicking() && state.error.is_none() {
                    state.error = Some("internal error: the transform stopped".into());
                }
                state.finished = true;
                drop(state);
                self.0.changed.notify_all();
            }
        }
        let _finish = Finish(self);
        // Bounded: each turn takes one batch of the plan, which ends.
        while let Some(item) = futures::executor::block_on(stream.next()) {
            let (valid, invalid) = match item {
                Ok(parts) => parts,
                Err(e) => {
                    let mut state = self.lock();
                    state.error = Some(e.to_string());
                    break;
                }
            };
            let invalid = if invalid.is_empty() {
                None
            } else {
                match invalid_batch(&invalid) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        self.lock().error = Some(e.to_string());
                        break;
                    }
                }
            };
            let mut alive = false;
            for (side, batch) in [(VALID, Some(valid)), (INVALID, invalid)] {
                match batch {
                    Some(b) if b.num_rows() > 0 => alive |= self.push(side, b),
                    _ => alive |= !self.lock().sides[side].dropped,
                }
            }
            if !alive {
                // Both streams were dropped: stop the plan.
                break;
            }
        }
    }

    /// Queues `batch` on `side`; false when that side's reader is gone.
    fn push(&self, side: usize, batch: RecordBatch) -> bool {
        let mut state = self.lock();
        // Bounded: every wait ends when a reader takes a batch, starts waiting, or drops.
        loop {
            let other_waiting = state.sides[1 - side].waiting;
            let s = &mut state.sides[side];
            if s.dropped {
                return false;
            }
            let room = s.memory.is_empty() || s.memory_bytes < SIDE_BYTES;
            if s.spill.is_none() && room {
                s.memory_bytes += batch.get_array_memory_size();
                s.memory.push_back(batch);
                break;
            }
            if s.spill.is_some() || other_waiting {
                let written = match &mut s.spill {
                    Some(spill) => spill.write(&batch),
                    None => Spill::create(&batch).map(|spill| s.spill = Some(spill)),
                };
                if let Err(e) = written {
                    state.error = Some(format!("spilling to a temporary file: {e}"));
                    state.sides[side].dropped = true;
                    return false;
                }
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        self.changed.notify_all();
        true
    }

    /// The next batch of `side`, waiting for the producer.
    fn next(&self, side: usize) -> Option<Result<RecordBatch, ArrowError>> {
        let mut state = self.lock();
        // Bounded: every wait ends when the producer pushes or finishes.
        loop {
            let s = &mut state.sides[side];
            if let Some(b) = s.memory.pop_front() {
                s.memory_bytes -= b.get_array_memory_size();
                drop(state);
                self.changed.notify_all();
                return Some(Ok(b));
            }
            if let Some(spill) = &mut s.spill {
                let read = spill.read();
                if spill.is_drained() {
                    s.spill = None;
                }
                return Some(read);
            }
            if state.finished {
                return state
                    .error
                    .clone()
                    .map(|e| Err(ArrowError::ExternalError(e.into())));
            }
            state.sides[side].waiting = true;
            self.changed.notify_all();
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.sides[side].waiting = false;
        }
    }

    fn drop_side(&self, side: usize) {
        let mut state = self.lock();
        let s = &mut state.sides[side];
        s.dropped = true;
        s.memory.clear();
        s.memory_bytes = 0;
        s.spill = None;
        drop(state);
        self.changed.notify_all();
    }
}

/// Batches on disk in Arrow IPC stream format, read back in order. The file is removed when
/// the spill is dropped.
struct Spill {
    path: PathBuf,
    writer: arrow_ipc::writer::StreamWriter<std::fs::File>,
    reader: Option<arrow_ipc::reader::StreamReader<std::io::BufReader<std::fs::File>>>,
    written: usize,
    read: usize,
}

impl Spill {
    fn create(first: &RecordBatch) -> Result<Spill, ArrowError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("conform-spill-{}-{n}.arrows", std::process::id()));
        let file = std::fs::File::create(&path)?;
        let writer = arrow_ipc::writer::StreamWriter::try_new(file, &first.schema())?;
        let mut spill = Spill {
            path,
            writer,
            reader: None,
            written: 0,
            read: 0,
        };
        spill.write(first)?;
        Ok(spill)
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.writer.write(batch)?;
        self.writer.flush()?;
        self.written += 1;
        Ok(())
    }

    fn read(&mut self) -> Result<RecordBatch, ArrowError> {
        if self.reader.is_none() {
            let file = std::fs::File::open(&self.path)?;
            self.reader = Some(arrow_ipc::reader::StreamReader::try_new(
                std::io::BufReader::new(file),
                None,
            )?);
        }
        let reader = self.reader.as_mut().expect("opened above");
        // Only whole batches already written and flushed are read.
        let batch = reader
            .next()
            .unwrap_or_else(|| Err(ArrowError::IpcError("spill file ended early".into())))?;
        self.read += 1;
        Ok(batch)
    }

    fn is_drained(&self) -> bool {
        self.read == self.written
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The blocking reader handed to Arrow's C stream interface.
struct SideReader {
    split: Arc<Split>,
    side: usize,
    schema: SchemaRef,
}

impl Iterator for SideReader {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        // A consumer holding the GIL (pyarrow, Polars or DuckDB reading this stream) lets
        // it go while it waits: the input may be a Python generator, which the engine's
        // reader can then run to produce the batch waited for. (`with_gil` on a thread
        // that holds the GIL already only counts; on another it takes the GIL for the
        // moment `allow_threads` needs to release it.)
        Python::with_gil(|py| py.allow_threads(|| self.split.next(self.side)))
    }
}

impl RecordBatchReader for SideReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl Drop for SideReader {
    fn drop(&mut self) {
        self.split.drop_side(self.side);
    }
}

/// A stream of Arrow record batches, consumed once through the Arrow PyCapsule interface
/// (`__arrow_c_stream__`) by pyarrow, Polars, DuckDB or any other Arrow library, without a
/// copy.
#[pyclass(module = "conform._conform")]
struct ArrowStream {
    reader: Mutex<Option<SideReader>>,
    schema: SchemaRef,
}

impl ArrowStream {
    fn new(split: Arc<Split>, side: usize, schema: SchemaRef) -> ArrowStream {
        ArrowStream {
            reader: Mutex::new(Some(SideReader {
                split,
                side,
                schema: Arc::clone(&schema),
            })),
            schema,
        }
    }
}

#[pymethods]
impl ArrowStream {
    /// Hands the stream over as an `ArrowArrayStream` PyCapsule. A stream can be consumed
    /// once; a requested schema other than the stream's own is not supported.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The stream is always given in its own schema; consumers cast if they asked for
        // another (the interface allows a producer to ignore the request).
        let _ = requested_schema;
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| ConformError::new_err("this stream was already consumed"))?;
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        let name = CString::new("arrow_array_stream").expect("no NUL");
        PyCapsule::new(py, stream, Some(name))
    }

    /// The column names of the stream's schema.
    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Drops the stream without reading it (the other stream then never waits for it).
    fn close(&self) {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// The module.
#[pymodule]
fn _conform(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(map, m)?)?;
    m.add_function(wrap_pyfunction!(transform, m)?)?;
    m.add_function(wrap_pyfunction!(map_data, m)?)?;
    m.add_function(wrap_pyfunction!(transform_data, m)?)?;
    m.add_function(wrap_pyfunction!(review, m)?)?;
    m.add_function(wrap_pyfunction!(pin, m)?)?;
    m.add_class::<ArrowStream>()?;
    let py = m.py();
    m.add("ConformError", py.get_type::<ConformError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("SourceError", py.get_type::<SourceError>())?;
    m.add("CredentialsError", py.get_type::<CredentialsError>())?;
    m.add("MappingError", py.get_type::<MappingError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

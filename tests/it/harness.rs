//! A scratch directory plus helpers to run the binary in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Workdir {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    /// Copies a file from `testdata/`.
    pub fn copy_testdata(&self, from: &str, to: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(from);
        std::fs::copy(&src, self.join(to))
            .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_in(self.path(), args, env)
    }

    /// Lines of an NDJSON file, parsed.
    pub fn ndjson(&self, name: &str) -> Vec<serde_json::Value> {
        self.read(name)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    }

    /// A Parquet output: its Arrow schema and all its batches.
    pub fn parquet(
        &self,
        name: &str,
    ) -> (arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>) {
        let f =
            std::fs::File::open(self.join(name)).unwrap_or_else(|e| panic!("opening {name}: {e}"));
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let schema = reader.schema().clone();
        (
            schema,
            reader.build().unwrap().map(|b| b.unwrap()).collect(),
        )
    }

    /// Files in the directory whose name contains `.tmp-` (left-over temporary outputs).
    pub fn temp_files(&self) -> Vec<String> {
        walk(self.path())
            .into_iter()
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }
}

/// Runs the binary off the async runtime (tests that also run a server in-process).
pub async fn run_async(w: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir = w.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_in(&dir, &a, &e)
    })
    .await
    .unwrap()
}

/// Runs the binary in `dir` with extra environment variables.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conform"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        // The developer's own endpoint must not change what `--mapper auto` does.
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run conform");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// A config with the given sources (JSON object text) and schema (JSON text).
pub fn config(sources: &str, schema: &str, extra: &str) -> String {
    format!(
        r#"{{"output_directory": "out", {extra} "data_sources": {sources}, "internal_schema": {schema}}}"#
    )
}

/// The demo's schema, reused by tests.
pub const PEOPLE_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["id", "name"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1},
        "email": {"type": ["string", "null"], "format": "email"},
        "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150}
    }
}"#;

/// A scratch directory holding the demo's config and sources.
pub fn demo() -> Workdir {
    let w = Workdir::new();
    for f in ["config.json", "source1.csv", "source2.json"] {
        w.copy_testdata(&format!("demo/{f}"), f);
    }
    w
}

/// The properties of one entry of a field-by-field reply, from a request's body: the
/// schema's `items`, or its first shape where a grammar-constrained server is given two
/// (a candidate's number, or the model's own expression); both list the same targets.
pub fn reply_entry(body: &serde_json::Value) -> &serde_json::Value {
    let items = &body["response_format"]["json_schema"]["schema"]["properties"]["fields"]["items"];
    match items.get("oneOf") {
        Some(shapes) => &shapes[0]["properties"],
        None => &items["properties"],
    }
}

/// An OpenAI chat-completion response whose message is `content` (1,200 prompt and 300
/// completion tokens), as a local LLM server returns it.
pub fn completion(content: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
    })
}

/// The schema of the HTTP tests' records: `{id, name}`, both required.
pub const ITEMS_SCHEMA: &str = r#"{"type": "object", "required": ["id", "name"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string", "minLength": 1}}}"#;

/// Records `{id: i, name: "n<i>"}` for `i` in `from..=to`, as an API page returns them.
pub fn items(from: u64, to: u64) -> serde_json::Value {
    serde_json::Value::Array(
        (from..=to)
            .map(|i| serde_json::json!({"id": i, "name": format!("n{i}")}))
            .collect(),
    )
}

/// The `id`s of a source's valid NDJSON output under `out/`.
pub fn ids(w: &Workdir, source: &str) -> Vec<u64> {
    w.ndjson(&format!("out/{source}_valid_data.ndjson"))
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect()
}

/// A pinned mapping document `m.json` for source `s` with the given field expressions.
pub fn pinned(w: &Workdir, fields: &[(&str, &str)]) {
    let fields: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(f, e)| (f.to_string(), serde_json::json!({"expr": e})))
        .collect();
    w.write(
        "m.json",
        serde_json::json!({"source": "s", "source_fingerprint": "-", "mapper": "file", "pinned": true, "fields": fields}).to_string(),
    );
}

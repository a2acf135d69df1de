//! The console words: a source's block on stdout in the original tool's wording, and the notes
//! on stderr. The library reports typed results; only this module turns them into text.

use conform::pipeline::{FailureKind, MappingOrigin, Note, SourceReport, Stage};

/// The source's console block, line by line.
pub fn block(r: &SourceReport) -> Vec<String> {
    let name = &r.name;
    let mut lines = vec![
        "*".repeat(40),
        format!("Starting to process for {name}"),
        format!("Loading raw data for {name}"),
    ];
    if r.stage >= Stage::Transforming {
        lines.push(format!("Generated Mapping for {name}"));
        lines.push(format!("Transforming data from {name}"));
    }
    if r.stage == Stage::Saved
        && let Some((valid, invalid)) = &r.shown_outputs
    {
        lines.push(format!(
            "Successfully validated {} items from {name}",
            r.valid
        ));
        if r.invalid > 0 {
            lines.push(format!(
                "{} validation errors occurred for {name}.",
                r.invalid
            ));
        }
        lines.push(format!("Data saved to {valid}"));
        if let Some(invalid) = invalid {
            lines.push(format!("Data saved to {invalid}"));
        }
    }
    match r.failure {
        // The original tool's wording for a source whose credentials are rejected.
        Some(FailureKind::Credentials) => lines.push(format!("Invalid credentials for {name}")),
        Some(FailureKind::Other) => lines.push(format!(
            "Failed to process {name}: {}",
            r.error.as_deref().unwrap_or("unknown error")
        )),
        None => {}
    }
    lines
}

/// Where a mapping came from, as a note.
pub fn origin(o: &MappingOrigin) -> String {
    match o {
        MappingOrigin::Stored { path, pinned } => format!(
            "using the {} mapping {}",
            if *pinned { "pinned" } else { "stored" },
            path.display()
        ),
        MappingOrigin::Llm { model, endpoint } => {
            format!("mapping with the LLM (model {model} at {endpoint})")
        }
        MappingOrigin::LlmFallback { error } => {
            format!("mapping with the heuristic mapper (LLM failed: {error})")
        }
        MappingOrigin::Heuristic { no_endpoint: true } => {
            "mapping with the heuristic mapper (no LLM endpoint configured)".into()
        }
        MappingOrigin::Heuristic { no_endpoint: false } => {
            "mapping with the heuristic mapper".into()
        }
    }
}

/// A note on how a source ran.
pub fn note(n: &Note) -> String {
    match n {
        Note::Origin(o) => origin(o),
        Note::RanLocally => "runs locally: only file sources run on a cluster (HTTP and PostgreSQL sources are read here)".into(),
        Note::Cluster {
            address,
            partitions,
            files,
            listed_s,
        } => format!(
            "ran on the cluster at {address}: {partitions} partition(s) from {files} file(s), listed in {listed_s:.2} s"
        ),
        Note::Anomaly(message) => format!("anomaly: {message}"),
        Note::Delta {
            table,
            version,
            already: false,
            run_id,
        } => format!("Delta table {table}: committed version {version} (run {run_id})"),
        Note::Delta {
            table,
            version,
            already: true,
            run_id,
        } => format!(
            "Delta table {table}: run {run_id} was committed already (version {version}); nothing added"
        ),
    }
}

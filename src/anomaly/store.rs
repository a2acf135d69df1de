//! Profiles kept in the mapping store, one NDJSON line per run.

use super::*;

pub(super) fn profiles_path(dir: &Path, source: &str) -> PathBuf {
    dir.join("profiles").join(format!("{source}.ndjson"))
}

/// The source's last `keep` stored profiles, oldest first (none if it has never run).
pub fn load_profiles(dir: &Path, source: &str, keep: usize) -> Result<Vec<RunProfile>> {
    let p = profiles_path(dir, source);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("reading", p, e)),
    };
    // A line that does not parse (a run killed mid-append) is skipped, not fatal. Only the
    // newest lines are parsed: the file grows by one line per run.
    let mut newest: Vec<RunProfile> = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(keep)
        .collect();
    newest.reverse();
    Ok(newest)
}

/// Appends a run's profile (one whole line per write).
pub fn append_profile(dir: &Path, source: &str, profile: &RunProfile) -> Result<()> {
    let p = profiles_path(dir, source);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
    }
    let mut line = serde_json::to_vec(profile)
        .map_err(|e| Error::source(source, format!("profile not serialisable: {e}")))?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(&line))
        .map_err(|e| Error::io("writing", &p, e))
}

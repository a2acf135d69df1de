//! Profiles kept in the mapping store, one NDJSON line per run.

use super::*;

pub(super) fn profiles_path(dir: &Path, source: &str) -> PathBuf {
    dir.join("profiles").join(format!("{source}.ndjson"))
}

/// The source's last `keep` stored profiles, oldest first (none if it has never run).
pub fn load_profiles(dir: &Path, source: &str, keep: usize) -> Result<Vec<RunProfile>> {
    let p = profiles_path(dir, source);
    let Some(text) = crate::store::read_text_optional(source, &p)? else {
        return Ok(vec![]);
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
    let mut line = serde_json::to_vec(profile)
        .map_err(|e| Error::source(source, format!("profile not serialisable: {e}")))?;
    line.push(b'\n');
    crate::store::append(source, &profiles_path(dir, source), &line)
}

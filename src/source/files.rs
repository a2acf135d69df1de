//! Finding and opening input files.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Expands a path, `file://` URL or glob pattern (relative to `base`) into the sorted list of
/// files.
pub(crate) fn resolve(name: &str, pattern: &str, base: &Path) -> Result<Vec<PathBuf>> {
    // A `file://` URL names a local (or shared) path; other schemes need an object store.
    let pattern = match pattern.split_once("://") {
        Some(("file", path)) => path,
        Some((scheme, _)) if scheme.len() > 1 => {
            return Err(Error::source(
                name,
                format!(
                    "{scheme}:// paths are not supported; mount the storage and give a file path"
                ),
            ));
        }
        _ => pattern,
    };
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let text = full.to_string_lossy().to_string();
    if !text.contains(['*', '?', '[']) {
        return match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => Ok(vec![full]),
            Ok(_) => Err(Error::source(
                name,
                format!("{} is not a file", full.display()),
            )),
            Err(e) => Err(Error::source(
                name,
                format!("cannot open {}: {e}", full.display()),
            )),
        };
    }
    let mut files: Vec<PathBuf> = glob::glob(&text)
        .map_err(|e| Error::source(name, format!("bad glob pattern {text:?}: {e}")))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::source(name, format!("no file matches {text:?}")));
    }
    Ok(files)
}

/// Opens a file for buffered reading, decompressing `.gz` and `.zst` transparently.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn std::io::BufRead + Send>> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let inner: Box<dyn Read + Send> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 16,
            file,
        )))
    } else if name.ends_with(".zst") {
        Box::new(zstd::Decoder::new(file).map_err(|e| Error::io("opening", path, e))?)
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_paths_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.csv");
        std::fs::write(&f, "x\n1\n").unwrap();
        let url = format!("file://{}", f.display());
        assert_eq!(resolve("s", &url, Path::new("/")).unwrap(), vec![f]);
        let e = resolve("s", "s3://bucket/a.csv", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3:// paths are not supported"), "{e}");
    }
}

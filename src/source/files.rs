//! Finding and opening input files, and the loop over a source's files that every file
//! format shares.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::FileSource;
use crate::error::{Error, Result};
use crate::store;

/// One format's reader of one input file (or of one piece of it, on a cluster executor).
pub(crate) trait FileReader: Sized + Send {
    /// Opens file number `index` of the source.
    fn open(source: &FileSource, schema: &SchemaRef, index: usize) -> Result<Self>;
    /// The next batch of this file; `None` at its end.
    fn next_batch(
        &mut self,
        source: &FileSource,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>>;
}

/// The batches of a source's files, in order: each file is opened when the previous one ends.
pub(crate) struct Files<R> {
    source: FileSource,
    schema: SchemaRef,
    next: usize,
    current: Option<R>,
}

impl<R: FileReader> Files<R> {
    pub(crate) fn new(source: FileSource, schema: SchemaRef) -> Self {
        Files {
            source,
            schema,
            next: 0,
            current: None,
        }
    }
}

impl<R: FileReader> super::ReadBatch for Files<R> {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        // Bounded: every turn either returns a batch or moves past one file.
        loop {
            let reader = match &mut self.current {
                Some(r) => r,
                None => {
                    if self.next >= self.source.files().len() {
                        return Ok(None);
                    }
                    let r = R::open(&self.source, &self.schema, self.next)?;
                    self.next += 1;
                    self.current.insert(r)
                }
            };
            match reader.next_batch(&self.source, &self.schema)? {
                Some(b) => return Ok(Some(b)),
                None => self.current = None,
            }
        }
    }
}

/// Expands a path, `file://` URL, object-store URL or glob pattern (relative to `base`) into
/// the sorted list of files (object URLs for a store).
pub(crate) fn resolve(name: &str, pattern: &str, base: &Path) -> Result<Vec<PathBuf>> {
    if store::is_remote(Path::new(pattern)) {
        return store::resolve(name, pattern);
    }
    // A `file://` URL names a local (or shared) path.
    let pattern = pattern.strip_prefix("file://").unwrap_or(pattern);
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

/// Opens a file (or streams an object) from its start.
fn open_plain(path: &Path) -> Result<Box<dyn Read + Send>> {
    if store::is_remote(path) {
        return store::Object::at("input file", path)?.reader("input file", 0, None);
    }
    Ok(Box::new(
        File::open(path).map_err(|e| Error::io("opening", path, e))?,
    ))
}

/// Reads bytes `start..end` of an uncompressed file or object (a cluster partition's piece):
/// a seek for a file, a range request for an object.
pub(crate) fn open_range(path: &Path, start: u64, end: u64) -> Result<Box<dyn Read + Send>> {
    if store::is_remote(path) {
        return store::Object::at("input file", path)?.reader("input file", start, Some(end));
    }
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io("reading", path, e))?;
    Ok(Box::new(f.take(end.saturating_sub(start))))
}

/// The size of a file or object in bytes.
pub(crate) fn size(path: &Path) -> Result<u64> {
    if store::is_remote(path) {
        return store::Object::at("input file", path)?.size("input file");
    }
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io("reading", path, e))
}

/// Opens a file (or object) for buffered reading, decompressing `.gz` and `.zst`
/// transparently.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn std::io::BufRead + Send>> {
    let file = open_plain(path)?;
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
    fn file_urls_are_paths_and_unknown_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.csv");
        std::fs::write(&f, "x\n1\n").unwrap();
        let url = format!("file://{}", f.display());
        assert_eq!(resolve("s", &url, Path::new("/")).unwrap(), vec![f]);
        let e = resolve("s", "ftp://host/a.csv", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp:// is not a supported store"), "{e}");
    }
}

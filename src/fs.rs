//! Files that appear whole or not at all: written under a temporary name in the destination's
//! directory (`.NAME.tmp-PID-N`), synced, and renamed into place; dropped unfinished, the
//! temporary file is removed. In an object store (`s3://…`) the same guarantee comes from a
//! multipart upload that completes only on commit ([`crate::store::Upload`]). A helper every
//! layer may use.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How many [`AtomicFile`]s of this process are open (neither committed nor dropped). A
/// cancelled run stops awaiting its writer threads, which then drop their files on their own;
/// an embedding program that is about to exit waits for this count to reach zero
/// ([`wait_for_open_outputs`]) so that no temporary file outlives the run.
static OPEN: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();

fn open_count() -> std::sync::MutexGuard<'static, usize> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until no output of this process is being written — after a cancelled run, until its
/// writer threads have removed their temporary files or aborted their uploads — or until
/// `timeout` has passed. Returns whether every output was closed in time.
pub fn wait_for_open_outputs(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut open = open_count();
    while *open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        open = CLOSED
            .wait_timeout(open, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// A file being written under a temporary name, or an object being uploaded.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<Writer>,
}

/// Where the bytes go until the commit.
enum Writer {
    Local(BufWriter<File>),
    Store(crate::store::Upload),
}

impl Writer {
    fn get(&mut self) -> &mut dyn Write {
        match self {
            Writer::Local(w) => w,
            Writer::Store(u) => u,
        }
    }
}

impl AtomicFile {
    /// Creates `<dir>/.<name>.tmp-<pid>-<n>` for a file that will be renamed to `dest`. The
    /// counter keeps two writers of the same file in one process (a cluster task run twice)
    /// from sharing a temporary file; the last rename wins, whole.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        let file = Self::open(dest)?;
        // Counted once built: `Drop` runs exactly once for it, committed or not.
        *open_count() += 1;
        Ok(file)
    }

    fn open(dest: &Path) -> Result<AtomicFile> {
        if crate::store::is_remote(dest) {
            let upload = crate::store::Object::at("output directory", dest)?.upload();
            return Ok(AtomicFile {
                tmp: dest.to_path_buf(),
                dest: dest.to_path_buf(),
                writer: Some(Writer::Store(upload)),
            });
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("output");
        if dest.is_dir() {
            // Refused before anything is written: the rename at the end could never succeed.
            return Err(Error::io(
                "writing",
                dest,
                std::io::Error::other("a directory has the output file's name"),
            ));
        }
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            writer: Some(Writer::Local(BufWriter::with_capacity(1 << 20, file))),
        })
    }

    /// Flushes, syncs and renames the file into place (or completes the upload).
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut w = match self.writer.take().expect("not yet committed") {
            Writer::Local(w) => w,
            Writer::Store(u) => {
                u.commit("output directory")?;
                return Ok(self.dest.clone());
            }
        };
        let done = (|| {
            w.flush().map_err(|e| Error::io("writing", &self.tmp, e))?;
            let f = w
                .into_inner()
                .map_err(|e| Error::io("writing", &self.tmp, e.into_error()))?;
            f.sync_all()
                .map_err(|e| Error::io("syncing", &self.tmp, e))?;
            if self.dest.is_dir() {
                return Err(Error::io(
                    "writing",
                    &self.dest,
                    std::io::Error::other("a directory has the output file's name"),
                ));
            }
            std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io("renaming", &self.tmp, e))
        })();
        if let Err(e) = done {
            // The writer is gone, so `Drop` would not remove the temporary file.
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(self.dest.clone())
    }

    /// The temporary file's path (the object's URL in a store), for messages.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer
            .as_mut()
            .expect("not committed")
            .get()
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not committed").get().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // An unfinished upload aborts itself when dropped.
        if let Some(Writer::Local(_)) = self.writer.take() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        let mut open = open_count();
        *open = open.saturating_sub(1);
        CLOSED.notify_all();
    }
}

/// Removes the temporary files (`.NAME.tmp-PID-N`) that a killed conform process left in
/// `dir`: those whose process is gone. Files of a live process (another run writing to the
/// same directory) and files of any other naming are left alone. Returns the files removed.
/// Where processes cannot be looked up (no `/proc`), nothing is removed.
pub fn remove_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        if pid == own || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The process id in a temporary file name of [`AtomicFile`]'s pattern, `.NAME.tmp-PID-N`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (stem, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!stem.is_empty() && digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Writes a whole small file atomically.
pub fn atomic_write(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", dest, e))?;
    f.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_of_dead_processes_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (2^22) never names a live process.
        let dead = dir.path().join(".s_valid_data.json.tmp-4194400-0");
        let live = dir
            .path()
            .join(format!(".s_valid_data.json.tmp-{}-3", std::process::id()));
        let other = dir.path().join(".notes.tmp-1-x");
        let plain = dir.path().join("s_valid_data.json");
        for p in [&dead, &live, &other, &plain] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temp_files(dir.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && plain.exists());
        assert_eq!(temp_file_pid(".a.b.tmp-12-3"), Some(12));
        assert_eq!(temp_file_pid("a.tmp-12-3"), None);
        assert_eq!(temp_file_pid(".a.tmp-12-"), None);
    }

    #[test]
    fn waiting_for_open_outputs_sees_a_writer_thread_drop_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = AtomicFile::create(&dir.path().join("out.json")).unwrap();
        file.write_all(b"partial").unwrap();
        let tmp = file.path().to_path_buf();
        // While it is open the wait times out (other tests' files can only add to the count).
        assert!(!wait_for_open_outputs(Duration::from_millis(50)));
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(file);
        });
        // Other tests may hold files for a moment; none for this long.
        assert!(wait_for_open_outputs(Duration::from_secs(30)));
        assert!(!tmp.exists());
        writer.join().unwrap();
    }
}

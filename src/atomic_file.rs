//! Crash-safe file writing: a file is either the old version or the new one, never half.

use std::io::Write;
use std::path::Path;

use crate::error::{AdCorreError, Result};

/// What names a temporary file of [`write_atomically`]: `.<name>.tmp-<pid>`.
const TEMPORARY_MARK: &str = ".tmp-";

/// Whether `file_name` is a temporary file [`write_atomically`] writes (left behind only by a
/// process killed mid-write).
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.contains(TEMPORARY_MARK)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, flushed to disk
/// and then renamed over `path`, so an interrupted write leaves any previous file intact.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            AdCorreError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            )
        })?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}{TEMPORARY_MARK}{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        AdCorreError::io(path, err)
    })
}

//! The log's small state files (`topic.json`, `producer-ids`, group offsets, each
//! partition's `recovery-point`): written whole and atomically, read strictly.
//!
//! A crash leaves such a file with its old content or its new one, never a mix, so
//! a file that cannot be parsed was damaged from outside; the caller decides what
//! that means (refuse to open, or fall back to something provably safe), but never
//! silently reads it as a default.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// Writes `bytes` to `path` through a temporary file that is synced and renamed over
/// it, then syncs the directory so that the rename itself survives a crash.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| LogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// `<name>.tmp` beside `path` (appended, so that `a.json` and `a.txt` never share one).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// The content of a state file, or `None` when there is none.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io(path, e)),
    }
}

/// A state file holding one decimal number (and optionally a newline).
pub(crate) fn parse_number(path: &Path, bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_suffix('\n').unwrap_or(s).parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| LogError::BadStateFile {
            path: path.to_path_buf(),
            reason: format!(
                "expected a non-negative decimal number, found {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_file_takes_only_a_number() {
        let p = Path::new("x");
        assert_eq!(parse_number(p, b"1000\n").unwrap(), 1000);
        assert_eq!(parse_number(p, b"7").unwrap(), 7);
        for bad in [
            &b""[..],
            b"\0\0\0",
            b"12x",
            b" 5",
            b"-3",
            b"99999999999999999999",
        ] {
            assert!(
                matches!(parse_number(p, bad), Err(LogError::BadStateFile { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}

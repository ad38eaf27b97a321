//! File operations baton does in more than one place: hashing a file (and
//! reading a sha256 written in hex), writing one atomically (an fsynced temp
//! file renamed over it, then the directory fsynced), and the error that
//! names what failed on which path. A leaf, used by the release store, the
//! manifest, the cohort record and `publish`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A file operation that failed: what was tried, on which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct IoError {
    /// The operation ("read", "write", "fsync", …).
    pub what: &'static str,
    /// The path it was tried on.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// `what` on `path` failed with `source`.
    pub fn new(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            what,
            path: path.into(),
            source,
        }
    }
}

/// For `map_err`: turns an `io::Error` from `what` on `path` into an
/// [`IoError`] (and, through `?`, into any error that wraps one).
pub fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IoError + 'a {
    move |source| IoError::new(what, path, source)
}

/// A file's sha256 and size, read in one streaming pass.
pub fn hash_file(path: &Path) -> Result<([u8; 32], u64), IoError> {
    let mut file = std::fs::File::open(path).map_err(io("read", path))?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher).map_err(io("read", path))?;
    Ok((hasher.finalize().into(), size))
}

/// Parses a sha256 written as 64 hex digits (surrounding space allowed).
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// fsyncs a directory, so that a rename or a new entry in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new
/// one, never a part: a temp file beside it (named `<prefix>…`) is written,
/// given `mode` when one is set, fsynced and renamed over `path`, and then
/// the directory is fsynced. The temp file is removed when any step fails.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    prefix: &str,
    mode: Option<u32>,
) -> Result<(), IoError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(io("write", path))?;
    tmp.write_all(bytes).map_err(io("write", path))?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("write", path))?;
    }
    tmp.as_file().sync_all().map_err(io("write", path))?;
    tmp.persist(path)
        .map_err(|e| IoError::new("rename into", path, e.error))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_file_gives_the_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, size) = hash_file(&path).unwrap();
        assert_eq!(
            hex::encode(digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
        let missing = hash_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", ".t-", Some(0o640)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn write_atomic_into_a_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/f");
        let e = write_atomic(&path, b"x", ".t-", None).unwrap_err();
        assert_eq!(e.what, "write");
        assert_eq!(e.path, path);
    }
}

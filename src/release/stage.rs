//! Streams a candidate into a temp file beside the releases (mode 0600),
//! hashing it on the fly, under a size cap and a time limit. Memory stays
//! flat: one 256 KiB buffer (and the file's own) whatever the size. The
//! file is not fsynced here: an install fsyncs what it keeps, and a check
//! or a patch's download keeps nothing.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Error;
use crate::fetchers::Body;
use crate::fsutil::IoError;

/// Each read and write is a hop to a blocking thread: 256 KiB takes a
/// 24 MB build in about a hundred, where 64 KiB took four hundred. 1 MiB
/// helped a little more on a busy machine, but left the idle master with
/// 0.9 MiB more heap after an S3 download (BENCHMARKS.md, "Master at
/// idle").
const CHUNK: usize = 256 << 10;

/// A complete download.
pub struct Staged {
    /// The temp file; removed when dropped.
    pub file: tempfile::NamedTempFile,
    /// Its sha256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
}

/// Streams `body` into a new temp file in `dir`.
pub async fn stage(
    mut body: Body,
    dir: &Path,
    from: &str,
    max_size: u64,
    limit: Duration,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Staged, Error> {
    if let Some(size) = expected_size.filter(|&s| s > max_size) {
        return Err(Error::TooLarge {
            limit: max_size,
            size: Some(size),
        });
    }
    let temp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
        .map_err(|source| {
            Error::Io(IoError {
                what: "create a temp file in",
                path: dir.to_owned(),
                source,
            })
        })?;
    let path = temp.path().to_owned();
    let io_err = |source| {
        Error::Io(IoError {
            what: "write",
            path: path.clone(),
            source,
        })
    };
    let mut out = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(io_err)?);
    let copy = async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = body.read(&mut buf).await.map_err(|e| Error::Download {
                from: from.to_owned(),
                reason: crate::errors::display_chain(&e),
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > max_size {
                return Err(Error::TooLarge {
                    limit: max_size,
                    size: None,
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(io_err)?;
            progress(size);
        }
        out.flush().await.map_err(io_err)?;
        Ok((hasher.finalize().into(), size))
    };
    let (sha256, size) = tokio::time::timeout(limit, copy)
        .await
        .map_err(|_| Error::DownloadTimeout { limit })??;
    match expected_size {
        Some(expected) if size < expected => {
            return Err(Error::Truncated {
                expected,
                got: size,
            })
        }
        Some(expected) if size > expected => {
            return Err(Error::Longer {
                expected,
                got: size,
            })
        }
        _ => {}
    }
    Ok(Staged {
        file: temp,
        sha256,
        size,
    })
}

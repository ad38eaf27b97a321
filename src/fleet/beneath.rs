//! Files under a store directory whose inside anyone who may write the
//! store can shape. The base directory is the operator's (configured, so
//! followed), but every component below it is opened without following a
//! symbolic link: a `reports/<version>/failed` made a link to `/etc` is
//! refused, and a host never writes, lists or reads outside the store.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

/// One entry of a listing.
pub(super) struct Entry {
    /// Its name.
    pub(super) name: String,
    /// Its modification time (the epoch when it cannot be read).
    pub(super) at: SystemTime,
    /// A directory (a link to one is not).
    pub(super) is_dir: bool,
}

/// A directory opened beneath a base.
pub(super) struct Dir {
    fd: OwnedFd,
    /// `base/rel`, for messages.
    shown: String,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Opens `base/rel`, following no symbolic link below `base`; creates the
/// missing directories when `create` says so, else gives `None` for a
/// missing one. A component that is a link or not a directory is an error
/// that names it.
pub(super) fn open_dir(base: &Path, rel: &str, create: bool) -> Result<Option<Dir>, String> {
    let shown = base.join(rel).display().to_string();
    if create {
        std::fs::create_dir_all(base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    }
    let mut fd = match nix::fcntl::open(base, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if !create => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", base.display())),
    };
    let mut walked = base.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        walked.push(part);
        if part == "." || part == ".." {
            return Err(format!("refused {}: a path step out", walked.display()));
        }
        let open = |at: &OwnedFd| {
            nix::fcntl::openat(at, part, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
        };
        fd = match open(&fd) {
            Ok(next) => next,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(&fd, part, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("cannot create {}: {e}", walked.display())),
                }
                open(&fd).map_err(|e| not_a_dir(&walked, e))?
            }
            Err(e) => return Err(not_a_dir(&walked, e)),
        };
    }
    Ok(Some(Dir { fd, shown }))
}

fn not_a_dir(path: &Path, e: Errno) -> String {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => format!(
            "refused {}: a symbolic link or a file, not a directory (no link under the \
             store is followed)",
            path.display()
        ),
        e => format!("cannot open {}: {e}", path.display()),
    }
}

impl Dir {
    /// Writes `name` so that a reader sees the old file or the new one:
    /// a temp file (`.report-<random>`) created here, never through a link
    /// and never another writer's, written with `mode`, fsynced and renamed
    /// over `name`; then the directory is fsynced. The temp file goes when
    /// a step fails.
    pub(super) fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
        let shown = format!("{}/{name}", self.shown);
        let mode = Mode::from_bits_truncate(mode);
        // Random names: hosts sharing the store may share a PID (each
        // master PID 1 in its container). A name taken is tried again.
        let mut created = None;
        for _ in 0..16 {
            let tmp = format!(".report-{}", hex::encode(rand::random::<[u8; 8]>()));
            match nix::fcntl::openat(
                &self.fd,
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    created = Some((tmp, fd));
                    break;
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(format!("cannot write {shown}: {e}")),
            }
        }
        let Some((tmp, fd)) = created else {
            return Err(format!("cannot write {shown}: no free temp name"));
        };
        let written = (|| {
            // The umask narrowed the mode at creation.
            nix::sys::stat::fchmod(&fd, mode)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes).map_err(io_errno)?;
            file.sync_all().map_err(io_errno)?;
            nix::fcntl::renameat(&self.fd, tmp.as_str(), &self.fd, name)
        })();
        if let Err(e) = written {
            // Ours: this call created it.
            let _ = nix::unistd::unlinkat(
                &self.fd,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(format!("cannot write {shown}: {e}"));
        }
        nix::unistd::fsync(&self.fd).map_err(|e| format!("cannot write {shown}: {e}"))
    }

    /// The entries (dot files left out), at most `limit`; whether there
    /// were more. An entry that is gone by the time it is looked at is left
    /// out.
    pub(super) fn list(&self, limit: usize) -> Result<(Vec<Entry>, bool), String> {
        // An open of its own: a listing never moves this one's offset.
        let mut dir = nix::dir::Dir::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| format!("cannot list {}: {e}", self.shown))?;
        let mut found = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", self.shown))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            if found.len() == limit {
                return Ok((found, true));
            }
            let (at, is_dir) =
                match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => (
                        SystemTime::UNIX_EPOCH
                            + std::time::Duration::from_secs(st.st_mtime.max(0) as u64),
                        st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    ),
                    Err(Errno::ENOENT) => continue,
                    Err(_) => (SystemTime::UNIX_EPOCH, false),
                };
            found.push(Entry {
                name: name.to_string_lossy().into_owned(),
                at,
                is_dir,
            });
        }
        Ok((found, false))
    }

    /// `name`'s bytes when it is a regular file of at most `cap` bytes;
    /// `None` when it is gone, larger, a symbolic link, or not a regular
    /// file (a FIFO would block its reader, a device feed it for ever).
    pub(super) fn read_small(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>, String> {
        let opened = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(format!("cannot read {}/{name}: {e}", self.shown)),
        };
        read_capped(
            std::fs::File::from(fd),
            cap,
            &format!("{}/{name}", self.shown),
        )
    }
}

/// An open file's bytes when it is a regular file of at most `cap` bytes;
/// `None` when it is larger or not a regular file. `shown` names it.
pub(super) fn read_capped(
    file: std::fs::File,
    cap: u64,
    shown: &str,
) -> Result<Option<Vec<u8>>, String> {
    let regular = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .is_file();
    if !regular {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_lists_and_reads_beneath_the_base() {
        let base = tempfile::tempdir().unwrap();
        let dir = open_dir(base.path(), "reports/2.0.0/failed", true)
            .unwrap()
            .unwrap();
        dir.write_atomic("web-1.json", b"{}", 0o644).unwrap();
        dir.write_atomic("web-1.json", b"{\"again\":1}", 0o644)
            .unwrap();
        let path = base.path().join("reports/2.0.0/failed/web-1.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let (names, more) = dir.list(10).unwrap();
        assert_eq!(
            names.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["web-1.json"],
            "no temp file is left"
        );
        assert!(!more);
        assert!(names[0].at > SystemTime::UNIX_EPOCH && !names[0].is_dir);
        assert_eq!(
            dir.read_small("web-1.json", 100).unwrap().unwrap(),
            b"{\"again\":1}"
        );
        assert_eq!(
            dir.read_small("web-1.json", 4).unwrap(),
            None,
            "over the cap"
        );
        assert_eq!(dir.read_small("web-2.json", 100).unwrap(), None);
        assert!(open_dir(base.path(), "reports/3.0.0/failed", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_linked_directory_is_refused_for_writes_and_reads() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("web-1.json"), b"{}").unwrap();
        std::fs::create_dir_all(base.path().join("reports/2.0.0")).unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("reports/2.0.0/failed"))
            .unwrap();
        for create in [true, false] {
            let refused = open_dir(base.path(), "reports/2.0.0/failed", create)
                .err()
                .unwrap();
            assert!(refused.contains("symbolic link"), "{refused}");
            assert!(refused.contains("reports/2.0.0/failed"), "{refused}");
        }
        // Higher up, too: `reports` itself a link.
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), other.path().join("reports")).unwrap();
        assert!(open_dir(other.path(), "reports/2.0.0/started", true).is_err());
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            1,
            "nothing was written outside the store"
        );
        assert!(open_dir(base.path(), "reports/../x", true).is_err());
    }

    #[test]
    fn a_linked_file_is_neither_read_nor_written_through() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret");
        std::fs::write(&target, b"keep").unwrap();
        let dir = open_dir(base.path(), "reports", true).unwrap().unwrap();
        std::os::unix::fs::symlink(&target, base.path().join("reports/web-1.json")).unwrap();
        assert_eq!(dir.read_small("web-1.json", 100).unwrap(), None);
        // Written by renaming over the link: the link goes, the target stays.
        dir.write_atomic("web-1.json", b"{}", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(base.path().join("reports/web-1.json").is_file());
    }
}

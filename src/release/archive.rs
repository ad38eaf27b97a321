//! Unpacking `.tar.gz` and `.zip` assets into a release directory, and
//! picking out the configured binary.
//!
//! Containment is by construction, not by checks on names: every entry is
//! written relative to the release directory's descriptor, one path
//! component at a time with `O_NOFOLLOW | O_DIRECTORY`, so no write or
//! chmod ever passes through a link (one the archive made, or any other).
//! A leaf that exists is unlinked first and created with `O_EXCL`. Once
//! unpacked, every link in the tree must resolve inside it, followed
//! through the real tree, chains included. The unpacked bytes and the
//! entry count are capped; setuid, setgid, sticky and world-writable bits
//! are dropped; devices, fifos and sockets are refused.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};

use super::Error;
use crate::fsutil::IoError;

/// What an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes its files may hold together (`verify.max_unpacked`).
    pub bytes: u64,
    /// The most entries it may hold (`verify.max_entries`).
    pub entries: u64,
}

impl Limits {
    /// The limits `[verify]` sets.
    pub fn of(verify: &crate::config::Verify) -> Limits {
        Limits {
            bytes: verify.max_unpacked,
            entries: verify.max_entries,
        }
    }
}

impl Default for Limits {
    /// The limits of a default `[verify]`.
    fn default() -> Limits {
        Limits::of(&crate::config::Verify::default())
    }
}

/// What a staged file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// gzip-compressed tar.
    TarGz,
    /// zip.
    Zip,
    /// The binary itself.
    Plain,
}

/// Tells the kind from the asset's name, else from its first bytes.
pub fn kind(name: &str, file: &mut File) -> std::io::Result<Kind> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        return Ok(Kind::TarGz);
    }
    if lower.ends_with(".zip") {
        return Ok(Kind::Zip);
    }
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    file.rewind()?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Kind::TarGz,
        [b'P', b'K', 3, 4] => Kind::Zip,
        _ => Kind::Plain,
    })
}

/// The most links followed while resolving one link in the finished tree.
const MAX_LINK_HOPS: u32 = 40;
/// The longest link target a zip entry may hold.
const MAX_LINK_TARGET: u64 = 4096;
/// The permission bits kept from an archive: no setuid, setgid, sticky or
/// world-writable bit.
const KEPT_MODE: u32 = 0o775;

/// Unpacks `file` of `kind` into the empty directory `dest`, within
/// `limits`, so that the binary ends at `dest/<binary>` with mode 0755.
pub fn unpack(
    file: File,
    kind: Kind,
    binary: &str,
    dest: &Path,
    limits: Limits,
) -> Result<(), Error> {
    let mut tree = Tree::open(dest, limits)?;
    match kind {
        Kind::Plain => unreachable!("plain binaries are moved, not unpacked"),
        Kind::TarGz => unpack_tar(file, &mut tree)?,
        Kind::Zip => unpack_zip(file, &mut tree)?,
    }
    links_stay_inside(dest)?;
    pick_binary(dest, binary)
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Archive {
        reason: format!("corrupt archive: {e}"),
    }
}

fn refuse(entry: &Path, why: impl std::fmt::Display) -> Error {
    Error::Archive {
        reason: format!("entry {} {why}", entry.display()),
    }
}

/// The refusal of a link whose target leaves the release directory.
fn links_outside(entry: &Path, target: &Path) -> Error {
    refuse(
        entry,
        format!(
            "links to {}, outside the release directory",
            target.display()
        ),
    )
}

fn escapes(entry: &Path) -> Error {
    refuse(entry, "would escape the release directory")
}

/// An entry's path as plain names: `.` and empty components dropped; a
/// `..`, a root or a prefix refuses it.
fn names(entry: &Path) -> Result<Vec<OsString>, Error> {
    let mut out = Vec::new();
    for c in entry.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes(entry))
            }
        }
    }
    if out.is_empty() {
        return Err(refuse(entry, "names no file"));
    }
    Ok(out)
}

/// Whether a link at `at` (names from the root) to `target` stays inside
/// by its text alone: the early refusal; [`links_stay_inside`] decides on
/// the real tree.
fn lexically_inside(at: &[OsString], target: &Path) -> bool {
    let mut depth = at.len().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn io_error(what: &'static str, path: &Path, e: Errno) -> Error {
    Error::Io(IoError {
        what,
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })
}

/// The release directory being filled, through its descriptor.
struct Tree {
    root: OwnedFd,
    dest: PathBuf,
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Tree {
    fn open(dest: &Path, limits: Limits) -> Result<Tree, Error> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error("open", dest, e))?;
        Ok(Tree {
            root,
            dest: dest.to_owned(),
            limits,
            bytes: 0,
            entries: 0,
        })
    }

    /// Counts one more entry against the cap.
    fn count(&mut self, entry: &Path) -> Result<(), Error> {
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(refuse(
                entry,
                format!(
                    "is past the archive's limit of {} entries (verify.max_entries)",
                    self.limits.entries
                ),
            ));
        }
        Ok(())
    }

    /// The directory holding the last of `names`, opened one component at
    /// a time without following links; with `create`, missing ones are
    /// made. A component that is a link or a file refuses the entry.
    fn parent(&self, names: &[OsString], entry: &Path, create: bool) -> Result<OwnedFd, Error> {
        let mut dir = self.reopen_root()?;
        for name in &names[..names.len() - 1] {
            dir = self.subdir(&dir, name, entry, create)?;
        }
        Ok(dir)
    }

    fn reopen_root(&self) -> Result<OwnedFd, Error> {
        openat(
            &self.root,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error("open", &self.dest, e))
    }

    fn subdir(
        &self,
        dir: &OwnedFd,
        name: &OsString,
        entry: &Path,
        create: bool,
    ) -> Result<OwnedFd, Error> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(dir, name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if create => {
                match mkdirat(dir, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_error("create", &self.dest.join(entry), e)),
                }
                openat(dir, name.as_os_str(), flags, Mode::empty())
                    .map_err(|e| self.through(entry, name, e))
            }
            Err(e) => Err(self.through(entry, name, e)),
        }
    }

    /// Why a path component could not be entered.
    fn through(&self, entry: &Path, name: &OsString, e: Errno) -> Error {
        match e {
            Errno::ELOOP | Errno::ENOTDIR => refuse(
                entry,
                format!(
                    "passes through {:?}, which is a link or a file, not a directory; \
                     entries are never written through links",
                    name
                ),
            ),
            Errno::ENOENT => refuse(entry, format!("names {name:?}, which does not exist")),
            e => io_error("open", &self.dest.join(entry), e),
        }
    }

    /// Makes room for a new leaf: an earlier file or link of that name
    /// goes (unlinked, never followed); a directory refuses the entry.
    fn clear(&self, dir: &OwnedFd, leaf: &OsString, entry: &Path) -> Result<(), Error> {
        match fstatat(
            dir,
            leaf.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_error("inspect", &self.dest.join(entry), e)),
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                Err(refuse(entry, "replaces a directory"))
            }
            Ok(_) => unlinkat(dir, leaf.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_error("replace", &self.dest.join(entry), e)),
        }
    }

    fn dir(&mut self, entry: &Path) -> Result<(), Error> {
        self.count(entry)?;
        let names = names(entry)?;
        let parent = self.parent(&names, entry, true)?;
        self.subdir(&parent, names.last().expect("not empty"), entry, true)?;
        Ok(())
    }

    fn file(&mut self, entry: &Path, mode: u32, data: &mut dyn Read) -> Result<(), Error> {
        self.count(entry)?;
        let names = names(entry)?;
        let parent = self.parent(&names, entry, true)?;
        let leaf = names.last().expect("not empty");
        self.clear(&parent, leaf, entry)?;
        let fd = openat(
            &parent,
            leaf.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_error("create", &self.dest.join(entry), e))?;
        let mut out = File::from(fd);
        let room = self.limits.bytes.saturating_sub(self.bytes);
        let written =
            std::io::copy(&mut data.take(room.saturating_add(1)), &mut out).map_err(corrupt)?;
        if written > room {
            return Err(refuse(
                entry,
                format!(
                    "takes the archive past its limit of {} unpacked bytes \
                     (verify.max_unpacked; the download itself is capped by verify.max_size)",
                    self.limits.bytes
                ),
            ));
        }
        self.bytes += written;
        out.flush().map_err(corrupt)?;
        fchmod(&out, Mode::from_bits_truncate(mode & KEPT_MODE))
            .map_err(|e| io_error("chmod", &self.dest.join(entry), e))
    }

    fn symlink(&mut self, entry: &Path, target: &Path) -> Result<(), Error> {
        self.count(entry)?;
        let names = names(entry)?;
        if target.as_os_str().is_empty() || !lexically_inside(&names, target) {
            return Err(links_outside(entry, target));
        }
        let parent = self.parent(&names, entry, true)?;
        let leaf = names.last().expect("not empty");
        self.clear(&parent, leaf, entry)?;
        symlinkat(target, &parent, leaf.as_os_str())
            .map_err(|e| io_error("create", &self.dest.join(entry), e))
    }

    fn hard_link(&mut self, entry: &Path, target: &Path) -> Result<(), Error> {
        self.count(entry)?;
        let to = names(entry)?;
        let from = names(target).map_err(|_| links_outside(entry, target))?;
        let from_dir = self.parent(&from, entry, false)?;
        let from_leaf = from.last().expect("not empty");
        match fstatat(
            &from_dir,
            from_leaf.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {}
            Ok(_) => {
                return Err(refuse(
                    entry,
                    format!(
                        "is a hard link to {}, which is not a file",
                        target.display()
                    ),
                ))
            }
            Err(_) => {
                return Err(refuse(
                    entry,
                    format!(
                        "is a hard link to {}, which the archive has not made before it",
                        target.display()
                    ),
                ))
            }
        }
        let parent = self.parent(&to, entry, true)?;
        let leaf = to.last().expect("not empty");
        self.clear(&parent, leaf, entry)?;
        linkat(
            &from_dir,
            from_leaf.as_os_str(),
            &parent,
            leaf.as_os_str(),
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| io_error("link", &self.dest.join(entry), e))
    }
}

fn unpack_tar(file: File, tree: &mut Tree) -> Result<(), Error> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let link = || -> Result<PathBuf, Error> {
            Ok(entry
                .link_name()
                .map_err(corrupt)?
                .unwrap_or_default()
                .into_owned())
        };
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mode = entry.header().mode().map_err(corrupt)?;
                tree.file(&path, mode, &mut entry)?;
            }
            EntryType::Directory => tree.dir(&path)?,
            EntryType::Symlink => {
                let target = link()?;
                tree.symlink(&path, &target)?;
            }
            EntryType::Link => {
                let target = link()?;
                tree.hard_link(&path, &target)?;
            }
            EntryType::XGlobalHeader => {}
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(
                    &path,
                    "is a device or a fifo; a release holds files, directories and links only",
                ))
            }
            other => {
                return Err(refuse(
                    &path,
                    format!("has an entry type baton does not unpack ({other:?})"),
                ))
            }
        }
    }
    Ok(())
}

fn unpack_zip(file: File, tree: &mut Tree) -> Result<(), Error> {
    let mut archive = zip::ZipArchive::new(file).map_err(corrupt)?;
    if archive.len() as u64 > tree.limits.entries {
        return Err(Error::Archive {
            reason: format!(
                "the archive holds {} entries, more than its limit of {} (verify.max_entries)",
                archive.len(),
                tree.limits.entries
            ),
        });
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(corrupt)?;
        let path = PathBuf::from(entry.name());
        let mode = entry.unix_mode();
        let format = mode.map(|m| SFlag::from_bits_truncate(m) & SFlag::S_IFMT);
        if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(MAX_LINK_TARGET)
                .read_to_string(&mut target)
                .map_err(corrupt)?;
            tree.symlink(&path, Path::new(&target))?;
        } else if entry.is_dir() {
            tree.dir(&path)?;
        } else if format.is_some_and(|f| !f.is_empty() && f != SFlag::S_IFREG) {
            return Err(refuse(
                &path,
                "is a device, a fifo or a socket; a release holds files, directories and links only",
            ));
        } else {
            tree.file(&path, mode.unwrap_or(0o644), &mut entry)?;
        }
    }
    Ok(())
}

/// Every link in the finished tree under `dest` resolves inside it,
/// followed through the real tree (a chain of links each inside by its
/// text can still lead out).
fn links_stay_inside(dest: &Path) -> Result<(), Error> {
    let mut stack: Vec<Vec<OsString>> = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        let path = join(dest, &dir);
        let entries = std::fs::read_dir(&path).map_err(|source| {
            Error::Io(IoError {
                what: "read",
                path: path.clone(),
                source,
            })
        })?;
        for e in entries {
            let e = e.map_err(|source| {
                Error::Io(IoError {
                    what: "read",
                    path: path.clone(),
                    source,
                })
            })?;
            let ft = e.file_type().map_err(|source| {
                Error::Io(IoError {
                    what: "read",
                    path: e.path(),
                    source,
                })
            })?;
            let mut at = dir.clone();
            at.push(e.file_name());
            if ft.is_dir() {
                stack.push(at);
            } else if ft.is_symlink() {
                resolve_inside(dest, &at)?;
            }
        }
    }
    Ok(())
}

fn join(dest: &Path, names: &[OsString]) -> PathBuf {
    let mut p = dest.to_owned();
    p.extend(names);
    p
}

/// Follows the link at `link` (names from the root) through the tree; an
/// error when it leads out. A link into a missing path is resolved by its
/// text from there (nothing else writes into a release directory).
fn resolve_inside(dest: &Path, link: &[OsString]) -> Result<(), Error> {
    let entry: PathBuf = link.iter().collect();
    let outside = |target: &Path| {
        refuse(
            &entry,
            format!(
                "links to {}, which resolves outside the release directory",
                target.display()
            ),
        )
    };
    let first = std::fs::read_link(join(dest, link)).map_err(|source| {
        Error::Io(IoError {
            what: "read link",
            path: join(dest, link),
            source,
        })
    })?;
    // Resolved directories, none of them a link.
    let mut at: Vec<OsString> = link[..link.len() - 1].to_vec();
    let mut todo: Vec<OsString> = Vec::new();
    let push = |todo: &mut Vec<OsString>, target: &Path| -> Result<(), Error> {
        let mut parts = Vec::new();
        for c in target.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_owned()),
                Component::ParentDir => parts.push(OsString::from("..")),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(outside(target)),
            }
        }
        // Processed from the end of the vector: pushed reversed.
        todo.extend(parts.into_iter().rev());
        Ok(())
    };
    push(&mut todo, &first)?;
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            if at.pop().is_none() {
                return Err(outside(&first));
            }
            continue;
        }
        let here = join(dest, &at).join(&name);
        match std::fs::symlink_metadata(&here) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(refuse(
                        &entry,
                        format!("passes more than {MAX_LINK_HOPS} links; refused"),
                    ));
                }
                let next = std::fs::read_link(&here).map_err(|source| {
                    Error::Io(IoError {
                        what: "read link",
                        path: here.clone(),
                        source,
                    })
                })?;
                push(&mut todo, &next)?;
            }
            _ => at.push(name),
        }
    }
    Ok(())
}

/// Finds the one regular file named `binary` and moves it to the root.
fn pick_binary(dest: &Path, binary: &str) -> Result<(), Error> {
    let mut found = Vec::new();
    let mut names = Vec::new();
    let mut stack = vec![dest.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| {
            Error::Io(IoError {
                what: "read",
                path: dir.clone(),
                source,
            })
        })?;
        for e in entries.flatten() {
            let ft = e.file_type().map_err(|source| {
                Error::Io(IoError {
                    what: "read",
                    path: e.path(),
                    source,
                })
            })?;
            let rel = e.path().strip_prefix(dest).unwrap_or(&e.path()).to_owned();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                if ft.is_file() && e.file_name() == binary {
                    found.push(e.path());
                }
                names.push(rel.display().to_string());
            }
        }
    }
    names.sort();
    let root = dest.join(binary);
    match found.as_slice() {
        [] => Err(Error::Archive {
            reason: format!(
                "no file named {binary:?} in the archive (it holds: {})",
                names.join(", ")
            ),
        }),
        [one] => {
            if *one != root {
                std::fs::rename(one, &root).map_err(|source| {
                    Error::Io(IoError {
                        what: "move",
                        path: one.clone(),
                        source,
                    })
                })?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| {
                    Error::Io(IoError {
                        what: "chmod",
                        path: root.clone(),
                        source,
                    })
                },
            )
        }
        several => Err(Error::Archive {
            reason: format!(
                "several files named {binary:?} in the archive: {}",
                several
                    .iter()
                    .map(|p| p.strip_prefix(dest).unwrap_or(p).display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const LIMITS: Limits = Limits {
        bytes: 1 << 20,
        entries: 100,
    };

    /// A release directory two levels below a sentinel file that no
    /// archive may touch: `(tmp, dest, sentinel)`.
    fn sandbox() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/out");
        std::fs::create_dir_all(&dest).unwrap();
        let sentinel = dir.path().join("a/b/secret");
        std::fs::write(&sentinel, b"keep").unwrap();
        std::fs::set_permissions(&sentinel, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, dest, sentinel)
    }

    fn untouched(sentinel: &Path) {
        assert_eq!(std::fs::read(sentinel).unwrap(), b"keep");
        let mode = std::fs::metadata(sentinel).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        let parent = sentinel.parent().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["out", "secret"], "nothing new beside the release");
    }

    enum Item<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn zip_of(path: &Path, items: &[Item]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for item in items {
            match item {
                Item::File(name, mode, data) => {
                    w.start_file(*name, opts.unix_permissions(*mode)).unwrap();
                    w.write_all(data).unwrap();
                }
                Item::Dir(name) => w.add_directory(*name, opts).unwrap(),
                Item::Link(name, target) => w.add_symlink(*name, *target, opts).unwrap(),
                Item::Hard(..) | Item::Fifo(..) => unreachable!("tar only"),
            }
        }
        w.finish().unwrap();
    }

    fn tgz_of(path: &Path, items: &[Item]) {
        let gz =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        for item in items {
            let mut h = tar::Header::new_gnu();
            // Names as written, `..` included (tar's builder refuses them).
            let (name, kind, data): (&str, _, &[u8]) = match item {
                Item::File(name, mode, data) => {
                    h.set_mode(*mode);
                    (name, tar::EntryType::Regular, data)
                }
                Item::Dir(name) => {
                    h.set_mode(0o755);
                    (name, tar::EntryType::Directory, b"")
                }
                Item::Link(name, target) | Item::Hard(name, target) => {
                    h.set_link_name(target).unwrap();
                    let kind = if matches!(item, Item::Link(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    (name, kind, b"")
                }
                Item::Fifo(name) => (name, tar::EntryType::Fifo, b""),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_cksum();
            t.append(&h, data).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap();
    }

    type Unpacked = (Kind, Result<(), String>, tempfile::TempDir);

    /// Unpacks `items` as a zip (when it can express them) and as a
    /// tar.gz, each into a fresh sandbox whose sentinel must stay intact.
    fn both(items: &[Item], limits: Limits) -> Vec<Unpacked> {
        let zip_ok = !items
            .iter()
            .any(|i| matches!(i, Item::Hard(..) | Item::Fifo(..)));
        let mut out = Vec::new();
        for kind in [Kind::Zip, Kind::TarGz] {
            if kind == Kind::Zip && !zip_ok {
                continue;
            }
            let (dir, dest, sentinel) = sandbox();
            let archive = dir.path().join("archive");
            match kind {
                Kind::Zip => zip_of(&archive, items),
                _ => tgz_of(&archive, items),
            }
            let r = unpack(File::open(&archive).unwrap(), kind, "hello", &dest, limits)
                .map_err(|e| e.to_string());
            untouched(&sentinel);
            out.push((kind, r, dir));
        }
        out
    }

    fn refused(items: &[Item], limits: Limits, why: &str) {
        for (kind, r, _dir) in both(items, limits) {
            let err = r.expect_err(&format!("{kind:?} is refused"));
            assert!(err.contains(why), "{kind:?}: {err}");
        }
    }

    #[test]
    fn names_are_plain_components() {
        assert_eq!(names(Path::new("bin/./hello")).unwrap(), ["bin", "hello"]);
        assert_eq!(names(Path::new("bin//hello")).unwrap(), ["bin", "hello"]);
        for bad in ["../hello", "/etc/passwd", "a/../../b", "a/..", ".", ""] {
            assert!(names(Path::new(bad)).is_err(), "{bad}");
        }
        let at = |p: &str| names(Path::new(p)).unwrap();
        assert!(lexically_inside(&at("bin/hello"), Path::new("../lib/x")));
        assert!(!lexically_inside(&at("bin/hello"), Path::new("../../x")));
        assert!(!lexically_inside(&at("hello"), Path::new("/usr/bin/x")));
    }

    #[test]
    fn zip_slip_is_refused() {
        refused(
            &[Item::File("../../evil", 0o644, b"x")],
            LIMITS,
            "would escape",
        );
    }

    /// Regression (hostile-input report): `d/l -> ..` leads to the root,
    /// `d/m -> l/../../secret` looks inside by its text but leads out
    /// through `l`; a later file `d/./m` then overwrote and chmodded the
    /// file outside. Now the write replaces the link, and a chain that
    /// stays is refused against the real tree.
    #[test]
    fn a_link_chain_never_leads_a_write_outside() {
        let chain = [Item::Link("d/l", ".."), Item::Link("d/m", "l/../../secret")];
        refused(&chain, LIMITS, "resolves outside the release directory");
        let mut overwrite: Vec<Item> = chain.into_iter().collect();
        overwrite.push(Item::File("d/./m", 0o777, b"owned"));
        overwrite.push(Item::File("hello", 0o755, b"bin"));
        for (kind, r, dir) in both(&overwrite, LIMITS) {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let m = dir.path().join("a/b/out/d/m");
            assert!(std::fs::symlink_metadata(&m).unwrap().is_file());
            assert_eq!(std::fs::read(&m).unwrap(), b"owned");
            let mode = std::fs::metadata(&m).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o775, "world-writable dropped");
        }
    }

    #[test]
    fn a_deep_chain_of_links_is_followed_through_the_tree() {
        refused(
            &[
                Item::Link("x/y/up", "../.."),
                Item::Link("x/y/z", "up/.."),
                Item::Link("w", "x/y/z/secret"),
            ],
            LIMITS,
            "resolves outside",
        );
        // Links that stay inside, even through each other, are kept.
        for (kind, r, dir) in both(
            &[
                Item::File("lib/real", 0o644, b"so"),
                Item::Link("lib/alias", "real"),
                Item::Link("bin/lib", "../lib"),
                Item::Link("bin/so", "lib/alias"),
                Item::File("bin/hello", 0o755, b"bin"),
            ],
            LIMITS,
        ) {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(
                std::fs::read(dir.path().join("a/b/out/bin/so")).unwrap(),
                b"so"
            );
        }
    }

    #[test]
    fn a_link_loop_is_refused() {
        refused(
            &[Item::Link("a", "b"), Item::Link("b", "a")],
            LIMITS,
            "passes more than 40 links",
        );
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        refused(
            &[
                Item::Link("x/d", ".."),
                Item::File("x/d/x/evil", 0o644, b"x"),
            ],
            LIMITS,
            "entries are never written through links",
        );
        refused(
            &[Item::Link("x", "."), Item::Dir("x/sub")],
            LIMITS,
            "entries are never written through links",
        );
    }

    #[test]
    fn absolute_and_escaping_link_targets_are_refused_at_once() {
        refused(
            &[Item::Link("hello", "/etc/passwd")],
            LIMITS,
            "outside the release directory",
        );
        refused(
            &[Item::Link("d/up", "../../x")],
            LIMITS,
            "outside the release directory",
        );
    }

    #[test]
    fn hard_links_stay_inside_and_point_at_files() {
        refused(
            &[Item::Hard("hello", "../secret")],
            LIMITS,
            "outside the release directory",
        );
        refused(
            &[Item::Hard("hello", "nothing")],
            LIMITS,
            "which the archive has not made before it",
        );
        let (_, r, dir) = both(
            &[
                Item::File("bin/hello", 0o755, b"bin"),
                Item::Hard("alias", "bin/hello"),
            ],
            LIMITS,
        )
        .pop()
        .unwrap();
        r.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a/b/out/alias")).unwrap(),
            b"bin"
        );
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        refused(&[Item::Fifo("pipe")], LIMITS, "is a device or a fifo");
    }

    #[test]
    fn setuid_setgid_and_world_writable_bits_are_dropped() {
        for (kind, r, dir) in both(
            &[
                Item::File("tool", 0o6777, b"x"),
                Item::File("hello", 0o755, b"bin"),
            ],
            LIMITS,
        ) {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let mode = std::fs::metadata(dir.path().join("a/b/out/tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o775, "{kind:?}");
        }
    }

    #[test]
    fn an_archive_bomb_stops_at_the_unpacked_limit() {
        let zeros = vec![0u8; 3 << 20];
        refused(
            &[Item::File("hello", 0o755, &zeros)],
            LIMITS,
            "past its limit of 1048576 unpacked bytes (verify.max_unpacked",
        );
        let big = Limits {
            bytes: 4 << 20,
            ..LIMITS
        };
        for (kind, r, _dir) in both(&[Item::File("hello", 0o755, &zeros)], big) {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn the_entry_count_is_capped() {
        let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let items: Vec<Item> = names.iter().map(|n| Item::File(n, 0o644, b"")).collect();
        refused(
            &items,
            Limits {
                entries: 4,
                ..LIMITS
            },
            "verify.max_entries",
        );
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one_but_not_a_directory() {
        for (kind, r, dir) in both(
            &[
                Item::File("hello", 0o755, b"one"),
                Item::File("./hello", 0o755, b"two"),
            ],
            LIMITS,
        ) {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(
                std::fs::read(dir.path().join("a/b/out/hello")).unwrap(),
                b"two"
            );
        }
        refused(
            &[Item::Dir("hello"), Item::File("hello", 0o755, b"x")],
            LIMITS,
            "replaces a directory",
        );
    }

    #[test]
    fn binary_is_picked_from_a_subdirectory() {
        let (_, r, dir) = both(&[Item::File("hello-1.0/hello", 0o644, b"hi")], LIMITS)
            .pop()
            .unwrap();
        r.unwrap();
        let dest = dir.path().join("a/b/out");
        assert_eq!(std::fs::read(dest.join("hello")).unwrap(), b"hi");
        let mode = std::fs::metadata(dest.join("hello"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let tgz = dir.path().join("archive");
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let err = unpack(
            File::open(&tgz).unwrap(),
            Kind::TarGz,
            "other",
            &fresh,
            LIMITS,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no file named \"other\""), "{err}");
    }
}

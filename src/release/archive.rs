//! Unpacking `.tar.gz` and `.zip` assets into a release directory, refusing
//! entries that would escape it, and picking out the configured binary.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};

use super::Error;

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

/// A relative path with no `..`, root or prefix component.
fn safe_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Whether a link at `entry` pointing to `target` stays inside the tree.
fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = entry.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count() as i64
    });
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

/// Unpacks `file` of `kind` into the empty directory `dest`, so that the
/// binary ends at `dest/<binary>` with mode 0755.
pub fn unpack(file: File, kind: Kind, binary: &str, dest: &Path) -> Result<(), Error> {
    let root = Root::new(dest)?;
    match kind {
        Kind::Plain => unreachable!("plain binaries are moved, not unpacked"),
        Kind::TarGz => unpack_tar(file, &root)?,
        Kind::Zip => unpack_zip(file, &root)?,
    }
    pick_binary(dest, binary)
}

/// The release directory being filled, with checks on where things land on
/// disk (through any links already created), not only on entry names.
struct Root {
    dir: PathBuf,
    canonical: PathBuf,
}

/// `..` and `.` resolved without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Root {
    fn new(dir: &Path) -> Result<Root, Error> {
        let canonical = dir.canonicalize().map_err(|source| Error::Io {
            what: "resolve",
            path: dir.to_owned(),
            source,
        })?;
        Ok(Root {
            dir: dir.to_owned(),
            canonical,
        })
    }

    /// `dir` (which exists) resolves inside the release directory.
    fn check_dir(&self, dir: &Path, entry: &Path) -> Result<(), Error> {
        let real = dir.canonicalize().map_err(|source| Error::Io {
            what: "resolve",
            path: dir.to_owned(),
            source,
        })?;
        if real.starts_with(&self.canonical) {
            Ok(())
        } else {
            Err(escape(
                entry,
                "would be written outside the release directory through a link",
            ))
        }
    }

    /// A link at `link` pointing to `target` resolves inside.
    fn check_link(&self, link: &Path, target: &Path, entry: &Path) -> Result<(), Error> {
        let parent = link.parent().unwrap_or(&self.dir);
        let base = parent.canonicalize().map_err(|source| Error::Io {
            what: "resolve",
            path: parent.to_owned(),
            source,
        })?;
        if target.is_absolute() || !normalize(&base.join(target)).starts_with(&self.canonical) {
            return Err(escape(
                entry,
                &format!(
                    "links to {}, outside the release directory",
                    target.display()
                ),
            ));
        }
        Ok(())
    }
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Archive {
        reason: format!("corrupt archive: {e}"),
    }
}

fn escape(entry: &Path, why: &str) -> Error {
    Error::Archive {
        reason: format!("entry {} {why}", entry.display()),
    }
}

fn unpack_tar(file: File, root: &Root) -> Result<(), Error> {
    let dest = &root.dir;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        if !safe_relative(&path) {
            return Err(escape(&path, "would escape the release directory"));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(corrupt)?
                .unwrap_or_default()
                .into_owned();
            let inside = if kind.is_hard_link() {
                safe_relative(&target)
            } else {
                link_stays_inside(&path, &target)
            };
            if !inside {
                return Err(escape(
                    &path,
                    &format!(
                        "links to {}, outside the release directory",
                        target.display()
                    ),
                ));
            }
        }
        let unpacked = entry.unpack_in(dest).map_err(|e| {
            if e.to_string().contains("outside of") {
                escape(
                    &path,
                    "would be written outside the release directory through a link",
                )
            } else {
                corrupt(e)
            }
        })?;
        if !unpacked {
            return Err(escape(&path, "would escape the release directory"));
        }
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(corrupt)?
                .unwrap_or_default()
                .into_owned();
            root.check_link(&dest.join(&path), &target, &path)?;
        }
    }
    Ok(())
}

fn unpack_zip(file: File, root: &Root) -> Result<(), Error> {
    let dest = &root.dir;
    let mut archive = zip::ZipArchive::new(file).map_err(corrupt)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(corrupt)?;
        let name = PathBuf::from(entry.name());
        let Some(path) = entry.enclosed_name().filter(|p| safe_relative(p)) else {
            return Err(escape(&name, "would escape the release directory"));
        };
        let out = dest.join(&path);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|source| Error::Io {
                what: "create",
                path: out.clone(),
                source,
            })?;
            root.check_dir(&out, &name)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                what: "create",
                path: parent.to_owned(),
                source,
            })?;
            root.check_dir(parent, &name)?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            entry.read_to_string(&mut target).map_err(corrupt)?;
            if !link_stays_inside(&path, Path::new(&target)) {
                return Err(escape(
                    &name,
                    &format!("links to {target}, outside the release directory"),
                ));
            }
            root.check_link(&out, Path::new(&target), &name)?;
            std::os::unix::fs::symlink(&target, &out).map_err(|source| Error::Io {
                what: "create",
                path: out.clone(),
                source,
            })?;
            continue;
        }
        let mut f = File::create(&out).map_err(|source| Error::Io {
            what: "create",
            path: out.clone(),
            source,
        })?;
        std::io::copy(&mut entry, &mut f).map_err(corrupt)?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777));
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
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            what: "read",
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let ft = e.file_type().map_err(|source| Error::Io {
                what: "read",
                path: e.path(),
                source,
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
                std::fs::rename(one, &root).map_err(|source| Error::Io {
                    what: "move",
                    path: one.clone(),
                    source,
                })?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| Error::Io {
                    what: "chmod",
                    path: root.clone(),
                    source,
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

    #[test]
    fn escapes_are_detected() {
        assert!(safe_relative(Path::new("bin/hello")));
        assert!(!safe_relative(Path::new("../hello")));
        assert!(!safe_relative(Path::new("/etc/passwd")));
        assert!(!safe_relative(Path::new("a/../../b")));
        assert!(link_stays_inside(
            Path::new("bin/hello"),
            Path::new("../lib/x")
        ));
        assert!(!link_stays_inside(
            Path::new("bin/hello"),
            Path::new("../../x")
        ));
        assert!(!link_stays_inside(
            Path::new("hello"),
            Path::new("/usr/bin/x")
        ));
    }

    #[test]
    fn zip_slip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("evil.zip");
        {
            let mut w = zip::ZipWriter::new(File::create(&zip_path).unwrap());
            w.start_file("../../evil", zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut w, b"x").unwrap();
            w.finish().unwrap();
        }
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(File::open(&zip_path).unwrap(), Kind::Zip, "hello", &dest).unwrap_err();
        assert!(err.to_string().contains("would escape"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    /// Regression: a chain of links that each look inside by name, then a
    /// file written through them, escaped the directory.
    #[test]
    fn zip_symlink_chain_is_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("chain.zip");
        {
            let mut w = zip::ZipWriter::new(File::create(&zip_path).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            w.add_symlink("d/l", "..", opts).unwrap();
            w.add_symlink("d/l/e", "../..", opts).unwrap();
            w.start_file("d/l/e/x", opts).unwrap();
            w.write_all(b"owned").unwrap();
            w.finish().unwrap();
        }
        let dest = dir.path().join("a/b/out");
        std::fs::create_dir_all(&dest).unwrap();
        let err = unpack(File::open(&zip_path).unwrap(), Kind::Zip, "hello", &dest).unwrap_err();
        assert!(
            err.to_string().contains("outside the release directory"),
            "{err}"
        );
        assert!(!dir.path().join("a/x").exists() && !dir.path().join("a/b/x").exists());
    }

    #[test]
    fn tar_symlink_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("chain.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut t = tar::Builder::new(gz);
            for (path, target) in [("d/l", ".."), ("d/l/e", "../..")] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_cksum();
                t.append_link(&mut h, path, target).unwrap();
            }
            t.into_inner().unwrap().finish().unwrap();
        }
        let dest = dir.path().join("a/b/out");
        std::fs::create_dir_all(&dest).unwrap();
        let err = unpack(File::open(&tgz).unwrap(), Kind::TarGz, "hello", &dest).unwrap_err();
        assert!(
            err.to_string().contains("outside the release directory"),
            "{err}"
        );
    }

    #[test]
    fn binary_is_picked_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("a.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut t = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, "hello-1.0/hello", &b"hi"[..])
                .unwrap();
            t.into_inner().unwrap().finish().unwrap();
        }
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        unpack(File::open(&tgz).unwrap(), Kind::TarGz, "hello", &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("hello")).unwrap(), b"hi");
        let err = unpack(File::open(&tgz).unwrap(), Kind::TarGz, "other", &dest).unwrap_err();
        assert!(err.to_string().contains("no file named \"other\""), "{err}");
    }
}

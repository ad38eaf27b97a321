//! Structured archives: a list of entries (files, directories, symlinks,
//! hard links) whose paths and link targets are built from the segments
//! that escape (`..`, `.`, empty ones, deep runs, absolute roots), written
//! as both a tar.gz and a zip and unpacked through the daemon's code.
#![no_main]

use std::io::Write;

use arbitrary::Arbitrary;

/// The segments paths are made of: the dangerous ones, and names that
/// collide with each other, with the binary and with the sentinels.
const SEGMENTS: &[&str] = &[
    "..", ".", "", "a", "b", "deep", "hello", "l", "m", "secret", "release", "x",
];

#[derive(Arbitrary, Debug)]
struct Path {
    absolute: bool,
    segments: Vec<u8>,
}

impl Path {
    fn text(&self) -> String {
        let mut text = if self.absolute {
            "/".to_owned()
        } else {
            String::new()
        };
        let parts: Vec<&str> = self
            .segments
            .iter()
            .take(12)
            .map(|s| SEGMENTS[*s as usize % SEGMENTS.len()])
            .collect();
        text.push_str(&parts.join("/"));
        text
    }
}

#[derive(Arbitrary, Debug)]
enum Entry {
    File {
        path: Path,
        mode: u16,
        data: Vec<u8>,
    },
    Dir {
        path: Path,
        mode: u16,
    },
    Symlink {
        path: Path,
        target: Path,
    },
    Hardlink {
        path: Path,
        target: Path,
    },
}

/// Writes `text` into a tar header field by its bytes, as a hostile
/// archiver would (the tar crate refuses `..` in names it is given).
fn field(into: &mut [u8], text: &str) {
    let bytes = text.as_bytes();
    let n = bytes.len().min(into.len());
    into.fill(0);
    into[..n].copy_from_slice(&bytes[..n]);
}

fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_old();
        let (path, link, kind, mode, data): (&Path, Option<&Path>, _, u16, &[u8]) = match entry {
            Entry::File { path, mode, data } => (path, None, tar::EntryType::Regular, *mode, data),
            Entry::Dir { path, mode } => (path, None, tar::EntryType::Directory, *mode, &[]),
            Entry::Symlink { path, target } => {
                (path, Some(target), tar::EntryType::Symlink, 0o777, &[])
            }
            Entry::Hardlink { path, target } => {
                (path, Some(target), tar::EntryType::Link, 0o644, &[])
            }
        };
        field(&mut header.as_old_mut().name, &path.text());
        if let Some(link) = link {
            field(&mut header.as_old_mut().linkname, &link.text());
        }
        header.set_entry_type(kind);
        header.set_mode(u32::from(mode) & 0o7777);
        header.set_size(data.len() as u64);
        header.set_cksum();
        let _ = tar.append(&header, data);
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_default()
}

fn zip(entries: &[Entry]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = |mode: u16| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(u32::from(mode) & 0o7777)
    };
    for entry in entries {
        let _ = match entry {
            Entry::File { path, mode, data } => zip
                .start_file(path.text(), options(*mode))
                .and_then(|()| zip.write_all(data).map_err(Into::into)),
            Entry::Dir { path, mode } => zip.add_directory(path.text(), options(*mode)),
            Entry::Symlink { path, target } | Entry::Hardlink { path, target } => {
                zip.add_symlink(path.text(), target.text(), options(0o777))
            }
        };
    }
    zip.finish().map(|c| c.into_inner()).unwrap_or_default()
}

libfuzzer_sys::fuzz_target!(|entries: Vec<Entry>| {
    let entries = &entries[..entries.len().min(32)];
    let _ = baton::fuzzing::archive(&tar_gz(entries), false);
    let _ = baton::fuzzing::archive(&zip(entries), true);
});

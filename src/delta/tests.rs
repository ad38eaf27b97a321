use std::path::Path;
use std::process::Command;

use super::*;

/// Deterministic bytes that look like a binary: no long repeats.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An old and a new "binary": the new one has a few bytes changed here and
/// there and 8 KiB inserted in the middle, as a small code change does.
fn pair() -> (Vec<u8>, Vec<u8>) {
    let old = noise(1 << 20, 7);
    let mut new = old.clone();
    for at in [1_000, 200_000, 700_000] {
        new[at..at + 16].copy_from_slice(b"version 2.0.0!!!");
    }
    let extra = noise(8 << 10, 99);
    new.splice(500_000..500_000, extra);
    (old, new)
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn made(old: &Path, new: &Path, level: i32) -> Vec<u8> {
    let mut patch = Vec::new();
    let size = make(old, new, level, &mut patch).unwrap();
    assert_eq!(size, patch.len() as u64);
    patch
}

/// Applies `patch` to `old` expecting `new`; returns the output too.
fn run(
    old: &Path,
    patch: &[u8],
    sha256: [u8; 32],
    max_size: u64,
) -> (Result<Applied, Error>, Vec<u8>) {
    let spec = Spec {
        reference: old,
        from: None,
        sha256,
        max_size,
    };
    let mut out = Vec::new();
    let result = apply(&spec, patch, &mut out);
    (result, out)
}

/// A frame of `data` against `prefix` with the given encoder parameters,
/// streamed so that the encoder does not know the size in advance (and
/// keeps the window it is given).
fn encode(prefix: &[u8], data: &[u8], parameters: &[CParameter]) -> Vec<u8> {
    use zstd_sys::ZSTD_EndDirective::{ZSTD_e_continue, ZSTD_e_end};
    let mut cctx = CCtx::create();
    for p in parameters {
        cctx.set_parameter(*p).unwrap();
    }
    cctx.ref_prefix(prefix).unwrap();
    let mut out = Vec::new();
    let mut buffer = vec![0u8; CCtx::out_size()];
    let mut input = InBuffer::around(data);
    loop {
        let mut output = OutBuffer::around(&mut buffer[..]);
        let directive = if input.pos < data.len() {
            ZSTD_e_continue
        } else {
            ZSTD_e_end
        };
        let remaining = cctx
            .compress_stream2(&mut output, &mut input, directive)
            .unwrap();
        let produced = output.pos();
        out.extend_from_slice(&buffer[..produced]);
        if directive == ZSTD_e_end && remaining == 0 {
            return out;
        }
    }
}

fn zstd_cli() -> bool {
    let found = Command::new("zstd").arg("--version").output().is_ok();
    if !found {
        eprintln!("zstd is not installed: skipping the CLI half of this test");
    }
    found
}

#[test]
fn round_trip_is_small_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = pair();
    let old_path = write(dir.path(), "old", &old);
    let new_path = write(dir.path(), "new", &new);
    let patch = made(&old_path, &new_path, DEFAULT_LEVEL);
    // A real delta: the 8 KiB of new noise dominate, the 1 MiB shared is free.
    assert!(patch.len() < 16 << 10, "patch is {} bytes", patch.len());
    let (result, out) = run(&old_path, &patch, sha(&new), new.len() as u64);
    assert_eq!(
        result.unwrap(),
        Applied {
            size: new.len() as u64,
            patch_size: patch.len() as u64
        }
    );
    assert!(out == new, "the patched output differs from the new file");

    // With `from`: the reference is checked, and still applies.
    let spec = Spec {
        reference: &old_path,
        from: Some(sha(&old)),
        sha256: sha(&new),
        max_size: new.len() as u64,
    };
    let mut out = Vec::new();
    apply(&spec, &patch[..], &mut out).unwrap();
    assert!(out == new);
}

#[test]
fn empty_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty", b"");
    let small = write(dir.path(), "small", b"hello");
    for (old, new, bytes) in [(&empty, &small, &b"hello"[..]), (&small, &empty, &b""[..])] {
        let patch = made(old, new, 3);
        let (result, out) = run(old, &patch, sha(bytes), 1 << 20);
        result.unwrap();
        assert_eq!(out, bytes);
    }
}

#[test]
fn cli_patches_apply_and_ours_apply_with_the_cli() {
    if !zstd_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = pair();
    let old_path = write(dir.path(), "old", &old);
    let new_path = write(dir.path(), "new", &new);
    let cli_patch = dir.path().join("cli.zst");
    let status = Command::new("zstd")
        .args(["-q", "-19", "--long=31", "-f"])
        .arg(format!("--patch-from={}", old_path.display()))
        .arg(&new_path)
        .arg("-o")
        .arg(&cli_patch)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let patch = std::fs::read(&cli_patch).unwrap();
    assert!(patch.len() < 16 << 10, "CLI patch is {} bytes", patch.len());
    let (result, out) = run(&old_path, &patch, sha(&new), new.len() as u64);
    result.unwrap();
    assert!(
        out == new,
        "the CLI's patch, applied here, differs from the new file"
    );

    let ours = write(
        dir.path(),
        "ours.zst",
        &made(&old_path, &new_path, DEFAULT_LEVEL),
    );
    let decoded = dir.path().join("decoded");
    let status = Command::new("zstd")
        .args(["-q", "-d", "--long=31", "-f"])
        .arg(format!("--patch-from={}", old_path.display()))
        .arg(&ours)
        .arg("-o")
        .arg(&decoded)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "the CLI cannot apply our patch: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        std::fs::read(&decoded).unwrap() == new,
        "the CLI decodes our patch to something else"
    );
}

#[test]
fn each_failure_has_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = pair();
    let old_path = write(dir.path(), "old", &old);
    let new_path = write(dir.path(), "new", &new);
    let patch = made(&old_path, &new_path, 3);
    let (sha256, max) = (sha(&new), new.len() as u64);

    // A flipped byte inside the frame: zstd's checks or the frame checksum.
    let mut flipped = patch.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let (result, _) = run(&old_path, &flipped, sha256, max);
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");

    // Not a zstd frame at all.
    let (result, _) = run(&old_path, b"#!/bin/sh\necho not a patch\n", sha256, max);
    match result {
        Err(Error::Corrupt { reason }) => assert!(reason.contains("not a zstd frame"), "{reason}"),
        other => panic!("{other:?}"),
    }

    // Anything after the frame.
    let mut longer = patch.clone();
    longer.extend_from_slice(b"trailing");
    let (result, _) = run(&old_path, &longer, sha256, max);
    match result {
        Err(Error::Corrupt { reason }) => {
            assert!(reason.contains("after the zstd frame"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // Cut short: inside the body, inside the header, empty.
    for cut in [patch.len() - 7, 3, 0] {
        let (result, _) = run(&old_path, &patch[..cut], sha256, max);
        match result {
            Err(Error::Truncated { read }) => assert_eq!(read, cut as u64),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }

    // Applied to another binary: decodes to something else, which the
    // frame checksum (or zstd's own checks) catches.
    let other_path = write(dir.path(), "other", &noise(1 << 20, 8));
    let (result, _) = run(&other_path, &patch, sha256, max);
    assert!(
        matches!(
            result,
            Err(Error::Corrupt { .. } | Error::DigestMismatch { .. })
        ),
        "{result:?}"
    );
    // ... and never even tried when `from` says which binary it is for.
    let spec = Spec {
        reference: &other_path,
        from: Some(sha(&old)),
        sha256,
        max_size: max,
    };
    let mut out = Vec::new();
    let result = apply(&spec, &patch[..], &mut out);
    assert!(
        matches!(result, Err(Error::ReferenceMismatch { .. })),
        "{result:?}"
    );
    assert!(out.is_empty());

    // Larger than max_size, as declared in the header.
    let (result, out) = run(&old_path, &patch, sha256, max - 1);
    match result {
        Err(Error::OutputTooLarge { max_size, declared }) => {
            assert_eq!((max_size, declared), (max - 1, Some(max)));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        out.is_empty(),
        "nothing is written when the header says too large"
    );

    // The wrong expected digest.
    let (result, out) = run(&old_path, &patch, sha(b"another release"), max);
    assert!(
        matches!(result, Err(Error::DigestMismatch { .. })),
        "{result:?}"
    );
    assert!(
        out == new,
        "the output was complete, only its digest is wrong"
    );

    // No reference at all.
    let (result, _) = run(&dir.path().join("missing"), &patch, sha256, max);
    match result {
        Err(e @ Error::Reference { .. }) => assert!(e.to_string().contains("missing")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn output_cap_holds_without_a_declared_size() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = pair();
    let old_path = write(dir.path(), "old", &old);
    let patch = encode(
        &old,
        &new,
        &[
            CParameter::ContentSizeFlag(false),
            CParameter::WindowLog(21),
            CParameter::EnableLongDistanceMatching(true),
        ],
    );
    assert_eq!(parse_header(&patch).unwrap().unwrap().content_size, None);
    let max = new.len() as u64;
    let (result, out) = run(&old_path, &patch, sha(&new), max);
    result.unwrap();
    assert!(out == new);
    let (result, out) = run(&old_path, &patch, sha(&new), max - 100);
    match result {
        Err(Error::OutputTooLarge { max_size, declared }) => {
            assert_eq!((max_size, declared), (max - 100, None));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        out.len() as u64 <= max - 100,
        "wrote {} bytes past the cap",
        out.len()
    );
}

#[test]
fn a_window_larger_than_max_size_allows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(4096, 1);
    let new = noise(4096, 2);
    let old_path = write(dir.path(), "old", &old);
    // 16 MiB of window for 4 KiB of content, which states no size.
    let patch = encode(
        &old,
        &new,
        &[
            CParameter::ContentSizeFlag(false),
            CParameter::WindowLog(24),
        ],
    );
    let (result, out) = run(&old_path, &patch, sha(&new), 64 << 10);
    match result {
        Err(Error::WindowTooLarge { window, limit }) => {
            assert_eq!((window, limit), (16 << 20, 128 << 10));
        }
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
    // Allowed once max_size is large enough.
    let (result, out) = run(&old_path, &patch, sha(&new), 8 << 20);
    result.unwrap();
    assert!(out == new);
}

#[test]
fn frame_headers_parse() {
    // Single segment, 1-byte content size, checksum.
    assert_eq!(
        parse_header(&[0x28, 0xB5, 0x2F, 0xFD, 0x24, 0x05, 0xAA]).unwrap(),
        Some(Header {
            window_size: 5,
            content_size: Some(5),
            dictionary_id: 0
        })
    );
    // Window descriptor 0x7A: 2^(10+15) + 2 * 2^25/8; 2-byte content size (+256).
    assert_eq!(
        parse_header(&[0x28, 0xB5, 0x2F, 0xFD, 0x40, 0x7A, 0x00, 0x01, 0x00]).unwrap(),
        Some(Header {
            window_size: (1 << 25) + 2 * (1 << 22),
            content_size: Some(256 + 256),
            dictionary_id: 0
        })
    );
    // A 4-byte dictionary id; incomplete until its last byte.
    let with_dict = [0x28, 0xB5, 0x2F, 0xFD, 0x03, 0x00, 0x01, 0x02, 0x03, 0x04];
    assert_eq!(parse_header(&with_dict[..9]).unwrap(), None);
    assert_eq!(
        parse_header(&with_dict).unwrap().unwrap().dictionary_id,
        0x0403_0201
    );
    assert!(parse_header(&[0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]).is_err());
    assert!(parse_header(&[0x28, 0xB5, 0x2F, 0xFD, 0x08, 0x00]).is_err());
    assert_eq!(parse_header(&[0x28, 0xB5]).unwrap(), None);
    assert_eq!(parse_header(&[0x28, 0xB5, 0x2F, 0xFD]).unwrap(), None);
    // Four bytes are enough to tell a patch from something else.
    assert!(parse_header(b"#!/b").is_err());
    assert_eq!(ceil_log2(1), 0);
    assert_eq!(ceil_log2(1024), 10);
    assert_eq!(ceil_log2(1025), 11);
}

#[test]
fn a_patch_needing_a_dictionary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old_path = write(dir.path(), "old", b"old");
    // A frame header naming dictionary 7, then an empty raw last block.
    let frame = [0x28, 0xB5, 0x2F, 0xFD, 0x21, 0x07, 0x00, 0x01, 0x00, 0x00];
    let (result, _) = run(&old_path, &frame, sha(b""), 1 << 20);
    match result {
        Err(Error::Corrupt { reason }) => assert!(reason.contains("dictionary 7"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

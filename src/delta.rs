//! Delta upgrades: a release as a zstd patch against the installed binary.
//!
//! A patch is one standard zstd frame compressed with the old binary as its
//! reference prefix, the kind of frame `zstd -19 --long=31 --patch-from=OLD
//! NEW -o PATCH` writes, so a publisher can make one with the stock CLI and
//! anyone can check one with `zstd -d --long=31 --patch-from=OLD PATCH`.
//!
//! - [`apply`] streams a patch against the installed binary into the staging
//!   file, hashing what it writes; the result must have the expected sha256.
//! - [`make`] writes a patch from two files, with the parameters the CLI uses
//!   for `--patch-from` (see [`make`]), for `baton publish`.
//!
//! # Memory while applying
//!
//! The old binary is mapped, not read into a buffer of its own: its pages are
//! the page cache's, shared with every other reader and reclaimable. The
//! decoder allocates one buffer of `min(window, content size)` bytes (plus
//! about 256 KiB of tables and I/O buffers), which for a patch made as above is
//! the size of the new binary: peak memory is the size of the new binary plus
//! the part of the old one the decoder touches (48.7 MiB of peak RSS for the
//! 23.3 MiB example, in BENCHMARKS.md). [`apply`] refuses a frame whose
//! window exceeds twice `max_size` before allocating anything (the CLI sizes
//! the window to the next power of two above the new file, which is never
//! more than twice its size).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, zstd_sys, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// The compression level of [`make`] when a publisher gives none, the one the
/// CLI command above uses.
pub const DEFAULT_LEVEL: i32 = 19;

/// The magic number that opens a zstd frame, little-endian.
const MAGIC: u32 = 0xFD2F_B528;
/// The largest frame header: magic, descriptor, window, dictionary id, size.
const MAX_HEADER: usize = 4 + 1 + 1 + 4 + 8;
/// The smallest and largest window logs the decoder accepts (64-bit).
const WINDOW_LOG_MIN: u32 = 10;
const WINDOW_LOG_MAX: u32 = 31;

/// Why a patch could not be applied (or made). Every variant is a reason to
/// fall back to the full artifact; none of them leaves anything the caller
/// should keep: the output written so far is garbage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference (installed) binary cannot be opened, mapped or read.
    #[error("cannot read the reference binary {}", .path.display())]
    Reference {
        /// The reference binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The reference binary is not the one the patch was made against.
    #[error("the reference binary {} has sha256 {actual}, the patch applies to {expected}", .path.display())]
    ReferenceMismatch {
        /// The reference binary.
        path: PathBuf,
        /// The `from` digest of the patch, hex.
        expected: String,
        /// The reference binary's digest, hex.
        actual: String,
    },
    /// The patch cannot be read.
    #[error("cannot read the patch")]
    ReadPatch(#[source] io::Error),
    /// The patch is not a valid zstd frame, or does not decode against the
    /// reference (including a frame checksum that does not match).
    #[error("corrupt patch: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The patch ends before its frame does.
    #[error("truncated patch: it ends after {read} bytes, inside its zstd frame")]
    Truncated {
        /// Bytes of the patch read.
        read: u64,
    },
    /// The frame asks for a larger decoding window than `max_size` allows.
    #[error("the patch needs a {window}-byte window, more than the {limit} bytes allowed (twice verify.max_size, at most 2 GiB)")]
    WindowTooLarge {
        /// The frame's window, bytes.
        window: u64,
        /// The largest window accepted.
        limit: u64,
    },
    /// The patched binary would be larger than `max_size`.
    #[error("the patched binary is larger than verify.max_size ({max_size} bytes){}", .declared.map(|s| format!(": the patch declares {s} bytes")).unwrap_or_default())]
    OutputTooLarge {
        /// The limit.
        max_size: u64,
        /// The size the frame declares, when it declares one.
        declared: Option<u64>,
    },
    /// The patched binary is not the expected one.
    #[error("sha256 mismatch: the release's binary_sha256 is {expected}, the patched binary is {actual}")]
    DigestMismatch {
        /// Expected, hex.
        expected: String,
        /// Actual, hex.
        actual: String,
    },
    /// The decoder (or encoder) could not allocate its memory.
    #[error("not enough memory for the zstd {0}")]
    Memory(&'static str),
    /// The patched binary (or the patch being made) cannot be written.
    #[error("cannot write the {0}")]
    Write(&'static str, #[source] io::Error),
    /// A file given to [`make`] cannot be read.
    #[error("cannot read {}", .path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The encoder refused its parameters or failed (for [`make`]).
    #[error("cannot make the patch: {reason}")]
    Make {
        /// What zstd said.
        reason: String,
    },
}

/// What a patch is applied to and what it must produce.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The installed binary the patch was made against (the reference prefix).
    pub reference: &'a Path,
    /// The patch's `from`: the reference binary's sha256. When given, the
    /// reference is hashed first and a patch is never applied to a binary
    /// with another digest, whatever its name or version.
    pub from: Option<[u8; 32]>,
    /// The sha256 the patched binary must have (the manifest's
    /// `binary_sha256`).
    pub sha256: [u8; 32],
    /// The largest patched binary accepted (`verify.max_size`); it also
    /// bounds the decoding window to twice this.
    pub max_size: u64,
}

/// A patch applied: what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written.
    pub size: u64,
    /// Bytes of the patch read.
    pub patch_size: u64,
}

/// Applies the zstd patch read from `patch` to `spec.reference`, streaming
/// the result into `out` (the staging file) while hashing it.
///
/// Checks, each with its own [`Error`]: the reference's digest against
/// `spec.from` (when given); the frame header (a single zstd frame, no
/// dictionary id, a window of at most twice `spec.max_size` and a declared
/// size of at most `spec.max_size`); the frame itself as it decodes (its
/// checksum when it has one, and nothing after it); the output size against
/// `spec.max_size` as it is written; and its sha256 against `spec.sha256`.
///
/// On an error, whatever was written to `out` is garbage: the caller owns
/// the staging file and must discard it (or truncate it before falling back
/// to the full artifact). `out` is not flushed or synced here.
///
/// It blocks: from async code, run it with `spawn_blocking`. The reader is
/// read to the end of the frame and one byte past it; bound its size (the
/// manifest's patch `size`) before handing it here.
pub fn apply(spec: &Spec<'_>, patch: impl Read, mut out: impl Write) -> Result<Applied, Error> {
    let reference = Reference::open(spec.reference)?;
    if let Some(from) = &spec.from {
        let actual: [u8; 32] = Sha256::digest(reference.bytes()).into();
        if &actual != from {
            return Err(Error::ReferenceMismatch {
                path: spec.reference.to_owned(),
                expected: hex::encode(from),
                actual: hex::encode(actual),
            });
        }
    }
    let mut hasher = Sha256::new();
    let size = decode(reference.bytes(), patch, spec.max_size, |chunk| {
        hasher.update(chunk);
        out.write_all(chunk)
    })?;
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != spec.sha256 {
        return Err(Error::DigestMismatch {
            expected: hex::encode(spec.sha256),
            actual: hex::encode(actual),
        });
    }
    Ok(Applied {
        size: size.output,
        patch_size: size.input,
    })
}

/// Bytes read and written by [`decode`].
struct Sizes {
    input: u64,
    output: u64,
}

/// Decodes the one frame of `patch` against `prefix`, handing each chunk of
/// output to `sink`; at most `max_size` bytes.
fn decode(
    prefix: &[u8],
    mut patch: impl Read,
    max_size: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<Sizes, Error> {
    let mut input = vec![0u8; DCtx::in_size().max(MAX_HEADER)];
    let mut filled = 0;
    let mut read = 0u64;
    // The header first: up to MAX_HEADER bytes, fewer if the patch is shorter.
    let header = loop {
        match parse_header(&input[..filled]) {
            Ok(Some(header)) => break header,
            Ok(None) => {}
            Err(reason) => return Err(Error::Corrupt { reason }),
        }
        let n = read_some(&mut patch, &mut input[filled..])?;
        if n == 0 {
            return Err(Error::Truncated { read });
        }
        filled += n;
        read += n as u64;
    };
    if header.dictionary_id != 0 {
        return Err(Error::Corrupt {
            reason: format!(
                "the frame needs zstd dictionary {}; a patch uses the old binary as its prefix",
                header.dictionary_id
            ),
        });
    }
    if let Some(declared) = header.content_size.filter(|&s| s > max_size) {
        return Err(Error::OutputTooLarge {
            max_size,
            declared: Some(declared),
        });
    }
    let limit = max_size
        .saturating_mul(2)
        .clamp(1 << WINDOW_LOG_MIN, 1 << WINDOW_LOG_MAX);
    if header.window_size > limit {
        return Err(Error::WindowTooLarge {
            window: header.window_size,
            limit,
        });
    }

    let mut dctx = DCtx::try_create().ok_or(Error::Memory("decoder"))?;
    let window_log = ceil_log2(header.window_size).clamp(WINDOW_LOG_MIN, WINDOW_LOG_MAX);
    dctx.set_parameter(DParameter::WindowLogMax(window_log))
        .map_err(|code| decode_error(code, header.window_size, limit))?;
    dctx.ref_prefix(prefix)
        .map_err(|code| decode_error(code, header.window_size, limit))?;

    let mut output = vec![0u8; DCtx::out_size()];
    let mut pos = 0;
    let mut written = 0u64;
    let mut output_full = false;
    loop {
        if pos == filled && !output_full {
            filled = read_some(&mut patch, &mut input)?;
            pos = 0;
            read += filled as u64;
            if filled == 0 {
                return Err(Error::Truncated { read });
            }
        }
        let mut inb = InBuffer {
            src: &input[..filled],
            pos,
        };
        let mut outb = OutBuffer::around(&mut output[..]);
        let hint = dctx
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|code| decode_error(code, header.window_size, limit))?;
        pos = inb.pos;
        let produced = outb.pos();
        output_full = produced == output.len();
        written += produced as u64;
        if written > max_size {
            return Err(Error::OutputTooLarge {
                max_size,
                declared: header.content_size,
            });
        }
        sink(&output[..produced]).map_err(|e| Error::Write("patched binary", e))?;
        if hint == 0 {
            break;
        }
    }
    // One frame, nothing after it: a patch with trailing bytes (a second
    // frame, garbage) is not the file that was published.
    if pos < filled || read_some(&mut patch, &mut input[..1])? > 0 {
        return Err(Error::Corrupt {
            reason: format!(
                "data after the zstd frame, which ends at byte {}",
                read - (filled - pos) as u64
            ),
        });
    }
    if let Some(declared) = header.content_size.filter(|&s| s != written) {
        // zstd checks this itself; never trust a short output.
        return Err(Error::Corrupt {
            reason: format!("the frame declares {declared} bytes and decodes to {written}"),
        });
    }
    Ok(Sizes {
        input: read,
        output: written,
    })
}

/// One `read`, retried on `Interrupted`.
fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, Error> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(Error::ReadPatch),
        }
    }
}

/// The [`Error`] for a zstd error code.
fn decode_error(code: zstd_safe::ErrorCode, window: u64, limit: u64) -> Error {
    use zstd_sys::ZSTD_ErrorCode as E;
    // zstd returns its errors as `(size_t)-ZSTD_error_*`.
    let is = |e: E| code == 0usize.wrapping_sub(e as usize);
    if is(E::ZSTD_error_memory_allocation) {
        Error::Memory("decoder")
    } else if is(E::ZSTD_error_frameParameter_windowTooLarge) {
        Error::WindowTooLarge { window, limit }
    } else {
        Error::Corrupt {
            reason: zstd_safe::get_error_name(code).to_owned(),
        }
    }
}

/// The smallest `n` with `2^n >= x` (0 for 0 and 1).
fn ceil_log2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        64 - (x - 1).leading_zeros()
    }
}

/// What a zstd frame header says (RFC 8878, section 3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The history the decoder must keep, bytes: the content size for a
    /// single-segment frame.
    window_size: u64,
    /// The decoded size, when the frame states it.
    content_size: Option<u64>,
    /// The dictionary the frame needs, 0 for none.
    dictionary_id: u32,
}

/// Parses the frame header at the start of `bytes`: `Ok(None)` when more
/// bytes are needed.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Option<Header>, String> {
    let [a, b, c, d, rest @ ..] = bytes else {
        return Ok(None);
    };
    let magic = u32::from_le_bytes([*a, *b, *c, *d]);
    if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
        return Err("a zstd skippable frame, not a patch".into());
    }
    if magic != MAGIC {
        return Err(format!("not a zstd frame (magic number {magic:#010x})"));
    }
    let Some(&descriptor) = rest.first() else {
        return Ok(None);
    };
    if descriptor & 0x08 != 0 {
        return Err("the frame header's reserved bit is set".into());
    }
    let single_segment = descriptor & 0x20 != 0;
    let dictionary_size = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let content_size_size = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let size = 5 + usize::from(!single_segment) + dictionary_size + content_size_size;
    if bytes.len() < size {
        return Ok(None);
    }
    let mut at = 5;
    let mut window_size = 0;
    if !single_segment {
        let descriptor = bytes[at];
        at += 1;
        let log = 10 + u32::from(descriptor >> 3);
        let base = 1u64 << log;
        window_size = base + (base / 8) * u64::from(descriptor & 0x07);
    }
    let le = |field: &[u8]| field.iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b));
    let dictionary_id = le(&bytes[at..at + dictionary_size]) as u32;
    at += dictionary_size;
    let content_size = match content_size_size {
        0 => None,
        2 => Some(le(&bytes[at..at + 2]) + 256),
        n => Some(le(&bytes[at..at + n])),
    };
    if single_segment {
        // Single segment: the window is the whole content, which is stated.
        window_size = content_size.unwrap_or(0);
    }
    Ok(Some(Header {
        window_size,
        content_size,
        dictionary_id,
    }))
}

/// The reference binary: mapped, or read when it cannot be (an empty file,
/// a file system without mmap).
enum Reference {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Reference {
    fn open(path: &Path) -> Result<Reference, Error> {
        let error = |source| Error::Reference {
            path: path.to_owned(),
            source,
        };
        Reference::open_file(path).map_err(error)
    }

    fn open_file(path: &Path) -> io::Result<Reference> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            if let Ok(map) = crate::sys::map_readonly(&file) {
                return Ok(Reference::Mapped(map));
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Reference::Read(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Reference::Mapped(map) => map,
            Reference::Read(bytes) => bytes,
        }
    }
}

/// Writes to `out` a patch that turns `old` into `new`, at zstd `level`
/// (1 to 22; [`DEFAULT_LEVEL`] is the CLI command's), and returns its size.
///
/// The parameters are those of `zstd -<level> --long=31 --patch-from=OLD
/// NEW`: `old` as the reference prefix, long-distance matching on, a window
/// of the next power of two above the larger file (at most 2 GiB), the
/// content size in the frame header and a frame checksum. So the patch
/// applies with [`apply`] and with `zstd -d --long=31 --patch-from=OLD`.
/// It is not byte-for-byte the CLI's output (the CLI compresses on a worker
/// thread), and need not be.
///
/// Both files are mapped; the encoder's tables for a level-19 patch of a
/// 20 MB binary take a few hundred MB.
pub fn make(old: &Path, new: &Path, level: i32, mut out: impl Write) -> Result<u64, Error> {
    let input = |path: &Path| {
        Reference::open_file(path).map_err(|source| Error::Input {
            path: path.to_owned(),
            source,
        })
    };
    let old_bytes = input(old)?;
    let new_bytes = input(new)?;
    let (old_bytes, new_bytes) = (old_bytes.bytes(), new_bytes.bytes());
    let make_error = |code| {
        use zstd_sys::ZSTD_ErrorCode as E;
        if code == 0usize.wrapping_sub(E::ZSTD_error_memory_allocation as usize) {
            Error::Memory("encoder")
        } else {
            Error::Make {
                reason: zstd_safe::get_error_name(code).to_owned(),
            }
        }
    };
    let largest = old_bytes.len().max(new_bytes.len()) as u64;
    let window_log = (largest.max(1).ilog2() + 1).clamp(WINDOW_LOG_MIN, WINDOW_LOG_MAX);
    let mut cctx = CCtx::try_create().ok_or(Error::Memory("encoder"))?;
    for parameter in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(true),
    ] {
        cctx.set_parameter(parameter).map_err(make_error)?;
    }
    cctx.set_pledged_src_size(Some(new_bytes.len() as u64))
        .map_err(make_error)?;
    cctx.ref_prefix(old_bytes).map_err(make_error)?;
    let mut input = InBuffer::around(new_bytes);
    let mut buffer = vec![0u8; CCtx::out_size()];
    let mut written = 0u64;
    loop {
        let mut output = OutBuffer::around(&mut buffer[..]);
        let remaining = cctx
            .compress_stream2(
                &mut output,
                &mut input,
                zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
            )
            .map_err(make_error)?;
        let produced = output.pos();
        out.write_all(&buffer[..produced])
            .map_err(|e| Error::Write("patch", e))?;
        written += produced as u64;
        if remaining == 0 {
            return Ok(written);
        }
    }
}

#[cfg(test)]
mod tests;

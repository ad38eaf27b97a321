//! Makes and applies delta patches with `baton::delta`, for the benchmark
//! (`ci/bench delta`) and for trying a patch by hand.
//!
//! ```text
//! cargo build --release --example delta
//! target/release/examples/delta make OLD NEW PATCH [LEVEL]
//! target/release/examples/delta apply OLD PATCH OUT SHA256 [MAX_SIZE]
//! ```
//!
//! `apply` writes OUT (a temporary file beside it first, renamed once the
//! sha256 matches) and prints the bytes written; it exits 1 with the reason on
//! any failure, leaving no OUT behind.

use std::path::Path;
use std::process::ExitCode;

use baton::delta;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["make", old, new, patch, level @ ..] if level.len() <= 1 => {
            make(old, new, patch, level.first().copied())
        }
        ["apply", old, patch, out, sha256, max @ ..] if max.len() <= 1 => {
            apply(old, patch, out, sha256, max.first().copied())
        }
        _ => Err(
            "usage: delta make OLD NEW PATCH [LEVEL] | delta apply OLD PATCH OUT SHA256 [MAX_SIZE]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delta: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(old: &str, new: &str, patch: &str, level: Option<&str>) -> Result<(), String> {
    let level = match level {
        Some(l) => l.parse().map_err(|_| format!("bad level {l:?}"))?,
        None => delta::DEFAULT_LEVEL,
    };
    let file = std::fs::File::create(patch).map_err(|e| format!("cannot create {patch}: {e}"))?;
    let size = delta::make(
        Path::new(old),
        Path::new(new),
        level,
        std::io::BufWriter::new(file),
    )
    .map_err(|e| baton::display_chain(&e))?;
    println!("{size}");
    Ok(())
}

fn apply(old: &str, patch: &str, out: &str, sha256: &str, max: Option<&str>) -> Result<(), String> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(sha256, &mut digest).map_err(|_| format!("bad sha256 {sha256:?}"))?;
    let max_size = match max {
        Some(m) => m.parse().map_err(|_| format!("bad max size {m:?}"))?,
        None => 512 << 20,
    };
    let spec = delta::Spec {
        reference: Path::new(old),
        from: None,
        sha256: digest,
        max_size,
    };
    let patch = std::fs::File::open(patch).map_err(|e| format!("cannot open {patch}: {e}"))?;
    let out = Path::new(out);
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut staging = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    // On any error the temporary file is dropped, and so removed.
    let applied = delta::apply(&spec, std::io::BufReader::new(patch), staging.as_file_mut())
        .map_err(|e| baton::display_chain(&e))?;
    staging
        .persist(out)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("{}", applied.size);
    Ok(())
}

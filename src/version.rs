//! How baton reads a version: semver, with a leading `v` allowed, and the
//! version a probe's output names. A leaf.

/// Parses a version, allowing a leading `v`.
pub fn parse_version(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// The version a probe names: the last semver token (`1.2.3`, `v1.2.3`) of
/// its last non-empty output line, so `1.2.3`, `v1.2.3` and `myapp 1.2.3`
/// all name 1.2.3.
pub fn probe_version(line: &str) -> Option<semver::Version> {
    line.split_whitespace().rev().find_map(parse_version)
}

/// The version of baton this process runs, as `baton --version` prints it.
/// The `baton` executable sets it at start ([`set_own`]); otherwise the
/// crate's version.
pub fn own() -> &'static str {
    OWN.get().map_or(env!("CARGO_PKG_VERSION"), String::as_str)
}

/// Sets the version [`own`] returns (once; later calls are ignored).
pub fn set_own(version: &str) {
    let _ = OWN.set(version.to_owned());
}

static OWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

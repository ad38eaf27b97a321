//! This host's place in a release's rollout: its stable id, the releases it
//! has entered (kept on disk, so it stays in), and the decision for one
//! candidate. The arithmetic is in [`crate::manifest::rollout`].
//!
//! - `releases/.host-id`: 128 random bits in hex, written once (unless the
//!   config names `fetch.host_id`).
//! - `releases/.rollout`: the versions this host was found in the rollout
//!   of, one a line; a clock stepping back or a lowered percentage does
//!   not take a host out again. An explicit `"rollout": 0` still halts it.

use std::io::Write;
use std::time::SystemTime;

use super::{Error, Store};
use crate::fetchers::Info;
use crate::fsutil::IoError;
use crate::manifest::rollout;

/// The file holding the generated host id.
pub const HOST_ID: &str = ".host-id";
/// The file listing the versions this host entered.
pub const ENTERED: &str = ".rollout";
/// How many entered versions are remembered.
const ENTERED_KEEP: usize = 32;

/// Why a host takes a release or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing is installed: a new host joins at the newest release.
    FirstInstall,
    /// The host's bucket is under the percentage in force.
    InRollout,
    /// The host entered this release's rollout before; it stays in.
    Entered,
    /// Not this host's turn yet.
    NotInRollout,
    /// `"rollout": 0`: halted for hosts that have not taken it.
    Halted,
}

impl Admission {
    /// Whether the host takes the release.
    pub fn admits(self) -> bool {
        matches!(
            self,
            Admission::FirstInstall | Admission::InRollout | Admission::Entered
        )
    }

    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Admission::FirstInstall => "nothing is installed, so this host takes it at once",
            Admission::InRollout => "this host is in the rollout",
            Admission::Entered => "this host entered the rollout before and stays in",
            Admission::NotInRollout => "not this host's turn yet",
            Admission::Halted => "the rollout is halted (rollout 0)",
        }
    }
}

/// The facts of one rollout decision, as logged and as `baton check
/// --json` prints them.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The version offered, when stated.
    pub version: Option<String>,
    /// This host's id.
    pub host_id: String,
    /// The host's bucket for this version.
    pub bucket: u64,
    /// The percentage in force now.
    pub percent: u8,
    /// Whether the host takes it, and why.
    pub admission: Admission,
    /// When a schedule next changes the percentage, if it will.
    pub next_change: Option<SystemTime>,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version {}: {} (host {}, bucket {:.3} %, {} % in force)",
            self.version.as_deref().unwrap_or("unknown"),
            self.admission.describe(),
            self.host_id,
            rollout::bucket_percent(self.bucket),
            self.percent
        )
    }
}

/// This host's id: the configured one, else the one kept in the releases
/// directory, generated (128 random bits) the first time. Two processes
/// generating at once agree: the file is linked into place only if absent.
pub fn host_id(store: &Store, configured: Option<&str>) -> Result<String, Error> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = store.dir().join(HOST_ID);
    let io = |what, source| {
        Error::Io(IoError {
            what,
            path: path.clone(),
            source,
        })
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", e)),
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    let mut tmp = tempfile::Builder::new()
        .prefix(".staging-")
        .tempfile_in(store.dir())
        .map_err(|e| io("write", e))?;
    tmp.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io("write", e))?;
    match std::fs::hard_link(tmp.path(), &path) {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| io("read", e)),
        Err(e) => Err(io("write", e)),
    }
}

/// The versions this host entered the rollout of.
pub fn entered(store: &Store) -> Vec<String> {
    std::fs::read_to_string(store.dir().join(ENTERED))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Records that this host entered `version`'s rollout.
pub fn enter(store: &Store, version: &str) -> Result<(), Error> {
    let mut all = entered(store);
    if all.iter().any(|v| v == version) {
        return Ok(());
    }
    all.push(version.to_owned());
    let skip = all.len().saturating_sub(ENTERED_KEEP);
    let text: String = all[skip..].iter().map(|v| format!("{v}\n")).collect();
    store.write_atomic(ENTERED, text.as_bytes())
}

/// Decides whether this host takes the candidate `info` describes.
/// A candidate without a manifest is offered to every host.
pub fn decide(store: &Store, info: &Info, now: SystemTime) -> Result<Decision, Error> {
    let host_id = host_id(store, info.host_id.as_deref())?;
    let version = info.version.clone();
    let bucket = rollout::bucket(&host_id, version.as_deref().unwrap_or(""));
    let (percent, halted, next_change) = match &info.manifest {
        Some(m) => (
            m.percent_at(now),
            m.rollout.is_halt(),
            m.rollout.next_change(m.published_at, now),
        ),
        None => (100, false, None),
    };
    let admission = if store.current().is_none() {
        Admission::FirstInstall
    } else if halted {
        Admission::Halted
    } else if rollout::admits(bucket, percent) {
        Admission::InRollout
    } else if version.as_ref().is_some_and(|v| entered(store).contains(v)) {
        Admission::Entered
    } else {
        Admission::NotInRollout
    };
    Ok(Decision {
        version,
        host_id,
        bucket,
        percent,
        admission,
        next_change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let releases = crate::config::Releases {
            dir: dir.path().join("releases"),
            binary: "hello".into(),
            keep: 3,
            settle: std::time::Duration::ZERO,
            health: None,
            trial_attempts: crate::config::TRIAL_ATTEMPTS_DEFAULT,
        };
        let store = Store::open(&releases).unwrap();
        (dir, store)
    }

    #[test]
    fn the_generated_host_id_is_kept() {
        let (_dir, store) = store();
        let a = host_id(&store, None).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(host_id(&store, None).unwrap(), a);
        assert_eq!(host_id(&store, Some("web-17")).unwrap(), "web-17");
        assert!(store.sweep().unwrap().is_empty(), "a sweep keeps the id");
        assert!(store.dir().join(HOST_ID).exists());
    }

    #[test]
    fn entered_versions_are_remembered() {
        let (_dir, store) = store();
        enter(&store, "2.0.0").unwrap();
        enter(&store, "2.0.0").unwrap();
        enter(&store, "2.1.0").unwrap();
        assert_eq!(entered(&store), ["2.0.0", "2.1.0"]);
    }

    #[test]
    fn a_host_with_nothing_installed_takes_even_a_halted_release() {
        let (_dir, store) = store();
        let manifest = crate::manifest::Manifest::parse(
            br#"{"version": "2.0.0", "url": "a", "rollout": 0}"#,
            false,
        )
        .unwrap();
        let info = Info {
            version: Some("2.0.0".into()),
            manifest: Some(manifest),
            host_id: Some("h".into()),
            ..Info::default()
        };
        let d = decide(&store, &info, SystemTime::now()).unwrap();
        assert_eq!(d.admission, Admission::FirstInstall);
        assert_eq!(d.percent, 0);
        assert_eq!(d.bucket, rollout::bucket("h", "2.0.0"));
    }
}

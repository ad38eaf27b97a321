//! The releases directory: `<version>-<sha8>/` per release, the `current`
//! and `previous` symlinks swapped atomically, pruning, rollback, the list of
//! failed digests, and sweeping what an interrupted install left.
//!
//! A release directory appears only by renaming a complete, fsynced staging
//! directory; `current` changes only by renaming a new symlink over it. A
//! crash at any point leaves `current` on a complete release.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;
use crate::config::Releases;
use crate::fsutil::IoError;

const META: &str = "release.json";
const FAILED: &str = ".failed";
const TRIAL: &str = ".trial";
const HELD: &str = ".held";
const QUARANTINED: &str = ".quarantined";
/// Versions a signed manifest yanked: never installed again.
const YANKED: &str = ".yanked";
const FAILED_PATCHES: &str = ".failed-patches";
const LOCK: &str = ".lock";

/// The durable record of a release on trial (`releases/.trial`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrialRecord {
    /// The release directory's name.
    pub id: String,
    /// Its artifact's sha256, hex: recorded as failed if the trial never ended.
    pub sha256: String,
    /// Seconds since the epoch.
    pub started_at: u64,
    /// How many times the trial was begun: a trial the master's own death
    /// interrupted is begun again when there is no `current` to go back
    /// to, up to `[releases] trial_attempts` (records written before
    /// attempts were counted read as 1).
    #[serde(default = "one")]
    pub attempts: u32,
    /// The release's version, for the reports a later master writes
    /// about it (its directory may be gone by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version the host ran when the trial began, for the reports a
    /// later master writes about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The yanked version this trial takes the host away from: a later
    /// master retries the way back and reports `yanked` once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<String>,
}

/// What a trial record says besides the release: see [`TrialRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrialContext {
    /// Which attempt at the trial this is (1 unless the master's death
    /// interrupted earlier ones).
    pub attempt: u32,
    /// The version the host ran before.
    pub from: Option<String>,
    /// The yanked version the trial leaves.
    pub leaves: Option<String>,
}

fn one() -> u32 {
    1
}

/// The releases directory's lock, held while this value lives.
#[derive(Debug)]
pub struct Lock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// What baton records about an installed release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The directory name.
    pub id: String,
    /// The version, when known.
    pub version: Option<String>,
    /// sha256 of the downloaded artifact, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it came from.
    pub source: String,
    /// Seconds since the epoch.
    pub installed_at: u64,
    /// sha256 of the installed executable, hex: what a delta patch's
    /// `from` must name. Absent for releases installed by baton 0.x
    /// before delta upgrades (the binary is hashed when needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
    /// The delta patch the binary was made from, when it was, and the
    /// bytes that patch moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<AppliedPatch>,
}

/// A delta patch that produced a release's binary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedPatch {
    /// The patch's URL or key, relative to the manifest.
    pub url: String,
    /// The bytes downloaded: the patch's size.
    pub size: u64,
    /// The release it was applied to.
    pub from: String,
}

/// Serializes changes to the failed and held digest lists in this process.
static DIGEST_LISTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The releases directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    binary: String,
    keep: usize,
    /// In-place mode: the plain binary replaced at every install.
    in_place: Option<PathBuf>,
}

/// [`crate::fsutil::io`], into this module's error.
fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| IoError::new(what, path, source).into()
}

/// [`crate::fsutil::fsync_dir`], into this module's error.
fn fsync_dir(dir: &Path) -> Result<(), Error> {
    Ok(crate::fsutil::fsync_dir(dir)?)
}

/// Writes a release's metadata in `dir`; fsynced with `sync` (without,
/// the caller fsyncs it with the rest of the release).
fn write_meta(dir: &Path, meta: &Meta, sync: bool) -> Result<(), Error> {
    let path = dir.join(META);
    let mut f = std::fs::File::create(&path).map_err(io("write", &path))?;
    f.write_all(
        serde_json::to_string_pretty(meta)
            .expect("serializable")
            .as_bytes(),
    )
    .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
    .map_err(io("write", &path))
}

/// How many fsyncs [`fsync_tree`] has in flight at once.
const FSYNC_THREADS: usize = 4;

/// fsyncs every regular file and directory under `dir` (links are not
/// followed) and `dir` itself, several at a time: the filesystem's journal
/// then commits them together, where one after the other each fsync waits
/// for a commit of its own.
fn fsync_tree(dir: &Path) -> Result<(), Error> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        for entry in std::fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
            let path = entry.path();
            let kind = entry.file_type().map_err(io("read", &path))?;
            if kind.is_dir() {
                walk(&path, out)?;
            } else if kind.is_file() {
                out.push(path);
            }
        }
        out.push(dir.to_owned());
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let fsync_next = || -> Result<(), Error> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(path) = paths.get(i) else {
                return Ok(());
            };
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io("fsync", path))?;
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..paths.len().min(FSYNC_THREADS))
            .map(|_| scope.spawn(fsync_next))
            .collect();
        let mine = fsync_next();
        helpers
            .into_iter()
            .map(|h| h.join().expect("an fsync thread does not panic"))
            .chain([mine])
            .collect()
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `a` and `b` hold the same bytes: the same file, or copies (a
/// running executable is replaced by a copy, never a link, so a library
/// master must not take its own copy for an unfinished replacement and
/// rewrite the executable it runs from at every start). `b_sha256`, when
/// known, is `b`'s digest, so only `a` is read.
fn same_bytes(a: &Path, b: &Path, b_sha256: Option<&str>) -> bool {
    if same_file(a, b) {
        return true;
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    let a_size = size(a);
    if a_size.is_none() || a_size != size(b) {
        return false;
    }
    let hash = |p: &Path| {
        crate::fsutil::hash_file(p)
            .ok()
            .map(|(d, _)| hex::encode(d))
    };
    let Some(a_sha256) = hash(a) else {
        return false;
    };
    match b_sha256 {
        Some(known) => a_sha256 == known,
        None => hash(b).is_some_and(|d| d == a_sha256),
    }
}

/// Hard-links `from` to `to`, or copies it where links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), Error> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map_err(io("copy", to))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", to))
}

impl Store {
    /// Opens (creating) the releases directory.
    pub fn open(releases: &Releases) -> Result<Store, Error> {
        std::fs::create_dir_all(&releases.dir).map_err(io("create", &releases.dir))?;
        Ok(Store {
            dir: releases.dir.clone(),
            binary: releases.binary.clone(),
            keep: releases.keep,
            in_place: None,
        })
    }

    /// In-place mode, for a program that runs from a plain file: releases
    /// are kept in a state directory beside it (`.<name>.baton/`, the same
    /// layout as a releases directory) and every install or rollback
    /// replaces `target` by an atomic rename (with self-replace when
    /// `target` is this very executable). A binary already at `target` is
    /// adopted as the first release.
    pub fn in_place(target: &Path) -> Result<Store, Error> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Error::Io(IoError {
                    what: "replace",
                    path: target.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a file path",
                    ),
                })
            })?;
        let parent = target.parent().unwrap_or(Path::new("."));
        let dir = parent.join(format!(".{name}.baton"));
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let store = Store {
            dir,
            binary: name,
            keep: 2,
            in_place: Some(target.to_owned()),
        };
        match store.current() {
            None if target.is_file() => store.adopt(target, None)?,
            // A crash between the swap of `current` and the replacement of
            // the target: finish the replacement.
            Some(current)
                if !same_bytes(
                    target,
                    &store.dir.join(&current.id).join(&store.binary),
                    current.binary_sha256.as_deref(),
                ) =>
            {
                store.replace_target(&current.id)?
            }
            _ => {}
        }
        Ok(store)
    }

    /// baton's own store (`[self]`): its builds under `dir`
    /// (`<releases dir>/.baton/`), named `baton`, the newest two kept, with
    /// `home` (the executable systemd or supervisord starts) replaced
    /// atomically when one is promoted.
    pub fn for_self(dir: &Path, home: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Store {
            dir: dir.to_owned(),
            binary: "baton".to_owned(),
            keep: 2,
            in_place: Some(home.to_owned()),
        })
    }

    /// Makes the executable at `home` (see [`Store::for_self`]) the current
    /// release, of `version`, unless `current` already has its bytes (a
    /// first start, or a package manager replaced it).
    pub fn adopt_home(&self, version: &str) -> Result<(), Error> {
        let Some(home) = self.in_place.clone() else {
            return Ok(());
        };
        for left in self.sweep()? {
            tracing::info!("removed {} left by an interrupted install", left.display());
        }
        let (sha256, _) = crate::fsutil::hash_file(&home)?;
        if self
            .current()
            .is_none_or(|c| c.sha256 != hex::encode(sha256))
        {
            self.adopt(&home, Some(version))?;
        }
        Ok(())
    }

    /// Records the binary found at `target` as the current release.
    fn adopt(&self, target: &Path, version: Option<&str>) -> Result<(), Error> {
        let (sha256, size) = crate::fsutil::hash_file(target)?;
        let staging = self.staging()?;
        link_or_copy(target, &self.binary_in(staging.path()))?;
        let meta = Meta {
            id: Store::id_for(version, &sha256),
            version: version.map(str::to_owned),
            sha256: hex::encode(sha256),
            size,
            source: format!("{} as found at first start", target.display()),
            installed_at: crate::time::unix_now(),
            binary_sha256: Some(hex::encode(sha256)),
            patch: None,
        };
        self.put(staging, &meta)?;
        self.point("current", &meta.id)
    }

    /// Replaces the in-place target with release `id`'s binary.
    fn replace_target(&self, id: &str) -> Result<(), Error> {
        let Some(target) = &self.in_place else {
            return Ok(());
        };
        let source = self.dir.join(id).join(&self.binary);
        let is_self = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok())
            .is_some_and(|exe| target.canonicalize().is_ok_and(|t| t == exe));
        if is_self {
            return self_replace::self_replace(&source).map_err(io("replace", target));
        }
        let tmp = target.with_file_name(format!(".{}.baton-new", self.binary));
        let _ = std::fs::remove_file(&tmp);
        link_or_copy(&source, &tmp)?;
        std::fs::rename(&tmp, target).map_err(io("replace", target))?;
        fsync_dir(target.parent().unwrap_or(Path::new(".")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes what an interrupted download or install left: temp files,
    /// staging directories, temp symlinks. Returns what was removed.
    pub fn sweep(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(io("read", &self.dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".download-")
                || name.starts_with(".staging-")
                || name.ends_with(".tmp-link")
            {
                let path = e.path();
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                let result = if is_dir {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                result.map_err(io("remove", &path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// A new empty staging directory inside the releases directory.
    pub fn staging(&self) -> Result<tempfile::TempDir, Error> {
        tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)
            .map_err(io("create a staging dir in", &self.dir))
    }

    /// Where the binary of a staged release goes.
    pub fn binary_in(&self, staging: &Path) -> PathBuf {
        staging.join(&self.binary)
    }

    fn link(&self, name: &str) -> Option<String> {
        std::fs::read_link(self.dir.join(name))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The release `current` points at.
    pub fn current(&self) -> Option<Meta> {
        self.meta(&self.link("current")?)
    }

    /// The release `previous` points at.
    pub fn previous(&self) -> Option<Meta> {
        self.meta(&self.link("previous")?)
    }

    fn meta(&self, id: &str) -> Option<Meta> {
        let text = std::fs::read_to_string(self.dir.join(id).join(META)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The directory name for a release.
    pub fn id_for(version: Option<&str>, sha256: &[u8; 32]) -> String {
        let version: String = version
            .unwrap_or("unversioned")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".+-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{version}-{}", &hex::encode(sha256)[..8])
    }

    /// Moves a complete staging directory into place as release `meta.id`.
    /// `current` does not move: only the master promotes a release, after
    /// its trial.
    pub fn install(&self, staging: tempfile::TempDir, meta: &Meta) -> Result<(), Error> {
        write_meta(staging.path(), meta, false)?;
        // Every unpacked file and directory, not only the binary: after a
        // power cut a release directory must not hold empty files.
        fsync_tree(staging.path())?;
        self.put(staging, meta)
    }

    /// Points `current` at release `id` and `previous` at what `current`
    /// was; in in-place mode, replaces the target. Returns the id `current`
    /// pointed at before. Only the master calls this, at the end of a trial.
    pub fn promote(&self, id: &str) -> Result<Option<String>, Error> {
        if self.meta(id).is_none() {
            return Err(Error::Io(IoError {
                what: "promote",
                path: self.dir.join(id),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the release directory is gone or incomplete",
                ),
            }));
        }
        let before = self.link("current");
        if let Some(old) = before.as_deref().filter(|old| *old != id) {
            self.point("previous", old)?;
        }
        self.point("current", id)?;
        self.replace_target(id)?;
        self.prune();
        Ok(before)
    }

    /// The release with this id, when its directory is complete.
    pub fn release(&self, id: &str) -> Option<Meta> {
        self.meta(id)
    }

    /// The executable to run for release `id`, derived from the program's
    /// `command`: `<dir>/current/<rest>` becomes `<dir>/<id>/<rest>`; in
    /// in-place mode the target becomes the release's copy. `None` when the
    /// command does not run through `current`.
    pub fn command_for(&self, command: &Path, id: &str) -> Option<PathBuf> {
        if let Some(target) = &self.in_place {
            return (command == target).then(|| self.dir.join(id).join(&self.binary));
        }
        let rest = command.strip_prefix(self.dir.join("current")).ok()?;
        Some(self.dir.join(id).join(rest))
    }

    /// Records that release `meta.id` is on trial, durably, before its worker
    /// starts, as the trial's `context.attempt`-th attempt: a master that dies
    /// during the trial finds the record at its next start and decides
    /// from it (see `master::rollout::interrupted`).
    pub fn begin_trial(&self, meta: &Meta, context: &TrialContext) -> Result<(), Error> {
        let record = TrialRecord {
            id: meta.id.clone(),
            sha256: meta.sha256.clone(),
            started_at: crate::time::unix_now(),
            attempts: context.attempt,
            version: meta.version.clone(),
            from: context.from.clone(),
            leaves: context.leaves.clone(),
        };
        self.write_atomic(
            TRIAL,
            &serde_json::to_vec_pretty(&record).expect("serializable"),
        )
    }

    /// The unfinished trial recorded on disk, if any.
    pub fn trial(&self) -> Option<TrialRecord> {
        let text = std::fs::read(self.dir.join(TRIAL)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the trial record: the trial was promoted or failed.
    pub fn end_trial(&self) -> Result<(), Error> {
        let path = self.dir.join(TRIAL);
        match std::fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Takes the releases directory's lock for this process's lifetime (or
    /// until the returned guard drops): one master, or one `baton check
    /// --install`, writes here at a time. Fails with [`Error::Locked`]
    /// naming the holder's PID when another process holds it.
    pub fn lock(&self) -> Result<Lock, Error> {
        let path = self.dir.join(LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                use std::io::Seek;
                let pid = std::process::id().to_string();
                locked
                    .set_len(0)
                    .and_then(|_| locked.rewind())
                    .and_then(|_| locked.write_all(pid.as_bytes()))
                    .map_err(io("write", &path))?;
                Ok(Lock { _file: locked })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Locked {
                dir: self.dir.clone(),
                pid: std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|p| p.trim().parse().ok()),
            }),
            Err((_, errno)) => Err(io("lock", &path)(errno.into())),
        }
    }

    /// Writes `name` in the releases directory by an fsynced temp file
    /// renamed over it.
    pub(crate) fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        Ok(crate::fsutil::write_atomic(
            &self.dir.join(name),
            bytes,
            ".staging-",
            None,
        )?)
    }

    /// Renames a complete staging directory into place as `meta.id`.
    fn put(&self, staging: tempfile::TempDir, meta: &Meta) -> Result<(), Error> {
        let target = self.dir.join(&meta.id);
        if target.join(META).exists() {
            // The same bytes were installed before (a rollback target): keep
            // that complete copy.
            drop(staging);
        } else {
            if !staging.path().join(META).exists() {
                write_meta(staging.path(), meta, true)?;
            }
            let staged = staging.keep();
            std::fs::rename(&staged, &target).map_err(io("rename into place", &target))?;
        }
        fsync_dir(&self.dir)
    }

    /// Atomically points the symlink `name` at `id`: a temp symlink beside
    /// it renamed over it, then the directory fsynced.
    fn point(&self, name: &str, id: &str) -> Result<(), Error> {
        let link = self.dir.join(name);
        // A name of its own per call: two writers never rename each
        // other's temp link.
        let tmp = self
            .dir
            .join(format!(".{name}.{}.tmp-link", rand::random::<u64>()));
        std::os::unix::fs::symlink(id, &tmp).map_err(io("create", &tmp))?;
        std::fs::rename(&tmp, &link).map_err(io("swap", &link))?;
        fsync_dir(&self.dir)
    }

    /// Keeps the newest `keep` releases plus `current` and `previous`.
    fn prune(&self) {
        let protect: HashSet<String> = ["current", "previous"]
            .iter()
            .filter_map(|l| self.link(l))
            .collect();
        let releases = self.releases();
        for old in releases
            .iter()
            .skip(self.keep)
            .filter(|m| !protect.contains(&m.id))
        {
            match std::fs::remove_dir_all(self.dir.join(&old.id)) {
                Ok(()) => tracing::info!("pruned release {}", old.id),
                Err(e) => tracing::warn!("cannot prune release {}: {e}", old.id),
            }
        }
    }

    /// Digests that failed their trial: never installed again.
    pub fn failed(&self) -> HashSet<String> {
        self.digests(FAILED)
    }

    /// Records a digest that must not be installed again.
    pub fn mark_failed(&self, sha256: &str) -> Result<(), Error> {
        self.add_digest(FAILED, sha256)
    }

    /// Digests an operator rolled back from: not installed again from the
    /// source until [`Store::clear_held`] (`baton upgrade --force`); a newer
    /// build has other bytes and is not held.
    pub fn held(&self) -> HashSet<String> {
        self.digests(HELD)
    }

    /// Holds a digest (a rollback moved away from it).
    pub fn hold(&self, sha256: &str) -> Result<(), Error> {
        self.add_digest(HELD, sha256)
    }

    /// Digests quarantined because their trial was interrupted by the
    /// master's death `[releases] trial_attempts` times with no `current`
    /// to go back to: skipped until [`Store::clear_held`] (`baton upgrade
    /// --force`), as held ones are. Nothing proved them bad.
    pub fn quarantined(&self) -> HashSet<String> {
        self.digests(QUARANTINED)
    }

    /// Quarantines a digest whose interrupted trials used up their attempts.
    pub fn quarantine(&self, sha256: &str) -> Result<(), Error> {
        self.add_digest(QUARANTINED, sha256)
    }

    /// Versions a signed manifest yanked, as written (see
    /// [`Store::is_yanked`]).
    pub fn yanked(&self) -> HashSet<String> {
        self.digests(YANKED)
    }

    /// Records a yanked version: no manifest installs it again here until
    /// [`Store::clear_held`] (`baton upgrade --force`).
    pub fn mark_yanked(&self, version: &semver::Version) -> Result<(), Error> {
        self.add_digest(YANKED, &version.to_string())
    }

    /// Whether `version` was yanked here. A list that cannot be read is an
    /// error, never an empty list.
    pub fn is_yanked(&self, version: &str) -> Result<bool, Error> {
        let Some(v) = crate::version::parse_version(version) else {
            return Ok(false);
        };
        Ok(self
            .read_digests(YANKED)?
            .iter()
            .any(|y| crate::version::parse_version(y).as_ref() == Some(&v)))
    }

    /// Forgets every held and quarantined digest and every yanked version
    /// (`baton upgrade --force`).
    pub fn clear_held(&self) -> Result<(), Error> {
        let _one = DIGEST_LISTS.lock().unwrap_or_else(|e| e.into_inner());
        for name in [HELD, QUARANTINED, YANKED] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => fsync_dir(&self.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Whether the pipeline skips these bytes: failed, held or quarantined.
    /// A list that cannot be read is an error, never an empty list (that
    /// would retry known-bad bytes).
    pub fn skipped(&self, sha256: &str) -> Result<bool, Error> {
        Ok(self.read_digests(FAILED)?.contains(sha256)
            || self.read_digests(HELD)?.contains(sha256)
            || self.read_digests(QUARANTINED)?.contains(sha256))
    }

    /// Whether applying the patch with digest `patch` to the binary with
    /// digest `from` failed before: such a pair is never tried again. A
    /// list that cannot be read is an error (the caller then fetches the
    /// full artifact).
    pub fn patch_failed(&self, from: &str, patch: &str) -> Result<bool, Error> {
        Ok(self
            .read_digests(FAILED_PATCHES)?
            .contains(&format!("{from}-{patch}")))
    }

    /// Records that a patch failed against a binary.
    pub fn mark_patch_failed(&self, from: &str, patch: &str) -> Result<(), Error> {
        self.add_digest(FAILED_PATCHES, &format!("{from}-{patch}"))
    }

    /// Every complete release directory, newest install first.
    pub fn releases(&self) -> Vec<Meta> {
        let mut all: Vec<Meta> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| self.meta(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by_key(|m| std::cmp::Reverse(m.installed_at));
        all
    }

    /// A digest list for display: unreadable reads as empty.
    fn digests(&self, name: &str) -> HashSet<String> {
        self.read_digests(name).unwrap_or_default()
    }

    fn read_digests(&self, name: &str) -> Result<HashSet<String>, Error> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    fn add_digest(&self, name: &str, sha256: &str) -> Result<(), Error> {
        // The update loop (a refused `pre_install`) and the store thread (a
        // failed trial) may both add to a list: one read-modify-write at a
        // time, so neither digest is lost.
        let _one = DIGEST_LISTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<String> = self.read_digests(name)?.into_iter().collect();
        all.push(sha256.to_owned());
        all.sort();
        all.dedup();
        self.write_atomic(name, format!("{}\n", all.join("\n")).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn an_in_place_target_that_is_a_copy_of_current_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        std::fs::write(&target, b"build one").unwrap();
        Store::in_place(&target).unwrap();
        // A running executable is replaced by a copy (self-replace), not a
        // link: the next start must not take it for an unfinished swap.
        let copy = dir.path().join(".app.copy");
        std::fs::copy(&target, &copy).unwrap();
        std::fs::rename(&copy, &target).unwrap();
        let before = inode(&target);
        Store::in_place(&target).unwrap();
        assert_eq!(inode(&target), before, "the target was rewritten");
    }

    #[test]
    fn an_in_place_target_left_behind_by_a_crash_is_replaced_by_current() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        std::fs::write(&target, b"build one").unwrap();
        Store::in_place(&target).unwrap();
        // The same size, other bytes (a new file: the target is linked to
        // the release's copy): `current` names build one.
        let other = dir.path().join(".app.other");
        std::fs::write(&other, b"build two").unwrap();
        std::fs::rename(&other, &target).unwrap();
        Store::in_place(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"build one");
    }
}

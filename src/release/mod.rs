//! From candidate to installed release: stage, verify, unpack, probe,
//! install. The pipeline ends at a complete, fsynced `releases/<id>/`; it
//! never touches `current`, which only the master moves, after a trial.

pub mod archive;
pub mod cohort;
pub mod install;
mod patch;
pub mod probe;
pub mod stage;
pub mod verify;
mod yank;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::child_env::ChildEnv;
use crate::config::Verify;
use crate::fetchers::{Candidate, Info};
use crate::fsutil::IoError;
pub use cohort::{Admission, Decision};
pub use install::{AppliedPatch, Lock, Meta, Store, TrialContext, TrialRecord};

/// Why a candidate was not installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source could not be checked.
    #[error(transparent)]
    Fetch(#[from] crate::fetchers::Error),
    /// The download broke off.
    #[error("download from {from} failed: {reason}")]
    Download {
        /// The source and artifact.
        from: String,
        /// Why, with its causes.
        reason: String,
    },
    /// The download ended before the size the source stated.
    #[error("download truncated: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes stated.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The download is longer than the size the source stated (a file
    /// still being written).
    #[error("download is longer than stated: got {got} bytes, the source said {expected}")]
    Longer {
        /// Bytes stated.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The download took longer than `verify.download_timeout`.
    #[error("download took longer than {}", humantime::format_duration(*.limit))]
    DownloadTimeout {
        /// The limit.
        limit: Duration,
    },
    /// The download is larger than `verify.max_size`.
    #[error("download is larger than verify.max_size ({limit} bytes){}", .size.map(|s| format!(": {s} bytes")).unwrap_or_default())]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The stated size, when known before downloading.
        size: Option<u64>,
    },
    /// The sha256 differs from the one expected.
    #[error("sha256 mismatch: {from} expects {expected}, the download is {actual}")]
    Checksum {
        /// Who stated the expected digest.
        from: &'static str,
        /// Expected, hex.
        expected: String,
        /// Actual, hex.
        actual: String,
    },
    /// A key is configured and the source gave no signature.
    #[error("no minisign signature, and verify.minisign_key makes one mandatory")]
    MissingSignature,
    /// The signature does not verify.
    #[error("bad minisign signature: {reason}")]
    BadSignature {
        /// Why.
        reason: String,
    },
    /// The candidate's version is lower than the running one.
    #[error(
        "refusing downgrade from {running} to {candidate} (set verify.allow_downgrade to allow)"
    )]
    Downgrade {
        /// Running version.
        running: String,
        /// Candidate version.
        candidate: String,
    },
    /// The candidate's version is outside `verify.version`.
    #[error("version {version} does not match verify.version {requirement}")]
    VersionRequirement {
        /// The requirement.
        requirement: String,
        /// The candidate's version.
        version: String,
    },
    /// An archive is corrupt, escapes its directory, or lacks the binary.
    #[error("bad archive: {reason}")]
    Archive {
        /// What is wrong.
        reason: String,
    },
    /// The candidate could not be started for its probe.
    #[error("cannot run probe {path}")]
    ProbeSpawn {
        /// The binary.
        path: PathBuf,
        /// Why (exec format error, permission denied).
        #[source]
        source: std::io::Error,
    },
    /// The probe exited unsuccessfully.
    #[error("probe failed with {status}: {output}")]
    ProbeFailed {
        /// Exit status, described.
        status: String,
        /// Its last output lines.
        output: String,
    },
    /// The probe did not exit in time; it was killed with its children.
    #[error("probe did not exit within {}; killed it and its process group", humantime::format_duration(*.limit))]
    ProbeTimeout {
        /// The limit.
        limit: Duration,
    },
    /// The probe names another version than the source states.
    #[error("the source states version {expected}, but the probe printed {output:?}")]
    ProbeVersion {
        /// The version stated by the source.
        expected: String,
        /// The probe's last output line.
        output: String,
    },
    /// A version the order check needs cannot be determined.
    #[error(
        "cannot determine the version of {subject}: {reason}; downgrade protection refuses it \
         (set verify.allow_downgrade = true to accept versions that cannot be ordered)"
    )]
    VersionUnknown {
        /// `the candidate` or `the running release <id>`.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Another process holds the releases directory's lock.
    #[error(
        "the releases directory {} is locked by {}",
        .dir.display(),
        .pid.map_or_else(|| "another process".to_owned(), |p| format!("a running master (pid {p}); ask it to check now with `kill -USR1 {p}`"))
    )]
    Locked {
        /// The releases directory.
        dir: PathBuf,
        /// The holder's PID, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// Whether the candidate's probe failed (it could not start, failed,
    /// hung, or named another version).
    pub fn is_probe(&self) -> bool {
        matches!(
            self,
            Error::ProbeSpawn { .. }
                | Error::ProbeFailed { .. }
                | Error::ProbeTimeout { .. }
                | Error::ProbeVersion { .. }
        )
    }

    /// Worth retrying the same candidate (a broken transfer), as opposed to
    /// bytes that failed a check and will fail it again.
    pub fn is_transient(&self) -> bool {
        if let Error::Fetch(e) = self {
            return e.is_transient();
        }
        matches!(
            self,
            Error::Download { .. }
                | Error::Truncated { .. }
                | Error::Longer { .. }
                | Error::DownloadTimeout { .. }
                | Error::Io(..)
        )
    }
}

/// What became of a candidate.
#[derive(Debug)]
pub enum Outcome {
    /// Installed as a release directory, ready for its trial; `current`
    /// has not moved.
    Installed(Meta),
    /// Verified and probed, not installed (`baton check` without `--install`).
    Verified(Meta),
    /// The same bytes as the running release.
    Unchanged(Meta),
    /// The manifest's rollout does not include this host (yet): nothing
    /// was downloaded.
    NotInRollout(Decision),
    /// This host's turn came, but the manifest's gate holds the release
    /// (its canaries failed, or have not proved it yet): nothing was
    /// downloaded.
    HeldByGate {
        /// The rollout decision that let the host in.
        decision: Decision,
        /// The counts the gate decided on.
        counts: crate::manifest::gate::Counts,
        /// Why it holds.
        why: String,
    },
    /// The running release's version is yanked by a signed manifest: the
    /// host goes back to the manifest's (lower) release, through a trial.
    Leaves {
        /// The release to go back to: installed now, or an installed
        /// release directory with the manifest's binary digest (`reused`).
        release: Meta,
        /// The yanked release the host runs.
        yanked: Meta,
        /// Whether `release` was already installed: nothing downloaded.
        reused: bool,
    },
    /// The candidate's version was yanked (by this or an earlier signed
    /// manifest): never installed again until `baton upgrade --force`.
    Yanked {
        /// Its version.
        version: String,
    },
    /// Bytes that failed after an earlier install; skipped.
    KnownBad {
        /// Their sha256, hex.
        sha256: String,
    },
}

/// What [`Pipeline::before_download`] decided.
enum Step {
    /// The check ends with this.
    Done(Outcome),
    /// Download; `leaving` is the yanked running release the download
    /// takes the host back from.
    Go {
        /// The yanked running release.
        leaving: Option<Meta>,
    },
}

/// The pipeline's settings.
pub struct Pipeline {
    store: Store,
    verify: Verify,
    /// The environment probes run with.
    child_env: ChildEnv,
    /// Where downloads and staging directories go, when not in the store.
    scratch: Option<PathBuf>,
    /// Where the fleet's trial reports are read, for a manifest's gate.
    reports: Option<crate::fleet::Sink>,
    /// Failure reasons already read from the reports.
    reasons: crate::fleet::read::Reasons,
    /// The skipped reports last logged, by version: said once per change.
    skipped_said: std::sync::Mutex<Option<(String, usize)>>,
}

impl Pipeline {
    /// A pipeline installing into `store`, probing candidates with
    /// `child_env` (the environment a worker would get).
    pub fn new(store: Store, verify: Verify, child_env: ChildEnv) -> Pipeline {
        Pipeline {
            store,
            verify,
            child_env,
            scratch: None,
            reports: None,
            reasons: Default::default(),
            skipped_said: Default::default(),
        }
    }

    /// Reads the fleet's trial reports from `sink` when a manifest has a
    /// gate (the file and s3 sources); without one, a gated release goes
    /// by its schedule alone.
    pub fn with_reports(mut self, sink: Option<crate::fleet::Sink>) -> Pipeline {
        self.reports = sink;
        self
    }

    /// Downloads and stages in `dir` instead of the releases directory, so
    /// that a check that will not install never writes beside a running
    /// master's own downloads.
    pub fn with_scratch(mut self, dir: impl Into<PathBuf>) -> Pipeline {
        self.scratch = Some(dir.into());
        self
    }

    fn work_dir(&self) -> &std::path::Path {
        self.scratch.as_deref().unwrap_or(self.store.dir())
    }

    /// The releases directory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this host takes the candidate `info` describes, by its
    /// manifest's rollout (see [`cohort`]); nothing is recorded.
    pub fn rollout(&self, info: &Info) -> Result<Decision, Error> {
        cohort::decide(&self.store, info, std::time::SystemTime::now())
    }

    /// Runs a candidate through every check and, with `install`, installs it.
    /// `progress` is called with the bytes downloaded so far.
    pub async fn run(
        &self,
        candidate: Candidate,
        install: bool,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Outcome, Error> {
        let Candidate { body, info, opener } = candidate;
        let current = self.store.current();
        let leaving = match self
            .before_download(&info, current.as_ref(), install)
            .await?
        {
            Step::Done(early) => return Ok(early),
            Step::Go { leaving } => leaving,
        };
        // A patch against the running binary, when the manifest offers
        // one; any failure falls back to the full artifact.
        let patched = match (&opener, &current) {
            (Some(opener), Some(cur)) => {
                let cx = patch::Context {
                    store: &self.store,
                    verify: &self.verify,
                    work_dir: self.work_dir(),
                    current: cur,
                    install,
                };
                patch::fetch(&cx, &info, opener, progress).await
            }
            _ => None,
        };
        let (staged, applied) = match patched {
            Some(p) => {
                let applied = AppliedPatch {
                    url: p.patch.url,
                    size: p.patch.size,
                    from: current.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                };
                (p.staged, Some(applied))
            }
            None => {
                let v = &self.verify;
                let from = describe(&info);
                let staged = stage::stage(
                    body,
                    self.work_dir(),
                    &from,
                    v.max_size,
                    v.download_timeout,
                    info.size,
                    progress,
                )
                .await?;
                (staged, None)
            }
        };
        // A patch is only taken for an artifact that is the binary itself,
        // so a patched binary is byte for byte the artifact: from here on
        // both paths are one.
        let sha_hex = hex::encode(staged.sha256);
        if let Some(cur) = current.as_ref().filter(|c| c.sha256 == sha_hex) {
            return Ok(Outcome::Unchanged(cur.clone()));
        }
        if self.store.skipped(&sha_hex)? {
            return Ok(Outcome::KnownBad { sha256: sha_hex });
        }
        verify::checksum(info.sha256, self.verify.sha256, staged.sha256)?;
        let staging = self.staging_dir()?;
        let binary = self.store.binary_in(staging.path());
        let (sha256, size) = (staged.sha256, staged.size);
        let binary_sha256 = self.place(staged, &info, staging.path(), &binary).await?;
        // A binary_sha256 the manifest states (signed, when it is) binds
        // the executable too, before it is ever run.
        if let Some(stated) = info.manifest.as_ref().and_then(|m| m.binary_sha256) {
            if stated != binary_sha256 {
                return Err(Error::Checksum {
                    from: "the manifest's binary_sha256",
                    expected: hex::encode(stated),
                    actual: hex::encode(binary_sha256),
                });
            }
        }
        // The binary's bytes go to the disk while its probe runs; the
        // install's fsync then finds little left to do (and meets any
        // error again).
        let flushing = install.then(|| {
            let binary = binary.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&binary).and_then(|f| f.sync_all())
            })
        });
        let version = self
            .version(&binary, &info, current.as_ref(), leaving.is_some())
            .await;
        if let Some(flushing) = flushing {
            let _ = flushing.await;
        }
        let version = version?;
        // A source that states no version (a bare binary, a manifest
        // without one) learns it from the probe: a yanked one goes no
        // further.
        if let Some(v) = version.as_deref().filter(|_| info.version.is_none()) {
            if self.store.is_yanked(v)? {
                return Ok(Outcome::Yanked {
                    version: v.to_owned(),
                });
            }
        }
        let meta = Meta {
            id: Store::id_for(version.as_deref(), &sha256),
            version,
            sha256: sha_hex,
            size,
            source: describe(&info),
            installed_at: crate::time::unix_now(),
            binary_sha256: Some(hex::encode(binary_sha256)),
            patch: applied,
        };
        if !install {
            return Ok(Outcome::Verified(meta));
        }
        let store = self.store.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || store.install(staging, &m))
            .await
            .expect("the install task does not panic")?;
        Ok(match leaving {
            Some(yanked) => Outcome::Leaves {
                release: meta,
                yanked,
                reused: false,
            },
            None => Outcome::Installed(meta),
        })
    }

    /// What is decided before a byte is downloaded: known bytes (when the
    /// source states the digest), a yank, a stated version lower than the
    /// running one, and the rollout.
    async fn before_download(
        &self,
        info: &Info,
        current: Option<&Meta>,
        install: bool,
    ) -> Result<Step, Error> {
        yank::record(&self.store, info, install)?;
        let stated = info.sha256.map(hex::encode);
        if let Some(cur) = current.filter(|c| stated.as_ref() == Some(&c.sha256)) {
            return Ok(Step::Done(Outcome::Unchanged(cur.clone())));
        }
        // A signed yank authorizes exactly one downgrade, for every host
        // whatever its bucket: no order check, rollout or gate.
        if let Some(step) = yank::decide(&self.store, info, current, install).await? {
            return Ok(step);
        }
        if let Some(stated) = stated {
            if self.store.skipped(&stated)? {
                return Ok(Step::Done(Outcome::KnownBad { sha256: stated }));
            }
        }
        // The probe's version is checked again once the binary runs.
        if let (Some(stated), Some(cur)) = (&info.version, current) {
            verify::not_lower(stated, cur.version.as_deref(), self.verify.allow_downgrade)?;
        }
        let decision = self.rollout(info)?;
        tracing::info!("rollout from {}: {decision}", info.source);
        if !decision.admission.admits() {
            return Ok(Step::Done(Outcome::NotInRollout(decision)));
        }
        if let Some(held) = self.gate(info, &decision).await {
            return Ok(Step::Done(held));
        }
        if install && decision.admission == Admission::InRollout {
            if let Some(version) = &decision.version {
                cohort::enter(&self.store, version)?;
            }
        }
        Ok(Step::Go { leaving: None })
    }

    /// The manifest's gate, for a host whose turn came: a canary takes the
    /// release without looking; any other host reads the version's reports
    /// and is held while the gate is closed, or while the reports cannot be
    /// read (the gate fails closed). A host that entered the rollout before
    /// stays in, and one with nothing installed takes the release at once.
    async fn gate(&self, info: &Info, decision: &Decision) -> Option<Outcome> {
        let gate = info.manifest.as_ref()?.gate.as_ref()?;
        if decision.admission != Admission::InRollout || gate.is_canary(decision.bucket) {
            return None;
        }
        let version = decision.version.as_deref().unwrap_or_default();
        let Some(sink) = &self.reports else {
            tracing::debug!(
                "version {version} has a gate, but {} cannot hold reports: it goes by its \
                 schedule alone",
                info.source
            );
            return None;
        };
        let held = |counts, why| Outcome::HeldByGate {
            decision: decision.clone(),
            counts,
            why,
        };
        match sink.read_with(version, &self.reasons).await {
            Ok(reports) => {
                let now = (version.to_owned(), reports.skipped);
                let mut said = self.skipped_said.lock().unwrap_or_else(|e| e.into_inner());
                if reports.skipped > 0 && said.as_ref() != Some(&now) {
                    tracing::warn!(
                        event = "reports_skipped",
                        "{} report(s) of {version} skipped: malformed, oversized, not a regular \
                         file or past a listing's bound (a skipped failure still counts)",
                        reports.skipped
                    );
                }
                *said = Some(now);
                drop(said);
                match gate.verdict(&reports, std::time::SystemTime::now()) {
                    crate::manifest::gate::Verdict::Open(_) => None,
                    crate::manifest::gate::Verdict::Held { counts, why } => Some(held(counts, why)),
                }
            }
            Err(e) => Some(held(
                Default::default(),
                format!("its reports cannot be read, so the gate holds: {e}"),
            )),
        }
    }

    /// A fresh staging directory for a release's files.
    fn staging_dir(&self) -> Result<tempfile::TempDir, Error> {
        match &self.scratch {
            Some(dir) => tempfile::Builder::new()
                .prefix(".staging-")
                .tempdir_in(dir)
                .map_err(|source| {
                    Error::Io(IoError {
                        what: "create a staging dir in",
                        path: dir.clone(),
                        source,
                    })
                }),
            None => self.store.staging(),
        }
    }

    /// Checks the staged artifact's signature and puts the executable in
    /// `dest` under `binary`'s file name (unpacking an archive), off the
    /// event loop; the executable's sha256.
    async fn place(
        &self,
        staged: stage::Staged,
        info: &Info,
        dest: &Path,
        binary: &Path,
    ) -> Result<[u8; 32], Error> {
        let v = &self.verify;
        // A verified manifest's signature binds the digest checked before:
        // the artifact itself then needs none.
        let bound = info.manifest.as_ref().is_some_and(|m| m.signed);
        let path = staged.file.path().to_owned();
        let file = staged.file.reopen().map_err(|source| {
            Error::Io(IoError {
                what: "read",
                path: path.clone(),
                source,
            })
        })?;
        let job = Placing {
            keys: if bound {
                Vec::new()
            } else {
                v.minisign_keys.clone()
            },
            signature: info.signature.clone(),
            name: info.name.clone(),
            limits: archive::Limits::of(v),
            dest: dest.to_owned(),
            bin_name: binary
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned(),
            file,
            path,
            staged: staged.file.into_temp_path(),
            sha256: staged.sha256,
        };
        tokio::task::spawn_blocking(move || job.run())
            .await
            .expect("the verify task does not panic")
    }

    /// The release's version: what the source states and the probe of
    /// `binary` names, checked against the running release's.
    /// `downgrade` says a signed yank authorized a lower version.
    async fn version(
        &self,
        binary: &Path,
        info: &Info,
        current: Option<&Meta>,
        downgrade: bool,
    ) -> Result<Option<String>, Error> {
        let v = &self.verify;
        let allow_downgrade = v.allow_downgrade || downgrade;
        let reported = probe::run(binary, &v.probe, v.probe_timeout, &self.child_env).await?;
        let running_version = match current {
            Some(c) if c.version.is_none() && !allow_downgrade => self.probe_running(c).await,
            Some(c) => c.version.clone(),
            None => None,
        };
        Ok(verify::decide(
            info.version.as_deref(),
            &reported,
            current.map(|c| verify::Running {
                id: &c.id,
                version: running_version.as_deref(),
            }),
            allow_downgrade,
            v.version.as_ref(),
        )?
        .map(|v| v.to_string()))
    }

    /// The version of a running release that has none recorded (a binary
    /// adopted in place): what its probe names, if it names one.
    async fn probe_running(&self, current: &Meta) -> Option<String> {
        let binary = self.store.binary_in(&self.store.dir().join(&current.id));
        let line = probe::run(
            &binary,
            &self.verify.probe,
            self.verify.probe_timeout,
            &self.child_env,
        )
        .await
        .map_err(|e| {
            tracing::warn!(
                "cannot probe the running release {} for its version: {}",
                current.id,
                crate::errors::display_chain(&e)
            )
        })
        .ok()?;
        verify::probe_version(&line).map(|v| v.to_string())
    }
}

fn describe(info: &Info) -> String {
    if info.name.is_empty() {
        info.source.clone()
    } else {
        format!("{} ({})", info.source, info.name)
    }
}

/// Putting a staged artifact's executable in place, on a blocking thread.
struct Placing {
    /// The keys its signature must verify with (none when a signed
    /// manifest binds its digest).
    keys: Vec<String>,
    signature: Option<String>,
    /// The artifact's name, which tells an archive.
    name: String,
    limits: archive::Limits,
    /// The staging directory, and the executable's name in it.
    dest: PathBuf,
    bin_name: String,
    /// The staged artifact, open, and its path.
    file: std::fs::File,
    path: PathBuf,
    /// Removed when dropped, unless moved into place.
    staged: tempfile::TempPath,
    sha256: [u8; 32],
}

impl Placing {
    /// The executable's sha256.
    fn run(self) -> Result<[u8; 32], Error> {
        let Placing {
            keys,
            signature,
            name,
            limits,
            dest,
            bin_name,
            mut file,
            path,
            staged,
            sha256,
        } = self;
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io(IoError { what, path, source })
        };
        verify::signature(&keys, signature.as_deref(), &path)?;
        let kind = archive::kind(&name, &mut file).map_err(io("read", &path))?;
        let binary = dest.join(&bin_name);
        if kind != archive::Kind::Plain {
            archive::unpack(file, kind, &bin_name, &dest, limits)?;
            return Ok(crate::fsutil::hash_file(&binary)?.0);
        }
        drop(file);
        staged.persist(&binary).map_err(|e| {
            Error::Io(IoError {
                what: "move",
                path: binary.clone(),
                source: e.error,
            })
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &binary))?;
        Ok(sha256)
    }
}

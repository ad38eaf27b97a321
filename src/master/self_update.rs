//! `[self]`: baton upgrades itself from its own signed channel, with an
//! A/B fallback.
//!
//! - **The loop** polls `[self]`'s source like the update loop polls
//!   `[fetch]`'s, through the same pipeline into baton's own store
//!   (`<releases dir>/.baton/`): digest, signature by `self.minisign_key`,
//!   a version above the running one, `--version` naming it. A build that
//!   passes is then checked as `baton reexec` checks (`--version` prints
//!   `baton <version>`, `validate --config F` passes) and handed to the
//!   core, which re-executes into it once nothing is half-done.
//! - **The record.** Before the `execve` the old master writes
//!   `.baton/self-trial.json`: the new build, the executable the
//!   supervisor starts (`home`, left as it was) and the version it ran.
//!   The new master runs from the new build's directory.
//! - **Kept or failed.** The new master that stays up for `self.settle`
//!   replaces `home` atomically with its build (the previous one stays in
//!   the store) and removes the record. A master that starts and finds the
//!   record while it is *not* the new build is the previous baton, started
//!   again by systemd or supervisord after the new one died: it records
//!   the version as failed (never taken again) and serves on. A new build
//!   started a second time with the record still there (it died and was
//!   started again from its own path) hands over to `home` at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::child_env::ChildEnv;
use crate::config::SelfChannel;
use crate::release::{Meta, Outcome, Pipeline, Store};

/// The record of a self-upgrade under way, in baton's store.
const TRIAL_FILE: &str = "self-trial.json";
/// Self-upgrades that failed, for `status`.
const FAILED_FILE: &str = "self-failed.json";
/// How many failed self-upgrades `status` remembers.
const FAILED_KEPT: usize = 16;

/// baton's own store: `<releases dir>/.baton`.
pub(super) fn store_dir(releases: &Path) -> PathBuf {
    releases.join(".baton")
}

/// A self-upgrade under way: written before the `execve` into a new build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SelfTrial {
    /// The new build's version.
    pub version: String,
    /// Its release id in baton's store.
    pub id: String,
    /// Its sha256.
    pub sha256: String,
    /// Its executable, which the new master runs from.
    pub binary: PathBuf,
    /// The executable the supervisor starts; replaced once the new build
    /// is kept.
    pub home: PathBuf,
    /// The version before.
    pub from: String,
    /// How long the new build must stay up, in ms.
    pub settle_ms: u64,
    /// Starts of the new build so far.
    pub starts: u32,
    /// The new build reached its serving loop.
    #[serde(default)]
    pub serving: bool,
    /// When it was written, seconds since the epoch.
    pub at: u64,
}

/// A failed self-upgrade, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failed {
    version: String,
    why: String,
    at: u64,
}

/// What a master's start found of a self-upgrade.
#[derive(Debug)]
pub(super) enum Start {
    /// None under way.
    None,
    /// This master is the new build: kept once it stays up for settle.
    OnTrial(SelfTrial),
}

/// Reads the self-upgrade record at a master's start (see the module
/// docs); the previous baton records a failed one here. Never fails the
/// start: what cannot be read or written is logged.
/// `reexeced`: this master was started by a re-exec, so a record for
/// another build is a re-exec asked for during the trial (`baton reexec`
/// runs home), which abandons the trial without failing the build.
pub(super) fn start(dir: &Path, exe: &Path, reexeced: bool) -> Start {
    let path = dir.join(TRIAL_FILE);
    let record: SelfTrial = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    "cannot read the self-upgrade record {}: {e}; removing it",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                return Start::None;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Start::None,
        Err(e) => {
            tracing::error!(
                "cannot read the self-upgrade record {}: {e}",
                path.display()
            );
            return Start::None;
        }
    };
    if !same_path(exe, &record.binary) {
        let kept = crate::fsutil::hash_file(exe)
            .is_ok_and(|(sha256, _)| hex::encode(sha256) == record.sha256);
        if kept || reexeced {
            tracing::warn!(
                "{} the self-upgrade to baton {}: its record goes",
                if kept {
                    "home already runs"
                } else {
                    "a re-exec during its trial abandons"
                },
                record.version
            );
            remove_record(dir);
            return Start::None;
        }
        fail(
            dir,
            &record,
            "the new baton did not stay up for self.settle after its exec (it died, or the \
             master was started again); the previous baton runs again",
        );
        return Start::None;
    }
    if record.starts >= 1 {
        fail(
            dir,
            &record,
            "the new baton was started again before it was kept; handing over to the previous \
             baton",
        );
        exec_home(&record.home);
        return Start::None;
    }
    let record = SelfTrial {
        starts: record.starts + 1,
        ..record
    };
    if let Err(e) = write(dir, &record) {
        tracing::error!("cannot update the self-upgrade record: {e}");
    }
    Start::OnTrial(record)
}

/// Records `record`'s build as failed (its digest in the store's failed
/// list: never installed again) and removes the record.
fn fail(dir: &Path, record: &SelfTrial, why: &str) {
    tracing::error!(
        event = "self_upgrade_failed",
        version = %record.version,
        "self-upgrade from baton {} to {} failed: {why}; {} is never taken again",
        record.from,
        record.version,
        record.version
    );
    match Store::for_self(dir, &record.home) {
        Ok(store) => record_failed(&store, &record.version, Some(&record.sha256), why),
        Err(e) => tracing::error!(
            "cannot record the failed self-upgrade: {}",
            crate::errors::display_chain(&e)
        ),
    }
    remove_record(dir);
}

/// Records a build of baton as failed: its digest in the store's failed
/// list (never installed again), and the version with why for `status`.
fn record_failed(store: &Store, version: &str, sha256: Option<&str>, why: &str) {
    if let Some(Err(e)) = sha256.map(|sha256| store.mark_failed(sha256)) {
        tracing::error!(
            "cannot record the failed build's digest: {}",
            crate::errors::display_chain(&e)
        );
    }
    let dir = store.dir();
    let mut failed = read_failed(dir);
    failed.push(Failed {
        version: version.to_owned(),
        why: why.to_owned(),
        at: crate::time::unix_now(),
    });
    let skip = failed.len().saturating_sub(FAILED_KEPT);
    let failed: Vec<Failed> = failed.into_iter().skip(skip).collect();
    let text = serde_json::to_vec_pretty(&failed).expect("plain data serializes");
    if let Err(e) =
        crate::fsutil::write_atomic(&dir.join(FAILED_FILE), &text, ".self-failed-", None)
    {
        tracing::error!("cannot record the failed self-upgrade: {e}");
    }
}

fn remove_record(dir: &Path) {
    if let Err(e) = std::fs::remove_file(dir.join(TRIAL_FILE)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!("cannot remove the self-upgrade record: {e}");
        }
    }
}

fn read_failed(dir: &Path) -> Vec<Failed> {
    std::fs::read(dir.join(FAILED_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces this process with `home`, same arguments; returns only when
/// that failed (logged: this build then serves on).
fn exec_home(home: &Path) {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(home)
        .args(std::env::args_os().skip(1))
        .env_remove(super::reexec::STATE_ENV)
        .exec();
    tracing::error!(
        "cannot execute the previous baton {}: {err}",
        home.display()
    );
}

fn write(dir: &Path, record: &SelfTrial) -> Result<(), crate::fsutil::IoError> {
    let text = serde_json::to_vec_pretty(record).expect("plain data serializes");
    crate::fsutil::write_atomic(&dir.join(TRIAL_FILE), &text, ".self-trial-", None)
}

/// Writes the record before the `execve` into `binary`.
pub(super) fn begin(
    dir: &Path,
    upgrade: &Ready,
    home: &Path,
    settle: Duration,
) -> Result<(), crate::fsutil::IoError> {
    write(
        dir,
        &SelfTrial {
            version: upgrade.version.clone(),
            id: upgrade.release.id.clone(),
            sha256: upgrade.release.sha256.clone(),
            binary: upgrade.binary.clone(),
            home: home.to_owned(),
            from: crate::version::own().to_owned(),
            settle_ms: settle.as_millis() as u64,
            starts: 0,
            serving: false,
            at: crate::time::unix_now(),
        },
    )
}

/// Starts the watchdog of a self-upgrade (`home self-watchdog`, a child
/// that outlives the `execve`): a new build that has not reached its
/// serving loop within `within` is killed, so that the supervisor starts
/// the previous baton, which records it failed.
pub(super) fn start_watchdog(home: &Path, dir: &Path, within: Duration) {
    use std::os::unix::process::CommandExt;
    let spawned = std::process::Command::new(home)
        .arg("self-watchdog")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg("--record")
        .arg(dir.join(TRIAL_FILE))
        .arg("--within-ms")
        .arg(within.as_millis().to_string())
        .stdin(std::process::Stdio::null())
        // A group of its own: the master's reaper takes it once it ends.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot start the self-upgrade watchdog {}: {e}; a new baton that hangs before it \
             serves is not stopped",
            home.display()
        );
    }
}

/// The watchdog itself (`baton self-watchdog`): waits up to `within` for
/// the record at `record` to say its build serves, or to go; kills `pid`
/// with SIGKILL when neither happened.
pub fn watchdog(pid: u32, record: &Path, within: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let read = std::fs::read(record)
            .ok()
            .and_then(|b| serde_json::from_slice::<SelfTrial>(&b).ok());
        match read {
            None => return Ok(()),
            Some(r) if r.serving => return Ok(()),
            Some(_) if nix::unistd::getppid().as_raw() as u32 != pid => {
                // The master is gone (this watchdog was handed to another
                // parent): the supervisor restarts the previous baton.
                return Ok(());
            }
            Some(r) if std::time::Instant::now() >= deadline => {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
                    .map_err(|e| format!("cannot kill the master {pid}: {e}"))?;
                return Err(format!(
                    "baton {} did not reach its serving loop within {}: killed the master \
                     (pid {pid}) so that its supervisor starts the previous baton",
                    r.version,
                    humantime::format_duration(within)
                ));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The `execve` into a new build failed: it is failed, and the record goes.
pub(super) fn exec_failed(dir: &Path, upgrade: &Ready, why: &str) {
    let record = SelfTrial {
        version: upgrade.version.clone(),
        id: upgrade.release.id.clone(),
        sha256: upgrade.release.sha256.clone(),
        binary: upgrade.binary.clone(),
        home: PathBuf::new(),
        from: crate::version::own().to_owned(),
        settle_ms: 0,
        starts: 0,
        serving: false,
        at: crate::time::unix_now(),
    };
    fail(dir, &record, &format!("its exec failed: {why}"));
}

/// Keeps the new build once it has stayed up for its settle: `home` is
/// replaced by it (atomically), `current` in baton's store names it, and
/// the record goes.
pub(super) async fn keep(store: Store, record: SelfTrial) -> Result<(), String> {
    let dir = store.dir().to_owned();
    let id = record.id.clone();
    tokio::task::spawn_blocking(move || {
        store
            .promote(&id)
            .map_err(|e| crate::errors::display_chain(&e))?;
        std::fs::remove_file(dir.join(TRIAL_FILE))
            .map_err(|e| format!("cannot remove the self-upgrade record: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What `status` shows of baton itself.
pub(super) fn status(own: Option<&Own>) -> crate::control::reply::Baton {
    let mut baton = crate::control::reply::Baton {
        version: crate::version::own().to_owned(),
        channel: own.and_then(|o| o.described.clone()),
        last_check: own.and_then(|o| {
            o.last_check
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }),
        ..Default::default()
    };
    if let Some(dir) = own.map(|o| o.store.dir()) {
        baton.on_trial = std::fs::read(dir.join(TRIAL_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<SelfTrial>(&b).ok())
            .map(|r| {
                format!(
                    "{} (from {}, kept after {} ms up)",
                    r.version, r.from, r.settle_ms
                )
            });
        baton.failed = read_failed(dir)
            .into_iter()
            .map(|f| format!("{}: {}", f.version, f.why))
            .collect();
    }
    baton
}

fn describe(fetch: &crate::config::Fetch) -> String {
    match crate::fetchers::from_config(fetch, &crate::config::Verify::default()) {
        Ok(f) => f.describe(),
        Err(_) => fetch.source.kind().to_owned(),
    }
}

/// Whether two paths name the same place (not the same bytes: home is a
/// hard link of the build it keeps, and must not count as it).
fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// baton's own store and loop, held by the driver.
pub(super) struct Own {
    /// baton's own store.
    pub store: Store,
    /// How long a new build must stay up.
    pub settle: Duration,
    /// How the last check ended, for `status`.
    pub last_check: Arc<Mutex<Option<String>>>,
    /// The channel, described (for `status`).
    pub described: Option<String>,
    /// The loop (after keeping a new build on trial).
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Own {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens baton's own store and starts its loop (with `[self]`); a new
/// build on trial (`start`) is marked serving (the old master's watchdog
/// stands down) and kept once it has stayed up for its settle, with or
/// without `[self]` in the config now. `None` (logged) without `[self]`,
/// or when the store cannot be opened: the service is not touched.
pub(super) fn launch(
    channel: Option<&SelfChannel>,
    dir: &Path,
    start: Start,
    home: &Path,
    config: Option<&Path>,
    child_env: ChildEnv,
    ready: mpsc::UnboundedSender<Ready>,
) -> Option<Own> {
    let opened = Store::for_self(dir, home).and_then(|store| {
        if matches!(start, Start::None) && channel.is_some() {
            store.adopt_home(crate::version::own())?;
        }
        Ok(store)
    });
    let store = match opened {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(
                "[self]: cannot open baton's own store {}: {}; no self-upgrades",
                dir.display(),
                crate::errors::display_chain(&e)
            );
            return None;
        }
    };
    let trial = match start {
        Start::OnTrial(record) => Some(serving(store.dir(), record)),
        Start::None => None,
    };
    let with = match (channel, config) {
        (Some(channel), Some(config)) => Some(Loop {
            channel: channel.clone(),
            store: store.clone(),
            config: config.to_owned(),
            child_env,
            ready,
            last_check: Arc::new(Mutex::new(None)),
        }),
        (Some(_), None) => {
            tracing::error!(
                "[self] needs a master started by `baton run --config F` (a new baton is \
                 checked with `validate --config F`); no self-upgrades"
            );
            None
        }
        (None, _) => None,
    };
    if trial.is_none() && with.is_none() {
        return None;
    }
    let last_check = with
        .as_ref()
        .map_or_else(Default::default, |w| w.last_check.clone());
    let described = channel.map(|c| describe(&c.fetch));
    let settle = channel.map_or(Duration::ZERO, |c| c.settle);
    let kept_in = store.clone();
    let task = tokio::spawn(async move {
        if let Some(record) = trial {
            keep_after_settle(kept_in, record).await;
        }
        if let Some(with) = with {
            run(with).await
        }
    });
    Some(Own {
        store,
        settle,
        last_check,
        described,
        task,
    })
}

/// Marks the record: the new build reached its serving loop.
fn serving(dir: &Path, record: SelfTrial) -> SelfTrial {
    let record = SelfTrial {
        serving: true,
        ..record
    };
    if let Err(e) = write(dir, &record) {
        tracing::error!(
            "cannot mark the self-upgrade record serving: {e}; the watchdog stops this \
             master after self.settle"
        );
    }
    record
}

/// Waits out the new build's settle, then keeps it; a build that cannot
/// replace home is failed (with why), so that no later start takes it
/// for one that died.
async fn keep_after_settle(store: Store, record: SelfTrial) {
    let settle = Duration::from_millis(record.settle_ms);
    tracing::info!(
        event = "self_trial",
        version = %record.version,
        "baton {} runs on trial: it replaces {} once it has been up for {}",
        record.version,
        record.home.display(),
        humantime::format_duration(settle)
    );
    tokio::time::sleep(settle).await;
    let dir = store.dir().to_owned();
    match keep(store, record.clone()).await {
        Ok(()) => tracing::info!(
            event = "self_upgraded",
            version = %record.version,
            "baton {} kept: {} now runs it (baton {} stays in {})",
            record.version,
            record.home.display(),
            record.from,
            dir.display()
        ),
        Err(e) => fail(
            &dir,
            &record,
            &format!(
                "it stayed up, but cannot replace {}: {e}; it runs until the master is \
                 started again, which runs the previous baton",
                record.home.display()
            ),
        ),
    }
}

/// A new build of baton that passed every check: the core re-executes
/// into it.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    /// Its version.
    pub version: String,
    /// Its executable.
    pub binary: PathBuf,
    /// Its release in baton's store.
    pub release: Meta,
}

/// What the loop works with.
pub(super) struct Loop {
    pub channel: SelfChannel,
    pub store: Store,
    /// The config file, for the new build's `validate`.
    pub config: PathBuf,
    pub child_env: ChildEnv,
    /// Where a build ready to run goes.
    pub ready: mpsc::UnboundedSender<Ready>,
    /// How the last check ended, for `status`.
    pub last_check: Arc<Mutex<Option<String>>>,
}

/// Polls baton's own channel until the master goes.
pub(super) async fn run(with: Loop) {
    let Loop {
        channel,
        store,
        config,
        child_env,
        ready,
        last_check,
    } = with;
    let mut checks = 0u64;
    let mut note = |text: String| {
        checks += 1;
        *last_check.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("#{checks} at {}: {text}", crate::time::unix_now()));
    };
    let mut fetcher = match crate::fetchers::from_config(&channel.fetch, &channel.verify) {
        Ok(f) => f,
        Err(e) => {
            let e = crate::errors::display_chain(&e);
            tracing::error!("[self]: cannot set up baton's own source: {e}; no self-upgrades");
            note(format!("error: {e}"));
            return;
        }
    };
    let source = fetcher.describe();
    let pipeline = Pipeline::new(store.clone(), channel.verify.clone(), child_env);
    tracing::info!(
        "baton {} checks {source} for its own builds",
        crate::version::own()
    );
    loop {
        if ready.is_closed() {
            return;
        }
        match check(&mut *fetcher, &pipeline, &config).await {
            Ok(Checked::Ready(up)) => {
                note(format!("ready: baton {} ({})", up.version, up.release.id));
                tracing::info!(
                    event = "self_upgrade_ready",
                    version = %up.version,
                    "baton {} from {source} passed its checks; the master re-executes into it",
                    up.version
                );
                let _ = ready.send(*up);
                // Offered again at the next check, should the master not
                // take it now (busy past its wait, or stopping).
                fetcher.retry();
            }
            Ok(Checked::Nothing) => note("nothing new".to_owned()),
            Ok(Checked::Skipped(why)) => note(why),
            Err(Refusal { why, again }) => {
                tracing::error!(
                    event = "self_check_failed",
                    error = %why,
                    "[self] {source}: {why}; baton runs on as it is"
                );
                note(format!("refused: {why}"));
                if again {
                    fetcher.retry();
                }
            }
        }
        let wait = channel.fetch.interval;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = fetcher.changed() => {}
        }
    }
}

/// What one check of baton's own channel came to, unless a build was
/// refused.
enum Checked {
    /// A build ready to run.
    Ready(Box<Ready>),
    /// Nothing new.
    Nothing,
    /// A build that failed before, skipped.
    Skipped(String),
}

/// Why a check refused a build, and whether to offer it again at the next
/// check (a passing cause: a download, a config mid-edit).
struct Refusal {
    why: String,
    again: bool,
}

/// One check of baton's own channel: a build ready to run, nothing new, or
/// why a build was refused.
async fn check(
    fetcher: &mut dyn crate::fetchers::Fetcher,
    pipeline: &Pipeline,
    config: &Path,
) -> Result<Checked, Refusal> {
    let candidate = match fetcher.check().await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(Checked::Nothing),
        Err(e) => {
            return Err(Refusal {
                why: crate::errors::display_chain(&e),
                again: e.is_transient(),
            })
        }
    };
    let stated = candidate.info.version.clone();
    let release = match pipeline.run(candidate, true, &|_| {}).await {
        Ok(Outcome::Installed(meta)) => meta,
        Ok(Outcome::Leaves { release, .. }) => release,
        Ok(Outcome::KnownBad { sha256 }) => {
            return Ok(Checked::Skipped(format!(
                "skipped: sha256 {sha256} failed before"
            )))
        }
        Ok(Outcome::NotInRollout(decision)) => {
            return Ok(Checked::Skipped(format!("not in the rollout: {decision}")))
        }
        Ok(Outcome::HeldByGate { why, .. }) => {
            return Ok(Checked::Skipped(format!("held by its gate: {why}")))
        }
        Ok(Outcome::Yanked { version }) => {
            return Ok(Checked::Skipped(format!("skipped: {version} is yanked")))
        }
        Ok(Outcome::Unchanged(_) | Outcome::Verified(_)) => return Ok(Checked::Nothing),
        Err(e) => {
            let why = crate::errors::display_chain(&e);
            if let Some(version) = stated.as_deref().filter(|_| e.is_probe()) {
                // Its `--version` run failed or named another version: the
                // build's fault (shown by `status`; its bytes are not
                // offered again while the source is unchanged).
                record_failed(pipeline.store(), version, None, &why);
            }
            return Err(Refusal {
                why,
                again: e.is_transient(),
            });
        }
    };
    let store = pipeline.store();
    let binary = store.binary_in(&store.dir().join(&release.id));
    let Some(version) = release.version.clone() else {
        return Err(Refusal {
            why: format!(
                "the build {} names no version; baton takes only versioned builds of itself",
                release.id
            ),
            again: false,
        });
    };
    let refuse = |why: String| {
        record_failed(store, &version, Some(&release.sha256), &why);
        Err(Refusal {
            why: format!("baton {version} refused: {why}; it is not taken again"),
            again: false,
        })
    };
    match super::reexec::check(&binary, config).await {
        Ok(line) if line == format!("baton {version}") => Ok(Checked::Ready(Box::new(Ready {
            version: version.clone(),
            binary,
            release,
        }))),
        Ok(line) => refuse(format!(
            "`--version` printed {line:?}, but its manifest names version {version}"
        )),
        // The config may be mid-edit: not the build's fault for certain.
        Err(why) if why.contains(" validate --config ") => Err(Refusal {
            why: format!("baton {version} waits: {why}; it is checked again at the next check"),
            again: true,
        }),
        Err(why) => refuse(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(binary: &Path, home: &Path, starts: u32) -> SelfTrial {
        SelfTrial {
            version: "9.9.9".into(),
            id: "9.9.9-abcdef12".into(),
            sha256: "ab".repeat(32),
            binary: binary.to_owned(),
            home: home.to_owned(),
            from: "0.1.0".into(),
            settle_ms: 1000,
            starts,
            serving: false,
            at: 0,
        }
    }

    #[test]
    fn the_new_build_is_on_trial_at_its_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        std::fs::write(&new, b"x").unwrap();
        write(dir.path(), &record(&new, Path::new("/usr/bin/baton"), 0)).unwrap();
        let Start::OnTrial(r) = start(dir.path(), &new, false) else {
            panic!("not on trial")
        };
        assert_eq!(r.starts, 1);
        assert!(dir.path().join(TRIAL_FILE).exists(), "the record stays");
    }

    #[tokio::test]
    async fn the_previous_baton_started_again_records_the_new_one_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = (dir.path().join("new"), dir.path().join("old"));
        std::fs::write(&new, b"x").unwrap();
        std::fs::write(&old, b"y").unwrap();
        write(dir.path(), &record(&new, &old, 1)).unwrap();
        assert!(matches!(start(dir.path(), &old, false), Start::None));
        assert!(!dir.path().join(TRIAL_FILE).exists(), "the record goes");
        let store = Store::for_self(dir.path(), &old).unwrap();
        assert!(store.failed().contains(&"ab".repeat(32)));
        let own = Own {
            store: Store::for_self(dir.path(), &old).unwrap(),
            settle: Duration::ZERO,
            last_check: Default::default(),
            described: None,
            task: tokio::spawn(async {}),
        };
        let shown = status(Some(&own));
        assert_eq!(shown.failed.len(), 1);
        assert!(shown.failed[0].starts_with("9.9.9: "), "{:?}", shown.failed);
        assert!(shown.on_trial.is_none());
    }

    #[test]
    fn a_record_that_cannot_be_read_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRIAL_FILE), b"{not json").unwrap();
        assert!(matches!(
            start(dir.path(), Path::new("/x"), false),
            Start::None
        ));
        assert!(!dir.path().join(TRIAL_FILE).exists());
    }
}

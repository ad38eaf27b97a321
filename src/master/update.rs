//! The update loop: polls the fetcher every `interval` plus jitter (or at
//! once on SIGUSR1 or a file event), runs candidates through the release
//! pipeline, runs the `pre_install` hook on each installed release (a
//! refusal records its digest as failed) and tells the master about the
//! releases it let through. Errors are logged with their cause and retried
//! with capped backoff; they never stop the service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{Fetch, Verify};
use crate::fetchers::Fetcher;
use crate::hooks::{Hooks, Which};
use crate::release::{Meta, Outcome, Pipeline};

/// The longest wait between checks after repeated errors.
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// The first wait before restarting an update task that died.
const RESTART_MIN: Duration = Duration::from_secs(1);
/// The longest wait before restarting an update task that died.
const RESTART_MAX: Duration = Duration::from_secs(60);

/// What one check of the source came to, for `baton status` and
/// `baton upgrade`.
#[derive(Debug, Clone)]
pub(crate) struct CheckReport {
    /// When it ended, seconds since the epoch.
    pub at: u64,
    /// `installed`, `unchanged`, `nothing_new`, `skipped`, `not_in_rollout`,
    /// `waiting` (for a trial) or `error`.
    pub outcome: &'static str,
    /// The release, digest or error, described.
    pub detail: String,
    /// A candidate that failed before its trial (its probe, the
    /// `pre_install` hook): a failed trial for reports and metrics.
    pub failed: Option<Rejected>,
    /// The versions a signed manifest seen during a trial yanks: a trial
    /// of one of them ends.
    pub yanked: Vec<String>,
}

/// A candidate refused before its trial.
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    /// Its version.
    pub version: String,
    /// Where it failed.
    pub stage: crate::fleet::Stage,
    /// Why.
    pub detail: String,
}

fn report(reports: &mpsc::UnboundedSender<CheckReport>, outcome: &'static str, detail: String) {
    let _ = reports.send(CheckReport {
        at: crate::time::unix_now(),
        outcome,
        detail,
        failed: None,
        yanked: Vec::new(),
    });
}

/// Reports a candidate refused before its trial.
fn rejected(
    reports: &mpsc::UnboundedSender<CheckReport>,
    outcome: &'static str,
    detail: String,
    failed: Rejected,
) {
    let _ = reports.send(CheckReport {
        at: crate::time::unix_now(),
        outcome,
        detail,
        failed: Some(failed),
        yanked: Vec::new(),
    });
}

/// A release the loop installed; the master puts it on trial.
#[derive(Debug)]
pub(crate) struct Installed {
    /// The new release.
    pub release: Meta,
    /// The yanked version this release takes the host away from: reported
    /// as `yanked` once it is promoted.
    pub leaves: Option<String>,
    /// Dropped by the master once the trial ended (promoted or failed);
    /// the loop installs nothing else meanwhile.
    pub done: oneshot::Sender<()>,
}

/// Aborts a task when dropped, so that aborting the supervisor also stops
/// the loop it runs.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the update loop and restarts it, with backoff, when it panics: an
/// update task that died silently would leave SIGUSR1 reaching nobody.
/// With `gate`, the first check waits until it resolves (a trial that was
/// running when the loop was rebuilt by a reload). Returns when the master
/// drops the receiving end of `installed`; aborting it stops the loop.
pub(crate) async fn supervise(
    with: Loop,
    first: Box<dyn Fetcher>,
    mut gate: Option<oneshot::Receiver<()>>,
) {
    let (fetch, verify, installed, reports) =
        (&with.fetch, &with.verify, &with.installed, &with.reports);
    let mut fetcher = Some(first);
    // Deaths (and failed set-ups) in a row, for the back-off.
    let mut deaths = 0u32;
    loop {
        let backoff = crate::time::backoff(RESTART_MIN, deaths, RESTART_MAX);
        let f = match fetcher.take() {
            Some(f) => f,
            None => match crate::fetchers::from_config(fetch, verify) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(
                        event = "fetcher_failed",
                        error = %crate::errors::display_chain(&e),
                        "cannot set up the fetcher again: {}; retrying in {}",
                        crate::errors::display_chain(&e),
                        humantime::format_duration(backoff)
                    );
                    tokio::time::sleep(backoff).await;
                    deaths = deaths.saturating_add(1);
                    continue;
                }
            },
        };
        let started = Instant::now();
        let mut task = tokio::spawn(run(with.clone(), f, gate.take()));
        let _guard = AbortOnDrop(task.abort_handle());
        let cause = match (&mut task).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => panic_message(e.into_panic()),
            Err(e) => e.to_string(),
        };
        if installed.is_closed() {
            return;
        }
        if started.elapsed() > RESTART_MAX {
            deaths = 0;
        }
        let backoff = crate::time::backoff(RESTART_MIN, deaths, RESTART_MAX);
        tracing::error!(
            event = "update_task_died",
            error = %cause,
            "the update task died: {cause}; restarting it in {}",
            humantime::format_duration(backoff)
        );
        // Whoever waits on a check (`baton upgrade`) hears of it now.
        report(
            reports,
            "error",
            format!(
                "the update task died: {cause}; it restarts in {}",
                humantime::format_duration(backoff)
            ),
        );
        tokio::time::sleep(backoff).await;
        deaths = deaths.saturating_add(1);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => format!("panicked: {s}"),
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => format!("panicked: {s}"),
            Err(_) => "panicked".to_owned(),
        },
    }
}

/// What the update loop works with.
#[derive(Clone)]
pub(crate) struct Loop {
    /// `[fetch]` as running.
    pub fetch: Fetch,
    /// `[verify]` as running.
    pub verify: Verify,
    /// The release pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Where installed releases go.
    pub installed: mpsc::UnboundedSender<Installed>,
    /// Wakes the loop for a check now.
    pub check_now: Arc<Notify>,
    /// Where each check's outcome goes.
    pub reports: mpsc::UnboundedSender<CheckReport>,
    /// The hooks (`pre_install`).
    pub hooks: Arc<Hooks>,
}

/// Runs until the master drops the receiving end.
pub(crate) async fn run(
    with: Loop,
    mut fetcher: Box<dyn Fetcher>,
    gate: Option<oneshot::Receiver<()>>,
) {
    let Loop {
        fetch,
        pipeline,
        check_now,
        reports,
        ..
    } = with.clone();
    let source = fetcher.describe();
    if let Some(gate) = gate {
        tracing::info!("{source}: new releases wait until the running trial ends");
        // Still polled for a signed yank of the release on trial.
        wait_for_trial(
            &fetch,
            &mut *fetcher,
            &source,
            "the running trial",
            gate,
            &check_now,
            &reports,
        )
        .await;
    }
    let mut failures: u32 = 0;
    // Why the gate held at the last check: said again only when it changes.
    let mut held: Option<String> = None;
    loop {
        let mut stated = None;
        match check(&mut *fetcher, &pipeline, &source, &mut stated).await {
            Ok(Some(Outcome::Installed(release))) => {
                failures = 0;
                held = None;
                tracing::info!(
                    event = "release_installed",
                    release = %release.id,
                    version = release.version.as_deref().unwrap_or_default(),
                    "installed release {} from {}",
                    release.id,
                    release.source
                );
                match try_release(&with, &mut *fetcher, &source, release, None).await {
                    Tried::Gone => return,
                    Tried::Waited => continue,
                    Tried::Ended => {}
                }
            }
            Ok(Some(Outcome::Leaves {
                release,
                yanked,
                reused,
            })) => {
                failures = 0;
                held = None;
                tracing::info!(
                    event = "release_installed",
                    release = %release.id,
                    "{} release {} to leave the yanked release {}",
                    if reused { "reusing the installed" } else { "installed" },
                    release.id,
                    yanked.id
                );
                let leaves = yanked.version.clone().unwrap_or(yanked.id);
                match try_release(&with, &mut *fetcher, &source, release, Some(leaves)).await {
                    Tried::Gone => return,
                    Tried::Waited => continue,
                    Tried::Ended => {}
                }
            }
            Ok(Some(Outcome::Yanked { version })) => {
                failures = 0;
                let why = format!(
                    "version {version} was yanked by a signed manifest; it is not installed again \
                     (`baton upgrade --force` takes it again)"
                );
                tracing::info!(
                    event = "check",
                    outcome = "skipped",
                    "{source} offers {why}"
                );
                report(&reports, "skipped", why);
            }
            Ok(Some(Outcome::Unchanged(current))) => {
                failures = 0;
                tracing::debug!("{source} offers the running release {}", current.id);
                report(&reports, "unchanged", format!("release {}", current.id));
            }
            Ok(Some(Outcome::KnownBad { sha256 })) => {
                failures = 0;
                let store = pipeline.store();
                let why = if store.held().contains(&sha256) {
                    "which a rollback holds (`baton upgrade --force` takes it again)"
                } else if store.quarantined().contains(&sha256) {
                    "which is quarantined after interrupted trials (`baton upgrade --force` \
                     takes it again)"
                } else {
                    "which failed before"
                };
                tracing::info!(
                    event = "check",
                    outcome = "skipped",
                    "{source} offers sha256 {sha256}, {why}; skipped"
                );
                report(&reports, "skipped", format!("sha256 {sha256}, {why}"));
            }
            Ok(Some(Outcome::HeldByGate { decision, why, .. })) => {
                failures = 0;
                let version = decision.version.as_deref().unwrap_or("unknown");
                let said = format!("rollout of {version} held by its gate: {why}");
                if held.as_deref() != Some(said.as_str()) {
                    tracing::warn!(event = "held_by_gate", version, "{said}");
                    held = Some(said.clone());
                }
                report(&reports, "held_by_gate", said);
                // The manifest is unchanged, the reports are not: read both
                // again at the next poll.
                fetcher.retry();
            }
            Ok(Some(Outcome::NotInRollout(decision))) => {
                // Logged by the pipeline. A schedule moves on by itself:
                // read the unchanged manifest again at the next poll.
                failures = 0;
                report(&reports, "not_in_rollout", decision.to_string());
                if decision.next_change.is_some() {
                    fetcher.retry();
                }
            }
            Ok(Some(Outcome::Verified(_))) | Ok(None) => {
                failures = 0;
                report(&reports, "nothing_new", source.clone());
            }
            Err(e) => {
                let error = crate::errors::display_chain(&e);
                tracing::error!(event = "check_failed", error = %error, "update from {source} failed: {error}");
                let detail = crate::errors::display_chain(&e);
                match stated.filter(|_| e.is_probe()) {
                    Some(version) => {
                        let failed = Rejected {
                            version,
                            stage: crate::fleet::Stage::Probe,
                            detail: detail.clone(),
                        };
                        rejected(&reports, "error", detail, failed);
                    }
                    None => report(&reports, "error", detail),
                }
                if e.is_transient() {
                    fetcher.retry();
                    failures += 1;
                }
            }
        }
        let base = if failures == 0 {
            fetch.interval
        } else {
            crate::time::backoff(fetch.interval, failures, BACKOFF_MAX.max(fetch.interval))
        };
        tokio::select! {
            _ = tokio::time::sleep(base + jitter(&fetch)) => {}
            _ = check_now.notified() => {
                // Asked for by an operator: read the source in full, not
                // only what changed since the last look.
                tracing::info!(event = "check", "checking {source} now");
                fetcher.retry();
            }
            _ = fetcher.changed(), if failures == 0 => tracing::debug!("{source} changed"),
        }
    }
}

/// How handing a release to the master ended.
enum Tried {
    /// The master is gone: the loop ends.
    Gone,
    /// A newer candidate waited for the trial: check again at once.
    Waited,
    /// Refused by `pre_install`, or the trial ended with nothing waiting.
    Ended,
}

/// Runs `pre_install` on an installed release and, when it passes, hands
/// it to the master for its trial and waits for the trial to end.
/// `leaves` names the yanked version the trial takes the host away from.
async fn try_release(
    with: &Loop,
    fetcher: &mut dyn Fetcher,
    source: &str,
    release: Meta,
    leaves: Option<String>,
) -> Tried {
    let reports = &with.reports;
    if let Err(why) = pre_install(&with.hooks, &with.pipeline, &release).await {
        let failed = Rejected {
            version: release
                .version
                .clone()
                .unwrap_or_else(|| release.id.clone()),
            stage: crate::fleet::Stage::PreInstall,
            detail: why.clone(),
        };
        rejected(reports, "refused", why, failed);
        return Tried::Ended;
    }
    report(reports, "installed", format!("release {}", release.id));
    let id = release.id.clone();
    let (done, trial) = oneshot::channel();
    let new = Installed {
        release,
        leaves,
        done,
    };
    if with.installed.send(new).is_err() {
        return Tried::Gone;
    }
    // One release on trial at a time: wait for this one to end, telling of
    // newer candidates (and yanks) meanwhile.
    let waited = wait_for_trial(
        &with.fetch,
        fetcher,
        source,
        &format!("the trial of release {id}"),
        trial,
        &with.check_now,
        reports,
    )
    .await;
    if waited {
        Tried::Waited
    } else {
        Tried::Ended
    }
}

fn jitter(fetch: &Fetch) -> Duration {
    if fetch.jitter.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..=fetch.jitter)
    }
}

/// Waits until `trial` ends, still polling the source. A newer candidate
/// is not staged meanwhile (its checks must run against the release the
/// trial leaves in `current`): it is logged once, handed back to the
/// fetcher when the trial ends, and checked then. Polling goes on until
/// then, so that a signed yank published after it (or after any other
/// change) still reaches the master, which ends a trial of a yanked
/// version. Returns whether a candidate waits.
async fn wait_for_trial(
    fetch: &Fetch,
    fetcher: &mut dyn Fetcher,
    source: &str,
    trial_of: &str,
    mut trial: oneshot::Receiver<()>,
    check_now: &Notify,
    reports: &mpsc::UnboundedSender<CheckReport>,
) -> bool {
    let mut waiting = false;
    loop {
        tokio::select! {
            _ = &mut trial => {
                if waiting {
                    // The fetcher saw it: offer it again now.
                    fetcher.retry();
                }
                return waiting;
            }
            _ = tokio::time::sleep(fetch.interval + jitter(fetch)) => {}
            _ = check_now.notified() => tracing::info!(event = "check", "checking {source} now"),
            _ = fetcher.changed() => {}
        }
        match fetcher.check().await {
            Ok(Some(candidate)) => {
                let yanked = signed_yanks(&candidate);
                if !yanked.is_empty() {
                    // The master ends a trial of a yanked version.
                    let _ = reports.send(CheckReport {
                        at: crate::time::unix_now(),
                        outcome: "yanked",
                        detail: format!("a signed manifest yanks {}", yanked.join(", ")),
                        failed: None,
                        yanked,
                    });
                }
                tracing::info!(
                    "new candidate from {source}{} waits for {trial_of} to end",
                    describe_version(&candidate)
                );
                report(reports, "waiting", format!("for {trial_of} to end"));
                waiting = true;
            }
            Ok(None) if waiting => report(reports, "waiting", format!("for {trial_of} to end")),
            Ok(None) => report(reports, "nothing_new", source.to_owned()),
            Err(e) => {
                let error = crate::errors::display_chain(&e);
                tracing::error!(event = "check_failed", error = %error, "update from {source} failed: {error}");
                report(reports, "error", crate::errors::display_chain(&e));
                let e = crate::release::Error::from(e);
                if e.is_transient() {
                    fetcher.retry();
                }
            }
        }
    }
}

/// The versions the candidate's manifest yanks, when it is signed.
fn signed_yanks(candidate: &crate::fetchers::Candidate) -> Vec<String> {
    candidate
        .info
        .manifest
        .as_ref()
        .filter(|m| m.signed)
        .map(|m| m.yanked.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn describe_version(candidate: &crate::fetchers::Candidate) -> String {
    candidate
        .info
        .version
        .as_deref()
        .map(|v| format!(": version {v}"))
        .unwrap_or_default()
}

/// One check of the source; `stated` is set to the version the candidate's
/// source states, if there is a candidate.
async fn check(
    fetcher: &mut dyn Fetcher,
    pipeline: &Pipeline,
    source: &str,
    stated: &mut Option<String>,
) -> Result<Option<Outcome>, crate::release::Error> {
    let Some(candidate) = fetcher.check().await? else {
        tracing::debug!("nothing new from {source}");
        return Ok(None);
    };
    tracing::info!(
        event = "candidate_found",
        version = candidate.info.version.as_deref().unwrap_or_default(),
        "new candidate from {source}{}",
        describe_version(&candidate)
    );
    stated.clone_from(&candidate.info.version);
    pipeline.run(candidate, true, &|_| {}).await.map(Some)
}

/// Runs the `pre_install` hook on a freshly installed release, before the
/// master hears of it. A refusal records its sha256 as failed (not
/// installed again), logs why and returns it; `current` never moved and
/// the complete release directory stays for inspection until pruned.
async fn pre_install(hooks: &Hooks, pipeline: &Pipeline, release: &Meta) -> Result<(), String> {
    let store = pipeline.store();
    let Err(why) = hooks
        .run(
            Which::PreInstall,
            release,
            current_id(store).as_deref(),
            store,
        )
        .await
    else {
        return Ok(());
    };
    let recorded = {
        let (store, sha256) = (store.clone(), release.sha256.clone());
        match tokio::task::spawn_blocking(move || store.mark_failed(&sha256)).await {
            Ok(Ok(())) => format!("sha256 {} will not be installed again", release.sha256),
            Ok(Err(e)) => format!(
                "and it could not be recorded as failed: {}",
                crate::errors::display_chain(&e)
            ),
            Err(e) => format!("and it could not be recorded as failed: {e}"),
        }
    };
    let why = format!("release {} refused: {why}", release.id);
    tracing::error!(
        event = "install_refused",
        release = %release.id,
        version = release.version.as_deref().unwrap_or_default(),
        error = %why,
        "{why}; {recorded}; current is unchanged"
    );
    Err(why)
}

fn current_id(store: &crate::release::Store) -> Option<String> {
    store.current().map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetchers::{BoxFuture, Candidate, Error};

    /// A source whose check panics: a bug the loop must survive.
    struct Panics;

    impl Fetcher for Panics {
        fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
            Box::pin(async { panic!("a bug in the source") })
        }

        fn describe(&self) -> String {
            "a panicking source".into()
        }
    }

    #[tokio::test]
    async fn a_waiting_upgrade_hears_when_the_update_task_dies() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(
            "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
             [releases]\nbinary = \"hello\"\n[fetch]\nsource = \"file\"\npath = \"dist/hello\"\n",
            dir.path(),
        )
        .unwrap();
        let store = crate::release::Store::open(config.releases.as_ref().unwrap()).unwrap();
        let child_env = crate::ChildEnv::new(&config.program, None);
        let pipeline = Arc::new(Pipeline::new(store, config.verify.clone(), child_env));
        let hooks = Arc::new(Hooks {
            config: config.hooks.clone(),
            env: Vec::new(),
            workdir: dir.path().to_owned(),
        });
        let (installed, _keep) = mpsc::unbounded_channel();
        let (reports, mut heard) = mpsc::unbounded_channel();
        let _loop = AbortOnDrop(
            tokio::spawn(supervise(
                Loop {
                    fetch: config.fetch.clone().unwrap(),
                    verify: config.verify.clone(),
                    pipeline,
                    installed,
                    check_now: Arc::new(Notify::new()),
                    reports,
                    hooks,
                },
                Box::new(Panics),
                None,
            ))
            .abort_handle(),
        );
        let report = tokio::time::timeout(Duration::from_secs(30), heard.recv())
            .await
            .expect("a report within 30 s")
            .unwrap();
        assert_eq!(report.outcome, "error");
        assert!(
            report
                .detail
                .starts_with("the update task died: panicked: a bug in the source; it restarts in"),
            "{}",
            report.detail
        );
    }
}

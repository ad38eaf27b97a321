//! The update loop: polls the fetcher every `interval` plus jitter (or at
//! once on SIGUSR1 or a file event), runs candidates through the release
//! pipeline, and tells the master about each installed release. Errors are
//! logged with their cause and retried with capped backoff; they never stop
//! the service.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, Notify};

use crate::config::Fetch;
use crate::fetchers::Fetcher;
use crate::release::{Meta, Outcome, Pipeline};

/// The longest wait between checks after repeated errors.
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// A release the loop installed; the master cycles onto it.
#[derive(Debug)]
pub(crate) struct Installed {
    /// The new release.
    pub release: Meta,
    /// The release `current` pointed at before (the rollback target).
    pub previous: Option<String>,
    /// Dropped by the master once the release settled or was rolled back;
    /// the loop does not install anything else meanwhile.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// Runs until the master drops the receiving end.
pub(crate) async fn run(
    fetch: Fetch,
    mut fetcher: Box<dyn Fetcher>,
    pipeline: Arc<Pipeline>,
    installed: mpsc::UnboundedSender<Installed>,
    check_now: Arc<Notify>,
) {
    let source = fetcher.describe();
    let mut failures: u32 = 0;
    loop {
        match check(&mut *fetcher, &pipeline, &source).await {
            Ok(Some(Outcome::Installed { release, previous })) => {
                failures = 0;
                tracing::info!("installed release {} from {}", release.id, release.source);
                let (done, settled) = tokio::sync::oneshot::channel();
                if installed
                    .send(Installed {
                        release,
                        previous,
                        done,
                    })
                    .is_err()
                {
                    return;
                }
                // One writer of `current` at a time: wait for the cycle,
                // its settling, or its rollback.
                let _ = settled.await;
            }
            Ok(Some(Outcome::Unchanged(current))) => {
                failures = 0;
                tracing::debug!("{source} offers the running release {}", current.id);
            }
            Ok(Some(Outcome::KnownBad { sha256 })) => {
                failures = 0;
                tracing::info!("{source} offers sha256 {sha256}, which failed before; skipped");
            }
            Ok(Some(Outcome::Verified(_))) | Ok(None) => failures = 0,
            Err(e) => {
                tracing::error!("update from {source} failed: {}", crate::display_chain(&e));
                if e.is_transient() {
                    fetcher.retry();
                    failures += 1;
                }
            }
        }
        let base = if failures == 0 {
            fetch.interval
        } else {
            (fetch.interval * 2u32.pow(failures.min(10))).min(BACKOFF_MAX.max(fetch.interval))
        };
        let jitter = if fetch.jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=fetch.jitter)
        };
        tokio::select! {
            _ = tokio::time::sleep(base + jitter) => {}
            _ = check_now.notified() => tracing::info!("checking {source} now"),
            _ = fetcher.changed(), if failures == 0 => tracing::debug!("{source} changed"),
        }
    }
}

async fn check(
    fetcher: &mut dyn Fetcher,
    pipeline: &Pipeline,
    source: &str,
) -> Result<Option<Outcome>, crate::release::Error> {
    let Some(candidate) = fetcher.check().await? else {
        tracing::debug!("nothing new from {source}");
        return Ok(None);
    };
    tracing::info!(
        "new candidate from {source}{}",
        candidate
            .info
            .version
            .as_deref()
            .map(|v| format!(": version {v}"))
            .unwrap_or_default()
    );
    pipeline.run(candidate, true, &|_| {}).await.map(Some)
}

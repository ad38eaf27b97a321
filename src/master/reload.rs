//! Reloading the config file on SIGHUP/SIGUSR2 (`Type=notify-reload`): it
//! is read and validated completely (as `baton validate` does), new listen
//! addresses are bound, and only then is anything applied; a config that
//! fails any of that changes nothing. Then the graceful cycle starts
//! workers with the new settings.
//!
//! Applied at reload: `[program]` (for workers started from then on),
//! listen addresses (kept by name and address, new ones bound, removed ones
//! closed once the workers holding them have exited), `[fetch]` and
//! `[verify]` (the update loop is rebuilt), `[releases]` settle and health.
//! A restart is needed for `[releases]` dir, binary and keep, for adding
//! or removing `[releases]`, for adding `[fetch]` where there was no
//! releases directory, and, in in-place mode, for `program.command`. Under
//! socket activation the sockets systemd passed stay as they are.

use std::sync::Arc;

use super::{checker, update, warn_http_ready, Master};
use crate::child_env::ChildEnv;
use crate::config::Config;
use crate::fetchers::Fetcher;
use crate::release::Pipeline;

impl Master {
    /// SIGHUP/SIGUSR2: re-read the config when there is a file, apply it if
    /// it is valid, then cycle. While a worker starts, the reload waits for
    /// it and the config is read once for the cycle that follows.
    pub(super) fn reload(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::info!("{why}: ignored while stopping");
            return;
        }
        if self.config_path.is_none() {
            self.request_cycle(why);
            return;
        }
        if let Some(s) = &self.starting {
            tracing::info!(
                worker = s.id,
                "{why}: a worker is starting; the config is re-read for the cycle that follows it"
            );
            self.cycle_pending = true;
            self.reload_pending = true;
            return;
        }
        if self.reload_config(why) {
            self.request_cycle(why);
        }
        if self.starting.is_none() {
            // No cycle followed (nothing to cycle, or the reload was
            // refused): the reload ends here.
            self.supervisor.ready(&self.serving_status());
        }
    }

    /// Runs the cycle that coalesced while a worker was starting, reading
    /// the config first when a reload asked for it.
    pub(super) fn run_pending_cycle(&mut self) {
        self.cycle_pending = false;
        if std::mem::take(&mut self.reload_pending) {
            self.reload("coalesced reload");
        } else {
            self.request_cycle("coalesced request");
        }
    }

    /// A reload was pending but no cycle follows (the starting worker
    /// failed and a restart is scheduled): apply the config for it.
    pub(super) fn apply_pending_reload(&mut self) {
        if std::mem::take(&mut self.reload_pending) {
            self.reload_config("coalesced reload");
            self.supervisor.ready(&self.serving_status());
        }
    }

    fn serving_status(&self) -> String {
        match self.active.and_then(|id| self.workers.get(&id)) {
            Some(w) => format!("serving with worker {} (pid {})", w.id, w.pid),
            None => "no worker is serving".to_owned(),
        }
    }

    /// Reads, checks and applies the config; whether it was applied. A
    /// refusal is logged and sent to the supervisor as `STATUS=`.
    fn reload_config(&mut self, why: &str) -> bool {
        let path = self
            .config_path
            .clone()
            .expect("reload needs a config file");
        self.supervisor
            .reloading(&format!("{why}: reloading {}", path.display()));
        match self.apply(&path) {
            Ok(summary) => {
                tracing::info!(
                    event = "reloaded",
                    "{why}: reloaded {}: {summary}",
                    path.display()
                );
                true
            }
            Err(e) => {
                let message = format!(
                    "{why}: reload of {} refused, the running config stays: {e}",
                    path.display()
                );
                tracing::error!(event = "reload_refused", error = %message, "{message}");
                self.supervisor.status(&message);
                self.status.last_failure = Some(message);
                false
            }
        }
    }

    fn apply(&mut self, path: &std::path::Path) -> Result<String, String> {
        let new = Config::load(path).map_err(|e| crate::errors::display_chain(&e))?;
        self.restart_needed(&new)?;
        // Everything that can fail happens before anything is applied.
        let fetcher = match (&self.store, &new.fetch) {
            (Some(_), Some(fetch)) => Some(
                crate::fetchers::from_config(fetch, &new.verify).map_err(|e| {
                    format!(
                        "cannot set up the fetcher: {}",
                        crate::errors::display_chain(&e)
                    )
                })?,
            ),
            _ => None,
        };
        let sockets = if self.sockets.adopted() {
            if new.program.listen != self.program.listen {
                tracing::warn!(
                    "program.listen changed, but the sockets came from systemd and stay as they are"
                );
            }
            None
        } else {
            Some(
                self.sockets
                    .reconcile(&new.program.listen)
                    .map_err(|e| crate::errors::display_chain(&super::Error::from(e)))?,
            )
        };
        let mut summary = Vec::new();
        if let Some((sockets, changes)) = sockets {
            for added in &changes.added {
                tracing::info!("listening on {added} (added by the reload)");
            }
            for removed in &changes.removed {
                tracing::info!(
                    "{removed} is no longer configured; closed once the workers holding it have exited"
                );
            }
            summary.push(format!(
                "{} address(es) added, {} removed",
                changes.added.len(),
                changes.removed.len()
            ));
            let old = std::mem::replace(&mut self.sockets, sockets);
            self.retired
                .push((old, self.workers.keys().copied().collect()));
        }
        // `[control]` is bound at start: a change needs a restart.
        let Config {
            program,
            releases,
            fetch,
            verify,
            hooks,
            ..
        } = new;
        self.program = program;
        warn_http_ready(&self.program);
        self.child_env = ChildEnv::new(&self.program, fetch.as_ref());
        self.checker = checker(
            releases.as_ref(),
            &self.sockets,
            &self.child_env,
            &self.program,
        );
        self.trials.configure(
            releases
                .as_ref()
                .map_or(super::SETTLE_DEFAULT, |r| r.settle),
            self.checker.as_ref().map(|c| c.health.failures),
        );
        if let Some((_, task)) = self.health_task.take() {
            // Restarted with the new check by `update_health`.
            task.abort();
        }
        self.releases = releases;
        self.fetch = fetch;
        self.verify = verify;
        self.hooks = hooks;
        if let Some(updater) = self.updater.take() {
            updater.abort();
            summary.push("the update loop was rebuilt".to_owned());
        }
        if let Some(fetcher) = fetcher {
            // A trial under way holds the new loop back until it ends.
            let gate = self.trial_done.as_mut().map(|done| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                *done = tx;
                rx
            });
            self.start_updater(fetcher, gate);
        }
        summary.push("program settings apply to the workers started from now on".to_owned());
        Ok(summary.join("; "))
    }

    /// Changes that only a restart can apply.
    fn restart_needed(&self, new: &Config) -> Result<(), String> {
        let restart = |what: String| Err(format!("{what}: a restart is needed to apply it"));
        match (&self.releases, &new.releases) {
            (Some(old), Some(new)) if old.dir != new.dir => {
                return restart(format!(
                    "releases.dir changed from {} to {}",
                    old.dir.display(),
                    new.dir.display()
                ))
            }
            (Some(old), Some(new)) if old.keep != new.keep => {
                return restart(format!(
                    "releases.keep changed from {} to {}",
                    old.keep, new.keep
                ))
            }
            (Some(old), Some(new)) if old.binary != new.binary => {
                return restart(format!(
                    "releases.binary changed from {:?} to {:?}",
                    old.binary, new.binary
                ))
            }
            (Some(_), None) => return restart("the [releases] section was removed".to_owned()),
            (None, Some(_)) => return restart("a [releases] section was added".to_owned()),
            _ => {}
        }
        if self.store.is_none() && new.fetch.is_some() {
            return restart("a [fetch] section was added".to_owned());
        }
        if self.releases.is_none()
            && self.store.is_some()
            && new.program.command != self.program.command
        {
            return restart(format!(
                "program.command changed from {} in in-place mode",
                self.program.command.display()
            ));
        }
        Ok(())
    }

    /// Starts the update loop with the running `[fetch]` and `[verify]`.
    pub(super) fn start_updater(
        &mut self,
        fetcher: Box<dyn Fetcher>,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    ) {
        let (Some(store), Some(fetch)) = (&self.store, &self.fetch) else {
            return;
        };
        let pipeline = Arc::new(Pipeline::new(
            store.clone(),
            self.verify.clone(),
            self.child_env.clone(),
        ));
        self.updater = Some(tokio::spawn(update::supervise(
            fetch.clone(),
            self.verify.clone(),
            fetcher,
            pipeline,
            self.installed_tx.clone(),
            self.check_now.clone(),
            gate,
            self.reports_tx.clone(),
            Arc::new(self.hook_runner()),
        )));
    }

    /// Closes the socket sets replaced by a reload once no worker started
    /// with them is left.
    pub(super) fn release_retired_sockets(&mut self) {
        let before = self.retired.len();
        let workers = &self.workers;
        self.retired
            .retain(|(_, ids)| ids.iter().any(|id| workers.contains_key(id)));
        if self.retired.len() != before {
            tracing::debug!("closed a retired socket set");
            if let Err(e) = self.sockets.ensure_reserved() {
                tracing::warn!("cannot reserve the descriptors workers' sockets land on: {e}");
            }
        }
    }
}

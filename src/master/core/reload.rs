//! Reloads: whether one runs now, what follows it, and which changes
//! only a restart can apply.

use super::*;

impl Core {
    /// SIGHUP/SIGUSR2: re-read the config when there is a file, apply it if
    /// it is valid, then cycle. While a worker starts, the reload waits for
    /// it and the config is read once for the cycle that follows.
    pub(super) fn reload(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::info!("{why}: ignored while stopping");
            return;
        }
        if !self.fixed.reloadable {
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
        self.reloading = true;
        self.out.push(Action::Reload {
            why: why.to_owned(),
            then: AfterReload::Cycle,
            hold: self.trial_hold,
        });
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
    /// failed): read the config for what follows.
    pub(super) fn apply_pending_reload(&mut self, then: AfterReload) {
        if std::mem::take(&mut self.reload_pending) {
            self.reloading = true;
            self.out.push(Action::Reload {
                why: "coalesced reload".to_owned(),
                then,
                hold: self.trial_hold,
            });
        }
    }

    pub(super) fn serving_status(&self) -> String {
        match self.active.and_then(|id| self.workers.get(&id)) {
            Some(w) => format!("serving with worker {} (pid {})", w.id, w.pid),
            None => "no worker is serving".to_owned(),
        }
    }

    /// The driver read the config: apply what the core keeps of it.
    pub(super) fn on_reloaded(
        &mut self,
        why: &str,
        then: AfterReload,
        result: Result<Reloaded, String>,
    ) {
        self.reloading = false;
        let applied = match result {
            Ok(reloaded) => {
                tracing::info!(event = "reloaded", "{}", reloaded.summary);
                self.trials.configure(
                    reloaded.settings.settle,
                    reloaded.settings.health.map(|h| h.failures),
                );
                self.settings = reloaded.settings;
                self.updater = reloaded.updater;
                if let Some(generation) = reloaded.retired {
                    self.retired
                        .push((generation, self.workers.keys().copied().collect()));
                }
                if self.health_checked.take().is_some() {
                    // Restarted with the new check by `update_health`.
                    self.out.push(Action::StopHealth);
                }
                true
            }
            Err(message) => {
                tracing::error!(event = "reload_refused", error = %message, "{message}");
                self.notice(Notice::Status(message.clone()));
                self.status.last_failure = Some(message);
                false
            }
        };
        match then {
            AfterReload::Cycle => {
                if applied {
                    self.request_cycle(why);
                }
                if self.starting.is_none() {
                    // No cycle followed (nothing to cycle, or the reload was
                    // refused): the reload ends here.
                    self.notice(Notice::Ready(self.serving_status()));
                }
            }
            AfterReload::Settle => self.notice(Notice::Ready(self.serving_status())),
            AfterReload::Restart => {
                self.notice(Notice::Ready(self.serving_status()));
                self.schedule_restart();
            }
        }
    }

    /// Closes the socket sets replaced by a reload once no worker started
    /// with them is left.
    pub(super) fn release_retired_sockets(&mut self) {
        let workers = &self.workers;
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, ids)| !ids.iter().any(|id| workers.contains_key(id)));
        self.retired = kept;
        for (generation, _) in gone {
            self.out.push(Action::CloseSockets(generation));
        }
    }
}

/// Whether a reloaded config changes what only a restart can apply: the
/// releases directory's place, binary or `keep`, adding or removing
/// `[releases]`, adding `[fetch]` where there was no releases directory,
/// and, in in-place mode, `program.command`.
pub(crate) fn restart_needed(
    releases: Option<&Releases>,
    has_store: bool,
    command: &std::path::Path,
    new: &crate::config::Config,
) -> Result<(), String> {
    let restart = |what: String| Err(format!("{what}: a restart is needed to apply it"));
    match (releases, &new.releases) {
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
    if !has_store && new.fetch.is_some() {
        return restart("a [fetch] section was added".to_owned());
    }
    if releases.is_none() && has_store && new.program.command != command {
        return restart(format!(
            "program.command changed from {} in in-place mode",
            command.display()
        ));
    }
    Ok(())
}

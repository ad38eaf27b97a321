//! `[hooks]`: operator commands run at points of a release's life.
//!
//! - `pre_install` runs before a new release's trial, once its directory
//!   is complete; a non-zero exit or a timeout refuses the release (its
//!   sha256 is recorded as failed, `current` never moved).
//! - `post_promote` runs after `current` was swapped to a release that
//!   passed its trial; `post_rollback` after `baton rollback` made
//!   `previous` current again. Their failures are logged, never fatal.
//!
//! A hook runs with the workers' environment (the master's, without fetch
//! credentials: [`ChildEnv`](crate::ChildEnv)) plus:
//!
//! | variable | value |
//! |---|---|
//! | `BATON_HOOK` | `pre_install`, `post_promote` or `post_rollback` |
//! | `BATON_RELEASE` | the release's id (its directory's name) |
//! | `BATON_RELEASE_DIR` | the release's directory |
//! | `BATON_RELEASE_PATH` | the release's binary |
//! | `BATON_VERSION` | its version (empty when unknown) |
//! | `BATON_SHA256` | its sha256, hex |
//! | `BATON_PREVIOUS_RELEASE` | the release `current` named before (empty when none) |
//!
//! It runs in `program.workdir`, stdin closed, in its own process group,
//! which is killed when the hook exits or at `hooks.timeout`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::command::{self, Failure};
use crate::config::Hook;
use crate::release::{Meta, Store};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// Before a trial; refuses the release on failure.
    PreInstall,
    /// After a promotion.
    PostPromote,
    /// After a rollback.
    PostRollback,
}

impl Which {
    /// The hook's key in `[hooks]`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::PreInstall => "pre_install",
            Which::PostPromote => "post_promote",
            Which::PostRollback => "post_rollback",
        }
    }
}

/// The hooks with what they run with.
#[derive(Debug, Clone)]
pub(crate) struct Hooks {
    /// `[hooks]` as configured.
    pub config: crate::config::Hooks,
    /// The workers' environment.
    pub env: Vec<(OsString, OsString)>,
    /// Where hooks run: `program.workdir`.
    pub workdir: PathBuf,
}

impl Hooks {
    fn hook(&self, which: Which) -> Option<&Hook> {
        match which {
            Which::PreInstall => self.config.pre_install.as_ref(),
            Which::PostPromote => self.config.post_promote.as_ref(),
            Which::PostRollback => self.config.post_rollback.as_ref(),
        }
    }

    /// Runs hook `which` for `release` (installed in `store`), if one is
    /// configured. `Err` says why it failed, with its output's tail.
    pub(crate) async fn run(
        &self,
        which: Which,
        release: &Meta,
        previous: Option<&str>,
        store: &Store,
    ) -> Result<(), String> {
        let Some(hook) = self.hook(which) else {
            return Ok(());
        };
        let dir = store.dir().join(&release.id);
        let binary = store.binary_in(&dir);
        let vars = [
            ("BATON_HOOK", OsString::from(which.name())),
            ("BATON_RELEASE", release.id.clone().into()),
            ("BATON_RELEASE_DIR", dir.clone().into()),
            ("BATON_RELEASE_PATH", binary.into()),
            (
                "BATON_VERSION",
                release.version.clone().unwrap_or_default().into(),
            ),
            ("BATON_SHA256", release.sha256.clone().into()),
            (
                "BATON_PREVIOUS_RELEASE",
                previous.unwrap_or_default().into(),
            ),
        ];
        let mut env = self.env.clone();
        env.retain(|(k, _)| !vars.iter().any(|(name, _)| k == name));
        env.extend(vars.into_iter().map(|(k, v)| (OsString::from(k), v)));
        let timeout = self.config.timeout;
        let described = describe(which, &hook.command);
        let workdir = Some(self.workdir.as_path()).filter(|d| d.is_dir());
        match command::run(&hook.command, &hook.args, &env, workdir, timeout).await {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{described} failed with {}: {}",
                crate::protocol::describe_exit(&out.status),
                command::tail(&format!("{}{}", out.stdout, out.stderr))
            )),
            Err(Failure::Spawn(e)) => Err(format!("cannot run {described}: {e}")),
            Err(Failure::Wait(e)) => Err(format!("cannot wait for {described}: {e}")),
            Err(Failure::Timeout) => Err(format!(
                "{described} did not exit within {}; killed it and its process group",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Runs a post hook in the background; its failure is logged.
    pub(crate) fn spawn_post(
        &self,
        which: Which,
        release: Meta,
        previous: Option<String>,
        store: Store,
    ) {
        if self.hook(which).is_none() {
            return;
        }
        let hooks = self.clone();
        tokio::spawn(async move {
            match hooks
                .run(which, &release, previous.as_deref(), &store)
                .await
            {
                Ok(()) => tracing::info!(
                    event = "hook_done",
                    hook = which.name(),
                    release = %release.id,
                    "the {} hook for release {} succeeded",
                    which.name(),
                    release.id
                ),
                Err(e) => tracing::error!(
                    event = "hook_failed",
                    hook = which.name(),
                    release = %release.id,
                    error = %e,
                    "{e} (release {}); baton goes on",
                    release.id
                ),
            }
        });
    }
}

fn describe(which: Which, command: &Path) -> String {
    format!("the {} hook {}", which.name(), command.display())
}

//! `[hooks]`: commands run around installs, promotions and rollbacks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{command_path, duration, Error};

/// Commands run at points of a release's life: `[hooks]`. Each runs with
/// the workers' environment (no fetch credentials) plus the release's
/// `BATON_*` variables, in `program.workdir`, in its own process group,
/// for at most `timeout` (then the group is killed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Before a new release's trial: a non-zero exit (or a timeout)
    /// refuses the release, and its sha256 is recorded as failed.
    pub pre_install: Option<Hook>,
    /// After a release was promoted (`current` names it); failures are
    /// logged, never fatal.
    pub post_promote: Option<Hook>,
    /// After a rollback (`current` names `previous` again); failures are
    /// logged, never fatal.
    pub post_rollback: Option<Hook>,
    /// How long one hook may run (`hooks.timeout`, default 30 s).
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            pre_install: None,
            post_promote: None,
            post_rollback: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// One hook: a command and its arguments, as `["cmd", "arg", …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The executable (a path relative to the config file, or a name looked
    /// up in `PATH`).
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// `[hooks]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pre_install: Option<Vec<String>>,
    post_promote: Option<Vec<String>>,
    post_rollback: Option<Vec<String>>,
    timeout: Option<String>,
}

impl RawHooks {
    /// Checks `[hooks]`; commands with a `/` resolve against `base`.
    pub(super) fn parse(self, base: &Path) -> Result<Hooks, Error> {
        Ok(Hooks {
            pre_install: parse_hook("pre_install", self.pre_install, base)?,
            post_promote: parse_hook("post_promote", self.post_promote, base)?,
            post_rollback: parse_hook("post_rollback", self.post_rollback, base)?,
            timeout: duration("hooks.timeout", &self.timeout, Hooks::default().timeout)?,
        })
    }
}

/// `hooks.<key>`, when set: a command and its arguments.
fn parse_hook(key: &str, words: Option<Vec<String>>, base: &Path) -> Result<Option<Hook>, Error> {
    let Some(words) = words else { return Ok(None) };
    let key = format!("hooks.{key}");
    let Some((command, args)) = words.split_first() else {
        return Err(Error::invalid(
            &key,
            "[]",
            "list the command and its arguments, as [\"/usr/local/bin/migrate\", \"--check\"]",
        ));
    };
    if command.trim().is_empty() {
        return Err(Error::invalid(
            &key,
            command,
            "the first word must name a command",
        ));
    }
    Ok(Some(Hook {
        command: command_path(base, command),
        args: args.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::testing::parse;
    use super::*;

    #[test]
    fn hooks_parse_and_are_checked() {
        let base = "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\n";
        let c = parse(base).unwrap();
        assert_eq!(c.hooks, Hooks::default());
        assert_eq!(c.hooks.timeout, Duration::from_secs(30));
        let c = parse(&format!(
            "{base}[hooks]\npre_install = [\"bin/check\", \"--strict\"]\n\
             post_promote = [\"logger\", \"promoted\"]\ntimeout = \"5s\"\n"
        ))
        .unwrap();
        let pre = c.hooks.pre_install.unwrap();
        assert_eq!(pre.command, Path::new("/srv/app/bin/check"));
        assert_eq!(pre.args, ["--strict"]);
        assert_eq!(
            c.hooks.post_promote.unwrap().command,
            Path::new("logger"),
            "a bare name is looked up in PATH"
        );
        assert_eq!(c.hooks.post_rollback, None);
        assert_eq!(c.hooks.timeout, Duration::from_secs(5));
        for (extra, key) in [
            ("pre_install = []", "hooks.pre_install"),
            ("post_rollback = [\"\"]", "hooks.post_rollback"),
            ("timeout = \"0s\"", "hooks.timeout"),
            ("pre_instal = [\"x\"]", "pre_instal"),
        ] {
            let err = parse(&format!("{base}[hooks]\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }
}

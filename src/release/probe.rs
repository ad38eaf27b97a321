//! Runs `<candidate> <probe args>` to prove it runs on this host: no
//! sockets, stdin closed, the children's environment ([`ChildEnv`]: no
//! fetch credentials) with `BATON_PROBE=1`, in its own process group, which
//! is killed when the probe exits or times out, before the probe is reaped.

use std::path::Path;
use std::time::Duration;

use super::Error;
use crate::child_env::ChildEnv;
use crate::command::{self, Failure};
use crate::fsutil::IoError;
use crate::protocol;

/// Runs the probe; returns the last non-empty line of its output (which
/// names its version: see [`super::verify::probe_version`]).
pub async fn run(
    binary: &Path,
    args: &[String],
    timeout: Duration,
    env: &ChildEnv,
) -> Result<String, Error> {
    let mut vars = env.vars().to_vec();
    vars.push((protocol::BATON_PROBE.into(), "1".into()));
    let out = command::run(binary, args, &vars, None, timeout)
        .await
        .map_err(|failure| match failure {
            Failure::Spawn(source) => Error::ProbeSpawn {
                path: binary.to_owned(),
                source,
            },
            Failure::Wait(source) => Error::Io(IoError {
                what: "wait for",
                path: binary.to_owned(),
                source,
            }),
            Failure::Timeout => Error::ProbeTimeout { limit: timeout },
        })?;
    if !out.status.success() {
        return Err(Error::ProbeFailed {
            status: protocol::describe_exit(&out.status),
            output: command::tail(&format!("{}{}", out.stdout, out.stderr)),
        });
    }
    Ok(out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned())
}

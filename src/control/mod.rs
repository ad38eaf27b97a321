//! The control protocol between `baton status`/`restart`/`rollback`/
//! `releases`/`upgrade` and a running master: one JSON request line per
//! connection on the master's unix socket (mode 0600, peers of another uid
//! refused), answered by one JSON line: `{"ok": true, …}` or
//! `{"ok": false, "error": "…"}`.
//!
//! Requests: `{"cmd": "status"}`, `{"cmd": "releases"}`, `{"cmd":
//! "restart"}` (answered when the graceful cycle ended), `{"cmd":
//! "rollback"}` (answered when `previous` serves and is `current`), `{"cmd":
//! "upgrade", "force": false}` (answered with the outcome of the check it
//! starts; `force` first forgets the releases held by a rollback),
//! `{"cmd": "reexec", "binary": "/path"}` (`binary` optional; answered by
//! the master after its `execve`, with its `pid`, `binary`, `version` and
//! the `workers` it adopted).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod reply;

/// The longest request or reply line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// A request to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Workers, releases, the last check, counters.
    Status,
    /// The installed releases, newest first.
    Releases,
    /// A graceful cycle; the reply comes when it ended.
    Restart,
    /// A graceful cycle onto `previous`, which becomes `current`; the
    /// release rolled back from is held.
    Rollback,
    /// Check the source now; the reply is the check's outcome.
    Upgrade {
        /// Forget held releases first.
        #[serde(default)]
        force: bool,
    },
    /// Re-execute the master's own binary in place (same PID), keeping the
    /// sockets and adopting the running workers; the reply comes from the
    /// new master once it serves.
    Reexec {
        /// The binary to execute instead of the one the master was started
        /// from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket.
    #[error("no master is running at {}: {source}", .socket.display())]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("talking to the master at {} failed", .socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The reply is not a JSON object.
    #[error("the master at {} sent a reply that is not JSON: {reply:?}", .socket.display())]
    BadReply {
        /// The socket.
        socket: PathBuf,
        /// The reply, cut short.
        reply: String,
    },
    /// The master answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the master listening on `socket` and waits for its
/// reply (as long as the request takes: a restart waits for its cycle).
/// A reply with `"ok": false` becomes [`Error::Refused`].
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value, Error> {
    let io = |source| Error::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::NotRunning {
        socket: socket.to_owned(),
        source,
    })?;
    let mut line = serde_json::to_vec(request).expect("serializable");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    if reply.is_empty() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the master closed the connection without a reply (did it exit?)",
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(&reply).map_err(|_| Error::BadReply {
        socket: socket.to_owned(),
        reply: String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned(),
    })?;
    if value["ok"] == serde_json::Value::Bool(true) {
        Ok(value)
    } else {
        Err(Error::Refused(
            value["error"]
                .as_str()
                .unwrap_or("the master refused the request")
                .to_owned(),
        ))
    }
}

/// A reply as people read it: a short aligned summary.
pub fn render(request: &Request, reply: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let str_of = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = String::new();
    match request {
        Request::Status => match serde_json::from_value::<reply::Status>(reply.clone()) {
            Ok(status) => render_status(&mut out, &status),
            Err(e) => unreadable(&mut out, "status", &e, reply),
        },
        Request::Releases => match serde_json::from_value::<reply::Releases>(reply.clone()) {
            Ok(r) => {
                for entry in &r.releases {
                    let mut marks = entry.marks.clone();
                    if let Some(patch) = &entry.release.patch {
                        marks.push(format!("from a {}-byte patch", patch.size));
                    }
                    let _ = writeln!(
                        out,
                        "{:<40} {}",
                        release(Some(&entry.release)),
                        marks.join(", ")
                    );
                }
            }
            Err(e) => unreadable(&mut out, "releases", &e, reply),
        },
        Request::Restart => {
            let _ = writeln!(out, "restarted: {}", str_of(&reply["outcome"]));
        }
        Request::Rollback => {
            let _ = writeln!(
                out,
                "rolled back: current is {}, {} is held",
                str_of(&reply["current"]),
                str_of(&reply["held"])
            );
        }
        Request::Upgrade { .. } => {
            let _ = writeln!(
                out,
                "{}: {}",
                str_of(&reply["outcome"]),
                str_of(&reply["detail"])
            );
        }
        Request::Reexec { .. } => {
            let _ = writeln!(
                out,
                "re-executed: baton {} from {} as pid {}, adopted {} worker(s) in {} ms",
                str_of(&reply["version"]),
                str_of(&reply["binary"]),
                reply["pid"],
                reply["workers"].as_array().map_or(0, Vec::len),
                reply["took_ms"]
            );
        }
    }
    out
}

/// A release as `status` and `releases` show it.
fn release(meta: Option<&crate::release::Meta>) -> String {
    match meta {
        Some(m) => format!(
            "{} (version {}, sha256 {})",
            m.id,
            m.version.as_deref().unwrap_or("unknown"),
            m.sha256.get(..12).unwrap_or(&m.sha256)
        ),
        None => "none".to_owned(),
    }
}

fn render_status(out: &mut String, s: &reply::Status) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "master     pid {}, up {}s", s.pid, s.uptime_secs);
    let b = &s.baton;
    let _ = writeln!(
        out,
        "baton      {}{}",
        b.version,
        b.channel
            .as_deref()
            .map(|c| format!(", self-upgrades from {c}"))
            .unwrap_or_default()
    );
    if let Some(v) = &b.on_trial {
        let _ = writeln!(out, "baton      on trial: {v}");
    }
    for f in &b.failed {
        let _ = writeln!(out, "baton      failed self-upgrade {f}");
    }
    if let Some(c) = &b.last_check {
        let _ = writeln!(out, "baton      last check {c}");
    }
    for w in &s.workers {
        let state = match w.draining_for_secs {
            Some(secs) => format!("{} {secs}s", w.state),
            None => w.state.clone(),
        };
        let _ = writeln!(
            out,
            "worker {:<3} pid {:<8} {:<20} release {}",
            w.id,
            w.pid,
            state,
            w.release.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "current    {}", release(s.current.as_ref()));
    let _ = writeln!(out, "previous   {}", release(s.previous.as_ref()));
    let _ = writeln!(out, "on trial   {}", release(s.on_trial.as_ref()));
    match &s.last_check {
        Some(c) => {
            let _ = writeln!(out, "last check {} at {}: {}", c.outcome, c.at, c.detail);
        }
        None => out.push_str("last check none yet\n"),
    }
    if let Some(why) = &s.stranded {
        let _ = writeln!(out, "STRANDED   {why}");
    }
    for (digests, label) in [
        (&s.failed, "failed"),
        (&s.held, "held"),
        (&s.quarantined, "quarantine"),
    ] {
        for sha in digests {
            let _ = writeln!(out, "{label:<10} sha256 {sha}");
        }
    }
    for version in &s.yanked {
        let _ = writeln!(out, "{:<10} version {version}", "yanked");
    }
    if let Some(f) = &s.last_failure {
        let _ = writeln!(out, "last error {f}");
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters   cycles {}, crash restarts {}, promotions {}, failed trials {}, rollbacks {}",
        c.cycles, c.crash_restarts, c.promotions, c.failed_trials, c.rollbacks
    );
}

/// A reply this baton cannot read (a master of another version): say so,
/// and show it as it came.
fn unreadable(out: &mut String, what: &str, e: &serde_json::Error, reply: &serde_json::Value) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "the master's {what} reply has a shape this baton does not know ({e}); as sent:\n{reply}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        let text = serde_json::to_string(&Request::Upgrade { force: true }).unwrap();
        assert_eq!(text, r#"{"cmd":"upgrade","force":true}"#);
        let parsed: Request = serde_json::from_str(r#"{"cmd":"upgrade"}"#).unwrap();
        assert_eq!(parsed, Request::Upgrade { force: false });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn status_renders_from_the_typed_reply_and_tolerates_odd_digests() {
        let meta = |sha256: &str| crate::release::Meta {
            id: "2.0.0-abcd".into(),
            version: Some("2.0.0".into()),
            sha256: sha256.into(),
            size: 1,
            source: "test".into(),
            installed_at: 0,
            binary_sha256: None,
            patch: None,
        };
        let status = reply::Status {
            current: Some(meta(&"ab".repeat(32))),
            previous: Some(meta("é")),
            stranded: Some("nothing to run".into()),
            ..Default::default()
        };
        let text = render(&Request::Status, &serde_json::to_value(&status).unwrap());
        assert!(
            text.contains("current    2.0.0-abcd (version 2.0.0, sha256 abababababab)"),
            "{text}"
        );
        assert!(text.contains("sha256 é)"), "{text}");
        assert!(text.contains("STRANDED   nothing to run"), "{text}");
        let odd = render(&Request::Status, &serde_json::json!({"pid": "x"}));
        assert!(odd.contains("a shape this baton does not know"), "{odd}");
    }
}

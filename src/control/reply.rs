//! The control socket's answers as types: the master builds them, the CLI
//! renders them and `/metrics` counts from them, so the three never
//! disagree on a key. On the wire each is one JSON object with `"ok":
//! true` beside these fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::release::Meta;

/// The answer to `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The master's PID.
    pub pid: u32,
    /// Seconds since the master started (across re-execs: since this one).
    pub uptime_secs: u64,
    /// The executable the master runs from (lossily, where the path is not
    /// UTF-8).
    pub binary: String,
    /// Every worker the master holds, oldest first.
    pub workers: Vec<WorkerStatus>,
    /// The release `current` names.
    pub current: Option<Meta>,
    /// The release `previous` names.
    pub previous: Option<Meta>,
    /// The release on trial.
    pub on_trial: Option<Meta>,
    /// How the last check of the source ended.
    pub last_check: Option<LastCheck>,
    /// Digests recorded as failed, sorted.
    pub failed: Vec<String>,
    /// Digests held back after a rollback, sorted.
    pub held: Vec<String>,
    /// Digests quarantined after interrupted trials, sorted.
    pub quarantined: Vec<String>,
    /// Versions a signed manifest yanked, never installed here again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub yanked: Vec<String>,
    /// Why nothing can serve, when nothing can.
    pub stranded: Option<String>,
    /// The last failure of a worker, a trial or a hook, described.
    pub last_failure: Option<String>,
    /// Checks of the source so far, by outcome.
    pub checks: BTreeMap<String, u64>,
    /// Event counters.
    pub counters: Counters,
    /// Trial events by version, then outcome (`started`, `promoted`,
    /// `failed`).
    #[serde(default)]
    pub trials: BTreeMap<String, BTreeMap<String, u64>>,
    /// Failed trials by version, then stage (`probe`, `start`, …).
    #[serde(default)]
    pub trial_failures: BTreeMap<String, BTreeMap<String, u64>>,
    /// This host's id for rollouts, with a `[fetch]` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The trial reports' writer, with `[fetch] report`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<Reports>,
    /// baton itself: its version and, with `[self]`, its own channel.
    #[serde(default)]
    pub baton: Baton,
}

/// baton itself, in a [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baton {
    /// The version the master runs.
    pub version: String,
    /// baton's own channel (`[self]`), described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A new baton on trial: its version, kept once it has stayed up for
    /// `self.settle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_trial: Option<String>,
    /// Self-upgrades that failed, each `<version>: <why>`; never taken
    /// again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// How the last check of baton's own channel ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

/// The trial reports' writer, in a [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reports {
    /// Reports written.
    pub written: u64,
    /// Writes that failed (each retry counts).
    pub failed_writes: u64,
    /// Reports waiting for a retry.
    pub pending: u64,
}

/// One worker in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its `BATON_WORKER_ID`.
    pub id: u64,
    /// Its PID.
    pub pid: u32,
    /// The id of the release it runs, when it runs one.
    pub release: Option<String>,
    /// `starting`, `starting (on trial)`, `ready`, `on trial`, `draining`
    /// or `killed`.
    pub state: String,
    /// Seconds it has been ready, while it serves.
    pub ready_for_secs: Option<u64>,
    /// Seconds since it was asked to drain, while it drains: a long one
    /// is a long-lived connection (a WebSocket, a stream) still open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_for_secs: Option<u64>,
}

/// The last check of the source, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    /// When it ended, seconds since the epoch.
    pub at: u64,
    /// `installed`, `unchanged`, `nothing_new`, `skipped`,
    /// `not_in_rollout`, `waiting` or `error`.
    pub outcome: String,
    /// The release, digest or error, described.
    pub detail: String,
}

/// The master's event counters, in a [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Graceful cycles completed.
    pub cycles: u64,
    /// Restarts of a worker that died on its own.
    pub crash_restarts: u64,
    /// Trials that ended in promotion.
    pub promotions: u64,
    /// Trials that failed.
    pub failed_trials: u64,
    /// Rollbacks asked for by an operator.
    pub rollbacks: u64,
    /// Re-executions of the master's own binary.
    pub reexecs: u64,
}

/// The answer to `releases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Releases {
    /// The installed releases, newest first.
    pub releases: Vec<ReleaseEntry>,
}

/// One installed release in [`Releases`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// What the release directory records.
    pub release: Meta,
    /// `current`, `previous`, `on trial`, `held`, `failed`, `quarantined`.
    pub marks: Vec<String>,
}

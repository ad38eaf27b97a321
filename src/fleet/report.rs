//! Trial reports: what a host saw of a release, written once per event to
//! `reports/<version>/<outcome>/<host_id>.json` beside the manifest.
//!
//! The master says what happened ([`Note`]); the [`Reporter`] adds who and
//! when, and writes it on a task of its own, so a slow or failing store
//! never blocks, delays or changes a trial, a promotion or a rollback. A
//! write that fails is logged with its cause, counted, and retried every
//! fetch interval while fewer than [`PENDING_LIMIT`] wait. What waits is
//! kept in `releases/.reports-pending`, so a restarted master writes it; a
//! report already written (recorded in `releases/.reports`) is never
//! written again, also by a restarted master.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::manifest::rollout;

/// Reports waiting for a retry at most; older ones are dropped (and said so).
pub const PENDING_LIMIT: usize = 64;
/// The longest stderr line a report carries, in bytes.
pub const STDERR_LIMIT: usize = 512;
/// The longest `detail` a report carries, in bytes.
pub const DETAIL_LIMIT: usize = 1024;
/// The file in the releases directory listing the reports written.
const SENT: &str = ".reports";
/// The file in the releases directory keeping the reports that wait for a
/// retry, one JSON object a line.
const PENDING: &str = ".reports-pending";
/// How long a new writer waits for the one it replaces to end.
const HANDOVER_LIMIT: Duration = Duration::from_secs(60);
/// The longest line of [`PENDING`] read back; a longer one is skipped (a
/// report's text, escaped as JSON, is at most 6 × its cut length).
const PENDING_LINE_LIMIT: usize = 64 * 1024;

/// What a trial came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The trial record is on disk; the trial worker starts next.
    Started,
    /// The release stayed ready (and healthy) for `settle`.
    Promoted,
    /// The release never got promoted here.
    Failed,
    /// The host left this release, which a signed manifest yanked.
    Yanked,
}

impl Outcome {
    /// Its name in paths and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Promoted => "promoted",
            Outcome::Failed => "failed",
            Outcome::Yanked => "yanked",
        }
    }
}

/// Where a failed release failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Its `--probe` run.
    Probe,
    /// The `pre_install` hook refused it.
    PreInstall,
    /// Its worker could not start, or exited before it was ready.
    Start,
    /// Its worker was not ready within `ready_timeout`.
    Ready,
    /// Its worker died while it settled.
    Settle,
    /// Its health check failed.
    Health,
    /// A signed manifest yanked its version while it was on trial.
    Yank,
}

impl Stage {
    /// Its name in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Probe => "probe",
            Stage::PreInstall => "pre_install",
            Stage::Start => "start",
            Stage::Ready => "ready",
            Stage::Settle => "settle",
            Stage::Health => "health",
            Stage::Yank => "yank",
        }
    }
}

/// What the master says happened to a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The release's version (its id when it has none).
    pub version: String,
    /// The version the host ran before, if any.
    pub from: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// For a failure: where.
    pub stage: Option<Stage>,
    /// For a failure: the exit status, health result or refusal.
    pub detail: Option<String>,
    /// For a failure: the worker's last stderr line.
    pub stderr: Option<String>,
}

/// A report as written: a small JSON object, at most [`DETAIL_LIMIT`] +
/// [`STDERR_LIMIT`] bytes of text besides its fixed fields. It carries no
/// credential, but it does quote the worker's or the probe's own words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The host (`fetch.host_id`, or the one kept in the releases directory).
    pub host_id: String,
    /// The host's cohort bucket for this version, as a percentage.
    pub bucket: f64,
    /// The version the host ran before.
    pub from: Option<String>,
    /// The release's version.
    pub version: String,
    /// What happened.
    pub outcome: Outcome,
    /// When, in RFC 3339.
    pub at: String,
    /// For a failure: where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// For a failure: the exit status, health result or refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a failure: the worker's last stderr line, at most
    /// [`STDERR_LIMIT`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

impl Report {
    /// The report of `note` by `host_id`, now.
    pub fn new(note: Note, host_id: &str, at: SystemTime) -> Report {
        Report {
            host_id: host_id.to_owned(),
            bucket: rollout::bucket_percent(rollout::bucket(host_id, &note.version)),
            from: note.from,
            version: version_key(&note.version),
            outcome: note.outcome,
            at: crate::time::rfc3339(at),
            stage: note.stage,
            detail: note.detail.map(|d| cut(&d, DETAIL_LIMIT)),
            stderr: note.stderr.map(|s| cut(&s, STDERR_LIMIT)),
        }
    }

    /// Its key below the manifest's directory or prefix.
    pub fn key(&self) -> String {
        report_key(&self.version, self.outcome, &self.host_id)
    }
}

/// The key of `host_id`'s `outcome` report of `version` (as reports name
/// it: [`version_key`]).
fn report_key(version: &str, outcome: Outcome, host_id: &str) -> String {
    format!(
        "reports/{}/{}/{}.json",
        path_safe(version),
        outcome.as_str(),
        path_safe(host_id)
    )
}

/// A version as reports name it: semver without a leading `v` (`v2.0.0`
/// and `2.0.0` are one release), else as written.
pub fn version_key(version: &str) -> String {
    crate::version::parse_version(version).map_or_else(|| version.to_owned(), |v| v.to_string())
}

/// `text` cut at `limit` bytes, on a character boundary.
fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A name as one path segment: anything but ASCII letters, digits, `.`,
/// `-`, `_` and `+` becomes `_`, and a name of dots only gets a `_` before
/// it, so no name escapes `reports/` or names a directory above.
pub fn path_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    }
}

/// Where reports go: the store the host reads its releases from.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A directory: the one holding the file source's manifest.
    Dir(PathBuf),
    /// An S3 bucket, under the manifest's prefix.
    #[cfg(feature = "s3")]
    S3 {
        /// Where, and how to reach it.
        at: crate::fetchers::s3::Endpoint,
        /// The prefix (empty, or ending in `/`).
        prefix: String,
    },
}

impl Sink {
    /// Where `[fetch]` puts reports, when it asks for them.
    pub fn of(fetch: &crate::config::Fetch) -> Option<Sink> {
        Sink::at(fetch).filter(|_| fetch.report)
    }

    /// Where reports go beside `[fetch]`'s manifest: its directory, or its
    /// bucket and prefix; none for the read-only sources (http, github).
    pub fn at(fetch: &crate::config::Fetch) -> Option<Sink> {
        use crate::config::Source;
        match &fetch.source {
            Source::File { path } => Some(Sink::Dir(
                path.parent().unwrap_or(Path::new(".")).to_owned(),
            )),
            #[cfg(feature = "s3")]
            Source::S3 { key, prefix, .. } => {
                let prefix = match (key, prefix) {
                    (Some(key), _) => key.rfind('/').map_or("", |i| &key[..=i]).to_owned(),
                    (None, Some(prefix)) if prefix.is_empty() || prefix.ends_with('/') => {
                        prefix.clone()
                    }
                    (None, Some(prefix)) => match prefix.rfind('/') {
                        Some(i) => prefix[..=i].to_owned(),
                        None => String::new(),
                    },
                    (None, None) => String::new(),
                };
                Some(Sink::S3 {
                    at: crate::fetchers::s3::Endpoint::of(fetch)?,
                    prefix,
                })
            }
            _ => None,
        }
    }

    /// Where `report` goes, for logs.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Sink::Dir(dir) => dir.join(key).display().to_string(),
            #[cfg(feature = "s3")]
            Sink::S3 { at, prefix } => at.describe(&format!("{prefix}{key}")),
        }
    }

    /// Writes one report.
    async fn write(&self, report: &Report) -> Result<(), String> {
        let key = report.key();
        let body = serde_json::to_vec(report).expect("a report serializes");
        match self {
            Sink::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let (parent, name) = key.rsplit_once('/').expect("a report's directory");
                    // Never through a link: the store's writers shape it.
                    super::beneath::open_dir(&dir, parent, true)?
                        .expect("created")
                        .write_atomic(name, &body, 0o644)
                })
                .await
                .map_err(|e| format!("the write task failed: {e}"))?
            }
            #[cfg(feature = "s3")]
            Sink::S3 { at, prefix } => at.put(&format!("{prefix}{key}"), body).await,
        }
    }
}

/// The reporter's counters, for `status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reports written.
    pub written: AtomicU64,
    /// Writes that failed (each retry counts).
    pub failed: AtomicU64,
    /// Reports waiting for a retry.
    pub pending: AtomicU64,
}

/// What the reporter's task is told.
#[derive(Debug)]
enum Message {
    /// Report this.
    Note(Note),
    /// `current` names `version`: if its trial was reported started and
    /// never ended, its promotion's report was lost with the master that
    /// made it (between the promotion and the report's record): report it.
    Serving(String),
}

/// Writes reports on a task of its own.
#[derive(Debug, Clone)]
pub struct Reporter {
    notes: mpsc::UnboundedSender<Message>,
    counters: Arc<Counters>,
    /// Closed when the task has ended (its sender is dropped with it).
    ended: watch::Receiver<()>,
}

impl Reporter {
    /// Starts the task: reports of `host_id` go to `sink`, those written
    /// are recorded in `releases_dir`, failed writes are retried every
    /// `retry`.
    pub fn start(sink: Sink, host_id: String, releases_dir: &Path, retry: Duration) -> Reporter {
        Reporter::start_after(None, sink, host_id, releases_dir, retry)
    }

    /// As [`Reporter::start`], taking over from `previous` (a reload that
    /// moved the reports): the new task starts once the old one has ended
    /// (dropping `previous` ends it after the flush under way; a minute at
    /// most is waited), so that one task at a time keeps the lists in
    /// `releases_dir`; the reports the old one left waiting are written by
    /// the new one.
    pub fn start_after(
        previous: Option<Reporter>,
        sink: Sink,
        host_id: String,
        releases_dir: &Path,
        retry: Duration,
    ) -> Reporter {
        let (notes, rx) = mpsc::unbounded_channel();
        let (alive, ended) = watch::channel(());
        let counters = Arc::new(Counters::default());
        let releases_dir = releases_dir.to_owned();
        let task_counters = counters.clone();
        let before = previous.map(|p| {
            let ended = p.ended.clone();
            drop(p);
            ended
        });
        tokio::spawn(async move {
            if let Some(mut before) = before {
                // Err once its sender is gone: the old task has ended (it
                // finishes the flush under way: a hung store is not waited
                // on for ever).
                let ended = async { while before.changed().await.is_ok() {} };
                if tokio::time::timeout(HANDOVER_LIMIT, ended).await.is_err() {
                    tracing::warn!(
                        "the previous trial report writer has not ended after {}s; the new one \
                         starts anyway",
                        HANDOVER_LIMIT.as_secs()
                    );
                }
            }
            let sent = read_sent(&releases_dir.join(SENT));
            let pending_file = releases_dir.join(PENDING);
            let pending = read_pending(&pending_file, &sent);
            let task = Task {
                sink,
                host_id,
                sent_file: releases_dir.join(SENT),
                sent,
                pending_file,
                pending,
                counters: task_counters,
            };
            task.count_pending();
            task.run(rx, retry).await;
            drop(alive);
        });
        Reporter {
            notes,
            counters,
            ended,
        }
    }

    /// Queues a report of `note`.
    pub fn send(&self, note: Note) {
        let _ = self.notes.send(Message::Note(note));
    }

    /// Says that `current` names `version` at start-up: a trial of it that
    /// was reported started and never ended was promoted (only a promotion
    /// moves `current` to a release on trial), and is reported so.
    pub fn serving(&self, version: &str) {
        let _ = self.notes.send(Message::Serving(version.to_owned()));
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The reports written, as `.reports` lists them (one key a line).
fn read_sent(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The reports an earlier master left waiting, oldest first, without those
/// written since; a line that does not read as a report (torn, edited,
/// oversized) is skipped with a warning, and at most [`PENDING_LIMIT`] are
/// kept.
fn read_pending(path: &Path, sent: &BTreeSet<String>) -> VecDeque<Report> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return VecDeque::new(),
        Err(e) => {
            tracing::warn!(
                "cannot read the trial reports left waiting in {}: {e}; they are not written",
                path.display()
            );
            return VecDeque::new();
        }
    };
    let mut pending = VecDeque::new();
    let mut seen = BTreeSet::new();
    let mut skipped = 0;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let report = (line.len() <= PENDING_LINE_LIMIT)
            .then(|| serde_json::from_slice::<Report>(line).ok())
            .flatten();
        match report {
            Some(r) => {
                let key = r.key();
                if !sent.contains(&key) && seen.insert(key) {
                    pending.push_back(r);
                }
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            "{skipped} line(s) of {} are not trial reports; skipped",
            path.display()
        );
    }
    while pending.len() > PENDING_LIMIT {
        pending.pop_front();
    }
    pending
}

struct Task {
    sink: Sink,
    host_id: String,
    sent_file: PathBuf,
    sent: BTreeSet<String>,
    pending_file: PathBuf,
    pending: VecDeque<Report>,
    counters: Arc<Counters>,
}

impl Task {
    async fn run(mut self, mut notes: mpsc::UnboundedReceiver<Message>, retry: Duration) {
        let period = retry.max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.pending.is_empty() {
            tracing::info!(
                "{} trial report(s) an earlier master left waiting are written now",
                self.pending.len()
            );
            self.flush().await;
        }
        loop {
            tokio::select! {
                message = notes.recv() => match message {
                    Some(message) => {
                        let Some(note) = self.note_of(message) else {
                            continue;
                        };
                        let report = Report::new(note, &self.host_id, SystemTime::now());
                        if !self.sent.contains(&report.key()) {
                            if self.pending.is_empty() {
                                // A retry comes a full period after the
                                // first write that fails, not at once.
                                tick.reset();
                            }
                            self.queue(report);
                            self.record_pending().await;
                            self.flush().await;
                        }
                    }
                    None => return,
                },
                _ = tick.tick(), if !self.pending.is_empty() => self.flush().await,
            }
        }
    }

    /// The note a message asks for, if any.
    fn note_of(&self, message: Message) -> Option<Note> {
        let version = match message {
            Message::Note(note) => return Some(note),
            Message::Serving(version) => version,
        };
        let named = version_key(&version);
        let known = |outcome| {
            let key = report_key(&named, outcome, &self.host_id);
            self.sent.contains(&key) || self.pending.iter().any(|r| r.key() == key)
        };
        let unended =
            known(Outcome::Started) && !known(Outcome::Promoted) && !known(Outcome::Failed);
        unended.then(|| {
            tracing::info!(
                "version {version} serves, and its trial was reported started but never ended: \
                 its promotion is reported now"
            );
            Note {
                version: version.clone(),
                from: None,
                outcome: Outcome::Promoted,
                stage: None,
                detail: Some(
                    "promoted before the previous master stopped; reported at the next start"
                        .to_owned(),
                ),
                stderr: None,
            }
        })
    }

    fn queue(&mut self, report: Report) {
        if self.pending.iter().any(|r| r.key() == report.key()) {
            return;
        }
        if self.pending.len() == PENDING_LIMIT {
            if let Some(dropped) = self.pending.pop_front() {
                tracing::warn!(
                    "{PENDING_LIMIT} trial reports wait for a retry; the oldest, {}, is dropped",
                    dropped.key()
                );
            }
        }
        self.pending.push_back(report);
        self.count_pending();
    }

    /// Writes what waits, newest first (a fresh failure matters most to
    /// the gate); the first write that fails ends the try, and the rest
    /// waits for the next one.
    async fn flush(&mut self) {
        let before = self.pending.len();
        while let Some(report) = self.pending.pop_back() {
            let key = report.key();
            match self.sink.write(&report).await {
                Ok(()) => {
                    tracing::info!(
                        event = "report_written",
                        "trial report written to {}",
                        self.sink.describe(&key)
                    );
                    self.counters.written.fetch_add(1, Ordering::Relaxed);
                    self.sent.insert(key);
                    self.record_sent().await;
                }
                Err(why) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.pending.push_back(report);
                    tracing::warn!(
                        event = "report_failed",
                        error = %why,
                        "cannot write the trial report {}: {why}; the trial goes on, and {} \
                         report(s) wait for the next try",
                        self.sink.describe(&key),
                        self.pending.len()
                    );
                    break;
                }
            }
        }
        self.count_pending();
        if self.pending.len() != before {
            self.record_pending().await;
        }
    }

    fn count_pending(&self) {
        self.counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Records the reports written, so that none is written twice.
    async fn record_sent(&self) {
        let mut text = String::new();
        for key in &self.sent {
            text.push_str(key);
            text.push('\n');
        }
        if let Err(e) = keep(self.sent_file.clone(), Some(text)).await {
            tracing::warn!("cannot record the trial reports written: {e}");
        }
    }

    /// Keeps the reports that wait, for a restarted master (the file is
    /// removed when none waits).
    async fn record_pending(&self) {
        let text = (!self.pending.is_empty()).then(|| {
            let mut text = String::new();
            for report in &self.pending {
                if let Ok(line) = serde_json::to_string(report) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            text
        });
        if let Err(e) = keep(self.pending_file.clone(), text).await {
            tracing::warn!(
                "cannot keep the {} trial report(s) that wait for a restarted master: {e}",
                self.pending.len()
            );
        }
    }
}

/// Writes `text` to `path` atomically and fsynced, or removes `path` when
/// there is none (off the event loop).
async fn keep(path: PathBuf, text: Option<String>) -> Result<(), String> {
    tokio::task::spawn_blocking(move || match text {
        Some(text) => crate::fsutil::write_atomic(&path, text.as_bytes(), ".staging-", None)
            .map_err(|e| crate::errors::display_chain(&e)),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        },
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to a minute for `done`, else fails naming `what` it
    /// waited for.
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn note(outcome: Outcome) -> Note {
        Note {
            version: "2.0.0".to_owned(),
            from: Some("1.0.0".to_owned()),
            outcome,
            stage: None,
            detail: None,
            stderr: None,
        }
    }

    #[test]
    fn a_report_names_its_place_and_carries_its_bucket() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let report = Report::new(note(Outcome::Promoted), "web-17", at);
        assert_eq!(report.key(), "reports/2.0.0/promoted/web-17.json");
        assert_eq!(
            report.bucket,
            rollout::bucket_percent(rollout::bucket("web-17", "2.0.0"))
        );
        assert_eq!(report.at, "2023-11-14T22:13:20Z");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["outcome"], "promoted");
        assert!(json.get("stage").is_none(), "no failure fields: {json}");
    }

    #[test]
    fn names_never_leave_their_segment() {
        assert_eq!(path_safe("../../etc"), "_.._.._etc");
        assert_eq!(path_safe(".."), "_..");
        assert_eq!(
            path_safe(".hidden"),
            "_.hidden",
            "a dot file would not be listed"
        );
        assert_eq!(path_safe(""), "_");
        assert_eq!(path_safe("2.0.0+build.1"), "2.0.0+build.1");
        assert_eq!(path_safe("a/b c"), "a_b_c");
        let mut n = note(Outcome::Failed);
        n.version = "../x".to_owned();
        let report = Report::new(n, "h/../../y", SystemTime::now());
        assert_eq!(report.key(), "reports/_.._x/failed/h_.._.._y.json");
    }

    #[test]
    fn a_long_stderr_line_is_cut_on_a_character_boundary() {
        let mut n = note(Outcome::Failed);
        n.stage = Some(Stage::Start);
        // One byte, then two-byte characters: byte 512 is inside one.
        n.stderr = Some(format!("a{}", "é".repeat(STDERR_LIMIT)));
        n.detail = Some("x".repeat(10 * DETAIL_LIMIT));
        n.version = "v2.0.0".into();
        let report = Report::new(n, "h", SystemTime::now());
        let stderr = report.stderr.clone().unwrap();
        assert_eq!(
            stderr.len(),
            STDERR_LIMIT - 1,
            "cut before the split character"
        );
        assert!(stderr.starts_with("aé"));
        assert_eq!(report.detail.as_ref().unwrap().len(), DETAIL_LIMIT);
        assert_eq!(
            report.key(),
            "reports/2.0.0/failed/h.json",
            "v2.0.0 is 2.0.0"
        );
    }

    #[tokio::test]
    async fn reports_are_written_once_and_failed_writes_wait_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        std::fs::create_dir(&releases).unwrap();
        let store = dir.path().join("store");
        let reporter = Reporter::start(
            Sink::Dir(store.clone()),
            "h1".to_owned(),
            &releases,
            Duration::from_millis(100),
        );
        reporter.send(note(Outcome::Started));
        let written = store.join("reports/2.0.0/started/h1.json");
        wait_until("a report written", || written.exists()).await;
        let report: Report = serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(report.outcome, Outcome::Started);
        assert_eq!(report.from.as_deref(), Some("1.0.0"));
        // A second master finds it written and writes nothing.
        std::fs::remove_file(&written).unwrap();
        let again = Reporter::start(
            Sink::Dir(store.clone()),
            "h1".to_owned(),
            &releases,
            Duration::from_millis(100),
        );
        again.send(note(Outcome::Started));
        again.send(note(Outcome::Promoted));
        let promoted = store.join("reports/2.0.0/promoted/h1.json");
        wait_until("a report written", || promoted.exists()).await;
        assert!(!written.exists(), "a report is written once");
    }

    #[tokio::test]
    async fn a_store_that_refuses_writes_leaves_at_most_the_limit_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the reports directory would be: every write fails.
        std::fs::write(dir.path().join("reports"), b"").unwrap();
        let reporter = Reporter::start(
            Sink::Dir(dir.path().to_owned()),
            "h1".to_owned(),
            dir.path(),
            Duration::from_secs(3600),
        );
        for i in 0..PENDING_LIMIT + 10 {
            let mut n = note(Outcome::Started);
            n.version = format!("1.0.{i}");
            reporter.send(n);
        }
        // Each note's arrival tries one write (the newest), which fails.
        let all_tried = (PENDING_LIMIT + 10) as u64;
        wait_until("every write tried", || {
            reporter.counters().failed.load(Ordering::Relaxed) >= all_tried
        })
        .await;
        assert_eq!(
            reporter.counters().pending.load(Ordering::Relaxed),
            PENDING_LIMIT as u64
        );
        assert_eq!(reporter.counters().written.load(Ordering::Relaxed), 0);
        // The store heals: the next report's arrival writes what waits,
        // without the oldest, which were dropped.
        std::fs::remove_file(dir.path().join("reports")).unwrap();
        let mut n = note(Outcome::Started);
        n.version = format!("1.0.{}", PENDING_LIMIT + 10);
        reporter.send(n);
        // The pending count is updated once the whole flush is done.
        let c = reporter.counters();
        wait_until("the writes retried", || {
            c.written.load(Ordering::Relaxed) >= PENDING_LIMIT as u64
                && c.pending.load(Ordering::Relaxed) == 0
        })
        .await;
        assert_eq!(c.written.load(Ordering::Relaxed), PENDING_LIMIT as u64);
        let written = |v: usize| {
            dir.path()
                .join(format!("reports/1.0.{v}/started/h1.json"))
                .exists()
        };
        assert!(written(PENDING_LIMIT + 10), "the newest is written");
        assert!(!written(10), "the oldest were dropped");
        assert!(written(11));
    }

    #[tokio::test]
    async fn reports_left_waiting_are_written_by_the_next_master() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        std::fs::create_dir(&releases).unwrap();
        let store = dir.path().join("store");
        // A file where the reports directory would be: every write fails.
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("reports"), b"").unwrap();
        let first = Reporter::start(
            Sink::Dir(store.clone()),
            "h1".to_owned(),
            &releases,
            Duration::from_secs(3600),
        );
        first.send(note(Outcome::Started));
        let mut failed = note(Outcome::Failed);
        failed.stage = Some(Stage::Start);
        failed.detail = Some("exit status 3".to_owned());
        first.send(failed);
        let kept = releases.join(PENDING);
        // Both writes were tried (and failed) and both reports are kept.
        wait_until("both reports kept", || {
            read_pending(&kept, &BTreeSet::new()).len() >= 2
                && first.counters().failed.load(Ordering::Relaxed) >= 2
        })
        .await;
        // The store heals; a new writer takes over (a reload, or the next
        // master: the files are all it reads).
        std::fs::remove_file(store.join("reports")).unwrap();
        let second = Reporter::start_after(
            Some(first),
            Sink::Dir(store.clone()),
            "h1".to_owned(),
            &releases,
            Duration::from_secs(3600),
        );
        let failed = store.join("reports/2.0.0/failed/h1.json");
        let started = store.join("reports/2.0.0/started/h1.json");
        wait_until("the waiting reports written", || {
            failed.exists() && started.exists() && !kept.exists()
        })
        .await;
        let report: Report = serde_json::from_slice(&std::fs::read(&failed).unwrap()).unwrap();
        assert_eq!(report.stage, Some(Stage::Start));
        assert_eq!(report.detail.as_deref(), Some("exit status 3"));
        assert_eq!(second.counters().written.load(Ordering::Relaxed), 2);
        assert_eq!(second.counters().pending.load(Ordering::Relaxed), 0);
        // Written, they are not kept for a third master.
        assert!(read_pending(&kept, &read_sent(&releases.join(SENT))).is_empty());
    }

    #[test]
    fn a_waiting_list_is_read_as_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING);
        let line = |version: &str, outcome| {
            let mut n = note(outcome);
            n.version = version.to_owned();
            serde_json::to_string(&Report::new(n, "h1", SystemTime::now())).unwrap()
        };
        let mut text = String::new();
        for i in 0..PENDING_LIMIT + 5 {
            text.push_str(&line(&format!("1.0.{i}"), Outcome::Started));
            text.push('\n');
        }
        text.push_str(&line("1.0.0", Outcome::Started)); // twice
        text.push('\n');
        text.push_str(&line("3.0.0", Outcome::Promoted)); // written since
        text.push('\n');
        text.push_str(&format!(
            "{{\"pad\": \"{}\"}}\n",
            "x".repeat(PENDING_LINE_LIMIT)
        ));
        text.push_str("{\"host_id\": \"h1\", \"bu"); // torn
        std::fs::write(&path, text).unwrap();
        let sent = BTreeSet::from(["reports/3.0.0/promoted/h1.json".to_owned()]);
        let pending = read_pending(&path, &sent);
        assert_eq!(pending.len(), PENDING_LIMIT, "bounded");
        assert_eq!(pending[0].version, "1.0.5", "the oldest are dropped");
        assert_eq!(
            pending.back().unwrap().version,
            format!("1.0.{}", PENDING_LIMIT + 4)
        );
        assert!(read_pending(&dir.path().join("none"), &sent).is_empty());
    }

    #[tokio::test]
    async fn a_promotion_whose_report_died_with_its_master_is_reported_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        std::fs::create_dir(&releases).unwrap();
        let store = dir.path().join("store");
        // The previous master reported 2.0.0 started, and 1.0.0 started
        // and promoted; it died before 2.0.0's promotion was kept.
        std::fs::write(
            releases.join(SENT),
            "reports/2.0.0/started/h1.json\nreports/1.0.0/started/h1.json\n\
             reports/1.0.0/promoted/h1.json\n",
        )
        .unwrap();
        let reporter = Reporter::start(
            Sink::Dir(store.clone()),
            "h1".to_owned(),
            &releases,
            Duration::from_secs(3600),
        );
        reporter.serving("1.0.0"); // ended: nothing
        reporter.serving("3.0.0"); // never started: nothing
        reporter.serving("v2.0.0");
        let promoted = store.join("reports/2.0.0/promoted/h1.json");
        wait_until("a report written", || promoted.exists()).await;
        let report: Report = serde_json::from_slice(&std::fs::read(&promoted).unwrap()).unwrap();
        assert!(report.detail.unwrap().contains("previous master"));
        // The same message again writes nothing more.
        reporter.serving("2.0.0");
        reporter.send(note(Outcome::Yanked));
        let yanked = store.join("reports/2.0.0/yanked/h1.json");
        wait_until("a report written", || yanked.exists()).await;
        assert_eq!(reporter.counters().written.load(Ordering::Relaxed), 2);
        assert!(!store.join("reports/1.0.0").exists());
        assert!(!store.join("reports/3.0.0").exists());
    }
}

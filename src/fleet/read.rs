//! Reading a version's reports for its gate: one listing each of
//! `failed/`, `promoted/` and `started/`, each bounded to [`LIST_LIMIT`]
//! keys. Reports are untrusted input. Every `<host>.json` key under
//! `failed/` counts as a failure, whatever its body says (other names are
//! skipped, dot files in a directory never listed): a body is read only to give the
//! reason, at most [`REASONS_READ`] of them and each at most
//! [`REPORT_LIMIT`] bytes, and one that is malformed or oversized is
//! counted as skipped (its failure still counts), never trusted and never
//! a panic. So a forged or garbled failure can only hold a release back.
//! Promotions are counted from the listing: whoever may write under
//! `reports/` may claim one, so only the fleet's own hosts should.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use super::report::{path_safe, Outcome, Report, Sink, Stage};
use crate::manifest::gate::{Reports, Seen};

/// The most keys one listing reads.
pub const LIST_LIMIT: usize = 1000;
/// The largest report read, in bytes (a written one is far smaller).
pub const REPORT_LIMIT: u64 = 16 << 10;
/// The most failure reports whose bodies are read for their reasons.
pub const REASONS_READ: usize = 32;
/// The most reasons a [`Reasons`] cache keeps before it starts afresh.
const REASONS_KEPT: usize = 4096;

/// Failure reasons already read, by report key: a host writes each report
/// once, so a held host that reads the same failures at every poll reads
/// each body once (its polls then cost the three listings).
#[derive(Debug, Default)]
pub struct Reasons(Mutex<HashMap<String, Option<String>>>);

impl Reasons {
    fn get(&self, key: &str) -> Option<Option<String>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: String, reason: Option<String>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= REASONS_KEPT {
            all.clear();
        }
        all.insert(key, reason);
    }
}

/// One listing of an outcome's reports.
pub(super) struct Listed {
    /// (host id, time, key) of each `<host>.json`.
    pub found: Vec<(String, SystemTime, String)>,
    /// Entries not named `<host>.json`, and the one past the bound.
    pub skipped: usize,
    /// The listing stopped at [`LIST_LIMIT`]: there are more.
    pub cut: bool,
}

impl Sink {
    /// The reports of `version`; an error when a listing cannot be read
    /// (the caller holds: a gate fails closed).
    pub async fn read(&self, version: &str) -> Result<Reports, String> {
        self.read_with(version, &Reasons::default()).await
    }

    /// As [`Sink::read`], reading only the failure bodies `known` has not
    /// seen (and remembering them there).
    pub async fn read_with(&self, version: &str, known: &Reasons) -> Result<Reports, String> {
        let version = &super::report::version_key(version);
        let mut reports = Reports::default();
        let failed = self.list(version, Outcome::Failed).await?;
        reports.skipped += failed.skipped;
        reports.failures_cut = failed.cut;
        for (i, (host_id, at, key)) in failed.found.into_iter().enumerate() {
            if i >= REASONS_READ {
                reports.failed.push(Seen {
                    host_id,
                    at,
                    reason: None,
                });
                continue;
            }
            let read = match known.get(&key) {
                Some(read) => read,
                // The failure counts from its key: a body that cannot be
                // read only costs its reason (read again at the next poll).
                None => match self.get(&key, REPORT_LIMIT, true).await {
                    Ok(body) => {
                        let parsed = body.and_then(|b| serde_json::from_slice::<Report>(&b).ok());
                        let read = parsed
                            .filter(|r| r.outcome == Outcome::Failed && &r.version == version)
                            .map(|r| reason(&r));
                        known.put(key, read.clone());
                        read
                    }
                    Err(e) => {
                        tracing::debug!("a failure report's reason is not read: {e}");
                        None
                    }
                },
            };
            let reason = read.unwrap_or_else(|| {
                reports.skipped += 1;
                "an unreadable report".to_owned()
            });
            reports.failed.push(Seen {
                host_id,
                at,
                reason: Some(reason),
            });
        }
        let promoted = self.list(version, Outcome::Promoted).await?;
        reports.skipped += promoted.skipped;
        reports.promoted = promoted
            .found
            .into_iter()
            .map(|(host, _, _)| host)
            .collect();
        let started = self.list(version, Outcome::Started).await?;
        reports.skipped += started.skipped;
        reports.started = started
            .found
            .into_iter()
            .map(|(host_id, at, _)| Seen {
                host_id,
                at,
                reason: None,
            })
            .collect();
        Ok(reports)
    }

    /// The reports listed under `reports/<version>/<outcome>/`.
    pub(super) async fn list(&self, version: &str, outcome: Outcome) -> Result<Listed, String> {
        let dir = format!("reports/{}/{}/", path_safe(version), outcome.as_str());
        let (keys, more) = match self {
            Sink::Dir(base) => {
                let (base, rel) = (base.clone(), dir.clone());
                tokio::task::spawn_blocking(move || list_dir(&base, &rel))
                    .await
                    .map_err(|e| format!("the listing task failed: {e}"))??
            }
            #[cfg(feature = "s3")]
            Sink::S3 { at, prefix } => {
                let full = format!("{prefix}{dir}");
                let (keys, more) = at.list(&full, LIST_LIMIT as i32).await?;
                let keys = keys
                    .into_iter()
                    .filter_map(|(k, t)| Some((k.strip_prefix(&full)?.to_owned(), t)))
                    .collect();
                (keys, usize::from(more))
            }
        };
        let mut listed = Listed {
            found: Vec::new(),
            skipped: more,
            cut: more > 0,
        };
        for (name, at) in keys {
            match name
                .strip_suffix(".json")
                .filter(|h| !h.is_empty() && !h.contains('/'))
            {
                Some(host) => listed
                    .found
                    .push((host.to_owned(), at, format!("{dir}{name}"))),
                None => listed.skipped += 1,
            }
        }
        Ok(listed)
    }

    /// A small file's bytes; `None` when it is over `cap` bytes, gone or
    /// not a regular file. In a directory, `key` is a report written by
    /// anyone who may write under `reports/` when `report` says so: no
    /// symbolic link below the store's directory is then followed.
    pub(super) async fn get(
        &self,
        key: &str,
        cap: u64,
        report: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        match self {
            Sink::Dir(base) => {
                let (base, key) = (base.clone(), key.to_owned());
                tokio::task::spawn_blocking(move || {
                    if !report {
                        return read_small(&base.join(&key), cap);
                    }
                    let (parent, name) = key.rsplit_once('/').unwrap_or(("", &key));
                    match super::beneath::open_dir(&base, parent, false)? {
                        Some(dir) => dir.read_small(name, cap),
                        None => Ok(None),
                    }
                })
                .await
                .map_err(|e| format!("the read task failed: {e}"))?
            }
            #[cfg(feature = "s3")]
            Sink::S3 { at, prefix } => at.get_small(&format!("{prefix}{key}"), cap).await,
        }
    }
}

/// A failure's reason in one line: `start exit code 3 "cannot open database"`.
fn reason(r: &Report) -> String {
    let stage = r.stage.map_or("unknown", Stage::as_str).to_owned();
    let detail = r.detail.as_deref().map(|d| {
        d.rsplit(": ")
            .next()
            .unwrap_or(d)
            .chars()
            .take(120)
            .collect::<String>()
    });
    let mut text = stage;
    if let Some(d) = detail {
        text.push(' ');
        text.push_str(&d);
    }
    if let Some(line) = &r.stderr {
        text.push_str(&format!(
            " {:?}",
            line.chars().take(120).collect::<String>()
        ));
    }
    text
}

/// The entries of `base/rel` (none when it does not exist), at most
/// [`LIST_LIMIT`]; how many more there were. A link under `base` is
/// refused, not followed.
fn list_dir(base: &Path, rel: &str) -> Result<(Vec<(String, SystemTime)>, usize), String> {
    let Some(dir) = super::beneath::open_dir(base, rel, false)? else {
        return Ok((Vec::new(), 0));
    };
    let (entries, more) = dir.list(LIST_LIMIT)?;
    let keys = entries.into_iter().map(|e| (e.name, e.at)).collect();
    Ok((keys, usize::from(more)))
}

/// A file's bytes when it is a regular file of at most `cap` bytes; `None`
/// for one that is gone, larger, or not a regular file (a FIFO would block
/// its reader, a device would feed it for ever). Links are followed: this
/// reads the store's own files, not reports.
fn read_small(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    super::beneath::read_capped(file, cap, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::Note;

    fn write(base: &Path, key: &str, bytes: &[u8]) {
        let path = base.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn hostile_reports_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let failed = Report::new(
            Note {
                version: "2.0.0".into(),
                from: Some("1.0.0".into()),
                outcome: Outcome::Failed,
                stage: Some(Stage::Start),
                detail: Some("new worker 3 (pid 9) exited before it was ready: exit code 3".into()),
                stderr: Some("cannot open database".into()),
            },
            "h7",
            SystemTime::now(),
        );
        write(
            base,
            "reports/2.0.0/failed/h7.json",
            &serde_json::to_vec(&failed).unwrap(),
        );
        write(base, "reports/2.0.0/failed/junk.json", b"{not json");
        write(
            base,
            "reports/2.0.0/failed/big.json",
            &vec![b' '; REPORT_LIMIT as usize + 1],
        );
        write(base, "reports/2.0.0/failed/readme.txt", b"hi");
        write(base, "reports/2.0.0/promoted/c1.json", b"{}");
        write(base, "reports/2.0.0/started/h7.json", b"{}");
        let sink = Sink::Dir(base.to_owned());
        let reports = sink.read("2.0.0").await.unwrap();
        assert_eq!(
            reports.failed.len(),
            3,
            "every failure counts, garbled or not: h7, junk, big"
        );
        let reason = |host: &str| {
            reports
                .failed
                .iter()
                .find(|s| s.host_id == host)
                .and_then(|s| s.reason.clone())
        };
        assert_eq!(
            reason("h7").as_deref(),
            Some("start exit code 3 \"cannot open database\"")
        );
        assert_eq!(reason("big").as_deref(), Some("an unreadable report"));
        assert_eq!(
            reports.skipped, 3,
            "junk and big unread, readme not a report"
        );
        assert!(reports.promoted.contains("c1"));
        assert_eq!(reports.started.len(), 1);
        let none = sink.read("9.9.9").await.unwrap();
        assert!(none.failed.is_empty() && none.promoted.is_empty());
    }

    #[tokio::test]
    async fn a_fifo_a_device_a_link_or_a_directory_is_skipped_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let failed = base.join("reports/2.0.0/failed");
        std::fs::create_dir_all(&failed).unwrap();
        // A FIFO nobody writes to would block an open() for ever.
        nix::unistd::mkfifo(&failed.join("fifo.json"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        std::os::unix::fs::symlink("/dev/zero", failed.join("zero.json")).unwrap();
        std::fs::write(base.join("secret"), b"{\"not\": \"yours\"}").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), failed.join("link.json")).unwrap();
        std::fs::create_dir(failed.join("dir.json")).unwrap();
        let sink = Sink::Dir(base.to_owned());
        let reports = tokio::time::timeout(std::time::Duration::from_secs(20), sink.read("2.0.0"))
            .await
            .expect("no report is waited on")
            .unwrap();
        assert_eq!(reports.failed.len(), 4, "each still counts as a failure");
        assert_eq!(reports.skipped, 4, "and none is read");
        assert!(reports
            .failed
            .iter()
            .all(|s| s.reason.as_deref() == Some("an unreadable report")));
    }

    #[tokio::test]
    async fn a_linked_reports_directory_is_refused_and_the_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("h1.json"), b"{}").unwrap();
        std::fs::create_dir_all(base.join("reports/2.0.0")).unwrap();
        std::os::unix::fs::symlink(outside.path(), base.join("reports/2.0.0/promoted")).unwrap();
        let sink = Sink::Dir(base.to_owned());
        let refused = sink.read("2.0.0").await.unwrap_err();
        assert!(
            refused.contains("reports/2.0.0/promoted") && refused.contains("symbolic link"),
            "{refused}"
        );
        // A whole `reports` made a link: neither read nor listed.
        std::fs::remove_dir_all(base.join("reports")).unwrap();
        std::os::unix::fs::symlink(outside.path(), base.join("reports")).unwrap();
        assert!(sink.read("2.0.0").await.is_err());
        assert!(sink.versions().await.is_err());
    }

    #[tokio::test]
    async fn a_failure_body_is_read_once_per_reader() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let failed = |detail: &str| {
            serde_json::to_vec(&Report::new(
                Note {
                    version: "2.0.0".into(),
                    from: None,
                    outcome: Outcome::Failed,
                    stage: Some(Stage::Start),
                    detail: Some(detail.into()),
                    stderr: None,
                },
                "h7",
                SystemTime::now(),
            ))
            .unwrap()
        };
        write(base, "reports/2.0.0/failed/h7.json", &failed("exit code 3"));
        write(base, "reports/2.0.0/failed/junk.json", b"{not json");
        let sink = Sink::Dir(base.to_owned());
        let known = Reasons::default();
        let first = sink.read_with("2.0.0", &known).await.unwrap();
        // Changed behind its back: a reader that saw it keeps the reason
        // it read (a host writes each report once), and still counts the
        // unreadable one as skipped.
        write(base, "reports/2.0.0/failed/h7.json", &failed("exit code 9"));
        let reasons = |r: &Reports| -> Vec<Option<String>> {
            r.failed.iter().map(|s| s.reason.clone()).collect()
        };
        let again = sink.read_with("2.0.0", &known).await.unwrap();
        assert_eq!(reasons(&first), reasons(&again));
        assert_eq!((first.skipped, again.skipped), (1, 1));
        let fresh = sink.read("2.0.0").await.unwrap();
        assert_ne!(
            reasons(&first),
            reasons(&fresh),
            "a new reader reads the bodies"
        );
    }

    #[tokio::test]
    async fn a_listing_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..LIST_LIMIT + 5 {
            write(
                dir.path(),
                &format!("reports/2.0.0/promoted/h{i}.json"),
                b"{}",
            );
        }
        let reports = Sink::Dir(dir.path().to_owned())
            .read("2.0.0")
            .await
            .unwrap();
        assert_eq!(reports.promoted.len(), LIST_LIMIT);
        assert_eq!(reports.skipped, 1, "more than a listing reads");
    }
}

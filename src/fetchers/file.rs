//! The file fetcher: a local path, watched with inotify (through the notify
//! crate) and polled as a fallback. A file renamed into place (inotify's
//! `IN_MOVED_TO`) is complete and taken at once; one written in place is
//! taken once it has stopped changing for a quiet period. A missing file
//! means nothing new. Sidecar files `<path>.sha256` and `<path>.minisig`
//! supply a checksum and a signature.
//!
//! A path ending in `.json` names a manifest (see [`crate::manifest`]): its
//! signature is `<path>.minisig`, and the artifact it names resolves
//! against the manifest's directory.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::Verify;

/// How long a file written in place must stay unchanged before it is
/// taken.
const QUIET: Duration = Duration::from_millis(100);

/// What the watcher saw happen in the watched path's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A file was renamed onto the path: it is complete.
    MovedIn,
    /// The path was written, created, removed or renamed away, or the
    /// watcher lost events: whatever is there may be half-written.
    Changed,
    /// Something else changed in the directory (another file).
    Other,
}

/// What `event` says about the file named `name` in the watched
/// directory; `None` for an event that changes no content (an open, a
/// read, a close), which does not wake the update loop.
fn classify(event: &notify::Event, name: &std::ffi::OsStr) -> Option<Seen> {
    use notify::event::{EventKind, ModifyKind, RenameMode};
    if event.need_rescan() {
        return Some(Seen::Changed);
    }
    // A rename within the directory (`Both`) names the source, then the
    // target: the target is what now sits at a path.
    let ours = event.paths.last().and_then(|p| p.file_name()) == Some(name);
    match event.kind {
        EventKind::Access(_) => None,
        _ if !ours => Some(Seen::Other),
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
            Some(Seen::MovedIn)
        }
        // A chmod or a touch changes no byte.
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(Seen::Other),
        _ => Some(Seen::Changed),
    }
}

/// Watches one path.
pub struct FileFetcher {
    path: PathBuf,
    verify: Verify,
    last: Option<String>,
    events: Option<mpsc::UnboundedReceiver<Seen>>,
    /// The last event about the path was a rename onto it: what is there
    /// now is complete.
    moved_in: bool,
    /// How long a file written in place must stay unchanged.
    quiet: Duration,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FileFetcher {
    /// Watches `path`'s directory for changes; without inotify it only polls.
    pub fn new(path: PathBuf, verify: &Verify) -> FileFetcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = watch(&path, tx)
            .map_err(|e| tracing::warn!("cannot watch {}: {e}; polling only", path.display()))
            .ok();
        FileFetcher {
            events: watcher.is_some().then_some(rx),
            _watcher: watcher,
            path,
            verify: verify.clone(),
            last: None,
            moved_in: false,
            quiet: QUIET,
        }
    }

    /// Notes what one event says about the path.
    fn note(&mut self, seen: Seen) {
        match seen {
            Seen::MovedIn => self.moved_in = true,
            Seen::Changed => self.moved_in = false,
            Seen::Other => {}
        }
    }

    /// Notes every event already queued.
    fn drain(&mut self) {
        while let Some(seen) = self.events.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.note(seen);
        }
    }

    /// Waits out the quiet period, unless a rename onto the path (with no
    /// write after it) is seen first; whether it was.
    async fn quiet_or_moved_in(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + self.quiet;
        loop {
            self.drain();
            if std::mem::take(&mut self.moved_in) {
                return true;
            }
            let Some(rx) = self.events.as_mut() else {
                tokio::time::sleep_until(deadline).await;
                return false;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                seen = rx.recv() => match seen {
                    Some(seen) => self.note(seen),
                    None => self.events = None,
                },
            }
        }
    }

    async fn token(&self) -> Result<Option<(String, u64)>, Error> {
        match tokio::fs::metadata(&self.path).await {
            Ok(m) if m.is_file() => Ok(Some((
                format!(
                    "{}:{}:{}:{}.{}",
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
                m.size(),
            ))),
            Ok(_) => Err(Error::Other(format!(
                "{} is not a regular file",
                self.path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn sidecar_path(&self, ext: &str) -> PathBuf {
        let mut path = self.path.clone().into_os_string();
        path.push(ext);
        PathBuf::from(path)
    }

    async fn sidecar(&self, ext: &str) -> Result<Option<String>, Error> {
        let path = self.sidecar_path(ext);
        match super::read_small(&path, "sidecar file").await? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::Invalid {
                    what: "sidecar file",
                    url: path.display().to_string(),
                    reason: "not UTF-8 text".into(),
                }),
            None => Ok(None),
        }
    }

    fn is_manifest(&self) -> bool {
        super::is_manifest(&self.path.to_string_lossy(), None)
    }

    /// The candidate a manifest names. The artifact is opened when the
    /// pipeline first reads it, so a check that ends before the download
    /// (unchanged, not in the rollout, an installed release reused) never
    /// touches it; only a manifest without `size` opens it now, for its
    /// length.
    async fn named_by_manifest(&self) -> Result<Option<Candidate>, Error> {
        let shown = self.path.display().to_string();
        let Some(bytes) = super::read_small(&self.path, "manifest").await? else {
            return Ok(None);
        };
        let minisig = if self.verify.minisign_keys.is_empty() {
            None
        } else {
            super::read_small(&self.sidecar_path(".minisig"), "signature").await?
        };
        let manifest = super::load_manifest(&bytes, minisig.as_deref(), &self.verify, &shown)?;
        // The artifact stays in the manifest's directory tree, as patches
        // do: a manifest cannot make baton read (and report the digest of)
        // any other file on the host.
        if let Err(reason) = below_dir(&manifest.url) {
            return Err(Error::Invalid {
                what: "manifest",
                url: shown,
                reason,
            });
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let artifact = dir.join(&manifest.url);
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut info = super::manifest_info(
            manifest,
            super::manifest_token(&bytes),
            name,
            format!("file {}", artifact.display()),
        );
        let body: super::Body = if info.size.is_none() {
            let file = tokio::fs::File::open(&artifact)
                .await
                .map_err(|source| Error::Io {
                    path: artifact.clone(),
                    source,
                })?;
            info.size = file.metadata().await.ok().map(|m| m.len());
            Box::pin(file)
        } else {
            let path = artifact.clone();
            Box::pin(super::Lazy::new(async move {
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
                Ok(Box::pin(file) as super::Body)
            }))
        };
        let dir = dir.to_owned();
        let opener: super::Opener = std::sync::Arc::new(move |relative: &str| {
            if let Err(reason) = below_dir(relative) {
                return super::failing(reason);
            }
            let path = dir.join(relative);
            Box::pin(super::Lazy::new(async move {
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                Ok(Box::pin(file) as super::Body)
            }))
        });
        Ok(Some(Candidate {
            body,
            info,
            opener: Some(opener),
        }))
    }
}

fn watch(
    path: &Path,
    tx: mpsc::UnboundedSender<Seen>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name: OsString = path.file_name().unwrap_or_default().to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error may have lost events: the path may have changed.
        let seen = match &event {
            Ok(event) => classify(event, &name),
            Err(_) => Some(Seen::Changed),
        };
        if let Some(seen) = seen {
            let _ = tx.send(seen);
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Refuses a manifest `url` that could leave the manifest's directory: a
/// URL, an absolute path, a `..` segment, or nothing at all.
fn below_dir(relative: &str) -> Result<(), String> {
    if relative.contains("://")
        || relative.starts_with('/')
        || relative.split('/').any(|s| s == "..")
        || relative.split('/').all(|s| s.is_empty() || s == ".")
    {
        return Err(format!(
            "url {relative:?} must be a path below the manifest's directory"
        ));
    }
    Ok(())
}

impl Fetcher for FileFetcher {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(async move {
            self.drain();
            let Some((mut token, mut size)) = self.token().await? else {
                return Ok(None);
            };
            if self.last.as_ref() == Some(&token) {
                self.moved_in = false;
                return Ok(None);
            }
            // A file renamed into place is complete at once (an event that
            // came after the look above counts: a write after the rename
            // would have cleared it). One written in place is taken once
            // the writer is done: unchanged across a quiet period.
            self.drain();
            let mut complete = std::mem::take(&mut self.moved_in);
            while !complete {
                complete = self.quiet_or_moved_in().await;
                let Some((now, now_size)) = self.token().await? else {
                    return Ok(None);
                };
                complete |= now == token;
                (token, size) = (now, now_size);
            }
            if self.is_manifest() {
                let candidate = self.named_by_manifest().await?;
                self.last = Some(token);
                return Ok(candidate);
            }
            let file = tokio::fs::File::open(&self.path)
                .await
                .map_err(|source| Error::Io {
                    path: self.path.clone(),
                    source,
                })?;
            let sha256 = match self.sidecar(".sha256").await? {
                Some(text) => {
                    Some(
                        super::parse_checksum_file(&text).ok_or_else(|| Error::Invalid {
                            what: "checksum file",
                            url: format!("{}.sha256", self.path.display()),
                            reason: "expected 64 hex digits".into(),
                        })?,
                    )
                }
                None => None,
            };
            let signature = self.sidecar(".minisig").await?;
            self.last = Some(token.clone());
            Ok(Some(Candidate {
                body: Box::pin(file),
                info: Info {
                    version: None,
                    sha256,
                    size: Some(size),
                    signature,
                    token,
                    name: self
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    source: self.describe(),
                    manifest: None,
                    host_id: None,
                },
                opener: None,
            }))
        })
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match &mut self.events {
                Some(rx) => match rx.recv().await {
                    Some(seen) => {
                        self.note(seen);
                        self.drain();
                    }
                    None => std::future::pending::<()>().await,
                },
                None => std::future::pending().await,
            }
        })
    }

    fn retry(&mut self) {
        self.last = None;
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::{below_dir, classify, FileFetcher, Seen};
    use crate::config::Verify;
    use crate::fetchers::Fetcher;
    use notify::event::{
        AccessKind, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind, RenameMode,
    };
    use std::io::Write;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// A fetcher of `dir/hello` whose quiet period never ends within a
    /// test: whatever it takes, it took without waiting for quiet.
    fn fetcher(dir: &std::path::Path) -> FileFetcher {
        let mut f = FileFetcher::new(dir.join("hello"), &Verify::default());
        assert!(f.events.is_some(), "inotify is needed for these tests");
        f.quiet = Duration::from_secs(3600);
        f
    }

    /// Writes `data` outside the watched directory and renames it onto
    /// `to`, as a publisher does.
    fn rename_in(scratch: &std::path::Path, to: &std::path::Path, data: &[u8]) {
        let tmp = scratch.join("hello.tmp");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    async fn body(candidate: crate::fetchers::Candidate) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut body = candidate.body;
        body.read_to_end(&mut bytes).await.unwrap();
        bytes
    }

    #[tokio::test]
    async fn a_file_renamed_into_place_is_taken_without_a_quiet_period() {
        let root = tempfile::tempdir().unwrap();
        let (dir, scratch) = (root.path().join("dist"), root.path().join("scratch"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let mut f = fetcher(&dir);
        for data in [&b"first build"[..], &b"second, longer build"[..]] {
            rename_in(&scratch, &dir.join("hello"), data);
            let candidate = tokio::time::timeout(Duration::from_secs(60), f.check())
                .await
                .expect("a renamed-in file is taken without waiting for quiet")
                .unwrap()
                .expect("a candidate");
            assert_eq!(candidate.info.size, Some(data.len() as u64));
            assert_eq!(body(candidate).await, data);
            // Seen once: the same file is nothing new.
            assert!(f.check().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_file_written_in_place_is_not_taken_before_it_is_quiet() {
        let root = tempfile::tempdir().unwrap();
        let (dir, scratch) = (root.path().join("dist"), root.path().join("scratch"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let mut f = fetcher(&dir);
        // Half of a build, its writer still at work.
        let mut writer = std::fs::File::create(dir.join("hello")).unwrap();
        writer.write_all(b"half of a bu").unwrap();
        f.changed().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), f.check())
                .await
                .is_err(),
            "a file written in place waits for its quiet period"
        );
        drop(writer);
        // Renamed in, then written in place before a check looked: the
        // write counts, and the check waits again.
        rename_in(&scratch, &dir.join("hello"), b"a complete build");
        let mut again = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("hello"))
            .unwrap();
        again.write_all(b", now appended to").unwrap();
        again.sync_all().unwrap();
        // Both events are in before the check looks.
        let mut seen = Vec::new();
        while !(seen.contains(&Seen::MovedIn) && seen.last() == Some(&Seen::Changed)) {
            let rx = f.events.as_mut().unwrap();
            let next = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            f.note(next);
            seen.push(next);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), f.check())
                .await
                .is_err(),
            "a write after the rename waits for quiet"
        );
    }

    #[tokio::test]
    async fn a_file_written_in_place_is_taken_once_quiet() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dist");
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = fetcher(&dir);
        f.quiet = Duration::from_millis(50);
        std::fs::write(dir.join("hello"), b"written in place").unwrap();
        let candidate = f.check().await.unwrap().expect("a candidate");
        assert_eq!(body(candidate).await, b"written in place");
    }

    #[test]
    fn events_about_the_path_say_whether_it_is_complete() {
        let name = std::ffi::OsStr::new("hello");
        let at = |kind, paths: &[&str]| {
            let mut e = notify::Event::new(kind);
            for p in paths {
                e = e.add_path(p.into());
            }
            classify(&e, name)
        };
        let renamed = |mode| EventKind::Modify(ModifyKind::Name(mode));
        assert_eq!(
            at(renamed(RenameMode::To), &["d/hello"]),
            Some(Seen::MovedIn)
        );
        assert_eq!(
            at(renamed(RenameMode::Both), &["d/hello.tmp", "d/hello"]),
            Some(Seen::MovedIn)
        );
        assert_eq!(
            at(renamed(RenameMode::From), &["d/hello"]),
            Some(Seen::Changed)
        );
        assert_eq!(
            at(renamed(RenameMode::Both), &["d/hello", "d/old"]),
            Some(Seen::Other)
        );
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(at(data, &["d/hello"]), Some(Seen::Changed));
        assert_eq!(
            at(EventKind::Create(CreateKind::File), &["d/hello"]),
            Some(Seen::Changed)
        );
        assert_eq!(
            at(
                EventKind::Remove(notify::event::RemoveKind::File),
                &["d/hello"]
            ),
            Some(Seen::Changed)
        );
        assert_eq!(at(data, &["d/hello.tmp"]), Some(Seen::Other));
        assert_eq!(
            at(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                &["d/hello"]
            ),
            Some(Seen::Other)
        );
        assert_eq!(at(EventKind::Access(AccessKind::Any), &["d/hello"]), None);
        let lost = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(&lost, name), Some(Seen::Changed));
    }

    #[test]
    fn a_manifest_names_only_files_below_it() {
        for ok in ["hello", "./hello", "v1/hello.tar.gz", "a//b"] {
            assert_eq!(below_dir(ok), Ok(()), "{ok}");
        }
        for bad in [
            "../x",
            "v1/../../x",
            "/etc/shadow",
            "file:///etc/shadow",
            "",
            ".",
            "./",
        ] {
            let e = below_dir(bad).unwrap_err();
            assert!(e.contains("below the manifest's directory"), "{bad}: {e}");
        }
    }
}

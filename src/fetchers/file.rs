//! The file fetcher: a local path, watched with inotify (through the notify
//! crate) and polled as a fallback. A file is taken once it has stopped
//! changing; a missing file means nothing new. Sidecar files `<path>.sha256`
//! and `<path>.minisig` supply a checksum and a signature.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};

/// How long a file must stay unchanged before it is taken.
const QUIET: Duration = Duration::from_millis(100);

/// Watches one path.
pub struct FileFetcher {
    path: PathBuf,
    last: Option<String>,
    events: Option<mpsc::UnboundedReceiver<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FileFetcher {
    /// Watches `path`'s directory for changes; without inotify it only polls.
    pub fn new(path: PathBuf) -> FileFetcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = watch(&path, tx)
            .map_err(|e| tracing::warn!("cannot watch {}: {e}; polling only", path.display()))
            .ok();
        FileFetcher {
            events: watcher.is_some().then_some(rx),
            _watcher: watcher,
            path,
            last: None,
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

    async fn sidecar(&self, ext: &str) -> Result<Option<String>, Error> {
        let mut path = self.path.clone().into_os_string();
        path.push(ext);
        let path = PathBuf::from(path);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}

fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

impl Fetcher for FileFetcher {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(async move {
            let Some((mut token, _)) = self.token().await? else {
                return Ok(None);
            };
            if self.last.as_ref() == Some(&token) {
                return Ok(None);
            }
            // Wait until the writer is done: unchanged across a quiet period.
            let size = loop {
                tokio::time::sleep(QUIET).await;
                let Some((now, size)) = self.token().await? else {
                    return Ok(None);
                };
                if now == token {
                    break size;
                }
                token = now;
            };
            let file = tokio::fs::File::open(&self.path)
                .await
                .map_err(|source| Error::Io {
                    path: self.path.clone(),
                    source,
                })?;
            let sha256 = match self.sidecar(".sha256").await? {
                Some(text) => {
                    Some(
                        super::http::parse_checksum_file(&text).ok_or_else(|| Error::Invalid {
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
                },
            }))
        })
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match &mut self.events {
                Some(rx) => {
                    if rx.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                    while rx.try_recv().is_ok() {}
                }
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

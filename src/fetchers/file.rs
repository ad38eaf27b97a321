//! The file fetcher: a local path, watched with inotify (through the notify
//! crate) and polled as a fallback. A file is taken once it has stopped
//! changing; a missing file means nothing new. Sidecar files `<path>.sha256`
//! and `<path>.minisig` supply a checksum and a signature.
//!
//! A path ending in `.json` names a manifest (see [`crate::manifest`]): its
//! signature is `<path>.minisig`, and the artifact it names resolves
//! against the manifest's directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::Verify;

/// How long a file must stay unchanged before it is taken.
const QUIET: Duration = Duration::from_millis(100);

/// Watches one path.
pub struct FileFetcher {
    path: PathBuf,
    verify: Verify,
    last: Option<String>,
    events: Option<mpsc::UnboundedReceiver<()>>,
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

#[cfg(test)]
mod tests {
    use super::below_dir;

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

//! The listening sockets the master binds (or adopts from systemd) once and
//! holds for its whole life, and hands to every worker as fds 3, 4, ….
//! The library's standalone mode binds them the same way and serves on
//! them itself.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{Listen, ListenAddr};
use crate::sys;

const BACKLOG: i32 = 1024;

/// Why the sockets could not be opened (the master reports these as its own
/// `Bind`, `Adopt` and `Descriptors` errors).
#[derive(Debug)]
pub(crate) enum Error {
    /// A `listen` address could not be bound.
    Bind {
        /// The address as configured.
        addr: String,
        /// Why binding failed.
        source: io::Error,
    },
    /// Sockets passed by systemd could not be adopted.
    Adopt(io::Error),
    /// The held descriptors could not be placed.
    Descriptors(io::Error),
}

/// One held socket.
#[derive(Debug)]
pub(crate) struct Held {
    /// The name workers see in `LISTEN_FDNAMES`.
    pub name: String,
    /// What it is bound to, for logs.
    pub describe: String,
    /// The bound TCP address, for HTTP readiness checks.
    pub tcp: Option<SocketAddr>,
    /// The configured entry it was bound for (`None`: adopted from systemd).
    listen: Option<Listen>,
    fd: OwnedFd,
}

/// All held sockets, in `LISTEN_FDS` order.
#[derive(Debug)]
pub(crate) struct Sockets {
    held: Vec<Held>,
    /// Placeholders keeping 3..3+n occupied (see `sys::reserve_listen_range`).
    _reserved: Vec<OwnedFd>,
    /// Unix socket files this master created, removed when it exits.
    created: Vec<PathBuf>,
}

/// What a reload changes in the socket set, for logs.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Entries bound anew, described.
    pub added: Vec<String>,
    /// Entries no longer configured, described; closed once the workers
    /// that hold them have exited.
    pub removed: Vec<String>,
}

impl Sockets {
    /// Adopts the sockets systemd passed to this process, if any; else binds
    /// every configured address.
    pub(crate) fn open(listen: &[Listen]) -> Result<Sockets, Error> {
        let inherited = sys::inherited_listen_fds().map_err(Error::Adopt)?;
        let (held, created) = match inherited {
            Some(fds) => (adopt(fds, "from systemd")?, Vec::new()),
            None => {
                let mut held = Vec::new();
                let mut created = Vec::new();
                for l in listen {
                    held.push(bind(l, &mut created).map_err(|source| Error::Bind {
                        addr: l.addr.to_string(),
                        source,
                    })?);
                }
                (held, created)
            }
        };
        Sockets::place(held, created)
    }

    /// Moves every held descriptor above the range the worker's copies land
    /// in (3..3+n), so dup2 in the child never clobbers a source, and fills
    /// that range with placeholders.
    fn place(held: Vec<Held>, created: Vec<PathBuf>) -> Result<Sockets, Error> {
        let min = sys::LISTEN_FDS_START + held.len() as RawFd;
        let held = held
            .into_iter()
            .map(|h| {
                let fd = sys::dup_at_least(&h.fd, min).map_err(Error::Descriptors)?;
                Ok(Held { fd, ..h })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let reserved = sys::reserve_listen_range(held.len()).map_err(Error::Descriptors)?;
        Ok(Sockets {
            held,
            _reserved: reserved,
            created,
        })
    }

    /// Whether the sockets came from systemd (a reload keeps them as they
    /// are).
    pub(crate) fn adopted(&self) -> bool {
        self.held.iter().any(|h| h.listen.is_none())
    }

    /// The socket set for a reloaded `listen` list, in its order: an entry
    /// whose name and address match a held socket keeps that socket (a copy
    /// of its descriptor); the others are bound now. Nothing changes when a
    /// bind fails. `self` keeps every descriptor it had, so the workers
    /// started with it are undisturbed; drop it once they have exited (a
    /// unix socket file of an entry no longer configured is removed then).
    pub(crate) fn reconcile(&mut self, listen: &[Listen]) -> Result<(Sockets, Changes), Error> {
        let mut held = Vec::with_capacity(listen.len());
        let mut created = Vec::new();
        let mut changes = Changes::default();
        for l in listen {
            match self.held.iter().find(|h| h.listen.as_ref() == Some(l)) {
                Some(kept) => held.push(Held {
                    name: kept.name.clone(),
                    describe: kept.describe.clone(),
                    tcp: kept.tcp,
                    listen: kept.listen.clone(),
                    fd: kept.fd.try_clone().map_err(Error::Descriptors)?,
                }),
                None if self
                    .held
                    .iter()
                    .any(|h| h.listen.as_ref().is_some_and(|held| held.addr == l.addr)) =>
                {
                    for path in &created {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(Error::Bind {
                        addr: l.addr.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "baton already holds this address under another name; renaming \
                                 a socket ({} now) needs a restart",
                                l.name
                            ),
                        ),
                    });
                }
                None => match bind(l, &mut created) {
                    Ok(h) => {
                        changes.added.push(format!("{}={}", h.name, h.describe));
                        held.push(h);
                    }
                    Err(source) => {
                        drop(held);
                        for path in &created {
                            let _ = std::fs::remove_file(path);
                        }
                        return Err(Error::Bind {
                            addr: l.addr.to_string(),
                            source,
                        });
                    }
                },
            }
        }
        for h in &self.held {
            if !listen.iter().any(|l| h.listen.as_ref() == Some(l)) {
                changes.removed.push(format!("{}={}", h.name, h.describe));
            }
        }
        let mut placed = match Sockets::place(held, Vec::new()) {
            Ok(placed) => placed,
            Err(e) => {
                for path in &created {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        // Kept unix socket files now belong to the new set.
        let (kept, gone): (Vec<PathBuf>, Vec<PathBuf>) = std::mem::take(&mut self.created)
            .into_iter()
            .partition(|p| {
                listen
                    .iter()
                    .any(|l| matches!(&l.addr, ListenAddr::Unix(path) if path == p))
            });
        self.created = gone;
        placed.created = created;
        placed.created.extend(kept);
        Ok((placed, changes))
    }

    /// Fills any slot of 3..3+n that was freed since (a retired socket set
    /// closed) with a placeholder; call before spawning a worker.
    pub(crate) fn ensure_reserved(&mut self) -> io::Result<()> {
        let more = sys::reserve_listen_range(self.held.len())?;
        self._reserved.extend(more);
        Ok(())
    }

    /// The held sockets in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Held> {
        self.held.iter()
    }

    /// Raw descriptors in order, for the worker's exec plan.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        self.held.iter().map(|h| h.fd.as_raw_fd()).collect()
    }

    /// `LISTEN_FDNAMES` for workers.
    pub(crate) fn names(&self) -> String {
        self.held
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Copies of the descriptors and their names, for a process that serves
    /// on the sockets itself (standalone mode).
    pub(crate) fn take(&self) -> io::Result<(Vec<OwnedFd>, Vec<String>)> {
        let mut fds = Vec::with_capacity(self.held.len());
        for h in &self.held {
            fds.push(h.fd.try_clone()?);
        }
        Ok((fds, self.held.iter().map(|h| h.name.clone()).collect()))
    }

    /// The first TCP listener's address.
    pub(crate) fn first_tcp(&self) -> Option<SocketAddr> {
        self.held.iter().find_map(|h| h.tcp)
    }

    /// The address of the TCP socket named `name`.
    pub(crate) fn tcp_named(&self, name: &str) -> Option<SocketAddr> {
        self.held
            .iter()
            .filter(|h| h.name == name)
            .find_map(|h| h.tcp)
    }
}

/// One held socket as it crosses the master's `execve`: the descriptor
/// stays open under the same number.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Carried {
    /// `LISTEN_FDNAMES` name.
    pub name: String,
    /// The descriptor number.
    pub fd: RawFd,
    /// For logs.
    pub describe: String,
    /// The bound TCP address.
    pub tcp: Option<SocketAddr>,
    /// The config entry, as written (`name=address`); absent for a socket
    /// from systemd.
    pub listen: Option<String>,
}

impl Sockets {
    /// The held sockets and the unix socket files this master created, for
    /// the next master; the descriptors are made inheritable by the caller.
    pub(crate) fn carry(&self) -> (Vec<Carried>, Vec<PathBuf>) {
        let held = self
            .held
            .iter()
            .map(|h| Carried {
                name: h.name.clone(),
                fd: h.fd.as_raw_fd(),
                describe: h.describe.clone(),
                tcp: h.tcp,
                listen: h.listen.as_ref().map(|l| format!("{}={}", l.name, l.addr)),
            })
            .collect();
        (held, self.created.clone())
    }

    /// Takes over the sockets a previous master held (same process, before
    /// its `execve`), already owned as `fds` (in `carried` order).
    pub(crate) fn resume(
        carried: Vec<Carried>,
        fds: Vec<OwnedFd>,
        created: Vec<PathBuf>,
    ) -> Result<Sockets, Error> {
        let held = carried
            .into_iter()
            .zip(fds)
            .map(|(c, fd)| Held {
                listen: c.listen.as_deref().and_then(|l| l.parse().ok()),
                name: c.name,
                describe: c.describe,
                tcp: c.tcp,
                fd,
            })
            .collect();
        Sockets::place(held, created)
    }

    /// Takes over bare descriptors and names (a previous master whose state
    /// could not be read in full): they are kept as they are, as systemd's
    /// would be.
    pub(crate) fn resume_bare(fds: Vec<(OwnedFd, String)>) -> Result<Sockets, Error> {
        Sockets::place(adopt(fds, "from the previous master")?, Vec::new())
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn adopt(fds: Vec<(OwnedFd, String)>, origin: &str) -> Result<Vec<Held>, Error> {
    fds.into_iter()
        .map(|(fd, name)| {
            let socket = Socket::from(fd);
            let local = socket.local_addr().map_err(Error::Adopt)?;
            let tcp = match socket.r#type().map_err(Error::Adopt)? {
                Type::STREAM => local.as_socket(),
                _ => None,
            };
            let describe = match (local.as_socket(), local.as_pathname()) {
                (Some(a), _) => a.to_string(),
                (None, Some(p)) => format!("unix:{}", p.display()),
                _ => "inherited socket".to_owned(),
            };
            Ok(Held {
                name,
                describe: format!("{describe} ({origin})"),
                tcp,
                listen: None,
                fd: socket.into(),
            })
        })
        .collect()
}

fn bind(listen: &Listen, created: &mut Vec<PathBuf>) -> io::Result<Held> {
    let (socket, tcp) = match &listen.addr {
        ListenAddr::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&(*addr).into())?;
            s.listen(BACKLOG)?;
            let bound = s.local_addr()?.as_socket();
            (s, bound)
        }
        ListenAddr::Udp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::DGRAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&(*addr).into())?;
            (s, None)
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            created.push(path.clone());
            s.listen(BACKLOG)?;
            (s, None)
        }
    };
    let describe = match (&listen.addr, tcp) {
        (ListenAddr::Tcp(_), Some(bound)) => bound.to_string(),
        (ListenAddr::Udp(_), _) => match socket.local_addr()?.as_socket() {
            Some(a) => format!("udp:{a}"),
            None => listen.addr.to_string(),
        },
        _ => listen.addr.to_string(),
    };
    Ok(Held {
        name: listen.name.clone(),
        describe,
        tcp,
        listen: Some(listen.clone()),
        fd: socket.into(),
    })
}

/// A unix socket file left by a master that died is removed; one that still
/// answers, or a file that is not a socket, is an error.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is accepting on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

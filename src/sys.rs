//! Every raw file descriptor and `unsafe` block of the crate lives here.
//!
//! The rest of the crate works with `OwnedFd`s and safe wrappers; this module
//! is the one place that turns raw numbers into owned descriptors, runs code
//! between `fork` and `exec`, reads socket credentials, and waits for
//! children.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Number of inherited sockets (fds 3, 4, …), as `sd_listen_fds(3)` reads it.
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// The PID the sockets are meant for: the worker's own.
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// The sockets' names, `:`-separated, in fd order.
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The first descriptor number of the systemd socket-activation protocol.
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// Sockets handed to this process with the socket-activation protocol
/// (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), as owned descriptors that are
/// close-on-exec from here on. `Ok(None)` when the variables are absent or name
/// another process (they were meant for our parent).
pub(crate) fn inherited_listen_fds() -> io::Result<Option<Vec<(OwnedFd, String)>>> {
    let Some(pid) = std::env::var_os(LISTEN_PID) else {
        return Ok(None);
    };
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let count = std::env::var(LISTEN_FDS)
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .ok_or_else(|| io::Error::other("LISTEN_FDS is missing or not a number"))?;
    let names: Vec<String> = std::env::var(LISTEN_FDNAMES)
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = Vec::with_capacity(count as usize);
    for i in 0..count {
        let raw = LISTEN_FDS_START + i;
        // SAFETY: fcntl(F_GETFD) only inspects the descriptor table entry.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(io::Error::other(format!(
                "LISTEN_FDS={count} but fd {raw} is not open"
            )));
        }
        // SAFETY: the protocol hands fds 3..3+LISTEN_FDS to this process and
        // nothing else in it owns them; we take ownership exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_cloexec(&fd)?;
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        fds.push((fd, name));
    }
    Ok(Some(fds))
}

/// Keeps descriptors 3..3+`count` occupied for the master's whole life
/// (with /dev/null where nothing else holds them), so that no descriptor
/// opened later (such as the pipe std uses to report a failed exec) can land
/// where a worker's sockets are dup2'd.
pub(crate) fn reserve_listen_range(count: usize) -> io::Result<Vec<OwnedFd>> {
    let null = std::fs::File::open("/dev/null")?;
    let mut held = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count as RawFd {
        // SAFETY: F_GETFD only inspects the descriptor table entry.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: dup3 onto a free slot; the new descriptor is owned here.
        if unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by dup3 and is owned by nobody else.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(held)
}

/// Marks every descriptor above stderr close-on-exec, so that whatever the
/// master inherited from its own parent (a shell's or CI runner's stray
/// descriptors) never reaches a worker. Descriptors are only flagged, not
/// closed: whoever opened them may still use them.
pub(crate) fn cloexec_inherited_fds() -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only change the descriptor's flags; a number
        // that was the listing's own (now closed) descriptor fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Duplicates `fd` to a close-on-exec descriptor numbered `min` or above, so
/// that handing sockets to a worker as fds 3.. can never overwrite a source
/// descriptor that is still to be copied.
pub(crate) fn dup_at_least(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor that nobody else owns.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Everything `execve` needs, prepared in the parent so that the child runs
/// no allocation between `fork` and `exec` (only async-signal-safe calls are
/// allowed there in a multi-threaded process).
pub(crate) struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits, filled in the child.
    listen_pid: Box<[u8; 40]>,
    env_ptrs: Vec<*const libc::c_char>,
    fds: Vec<RawFd>,
    parent: libc::pid_t,
    death_signal: libc::c_int,
}

// SAFETY: the raw pointers point into the heap buffers owned by the same
// struct, which are never mutated in the parent; the plan moves into the
// pre-exec closure as a whole.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; shared references never mutate.
unsafe impl Sync for ExecPlan {}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl ExecPlan {
    /// Prepares `path` with `argv` (argv[0] included) and `env`; `fds` become
    /// 3, 4, … in the child, whose `LISTEN_PID` is set to its own PID. The
    /// child gets `death_signal` if the master dies.
    pub(crate) fn new<'a>(
        path: &OsStr,
        argv: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
        fds: Vec<RawFd>,
        death_signal: i32,
    ) -> io::Result<ExecPlan> {
        let cstr = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| io::Error::other("argument or variable holds a NUL byte"))
        };
        let path = cstr(path.as_bytes())?;
        let argv: Vec<CString> = argv
            .into_iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = env
            .into_iter()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<_>>()?;
        let mut listen_pid = Box::new([0u8; 40]);
        listen_pid[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
        if !fds.is_empty() {
            env_ptrs.push(listen_pid.as_ptr().cast());
        }
        env_ptrs.push(std::ptr::null());
        Ok(ExecPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            listen_pid,
            env_ptrs,
            fds,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            death_signal,
        })
    }

    /// Runs in the child between `fork` and `exec`; returns only on failure.
    ///
    /// Only async-signal-safe calls (dup2, prctl, getppid, getpid, execve)
    /// and no allocation: errors are raw OS errors.
    pub(crate) fn exec_in_child(&mut self) -> io::Error {
        restore_nofile_in_child();
        for (i, &fd) in self.fds.iter().enumerate() {
            let target = LISTEN_FDS_START + i as RawFd;
            // SAFETY: dup2 onto the protocol's slot; the new descriptor is not
            // close-on-exec. Sources are all above the target range.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return io::Error::last_os_error();
            }
        }
        // SAFETY: prctl/getppid have no memory preconditions. A worker whose
        // master dies gets SIGTERM and drains instead of holding the sockets
        // forever; if the master died before this call, give up.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, self.death_signal) < 0 {
                return io::Error::last_os_error();
            }
            if libc::getppid() != self.parent {
                // The master exited while the worker was starting.
                return io::Error::from_raw_os_error(libc::ESRCH);
            }
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        write_decimal(&mut self.listen_pid[LISTEN_PID_PREFIX.len()..], pid as u64);
        // SAFETY: all pointers point to NUL-terminated buffers owned by `self`,
        // and both arrays end in a null pointer.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}

impl ExecPlan {
    /// Makes `cmd` exec this plan in the child instead of its own program
    /// (the command's stdio, directory and process group still apply).
    pub(crate) fn attach(mut self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child and only makes the
        // async-signal-safe calls of `exec_in_child`, without allocating;
        // it never returns on success because it execs.
        unsafe {
            cmd.pre_exec(move || Err(self.exec_in_child()));
        }
    }
}

/// Whether the child `pid` has exited, without reaping it
/// (`waitid(P_PID, WEXITED | WNOHANG | WNOWAIT)`): until it is reaped its
/// PID and process group id stay reserved, so signalling them cannot reach
/// a recycled process.
pub(crate) fn has_exited(pid: Pid) -> io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The first exited child of this process not reaped yet, if any, left
/// unreaped (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`).
pub(crate) fn first_exited_child() -> Option<Pid> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    waitid(Id::All, flags).ok()?.pid()
}

/// Reaps the exited child `pid`, if it has exited.
pub(crate) fn reap(pid: Pid) -> io::Result<WaitStatus> {
    waitpid(pid, Some(WaitPidFlag::WNOHANG)).map_err(io::Error::from)
}

/// Reaps the child `pid`, which has exited (see [`has_exited`]), and
/// returns its exit status.
pub(crate) fn reap_exited(pid: Pid) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local integer.
        let got = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if got == pid.as_raw() {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets (`inherit = false`) or clears close-on-exec on a descriptor this
/// process holds, so that it survives (or not) the master's own `execve`.
pub(crate) fn set_inheritable(fd: RawFd, inherit: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change the descriptor's flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if inherit {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Takes ownership of a descriptor handed over by number across the
/// master's `execve`, checking that it is open, and marks it close-on-exec.
/// The caller makes sure each number is taken once.
pub(crate) fn take_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table entry.
    if raw <= 2 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::other(format!("descriptor {raw} is not open")));
    }
    // SAFETY: the previous master handed this descriptor to us by number,
    // nothing else in this process owns it, and the caller takes each
    // number once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(&fd)?;
    Ok(fd)
}

/// An anonymous in-memory file (`memfd_create`, close-on-exec) holding
/// `bytes`, positioned at its start.
pub(crate) fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in a memfd name"))?;
    // SAFETY: memfd_create returns a new descriptor or -1.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created and is owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file.into())
}

/// The signals the master handles; blocked across its own `execve` so that
/// none arrives while no handler is installed (they stay pending).
const MASTER_SIGNALS: [nix::sys::signal::Signal; 6] = {
    use nix::sys::signal::Signal::*;
    [SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGCHLD]
};

/// Blocks (`true`) or unblocks the master's signals in the calling thread.
pub(crate) fn block_master_signals(block: bool) -> io::Result<()> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in MASTER_SIGNALS {
        set.add(s);
    }
    let how = if block {
        SigmaskHow::SIG_BLOCK
    } else {
        SigmaskHow::SIG_UNBLOCK
    };
    pthread_sigmask(how, Some(&set), None).map_err(io::Error::from)
}

/// Replaces this process's program (`execve`); returns only on failure.
pub(crate) fn execve(
    path: &std::path::Path,
    argv: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> io::Error {
    let cstr = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| io::Error::other("argument or variable holds a NUL byte"))
    };
    let prepared = (|| {
        let path = cstr(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok::<_, io::Error>((path, argv, env))
    })();
    match prepared {
        Ok((path, argv, env)) => match nix::unistd::execve(&path, &argv, &env) {
            Ok(never) => match never {},
            Err(e) => e.into(),
        },
        Err(e) => e,
    }
}

/// Whether `pid` (a child, maybe a zombie) is in this process's group.
pub(crate) fn in_own_group(pid: Pid) -> bool {
    nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == nix::unistd::getpgrp())
}

/// The real user id of this process.
pub(crate) fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): the
/// orphans of its descendants are reparented to it instead of to init.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Writes `n` as decimal digits and a terminating NUL into `buf` without
/// allocating.
fn write_decimal(buf: &mut [u8], mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
}

/// Receives one datagram and the sender's PID from a socket with
/// `SO_PASSCRED` set. Descriptors passed along (as sd_notify's `FDSTORE`
/// would) are closed: baton does not keep them.
pub(crate) fn recv_with_pid(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; 16]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut pid = None;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        match cmsg {
            ControlMessageOwned::ScmCredentials(creds) => pid = u32::try_from(creds.pid()).ok(),
            ControlMessageOwned::ScmRights(fds) => {
                for raw in fds {
                    // SAFETY: the kernel just installed these descriptors in
                    // our table for us; nobody else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            _ => {}
        }
    }
    Ok((msg.bytes, pid))
}

/// `file` mapped read-only (private, no copy): the reference binary of a
/// delta patch, so applying one does not read it into a fresh buffer.
///
/// Whoever changes the file while it is mapped changes what is read (the
/// result is then caught by its sha256), and truncating it raises SIGBUS on
/// access: the callers map installed releases, which are never rewritten in
/// place (they are replaced by rename, and a running executable cannot be
/// opened for writing at all).
pub(crate) fn map_readonly(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private; see above for what a
    // concurrent writer can do, which the callers rule out or detect.
    unsafe { memmap2::Mmap::map(file) }
}

/// The soft `RLIMIT_NOFILE` baton started with, once [`raise_nofile`]
/// raised it (0: never raised). Children get it back.
static CHILD_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so that the sockets,
/// pipes and files a busy master holds do not meet a low default (often
/// 1024, or less under a container runtime). Children started afterwards
/// get the original soft limit back, as systemd advises: a program using
/// `select()` breaks on descriptors above 1024. Returns (before, now).
pub(crate) fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } < 0 {
            return Err(io::Error::last_os_error());
        }
        CHILD_NOFILE.store(before, std::sync::atomic::Ordering::Relaxed);
    }
    Ok((before, limit.rlim_max))
}

/// In a forked child before exec: the soft descriptor limit baton started
/// with. Async-signal-safe (one atomic load, getrlimit, setrlimit).
fn restore_nofile_in_child() {
    let soft = CHILD_NOFILE.load(std::sync::atomic::Ordering::Relaxed);
    if soft == 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls take structs we own; no allocation.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = soft.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_nul_terminated() {
        let mut buf = [0xffu8; 24];
        write_decimal(&mut buf, 0);
        assert_eq!(&buf[..2], b"0\0");
        write_decimal(&mut buf, 4_194_304);
        assert_eq!(&buf[..8], b"4194304\0");
    }
}

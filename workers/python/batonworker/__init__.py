"""batonworker: Python services under baton, standard library only.

The worker protocol (docs/worker-protocol.md in the baton repository):

- sockets arrive as descriptors 3, 4, ... with ``LISTEN_FDS``, ``LISTEN_PID``
  (this process's PID) and ``LISTEN_FDNAMES``, as systemd socket activation
  passes them;
- readiness is ``READY=1`` sent as a datagram to the unix socket named by
  ``NOTIFY_SOCKET``, as ``sd_notify(3)`` sends it;
- on the stop signal (``BATON_STOP_SIGNAL``, SIGTERM by default) the worker
  stops accepting, answers the next request on each open keep-alive
  connection with ``Connection: close``, closes a connection only once it
  has been idle for a grace period, and exits when the requests in flight
  are done.

``listeners()``, ``named()``, ``packet_sockets()``, ``ready()``, ``status()``
and ``notify()`` speak the protocol; ``batonworker.gunicorn.ThreadWorker``
and ``batonworker.uvicorn`` drain gunicorn and uvicorn by the rule above.
"""

import os
import signal
import socket
import threading

__all__ = [
    "NoSocketsError",
    "ProtocolError",
    "Socket",
    "sockets",
    "listeners",
    "named",
    "packet_sockets",
    "ready",
    "status",
    "notify",
    "stop_signals",
]

__version__ = "0.1.0"

# The first inherited descriptor, as sd_listen_fds(3) defines it.
LISTEN_FDS_START = 3


class ProtocolError(RuntimeError):
    """The environment does not follow the worker protocol."""


class NoSocketsError(ProtocolError):
    """No sockets were passed to this process: LISTEN_FDS is not set (or 0).

    The helper never binds a port of its own: run the program under
    ``baton run`` (or systemd socket activation)."""


class Socket:
    """One inherited socket: its ``name`` from LISTEN_FDNAMES ("unknown"
    when the variable is not set), the descriptor number ``fd`` it arrived
    as (3, 4, ...; that descriptor is closed), and ``socket``, a
    ``socket.socket`` on a close-on-exec duplicate. ``stream`` tells a
    stream or seqpacket socket (a listener) from a datagram socket."""

    __slots__ = ("name", "fd", "socket", "stream")

    def __init__(self, name, fd, sock, stream):
        self.name = name
        self.fd = fd
        self.socket = sock
        self.stream = stream

    def __repr__(self):
        return f"Socket(name={self.name!r}, fd={self.fd}, socket={self.socket!r})"


_lock = threading.Lock()
_taken = None  # (sockets, error) once taken
_notify_path = None  # NOTIFY_SOCKET, once taken out of the environment


def _parse_listen_env(environ, pid):
    """Checks LISTEN_FDS and LISTEN_PID and reads LISTEN_FDNAMES: how many
    descriptors there are, and their names."""
    fds = environ.get("LISTEN_FDS", "")
    if fds == "":
        raise NoSocketsError(
            "batonworker: LISTEN_FDS is not set: no sockets were passed to this process; "
            "run under `baton run` (or systemd socket activation); the helper never binds a port itself"
        )
    try:
        count = int(fds)
    except ValueError:
        count = -1
    if count < 0:
        raise ProtocolError(f"batonworker: LISTEN_FDS={fds!r} is not a count of sockets")
    if count == 0:
        raise NoSocketsError(
            "batonworker: LISTEN_FDS=0: no sockets were passed to this process; "
            "run under `baton run` with at least one `listen` address"
        )
    owner = environ.get("LISTEN_PID", "")
    if owner == "":
        raise ProtocolError(
            "batonworker: LISTEN_FDS is set but LISTEN_PID is not; the sockets may be meant for "
            "another process; run under `baton run`"
        )
    if owner != str(pid):
        raise ProtocolError(
            f"batonworker: LISTEN_PID={owner}: the sockets are meant for process {owner}, not this one "
            f"({pid}); a wrapper script must exec the program so that it keeps the worker's PID"
        )
    names = ["unknown"] * count
    given = environ.get("LISTEN_FDNAMES", "")
    if given:
        parts = given.split(":")
        if len(parts) != count:
            raise ProtocolError(f"batonworker: LISTEN_FDNAMES has {len(parts)} names for {count} sockets")
        names = parts
    return count, names


def _socket_from_fd(fd, name):
    """A socket object on a close-on-exec duplicate of fd; fd is closed."""
    try:
        dup = os.dup(fd)
    except OSError as e:
        raise ProtocolError(f"batonworker: inherited descriptor {fd} ({name}) is not open: {e}") from e
    try:
        kind = socket.socket(fileno=dup)
    except OSError as e:
        os.close(dup)
        raise ProtocolError(f"batonworker: inherited descriptor {fd} ({name}) is not a socket: {e}") from e
    os.close(fd)
    stream = kind.type in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
    if not stream and kind.type != socket.SOCK_DGRAM:
        kind.close()
        raise ProtocolError(f"batonworker: inherited descriptor {fd} ({name}): socket type {kind.type} is not supported")
    return Socket(name, fd, kind, stream)


def sockets():
    """Every inherited socket (``Socket``), in descriptor order.

    The first call takes them: it checks LISTEN_PID against this process,
    makes socket objects of descriptors 3, 4, ..., closes the originals and
    unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (as sd_listen_fds(3)
    does with unset_environment), so that programs this one starts do not
    take them too. Later calls return the same sockets (or raise the same
    error). Raises ``NoSocketsError`` when LISTEN_FDS is not set (run
    outside baton) and ``ProtocolError`` when the sockets are meant for
    another process."""
    global _taken
    with _lock:
        if _taken is None:
            try:
                count, names = _parse_listen_env(os.environ, os.getpid())
                taken = []
                try:
                    for i in range(count):
                        taken.append(_socket_from_fd(LISTEN_FDS_START + i, names[i]))
                except ProtocolError:
                    for s in taken:
                        s.socket.close()
                    raise
                _taken = (taken, None)
            except ProtocolError as e:
                _taken = (None, e)
            finally:
                for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                    os.environ.pop(var, None)
        taken, error = _taken
    if error is not None:
        raise error
    return list(taken)


def listeners():
    """The inherited stream sockets (TCP, unix), in descriptor order, as
    listening ``socket.socket`` objects: ``listeners()[0]`` is always there
    when this returns. Datagram sockets are left out (``packet_sockets()``).
    Raises ``NoSocketsError`` outside baton (LISTEN_FDS is not set)."""
    all_ = sockets()
    ls = [s.socket for s in all_ if s.stream]
    if not ls:
        raise ProtocolError(f"batonworker: none of the {len(all_)} inherited sockets is a stream socket")
    return ls


def named():
    """The inherited stream sockets by their LISTEN_FDNAMES name (baton names
    them "name=127.0.0.1:8080" in its config as the name, "listen0",
    "listen1", ... otherwise). Where two share a name, the first is kept."""
    out = {}
    for s in sockets():
        if s.stream and s.name not in out:
            out[s.name] = s.socket
    return out


def packet_sockets():
    """The inherited datagram sockets (UDP, unix datagram) by name."""
    out = {}
    for s in sockets():
        if not s.stream and s.name not in out:
            out[s.name] = s.socket
    return out


def _take_notify_socket():
    """Takes NOTIFY_SOCKET out of the environment and keeps it for
    ``notify()``: programs this one starts (and libraries that notify on
    their own, such as gunicorn's arbiter, which says READY=1 before its
    workers serve) no longer see it."""
    global _notify_path
    with _lock:
        path = os.environ.pop("NOTIFY_SOCKET", None)
        if path:
            _notify_path = path
        return _notify_path


def notify_socket():
    """The NOTIFY_SOCKET path notifications go to, or None."""
    return _notify_path or os.environ.get("NOTIFY_SOCKET") or None


def notify(state):
    """Sends one sd_notify(3) datagram, newline-separated KEY=VALUE
    assignments such as "READY=1\\nSTATUS=serving", to NOTIFY_SOCKET (a path,
    or "@name" for the abstract namespace). Returns True when sent, False
    without NOTIFY_SOCKET (run on its own, or by a supervisor that does not
    listen); raises OSError when the socket cannot be reached."""
    path = notify_socket()
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
            s.sendall(state.encode() if isinstance(state, str) else state)
        except OSError as e:
            raise OSError(e.errno, f"batonworker: NOTIFY_SOCKET {notify_socket()}: {e.strerror}") from e
    return True


def ready(status=None):
    """Tells the master that this worker serves: READY=1 (with STATUS=...
    when given). Only then does the master ask the old worker to drain, so
    call it once every listener accepts. Without NOTIFY_SOCKET it does
    nothing and returns False."""
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def status(text):
    """Sends a one-line status, STATUS=..., which baton records for the
    worker (and systemd shows in `systemctl status`). Without NOTIFY_SOCKET
    it does nothing and returns False."""
    return notify(f"STATUS={_one_line(text)}")


def _one_line(text):
    return " ".join(str(text).splitlines())


_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM", "SIGWINCH")


def stop_signals():
    """The signals that start the drain: SIGTERM, SIGINT and the one named by
    BATON_STOP_SIGNAL ("SIGQUIT", "QUIT" or "3"), which baton sets from its
    stop_signal setting."""
    sigs = [signal.SIGTERM, signal.SIGINT]
    name = os.environ.get("BATON_STOP_SIGNAL", "").strip()
    if not name:
        return sigs
    sig = _parse_signal(name)
    if sig not in sigs:
        sigs.append(sig)
    return sigs


def _parse_signal(name):
    upper = name.strip().upper()
    if upper.isdigit():
        for n in _SIGNALS:
            if int(getattr(signal, n)) == int(upper):
                return getattr(signal, n)
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    if upper in _SIGNALS:
        return getattr(signal, upper)
    raise ProtocolError(
        f"batonworker: BATON_STOP_SIGNAL={name!r} is not a signal this helper drains on "
        f"(SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, ...)"
    )


def idle_grace(default=1.0):
    """The idle grace in seconds: BATONWORKER_IDLE_GRACE when set (such as
    "1.5"), else ``default``."""
    raw = os.environ.get("BATONWORKER_IDLE_GRACE", "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw.rstrip("s"))
    except ValueError:
        raise ProtocolError(f"batonworker: BATONWORKER_IDLE_GRACE={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ProtocolError(f"batonworker: BATONWORKER_IDLE_GRACE={raw!r} is negative")
    return value

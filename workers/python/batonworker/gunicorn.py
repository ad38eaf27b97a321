"""A gunicorn worker class that drains by baton's rule.

    gunicorn --worker-class batonworker.gunicorn.ThreadWorker --threads 8 app:app

under ``baton run`` (no ``--bind``: gunicorn's arbiter finds the sockets in
LISTEN_FDS itself). The arbiter is baton's worker process; its workers are
gunicorn's. ``ThreadWorker`` is gunicorn's ``gthread`` worker with two
changes:

- Readiness: gunicorn's arbiter says READY=1 as soon as it has its sockets,
  before any worker has loaded the application, so a new version that
  cannot start would already have made baton drain the old one. Loading
  this class takes NOTIFY_SOCKET from the environment (gunicorn calls the
  class's ``setup()`` then) and the arbiter sends READY=1 itself once each
  of its ``--workers`` reports that it accepts.
- Drain: on SIGTERM (what the arbiter sends its workers on a graceful stop)
  a worker stops accepting, answers the next request on each open
  keep-alive connection with ``Connection: close``, closes a connection
  only after it has been idle for ``idle_grace`` seconds (1 s; the
  environment variable BATONWORKER_IDLE_GRACE, or a subclass, sets
  another), and exits once the requests in flight are done (within
  gunicorn's ``--graceful-timeout``). gunicorn 20.1 to 23 close idle
  keep-alive connections at once instead, racing each client's next
  request; gunicorn 27 lingers 2 s, which this class sets to the grace.

Tested with gunicorn 20.1.0, 23.0.0 and 27.0.1. Keep baton's stop_signal at
SIGTERM: SIGINT and SIGQUIT make gunicorn's arbiter stop at once.
"""

import errno
import os
import select
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn.workers import gthread

import batonworker

__all__ = ["ThreadWorker"]


class _Readiness:
    """The arbiter's side of readiness: its workers each send their PID on a
    datagram socket pair made before they are forked; a thread in the
    arbiter counts them and sends READY=1 (from the arbiter's PID, which
    baton checks) once as many as ``--workers`` have reported."""

    lock = threading.Lock()
    reader = None
    writer = None

    @classmethod
    def start(cls, expected, log):
        with cls.lock:
            if cls.writer is not None or not batonworker.notify_socket():
                return
            cls.reader, cls.writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            cls.writer.setblocking(False)
            t = threading.Thread(target=cls._wait, args=(cls.reader, max(1, expected), log),
                                 name="batonworker-ready", daemon=True)
            t.start()

    @staticmethod
    def _wait(reader, expected, log):
        seen = set()
        announced = False
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            try:
                seen.add(int(data))
            except ValueError:
                continue
            if announced or len(seen) < expected:
                continue
            announced = True
            try:
                batonworker.ready(f"gunicorn: {len(seen)} workers serving")
            except OSError as e:
                log.error("batonworker: READY=1 was not delivered: %s", e)

    @classmethod
    def report(cls):
        """In a worker: says that it accepts (never blocks)."""
        if cls.writer is None:
            return
        try:
            cls.writer.send(str(os.getpid()).encode())
        except OSError:
            pass


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker, draining by baton's rule (see the module
    documentation). ``idle_grace`` is how long a keep-alive connection must
    have been idle before a draining worker closes it."""

    idle_grace = 1.0

    @classmethod
    def setup(cls):
        # gunicorn calls this when it loads the worker class, in the arbiter
        # before it starts: from here on only _Readiness says READY=1.
        parent = getattr(super(), "setup", None)
        if parent is not None:
            parent()
        batonworker._take_notify_socket()

    @classmethod
    def check_config(cls, cfg, log):
        super().check_config(cfg, log)
        if _shape() is None:
            log.warning("batonworker: this gunicorn's gthread worker is not one the helper knows "
                        "(it is tested with 20.1, 23 and 27): it drains as gunicorn does")
        # Called by the arbiter once it has its sockets, before it forks.
        _Readiness.start(cfg.workers, log)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported = False
        self._grace = batonworker.idle_grace(self.idle_grace)

    def notify(self):
        # The heartbeat, first called once the listeners are in the poller.
        super().notify()
        if not self._reported:
            self._reported = True
            _Readiness.report()

    def run(self):
        shape = _shape()
        if shape == "linger":
            # gunicorn 27 keeps kept-alive connections open for
            # STOP_KEEPALIVE_LINGER when stopping and answers a request on
            # one with "Connection: close": the rule, with its own grace.
            gthread.STOP_KEEPALIVE_LINGER = self._grace
            return super().run()
        if shape == "legacy":
            return self._run_legacy()
        return super().run()

    # gunicorn 20.1 to 26: the futures-and-_keep loop, with a drain added.

    def _run_legacy(self):
        for sock in self.sockets:
            sock.setblocking(False)
            # Captured once: a listener closed later has no name.
            server = sock.getsockname()
            self.poller.register(sock, selectors.EVENT_READ, partial(self.accept, server))
        # The signal wakeup pipe: a stop signal ends the select at once.
        wakeup = self.PIPE[0] if self.PIPE else None
        if wakeup is not None:
            self.poller.register(wakeup, selectors.EVENT_READ, _drain_pipe)

        while self.alive:
            self.notify()
            if self.nr_conns < self.worker_connections:
                self._dispatch(1.0)
                result = futures.wait(self.futures, timeout=0, return_when=futures.FIRST_COMPLETED)
            else:
                result = futures.wait(self.futures, timeout=1.0, return_when=futures.FIRST_COMPLETED)
            for fut in result.done:
                self.futures.remove(fut)
            if not self.is_parent_alive():
                break
            self.murder_keepalived()

        self._drain_legacy()

        self.tpool.shutdown(False)
        self.poller.close()
        for s in self.sockets:
            s.close()
        futures.wait(self.futures, timeout=self.cfg.graceful_timeout)

    def _dispatch(self, timeout):
        try:
            events = self.poller.select(timeout)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise
            return
        for key, _ in events:
            key.data(key.fileobj)

    def _drain_legacy(self):
        # Stop accepting. The listening sockets stay open in the other
        # processes: connections still in the backlog go to the new worker.
        for sock in self.sockets:
            try:
                self.poller.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
        # Idle keep-alive connections stay for the grace: a request on one
        # is answered with "Connection: close" (handle_request does that
        # once alive is False), then the connection closes.
        cap = time.time() + self._grace
        with self._lock:
            for conn in self._keep:
                conn.timeout = min(conn.timeout, cap)
        limit = time.time() + self.cfg.graceful_timeout
        while self.nr_conns > 0 and time.time() < limit:
            self.notify()
            self._dispatch(0.05)
            result = futures.wait(self.futures, timeout=0, return_when=futures.FIRST_COMPLETED)
            for fut in result.done:
                self.futures.remove(fut)
            self.murder_keepalived()

    def murder_keepalived(self):
        # A connection whose time is up but whose client has just sent its
        # next request is not idle: closing it would reset that request.
        # Give it a moment, so that the poller hands the request over.
        if _shape() == "legacy":
            now = time.time()
            with self._lock:
                for conn in self._keep:
                    if conn.timeout > now:
                        break
                    if _readable(conn.sock):
                        conn.timeout = now + 0.5
        return super().murder_keepalived()

    def finish_request(self, *args):
        # gunicorn 20.1 to 23 close a connection whose response announced
        # keep-alive when the worker stops while the request was in flight:
        # the client may already be sending its next request. Keep it for
        # the grace. (gunicorn 27 keeps it itself; its finish_request takes
        # (conn, fs).)
        if len(args) != 1 or self.alive or _shape() != "legacy" or args[0].cancelled():
            return super().finish_request(*args)
        fs = args[0]
        try:
            keepalive, conn = fs.result()
        except Exception:
            return super().finish_request(fs)
        if not keepalive:
            return super().finish_request(fs)
        try:
            conn.sock.setblocking(False)
            conn.timeout = time.time() + min(self._grace, self.cfg.keepalive or self._grace)
            readable = getattr(self, "on_client_socket_readable", None) or getattr(self, "reuse_connection")
            with self._lock:
                self._keep.append(conn)
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(readable, conn))
        except Exception:
            self.nr_conns -= 1
            conn.close()


def _readable(sock):
    """Whether a request (or the client's close) waits on ``sock``."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _drain_pipe(fileobj):
    try:
        while os.read(fileobj, 64):
            pass
    except OSError:
        pass


def _shape():
    """Which gthread worker this gunicorn has: "linger" (27: it keeps
    kept-alive connections for STOP_KEEPALIVE_LINGER when stopping),
    "legacy" (20.1 to 23: futures, _keep and murder_keepalived), or None."""
    if hasattr(gthread, "STOP_KEEPALIVE_LINGER") and hasattr(gthread.ThreadWorker, "_cap_keepalive"):
        return "linger"
    w = gthread.ThreadWorker
    if (hasattr(w, "murder_keepalived") and hasattr(w, "enqueue_req")
            and (hasattr(w, "on_client_socket_readable") or hasattr(w, "reuse_connection"))
            and not hasattr(gthread, "PollableMethodQueue")):
        return "legacy"
    return None

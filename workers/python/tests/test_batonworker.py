"""Unit tests for batonworker's protocol calls: python3 -m unittest (from
workers/python). Real sockets and real child processes; nothing listens
beyond 127.0.0.1."""

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import batonworker  # noqa: E402

TIMEOUT = 30


def run_child(code, env, pass_fds=(), preexec=None):
    """Runs `code` in a child Python with batonworker importable; returns
    (exit status, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")}
    full_env["PYTHONPATH"] = HERE
    full_env.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, pass_fds=pass_fds,
                       capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=preexec)
    return p.returncode, p.stdout, p.stderr


def in_worker(code, listeners, names=None, extra_env=None, listen_pid=None):
    """Runs `code` as a worker would be run: `listeners` as fds 3, 4, ...,
    LISTEN_FDS, LISTEN_PID (the child's own PID unless given) and
    LISTEN_FDNAMES set."""
    fds = [s.fileno() for s in listeners]
    dups = " ".join(f"{3 + i}<&{fd}" for i, fd in enumerate(fds))
    env = {"CODE": textwrap.dedent(code), "LISTEN_FDS": str(len(fds))}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    env.update(extra_env or {})
    pid = "$$" if listen_pid is None else str(listen_pid)
    script = f'exec {dups}; LISTEN_PID={pid} exec {sys.executable} -c "$CODE"'
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")}
    full_env["PYTHONPATH"] = HERE
    full_env.update(env)
    p = subprocess.run(["sh", "-c", script], env=full_env, pass_fds=fds, capture_output=True, text=True,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def tcp_listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


class ListenersTest(unittest.TestCase):
    def test_takes_the_inherited_sockets_in_order_with_their_names(self):
        a, b = tcp_listener(), tcp_listener()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        with a, b, u:
            code, out, err = in_worker("""
                import os, batonworker
                ls = batonworker.listeners()
                print(len(ls), *[l.getsockname()[1] for l in ls])
                print(sorted(batonworker.named()), sorted(batonworker.packet_sockets()))
                print(batonworker.listeners() == ls)
                # the environment is unset; the originals are closed, the
                # duplicates are close-on-exec
                print([os.environ.get(v) for v in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")])
                # fds 3, 4, 5 are closed or reused by the duplicates
                mine = {s.socket.fileno() for s in batonworker.sockets()}
                left = []
                for fd in (3, 4, 5):
                    try:
                        os.fstat(fd)
                    except OSError:
                        continue
                    if fd not in mine:
                        left.append(fd)
                print(left, all(not s.socket.get_inheritable() for s in batonworker.sockets()))
            """, [a, b, u], names="web:admin:dns")
            self.assertEqual(code, 0, err)
            lines = out.splitlines()
            self.assertEqual(lines[0], f"2 {a.getsockname()[1]} {b.getsockname()[1]}")
            self.assertEqual(lines[1], "['admin', 'web'] ['dns']")
            self.assertEqual(lines[2], "True")
            self.assertEqual(lines[3], "[None, None, None]")
            self.assertEqual(lines[4], "[] True")

    def test_a_listener_accepts(self):
        a = tcp_listener()
        with a:
            port = a.getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            client.sendall(b"ping")
            with client:
                code, out, err = in_worker("""
                    import batonworker
                    l = batonworker.listeners()[0]
                    c, _ = l.accept()
                    print(c.recv(4).decode())
                """, [a])
            self.assertEqual(code, 0, err)
            self.assertEqual(out.strip(), "ping")

    def test_names_default_to_unknown(self):
        a = tcp_listener()
        with a:
            code, out, err = in_worker("import batonworker; print(list(batonworker.named()))", [a])
            self.assertEqual(code, 0, err)
            self.assertEqual(out.strip(), "['unknown']")

    def test_outside_baton_the_error_names_the_variable_and_baton_run(self):
        code, out, err = run_child("""
            import batonworker
            try:
                batonworker.listeners()
            except batonworker.NoSocketsError as e:
                print(e)
            try:
                batonworker.listeners()
            except batonworker.NoSocketsError as e:
                print("again:", e)
        """, {})
        self.assertEqual(code, 0, err)
        first, again = out.splitlines()
        self.assertIn("LISTEN_FDS is not set", first)
        self.assertIn("run under `baton run`", first)
        self.assertEqual(again, "again: " + first)

    def test_sockets_meant_for_another_process(self):
        a = tcp_listener()
        with a:
            code, out, err = in_worker("""
                import batonworker
                try:
                    batonworker.listeners()
                except batonworker.ProtocolError as e:
                    print(e)
            """, [a], listen_pid=1)
        self.assertEqual(code, 0, err)
        self.assertIn("LISTEN_PID=1", out)
        self.assertIn("must exec the program", out)

    def test_listen_fds_without_listen_pid(self):
        code, out, err = run_child("""
            import batonworker
            try:
                batonworker.listeners()
            except batonworker.ProtocolError as e:
                print(e)
        """, {"LISTEN_FDS": "1"})
        self.assertEqual(code, 0, err)
        self.assertIn("LISTEN_PID is not", out)
        self.assertIn("baton run", out)

    def test_bad_environment(self):
        pid = os.getpid()
        cases = [
            ({"LISTEN_FDS": "x", "LISTEN_PID": str(pid)}, "is not a count"),
            ({"LISTEN_FDS": "0", "LISTEN_PID": str(pid)}, "LISTEN_FDS=0"),
            ({"LISTEN_FDS": "2", "LISTEN_PID": str(pid), "LISTEN_FDNAMES": "a"}, "1 names for 2 sockets"),
        ]
        for env, want in cases:
            with self.subTest(env=env):
                with self.assertRaises(batonworker.ProtocolError) as cm:
                    batonworker._parse_listen_env(env, pid)
                self.assertIn(want, str(cm.exception))
        self.assertEqual(batonworker._parse_listen_env({"LISTEN_FDS": "2", "LISTEN_PID": str(pid),
                                                        "LISTEN_FDNAMES": "a:b"}, pid), (2, ["a", "b"]))

    def test_a_descriptor_that_is_not_a_socket(self):
        r, w = os.pipe()
        try:
            code, out, err = in_worker("""
                import batonworker
                try:
                    batonworker.listeners()
                except batonworker.ProtocolError as e:
                    print(e)
            """, [_Fd(r)])
        finally:
            os.close(r)
            os.close(w)
        self.assertEqual(code, 0, err)
        self.assertIn("descriptor 3 (unknown) is not a socket", out)


class _Fd:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


class NotifyTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "notify")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.server.bind(self.path)
        self.server.settimeout(TIMEOUT)

    def tearDown(self):
        self.server.close()
        self.dir.cleanup()

    def test_ready_and_status(self):
        code, out, err = run_child("""
            import batonworker
            print(batonworker.ready(), batonworker.status("serving\\n2 listeners"),
                  batonworker.ready("up"))
        """, {"NOTIFY_SOCKET": self.path})
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "True True True")
        self.assertEqual(self.server.recv(256), b"READY=1")
        self.assertEqual(self.server.recv(256), b"STATUS=serving 2 listeners")
        self.assertEqual(self.server.recv(256), b"READY=1\nSTATUS=up")

    def test_abstract_socket(self):
        name = f"batonworker-test-{os.getpid()}"
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abstract.bind("\0" + name)
        abstract.settimeout(TIMEOUT)
        with abstract:
            code, _, err = run_child("import batonworker; batonworker.ready()", {"NOTIFY_SOCKET": "@" + name})
            self.assertEqual(code, 0, err)
            self.assertEqual(abstract.recv(64), b"READY=1")

    def test_without_notify_socket_it_does_nothing(self):
        code, out, err = run_child("import batonworker; print(batonworker.ready(), batonworker.status('x'))", {})
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "False False")

    def test_an_unreachable_socket_is_an_error_naming_it(self):
        missing = os.path.join(self.dir.name, "missing")
        code, out, err = run_child("""
            import batonworker
            try:
                batonworker.ready()
            except OSError as e:
                print(e)
        """, {"NOTIFY_SOCKET": missing})
        self.assertEqual(code, 0, err)
        self.assertIn("NOTIFY_SOCKET " + missing, out)

    def test_taken_notify_socket_is_kept_for_notify_but_not_inherited(self):
        code, out, err = run_child("""
            import os, subprocess, sys, batonworker
            batonworker._take_notify_socket()
            print(os.environ.get("NOTIFY_SOCKET"))
            batonworker.ready()
        """, {"NOTIFY_SOCKET": self.path})
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "None")
        self.assertEqual(self.server.recv(64), b"READY=1")


class SettingsTest(unittest.TestCase):
    def test_stop_signals(self):
        import signal
        cases = {"": [signal.SIGTERM, signal.SIGINT], "SIGQUIT": [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT],
                 "quit": [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], "15": [signal.SIGTERM, signal.SIGINT],
                 "10": [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]}
        for name, want in cases.items():
            with self.subTest(name=name):
                os.environ["BATON_STOP_SIGNAL"] = name
                try:
                    self.assertEqual(batonworker.stop_signals(), want)
                finally:
                    del os.environ["BATON_STOP_SIGNAL"]
        os.environ["BATON_STOP_SIGNAL"] = "SIGKILL"
        try:
            with self.assertRaises(batonworker.ProtocolError):
                batonworker.stop_signals()
        finally:
            del os.environ["BATON_STOP_SIGNAL"]

    def test_idle_grace(self):
        self.assertEqual(batonworker.idle_grace(), 1.0)
        for raw, want in (("2.5", 2.5), ("0", 0.0), ("3s", 3.0)):
            os.environ["BATONWORKER_IDLE_GRACE"] = raw
            try:
                self.assertEqual(batonworker.idle_grace(), want)
            finally:
                del os.environ["BATONWORKER_IDLE_GRACE"]
        for raw in ("x", "-1"):
            os.environ["BATONWORKER_IDLE_GRACE"] = raw
            try:
                with self.assertRaises(batonworker.ProtocolError):
                    batonworker.idle_grace()
            finally:
                del os.environ["BATONWORKER_IDLE_GRACE"]


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


class DriversTest(unittest.TestCase):
    @unittest.skipUnless(_has("uvicorn"), "uvicorn is not installed here")
    def test_uvicorn_outside_baton_says_so(self):
        code, _, err = run_child("""
            import sys
            sys.argv = ["batonworker.uvicorn", "app:app"]
            import batonworker.uvicorn
            batonworker.uvicorn.main()
        """, {})
        self.assertEqual(code, 1, err)
        self.assertIn("LISTEN_FDS is not set", err)
        self.assertIn("run under `baton run`", err)

    @unittest.skipUnless(_has("gunicorn"), "gunicorn is not installed here")
    def test_gunicorn_worker_class_knows_this_gunicorn(self):
        code, out, err = run_child("""
            import batonworker.gunicorn as g
            print(g._shape())
        """, {})
        self.assertEqual(code, 0, err)
        self.assertIn(out.strip(), ("legacy", "linger"))

    @unittest.skipUnless(_has("gunicorn"), "gunicorn is not installed here")
    def test_loading_the_gunicorn_worker_class_takes_notify_socket(self):
        code, out, err = run_child("""
            import os, batonworker
            from gunicorn import util
            cls = util.load_class("batonworker.gunicorn.ThreadWorker")
            cls.setup()
            print(os.environ.get("NOTIFY_SOCKET"), batonworker.notify_socket())
        """, {"NOTIFY_SOCKET": "/run/x"})
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "None /run/x")


if __name__ == "__main__":
    unittest.main()

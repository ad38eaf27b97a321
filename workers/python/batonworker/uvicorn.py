"""uvicorn on baton's sockets, draining by baton's rule.

    python -m batonworker.uvicorn [--idle-grace SECONDS] module:app [uvicorn options]

or, in Python, ``batonworker.uvicorn.run(app, **uvicorn_config)``. The server
serves on the sockets in LISTEN_FDS (``--host``, ``--port``, ``--uds`` and
``--fd`` do not apply), sends READY=1 once it accepts, and on SIGTERM (or
SIGINT, or BATON_STOP_SIGNAL):

- stops accepting;
- answers the next request on each open connection with
  ``Connection: close`` and closes the connection after that response;
- closes a connection that stays idle only after ``idle_grace`` seconds
  (1 s) of idleness (uvicorn's own shutdown closes idle keep-alive
  connections at once, racing each client's next request);
- then finishes as uvicorn does: waits for the requests and tasks in flight
  (within ``timeout_graceful_shutdown``) and runs the lifespan shutdown.

One process: ``--workers`` and ``--reload`` are refused (baton cycles the
worker; run more processes behind one socket with gunicorn instead).
"""

import asyncio
import signal
import sys
import time

import uvicorn
import uvicorn.server

import batonworker

__all__ = ["Server", "run", "main"]

# uvicorn's exit status when the application cannot start.
STARTUP_FAILURE = 3


class _CloseWhenDraining:
    """ASGI middleware: once the server drains, every HTTP response says
    ``Connection: close`` (and the protocol closes the connection after
    it)."""

    def __init__(self, app, server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start" and self.server.draining:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                headers.append((b"connection", b"close"))
                message = dict(message, headers=headers)
            await send(message)

        return await self.app(scope, receive, send_closing)


class Server(uvicorn.Server):
    """uvicorn's Server with baton's drain and readiness. Use it as uvicorn's
    own: ``Server(uvicorn.Config(app, ...)).run(sockets=listeners())``."""

    def __init__(self, config, idle_grace=None):
        super().__init__(config)
        self.idle_grace = batonworker.idle_grace(1.0) if idle_grace is None else float(idle_grace)
        self.draining = False

    async def startup(self, sockets=None):
        if not getattr(self.config.loaded_app, "_batonworker", False):
            wrapped = _CloseWhenDraining(self.config.loaded_app, self)
            wrapped._batonworker = True
            self.config.loaded_app = wrapped
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            for sig in batonworker.stop_signals():
                if sig not in uvicorn.server.HANDLED_SIGNALS:
                    signal.signal(sig, self.handle_exit)
            batonworker.ready("uvicorn serving")

    async def shutdown(self, sockets=None):
        await self.drain()
        await super().shutdown(sockets=sockets)
        # uvicorn raises the stop signal again once it has shut down, so the
        # process would die of it; a drained worker exits 0 instead.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    async def drain(self):
        """Stops accepting, then waits until every connection has closed:
        after a response with ``Connection: close``, or after ``idle_grace``
        seconds of idleness."""
        self.draining = True
        for server in self.servers:
            server.close()
        timeout = self.config.timeout_graceful_shutdown
        deadline = None if timeout is None else time.monotonic() + timeout
        idle_since = {}
        while self.server_state.connections and not self.force_exit:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            for conn in list(self.server_state.connections):
                cycle = getattr(conn, "cycle", False)
                if cycle is False:
                    # Not an HTTP/1 connection (a WebSocket, HTTP/2): its
                    # own shutdown is its drain.
                    idle_since.pop(conn, None)
                    conn.shutdown()
                    continue
                if cycle is None or cycle.response_complete:
                    since = idle_since.setdefault(conn, now)
                    if now - since >= self.idle_grace:
                        conn.shutdown()  # idle: closes the transport
                else:
                    idle_since.pop(conn, None)
            for conn in list(idle_since):
                if conn not in self.server_state.connections:
                    del idle_since[conn]
            await asyncio.sleep(0.02)


def run(app, *, idle_grace=None, **kwargs):
    """Runs ``app`` (an ASGI application or an import string such as
    "module:app") under uvicorn on the sockets baton passes, as
    ``uvicorn.run`` does; ``kwargs`` are ``uvicorn.Config``'s. Raises
    ``batonworker.NoSocketsError`` outside baton."""
    socks = batonworker.listeners()
    for key in ("host", "port", "uds", "fd"):
        kwargs.pop(key, None)
    if kwargs.get("reload") or (kwargs.get("workers") or 1) > 1:
        raise ValueError("batonworker.uvicorn serves in one process: --workers and --reload are not supported")
    app_dir = kwargs.pop("app_dir", None)
    if app_dir is not None:
        sys.path.insert(0, app_dir)
    config = uvicorn.Config(app, **kwargs)
    server = Server(config, idle_grace=idle_grace)
    try:
        server.run(sockets=socks)
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def main(argv=None):
    """``python -m batonworker.uvicorn [--idle-grace SECONDS] module:app
    [uvicorn options]``: uvicorn's own command line, on baton's sockets."""
    import importlib

    # The module, not the function uvicorn's package exports by that name.
    cli = importlib.import_module("uvicorn.main")

    args = list(sys.argv[1:] if argv is None else argv)
    grace = None
    if args and args[0].startswith("--idle-grace"):
        opt = args.pop(0)
        if "=" in opt:
            grace = opt.split("=", 1)[1]
        elif args:
            grace = args.pop(0)
        else:
            sys.exit("batonworker.uvicorn: --idle-grace needs a number of seconds")
        try:
            grace = float(grace.rstrip("s"))
        except ValueError:
            sys.exit(f"batonworker.uvicorn: --idle-grace {grace!r} is not a number of seconds")
    if "--help" not in args and "--version" not in args:
        try:
            batonworker.listeners()
        except batonworker.ProtocolError as e:
            sys.exit(str(e))

    def run_here(app, **kwargs):
        try:
            run(app, idle_grace=grace, **kwargs)
        except ValueError as e:
            sys.exit(str(e))

    # uvicorn's command calls the module's run(): this one, on baton's sockets.
    cli.run = run_here
    cli.main.main(args=args, prog_name="python -m batonworker.uvicorn")


if __name__ == "__main__":
    main()

"""A real WebSocket client (the `websockets` package) against the hello
example's `/ws` echo: connects, checks the greeting's version, echoes until
the server closes, and reconnects after a close with code 1012 ("service
restart"), as a client should when a worker drains. Writes what it saw to a
progress file as it goes; prints it as JSON when a stop file appears.

usage: ws_client.py HOST:PORT PROGRESS STOP
"""
import json
import os
import sys
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

MAX_SECONDS = 120
MAX_CONNECTIONS = 50


def session(ws, conn, seen, done, report):
    """One connection: the greeting, then echoes until the server closes
    (recording its close code) or `done()`."""
    try:
        conn["version"] = ws.recv(timeout=10).removeprefix("hello ")
        report()
        i = 0
        while not done():
            message = f"echo {i}"
            ws.send(message)
            if ws.recv(timeout=10) != message:
                seen["mismatches"] += 1
            conn["echoes"] += 1
            i += 1
            report()
            time.sleep(0.02)
        ws.close()
        conn["close_code"] = "client"
    except ConnectionClosed as e:
        # The server's close frame: 1012 means "reconnect".
        if e.rcvd is not None:
            conn["close_code"], conn["close_reason"] = e.rcvd.code, e.rcvd.reason
        else:
            seen["errors"].append(f"closed without a close frame: {e!r}")
    except Exception as e:
        seen["errors"].append(f"{type(e).__name__}: {e}")


def main():
    addr, progress, stop = sys.argv[1:4]
    seen = {"connections": [], "mismatches": 0, "errors": []}
    started = time.monotonic()

    def done():
        return os.path.exists(stop) or time.monotonic() - started > MAX_SECONDS

    def report():
        tmp = progress + ".tmp"
        with open(tmp, "w") as f:
            json.dump(seen, f)
        os.replace(tmp, progress)

    while not done() and len(seen["connections"]) < MAX_CONNECTIONS:
        conn = {"version": None, "echoes": 0, "close_code": None, "close_reason": None}
        try:
            ws = connect(f"ws://{addr}/ws", open_timeout=10, close_timeout=5, proxy=None)
        except Exception as e:  # refused or reset while workers change: count it
            seen["errors"].append(f"connect: {e!r}")
            report()
            time.sleep(0.1)
            continue
        seen["connections"].append(conn)
        with ws:
            session(ws, conn, seen, done, report)
        report()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

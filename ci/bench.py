#!/usr/bin/env python3
"""Benchmarks of the master and the graceful cycle; run through ci/bench.

Prints markdown for BENCHMARKS.md. Everything listens on 127.0.0.1 only and
every load run is bounded (ab by request count, wrk by duration).
"""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATON = os.path.join(ROOT, "target/release/baton")
BINS = os.path.join(ROOT, "target/test-bins")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path="/"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()


def wait_until(check, timeout=15, step=0.01):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(step)
    raise RuntimeError("timed out")


class Baton:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="baton-bench-")
        os.mkdir(os.path.join(self.dir, "bin"))
        self.link = os.path.join(self.dir, "bin/hello")
        self.point("1.0.0")
        self.port = free_port()
        with open(os.path.join(self.dir, "baton.toml"), "w") as f:
            f.write(f'[program]\ncommand = "bin/hello"\nlisten = ["127.0.0.1:{self.port}"]\n')
        self.log = open(os.path.join(self.dir, "baton.log"), "w+")
        self.proc = subprocess.Popen(
            [BATON, "run", "--config", os.path.join(self.dir, "baton.toml")],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        wait_until(lambda: get(self.port).startswith("hello"))
        self.version = "1.0.0"

    def point(self, version):
        tmp = self.link + ".tmp"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.join(BINS, f"hello-{version}"), tmp)
        os.rename(tmp, self.link)

    def flip(self):
        self.version = "2.0.0" if self.version == "1.0.0" else "1.0.0"
        self.point(self.version)
        self.proc.send_signal(signal.SIGHUP)

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def cycler(baton, count, every, delay=0.3):
    def run():
        time.sleep(delay)
        for _ in range(count):
            baton.flip()
            time.sleep(every)
    t = threading.Thread(target=run)
    t.start()
    return t


def ab(args, port):
    out = subprocess.run(["ab", *args, f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    complete = re.search(r"Complete requests:\s+(\d+)", text)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
    return {
        "exit": out.returncode,
        "complete": int(complete.group(1)) if complete else 0,
        "failed": int(failed.group(1)) if failed else None,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "error": "" if out.returncode == 0 else text.strip().splitlines()[-1],
    }


def wrk(port, seconds, conns=100):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    )
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total = int(re.search(r"(\d+) requests in", text).group(1))
    return {
        "rps": rps,
        "total": total,
        "socket_errors": tuple(int(x) for x in errors.groups()) if errors else (0, 0, 0, 0),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def under_cycles(b, count, every, load):
    """Runs `load()` while `count` cycles are signalled `every` seconds apart;
    returns its result and how many cycles completed while it ran."""
    before = b.log_text().count("asking worker to drain")
    t = cycler(b, count, every, delay=every / 2)
    result = load()
    during = b.log_text().count("asking worker to drain") - before
    t.join()
    return result, during


def zero_downtime():
    rows = []
    for run in range(RUNS):
        b = Baton()
        try:
            r1, c1 = under_cycles(b, 5, 0.03, lambda: ab(["-c", "10", "-n", "2000"], b.port))
            r2, c2 = under_cycles(b, 5, 0.05, lambda: ab(["-k", "-c", "50", "-n", "20000"], b.port))
            r3, c3 = under_cycles(b, 9, 1.0, lambda: wrk(b.port, 10))
        finally:
            b.stop()
        rows.append((run + 1, r1, c1, r2, c2, r3, c3))
    print("### Zero downtime under cycles\n")
    print("Cycles are signalled while each load runs; the count of cycles that completed during the run is in brackets.\n")
    print("| run | `ab -c 10 -n 2000`: failed [cycles] | `ab -k -c 50 -n 20000`: complete / failed / aborted [cycles] | "
          "`wrk -t2 -c100 -d10s`, a cycle every 1 s: requests / socket errors (c,r,w,t) / non-2xx [cycles] |")
    print("|---|---|---|---|")
    for run, r1, c1, r2, c2, r3, c3 in rows:
        aborted = "no" if r2["exit"] == 0 else f"yes: {r2['error']}"
        print(f"| {run} | {r1['failed']} of {r1['complete']} [{c1}] | {r2['complete']} / {r2['failed']} / {aborted} [{c2}] | "
              f"{r3['total']} / {r3['socket_errors']} / {r3['non2xx']} [{c3}] |")
    print()


def overhead():
    ratios, alone, under = [], [], []
    for _ in range(RUNS):
        b = Baton()
        try:
            wrk(b.port, 2, conns=64)  # warm-up
            u = wrk(b.port, 5, conns=64)["rps"]
        finally:
            b.stop()
        port = free_port()
        p = subprocess.Popen([os.path.join(BINS, "hello-1.0.0"), "--standalone", "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: get(port).startswith("hello"))
            wrk(port, 2, conns=64)
            a = wrk(port, 5, conns=64)["rps"]
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        alone.append(a)
        under.append(u)
        ratios.append(u / a)
    print("### Overhead: the example under baton vs binding its own port\n")
    print("`wrk -t2 -c64 -d5s` after a 2 s warm-up, alternating, same run.\n")
    print("| run | alone req/s | under baton req/s | ratio |")
    print("|---|---|---|---|")
    for i, (a, u, r) in enumerate(zip(alone, under, ratios)):
        print(f"| {i + 1} | {a:.0f} | {u:.0f} | {r:.3f} |")
    print(f"| median | {statistics.median(alone):.0f} | {statistics.median(under):.0f} | {statistics.median(ratios):.3f} |\n")


def cycle_latency():
    b = Baton()
    lat, floor = [], []
    try:
        for _ in range(10):
            before = b.log_text()
            t0 = time.monotonic()
            b.flip()
            wait_until(lambda: get(b.port) == f"hello {b.version}", step=0.0005)
            lat.append((time.monotonic() - t0) * 1000)
            wait_until(lambda: b.log_text().count("worker is ready") > before.count("worker is ready"))
            time.sleep(0.3)
        stamps = re.findall(r"^(\S+)Z .*(started worker|worker is ready)", b.log_text(), re.M)
        pending = None
        for stamp, what in stamps:
            ts = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + stamp[20:])
            if what == "started worker":
                pending = ts
            elif pending is not None:
                floor.append((ts - pending) * 1000)
                pending = None
    finally:
        b.stop()
    floor = floor[1:]  # the first start is not a cycle
    print("### Cycle latency\n")
    print("| measure | median of 10 | min | max |")
    print("|---|---|---|---|")
    print(f"| SIGHUP → first response from the new worker (fresh connections, polled) | {statistics.median(lat):.1f} ms | {min(lat):.1f} ms | {max(lat):.1f} ms |")
    print(f"| floor: spawn → READY=1 received (master's log) | {statistics.median(floor):.1f} ms | {min(floor):.1f} ms | {max(floor):.1f} ms |\n")


def idle():
    b = Baton()
    try:
        time.sleep(1)
        pid = b.proc.pid
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", open(f"/proc/{pid}/status").read()).group(1))

        def cpu():
            f = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        c0 = cpu()
        time.sleep(10)
        c1 = cpu()
    finally:
        b.stop()
    print("### Master at idle\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| RSS (VmRSS) | {rss / 1024:.1f} MiB |")
    print(f"| CPU over 10 s | {(c1 - c0) * 1000:.0f} ms |\n")


if __name__ == "__main__":
    which = sys.argv[1:] or ["zero", "overhead", "latency", "idle"]
    for name in which:
        {"zero": zero_downtime, "overhead": overhead, "latency": cycle_latency, "idle": idle}[name]()
        sys.stdout.flush()

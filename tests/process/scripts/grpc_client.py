"""A real gRPC client (grpcio, the C core, with its transparent retries)
calling grpc.health.v1.Health/Check from many threads until a stop file
appears or a bound is reached. Writes its counts to a progress file as it
goes, and prints them as JSON at the end.

usage: grpc_client.py TARGET PROGRESS STOP [THREADS]
"""
import json
import os
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MAX_CALLS = 200_000
MAX_SECONDS = 120


def main():
    target, progress, stop = sys.argv[1:4]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    channel = grpc.insecure_channel(target)
    counts = {"ok": 0, "failed": 0}
    errors = []
    lock = threading.Lock()
    started = time.monotonic()

    def done():
        return (os.path.exists(stop) or time.monotonic() - started > MAX_SECONDS
                or counts["ok"] + counts["failed"] >= MAX_CALLS)

    def work():
        stub = health_pb2_grpc.HealthStub(channel)
        while not done():
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=20)
                good = reply.status == health_pb2.HealthCheckResponse.SERVING
                why = None if good else f"status {reply.status}"
            except grpc.RpcError as e:
                good, why = False, f"{e.code()}: {e.details()}"
            with lock:
                if good:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    if len(errors) < 10:
                        errors.append(why)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        with lock:
            text = json.dumps(counts)
        tmp = progress + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, progress)
        time.sleep(0.05)
    print(json.dumps({**counts, "errors": errors}))


if __name__ == "__main__":
    main()

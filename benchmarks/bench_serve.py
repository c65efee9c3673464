"""Drives a running `tools/serve.py` with N concurrent clients for T seconds and prints the load.

Start a server, then point this at it (127.0.0.1 only: it is a load generator)::

    python tools/serve.py --config-file configs/quick_schedules/dental_demo_cpu.yaml \\
        MODEL.WEIGHTS output/demo/model_final.pth &
    python benchmarks/bench_serve.py --image photo.jpg --clients 8 --seconds 30

Prints requests/s, p50/p95/p99 latency of the answered requests, the refusals (503 with
Retry-After, which clients honour here) and errors, and the server's peak RSS from /health.
A server started with a token is sent $DENTAL_D2_TOKEN as `Authorization: Bearer`.
"""

import argparse
import os
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx
import numpy as np

# A client that got 503 waits at most this long before it tries again, whatever Retry-After says,
# so the queue is kept full for the whole run.
MAX_BACKOFF_S = 1.0


def _auth_headers() -> dict:
    token = os.environ.get("DENTAL_D2_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (127.0.0.1)")
    parser.add_argument("--image", required=True, help="the image every client sends")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long (default 20)")
    parser.add_argument(
        "--max-requests", type=int, default=10_000, help="stop after this many (default 10000)"
    )
    parser.add_argument(
        "--overlay", action="store_true", help="ask for the overlay PNG in each answer too"
    )
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a server on this machine (127.0.0.1)")
    return args


class Results:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.statuses = Counter()
        self.sent = 0

    def take_ticket(self, limit: int) -> bool:
        with self.lock:
            if self.sent >= limit:
                return False
            self.sent += 1
            return True

    def record(self, status, latency: float):
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.latencies.append(latency)


def client(args, data: bytes, deadline: float, results: Results):
    """Sends the image again and again until the deadline; honours Retry-After (capped)."""
    params = {"overlay": "true"} if args.overlay else {}
    with httpx.Client(base_url=args.url, timeout=120, headers=_auth_headers()) as http:
        while time.monotonic() < deadline and results.take_ticket(args.max_requests):
            start = time.perf_counter()
            try:
                response = http.post("/predict", files={"file": ("bench.jpg", data)}, params=params)
                status = response.status_code
            except httpx.HTTPError as e:
                response, status = None, type(e).__name__
            results.record(status, time.perf_counter() - start)
            if status == 503:
                time.sleep(min(float(response.headers.get("Retry-After", 1)), MAX_BACKOFF_S))


def main(argv=None) -> int:
    args = parse_args(argv)
    with open(args.image, "rb") as f:
        data = f.read()
    try:
        headers = _auth_headers()
        model = httpx.get(f"{args.url}/model", timeout=10, headers=headers)
        if model.status_code == 401:
            print("error: the server needs its token: set DENTAL_D2_TOKEN", file=sys.stderr)
            return 1
        model = model.json()
        httpx.post(
            f"{args.url}/predict",
            files={"file": ("warmup.jpg", data)},
            timeout=120,
            headers=headers,
        )
    except httpx.HTTPError as e:
        print(f"error: no server at {args.url} ({e}); start tools/serve.py first", file=sys.stderr)
        return 1
    results = Results()
    start = time.monotonic()
    deadline = start + args.seconds
    threads = [
        threading.Thread(target=client, args=(args, data, deadline, results))
        for _ in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    health = httpx.get(f"{args.url}/health", timeout=10).json()

    answered = results.statuses[200]
    latencies = np.array(results.latencies) * 1000
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if answered else (np.nan,) * 3
    refused = results.statuses[503]
    errors = sum(n for status, n in results.statuses.items() if status not in (200, 503))
    weights = model["weights"] or "random"
    print(f"model: {model['config_file']} weights {weights} on {model['device']}")
    print(f"batch size {model['batch_size']}, queue capacity {model['queue_capacity']}")
    print(f"{args.clients} clients for {elapsed:.1f} s: {answered} answered")
    print(f"throughput: {answered / elapsed:.2f} requests/s")
    print(f"latency of answered requests: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms")
    print(f"refused with 503: {refused}; errors: {errors} {dict(results.statuses)}")
    queue = health["queue"]
    forward_ms = queue["mean_forward_s"] * 1000
    print(f"server: mean batch {queue['mean_batch_size']}, mean forward {forward_ms:.0f} ms")
    print(f"server peak RSS: {health['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

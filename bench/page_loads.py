#!/usr/bin/env python3
"""Page loads of the web client, as browsers make them, for measuring what serving
it costs the event loop (run it alongside `klav-bench chat`).

Each page load opens a connection, GETs `/`, `/app.js`, `/app.css`, `/klav.js`
(which `app.js` imports) and `/favicon.svg` on it (keep-alive, as a browser does), checks every status and
length, and closes it. Loads are started at a fixed rate over a few threads.
Standard library only.

    python3 bench/page_loads.py --addr 127.0.0.1:5000 --rate 200 --duration 25
"""

import argparse
import http.client
import statistics
import threading
import time

PATHS = ["/", "/app.js", "/app.css", "/klav.js", "/favicon.svg"]


def one_load(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        total = 0
        for path in PATHS:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
            total += len(body)
        return total
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default="127.0.0.1:5000")
    ap.add_argument("--rate", type=float, default=200.0, help="page loads per second")
    ap.add_argument("--duration", type=float, default=25.0, help="seconds")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)

    latencies, errors, sizes = [], [], []
    lock = threading.Lock()
    start = time.monotonic()
    end = start + args.duration
    interval = args.threads / args.rate

    def worker(offset):
        next_at = start + offset * interval / args.threads
        while True:
            now = time.monotonic()
            if next_at >= end:
                return
            if next_at > now:
                time.sleep(next_at - now)
            t0 = time.monotonic()
            try:
                size = one_load(host, port)
                with lock:
                    latencies.append(time.monotonic() - t0)
                    sizes.append(size)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors.append(str(e))
            next_at += interval

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    n = len(latencies)
    if n:
        lat = sorted(latencies)
        p = lambda q: lat[min(n - 1, int(q * n))] * 1000  # noqa: E731
        print(
            f"{n} page loads ({n * len(PATHS)} requests, {sum(sizes) / 1e6:.1f} MB) in "
            f"{elapsed:.1f} s = {n / elapsed:.0f} loads/s; {len(errors)} errors; "
            f"load latency p50 {p(0.5):.1f} / p99 {p(0.99):.1f} / max {lat[-1] * 1000:.1f} ms "
            f"(mean {statistics.mean(lat) * 1000:.1f})"
        )
    else:
        print(f"no page load succeeded; {len(errors)} errors")
    if errors:
        print("first errors:", errors[:3])
        raise SystemExit(1)


if __name__ == "__main__":
    main()

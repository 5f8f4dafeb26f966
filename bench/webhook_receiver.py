#!/usr/bin/env python3
"""A webhook receiver for measurements: answers every POST with 200 after a
fixed delay (default 50 ms, a typical backend doing a little work), checks
each Klav-Signature, and prints once a second what it received.

    python3 bench/webhook_receiver.py --port 9900 --delay-ms 50 \
        --secret "$KLAV_WEBHOOK_SECRET"

then start klav with KLAV_WEBHOOK_URL=http://127.0.0.1:9900/hooks and the same
KLAV_WEBHOOK_SECRET. Stop it with Ctrl-C for the totals. Standard library only.
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"events": 0, "bad_signatures": 0, "duplicates": 0}
seen = set()
lock = threading.Lock()


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """Klav-Signature: t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    want = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts.get("v1", ""))


def handler(secret: bytes, delay: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ok = verify(secret, self.headers.get("Klav-Signature", ""), body)
            event_id = json.loads(body).get("id")
            with lock:
                counts["events"] += 1
                counts["bad_signatures"] += 0 if ok else 1
                if event_id in seen:
                    counts["duplicates"] += 1
                seen.add(event_id)
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=9900)
    p.add_argument("--delay-ms", type=float, default=50.0)
    p.add_argument("--secret", required=True)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), handler(a.secret.encode(), a.delay_ms / 1000))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    last = 0
    try:
        while True:
            time.sleep(1)
            with lock:
                n = counts["events"]
                line = dict(counts, per_sec=n - last)
            last = n
            print(json.dumps(line), flush=True)
    except KeyboardInterrupt:
        pass
    print(json.dumps(counts), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()

"""A local JSON API that answers every page after a fixed delay (for scripts/bench_sources).

GET /<anything>?page=N returns page N (1-based) of records as a JSON array; pages after
--pages are empty. Listens on 127.0.0.1 on a free port written to --port-file.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=5)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    pages = {}

    def page(n: int) -> bytes:
        if n not in pages:
            start = (n - 1) * args.page_size
            pages[n] = json.dumps([
                {"id": i, "customer": f"c{i % 977}", "amount": round(i * 0.37 % 500, 2),
                 "placed_at": f"2024-0{1 + i % 9}-1{i % 10}T12:00:00"}
                for i in range(start, start + args.page_size)
            ]).encode()
        return pages[n]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            q = parse_qs(urlparse(self.path).query)
            n = int(q.get("page", ["1"])[0])
            time.sleep(args.latency_ms / 1000)
            body = page(n) if n <= args.pages else b"[]"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file, "w") as f:
        f.write(str(server.server_address[1]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

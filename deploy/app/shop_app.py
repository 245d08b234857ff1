"""A stand-in for your application: a small web service whose image also carries the runner.

The image's ENTRYPOINT starts this service (`python3 -m shop_app`). The migration Job (the Helm
chart's `command: [migration-runner]`) and the compose `migrate` service
(`entrypoint: [migration-runner]`) replace that entrypoint, so the same image migrates the
database and then serves. See deploy/Dockerfile.app-with-runner and docs/deploy.md, recipe B.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    print(json.dumps({"event": "app_started", "port": port}), flush=True)
    HTTPServer(("0.0.0.0", port), Handler).serve_forever()  # noqa: S104 (a container's server)


if __name__ == "__main__":
    main()

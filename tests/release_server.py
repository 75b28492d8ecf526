"""A city-side release server for the update tests: a directory over HTTP with Range requests
(as nginx serves one), with faults a field link has: a connection dropped after N bytes, a
byte changed in transit. Requests are recorded (path, Range header)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ReleaseServer:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # file -> bytes sent before the link drops (once)
        self.corrupt: set[str] = set()  # files served with one byte flipped, every time
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                path = server.directory / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if name in server.corrupt:
                    data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
                start = 0
                if (ranged := self.headers.get("Range")) and ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(name, None)
                if cut is not None and cut < len(body):
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

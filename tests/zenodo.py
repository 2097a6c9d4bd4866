"""A Zenodo stand-in on loopback for the downloader's tests: the records API (file list with md5 checksums and
links) and file downloads with HTTP Range, plus scripted faults per file: "drop" (headers promise the whole file, the
connection closes after half of it), "corrupt" (one byte flipped), "ignore_range" (200 with the whole file even when
a Range was asked). Also writes zips in the real record's layout."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREPROCESSED = "kinect-2d-kpt-with-operation-action-labels"


def preprocessed_zip(root: Path) -> bytes:
    """``{PREPROCESSED}.zip`` of an OpenPack root's preprocessed CSVs, one top-level folder as in the record."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for csv in sorted((root / PREPROCESSED).glob("*.csv")):
            zf.write(csv, f"{PREPROCESSED}/{csv.name}")
    return buf.getvalue()


class FakeZenodo:
    def __init__(self, files: dict[str, bytes], record: str = "11059235"):
        self.files, self.record = dict(files), record
        self.faults: dict[str, list[str]] = {}  # file name -> faults of its next requests, in order
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def file_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if "/files/" in r[0]]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None, length: int | None = None):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.requests.append((self.path, self.headers.get("Range")))
                api = f"/api/records/{fake.record}"
                if self.path == api:
                    files = [{"id": str(i), "key": k, "size": len(v), "checksum": "md5:" + hashlib.md5(v).hexdigest(),
                              "links": {"self": f"{fake.url}{api}/files/{k}/content"}}
                             for i, (k, v) in enumerate(fake.files.items())]
                    return self._send(200, json.dumps({"id": fake.record, "files": files}).encode(),
                                      {"Content-Type": "application/json"})
                prefix = f"{api}/files/"
                if not (self.path.startswith(prefix) and self.path.endswith("/content")):
                    return self._send(404, b'{"status": 404, "message": "not found"}')
                key = self.path[len(prefix):-len("/content")]
                if key not in fake.files:
                    return self._send(404, b'{"status": 404}')
                data = fake.files[key]
                fault = fake.faults.get(key, []).pop(0) if fake.faults.get(key) else None
                if fault == "corrupt":
                    data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and fault != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                body = data[start:]
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                code = 200
                if start:
                    code, headers["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
                if fault == "drop":  # promise the whole body, send half, hang up
                    self.close_connection = True
                    return self._send(code, body[:len(body) // 2], headers, length=len(body))
                return self._send(code, body, headers)

        return Handler

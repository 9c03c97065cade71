"""The review page: a loopback-only HTTP server (stdlib) with one static page and a small JSON API.

    GET  /                 the page (review.html)
    GET  /api/state        {"total", "answered", "next", "classifiers"}  (next: first unanswered index or null)
    GET  /api/item/<i>     queued face i: id, split, name, reason, the classifiers' votes, the detected face box
                           (image pixels; null where none was found or the queue predates boxes), its answer so far
    GET  /image/<i>        face i's image file, as the dataset has it
    POST /api/answer       {"index": i, "answer": "male" | "female" | "skip"} -> saved (fsync'd) before the reply

Only loopback addresses are accepted for binding, requests must name the server by its loopback host (guards
against DNS rebinding), and answers must be posted as application/json (a cross-site form cannot send that
without a CORS preflight, which this server never grants).

A request changes nothing unless it is whole and exact: one numeric Content-Length, a body of exactly that many
bytes (a shorter one, cut off by a disconnect, is refused), a JSON object whose index is an integer (not a bool,
float or string) of a queued face and whose answer is one of the three words. Every socket read and write has a
time limit, so a stalled client cannot hold a handler; a client that goes away mid-reply is one quiet log line.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .consensus import ANSWERS, ANSWERS_FILE, AnswerLog, read_queue

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("review.html")
MAX_BODY = 4096
TIMEOUT = 10.0  # seconds any one socket read or write may wait (a stalled or cut-off client)
_DIGITS = re.compile(r"[0-9]+")


def loopback_address(host: str) -> str:
    """The numeric loopback address for host; ValueError for anything that is not loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"--host {host!r}: the review server only listens on loopback "
                         "(127.0.0.1, ::1 or localhost)") from None
    if not address.is_loopback:
        raise ValueError(f"--host {host}: not a loopback address; the review server is local only "
                         "(use 127.0.0.1, ::1 or localhost; reach it remotely through an SSH tunnel)")
    return str(address)


class ReviewState:
    """The queue and its answers; `answer` appends to the log before updating memory."""

    def __init__(self, workdir: Path):
        queue = read_queue(workdir)
        self.items: list[dict] = queue["items"]
        self.classifiers: list[str] = queue.get("classifiers", [])
        self.log = AnswerLog(Path(workdir) / ANSWERS_FILE)
        self.answers = self.log.read()
        self._lock = threading.Lock()

    def answered(self) -> int:
        return sum(1 for item in self.items if item["id"] in self.answers)

    def next_unanswered(self, after: int = -1) -> int | None:
        n = len(self.items)
        for step in range(1, n + 1):
            index = (after + step) % n
            if self.items[index]["id"] not in self.answers:
                return index
        return None

    def state(self) -> dict:
        with self._lock:
            return {"total": len(self.items), "answered": self.answered(), "next": self.next_unanswered(),
                    "classifiers": self.classifiers}

    def item(self, index: int) -> dict:
        item = self.items[index]
        with self._lock:
            return {"index": index, "id": item["id"], "split": item["split"], "name": item["name"],
                    "reason": item.get("reason", ""),
                    "votes": [{"classifier": name, "p_male": p, "vote": "male" if p >= 0.5 else "female"}
                              for name, p in item["votes"].items()],
                    "box": item.get("box"), "detected": item.get("detected"),
                    "answer": self.answers.get(item["id"]), "total": len(self.items),
                    "answered": self.answered()}

    def answer(self, index: int, answer: str) -> dict:
        item = self.items[index]
        with self._lock:
            self.log.append(item, answer)  # on disk (fsync'd) before anything is acknowledged
            self.answers[item["id"]] = answer
            return {"saved": True, "index": index, "answer": answer, "answered": self.answered(),
                    "total": len(self.items), "next": self.next_unanswered(index)}


class _Handler(BaseHTTPRequestHandler):
    server_version = "agegender-review"
    review: ReviewState  # set on the subclass made by make_server
    allowed_hosts: frozenset
    timeout = TIMEOUT  # socketserver sets it on the connection: every read and write is time-limited
    _unread_body = False  # a request body left unread: drained before closing, so the reply is not reset

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, socket.timeout) as error:  # the browser closed the tab or stalled mid-transfer
            log.info("%s: connection closed early (%s)", self.address_string(), type(error).__name__)
            self.close_connection = True

    def finish(self) -> None:
        if self._unread_body:  # lingering close: let the client's unread bytes arrive, then close
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                for _ in range(16):
                    if not self.connection.recv(MAX_BODY):
                        break
            except OSError:
                pass
        super().finish()

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        if (self.headers.get("Host") or "").lower() in self.allowed_hosts:
            return True
        self._error(HTTPStatus.FORBIDDEN, "unexpected Host header: open the page through the loopback address")
        return False

    def _index(self, text: str) -> int | None:
        if not _DIGITS.fullmatch(text) or not 0 <= int(text) < len(self.review.items):
            self._error(HTTPStatus.NOT_FOUND, f"no queued face {text}")
            return None
        return int(text)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page = PAGE.read_bytes()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._json(self.review.state())
        elif match := re.fullmatch(r"/api/item/([^/]+)", path):
            index = self._index(match[1])
            if index is not None:
                self._json(self.review.item(index))
        elif match := re.fullmatch(r"/image/([^/]+)", path):
            index = self._index(match[1])
            if index is None:
                return
            image = Path(self.review.items[index]["path"])
            try:
                data = image.read_bytes()
            except OSError as error:
                self._error(HTTPStatus.NOT_FOUND, f"{image}: {error.strerror or error}")
                return
            self._send(HTTPStatus.OK, data, mimetypes.guess_type(image.name)[0] or "application/octet-stream",
                       cache=True)
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page {path}")

    def _body(self) -> bytes | None:
        """The request body, exactly Content-Length bytes; None (after an error reply) for anything else."""
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            self._error(HTTPStatus.BAD_REQUEST, "expected one numeric Content-Length")
            return None
        length = int(lengths[0])
        if length == 0:
            self._error(HTTPStatus.BAD_REQUEST, "empty body")
            return None
        if length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
            return None
        try:
            body = self.rfile.read(length)  # returns short only at end of stream; raises on the time limit
        except socket.timeout:
            self._unread_body = False  # the stream is unusable after a timeout: close without draining
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"body not received within {self.timeout:g} s")
            return None
        self._unread_body = False
        if len(body) != length:
            self._error(HTTPStatus.BAD_REQUEST, f"body cut off: {len(body)} of {length} bytes")
            return None
        return body

    def do_POST(self) -> None:  # noqa: N802
        self.close_connection = True
        self._unread_body = True
        if not self._host_ok():
            return
        if self.path != "/api/answer":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "post answers as application/json")
            return
        data = self._body()
        if data is None:
            return
        expected = 'expected {"index": N, "answer": "male"|"female"|"skip"}'
        try:
            body = json.loads(data)
        except ValueError:  # includes undecodable bytes
            self._error(HTTPStatus.BAD_REQUEST, expected)
            return
        if not isinstance(body, dict) or "index" not in body or "answer" not in body:
            self._error(HTTPStatus.BAD_REQUEST, expected)
            return
        index, answer = body["index"], body["answer"]
        if type(index) is not int:  # not a bool (an int in Python), float, string or null
            self._error(HTTPStatus.BAD_REQUEST, f"index must be an integer, got {json.dumps(index)[:40]}")
            return
        if not 0 <= index < len(self.review.items):
            self._error(HTTPStatus.NOT_FOUND, f"no queued face {index}")
            return
        if not isinstance(answer, str) or answer not in ANSWERS:
            self._error(HTTPStatus.BAD_REQUEST, f"answer must be one of {', '.join(ANSWERS)}")
            return
        try:
            result = self.review.answer(index, answer)
        except OSError as error:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save the answer: {error}")
            return
        self._json(result)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(workdir: Path, host: str = "127.0.0.1", port: int = 8765,
                timeout: float = TIMEOUT) -> ThreadingHTTPServer:
    """A bound (not yet serving) review server; `server.server_address[1]` is the port (port 0: any free one).
    timeout: seconds any one socket read or write of a request may wait."""
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: not a port number (0-65535; 0 picks a free port)")
    address = loopback_address(host)
    review = ReviewState(workdir)
    server_class = _Server6 if ":" in address else _Server
    handler = type("ReviewHandler", (_Handler,), {"review": review, "allowed_hosts": frozenset(),
                                                  "timeout": timeout})
    server = server_class((address, port), handler)
    bound = server.server_address[1]
    shown = f"[{address}]" if ":" in address else address
    handler.allowed_hosts = frozenset({f"{shown}:{bound}", f"localhost:{bound}"})
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    address, port = server.server_address[:2]
    return f"http://{f'[{address}]' if ':' in address else address}:{port}/"

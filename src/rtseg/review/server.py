"""The review server: a person checks each pseudo mask of a labelled dataset in the browser.

Standard library only (``http.server``), bound to a loopback address. Routes::

    GET  /                      the page (static/index.html + review.js + review.css)
    GET  /api/state             the queue (lowest confidence first) with each item's decision + counts
    GET  /api/file?name=N&kind=image|mask|pseudo|teacher[&teacher=T]
                                the image, the sample's current mask, the consensus mask, a teacher's mask
    POST /api/decision          {"name": N, "decision": "accept"|"reject"|"flip"|"clear"[, "teacher": T]}

Every decision is written to ``DATASET/review.json`` at once and atomically by
:mod:`rtseg.review_state`. ``flip`` accepts the sample with another teacher's mask: that mask is
first copied atomically over the sample's mask (``GT_png``); without ``teacher`` it cycles through
the teachers. ``accept``/``reject``/``clear`` after a flip copy the consensus mask back, so the
sample's mask is always the consensus unless the decision is a flip.

Requests must name a loopback ``Host`` (DNS-rebinding guard) and a POST must be
``application/json`` (a cross-site form cannot send that without a CORS preflight, which is
never answered).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlsplit

from .. import review_state
from ..errors import DataError, RtsegError
from ..labeling.layout import DatasetLayout, read_queue, write_bytes_atomic

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg",
                 ".jpeg": "image/jpeg"}
MAX_BODY = 64 * 1024
#: the item fields the page gets (paths stay on the server)
ITEM_FIELDS = ("name", "confidence", "split", "source", "frame", "time_s", "size", "faces", "person_fraction",
               "teacher_iou")


class ReviewError(RtsegError):
    """A bad request to the review server (unknown sample, decision or teacher)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class ReviewSession:
    """The queue of one dataset and the decisions on it: everything the server does, minus HTTP."""

    def __init__(self, root: PathLike) -> None:
        self.layout = DatasetLayout(root)
        queue = read_queue(root)
        self.items: list[dict] = queue["items"]
        self.by_name = {it["name"]: it for it in self.items}
        self.teachers: list[str] = list(queue.get("teachers") or [])
        self.lock = threading.Lock()
        review_state.read_review_or_empty(self.layout.review_path)  # an unreadable file fails now

    # -- reading -----------------------------------------------------------------------------
    def item(self, name: str) -> dict:
        try:
            return self.by_name[name]
        except KeyError:
            raise ReviewError(f"no sample named {name!r} in the queue", HTTPStatus.NOT_FOUND) from None

    def item_teachers(self, item: dict) -> list[str]:
        return list((item.get("teacher_masks") or {}).keys())

    def public_item(self, item: dict, review: dict) -> dict:
        out = {k: item.get(k) for k in ITEM_FIELDS}
        out["teachers"] = self.item_teachers(item)
        out["decision"] = review_state.decision_of(review, item["name"])
        return out

    def counts(self, review: dict) -> dict:
        c = {"total": len(self.items), "accept": 0, "reject": 0, "flip": 0}
        for it in self.items:
            d = review_state.decision_of(review, it["name"])
            if d is not None:
                c[d["decision"]] += 1
        c["left"] = c["total"] - c["accept"] - c["reject"] - c["flip"]
        return c

    def state(self) -> dict:
        review = review_state.read_review_or_empty(self.layout.review_path)
        return {"dataset": str(self.layout.root), "teachers": self.teachers,
                "items": [self.public_item(it, review) for it in self.items], "counts": self.counts(review)}

    def file_path(self, name: str, kind: str, teacher: Optional[str] = None) -> Path:
        item = self.item(name)
        if kind == "image":
            rel = item["image"]
        elif kind == "mask":
            rel = item["mask"]
        elif kind == "pseudo":
            rel = item.get("pseudo_mask") or item["mask"]
        elif kind == "teacher":
            masks = item.get("teacher_masks") or {}
            if teacher not in masks:
                raise ReviewError(f"sample {name!r} has no mask of teacher {teacher!r}", HTTPStatus.NOT_FOUND)
            rel = masks[teacher]
        else:
            raise ReviewError(f"unknown file kind {kind!r}: expected image, mask, pseudo or teacher")
        path = self.layout.resolve(rel)
        if not path.is_file():
            raise ReviewError(f"{path}: file not found", HTTPStatus.NOT_FOUND)
        return path

    # -- deciding ----------------------------------------------------------------------------
    def decide(self, name: str, decision: str, teacher: Optional[str] = None) -> dict:
        """Record ``decision`` for ``name`` (see the module docstring); returns the item + counts."""
        item = self.item(name)
        if decision not in review_state.DECISIONS + ("clear",):
            raise ReviewError(f"unknown decision {decision!r}: expected accept, reject, flip or clear")
        with self.lock:
            review = review_state.read_review_or_empty(self.layout.review_path)
            previous = review_state.decision_of(review, name)
            if decision == "flip":
                teacher = self._flip_target(item, previous, teacher)
                self._copy_mask(self.file_path(name, "teacher", teacher), item)
                review_state.record_decision(self.layout.review_path, name, "flip", teacher=teacher)
            else:
                if previous is not None and previous.get("decision") == "flip":
                    self._copy_mask(self.file_path(name, "pseudo"), item)
                if decision == "clear":
                    review_state.clear_decision(self.layout.review_path, name)
                else:
                    review_state.record_decision(self.layout.review_path, name, decision)
            review = review_state.read_review_or_empty(self.layout.review_path)
            return {"item": self.public_item(item, review), "counts": self.counts(review)}

    def _flip_target(self, item: dict, previous: Optional[dict], teacher: Optional[str]) -> str:
        teachers = self.item_teachers(item)
        if len(teachers) < 2:
            raise ReviewError(f"sample {item['name']!r} was labelled by {len(teachers)} teacher(s): "
                              f"nothing to flip to", HTTPStatus.CONFLICT)
        if teacher is not None:
            if teacher not in teachers:
                raise ReviewError(f"sample {item['name']!r} has no mask of teacher {teacher!r} "
                                  f"(teachers: {', '.join(teachers)})")
            return teacher
        if previous is not None and previous.get("decision") == "flip" and previous.get("teacher") in teachers:
            return teachers[(teachers.index(previous["teacher"]) + 1) % len(teachers)]
        return teachers[0]

    def _copy_mask(self, src: Path, item: dict) -> None:
        """Atomically replace the sample's mask with the PNG ``src``."""
        try:
            data = src.read_bytes()
        except OSError as e:
            raise DataError(f"{src}: cannot read mask ({e.strerror or e})") from None
        write_bytes_atomic(self.layout.resolve(item["mask"]), data)


class ReviewHandler(BaseHTTPRequestHandler):
    server: "ReviewHTTPServer"
    protocol_version = "HTTP/1.1"

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            hostname = host[1:host.find("]")] if "]" in host else host
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        return is_loopback(hostname)

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "Host must be a loopback address")
        url = urlsplit(self.path)
        session = self.server.session
        try:
            if url.path in ("/", "/index.html"):
                return self._static("index.html")
            if url.path.startswith("/static/"):
                return self._static(url.path[len("/static/"):])
            if url.path == "/api/state":
                return self._json(session.state())
            if url.path == "/api/file":
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                path = session.file_path(q.get("name", ""), q.get("kind", ""), q.get("teacher"))
                return self._send(HTTPStatus.OK, path.read_bytes(),
                                  CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))
            return self._error(HTTPStatus.NOT_FOUND, f"no route {url.path}")
        except ReviewError as e:
            return self._error(e.status, str(e))
        except RtsegError as e:
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "Host must be a loopback address")
        if urlsplit(self.path).path != "/api/decision":
            return self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the decision as application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, f"body must be 1..{MAX_BODY} bytes of JSON")
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "body is not a JSON object")
        name, decision, teacher = body.get("name"), body.get("decision"), body.get("teacher")
        if not isinstance(name, str) or not isinstance(decision, str) or not (teacher is None or isinstance(teacher, str)):
            return self._error(HTTPStatus.BAD_REQUEST, "expected {\"name\": str, \"decision\": str[, \"teacher\": str]}")
        try:
            return self._json(self.server.session.decide(name, decision, teacher))
        except ReviewError as e:
            return self._error(e.status, str(e))
        except RtsegError as e:
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))

    def _static(self, name: str) -> None:
        path = STATIC_DIR / name
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
            return self._error(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
        self._send(HTTPStatus.OK, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"))


class ReviewHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], session: ReviewSession) -> None:
        self.session = session
        super().__init__(address, ReviewHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class _ReviewHTTPServer6(ReviewHTTPServer):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(root: PathLike, host: str = "127.0.0.1", port: int = 0) -> ReviewHTTPServer:
    """A review server for the dataset ``root`` bound to ``host:port`` (port 0: any free port).
    Run it with ``serve_forever()``; its address is ``server.url``."""
    if not is_loopback(host):
        raise RtsegError(f"--host {host}: not a loopback address; rtseg review serves this machine only "
                         f"(use 127.0.0.1, ::1 or localhost)")
    session = ReviewSession(root)
    cls = _ReviewHTTPServer6 if ":" in host else ReviewHTTPServer
    bind = "127.0.0.1" if host.lower() == "localhost" else host
    try:
        return cls((bind, port), session)
    except OSError as e:
        raise RtsegError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None

"""A loopback fake of the Braintrust data API: a real HTTP server on 127.0.0.1.

It answers `POST /v1/experiment/{id}/fetch`, `GET /v1/experiment`, `GET /v1/experiment/{id}`,
the project and organization lists and objects, and `POST /v1/dataset/{id}/insert` the way
the public spec and the skill's references/api-notes.md describe, with each uncertain variant
selectable per experiment, records every request it gets, and injects faults by request
number.

Paging follows the notes: rows come newest first (by `_xact_id`) over the whole version
history, and `limit` counts traces, not rows: a page ends before the row that would bring
in trace number `limit + 1`. So a trace's older versions can land on later pages.
"""
from __future__ import annotations

import base64
import email.utils
import gzip
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

API_KEY = "sk-test-Zq8vR2mN4pL6xT0wY3bC5dF7gH9jK1"
# Every other key a test hands the script: none may show in anything it prints either.
OTHER_KEYS = ("sk-not-a-real-key", "sk-wrong-key-from-dotenv", "sk-other-Hq2Lw9Xe")


@dataclass
class Experiment:
    """Rows of every version, in any order; the fake serves them newest first."""
    rows: List[Dict[str, Any]]
    name: str = "experiment"
    project: str = "project"
    org: str = "org"
    project_id: Optional[str] = None  # by default, one id per organisation and project name
    created: str = "2026-11-20T10:00:00.000Z"
    # Where the next cursor travels: "body", "header" (x-bt-cursor only: on the 303 itself
    # when redirected), "both", or behind a redirect only on the object store's answer:
    # "blob-header" (x-bt-cursor) or "blob-amz-meta" (x-amz-meta-bt_cursor).
    cursor_in: str = "body"
    trailing_empty_page: bool = True  # the recorded real exchange: the last page has a cursor
    redirect: Optional[str] = None  # None, "gzip-encoding" or "gzip-raw": 303 to the blob host
    base_exp_id: Optional[str] = None  # the experiment the web app compares with by default
    # "both" sends a header cursor with every page; these vary it (issue 11):
    header_cursor: str = "same"  # "same"; "decoy" (a valid cursor, not the body's); "odd"
    # (only on odd-numbered pages' answers)
    server_delay: float = 0.0  # seconds the server takes to build each page
    bandwidth: Optional[float] = None  # bytes a second at which each body is sent
    hold: float = 0.0  # hold a page's body until the next page is asked for (at most this)

    def __post_init__(self):
        self.rows = sorted(self.rows, key=lambda row: int(row["_xact_id"]), reverse=True)
        self.project_id = self.project_id or str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"project/{self.org}/{self.project}"))
        self.org_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"org/{self.org}"))


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: Any
    at: float


def encode_cursor(offset: int) -> str:
    # Real cursors are base64 with '+' and '/': make sure ours have both.
    return base64.b64encode(b"\xfb\xef\xff" + str(offset).encode()).decode()


def decode_cursor(cursor: str) -> Optional[int]:
    try:
        raw = base64.b64decode(cursor, validate=True)
        return int(raw[3:]) if raw[:3] == b"\xfb\xef\xff" else None
    except ValueError:
        return None


def merged(old: Any, new: Any, stop_at: List[List[str]], path: List[str]) -> Any:
    """`new` deep-merged into `old`, not descending below any path in `stop_at`."""
    if not isinstance(old, dict) or not isinstance(new, dict) or path in stop_at:
        return new
    result = dict(old)
    for key, value in new.items():
        result[key] = merged(old.get(key), value, stop_at, path + [key]) if key in old else value
    return result


def page_of(rows: List[Dict[str, Any]], offset: int, limit: int) -> Tuple[List[Dict], int]:
    """Rows from `offset` until the row that would bring in trace number limit + 1."""
    traces = set()
    end = offset
    while end < len(rows):
        trace = rows[end]["root_span_id"]
        if trace not in traces and len(traces) == limit:
            break
        traces.add(trace)
        end += 1
    return rows[offset:end], end


class FakeBraintrust:
    """The fake API plus a second 'object store' server on another port for 303 redirects."""

    def __init__(self, key: str = API_KEY, unknown_experiment_status: int = 400,
                 tls: Any = None):
        self.key = key
        self.unknown_experiment_status = unknown_experiment_status
        self.experiments: Dict[str, Experiment] = {}
        self.faults: Dict[int, Dict[str, Any]] = {}
        self.requests: List[Request] = []
        self.blob_requests: List[Request] = []
        self.connections = 0
        self.open_connections = 0  # connections whose handler is still running
        self.in_flight = self.most_in_flight = 0  # fetch requests being answered at once
        self.blobs: Dict[str, Tuple[bytes, str, Dict[str, str]]] = {}
        self.datasets: Dict[str, Dict[str, Dict[str, Any]]] = {}  # dataset id -> id -> row
        self.lock = threading.Lock()
        self.fetch_arrived = threading.Condition(self.lock)  # notified as each fetch arrives
        self.wake = threading.Event()  # cuts every injected delay short (see reset)
        self._page_cache: Dict[Tuple[str, int, int], Tuple[bytes, Optional[str]]] = {}
        self.api = _serve(self._handle_api, self, tls)
        self.blob_host = _serve(self._handle_blob, self)
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.api.server_address[1])
        self.blob_url = "http://127.0.0.1:%d" % self.blob_host.server_address[1]

    def add(self, experiment: Experiment, experiment_id: Optional[str] = None) -> str:
        experiment_id = experiment_id or str(uuid.uuid4())
        self.experiments[experiment_id] = experiment
        return experiment_id

    def close(self) -> None:
        for server in (self.api, self.blob_host):
            server.shutdown()
            server.server_close()

    def pause(self, seconds: float) -> None:
        """An injected delay, cut short by reset() so it cannot reach into the next test."""
        self.wake.wait(seconds)

    def reset(self) -> None:
        self.wake.set()  # handlers still sleeping from an interrupted run: finish now
        deadline = time.time() + 5
        while self.in_flight and time.time() < deadline:
            time.sleep(0.01)
        self.wake = threading.Event()
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.blob_requests.clear()
            self.connections = 0
            self.most_in_flight = self.in_flight
            self.unknown_experiment_status = 400

    def fetches(self) -> List[Request]:
        return [r for r in self.requests if r.path.endswith("/fetch")]

    def wait_for_fetches(self, count: int, timeout: float) -> bool:
        """Wait until `count` fetch requests have arrived (an event the client makes, not
        a poll of the clock); False if `timeout` passes first."""
        with self.lock:
            return self.fetch_arrived.wait_for(lambda: len(self.fetches()) >= count, timeout)

    def wait_for_in_flight(self, count: int, timeout: float) -> bool:
        """Wait until `count` fetch requests are being answered at once."""
        with self.lock:
            return self.fetch_arrived.wait_for(lambda: self.in_flight >= count, timeout)

    def settle(self, timeout: float = 10) -> None:
        """Wait until every connection's handler has ended: after the client has exited,
        every request it sent whole is then in the log."""
        deadline = time.time() + timeout
        while self.open_connections and time.time() < deadline:
            time.sleep(0.01)

    # -- the API --------------------------------------------------------------------------

    def _handle_api(self, handler: "Handler", request: Request) -> None:
        is_fetch = request.path.endswith("/fetch")
        with self.lock:
            self.requests.append(request)
            number = len(self.requests)
            fault = self.faults.get(number)
            if is_fetch:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                self.fetch_arrived.notify_all()
        try:
            self._answer(handler, request, number, fault)
        finally:
            if is_fetch:
                with self.lock:
                    self.in_flight -= 1

    def _answer(self, handler: "Handler", request: Request, number: int,
                fault: Optional[Dict[str, Any]]) -> None:
        if fault:
            if fault.get("delay"):
                self.pause(fault["delay"])
            if fault.get("drop"):
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if "status" in fault:
                headers = dict(fault.get("headers") or {})
                if "retry_after_in" in fault:  # an HTTP date, as of this answer
                    headers["Retry-After"] = email.utils.formatdate(
                        time.time() + fault["retry_after_in"], usegmt=True)
                handler.reply(fault["status"], fault.get("body", "").encode(),
                              fault.get("content_type", "text/plain"), headers)
                return
            if fault.get("html"):
                handler.reply(200, b"<html><body><h1>Gateway login</h1></body></html>",
                              "text/html")
                return
        auth = request.headers.get("authorization")
        if auth != f"Bearer {self.key}":
            handler.reply(401, b"Invalid API key", "text/plain")
            return
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and parts == ["v1", "experiment"]:
            self._list_experiments(handler, request)
        elif request.method == "GET" and parts in (["v1", "project"], ["v1", "organization"]):
            self._list_projects_or_organisations(handler, request, parts[1])
        elif request.method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "experiment"]:
            self._get_experiment(handler, parts[2])
        elif request.method == "GET" and len(parts) == 3 and parts[1] in ("project",
                                                                          "organization"):
            self._get_project_or_organisation(handler, parts[1], parts[2])
        elif request.method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "experiment"] \
                and parts[3] == "fetch":
            self._fetch(handler, request, parts[2], fault or {}, number)
        elif request.method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "dataset"] \
                and parts[3] == "insert":
            self._insert(handler, request, parts[2])
        else:
            handler.reply(404, b"Not found", "text/plain")

    def _insert(self, handler: "Handler", request: Request, dataset_id: str) -> None:
        """`POST /v1/dataset/{id}/insert` as the spec's InsertDatasetEvent says: a row whose id
        exists is replaced whole, unless `_is_merge` is true: then the new fields are
        deep-merged into it, except below each of `_merge_paths`, which are replaced."""
        rows = self.datasets.setdefault(dataset_id, {})
        events = (request.body or {}).get("events") if isinstance(request.body, dict) else None
        if not isinstance(events, list):
            handler.reply(400, b"events must be a list", "text/plain")
            return
        ids = []
        for event in events:
            fields = {k: v for k, v in event.items() if k not in ("_is_merge", "_merge_paths")}
            old = rows.get(fields.get("id"))
            if event.get("_is_merge") and old is not None:
                rows[fields["id"]] = merged(old, fields, event.get("_merge_paths") or [], [])
            else:
                rows[fields["id"]] = fields
            ids.append(fields["id"])
        handler.reply(200, json.dumps({"row_ids": ids}).encode(), "application/json")

    def experiment_object(self, experiment_id: str) -> Dict[str, Any]:
        """The experiment as the API describes it (`Experiment` in the spec)."""
        experiment = self.experiments[experiment_id]
        return {"id": experiment_id, "project_id": experiment.project_id,
                "name": experiment.name, "description": None, "public": False,
                "created": experiment.created, "base_exp_id": experiment.base_exp_id,
                "deleted_at": None, "dataset_id": None, "metadata": None}

    def _get_experiment(self, handler: "Handler", experiment_id: str) -> None:
        if experiment_id not in self.experiments:
            handler.reply(self.unknown_experiment_status, json.dumps(
                {"error": f"Experiment {experiment_id} not found"}).encode(), "application/json")
            return
        handler.reply(200, json.dumps(self.experiment_object(experiment_id)).encode(),
                      "application/json")

    def _list_experiments(self, handler: "Handler", request: Request) -> None:
        query = {key: values[0] for key, values in request.query.items()}
        objects = []
        for experiment_id, experiment in self.experiments.items():
            if query.get("experiment_name", experiment.name) != experiment.name:
                continue
            if query.get("project_name", experiment.project) != experiment.project:
                continue
            if query.get("org_name", experiment.org) != experiment.org:
                continue
            objects.append(self.experiment_object(experiment_id))
        handler.reply(200, json.dumps({"objects": objects}).encode(), "application/json")

    def _projects_or_organisations(self, kind: str) -> Dict[str, Dict[str, Any]]:
        """`Project` or `Organization` objects as the spec gives them, by id: one for each
        project and organisation the experiments are in."""
        objects: Dict[str, Dict[str, Any]] = {}
        for experiment in self.experiments.values():
            if kind == "organization":
                objects[experiment.org_id] = {"id": experiment.org_id, "name": experiment.org}
            else:
                objects[experiment.project_id] = {
                    "id": experiment.project_id, "org_id": experiment.org_id,
                    "name": experiment.project, "created": experiment.created,
                    "deleted_at": None, "user_id": None}
        return objects

    def _list_projects_or_organisations(self, handler: "Handler", request: Request,
                                        kind: str) -> None:
        """GET /v1/project (filtered by project_name) or GET /v1/organization."""
        query = {key: values[0] for key, values in request.query.items()}
        objects = [item for item in self._projects_or_organisations(kind).values()
                   if query.get("project_name", item["name"]) == item["name"]]
        handler.reply(200, json.dumps({"objects": objects}).encode(), "application/json")

    def _get_project_or_organisation(self, handler: "Handler", kind: str,
                                     object_id: str) -> None:
        """GET /v1/project/{id} or /v1/organization/{id}: the object, or a JSON 404."""
        found = self._projects_or_organisations(kind).get(object_id)
        if found is None:
            handler.reply(404, json.dumps({"error": f"{kind} {object_id} not found"}).encode(),
                          "application/json")
            return
        handler.reply(200, json.dumps(found).encode(), "application/json")

    def _fetch(self, handler: "Handler", request: Request, experiment_id: str,
               fault: Dict[str, Any], number: int) -> None:
        experiment = self.experiments.get(experiment_id)
        if experiment is None:
            status = self.unknown_experiment_status
            handler.reply(status, json.dumps({"error": f"Experiment {experiment_id} not found"
                                              }).encode(), "application/json")
            return
        body = request.body if isinstance(request.body, dict) else {}
        limit = body.get("limit", 1000)
        cursor = body.get("cursor")
        offset = decode_cursor(cursor) if cursor else 0
        if not isinstance(limit, int) or limit < 1 or offset is None:
            handler.reply(400, b"Invalid limit or cursor", "text/plain")
            return
        key = (experiment_id, offset, limit)
        cached = self._page_cache.get(key)
        if cached is None:
            rows, end = page_of(experiment.rows, offset, limit)
            next_cursor = None
            if rows and (end < len(experiment.rows) or experiment.trailing_empty_page):
                next_cursor = encode_cursor(end)
            page: Dict[str, Any] = {"events": rows}
            if next_cursor and experiment.cursor_in in ("body", "both"):
                page["cursor"] = next_cursor
            cached = (json.dumps(page).encode(), next_cursor)
            self._page_cache[key] = cached
        payload, next_cursor = cached
        if fault.get("repeat_cursor") and cursor:
            payload = json.dumps({"events": json.loads(payload)["events"][:1],
                                  "cursor": cursor}).encode()
        headers, blob_headers = {}, {}
        if next_cursor and experiment.cursor_in in ("header", "both"):
            page_number = len(self._pages_before(experiment, offset, limit)) + 1
            if experiment.header_cursor == "same":
                headers["x-bt-cursor"] = next_cursor
            elif experiment.header_cursor == "decoy":  # a real cursor, of the wrong page
                headers["x-bt-cursor"] = encode_cursor(decode_cursor(next_cursor) + 1)
            elif experiment.header_cursor == "odd" and page_number % 2:
                headers["x-bt-cursor"] = next_cursor
        if experiment.server_delay:
            time.sleep(experiment.server_delay)

        def before_body() -> None:
            if experiment.hold and next_cursor:  # until the next fetch request arrives
                with self.lock:
                    self.fetch_arrived.wait_for(lambda: len(self.fetches()) > number_of_fetch,
                                                timeout=experiment.hold)

        with self.lock:
            number_of_fetch = len(self.fetches())
        if next_cursor and experiment.cursor_in == "blob-header":
            blob_headers["x-bt-cursor"] = next_cursor
        if next_cursor and experiment.cursor_in == "blob-amz-meta":
            blob_headers["x-amz-meta-bt_cursor"] = next_cursor
        if fault.get("body_delay"):
            handler.before_body = lambda: self.pause(fault["body_delay"])
        if fault.get("trickle"):  # the headers, then a byte every `trickle` seconds
            handler.reply(200, payload, "application/json", headers,
                          trickle=fault["trickle"])
        elif fault.get("cut"):
            handler.reply(200, payload, "application/json", headers, cut=True)
        elif experiment.redirect:
            token = uuid.uuid4().hex
            self.blobs[token] = (gzip.compress(payload, compresslevel=1), experiment.redirect,
                                 blob_headers)
            location = f"{self.blob_url}/blob/{token}.json.gz?X-Amz-Signature={token[:16]}"
            handler.reply(303, b"", "text/plain", dict(headers, Location=location))
        else:
            handler.before_body = getattr(handler, "before_body", None) or before_body
            handler.reply(200, payload, "application/json", headers,
                          bandwidth=experiment.bandwidth)

    @staticmethod
    def _pages_before(experiment: Experiment, offset: int, limit: int) -> List[int]:
        starts, at = [], 0
        while at < offset:
            starts.append(at)
            at = page_of(experiment.rows, at, limit)[1]
        return starts

    # -- the object store behind a 303 --------------------------------------------------------

    def _handle_blob(self, handler: "Handler", request: Request) -> None:
        with self.lock:
            self.blob_requests.append(request)
        token = request.path.rsplit("/", 1)[-1].split(".")[0]
        blob, variant, headers = self.blobs.get(token, (None, None, {}))
        if request.method != "GET" or blob is None:
            handler.reply(404, b"NoSuchKey", "application/xml")
            return
        if variant == "gzip-encoding":
            handler.reply(200, blob, "application/json", dict(headers, **{"Content-Encoding": "gzip"}))
        else:  # a stored .json.gz object: gzip bytes, no Content-Encoding
            handler.reply(200, blob, "application/octet-stream", headers)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in separate writes: with Nagle's algorithm the body would wait
    # for the client's delayed ACK of the headers, 40 ms a request, as no real server does.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1
            self.server.fake.open_connections += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.fake.lock:
                self.server.fake.open_connections -= 1

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:  # the client left half-way through: no request to record
            self.close_connection = True
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        split = urlsplit(self.path)
        request = Request(self.command, split.path, parse_qs(split.query),
                          {k.lower(): v for k, v in self.headers.items()}, body,
                          time.monotonic())
        self.server.respond(self, request)

    do_GET = do_POST = _dispatch

    before_body: Any = None  # called between the headers and the body, when set

    def reply(self, status: int, body: bytes, content_type: str,
              headers: Optional[Dict[str, str]] = None, cut: bool = False,
              bandwidth: Optional[float] = None, trickle: Optional[float] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if cut:  # the connection dies half-way through the body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.before_body is not None:
            before, self.before_body = self.before_body, None
            before()
        if trickle is not None:  # never faster than a byte a `trickle`: stops when cut off
            try:
                for sent in range(len(body)):
                    self.wfile.write(body[sent:sent + 1])
                    self.wfile.flush()
                    self.server.fake.pause(trickle)
            except OSError:
                pass
            self.close_connection = True
            return
        if bandwidth is None:
            self.wfile.write(body)
            return
        chunk = 64 * 1024  # streamed at `bandwidth` bytes a second
        started = time.perf_counter()
        for sent in range(0, len(body), chunk):
            self.wfile.write(body[sent:sent + chunk])
            ahead = (sent + chunk) / bandwidth - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (an interrupted run): nothing to report


def _serve(respond, fake: FakeBraintrust, tls: Any = None) -> _Server:
    server = _Server(("127.0.0.1", 0), Handler)
    if tls is not None:  # an ssl.SSLContext: serve HTTPS
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.respond = respond  # type: ignore[attr-defined]
    server.fake = fake  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

#!/usr/bin/env python3
# /// script
# requires-python = ">=3.9"
# dependencies = ["requests>=2.32", "python-dotenv>=1.0"]
# ///
"""Fetch every result of a Braintrust experiment as flat JSON records, one per test case.

The data flows top to bottom: settings (key, URL, arguments) -> HTTP session -> pages ->
events to records (pure functions) -> output -> main. Stdout carries only the records;
every message goes to stderr. Exit codes: 0 done, 1 the API or the network failed,
2 bad arguments or settings, 130 interrupted.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import ipaddress
import json
import os
import random
import re
import sys
import tempfile
import time
import unicodedata
import urllib.parse
import uuid
from itertools import islice
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional,
                    Union)

import requests
from dotenv import dotenv_values, find_dotenv
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

__version__ = "1.0.0"
PROG = "fetch_experiment_results.py"

DEFAULT_API_URL = "https://api.braintrust.dev"
MAX_PAGE_SIZE = 1000  # the API's documented ceiling per request
CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0  # what the official SDK uses for BRAINTRUST_HTTP_TIMEOUT
RETRIES_PER_REQUEST = 5
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
RETRY_AFTER_CAP = 60.0
SERVER_TEXT_LIMIT = 300

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or settings: exit 2, before any request."""


class ApiError(Exception):
    """The API or the network failed: exit 1."""


# ---------------------------------------------------------------------------------------
# Settings: arguments, key, URL
# ---------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2 (not the usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def positive_int(text: str, *, most: Optional[int] = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or (most is not None and value > most):
        bounds = f"from 1 to {most}" if most else "of at least 1"
        raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text!r}")
    return value


def page_size(text: str) -> int:
    return positive_int(text, most=MAX_PAGE_SIZE)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = Parser(
        prog=PROG,
        allow_abbrev=False,  # a typo must not silently become another flag
        description="Fetch every result of a Braintrust experiment as flat JSON records, "
        "one per test case (its root span), on stdout.",
        epilog="EXPERIMENT is one of: an experiment id (a UUID); an experiment link from the "
        "Braintrust web app (https://www.braintrust.dev/app/ORG/p/PROJECT/experiments/NAME); "
        "or an experiment name with --project (and --org if the name is ambiguous). "
        "The key comes from BRAINTRUST_API_KEY, in the environment or in a .env file in this "
        "folder or above; never from a flag. BRAINTRUST_API_URL sets the API for EU or "
        "self-hosted deployments, BRAINTRUST_HTTP_TIMEOUT the read timeout in seconds (60). "
        "Exit codes: 0 done, 1 the API or network failed, 2 bad arguments or settings, "
        "130 interrupted.",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT",
                        help="experiment id, experiment link, or name (with --project)")
    parser.add_argument("--project", metavar="NAME",
                        help="project of the experiment named by EXPERIMENT")
    parser.add_argument("--org", metavar="NAME",
                        help="organisation of the project, when a name alone is ambiguous")
    parser.add_argument("--limit", type=page_size, default=MAX_PAGE_SIZE, metavar="N",
                        help=f"traces per API page, 1 to {MAX_PAGE_SIZE} (default {MAX_PAGE_SIZE})")
    parser.add_argument("--max-results", type=positive_int, metavar="N",
                        help="return at most N records (the first N) and stop fetching "
                        "once they are complete")
    parser.add_argument("--edited-only", action="store_true",
                        help="only records whose expected value was edited in the Braintrust "
                        'UI; each gets "edited": true')
    parser.add_argument("--format", choices=("json", "jsonl"), default="json",
                        help="json: one indented array (default); jsonl: one record per line")
    parser.add_argument("--output", metavar="FILE",
                        help="write to FILE (replaced only when the run succeeds) instead of stdout")
    parser.add_argument("--api-url", metavar="URL",
                        help=f"API base URL (default: $BRAINTRUST_API_URL, else {DEFAULT_API_URL})")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="print nothing on stderr but errors")
    talk.add_argument("--verbose", action="store_true", help="print a line on stderr per page")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


class Settings(NamedTuple):
    key: str
    api_url: str
    read_timeout: float


def read_settings(args: argparse.Namespace, environ: Dict[str, str]) -> Settings:
    """Key, API URL and timeout, from the environment, else from the nearest .env file."""
    dotenv_path = find_dotenv(usecwd=True)
    from_file = dotenv_values(dotenv_path) if dotenv_path else {}

    def setting(name: str) -> str:
        # An exported value wins; an exported but empty one counts as unset.
        return (environ.get(name) or from_file.get(name) or "").strip()

    key = setting("BRAINTRUST_API_KEY")
    if not key:
        raise UsageError(
            "BRAINTRUST_API_KEY is not set: export it, or put BRAINTRUST_API_KEY=... in a .env "
            "file in this folder or a parent (keys: Braintrust > Settings > API keys)")
    if not all(33 <= ord(char) <= 126 for char in key):
        raise UsageError("BRAINTRUST_API_KEY holds spaces or characters that cannot go in an "
                         "HTTP header: copy the key again")
    api_url = checked_api_url(args.api_url or setting("BRAINTRUST_API_URL") or DEFAULT_API_URL)
    timeout_text = setting("BRAINTRUST_HTTP_TIMEOUT") or str(DEFAULT_READ_TIMEOUT)
    try:
        read_timeout = float(timeout_text)
    except ValueError:
        read_timeout = 0.0
    if not 0 < read_timeout < float("inf"):
        raise UsageError(f"BRAINTRUST_HTTP_TIMEOUT must be a number of seconds above 0, "
                         f"got {timeout_text!r}")
    if args.output:
        check_writable(args.output)
    return Settings(key, api_url, read_timeout)


def check_writable(path: str) -> None:
    """Refuse an --output the run could not write, before spending any request on it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--output {path!r} is a folder: name a file")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--output {path!r}: cannot create files in {folder!r} (missing, "
                         "or no permission)")


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_api_url(url: str) -> str:
    """The base URL without a trailing slash; the key may only travel over https (or to loopback)."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        parts.port  # raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the API URL {url!r} is not an http(s) URL: use e.g. {DEFAULT_API_URL}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(f"the API URL {url!r} must be a plain base URL, with no credentials, "
                         f"query or fragment: use e.g. {DEFAULT_API_URL}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(f"refusing to send the API key over plain http to {parts.hostname}: "
                         f"use an https:// URL (plain http is allowed only to localhost)")
    return urllib.parse.urlunsplit(parts).rstrip("/")


class Target(NamedTuple):
    """The experiment asked for: an id, or names to look the id up by."""
    id: Optional[str]
    org: Optional[str] = None
    project: Optional[str] = None
    name: Optional[str] = None


APP_LINK_PATH = re.compile(r"/app/([^/]+)/p/([^/]+)/experiments/([^/]+)/?")


def parse_target(text: str, project: Optional[str], org: Optional[str]) -> Target:
    """EXPERIMENT as an id, a web-app link or a name; an id is canonical so it can't bend the path."""
    text = text.strip()
    try:
        experiment_id = str(uuid.UUID(text))
    except ValueError:
        experiment_id = None
    if experiment_id or re.match(r"https?://", text, re.IGNORECASE):
        if project is not None or org is not None:
            raise UsageError("--project and --org go with an experiment name, not with an id "
                             "or a link (which already says where the experiment is)")
    if experiment_id:
        return Target(experiment_id)
    if re.match(r"https?://", text, re.IGNORECASE):
        match = APP_LINK_PATH.fullmatch(urllib.parse.urlsplit(text).path)
        names = [urllib.parse.unquote(part) for part in match.groups()] if match else []
        if not names or not all(name.strip() for name in names):
            raise UsageError(f"{text!r} is not an experiment link: expected "
                             "https://<app host>/app/ORG/p/PROJECT/experiments/EXPERIMENT")
        return Target(None, *names)
    if not text:
        raise UsageError("EXPERIMENT is empty: pass an experiment id, link, or name with --project")
    if not project or not project.strip():
        raise UsageError(f"{text!r} is not an experiment id (a UUID): to fetch by name, add "
                         "--project NAME (and --org NAME if needed), or paste the experiment's link")
    return Target(None, org.strip() if org else None, project.strip(), text)


# ---------------------------------------------------------------------------------------
# HTTP session: keep-alive, key only as a header, urllib3's Retry for backoff
# ---------------------------------------------------------------------------------------

class AnnouncedRetry(Retry):
    """urllib3's Retry plus what it cannot do: say each retry on stderr, and honour
    Retry-After (capped at 60 s) on every retried status, not only 413/429/503."""

    def __init__(self, *args: Any, announce: Callable[[str], None] = lambda line: None,
                 what: str = "request", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.announce, self.what = announce, what

    def new(self, **kwargs: Any) -> "AnnouncedRetry":
        kwargs.setdefault("announce", self.announce)
        kwargs.setdefault("what", self.what)
        return super().new(**kwargs)

    def sleep(self, response: Any = None) -> None:
        # urllib3 makes the first retry at once; a rate-limited API deserves a pause.
        wait = (self.get_backoff_time()
                or self.backoff_factor + random.random() * self.backoff_jitter)
        if response is not None and response.headers.get("Retry-After"):
            try:
                wait = min(self.parse_retry_after(response.headers["Retry-After"]),
                           RETRY_AFTER_CAP)
            except Exception:  # an unreadable Retry-After: fall back to the backoff
                pass
        last = self.history[-1] if self.history else None
        if last is not None and last.status:
            why = f"the API answered {last.status}"
        elif last is not None and last.error is not None:
            why = f"the connection failed ({describe_error(last.error)})"
        else:
            why = "the request failed"
        self.announce(f"{self.what}: {why}; retrying in {wait:.1f} s "
                      f"(attempt {len(self.history) + 1} of {RETRIES_PER_REQUEST + 1})")
        time.sleep(wait)


def retry_policy(what: str, announce: Callable[[str], None]) -> AnnouncedRetry:
    return AnnouncedRetry(
        total=RETRIES_PER_REQUEST,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=None,  # POST too: the fetch only reads
        backoff_factor=0.5,  # 0.5 s, then 1, 2, 4, 8 s, each plus up to 0.5 s of jitter
        backoff_jitter=0.5,
        backoff_max=30.0,
        raise_on_status=False,  # hand back the last answer so its message can be shown
        what=what,
        announce=announce,
    )


def bearer(key: str) -> Callable[[requests.PreparedRequest], requests.PreparedRequest]:
    """The key as a requests auth hook: requests drops it on a redirect to another host."""
    def add_key(request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {key}"
        return request
    return add_key


def open_session(settings: Settings) -> requests.Session:
    session = requests.Session()
    session.auth = bearer(settings.key)  # also keeps ~/.netrc from replacing the key
    session.headers["User-Agent"] = (f"braintrust-fetch-experiment-results/{__version__} "
                                     f"python-requests/{requests.__version__}")
    adapter = HTTPAdapter(max_retries=retry_policy("request", lambda line: None))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def describe_error(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, in one short line
    ("Connection refused", "timed out"), not the chain of wrappers around it."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in error.args if isinstance(arg, BaseException)),
                         error.__cause__)
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return clean_text(text or type(error).__name__, limit=160)


class Answer(NamedTuple):
    """An HTTP answer with its whole body read."""
    status: int
    reason: str
    headers: Any  # case-insensitive
    body: bytes
    tries: int


def send(session: requests.Session, method: str, url: str, what: str, settings: Settings,
         announce: Callable[[str], None], **kwargs: Any) -> Answer:
    """One request with its body read, retried as a whole (within the same budget) when the
    connection breaks after the headers, which urllib3 does not retry by itself."""
    adapter = session.get_adapter(url)
    retry = retry_policy(what, announce)
    while True:
        adapter.max_retries = retry
        try:
            response = session.request(method, url, stream=True,
                                       timeout=(CONNECT_TIMEOUT, settings.read_timeout), **kwargs)
        except requests.exceptions.ConnectionError as error:
            raise ApiError(f"{what}: could not reach {urllib.parse.urlsplit(url).netloc} "
                           f"({describe_error(error)}); check the network and the API URL") from None
        except requests.exceptions.RequestException as error:
            raise ApiError(f"{what}: the request failed ({describe_error(error)})") from None
        retry = response.raw.retries or retry
        try:
            # One read of the whole body (gzip undone): much cheaper than requests' 10 KB chunks.
            body = response.raw.read(decode_content=True)
            return Answer(response.status_code, response.reason or "", response.headers, body,
                          len(retry.history) + 1)
        except (HTTPError, OSError) as error:
            try:
                retry = retry.increment(method, url, error=ProtocolError(
                    f"answer cut short: {describe_error(error)}"))
            except MaxRetryError:
                raise ApiError(f"{what}: the connection broke while reading the answer, "
                               f"{RETRIES_PER_REQUEST + 1} times ({describe_error(error)})") from None
            retry.sleep()
        finally:
            response.close()


# ---------------------------------------------------------------------------------------
# The API: name lookup and pages
# ---------------------------------------------------------------------------------------

CONTROL_OR_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|\x1b[@-_]?"  # any other escape
)


def clean_text(text: str, limit: int = SERVER_TEXT_LIMIT, secret: str = "") -> str:
    """Someone else's text made safe for a terminal: no escapes, no control characters,
    one line, trimmed; the key, should a server echo it, replaced."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = CONTROL_OR_ESCAPE.sub("", text[: limit * 4])  # a body may be megabytes of HTML
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
                   for char in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def server_message(answer: Answer, secret: str) -> str:
    text = answer.body.decode("utf-8", "replace")
    try:  # JSON error bodies usually carry the words under one of these keys
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("error") or data.get("message") or data.get("detail") or text)
    except ValueError:
        pass
    return clean_text(text, secret=secret) or "(empty body)"


def check_status(answer: Answer, what: str, secret: str, not_found: str) -> None:
    if 200 <= answer.status < 300:
        return
    words = f"{answer.status} {answer.reason}".strip()
    message = server_message(answer, secret)
    if answer.status in (401, 403):
        raise ApiError(f"{what}: the API refused the key ({words}: {message}); check that "
                       "BRAINTRUST_API_KEY is a valid key of an organisation that can read it")
    if answer.status in (400, 404):
        raise ApiError(f"{what}: {not_found} ({words}: {message})")
    tries = f"{answer.tries} {'try' if answer.tries == 1 else 'tries'}"
    raise ApiError(f"{what}: the API answered {words} after {tries}: {message}")


def first_bytes(answer: Answer) -> str:
    kind = answer.headers.get("Content-Type") or "no content type"
    return f"{kind}: {clean_text(answer.body[:200].decode('utf-8', 'replace'), limit=120)!r}"


def read_json(answer: Answer, what: str) -> Any:
    """The body as JSON; a gzip body from an object store is unpacked first."""
    body = answer.body
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            pass
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"{what}: the answer is not JSON ({answer.status}, {first_bytes(answer)})"
                       "; is the API URL right?") from None


def resolve_experiment(session: requests.Session, settings: Settings, target: Target,
                       announce: Callable[[str], None]) -> str:
    """The id of the one live experiment with these names."""
    where = f"experiment {target.name!r} in project {target.project!r}" + (
        f" of organisation {target.org!r}" if target.org else "")
    query = {"project_name": target.project, "experiment_name": target.name}
    if target.org:
        query["org_name"] = target.org
    what = f"looking up {where}"
    answer = send(session, "GET", f"{settings.api_url}/v1/experiment", what, settings,
                  announce, params=query)
    check_status(answer, what, settings.key, "the API could not look it up; check the names")
    data = read_json(answer, what)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ApiError(f"{what}: the answer has no list of objects")
    found = [item for item in data["objects"] if isinstance(item, dict)
             and item.get("name") == target.name and not item.get("deleted_at")]
    if not found:
        raise ApiError(f"no {where} was found with this key; check the names (they are exact "
                       "and case-sensitive) or pass the experiment id")
    if len(found) > 1:
        listed = "; ".join(f"id {item.get('id')} (project {item.get('project_id')}, created "
                           f"{item.get('created')})" for item in found)
        raise ApiError(f"{len(found)} experiments match {where}: {listed}. Add --org NAME to "
                       "choose, or pass the experiment id")
    try:
        return str(uuid.UUID(str(found[0].get("id"))))
    except ValueError:
        raise ApiError(f"{what}: the API gave an experiment id that is not a UUID") from None


def fetch_pages(session: requests.Session, settings: Settings, experiment_id: str,
                limit: int, announce: Callable[[str], None]) -> Iterator[List[Any]]:
    """Each page's events, in the API's order, until a page comes back empty or uncursored."""
    url = f"{settings.api_url}/v1/experiment/{experiment_id}/fetch"
    cursors_sent = set()
    cursor = None
    page = 0
    while True:
        page += 1
        what = f"page {page}"
        body: Dict[str, Any] = {"limit": limit}
        if cursor:
            body["cursor"] = cursor
        answer = send(session, "POST", url, what, settings, announce, json=body)
        check_status(answer, what, settings.key, f"experiment {experiment_id} was not found "
                     "or is not readable with this key; check the id (copy it from the "
                     "experiment's page) and the organisation of the key")
        data = read_json(answer, what)
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise ApiError(f"{what}: the answer is JSON but not a page of events "
                           f"({first_bytes(answer)})")
        # The body's cursor first; some deployments send it only as a header.
        cursor = data.get("cursor") or answer.headers.get("x-bt-cursor")
        yield data["events"]
        if not data["events"] or not cursor:
            return
        if cursor in cursors_sent:
            raise ApiError(f"{what}: the API sent back a cursor it had already sent, so paging "
                           "would never end; stopping. Try again later, or report it to Braintrust")
        cursors_sent.add(cursor)


# ---------------------------------------------------------------------------------------
# Events to records: pure functions, no I/O
# ---------------------------------------------------------------------------------------

class RootPart(NamedTuple):
    """What a record needs from its root span's newest version."""
    trace: Any
    record: Dict[str, Any]
    edited: bool


class ScorePart(NamedTuple):
    """What a record needs from a scorer span's newest version."""
    trace: Any
    scores: Dict[str, Any]


def xact_number(event: Dict[str, Any]) -> int:
    try:
        return int(event.get("_xact_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1


def is_root_span(event: Dict[str, Any]) -> bool:
    # is_root is nullable and absent on older rows: then a root is a span with no parents.
    flag = event.get("is_root")
    if isinstance(flag, bool):
        return flag
    return not event.get("span_parents")


def span_type(event: Dict[str, Any]) -> Any:
    attributes = event.get("span_attributes")
    return attributes.get("type") if isinstance(attributes, dict) else None


def was_expected_edited(audit_data: Any) -> bool:
    """True when an audit entry records a UI merge into `expected`; entries are read
    defensively, with their fields on the entry or in its nested audit_data."""
    for entry in audit_data if isinstance(audit_data, list) else []:
        if not isinstance(entry, dict):
            continue
        for fields in (entry, entry.get("audit_data")):
            if isinstance(fields, dict) and fields.get("action") == "merge":
                path = fields.get("path")
                if isinstance(path, list) and path and path[0] == "expected":
                    return True
    return False


def dataset_origin(origin: Any) -> Optional[Dict[str, Any]]:
    if isinstance(origin, dict) and origin.get("object_type") == "dataset":
        return {"dataset_id": origin.get("object_id"), "dataset_record_id": origin.get("id")}
    return None


def score_dict(scores: Any) -> Dict[str, Any]:
    return scores if isinstance(scores, dict) else {}


def essentials(event: Dict[str, Any]) -> Union[RootPart, ScorePart, None]:
    """The part of one event version that records need; None for deletions and for spans
    that no record shows (task, llm, tool, review...), so the rest of the event can be freed."""
    if event.get("_object_delete") is True:
        return None
    if is_root_span(event):
        metadata = event.get("metadata")
        record = {
            "root_span_id": event.get("root_span_id"),
            "input": event.get("input"),
            "output": event.get("output"),
            "expected": event.get("expected"),
            "metadata": {} if metadata is None else metadata,
            "scores": score_dict(event.get("scores")),  # the root's own; merged later
            "origin": dataset_origin(event.get("origin")),
        }
        return RootPart(event.get("root_span_id"), record,
                        was_expected_edited(event.get("audit_data")))
    if span_type(event) == "score":
        return ScorePart(event.get("root_span_id"), score_dict(event.get("scores")))
    return None


def absorb(latest: Dict[Any, tuple], events: Iterable[Any]) -> None:
    """Fold a page into `latest`: event id -> (version, essentials) of its newest version.
    Pages run over the whole version history, so an id may come again, older or newer.
    Spans that no record shows are not remembered (every version of a task or llm span is
    one), so the table grows with the records, not with the events; deletions are."""
    for event in events:
        if not isinstance(event, dict):
            continue
        part = essentials(event)
        if part is None and event.get("_object_delete") is not True:
            continue
        key = event.get("id") or (event.get("root_span_id"), event.get("span_id"))
        version = xact_number(event)
        known = latest.get(key)
        if known is None or version > known[0]:
            latest[key] = (version, part)


def count_records(latest: Dict[Any, tuple], edited_only: bool) -> int:
    return sum(1 for _, part in latest.values()
               if isinstance(part, RootPart) and (part.edited or not edited_only))


def records_from(latest: Dict[Any, tuple], edited_only: bool) -> Iterator[Dict[str, Any]]:
    """One record per live root, in the order the roots first arrived. Scores: the trace's
    scorer spans, overlaid by the root's own (the root holds human corrections)."""
    trace_scores: Dict[Any, Dict[str, Any]] = {}
    for _, part in latest.values():
        if isinstance(part, ScorePart):
            trace_scores.setdefault(part.trace, {}).update(part.scores)
    for _, part in latest.values():
        if isinstance(part, RootPart) and (part.edited or not edited_only):
            record = dict(part.record)
            record["scores"] = {**trace_scores.get(part.trace, {}), **part.record["scores"]}
            if edited_only:
                record["edited"] = True
            yield record


# ---------------------------------------------------------------------------------------
# Output: JSON array or JSON lines, written only once every page has arrived
# ---------------------------------------------------------------------------------------

# Built once: json.dumps with options would build a new encoder for every record.
INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2)
COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(record: Dict[str, Any], encoder: json.JSONEncoder) -> bytes:
    try:
        return encoder.encode(record).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the API: keep it, as a \u escape
        fallback = json.JSONEncoder(indent=encoder.indent, separators=(encoder.item_separator,
                                                                       encoder.key_separator))
        return fallback.encode(record).encode("ascii")


def render(records: Iterable[Dict[str, Any]], output_format: str) -> Iterator[bytes]:
    """The output, record by record, so no second copy of it is built in memory."""
    if output_format == "jsonl":
        for record in records:
            yield encode(record, COMPACT) + b"\n"
        return
    # The same bytes as json.dumps(records, indent=2): JSON strings hold no raw newline,
    # so indenting a record by two more spaces is a plain replace.
    opening = b"[\n  "
    for record in records:
        yield opening + encode(record, INDENTED).replace(b"\n", b"\n  ")
        opening = b",\n  "
    yield b"[]\n" if opening == b"[\n  " else b"\n]\n"


def write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a failed or
    interrupted run leaves an existing file as it was, and no temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777  # a replaced file keeps its permissions
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle = tempfile.NamedTemporaryFile(
        "wb", dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp", delete=False)
    try:
        with handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
        raise


def write_stdout(chunks: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace, target: Target, settings: Settings,
        tell: Callable[[str], None], progress: Optional[Callable[[str], None]]) -> None:
    # JSON trees hold no reference cycles, so the cyclic collector would only rescan the
    # growing record table on every page it parses: reference counting frees everything.
    gc.disable()
    announce = (lambda line: None) if args.quiet else tell
    session = open_session(settings)
    experiment_id = target.id
    if experiment_id is None:
        experiment_id = resolve_experiment(session, settings, target, announce)
        if args.verbose:
            tell(f"{target.name!r} in project {target.project!r} is experiment {experiment_id}")
    latest: Dict[Any, tuple] = {}
    events = pages = found = 0
    for page in fetch_pages(session, settings, experiment_id, args.limit, announce):
        absorb(latest, page)
        pages, events = pages + 1, events + len(page)
        if progress or args.max_results:
            found = count_records(latest, args.edited_only)
            if progress:
                progress(f"page {pages}: {len(page)} events ({events} in all), "
                         f"{found} records so far")
            if args.max_results and found >= args.max_results:
                break
    if progress:
        progress(f"{min(found, args.max_results or found)} records from {pages} pages "
                 f"({events} events)")
    records = islice(records_from(latest, args.edited_only), args.max_results)
    chunks = render(records, args.format)
    if args.output:
        write_atomically(args.output, chunks)
    else:
        write_stdout(chunks)
    session.close()


def main(argv: Optional[List[str]] = None) -> int:
    stderr_is_tty = sys.stderr.isatty()
    secret = ""

    def tell(message: str) -> None:
        line = message.replace(secret, "[redacted]") if secret else message
        sys.stderr.write(("\r\x1b[K" if stderr_is_tty else "") + line + "\n")
        sys.stderr.flush()

    try:
        args = parse_args(argv)
        target = parse_target(args.experiment, args.project, args.org)
        settings = read_settings(args, dict(os.environ))
        secret = settings.key

        def overwrite(line: str) -> None:
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()

        # A line per page with --verbose; on a terminal, one line that keeps updating.
        progress: Optional[Callable[[str], None]] = None
        if args.verbose:
            progress = tell
        elif stderr_is_tty and not args.quiet:
            progress = overwrite
        run(args, target, settings, tell, progress)
        if progress is overwrite:
            sys.stderr.write("\n")  # keep the last progress line: it sums the run up
        return EXIT_OK
    except UsageError as error:
        tell(f"{PROG}: error: {error}")
        return EXIT_USAGE
    except ApiError as error:
        tell(f"{PROG}: error: {error}")
        return EXIT_API
    except KeyboardInterrupt:
        tell(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as error:  # writing the output failed: disk full, permissions...
        where = f" ({error.filename})" if error.filename else ""
        tell(f"{PROG}: error: {error.strerror or error}{where}")
        return EXIT_API
    except Exception as error:  # a bug of ours: still one line, and never the key
        tell(f"{PROG}: error: unexpected {type(error).__name__}: {clean_text(str(error))}; "
             "please report this with the command you ran")
        return EXIT_API


if __name__ == "__main__":
    sys.exit(main())

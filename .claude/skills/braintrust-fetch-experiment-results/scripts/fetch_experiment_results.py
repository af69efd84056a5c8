#!/usr/bin/env python3
# /// script
# requires-python = ">=3.9"
# dependencies = ["requests>=2.32", "python-dotenv>=1.0"]
# ///
"""Fetch every result of a Braintrust experiment as flat JSON records, one per test case.

The data flows top to bottom: settings (key, URL, arguments) -> HTTP session -> pages ->
events to records (pure functions) -> the store of newest versions (a dict, then a
temporary SQLite file: memory stays flat at any size) -> analysis: filters, baseline,
summary, statistics -> records -> output -> main. Stdout carries only the data; every
message goes to stderr. Exit codes: 0 done, 1 the API or the network failed, 2 bad arguments or settings, 3 the gate failed
(--fail-on-regression), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import csv
import difflib
import gc
import io
import ipaddress
import json
import marshal
import math
import operator
import os
import random
import re
import signal
import socket
import sqlite3
import stat
import sys
import tempfile
import textwrap
import threading
import time
import unicodedata
import urllib.parse
import uuid
import zlib
from concurrent.futures import Future, wait
from contextlib import contextmanager
from fractions import Fraction
from itertools import islice
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, NamedTuple,
                    Optional, Tuple, Union)

try:
    import requests
    from dotenv import dotenv_values
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import (HTTPError, MaxRetryError, NameResolutionError,
                                    ProtocolError, SSLError)
    from urllib3.util.retry import Retry
except ModuleNotFoundError as missing:  # a Python without the two dependencies: no traceback
    if missing.name not in ("requests", "dotenv", "urllib3"):
        raise
    package = "python-dotenv" if missing.name == "dotenv" else missing.name
    sys.stderr.write(
        f"fetch_experiment_results.py: error: this Python ({sys.executable}) has no "
        f"{package!r}; run the script with uv (uv run fetch_experiment_results.py ..., which "
        "installs what its header names), or in a virtual environment: python3 -m venv .venv "
        "&& . .venv/bin/activate && python3 -m pip install requests python-dotenv\n")
    sys.exit(2)

__version__ = "1.4.0"
PROG = "fetch_experiment_results.py"

DEFAULT_API_URL = "https://api.braintrust.dev"
DEFAULT_APP_URL = "https://www.braintrust.dev"  # the web app of the default API
MAX_PAGE_SIZE = 1000  # the API's documented ceiling per request
CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0  # what the official SDK uses for BRAINTRUST_HTTP_TIMEOUT
DEFAULT_RETRIES = 5  # per request; BRAINTRUST_NUM_RETRIES, the official SDK's name
DEFAULT_IN_FLIGHT = 2  # page requests at once: BRAINTRUST_MAX_IN_FLIGHT=1 pages one by one
DEFAULT_DEADLINE = 300.0  # seconds one request may take, first byte sent to last received
DEFAULT_SPILL_MB = 48  # megabytes of pages handled in memory before rows move to disk
DEFAULT_MAX_PAGE_MB = 512  # megabytes one answer may hold, unpacked: far above any real page
MAX_REDIRECTS = 10
DEFAULT_PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is no terminal
GATE_MODES = ("cases", "mean", "significant")  # what --gate may say fails the gate
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
RETRY_AFTER_CAP = 60.0
SERVER_TEXT_LIMIT = 300  # characters of a server's words shown in a message
SCANNED_TEXT = 65536  # characters of a server's words read for them

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_REGRESSED = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class UsageError(Exception):
    """Bad arguments or settings: exit 2."""


class ApiError(Exception):
    """The API or the network failed: exit 1."""


class Regressed(Exception):
    """The gate of --fail-on-regression failed: exit 3, once the output is written."""


class MalformedAnswer(ApiError):
    """The API's answer is JSON, but not in the shape the spec gives: exit 1, naming what."""


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class Terminated(BaseException):
    """SIGTERM: unwound like Ctrl-C, so a temporary file is removed on the way out."""


class Signals:
    """Ctrl-C and SIGTERM as exceptions (KeyboardInterrupt, Terminated), raised once: a
    second signal while the first unwinds is ignored, so a run ends with one line. Inside
    `held()` a signal waits until the block ends, so a temporary file is never created
    without being registered for removal, nor half removed. (Python runs its handlers in
    the main thread whichever thread the kernel picked, so a flag here holds them all,
    where blocking the signals in the main thread alone would not.)"""

    def __init__(self) -> None:
        self.holding, self.pending, self.raised = 0, None, False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.arrived)
        signal.signal(signal.SIGTERM, self.arrived)

    def arrived(self, signum: int, frame: Any) -> None:
        if self.raised:
            return
        if self.holding:
            self.pending = signum
            return
        self.raised = True
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
            if not self.holding and self.pending is not None:
                signum, self.pending = self.pending, None
                self.arrived(signum, None)


SIGNALS = Signals()  # the process's own: signals are delivered to a process, not a call


# ---------------------------------------------------------------------------------------
# Settings: arguments, key, URL
# ---------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2 (not the usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


class Wrapping(argparse.HelpFormatter):
    """argparse's help, but a line never breaks inside a flag (--max-|results)."""

    def _split_lines(self, text: str, width: int) -> List[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


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


def result_count(text: str) -> int:
    """--max-results: any count, the largest meaning every record there can be."""
    return min(positive_int(text), sys.maxsize)


def score_drop(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more (how far a score must "
                                         f"fall to count as a regression), got {text!r}")
    return value


def include_fields(values: Optional[List[str]]) -> Tuple[str, ...]:
    """--include a,b --include c (or `all`) as the fields asked for, in printing order."""
    asked = {name.strip() for value in values or [] for name in value.split(",")}
    asked.discard("")
    if "all" in asked:
        asked = set(INCLUDABLE)
    if "error" in asked:  # the root's error, and the other spans'
        asked.add("span_errors")
    unknown = sorted(asked - set(INCLUDABLE))
    if unknown:
        raise UsageError(f"--include: unknown field {', '.join(map(repr, unknown))}; the "
                         f"fields are {', '.join(INCLUDABLE)}, or all")
    return tuple(name for name in INCLUDABLE if name in asked)


class ScoreTest(NamedTuple):
    """--score "NAME OP NUMBER": a record passes when scores[NAME] OP NUMBER holds."""
    name: str
    op: str
    number: float


COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
               "==": operator.eq, "!=": operator.ne}
SCORE_TEST = re.compile(r"\s*(?P<name>.*?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<number>\S+)\s*")


def score_test(text: str) -> ScoreTest:
    if re.search(r"=<|=>", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: write <= or >= (the = comes second), e.g. \"Accuracy<=0.5\"")
    match = SCORE_TEST.fullmatch(text)
    number = math.nan
    if match:
        try:
            number = float(match["number"])
        except ValueError:
            pass
    single = re.fullmatch(r"\s*(?P<name>[^<>=!]*?)\s*=\s*(?P<number>[^=<>]+?)\s*", text)
    if not match and single and single["name"]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write == to compare for equality, e.g. "
            f"\"{single['name']}=={single['number']}\"")
    if not match or not match["name"] or not math.isfinite(number):
        raise argparse.ArgumentTypeError(
            f"expected NAME OP NUMBER with OP one of < <= > >= == != "
            f"(e.g. \"Exact Match<1\"), got {text!r}")
    return ScoreTest(match["name"], match["op"], number)


class Filters(NamedTuple):
    """The flags that choose records, joined with AND."""
    edited_only: bool = False
    errors_only: bool = False
    scores: Tuple[ScoreTest, ...] = ()
    tags: Tuple[str, ...] = ()
    regressions_only: bool = False


class Options(NamedTuple):
    """The command line, read once; nothing changes it afterwards."""
    experiment: Optional[str]
    project: Optional[str] = None
    org: Optional[str] = None
    limit: int = MAX_PAGE_SIZE
    max_results: Optional[int] = None
    include: Tuple[str, ...] = ()
    filters: Filters = Filters()
    baseline: Optional[str] = None
    gate: Optional["Gate"] = None  # --fail-on-regression, --gate, --allow-missing
    min_drop: float = 0.0
    truncate: Optional[int] = None
    summary: bool = False
    output_format: str = "json"
    schema: bool = False
    output: Optional[str] = None  # None: stdout
    api_url: Optional[str] = None
    quiet: bool = False
    verbose: bool = False

    @property
    def with_costs(self) -> bool:
        """Whether each span's few numbers are kept, for metrics to add up."""
        return (self.summary or self.output_format in ("markdown", "junit")
                or "metrics" in self.include)


def parse_args(argv: Optional[List[str]] = None) -> Options:
    parser = Parser(
        prog=PROG,
        formatter_class=Wrapping,
        allow_abbrev=False,  # a typo must not silently become another flag
        description="Fetch every result of a Braintrust experiment as flat JSON records, "
        "one per test case (its root span), on stdout.",
        epilog="EXPERIMENT is one of: an experiment id (a UUID); an experiment link from the "
        "Braintrust web app (https://www.braintrust.dev/app/ORG/p/PROJECT/experiments/NAME); "
        "or an experiment name with --project (and --org if the name is ambiguous). "
        "The key comes from BRAINTRUST_API_KEY, in the environment or in a .env file in the "
        "current folder or above; never from a flag. BRAINTRUST_API_URL sets the API for EU "
        "or self-hosted deployments, BRAINTRUST_HTTP_TIMEOUT the read timeout in seconds "
        f"({DEFAULT_READ_TIMEOUT:g}), BRAINTRUST_NUM_RETRIES the retries per request "
        f"({DEFAULT_RETRIES}), BRAINTRUST_MAX_IN_FLIGHT the page requests at once "
        f"({DEFAULT_IN_FLIGHT}; 1 requests each page only after the one before), "
        f"BRAINTRUST_HTTP_DEADLINE the seconds one request may take in all, first byte sent "
        f"to last received ({DEFAULT_DEADLINE:g}), BRAINTRUST_MAX_PAGE_MB the megabytes one "
        f"answer may hold, unpacked ({DEFAULT_MAX_PAGE_MB}), BRAINTRUST_PROGRESS_EVERY the "
        f"seconds between progress lines when stderr is no terminal "
        f"({DEFAULT_PROGRESS_EVERY:g}), BRAINTRUST_SPILL_MB the megabytes of pages handled in memory "
        f"before the rows move to a temporary file in TMPDIR ({DEFAULT_SPILL_MB}). "
        "Filters combine with AND; --max-results counts after them. "
        "Exit codes: 0 done, 1 the API or network failed, 2 bad arguments or settings, "
        "3 the gate of --fail-on-regression failed, 130 interrupted, 143 terminated.",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT", nargs="?",
                        help="experiment id, experiment link, or name (with --project)")
    parser.add_argument("--project", metavar="NAME",
                        help="project of the experiment named by EXPERIMENT")
    parser.add_argument("--org", metavar="NAME",
                        help="organisation of the project, when a name alone is ambiguous")
    parser.add_argument("--limit", type=page_size, default=MAX_PAGE_SIZE, metavar="N",
                        help=f"traces per API page, 1 to {MAX_PAGE_SIZE} (default {MAX_PAGE_SIZE})")
    parser.add_argument("--max-results", type=result_count, metavar="N",
                        help="at most N records, the first N; stops requesting pages after the "
                        "page that completes N records, so a score whose newest version "
                        "comes on a later page is missed (without it, records are exact)")
    parser.add_argument("--include", action="append", metavar="FIELD[,FIELD...]",
                        help=f"extra fields after origin: {', '.join(INCLUDABLE)}, or all")
    parser.add_argument("--edited-only", action="store_true",
                        help="only records whose expected value was edited in the Braintrust "
                        'UI; each gets "edited": true')
    parser.add_argument("--errors-only", action="store_true",
                        help="only records where a span of the test case raised an error (the "
                        "root, or a task, llm, tool or scorer span)")
    parser.add_argument("--score", action="append", type=score_test, metavar="EXPR",
                        help='only records whose score passes EXPR, "NAME OP NUMBER" with OP '
                        "one of < <= > >= == != (repeatable; a missing score fails)")
    parser.add_argument("--tag", action="append", metavar="TAG",
                        help="only records tagged TAG (repeatable: every tag given)")
    parser.add_argument("--baseline", metavar="EXPERIMENT",
                        help="compare each record with this experiment (id, link, name in the "
                        "same project, or auto: the experiment's base experiment); records gain "
                        "baseline, diff and status")
    parser.add_argument("--regressions-only", action="store_true",
                        help="with --baseline: only records that scored lower than the baseline")
    parser.add_argument("--fail-on-regression", action="append", nargs="?", const="",
                        metavar="SCORE",
                        help="with --baseline: write the output, then exit 3 if a record "
                        "printed regressed (on SCORE only, when given; repeatable)")
    parser.add_argument("--gate", dest="gate_mode", choices=GATE_MODES, default="cases",
                        help="with --fail-on-regression, what fails it: cases (default: any "
                        "record printed regressed), mean (a gated score's paired mean fell by "
                        "--min-drop or more) or significant (it fell beyond its 95%% "
                        "interval); a lost score, a new error or a missing case fails it in "
                        "every mode")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with --fail-on-regression: baseline cases that the run does not "
                        "have do not fail the gate (a run on a subset)")
    parser.add_argument("--min-drop", type=score_drop, default=0.0, metavar="X",
                        help="with --baseline: a score must fall by at least X to count as a "
                        "regression, in status, the summary and the gate (default: any fall "
                        "beyond float noise, 1e-9)")
    parser.add_argument("--truncate", type=positive_int, metavar="N",
                        help="cut strings in input, output, expected, metadata and error to N "
                        "characters, marked with …[+K chars]")
    parser.add_argument("--summary", action="store_true",
                        help="print one JSON object describing the records instead of them")
    parser.add_argument("--format", choices=("json", "jsonl", "csv", "markdown", "junit"),
                        default="json",
                        help="json: one indented array (default); jsonl: one record per line; "
                        "csv: a header row, then one row per record; markdown: a report (counts, "
                        "a table of scores, the regressed or errored cases) for a pull request; "
                        "junit: JUnit XML, a testcase per record, for CI")
    parser.add_argument("--schema", action="store_true",
                        help="print the JSON Schema of one record (of the summary, with "
                        "--summary) for the other flags given, and exit: no key or network")
    parser.add_argument("--output", metavar="FILE",
                        help="write to FILE (replaced only when the run succeeds) instead of "
                        "stdout; - is stdout")
    parser.add_argument("--api-url", metavar="URL",
                        help=f"API base URL (default: $BRAINTRUST_API_URL, else {DEFAULT_API_URL})")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="print nothing on stderr but errors")
    talk.add_argument("--verbose", action="store_true", help="print a line on stderr per page")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.experiment is None and not args.schema:
        raise UsageError("the following arguments are required: EXPERIMENT")
    for flag, given in (("--regressions-only", args.regressions_only),
                        ("--fail-on-regression", args.fail_on_regression is not None),
                        ("--min-drop", args.min_drop > 0)):
        if given and args.baseline is None:
            raise UsageError(f"{flag} needs --baseline EXPERIMENT (or --baseline auto)")
    for flag, given in (("--gate", args.gate_mode != "cases"),
                        ("--allow-missing", args.allow_missing)):
        if given and args.fail_on_regression is None:
            raise UsageError(f"{flag} goes with --fail-on-regression (and --baseline)")
    if args.summary and args.format == "csv":
        raise UsageError("--summary prints one JSON object: use --format json or jsonl with it")
    if args.summary and args.format in ("markdown", "junit"):
        raise UsageError(f"--format {args.format} is already a summary: leave out --summary")
    if args.schema and args.format in ("markdown", "junit"):
        raise UsageError(f"--schema describes JSON records: {args.format} is a report, with "
                         "no JSON schema")
    gate = None
    if args.fail_on_regression is not None:  # named scores, or (one given bare) any score
        names = frozenset(name.strip() for name in args.fail_on_regression)
        gate = Gate(None if "" in names else names, args.gate_mode, args.min_drop,
                    args.allow_missing)
    if args.output == "":
        raise UsageError("--output is empty: name a file, or - for stdout")
    return Options(
        experiment=args.experiment, project=args.project, org=args.org, limit=args.limit,
        max_results=args.max_results, include=include_fields(args.include),
        filters=Filters(args.edited_only, args.errors_only, tuple(args.score or ()),
                        tuple(args.tag or ()), args.regressions_only),
        baseline=args.baseline, gate=gate, min_drop=args.min_drop, truncate=args.truncate,
        summary=args.summary, output_format=args.format, schema=args.schema,
        output=None if args.output == "-" else args.output, api_url=args.api_url,
        quiet=args.quiet, verbose=args.verbose)


class Settings(NamedTuple):
    key: str
    api_url: str
    read_timeout: float
    retries: int
    max_in_flight: int
    deadline: float = DEFAULT_DEADLINE
    spill_after: int = DEFAULT_SPILL_MB << 20  # bytes of pages
    key_source: str = "the environment"  # or the .env file the key was read from
    max_page: int = DEFAULT_MAX_PAGE_MB << 20  # bytes one answer may hold, unpacked
    progress_every: float = DEFAULT_PROGRESS_EVERY  # seconds between lines off a terminal
    app_url: Optional[str] = None  # the web app's base URL, for links; None: not known


def seconds_setting(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{name} must be a number of seconds above 0, got {text!r}")
    return value


def megabytes_setting(name: str, text: str, least: float, why: str) -> int:
    """A size in bytes, from megabytes (`least`: the fewest allowed, 0 or just above)."""
    try:
        value = float(text) * 2 ** 20
    except ValueError:
        value = -1.0
    if not least <= value < float("inf") or (least > 0 and value < 1):
        raise UsageError(f"{name} must be a number of megabytes, {why}, got {text!r}")
    return int(value)


def dotenv_files(folder: str) -> List[str]:
    """The .env files in this folder and in each folder above it, nearest first."""
    files, folder = [], os.path.abspath(folder)
    while True:
        path = os.path.join(folder, ".env")
        if os.path.isfile(path):
            files.append(path)
        parent = os.path.dirname(folder)
        if parent == folder:
            return files
        folder = parent


def dotenv_settings(files: List[str]) -> Dict[str, Tuple[str, str]]:
    """Each setting the files give a value, from the nearest file that does: a nearer .env
    that leaves one out (or empty) does not hide a parent's. name -> (value, file)."""
    found: Dict[str, Tuple[str, str]] = {}
    for path in reversed(files):
        for name, value in dotenv_values(path).items():
            if value and value.strip():
                found[name] = (value.strip(), path)
    return found


def key_setting(exported: str, found: Dict[str, Tuple[str, str]], files: List[str]
                ) -> Tuple[str, str]:
    """BRAINTRUST_API_KEY, exported or from a .env file, and where it was read."""
    key, source = (exported, "the environment") if exported else found.get(
        "BRAINTRUST_API_KEY", ("", ""))
    empty = [path for path in files if "BRAINTRUST_API_KEY" in dotenv_values(path)]
    if not key and empty:
        raise UsageError(
            f"BRAINTRUST_API_KEY is empty in {empty[0]}: put the key after the = (keys: "
            "Braintrust > Settings > API keys), or export it")
    if not key:
        read = f" (read: {', '.join(files)})" if files else ""
        raise UsageError(
            "BRAINTRUST_API_KEY is not set: export it, or put BRAINTRUST_API_KEY=... in a .env "
            f"file in this folder or a parent{read} (keys: Braintrust > Settings > API keys)")
    if not all(33 <= ord(char) <= 126 for char in key):
        raise UsageError("BRAINTRUST_API_KEY holds spaces or characters that cannot go in an "
                         "HTTP header: copy the key again")
    return key, source


def read_settings(environ: Dict[str, str], api_url: Optional[str] = None,
                  output: Optional[str] = None) -> Settings:
    """Key, API URL, timeouts, retries and sizes, from the environment, else from the nearest
    .env file (the current folder, then its parents); --output checked writable."""
    files = dotenv_files(os.getcwd())
    found = dotenv_settings(files)

    def setting(name: str, default: Any = "") -> str:
        # An exported value wins; an exported but empty one counts as unset.
        return ((environ.get(name) or "").strip() or found.get(name, ("",))[0]
                or str(default))

    key, key_source = key_setting((environ.get("BRAINTRUST_API_KEY") or "").strip(), found,
                                  files)
    retries = setting("BRAINTRUST_NUM_RETRIES", DEFAULT_RETRIES)
    if not retries.isdigit() or int(retries) > 100:
        raise UsageError(f"BRAINTRUST_NUM_RETRIES must be a whole number from 0 to 100, "
                         f"got {retries!r}")
    in_flight = setting("BRAINTRUST_MAX_IN_FLIGHT", DEFAULT_IN_FLIGHT)
    if in_flight not in ("1", "2"):
        raise UsageError(f"BRAINTRUST_MAX_IN_FLIGHT must be 1 (one page request at a time) or "
                         f"2 (the next page requested while this one arrives), got {in_flight!r}")
    api_url = checked_api_url(api_url or setting("BRAINTRUST_API_URL", DEFAULT_API_URL))
    settings = Settings(
        key, api_url,
        seconds_setting("BRAINTRUST_HTTP_TIMEOUT",
                        setting("BRAINTRUST_HTTP_TIMEOUT", DEFAULT_READ_TIMEOUT)),
        int(retries), int(in_flight),
        seconds_setting("BRAINTRUST_HTTP_DEADLINE",
                        setting("BRAINTRUST_HTTP_DEADLINE", DEFAULT_DEADLINE)),
        megabytes_setting("BRAINTRUST_SPILL_MB", setting("BRAINTRUST_SPILL_MB", DEFAULT_SPILL_MB),
                          0, "0 or more (0: the rows go to disk from the first page)"),
        key_source,
        megabytes_setting("BRAINTRUST_MAX_PAGE_MB",
                          setting("BRAINTRUST_MAX_PAGE_MB", DEFAULT_MAX_PAGE_MB), 1e-9,
                          "above 0 (how large one answer of the API may be, unpacked)"),
        seconds_setting("BRAINTRUST_PROGRESS_EVERY",
                        setting("BRAINTRUST_PROGRESS_EVERY", DEFAULT_PROGRESS_EVERY)),
        app_url_setting(setting("BRAINTRUST_APP_URL"), api_url))
    if output:
        check_writable(output)
    return settings


def key_in_sight(environ: Dict[str, str]) -> str:
    """The key as read_settings will find it, read before anything else, so that even a
    message about the arguments (the key pasted where EXPERIMENT goes) cannot show it."""
    found = dotenv_settings(dotenv_files(os.getcwd()))
    return ((environ.get("BRAINTRUST_API_KEY") or "").strip()
            or found.get("BRAINTRUST_API_KEY", ("",))[0])


REAL_KEY_LENGTH = 16  # Braintrust keys are far longer; a shorter one is a test or a typo
# What a Braintrust key looks like (sk-..., and service tokens bt-st-...): redacted wherever
# it shows, whether or not it is this run's key.
KEY_SHAPE = re.compile(r"(?<![A-Za-z0-9])(?:sk|bt-st)[-_][A-Za-z0-9_-]{16,}")
EDGE_FRAGMENT = 4  # characters of a key left at the edge of a cut that are redacted


def redacted(text: str, key: str) -> str:
    """`text` with the key replaced: everywhere when it is as long as a real key (it must
    never show), else only where it stands as a whole token, so a key like "x" does not
    turn the program's name into fetch_e[redacted]periment_results.py."""
    if not key:
        return text
    if len(key) >= REAL_KEY_LENGTH:
        return text.replace(key, "[redacted]")
    return re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w-])", "[redacted]", text)


class Redactor:
    """What must never be shown: the keys this run knows of, and anything shaped like a
    Braintrust key. Every text bound for stderr passes here twice: before it is cut (a cut
    must not leave part of a key to show) and as it is written."""

    def __init__(self) -> None:
        self.keys: List[str] = []

    def add(self, key: str) -> None:
        if key and key not in self.keys:
            self.keys.append(key)

    def __call__(self, text: str) -> str:
        for key in self.keys:
            text = redacted(text, key)
        return KEY_SHAPE.sub("[redacted]", text)

    def edge(self, text: str) -> str:
        """`text`, which was cut, with whatever start of a key the cut left at its end
        redacted (the rest of the key was past the cut, where no redaction could see it)."""
        for key in self.keys:
            for size in range(min(len(key) - 1, len(text)), EDGE_FRAGMENT - 1, -1):
                if len(key) >= REAL_KEY_LENGTH and text.endswith(key[:size]):
                    return text[:-size] + "[redacted]"
        return text

    def cut(self, text: str, most: int) -> str:
        """`text` cut to `most` characters, … marking the cut, which leaves no part of a key."""
        return text if len(text) <= most else self.edge(text[: most - 1]) + "…"


REDACT = Redactor()  # the process's own: the key is one for the whole run


CONTROL_OR_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|\x1b[@-_]?"  # any other escape
)


def clean_text(text: str, limit: int = SERVER_TEXT_LIMIT, secret: str = "") -> str:
    """Someone else's text (a body, a reason phrase, a header, an error) made safe to show:
    no escapes, no control characters, one line, trimmed; keys redacted before any cut
    (and again once the escapes between a key's characters are gone)."""
    if len(text) > SCANNED_TEXT:  # a body may be megabytes of HTML
        text = REDACT.edge(redacted(REDACT(text[:SCANNED_TEXT]), secret))
    text = redacted(REDACT(CONTROL_OR_ESCAPE.sub("", redacted(REDACT(text), secret))), secret)
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
                   for char in text)
    return REDACT.cut(" ".join(text.split()), limit)


def is_regular_or_missing(path: str) -> bool:
    """False for what exists but is no plain file (a FIFO, /dev/null, /dev/stdout): such an
    --output is written into, never replaced."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # through any symlink
    except FileNotFoundError:
        return True


def check_writable(path: str) -> None:
    """Refuse an --output the run could not write, before spending any request on it."""
    if os.path.isdir(path):
        raise UsageError(f"--output {path!r} is a folder: name a file")
    if not is_regular_or_missing(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"--output {path!r}: no permission to write it")
        return
    folder = os.path.dirname(os.path.realpath(path))  # a symlink's target gets replaced
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
    if parts.path.rstrip("/").lower().endswith("/v1"):
        raise UsageError(f"the API URL {url!r} ends in /v1: give the base URL without it "
                         f"(e.g. {DEFAULT_API_URL}); the script adds /v1/... itself")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(f"refusing to send the API key over plain http to {parts.hostname}: "
                         f"use an https:// URL (plain http is allowed only to localhost)")
    return urllib.parse.urlunsplit(parts).rstrip("/")


def app_url_setting(text: str, api_url: str) -> Optional[str]:
    """BRAINTRUST_APP_URL (the official SDK's name), the web app the report links to; unset,
    the default API's app, and None for another API (a self-hosted app's URL is not the
    API's: a link guessed from it would lead nowhere)."""
    if not text:
        return DEFAULT_APP_URL if api_url == DEFAULT_API_URL else None
    # Plain URL characters only: the link goes into markdown, where ( ) < > and spaces end it.
    if not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~%/-]*)?", text.strip()):
        raise UsageError(f"BRAINTRUST_APP_URL must be the web app's base URL, e.g. "
                         f"{DEFAULT_APP_URL}, got {clean_text(text, limit=80)!r}")
    return text.strip().rstrip("/")


class Target(NamedTuple):
    """The experiment asked for: an id, or names to look the id up by."""
    id: Optional[str]
    org: Optional[str] = None
    project: Optional[str] = None
    name: Optional[str] = None


APP_LINK_PATH = re.compile(r"/app/([^/]+)/p/([^/]+)/experiments/([^/]+)/?")
AUTO = "auto"  # --baseline auto: the experiment's own base experiment


def canonical_id(text: str) -> Optional[str]:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def is_link(text: str) -> bool:
    return re.match(r"https?://", text.strip(), re.IGNORECASE) is not None


def parse_link(text: str) -> Target:
    """A web-app link: its names, or the id when its last part is one (some links hold it)."""
    match = APP_LINK_PATH.fullmatch(urllib.parse.urlsplit(text.strip()).path)
    names = [urllib.parse.unquote(part) for part in match.groups()] if match else []
    if not names or not all(name.strip() for name in names):
        raise UsageError(f"{text.strip()!r} is not an experiment link: expected "
                         "https://<app host>/app/ORG/p/PROJECT/experiments/EXPERIMENT")
    experiment_id = canonical_id(names[2])
    return Target(experiment_id) if experiment_id else Target(None, *names)


def what_is_wrong(text: str) -> Optional[str]:
    """For an EXPERIMENT that is no id, link or name with --project: what it nearly is."""
    if APP_LINK_PATH.search(text) or re.match(r"(www\.)?braintrust\.dev/", text, re.I):
        return (f"{text!r} looks like an experiment link without its https://: paste the "
                "whole link from the address bar, or add https:// in front")
    digits = re.sub(r"[-{}]|^urn:uuid:", "", text, flags=re.I)
    if len(digits) >= 24 and re.fullmatch(r"[0-9a-f]+", digits, re.I):
        return (f"{text!r} looks like an experiment id, but has {len(digits)} hex digits where "
                "an id has 32 (8-4-4-4-12): copy it again from the experiment's page")
    return None


def parse_target(text: str, project: Optional[str], org: Optional[str]) -> Target:
    """EXPERIMENT as an id, a web-app link or a name; an id is canonical so it can't bend the path."""
    text = text.strip()
    experiment_id = canonical_id(text)
    if (experiment_id or is_link(text)) and (project is not None or org is not None):
        raise UsageError("--project and --org go with an experiment name, not with an id "
                         "or a link (which already says where the experiment is)")
    if experiment_id:
        return Target(experiment_id)
    if is_link(text):
        return parse_link(text)
    if not text:
        raise UsageError("EXPERIMENT is empty: pass an experiment id, link, or name with --project")
    if not project or not project.strip():
        raise UsageError(what_is_wrong(text) or (
            f"{text!r} is not an experiment id (a UUID): to fetch by name, add --project "
            "NAME (and --org NAME if needed), or paste the experiment's link"))
    return Target(None, org.strip() if org else None, project.strip(), text)


def parse_baseline(text: str, main: Target) -> Union[Target, str]:
    """--baseline as an id, a link, `auto`, or a name in the main experiment's project."""
    text = text.strip()
    if text == AUTO:
        return AUTO
    experiment_id = canonical_id(text)
    if experiment_id:
        baseline = Target(experiment_id)
    elif is_link(text):
        baseline = parse_link(text)
    elif not text:
        raise UsageError("--baseline is empty: pass an experiment id, link or name, or auto")
    elif main.project is None:
        raise UsageError(f"--baseline {text!r} is a name, but the experiment's project is not "
                         "known (it was given by id): pass the baseline's id or link instead")
    else:
        baseline = Target(None, main.org, main.project, text)
    if baseline == main:
        raise UsageError("--baseline names the experiment itself: compare with another one")
    return baseline


# ---------------------------------------------------------------------------------------
# HTTP session: keep-alive, key only as a header, urllib3's Retry for backoff
# ---------------------------------------------------------------------------------------

class Deadline:
    """BRAINTRUST_HTTP_DEADLINE over one request: each attempt may take `seconds` from its
    first byte sent to the last byte of its answer, redirects and all. The read timeout
    cannot do that (every trickled byte restarts it), so a watcher thread shuts the
    attempt's socket down when time is up: whatever reads or writes it (the status line,
    headers, endless 100 Continues, the body, on a keep-alive or a closing connection)
    wakes as if the server had hung up. Connections tell it which socket is in use."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.changed = threading.Condition()
        self.started: Optional[float] = time.monotonic()  # None between attempts
        self.connection: Any = None
        self.sock: Any = None
        self.expired = False  # the current attempt ran out of time
        self.over = False
        threading.Thread(target=self.watch, daemon=True).start()

    def using(self, connection: Any) -> None:
        """A request goes out on `connection` (None: the attempt is between two hops)."""
        with self.changed:
            self.connection, self.sock = connection, None

    def answering(self, connection: Any) -> None:
        """Its answer comes: keep its socket, which http.client drops from a connection
        that will close while the body is still read through it."""
        with self.changed:
            if connection is self.connection:
                self.sock = connection.sock

    def between(self) -> bool:
        """The attempt is over (answered, or failed): stop its clock, and say whether it
        ran out of time. Its connection may go back to the pool, beyond the watcher's reach."""
        with self.changed:
            self.started, self.connection, self.sock = None, None, None
            return self.expired

    def restart(self) -> None:
        """A new attempt, after a retry's pause: its own `seconds`, from now."""
        with self.changed:
            self.started, self.expired = time.monotonic(), False
            self.changed.notify()

    def end(self) -> None:
        with self.changed:
            self.over, self.started = True, None
            self.changed.notify()

    def watch(self) -> None:
        # Ctrl-C and SIGTERM are the main thread's: blocked here, the kernel hands them there.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        with self.changed:
            while not self.over:
                left = (None if self.started is None or self.expired
                        else self.started + self.seconds - time.monotonic())
                if left is None or left > 0:
                    self.changed.wait(left)
                    continue
                self.expired = True
                sock = self.sock or getattr(self.connection, "sock", None)
                try:  # wakes the reading thread: its recv ends as if the server had closed
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except (OSError, TypeError):
                    pass


DEADLINES = threading.local()  # each thread's request in progress, for its connections


def watched(connection_class: type) -> type:
    """urllib3's connection class, telling the deadline of the thread's request in progress
    which connection it sends on and when its answer starts."""

    class Watched(connection_class):  # type: ignore[misc, valid-type]
        def request(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(DEADLINES, "current", None)
            if deadline is not None:
                deadline.using(self)
            return super().request(*args, **kwargs)

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(DEADLINES, "current", None)
            if deadline is not None:
                deadline.answering(self)
            return super().getresponse(*args, **kwargs)

    return Watched


class WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = watched(HTTPConnection)


class WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = watched(HTTPSConnection)


WATCHED_POOLS = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}


class AnnouncedRetry(Retry):
    """urllib3's Retry plus what it cannot do: say each retry on stderr, honour Retry-After
    (capped at 60 s) on every retried status, not only 413/429/503, restart the deadline
    for each attempt, and give up at once on what no retry can heal: a host name that does
    not resolve, a certificate not trusted, a port where nothing listens (the connection
    refused)."""

    def __init__(self, *args: Any, announce: Callable[[str], None] = lambda line: None,
                 what: str = "request", deadline: Optional[Deadline] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.announce, self.what, self.deadline = announce, what, deadline

    def new(self, **kwargs: Any) -> "AnnouncedRetry":
        kwargs.setdefault("announce", self.announce)
        kwargs.setdefault("what", self.what)
        kwargs.setdefault("deadline", self.deadline)
        return super().new(**kwargs)

    def increment(self, method: Optional[str] = None, url: Optional[str] = None,
                  *args: Any, error: Optional[Exception] = None, **kwargs: Any) -> "AnnouncedRetry":
        if self.deadline is not None and self.deadline.expired and error is not None:
            error = ProtocolError(late(self.deadline.seconds))  # what the cut looked like
        if isinstance(error, (NameResolutionError, SSLError)) or caused_by(
                error, ConnectionRefusedError):
            raise MaxRetryError(kwargs.get("_pool"), url or "", error)
        return super().increment(method, url, *args, error=error, **kwargs)

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
        tries = len(self.history) + (self.total or 0) + 1
        self.announce(f"{self.what}: {why}; retrying in {wait:.1f} s "
                      f"(attempt {len(self.history) + 1} of {tries})")
        if self.deadline is not None:
            self.deadline.between()
        time.sleep(wait)
        if self.deadline is not None:
            self.deadline.restart()


def late(seconds: float) -> str:
    return f"no whole answer within BRAINTRUST_HTTP_DEADLINE ({seconds:g} s)"


def retry_policy(what: str, announce: Callable[[str], None], retries: int,
                 deadline: Optional[Deadline] = None) -> AnnouncedRetry:
    return AnnouncedRetry(
        total=retries,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=None,  # POST too: the fetch only reads
        backoff_factor=0.5,  # 0.5 s, then 1, 2, 4, 8 s, each plus up to 0.5 s of jitter
        backoff_jitter=0.5,
        backoff_max=30.0,
        raise_on_status=False,  # hand back the last answer so its message can be shown
        what=what,
        announce=announce,
        deadline=deadline,
    )


def bearer(key: str) -> Callable[[requests.PreparedRequest], requests.PreparedRequest]:
    """The key as a requests auth hook: requests drops it on a redirect to another host."""
    def add_key(request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {key}"
        return request
    return add_key


class PerThreadRetries(HTTPAdapter):
    """requests' adapter, whose `max_retries` (read for every request) is kept per thread,
    so each of two page requests in flight spends its own retry budget, and whose
    connections answer to the deadline of their thread's request."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are classes of their own
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager

    def __init__(self, retries: Retry):
        self.local, self.default_retries = threading.local(), retries
        super().__init__(max_retries=retries)

    @property  # type: ignore[override]
    def max_retries(self) -> Retry:
        return getattr(self.local, "retries", self.default_retries)

    @max_retries.setter
    def max_retries(self, retries: Retry) -> None:
        self.local.retries = retries


def open_session(settings: Settings) -> requests.Session:
    session = requests.Session()
    session.auth = bearer(settings.key)  # also keeps ~/.netrc from replacing the key
    session.headers["User-Agent"] = (f"braintrust-fetch-experiment-results/{__version__} "
                                     f"python-requests/{requests.__version__}")
    session.headers["Accept-Encoding"] = "gzip, deflate"  # what read_body can unpack
    adapter = PerThreadRetries(retry_policy("request", lambda line: None, settings.retries))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """A requests/urllib3 error and each one it wraps, down to the innermost."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        yield error
        inner = getattr(error, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in error.args if isinstance(arg, BaseException)),
                         error.__cause__)
        error = inner  # type: ignore[assignment]


def caused_by(error: Optional[BaseException], *kinds: type) -> bool:
    """Whether the error, or one it wraps, is of one of these kinds."""
    return error is not None and any(isinstance(inner, kinds) for inner in error_chain(error))


def describe_error(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, in one short line
    ("Connection refused", "timed out"), not the chain of wrappers around it."""
    *_, error = error_chain(error)
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return clean_text(text or type(error).__name__, limit=160)


def unreachable(error: requests.exceptions.RequestException, what: str, url: str,
                redirected: bool = False) -> ApiError:
    """The one line for a request that got no answer, with what to do about it. A host
    that a redirect named is not the API URL's fault: said so."""
    host = clean_text(urllib.parse.urlsplit(url).netloc, limit=120)
    if redirected:
        return ApiError(f"{what}: could not reach {host}, where the API redirected the request "
                        f"({describe_error(error)}); the API URL is not at fault: try again "
                        "later, or report it to Braintrust if it goes on")
    if isinstance(error, requests.exceptions.SSLError):
        return ApiError(f"{what}: the TLS connection to {host} failed ({describe_error(error)})"
                        "; if your network uses a private certificate authority, point "
                        "REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at its certificate file")
    if caused_by(error, NameResolutionError, socket.gaierror):
        return ApiError(f"{what}: the host name {urllib.parse.urlsplit(url).hostname!r} does "
                        "not resolve; check the API URL (--api-url or BRAINTRUST_API_URL) "
                        "and the network")
    if caused_by(error, ConnectionRefusedError):
        return ApiError(f"{what}: could not reach {host}: the connection was refused, so "
                        "nothing listens there; check the API URL (--api-url or "
                        "BRAINTRUST_API_URL, e.g. " + DEFAULT_API_URL + ")")
    if isinstance(error, requests.exceptions.ConnectionError):
        return ApiError(f"{what}: could not reach {host} ({describe_error(error)}); check the "
                        "network and the API URL")
    return ApiError(f"{what}: the request failed ({describe_error(error)})")


class Answer(NamedTuple):
    """An HTTP answer with its whole body read (unpacked, when it came gzipped)."""
    status: int
    reason: str
    headers: Any  # case-insensitive
    body: bytes
    tries: int
    redirects: Tuple[Any, ...] = ()  # the headers of each redirect on the way, in order


class TooLarge(Exception):
    """An answer past BRAINTRUST_MAX_PAGE_MB: never retried, the same page would come."""


READ_CHUNK = 1 << 20  # bytes read at a time from a body whose size is not known ahead
GZIP_WBITS = 16 + zlib.MAX_WBITS


def unpacked(data: bytes, most: int, wbits: int = GZIP_WBITS) -> bytes:
    """gzip (or zlib) data inflated, refused past `most` bytes before they are all made
    (a few megabytes of gzip can hold gigabytes); members back to back are joined, as
    gzip.decompress joins them. zlib.error for data that is not whole or not gzip."""
    pieces, size = [], 0
    while data:
        inflate = zlib.decompressobj(wbits)
        piece = inflate.decompress(data, most - size + 1)
        size += len(piece)
        if size > most:
            raise TooLarge()
        if not inflate.eof:
            raise zlib.error("the compressed data ends before its end")
        pieces.append(piece)
        data = inflate.unused_data
    return b"".join(pieces)


def read_body(response: requests.Response, most: int) -> bytes:
    """The whole body, undone of its Content-Encoding, refused (TooLarge) past `most`
    bytes; in one read when its length is known and it is not encoded (the common case,
    and much cheaper than reading in chunks)."""
    headers, raw = response.headers, response.raw
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    length = headers.get("Content-Length") or ""
    if length.isdigit() and int(length) > most:
        raise TooLarge()
    if encoding == "identity" and length.isdigit():
        body = raw.read(decode_content=False)
    else:
        pieces, size = [], 0
        while True:
            piece = raw.read(READ_CHUNK, decode_content=False)
            if not piece:
                break
            size += len(piece)
            if size > most:
                raise TooLarge()
            pieces.append(piece)
        body = b"".join(pieces)
    if encoding in ("gzip", "x-gzip"):
        return unpacked(body, most)
    if encoding == "deflate":
        return unpacked(body, most, zlib.MAX_WBITS)
    if encoding != "identity":
        raise ProtocolError(f"the answer is encoded as {clean_text(encoding, limit=40)!r}, "
                            "which was not asked for")
    return body


def no_key(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """The auth of a request to another host than the API's: none."""
    return request


def same_origin(url: str, other: str) -> bool:
    first, second = urllib.parse.urlsplit(url), urllib.parse.urlsplit(other)
    return (first.scheme, first.hostname, first.port) == (second.scheme, second.hostname,
                                                          second.port)


def send(session: requests.Session, method: str, url: str, what: str, settings: Settings,
         announce: Callable[[str], None], **kwargs: Any) -> Answer:
    """One request with its body read, redirects followed, each attempt within the
    deadline; retried as a whole (within the same budget) when the answer breaks off or
    runs out of time after its headers, which urllib3 does not retry by itself."""
    deadline = Deadline(settings.deadline)
    retry = retry_policy(what, announce, settings.retries, deadline)
    DEADLINES.current = deadline
    try:
        while True:
            try:
                return attempt(session, method, url, what, settings, retry, deadline, kwargs)
            except TooLarge:
                raise ApiError(f"{what}: the answer is larger than BRAINTRUST_MAX_PAGE_MB "
                               f"({settings.max_page / 2 ** 20:g} MB, unpacked); if the "
                               "experiment's pages really are that large, raise it, or "
                               "lower --limit") from None
            except BrokenAnswer as broken:
                expired = deadline.between()
                reason = late(settings.deadline) if expired else broken.reason
                try:
                    retry = broken.retry.increment(method, url, error=ProtocolError(reason))
                except MaxRetryError:
                    raise gave_up(what, settings, expired, broken.reason) from None
                retry.sleep()  # which restarts the deadline
    finally:
        deadline.end()
        DEADLINES.current = None


class BrokenAnswer(Exception):
    """An answer that broke off (or ran out of time) after its headers, to be asked again."""

    def __init__(self, reason: str, retry: Retry):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def gave_up(what: str, settings: Settings, expired: bool, reason: str) -> ApiError:
    tries = settings.retries + 1
    times = f"{tries} {'time' if tries == 1 else 'times'}"
    if expired:
        return ApiError(f"{what}: {late(settings.deadline)}, {times}: the server (or a proxy) "
                        "is sending it very slowly; try again later, or raise "
                        "BRAINTRUST_HTTP_DEADLINE")
    return ApiError(f"{what}: the connection broke while reading the answer, {times} "
                    f"({reason})")


def attempt(session: requests.Session, method: str, url: str, what: str, settings: Settings,
            retry: Retry, deadline: Deadline, kwargs: Dict[str, Any]) -> Answer:
    """One attempt: the request, each redirect it meets (the key goes only to the API's
    own host), and the final answer's body."""
    redirects: List[Any] = []
    hop_method, hop_url, hop_kwargs = method, url, kwargs
    for _ in range(MAX_REDIRECTS + 1):
        adapter = session.get_adapter(hop_url)
        adapter.max_retries = retry
        try:
            response = session.request(
                hop_method, hop_url, stream=True, allow_redirects=False,
                timeout=(CONNECT_TIMEOUT, settings.read_timeout),
                auth=None if same_origin(url, hop_url) else no_key, **hop_kwargs)
        except requests.exceptions.RequestException as error:
            if deadline.between():
                raise gave_up(what, settings, True, "") from None
            raise unreachable(error, what, hop_url, redirected=bool(redirects)) from None
        retry = response.raw.retries or retry
        try:
            try:
                if response.is_redirect:
                    body = response.raw.read(READ_CHUNK, decode_content=False)  # to reuse it
                else:
                    body = read_body(response, settings.max_page)
            finally:
                expired = deadline.between() if not response.is_redirect else deadline.expired
            if expired:  # the read may have ended quietly, with part of the body
                raise BrokenAnswer(late(settings.deadline), retry)
        except (HTTPError, OSError, zlib.error) as error:
            raise BrokenAnswer(f"answer cut short: {describe_error(error)}", retry) from None
        finally:
            response.close()
        if not response.is_redirect:
            return Answer(response.status_code, response.reason or "", response.headers,
                          body, len(retry.history) + 1, tuple(redirects))
        redirects.append(response.headers)
        deadline.using(None)  # its connection is back in the pool
        hop_url = urllib.parse.urljoin(hop_url, response.headers["Location"])
        if urllib.parse.urlsplit(hop_url).scheme not in ("http", "https"):
            raise ApiError(f"{what}: the API redirected the request to a URL that is not "
                           f"http(s) ({clean_text(hop_url, limit=120)}); report it to "
                           "Braintrust")
        left_behind = ("params",)  # the Location holds its own query
        if response.status_code == 303 or (response.status_code in (301, 302)
                                           and hop_method == "POST"):
            hop_method, left_behind = "GET", ("params", "json", "data")  # as browsers do
        hop_kwargs = {name: value for name, value in hop_kwargs.items()
                      if name not in left_behind}
    raise ApiError(f"{what}: more than {MAX_REDIRECTS} redirects in a row; report it to "
                   "Braintrust")


# ---------------------------------------------------------------------------------------
# The API: name lookup, experiment, pages
# ---------------------------------------------------------------------------------------

def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def server_message(answer: Answer, secret: str) -> str:
    text = answer.body.decode("utf-8", "replace")
    data = json_or_none(answer.body)  # JSON error bodies carry the words under one of these
    if isinstance(data, dict):
        text = str(data.get("error") or data.get("message") or data.get("detail") or text)
    return clean_text(text, secret=secret) or "(empty body)"


def check_status(answer: Answer, what: str, settings: Settings, not_found: str) -> None:
    if 200 <= answer.status < 300:
        return
    words = f"{answer.status} {clean_text(answer.reason, limit=80)}".strip()
    message = server_message(answer, settings.key)
    if answer.status == 401:
        raise ApiError(f"{what}: the API refused the key ({words}: {message}); check that "
                       f"BRAINTRUST_API_KEY (read from {settings.key_source}) is a valid key "
                       "of an organisation that can read it")
    if answer.status == 403:
        raise ApiError(f"{what}: the key is valid but may not read this ({words}: {message})"
                       f"; the key (from {settings.key_source}) needs access to the "
                       "experiment's project: use a key of its organisation, or ask an admin "
                       "for read permission")
    if answer.status == 404 and json_or_none(answer.body) is None:
        # The API words its 404s in JSON; a bare one is more likely a path unknown there.
        raise ApiError(f"{what}: {not_found} ({words}: {message}); if that is right, check "
                       f"the API URL {settings.api_url}: it is the base URL, e.g. "
                       f"{DEFAULT_API_URL}, without /v1")
    if answer.status in (400, 404):
        raise ApiError(f"{what}: {not_found} ({words}: {message})")
    tries = f"{answer.tries} {'try' if answer.tries == 1 else 'tries'}"
    raise ApiError(f"{what}: the API answered {words} after {tries}: {message}")


def first_bytes(answer: Answer) -> str:
    kind = clean_text(answer.headers.get("Content-Type") or "no content type", limit=80)
    text = answer.body[:SCANNED_TEXT].decode("utf-8", "replace")
    return f"{kind}: {clean_text(text, limit=120)!r}"


def read_json(answer: Answer, what: str, most: int = DEFAULT_MAX_PAGE_MB << 20) -> Any:
    """The body as JSON; a gzip body from an object store is unpacked first (at most
    `most` bytes of it: BRAINTRUST_MAX_PAGE_MB)."""
    body = answer.body
    if body[:2] == b"\x1f\x8b":
        try:
            body = unpacked(body, most)
        except zlib.error:
            pass
        except TooLarge:
            raise ApiError(f"{what}: the answer unpacks to more than BRAINTRUST_MAX_PAGE_MB "
                           f"({most / 2 ** 20:g} MB); if the experiment's pages really are "
                           "that large, raise it, or lower --limit") from None
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedAnswer(f"{what}: the answer nests JSON arrays or objects deeper than "
                              f"Python reads (about {sys.getrecursionlimit()} levels); report "
                              "it to Braintrust") from None
    except ValueError:
        raise ApiError(f"{what}: the answer is not JSON ({answer.status}, {first_bytes(answer)})"
                       "; is the API URL right?") from None


def describe_target(target: Target) -> str:
    return f"experiment {target.name!r} in project {target.project!r}" + (
        f" of organisation {target.org!r}" if target.org else "")


def resolve_experiment(session: requests.Session, settings: Settings, target: Target,
                       announce: Callable[[str], None]) -> str:
    """The id of the one live experiment with these names."""
    if target.id is not None:
        return target.id
    where = describe_target(target)
    query = {"project_name": target.project, "experiment_name": target.name}
    if target.org:
        query["org_name"] = target.org
    what = f"looking up {where}"
    answer = send(session, "GET", f"{settings.api_url}/v1/experiment", what, settings,
                  announce, params=query)
    check_status(answer, what, settings, "the API could not look it up; check the names")
    data = read_json(answer, what, settings.max_page)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ApiError(f"{what}: the answer has no list of objects")
    found = [item for item in data["objects"] if isinstance(item, dict)
             and item.get("name") == target.name and not item.get("deleted_at")]
    if not found:
        raise ApiError(f"no {where} was found with this key; check the names (they are exact "
                       "and case-sensitive) or pass the experiment id")
    if len(found) > 1:
        orgs = organisations_of_projects(session, settings, target.project, announce)
        listed = "; ".join(
            f"id {item.get('id')} (" + (f"organisation {orgs[item.get('project_id')]!r}"
                                        if item.get("project_id") in orgs else
                                        f"project {item.get('project_id')}")
            + f", created {item.get('created')})" for item in found)
        names = sorted({orgs[item.get("project_id")] for item in found
                        if item.get("project_id") in orgs})
        choose = (f"Add --org with one of {', '.join(map(repr, names))}" if names
                  else "Add --org NAME")
        raise ApiError(f"{len(found)} experiments match {where}: {listed}. {choose} to "
                       "choose, or pass the experiment id")
    found_id = canonical_id(str(found[0].get("id")))
    if found_id is None:
        raise ApiError(f"{what}: the API gave an experiment id that is not a UUID")
    return found_id


def organisations_of_projects(session: requests.Session, settings: Settings, project: str,
                              announce: Callable[[str], None]) -> Dict[Any, str]:
    """project id -> organisation name, for the projects named `project`: two lists, asked
    for only to say which --org to pick; {} when either cannot be read."""
    lists = []
    for path, query in (("project", {"project_name": project}), ("organization", {})):
        what = f"listing {path}s"
        try:
            answer = send(session, "GET", f"{settings.api_url}/v1/{path}", what, settings,
                          announce, params=query)
            check_status(answer, what, settings, "the list is not readable")
            data = read_json(answer, what, settings.max_page)
        except ApiError:
            return {}
        objects = data.get("objects") if isinstance(data, dict) else None
        lists.append([item for item in objects or [] if isinstance(item, dict)])
    projects, organisations = lists
    names = {item.get("id"): item.get("name") for item in organisations
             if isinstance(item.get("name"), str)}
    return {item.get("id"): names[item.get("org_id")] for item in projects
            if item.get("org_id") in names}


def base_experiment_id(session: requests.Session, settings: Settings, experiment_id: str,
                       announce: Callable[[str], None]) -> str:
    """The experiment's `base_exp_id`: what the web app compares it with by default."""
    what = f"reading experiment {experiment_id}"
    answer = send(session, "GET", f"{settings.api_url}/v1/experiment/{experiment_id}", what,
                  settings, announce)
    check_status(answer, what, settings, "the experiment was not found or is not readable "
                 "with this key")
    data = read_json(answer, what, settings.max_page)
    base = data.get("base_exp_id") if isinstance(data, dict) else None
    if not base:
        raise ApiError(f"experiment {experiment_id} has no base experiment (its base_exp_id is "
                       "empty), so --baseline auto has nothing to compare with: pass --baseline "
                       "with an experiment id, link or name")
    base_id = canonical_id(str(base))
    if base_id is None:
        raise ApiError(f"{what}: the API gave a base_exp_id that is not a UUID")
    return base_id


class Names(NamedTuple):
    """An experiment's name, and its project's and organisation's (None where unreadable)."""
    experiment: str
    project: Optional[str] = None
    org: Optional[str] = None


def named_object(session: requests.Session, settings: Settings, kind: str, object_id: Any,
                 announce: Callable[[str], None]) -> Dict[str, Any]:
    """GET /v1/{kind}/{id}: an object with a name (experiment, project, organization)."""
    what = f"reading the name of {kind} {clean_text(str(object_id), limit=40)}"
    path_id = canonical_id(str(object_id))  # it goes into the path: a UUID, nothing else
    if path_id is None:
        raise ApiError(f"{what}: the API gave an id that is not a UUID")
    answer = send(session, "GET", f"{settings.api_url}/v1/{kind}/{path_id}", what, settings,
                  announce)
    check_status(answer, what, settings, "it is not readable with this key")
    data = read_json(answer, what, settings.max_page)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise ApiError(f"{what}: the answer has no name")
    return data


def experiment_names(session: requests.Session, settings: Settings, experiment_id: str,
                     announce: Callable[[str], None]) -> Optional[Names]:
    """The names the markdown report shows and links by: three reads. One that fails leaves
    out what follows, with a note: the report is right with the id alone, so this never
    fails the run."""
    found: List[str] = []
    try:
        experiment = named_object(session, settings, "experiment", experiment_id, announce)
        found.append(experiment["name"])
        project = named_object(session, settings, "project", experiment.get("project_id"),
                               announce)
        found.append(project["name"])
        found.append(named_object(session, settings, "organization", project.get("org_id"),
                                  announce)["name"])
    except ApiError as error:
        announce(f"{PROG}: note: {error}; the report shows "
                 + ("the names read, without a link" if found else "the id alone"))
    return Names(*found) if found else None


def kind_of(value: Any) -> str:
    """What a JSON value is, in a word, for a message about a malformed answer."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def headers_cursor(headers: Any, redirects: Iterable[Any] = ()) -> Any:
    """The cursor in the headers: x-bt-cursor, else the object store's x-amz-meta-bt_cursor
    on the final answer, else x-bt-cursor on a redirect before it."""
    return (headers.get("x-bt-cursor") or headers.get("x-amz-meta-bt_cursor")
            or next((earlier["x-bt-cursor"] for earlier in redirects
                     if earlier.get("x-bt-cursor")), None))


def next_cursor(data: Dict[str, Any], answer: Answer) -> Any:
    """The body's cursor first; then the headers'."""
    return data.get("cursor") or headers_cursor(answer.headers, answer.redirects)


def in_background(work: Callable[[], Any]) -> "Future[Any]":
    """Run `work` on a daemon thread: an interrupted run exits without waiting for it."""
    future: "Future[Any]" = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:  # handed to whoever reads the result
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def result_of(future: "Future[Any]") -> Any:
    """A future's result, waited for in slices of 0.2 s: the kernel may hand Ctrl-C or
    SIGTERM to another thread, and then only a main thread that wakes up runs its handler
    (a plain wait would sleep through it until the page came)."""
    while not wait([future], timeout=0.2).done:
        pass
    return future.result()


class PageRequest(NamedTuple):
    """A page request running on its own thread, and the one it started ahead of it."""
    cursor: Any
    answer: "Future[List[Answer]]"  # a list, so the reader can take the body out of it
    state: Dict[str, Any]  # "next": the PageRequest started ahead; "dropped": unwanted


class PageReader:
    """Each page's events and its size in bytes, in the API's order, until a page comes back
    empty or uncursored.

    With `ahead` (and BRAINTRUST_MAX_IN_FLIGHT 2), the next page is requested, on a second
    connection, as soon as this page's headers carry its cursor, so the server builds it
    while this one downloads and is read. The body's cursor still decides: a page requested
    with another cursor is dropped and asked for again. A page's slot is held until its
    body has been parsed, so at most two requests, and two bodies, are in flight."""

    def __init__(self, session: requests.Session, settings: Settings, experiment_id: str,
                 limit: int, announce: Callable[[str], None], label: str = "",
                 ahead: bool = True, note: Callable[[str], None] = lambda line: None):
        self.session, self.settings, self.experiment_id = session, settings, experiment_id
        self.limit, self.announce, self.label, self.note = limit, announce, label, note
        self.url = f"{settings.api_url}/v1/experiment/{experiment_id}/fetch"
        self.ahead = ahead and settings.max_in_flight > 1
        self.slots = threading.Semaphore(settings.max_in_flight)
        self.lock = threading.Lock()
        self.cursors_sent: set = set()

    def request(self, number: int, cursor: Any) -> PageRequest:
        """Page `number`, asked for with `cursor` on a thread of its own once a slot frees."""
        state: Dict[str, Any] = {"next": None, "dropped": False}

        def start_next(response: requests.Response, **kwargs: Any) -> None:
            # A response hook: called as each answer's headers arrive, redirects included.
            early = headers_cursor(response.headers) if response.status_code < 400 else None
            with self.lock:
                if (self.ahead and early and early not in self.cursors_sent and early != cursor
                        and state["next"] is None and not state["dropped"]):
                    state["next"] = self.request(number + 1, early)

        def fetch() -> List[Answer]:
            self.slots.acquire()
            if state["dropped"]:
                return []
            body: Dict[str, Any] = {"limit": self.limit}
            if cursor:
                body["cursor"] = cursor
            return [send(self.session, "POST", self.url, f"{self.label}page {number}",
                         self.settings, self.announce, json=body,
                         hooks={"response": start_next})]

        return PageRequest(cursor, in_background(fetch), state)

    def drop(self, page: Optional[PageRequest]) -> None:
        """An unwanted request: its slot comes back once it ends, and so for its followers."""
        while page is not None:
            with self.lock:
                page.state["dropped"] = True
                follower, page.state["next"] = page.state["next"], None
            page.answer.add_done_callback(lambda _: self.slots.release())
            page = follower

    def parsed(self, page: PageRequest, number: int) -> Tuple[List[Any], int, Any]:
        """A page's events, size and next cursor, its slot given back once it is parsed; a
        page asked for ahead with another cursor than the body's is dropped."""
        what = f"{self.label}page {number}"
        answer = result_of(page.answer).pop()
        try:
            check_status(answer, what, self.settings, f"experiment {self.experiment_id} was "
                         "not found or is not readable with this key; check the id (copy it "
                         "from the experiment's page) and the organisation of the key")
            data = read_json(answer, what, self.settings.max_page)
            if not isinstance(data, dict) or not isinstance(data.get("events"), list):
                raise ApiError(f"{what}: the answer is JSON but not a page of events "
                               f"({first_bytes(answer)})")
            cursor, size = next_cursor(data, answer), len(answer.body)
            if not isinstance(cursor, (str, type(None))):
                raise MalformedAnswer(f"{what}: the answer's cursor is {kind_of(cursor)}, not "
                                      "a string, so the next page cannot be asked for; "
                                      "report it to Braintrust")
            early = page.state["next"]  # final: set, if ever, before the body was read
            if early is not None and early.cursor != cursor:
                # Dropped before this slot comes back, so no follower of it can take it.
                self.note(f"{what}: the body's cursor differs from the header's; asking for "
                          f"page {number + 1} again with the body's")
                self.drop(early)
                page.state["next"] = None
        finally:
            del answer  # the body's bytes go now, and with them its slot
            self.slots.release()
        return data["events"], size, cursor

    def __iter__(self) -> Iterator[Tuple[List[Any], int]]:
        page, number = self.request(1, None), 1
        try:
            while True:
                events, size, cursor = self.parsed(page, number)
                yield events, size
                if not events or not cursor:
                    return
                del events  # or it would live on while the next page is parsed
                with self.lock:
                    if cursor in self.cursors_sent:
                        raise ApiError(f"{self.label}page {number}: the API sent back a cursor it had already "
                                       "sent, so paging would never end; stopping. Try again "
                                       "later, or report it to Braintrust")
                    self.cursors_sent.add(cursor)
                page, number = page.state["next"] or self.request(number + 1, cursor), number + 1
        finally:  # done, failed or interrupted: nothing more is wanted
            self.drop(page.state["next"])


def fetch_pages(*args: Any, **kwargs: Any) -> Iterator[Tuple[List[Any], int]]:
    """The pages of one experiment, as PageReader reads them."""
    return iter(PageReader(*args, **kwargs))


# ---------------------------------------------------------------------------------------
# Events to records: pure functions, no I/O
# ---------------------------------------------------------------------------------------

class Cost(NamedTuple):
    """What --include metrics and --summary need from one span: a few numbers."""
    llm_calls: int
    prompt_tokens: Any
    completion_tokens: Any
    tokens: Any
    errors: int


NO_COST = Cost(0, 0, 0, 0, 0)


# Every field a record can hold, declared once: its name (the record's key, and --include's
# name for an extra one), when it is printed, its JSON Schema, how the root span's newest
# version gives it, whether --truncate cuts it, and its CSV columns. The store keeps what the
# root gives; the comparison and the costs add the rest when a case is built.
STANDARD, EXTRA, COMPARED, EDITED = "standard", "extra", "compared", "edited"
ANY_JSON = {"description": "any JSON value, as logged"}
NUMBER_OR_NULL = {"type": ["number", "null"]}


class Field(NamedTuple):
    name: str
    printed: str  # STANDARD: always; EXTRA: with --include; COMPARED: with --baseline;
    # EDITED: with --edited-only
    schema: Dict[str, Any]
    from_root: Optional[Callable[[Dict[str, Any]], Any]] = None  # None: added later
    cut: Optional[Callable[[Any, int], Any]] = None  # how --truncate cuts it
    columns: Optional[Callable[[Iterable[str]], List[str]]] = None  # None: one, its name


def truncated(value: Any, most: int) -> Any:
    """Every string inside `value` cut to `most` characters, saying how many were cut."""
    if isinstance(value, str) and len(value) > most:
        return f"{value[:most]}…[+{len(value) - most} chars]"
    if isinstance(value, dict):
        return {key: truncated(item, most) for key, item in value.items()}
    if isinstance(value, list):
        return [truncated(item, most) for item in value]
    return value


def root_metrics(event: Dict[str, Any]) -> Dict[str, Any]:
    """The root's timing; with the trace's costs, it becomes the case's `metrics`."""
    metrics = event.get("metrics") if isinstance(event.get("metrics"), dict) else {}
    return {"start": metrics.get("start"), "end": metrics.get("end")}


def truncated_baseline(baseline: Any, most: int) -> Any:
    """The baseline's output is as long as the record's: cut it alike."""
    return baseline and dict(baseline, output=truncated(baseline["output"], most))


FIELDS = (
    Field("root_span_id", STANDARD, {"type": "string", "description": "the test case's trace id"},
          lambda event: event.get("root_span_id")),
    Field("input", STANDARD, ANY_JSON, lambda event: event.get("input"), cut=truncated),
    Field("output", STANDARD, ANY_JSON, lambda event: event.get("output"), cut=truncated),
    Field("expected", STANDARD, ANY_JSON, lambda event: event.get("expected"), cut=truncated),
    Field("metadata", STANDARD, {"type": "object", "description": "{} when none was logged"},
          lambda event: {} if event.get("metadata") is None else event["metadata"],
          cut=truncated),
    Field("scores", STANDARD, {"type": "object", "additionalProperties": NUMBER_OR_NULL,
                               "description": "score name -> value (0 to 1), or null"},
          lambda event: score_dict(event.get("scores")),  # the root's own; merged later
          columns=lambda names: [f"scores.{name}" for name in sorted(names)]),
    Field("origin", STANDARD, {"oneOf": [{"type": "null"}, {
        "type": "object", "required": ["dataset_id", "dataset_record_id"],
        "additionalProperties": False,
        "properties": {"dataset_id": {"type": ["string", "null"]},
                       "dataset_record_id": {"type": ["string", "null"]}}}],
        "description": "the dataset row the case came from; null when none"},
          lambda event: dataset_origin(event.get("origin")),
          columns=lambda names: ["origin.dataset_id", "origin.dataset_record_id"]),
    Field("id", EXTRA, {"type": "string", "description": "the root row's id"},
          lambda event: event.get("id")),
    Field("span_id", EXTRA, {"type": "string"}, lambda event: event.get("span_id")),
    Field("created", EXTRA, {"type": ["string", "null"], "description": "ISO 8601 date-time"},
          lambda event: event.get("created")),
    Field("tags", EXTRA, {"type": "array", "items": {"type": "string"}},
          lambda event: event.get("tags") or []),
    Field("error", EXTRA, ANY_JSON, lambda event: event.get("error"), cut=truncated),
    Field("span_errors", EXTRA, {
        "type": "array", "description": "the errors of the trace's other spans (task, llm, "
        "tool, scorer), in the order they came; --include error adds it",
        "items": {"type": "object", "additionalProperties": False,
                  "required": ["name", "type", "error"],
                  "properties": {"name": {"type": ["string", "null"]},
                                 "type": {"type": ["string", "null"]}, "error": ANY_JSON}}},
          cut=truncated),
    Field("comments", EXTRA, {"type": "array"}, lambda event: event.get("comments") or []),
    Field("edits", EXTRA, {
        "type": "array", "description": "who changed expected, and how: each merge into it "
        "that the audit log holds, in order; from and to where the log has them",
        "items": {"type": "object", "additionalProperties": False,
                  "required": ["path", "user_id", "source", "xact_id"],
                  "properties": {"path": {"type": "array"}, "from": ANY_JSON, "to": ANY_JSON,
                                 "user_id": {"type": ["string", "null"]},
                                 "source": {"type": ["string", "null"]},
                                 "xact_id": {"type": ["string", "null"]}}}},
          lambda event: expected_edits(event.get("audit_data"))),
    Field("metrics", EXTRA, {
        "type": "object", "additionalProperties": False,
        "required": ["start", "end", "duration", "llm_calls", "prompt_tokens",
                     "completion_tokens", "tokens", "errors"],
        "properties": {"start": NUMBER_OR_NULL, "end": NUMBER_OR_NULL,
                       "duration": NUMBER_OR_NULL,
                       "llm_calls": {"type": "integer", "minimum": 0},
                       "prompt_tokens": {"type": "number"},
                       "completion_tokens": {"type": "number"},
                       "tokens": {"type": "number"}, "errors": {"type": "integer", "minimum": 0}}},
          root_metrics),
    Field("baseline", COMPARED, {"oneOf": [{"type": "null"}, {
        "type": "object", "additionalProperties": False,
        "required": ["root_span_id", "output", "scores", "count"],
        "properties": {"root_span_id": {"type": "string"}, "output": ANY_JSON,
                       "scores": {"type": "object", "additionalProperties": {"type": "number"},
                                  "description": "the mean over the matched trials"},
                       "count": {"type": "integer", "minimum": 1}}}],
        "description": "the matched baseline case; null when none matches"},
          cut=truncated_baseline),
    Field("diff", COMPARED, {"type": "object", "additionalProperties": {"type": "number"},
                             "description": "score minus the baseline's, for scores on both "
                             "sides"}),
    Field("lost_scores", COMPARED, {"type": "array", "items": {"type": "string"},
                                    "description": "scores that are a number in the baseline "
                                    "and none now"}),
    Field("new_error", COMPARED, {"type": "boolean", "description": "the case raised an error "
                                  "and its baseline did not"}),
    Field("status", COMPARED, {"enum": ["new", "regressed", "improved", "unchanged"]}),
    Field("edited", EDITED, {"const": True},
          lambda event: was_expected_edited(event.get("audit_data"))),
)
FIELD = {field.name: field for field in FIELDS}
FROM_ROOT = tuple(field for field in FIELDS if field.from_root is not None)
STANDARD_KEYS = tuple(field.name for field in FIELDS if field.printed == STANDARD)
INCLUDABLE = tuple(field.name for field in FIELDS if field.printed == EXTRA)
COMPARISON_KEYS = tuple(field.name for field in FIELDS if field.printed == COMPARED)


class RootPart(NamedTuple):
    """What a case needs from its root span's newest version: every FIELDS value it gives."""
    trace: Any
    values: Dict[str, Any]
    cost: Optional[Cost]


class ScorePart(NamedTuple):
    """What a case needs from a scorer span's newest version."""
    trace: Any
    scores: Dict[str, Any]
    cost: Optional[Cost]
    failure: Optional[Dict[str, Any]] = None  # its error, when the scorer failed


class SpanPart(NamedTuple):
    """Any other span, remembered only when metrics are asked for or when it failed."""
    trace: Any
    cost: Optional[Cost]
    failure: Optional[Dict[str, Any]] = None


def span_failure(event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A child span's error, with the span's name and type: what `span_errors` lists."""
    if event.get("error") is None:
        return None
    attributes = event.get("span_attributes")
    name = attributes.get("name") if isinstance(attributes, dict) else None
    return {"name": name, "type": span_type(event), "error": event["error"]}


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


def expected_edits(audit_data: Any) -> List[Dict[str, Any]]:
    """Each audit entry that records a merge into `expected`, in order, as who changed what:
    its path, `from` and `to` where the entry has them, the user, the source ("app": the web
    UI; "api") and the transaction. Entries are read defensively: their fields on the entry
    or nested in its own audit_data, the user under its metadata or on the entry."""
    edits = []
    for entry in audit_data if isinstance(audit_data, list) else []:
        if not isinstance(entry, dict):
            continue
        for fields in (entry, entry.get("audit_data")):
            if isinstance(fields, dict) and fields.get("action") == "merge":
                path = fields.get("path")
                if isinstance(path, list) and path and path[0] == "expected":
                    metadata = entry.get("metadata")
                    metadata = metadata if isinstance(metadata, dict) else {}
                    edits.append({"path": path,
                                  **{key: fields[key] for key in ("from", "to") if key in fields},
                                  "user_id": metadata.get("user_id", entry.get("user_id")),
                                  "source": entry.get("source"),
                                  "xact_id": entry.get("_xact_id")})
                    break
    return edits


def was_expected_edited(audit_data: Any) -> bool:
    """True when an audit entry records a merge into `expected` (--edited-only)."""
    return bool(expected_edits(audit_data))


def dataset_origin(origin: Any) -> Optional[Dict[str, Any]]:
    if isinstance(origin, dict) and origin.get("object_type") == "dataset":
        return {"dataset_id": origin.get("object_id"), "dataset_record_id": origin.get("id")}
    return None


def score_dict(scores: Any) -> Dict[str, Any]:
    return scores if isinstance(scores, dict) else {}


def is_number(value: Any) -> bool:
    """A number that arithmetic can use: not a boolean, not NaN or infinite, and not an
    integer too large for a float (JSON allows all three; no mean can be made of them)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and -sys.float_info.max <= value <= sys.float_info.max)


def span_cost(event: Dict[str, Any]) -> Cost:
    errors = int(event.get("error") is not None)
    if span_type(event) != "llm":
        return Cost(0, 0, 0, 0, errors)
    metrics = event.get("metrics") if isinstance(event.get("metrics"), dict) else {}
    prompt, completion, tokens = (metrics.get(name) if is_number(metrics.get(name)) else None
                                  for name in ("prompt_tokens", "completion_tokens", "tokens"))
    if tokens is None:  # a span that gives the parts and not the total: their sum
        tokens = (prompt or 0) + (completion or 0)
    return Cost(1, prompt or 0, completion or 0, tokens, errors)


def essentials(event: Dict[str, Any], with_costs: bool = False
               ) -> Union[RootPart, ScorePart, SpanPart, None]:
    """The part of one event version that records need; None for deletions and for spans
    that no record shows (task, llm, tool, review...), so the rest of the event can be freed.
    With `with_costs`, every span also keeps the few numbers its trace's metrics add up."""
    if event.get("_object_delete") is True:
        return None
    cost = span_cost(event) if with_costs else None
    if is_root_span(event):
        return RootPart(event.get("root_span_id"),
                        {field.name: field.from_root(event) for field in FROM_ROOT}, cost)
    failure = span_failure(event)
    if span_type(event) == "score":
        return ScorePart(event.get("root_span_id"), score_dict(event.get("scores")), cost,
                         failure)
    if cost is not None or failure is not None:
        return SpanPart(event.get("root_span_id"), cost, failure)
    return None


Part = Union[RootPart, ScorePart, SpanPart, None]


def row_key(event: Dict[str, Any]) -> Any:
    """The row's id (its trace and span ids, where it has none): what its versions are kept
    by. The spec makes them strings; an array or an object is a malformed answer, refused
    rather than guessed at (no version could be told from another by it)."""
    for field in ("id", "root_span_id", "span_id"):
        if isinstance(event.get(field), (list, dict)):
            raise MalformedAnswer(f"an event's {field} is {kind_of(event[field])}, not a "
                                  "string; report it to Braintrust")
    return event.get("id") or (event.get("root_span_id"), event.get("span_id"))


class Version(NamedTuple):
    """One version of a row, as much of it as records need."""
    key: Any  # the row's id
    number: int  # its _xact_id
    part: Part  # None: a deletion
    trace: Any  # the root_span_id of its trace


def versions(events: Iterable[Any], with_costs: bool = False) -> Iterator[Version]:
    """Each event worth remembering: spans that no record shows are not (every version of a
    task or llm span is one, unless costs are asked for); deletions are, with no part."""
    for event in events:
        if not isinstance(event, dict):
            continue
        key = row_key(event)
        part = essentials(event, with_costs)
        if part is None and event.get("_object_delete") is not True:
            continue
        yield Version(key, xact_number(event), part, event.get("root_span_id"))


def absorb(latest: Dict[Any, tuple], events: Iterable[Any], with_costs: bool = False) -> int:
    """Fold a page into `latest`: event id -> (version, essentials) of its newest version,
    and say by how many the live roots grew (or shrank). Pages run over the whole version
    history, so an id may come again, older or newer."""
    grown = 0
    for key, version, part, _ in versions(events, with_costs):
        known = latest.get(key)
        if known is None or version > known[0]:
            grown += isinstance(part, RootPart) - (known is not None
                                                   and isinstance(known[1], RootPart))
            latest[key] = (version, part)
    return grown


def add_costs(total: Cost, cost: Cost) -> Cost:
    return Cost(*(a + b for a, b in zip(total, cost)))


def case_metrics(timing: Dict[str, Any], cost: Cost) -> Dict[str, Any]:
    """--include metrics: the root's timing, and its trace's llm calls, tokens and errors."""
    start, end = timing["start"], timing["end"]
    return {
        "start": start,
        "end": end,
        "duration": end - start if is_number(start) and is_number(end) else None,
        **cost._asdict(),
    }


def case_of(root: RootPart, trace_scores: Dict[str, Any], trace_cost: Optional[Cost],
            failures: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A case: every field the root gives, the scores, failures and metrics of its whole
    trace. Scores: the trace's scorer spans, overlaid by the root's own (it holds human
    corrections). Metrics only where costs were kept."""
    case = dict(root.values)
    case["scores"] = {**trace_scores, **root.values["scores"]}
    case["span_errors"] = failures or []
    timing = case.pop("metrics")
    if trace_cost is not None:
        case["metrics"] = case_metrics(timing, trace_cost)
    return case


def cases_from(latest: Dict[Any, tuple]) -> Iterator[Dict[str, Any]]:
    """One case per live root, in the order the roots first arrived; a trace's scorer spans
    merge, and its costs add up, in that order too."""
    trace_scores: Dict[Any, Dict[str, Any]] = {}
    trace_costs: Dict[Any, Cost] = {}
    trace_failures: Dict[Any, List[Dict[str, Any]]] = {}
    for _, part in latest.values():
        if isinstance(part, ScorePart):
            trace_scores.setdefault(part.trace, {}).update(part.scores)
        if part is not None and part.cost is not None:
            trace_costs[part.trace] = add_costs(trace_costs.get(part.trace, NO_COST), part.cost)
        if isinstance(part, (ScorePart, SpanPart)) and part.failure is not None:
            trace_failures.setdefault(part.trace, []).append(part.failure)
    for _, part in latest.values():
        if isinstance(part, RootPart):
            yield case_of(part, trace_scores.get(part.trace, {}), trace_costs.get(part.trace),
                          trace_failures.get(part.trace))


# ---------------------------------------------------------------------------------------
# The store: each row's newest version, in memory while the pages are few, then in a
# temporary SQLite file, so memory stays flat however many cases an experiment has
# ---------------------------------------------------------------------------------------

DELETED, ROOT, SCORE, SPAN = 0, 1, 2, 3  # a row's kind in the table


def open_scratch_database() -> sqlite3.Connection:
    """A SQLite database in a new file in the temporary folder (TMPDIR), unlinked as soon
    as it is open: no exit, not even a kill, can leave it behind. No journal is written
    beside it: a failed run throws the whole database away."""
    with SIGNALS.held():  # a signal in between would leave the file behind
        handle, path = tempfile.mkstemp(prefix="braintrust-fetch-", suffix=".sqlite")
        os.close(handle)
        try:
            database = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        finally:
            os.unlink(path)
    for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE",
                   "cache_size = -4096", "temp_store = FILE"):  # a 4 MiB cache
        database.execute(f"PRAGMA {pragma}")
    return database


def stored_text(value: Any) -> str:
    """An id as a table key: strings as they are, anything else (a (trace, span) pair, a
    number) as JSON behind a NUL, which no real id starts with, so none can collide."""
    return value if isinstance(value, str) else "\0" + json.dumps(value)


def stored_version(version: int) -> str:
    """A version as text that sorts like the number, however many digits it has."""
    return "" if version < 0 else f"{len(str(version)):04d}{version}"


def stored_part(part: Part) -> Tuple[int, Optional[str], Optional[bytes]]:
    """kind, trace and payload (marshal: exact for JSON's types, and fast) of a part."""
    if part is None:
        return DELETED, None, None
    cost = tuple(part.cost) if part.cost is not None else None
    if isinstance(part, RootPart):
        return ROOT, stored_text(part.trace), marshal.dumps((part.values, cost))
    if isinstance(part, ScorePart):
        return SCORE, stored_text(part.trace), marshal.dumps((part.scores, cost, part.failure))
    return SPAN, stored_text(part.trace), marshal.dumps((cost, part.failure))


TABLE = """CREATE TABLE rows (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,
    version TEXT NOT NULL, kind INTEGER NOT NULL, trace TEXT, payload BLOB)"""
# The newest version wins; `seq` stays the row's first arrival, which orders the records.
UPSERT = """INSERT INTO rows (key, version, kind, trace, payload) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET version = excluded.version, kind = excluded.kind,
    trace = excluded.trace, payload = excluded.payload WHERE excluded.version > rows.version"""
# Each live root, then every live part of its trace (itself included), both in arrival
# order: the indexes on kind and on trace hold their rows in seq order, so nothing is sorted
# (which would take a temporary b-tree as large as the table).
ROOTS_WITH_TRACES = f"""SELECT r.seq, r.payload, s.kind, s.payload FROM rows AS r
    LEFT JOIN rows AS s ON s.trace = r.trace AND s.kind != {DELETED}
    WHERE r.kind = {ROOT} ORDER BY r.seq, s.seq"""
# The same for one trace: along the index on trace.
ROOTS_OF_TRACE = f"""SELECT r.seq, r.payload, s.kind, s.payload FROM rows AS r
    LEFT JOIN rows AS s ON s.trace = r.trace AND s.kind != {DELETED}
    WHERE r.trace = ? AND r.kind = {ROOT} ORDER BY r.seq, s.seq"""
# Live roots, counted as rows change: a count of the table on every page would take time
# that grows with the experiment.
LIVE_ROOTS = [
    "CREATE TABLE live (roots INTEGER NOT NULL)",
    f"""CREATE TRIGGER root_added AFTER INSERT ON rows WHEN new.kind = {ROOT}
        BEGIN UPDATE live SET roots = roots + 1; END""",
    f"""CREATE TRIGGER root_changed AFTER UPDATE OF kind ON rows
        WHEN (old.kind = {ROOT}) != (new.kind = {ROOT})
        BEGIN UPDATE live SET roots = roots + (CASE WHEN new.kind = {ROOT} THEN 1 ELSE -1
        END); END""",
]


def stored_rows(versioned: Iterable[Version]) -> Iterator[tuple]:
    for key, version, part, _ in versioned:
        yield (stored_text(key), stored_version(version), *stored_part(part))


def cases_stored(rows: Iterable[tuple]) -> Iterator[Dict[str, Any]]:
    """cases_from, over the table's rows as ROOTS_WITH_TRACES gives them."""
    root: Optional[RootPart] = None
    current, scores, cost, failures = None, {}, None, []
    for seq, payload, kind, part in rows:
        if seq != current:
            if root is not None:
                yield case_of(root, scores, cost, failures)
            values, own_cost = marshal.loads(payload)
            root = RootPart(None, values, own_cost and Cost(*own_cost))
            current, scores, cost, failures = seq, {}, None, []
        failure = None
        if kind == SCORE:
            part_scores, part_cost, failure = marshal.loads(part)
            scores.update(part_scores)
        elif kind == ROOT:
            part_cost = marshal.loads(part)[1]
        else:
            part_cost, failure = marshal.loads(part)
        if part_cost is not None:
            cost = add_costs(cost or NO_COST, Cost(*part_cost))
        if failure is not None:
            failures.append(failure)
    if root is not None:
        yield case_of(root, scores, cost, failures)


class Store:
    """The newest version of each row of one experiment: a dict (as `absorb` keeps it) until
    the pages read pass `spill_after` bytes, then a table in a temporary file. It keeps the
    count of live roots as rows come (`live`), and can rebuild the cases of a few traces,
    so that the work for a page stays the same however many came before."""

    def __init__(self, spill_after: int, with_costs: bool):
        self.spill_after, self.with_costs = spill_after, with_costs
        self.latest: Dict[Any, tuple] = {}
        self.keys_of_trace: Dict[Any, List[Any]] = {}  # in memory: each trace's row ids
        self.database: Optional[sqlite3.Connection] = None
        self.bytes_read = 0
        self.live = 0  # live roots so far: the records the pages so far give

    def add(self, events: List[Any], size: int) -> set:
        """Fold a page in; the traces it touched."""
        self.bytes_read += size
        if self.database is None and self.bytes_read > self.spill_after:
            self.spill()
        page = list(versions(events, self.with_costs))
        if self.database is not None:
            self.write(stored_rows(page))
            self.live = self.database.execute("SELECT roots FROM live").fetchone()[0]
            return {stored_text(version.trace) for version in page}
        touched = set()
        for key, number, part, trace in page:
            known = self.latest.get(key)
            if known is None:
                self.keys_of_trace.setdefault(trace, []).append(key)
            if known is None or number > known[0]:
                self.live += isinstance(part, RootPart) - (known is not None
                                                           and isinstance(known[1], RootPart))
                self.latest[key] = (number, part)
                touched.add(trace)
        return touched

    def spill(self) -> None:
        """Move the rows to a table in a temporary file, for this page and every later one."""
        self.database = open_scratch_database()
        self.database.execute(TABLE)
        self.database.execute("CREATE INDEX by_trace ON rows (trace)")
        self.database.execute("CREATE INDEX by_kind ON rows (kind)")
        self.write(stored_rows(Version(key, version, part, None) for key, (version, part)
                               in self.latest.items()))
        for statement in LIVE_ROOTS:  # counting from here on, from the count so far
            self.database.execute(statement)
        self.database.execute("INSERT INTO live VALUES (?)", (self.live,))
        self.latest, self.keys_of_trace = {}, {}

    def cases_of(self, traces: Iterable[Any]) -> Iterator[Dict[str, Any]]:
        """The cases of these traces (as `add` named them), in no particular order."""
        if self.database is not None:
            for trace in traces:
                yield from cases_stored(self.database.execute(ROOTS_OF_TRACE, (trace,)))
            return
        for trace in traces:
            yield from cases_from({key: self.latest[key]
                                   for key in self.keys_of_trace.get(trace, ())})

    def write(self, rows: Iterable[tuple]) -> None:
        assert self.database is not None
        self.database.execute("BEGIN")  # one transaction a page: far faster than one a row
        self.database.executemany(UPSERT, rows)
        self.database.execute("COMMIT")

    def cases(self) -> Iterator[Dict[str, Any]]:
        if self.database is None:
            return cases_from(self.latest)
        return cases_stored(self.database.execute(ROOTS_WITH_TRACES))

    def close(self) -> None:
        if self.database is not None:
            self.database.close()


# ---------------------------------------------------------------------------------------
# Analysis: filters, baseline comparison, summary; pure functions over cases
# ---------------------------------------------------------------------------------------

def passes_score(scores: Dict[str, Any], test: ScoreTest) -> bool:
    value = scores.get(test.name)
    return is_number(value) and COMPARISONS[test.op](value, test.number)


def keep_all(case: Dict[str, Any]) -> bool:
    return True


def failed(case: Dict[str, Any]) -> bool:
    """Whether any span of the case's trace raised an error: the root, or a task, llm, tool
    or scorer span under it. --errors-only, the summary and the reports count these."""
    return case["error"] is not None or bool(case["span_errors"])


def failures_of(case: Dict[str, Any]) -> List[str]:
    """What failed in a case, in words: the root's error, then each span's, named."""
    def text(error: Any) -> str:
        return error if isinstance(error, str) else COMPACT.encode(error)
    return ([text(case["error"])] if case["error"] is not None else []) + [
        f"{failure['name']} ({failure['type']}): {text(failure['error'])}"
        for failure in case["span_errors"]]


def case_filter(filters: Filters) -> Callable[[Dict[str, Any]], bool]:
    """The filters, joined with AND, as one test of a case (keep_all: none)."""
    tests: List[Callable[[Dict[str, Any]], bool]] = []
    if filters.edited_only:
        tests.append(lambda case: case["edited"])
    if filters.errors_only:
        tests.append(failed)
    for score in filters.scores:
        tests.append(lambda case, score=score: passes_score(case["scores"], score))
    if filters.tags:
        wanted = set(filters.tags)
        tests.append(lambda case: wanted.issubset(
            tag for tag in case["tags"] if isinstance(tag, str)))
    if filters.regressions_only:
        tests.append(lambda case: case["status"] == "regressed")
    return (lambda case: all(test(case) for test in tests)) if tests else keep_all


def closest_first(name: str, known: Iterable[str], most: int = 10) -> str:
    """The known names, the likeliest meant first (case aside), as a quoted list."""
    known = sorted(known)
    by_likeness = sorted(known, key=lambda other: -difflib.SequenceMatcher(
        None, name.lower(), other.lower()).ratio())
    listed = ", ".join(map(repr, by_likeness[:most]))
    return (listed + (f" and {len(known) - most} more" if len(known) > most else "")) or "none"


def unmatched_filters(filters: Filters, scores: Iterable[str], tags: Iterable[str]
                      ) -> List[str]:
    """A note for each --score name and --tag that no record read has: such a filter can
    only leave nothing, which must not pass for "nothing failed"."""
    scores, tags = set(scores), set(tags)
    notes = []
    for test in filters.scores:
        if test.name not in scores:
            notes.append(f"{PROG}: note: no record has a score named {test.name!r}, so --score "
                         f"matched nothing; the scores (closest first): "
                         f"{closest_first(test.name, scores)}")
    for tag in dict.fromkeys(filters.tags):
        if tag in tags:
            continue
        split = [part.strip() for part in tag.split(",") if part.strip()]
        if len(split) > 1:
            notes.append(f"{PROG}: note: no record has the tag {tag!r}; --tag takes one tag "
                         "and is repeatable (not comma-separated): "
                         f"{' '.join('--tag ' + repr(part) for part in split)}")
        else:
            notes.append(f"{PROG}: note: no record has the tag {tag!r}, so --tag matched "
                         f"nothing; the tags (closest first): {closest_first(tag, tags)}")
    return notes


# A case's key for matching with the baseline: its dataset row when it came from one, else
# its input (what the web app matches on by default).
def case_key(case: Dict[str, Any]) -> Tuple[str, str]:
    origin = case["origin"]
    if origin and origin.get("dataset_record_id") is not None:
        return ("dataset_record_id", str(origin["dataset_record_id"]))
    return ("input", json.dumps(case["input"], sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False))


class BaselineCase(NamedTuple):
    """All the baseline cases with one key (several with trials)."""
    root_span_id: Any
    output: Any
    score_sums: Dict[str, float]
    score_counts: Dict[str, int]
    count: int
    errors: int = 0  # trials whose root raised an error


def baseline_case(trials: Iterable[Tuple[Any, ...]]) -> BaselineCase:
    """The baseline cases (root_span_id, output, scores[, whether it raised an error]) that
    share a key, as one: the first one's id and output, per score name a sum and a count
    for the mean, and how many raised an error."""
    found = None
    for root_span_id, output, scores, *errored in trials:
        found = found or BaselineCase(root_span_id, output, {}, {}, 0)
        for name, value in scores.items():
            if is_number(value):
                found.score_sums[name] = found.score_sums.get(name, 0) + value
                found.score_counts[name] = found.score_counts.get(name, 0) + 1
        found = found._replace(count=found.count + 1,
                               errors=found.errors + bool(errored and errored[0]))
    assert found is not None, "a baseline case has at least one trial"
    return found


CHANGE = 1e-9  # score differences within this are float noise, not a change


def is_regression(change: float, min_drop: float = 0.0) -> bool:
    """A fall beyond float noise and of at least `min_drop` (--min-drop), give or take
    that noise (0.5 - 0.45 is a fall of 0.05)."""
    return change < -CHANGE and -change >= min_drop - CHANGE


def comparison(case: Dict[str, Any], found: Optional[BaselineCase], min_drop: float = 0.0
               ) -> Dict[str, Any]:
    """What a case gains with --baseline: the matched baseline, the score diffs, the scores
    it lost (a number in the baseline, none now), whether it raised an error its baseline
    did not, and a status. Worse in kind (a lost score, a new error) is a regression too:
    a crashed or unscored case must never pass for unchanged."""
    if found is None:
        return {"baseline": None, "diff": {}, "lost_scores": [], "new_error": False,
                "status": "new"}
    scores = {name: found.score_sums[name] / found.score_counts[name]
              for name in found.score_sums}
    diff = {name: case["scores"][name] - scores[name] for name in sorted(scores)
            if is_number(case["scores"].get(name))}
    lost = [name for name in sorted(scores) if name not in diff]
    new_error = case["error"] is not None and found.errors < found.count
    if lost or new_error or any(is_regression(change, min_drop) for change in diff.values()):
        status = "regressed"
    elif any(change > CHANGE for change in diff.values()):
        status = "improved"
    else:
        status = "unchanged"
    return {"baseline": {"root_span_id": found.root_span_id, "output": found.output,
                         "scores": scores, "count": found.count},
            "diff": diff, "lost_scores": lost, "new_error": new_error, "status": status}


def regressed_on(case: Dict[str, Any], scores: Optional[FrozenSet[str]], min_drop: float
                 ) -> bool:
    """Whether a compared case regressed on these scores (None: on any): one fell, or was
    lost; or it raised an error its baseline did not, which counts whatever the scores."""
    def gated(name: str) -> bool:
        return scores is None or name in scores
    return case["new_error"] or any(gated(name) for name in case["lost_scores"]) or any(
        gated(name) and is_regression(change, min_drop) for name, change in case["diff"].items())


# The baseline's cases by key, in a scratch database, so a baseline of any size costs no
# memory; a key's trials are folded into one BaselineCase when a case looks it up.

def index_baseline(cases: Iterable[Dict[str, Any]]) -> sqlite3.Connection:
    database = open_scratch_database()
    database.execute("CREATE TABLE baseline (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, "
                     "trial BLOB NOT NULL, read INTEGER NOT NULL DEFAULT 0)")
    database.execute("BEGIN")
    database.executemany("INSERT INTO baseline (key, trial) VALUES (?, ?)", (
        (stored_text(case_key(case)), marshal.dumps(
            (case["root_span_id"], case["output"], case["scores"], case["error"] is not None)))
        for case in cases))
    database.execute("COMMIT")
    database.execute("CREATE INDEX by_key ON baseline (key)")
    return database


def baseline_match(database: sqlite3.Connection, key: Tuple[str, str]
                   ) -> Optional[BaselineCase]:
    trials = database.execute("SELECT trial FROM baseline WHERE key = ? ORDER BY seq",
                              (stored_text(key),)).fetchall()
    return baseline_case(marshal.loads(trial) for trial, in trials) if trials else None


def unread_baseline_cases(database: sqlite3.Connection, read: Iterable[Tuple[str, str]]) -> int:
    """How many baseline keys none of these case keys is."""
    database.execute("BEGIN")
    database.executemany("UPDATE baseline SET read = 1 WHERE key = ?",
                         ((stored_text(key),) for key in read))
    database.execute("COMMIT")
    # Grouped along the index on key: COUNT(DISTINCT) would sort in a temporary b-tree.
    return database.execute("SELECT COUNT(*) FROM (SELECT key FROM baseline GROUP BY key "
                            "HAVING MAX(read) = 0)").fetchone()[0]


def unread_examples(database: sqlite3.Connection, most: int = 3) -> List[str]:
    """A few baseline cases that unread_baseline_cases counted, each as its key says it:
    its dataset record id, or the start of its input."""
    examples = []
    for key, in database.execute("SELECT key FROM baseline GROUP BY key HAVING MAX(read) = 0 "
                                 "ORDER BY MIN(seq) LIMIT ?", (most,)):
        kind, value = json.loads(key[1:])
        examples.append(f"dataset record {value}" if kind == "dataset_record_id"
                        else f"input {value if len(value) <= 60 else value[:59] + '…'}")
    return examples


# Paired statistics (--summary with --baseline): a t interval of the mean difference, as
# it needs only running sums (constant memory at any size, nothing random), and an exact
# sign test, which assumes nothing about the shape of the differences.

def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by its continued fraction (modified Lentz), on the side where it converges."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def t_distribution(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom, t >= 0."""
    return 1.0 - regularized_beta(df / (df + t * t), df / 2, 0.5) / 2


def t_quantile_975(df: int) -> float:
    """The 97.5th percentile of Student's t with `df` degrees of freedom, by bisection."""
    low, high = 0.0, 1.0
    while t_distribution(high, df) < 0.975:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_distribution(middle, df) < 0.975:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15 * high:
            break
    return (low + high) / 2


def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign-test p-value for `wins` rises and `losses` falls (ties
    dropped): twice the chance of a split at least this uneven, at most 1."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    term = math.comb(n, k)
    tail = term
    for i in range(k, 0, -1):  # C(n, i-1) = C(n, i) * i / (n - i + 1), exactly
        term = term * i // (n - i + 1)
        tail += term
    return min(1.0, float(Fraction(2 * tail, 2 ** n)))


class Pairs(NamedTuple):
    """Running sums over the cases with one score on both sides."""
    count: int = 0
    current_sum: float = 0
    baseline_sum: float = 0
    diff_sum: float = 0
    diff_mean: float = 0.0  # Welford's running mean and sum of squared deviations
    diff_m2: float = 0.0
    rises: int = 0
    falls: int = 0

    def add(self, current: float, baseline: float, change: float) -> "Pairs":
        count = self.count + 1
        step = change - self.diff_mean
        diff_mean = self.diff_mean + step / count
        return Pairs(count, self.current_sum + current, self.baseline_sum + baseline,
                     self.diff_sum + change, diff_mean,
                     self.diff_m2 + step * (change - diff_mean),
                     self.rises + (change > CHANGE), self.falls + (change < -CHANGE))


def paired_statistics(pairs: Pairs) -> Dict[str, Any]:
    """Over the pairs: n, both means and the mean difference (null with no pair), its 95%
    t interval and the sign test's p-value (null under 2 pairs)."""
    n = pairs.count
    figures = {"n": n, "mean": mean(pairs.current_sum, n),
               "baseline_mean": mean(pairs.baseline_sum, n),
               "diff_mean": mean(pairs.diff_sum, n), "ci95": None, "p_value": None}
    if n >= 2:
        diff_mean = pairs.diff_sum / n
        half = t_quantile_975(n - 1) * math.sqrt(max(pairs.diff_m2, 0.0) / (n - 1) / n)
        figures.update(ci95=[tidy(diff_mean - half), tidy(diff_mean + half)],
                       p_value=sign_test(pairs.rises, pairs.falls))
    return figures


def tidy(value: Any) -> Any:
    """A computed mean to 12 significant digits: 0.2898, not 0.28979999999999995 (the float
    noise of adding up); well within what any score can mean."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.12g}")
    return value


def mean(total: float, count: int) -> Optional[float]:
    return tidy(total / count) if count else None


class Tally:
    """Running figures over the cases printed, in constant memory: what --summary prints,
    and what the markdown report, JUnit and the gate read. `compared`: with --baseline;
    `gated`: the scores --fail-on-regression names (None: any)."""

    COSTS = ("llm_calls", "prompt_tokens", "completion_tokens", "tokens")

    def __init__(self, compared: bool = False, min_drop: float = 0.0,
                 gated: Optional[FrozenSet[str]] = None):
        self.compared, self.min_drop, self.gated = compared, min_drop, gated
        self.records = self.errors = self.edited = self.durations = 0
        self.duration_sum = 0.0
        self.scores: Dict[str, List[Any]] = {}  # name -> count, sum, min, max
        self.pairs: Dict[str, Pairs] = {}
        self.falls: Dict[str, int] = {}  # name -> cases that regressed on it
        self.lost: Dict[str, int] = {}  # name -> cases that lost it
        self.statuses = dict.fromkeys(("regressed", "improved", "unchanged", "new"), 0)
        self.new_errors = self.gate_regressed = 0
        self.costs = dict.fromkeys(self.COSTS, 0)

    def add(self, case: Dict[str, Any]) -> Dict[str, Any]:
        """Count one case in; hand it back, so a tally can sit in a stream of cases."""
        self.records += 1
        self.errors += failed(case)
        self.edited += bool(case["edited"])
        for name, value in case["scores"].items():
            if is_number(value):
                tally = self.scores.setdefault(name, [0, 0, value, value])
                tally[:] = [tally[0] + 1, tally[1] + value, min(tally[2], value),
                            max(tally[3], value)]
        metrics = case.get("metrics")  # kept only where costs were asked for
        if metrics is not None and is_number(metrics["duration"]):
            self.durations += 1
            self.duration_sum += metrics["duration"]
        for name in self.COSTS if metrics is not None else ():
            self.costs[name] += metrics[name]
        if self.compared:
            self.add_comparison(case)
        return case

    def add_comparison(self, case: Dict[str, Any]) -> None:
        self.statuses[case["status"]] += 1
        self.new_errors += case["new_error"]
        self.gate_regressed += regressed_on(case, self.gated, self.min_drop)
        for name, change in case["diff"].items():
            self.pairs[name] = self.pairs.get(name, Pairs()).add(
                case["scores"][name], case["baseline"]["scores"][name], change)
            self.falls[name] = self.falls.get(name, 0) + is_regression(change, self.min_drop)
        for name in case["lost_scores"]:
            self.lost[name] = self.lost.get(name, 0) + 1

    def summary(self, experiment_id: str, baseline_id: Optional[str] = None,
                missing: int = 0) -> Dict[str, Any]:
        """--summary: the figures of exactly the cases added. A score's count, mean, min
        and max are over every record holding a number for it; its `paired` figures are
        over the records holding one on both sides, and only those."""
        scores = {}
        for name in sorted({*self.scores, *self.lost}):
            count, total, low, high = self.scores.get(name, [0, 0, None, None])
            scores[name] = {"count": count, "mean": mean(total, count), "min": low,
                            "max": high}
            if self.compared:
                both = self.pairs.get(name, Pairs())
                scores[name].update(improvements=both.rises,
                                    regressions=self.falls.get(name, 0),
                                    lost=self.lost.get(name, 0),
                                    paired=paired_statistics(both))
        summary: Dict[str, Any] = {
            "experiment_id": experiment_id,
            "records": self.records,
            "errors": self.errors,
            "edited": self.edited,
            "scores": scores,
            "metrics": {"duration_mean": mean(self.duration_sum, self.durations), **self.costs},
        }
        if self.compared:
            summary.update(baseline_experiment_id=baseline_id,
                           matched=self.records - self.statuses["new"],
                           new=self.statuses["new"], missing=missing,
                           regressed=self.statuses["regressed"],
                           improved=self.statuses["improved"],
                           unchanged=self.statuses["unchanged"], new_errors=self.new_errors)
        return summary


def summarise(cases: Iterable[Dict[str, Any]], experiment_id: str,
              baseline: Optional[Tuple[str, Callable[[], int]]] = None,
              min_drop: float = 0.0) -> Dict[str, Any]:
    """--summary over these cases, read once. `baseline`: the baseline's id, and how to
    count its cases that no case read had."""
    tally = Tally(baseline is not None, min_drop)
    for case in cases:
        tally.add(case)
    if baseline is None:
        return tally.summary(experiment_id)
    return tally.summary(experiment_id, baseline[0], baseline[1]())


# The gate (--fail-on-regression): what it judges, and why it fails.


class Gate(NamedTuple):
    scores: Optional[FrozenSet[str]]  # the scores named; None: every score
    mode: str = "cases"  # cases: any case regressed; mean: a paired mean fell; significant:
    # a paired mean fell beyond its 95% interval
    min_drop: float = 0.0
    allow_missing: bool = False


def gate_failures(gate: Gate, summary: Dict[str, Any], gate_regressed: int,
                  missing_examples: List[str]) -> List[str]:
    """Why the gate fails, each in a few words (none: it passes), from the summary of the
    printed records. Whatever the mode, a lost score, a new error and a missing case fail
    it (missing ones unless allowed): a crashed or vanished case is never "unchanged"."""
    def gated(name: str) -> bool:
        return gate.scores is None or name in gate.scores

    on = f" on {', '.join(map(repr, sorted(gate.scores)))}" if gate.scores else ""
    failures = []
    if gate.mode == "cases":
        if gate_regressed:
            failures.append(f"{gate_regressed} of {plural(summary['records'], 'record')} "
                            f"regressed{on}")
    else:
        lost = sum(score["lost"] for name, score in summary["scores"].items() if gated(name))
        if lost:
            failures.append(f"{plural(lost, 'score')} lost{on} (a number in the baseline, "
                            "none now)")
        if summary["new_errors"]:
            failures.append(f"{plural(summary['new_errors'], 'case')} raised an error "
                            "that the baseline did not")
        for name, score in summary["scores"].items():
            paired = score["paired"]
            if not gated(name) or paired["n"] == 0:
                continue
            if gate.mode == "mean" and is_regression(paired["diff_mean"], gate.min_drop):
                failures.append(f"the paired mean of {name!r} fell by {-paired['diff_mean']:g} "
                                f"({paired['baseline_mean']:g} → {paired['mean']:g} over "
                                f"{plural(paired['n'], 'pair')})")
            if (gate.mode == "significant" and paired["ci95"] is not None
                    and paired["ci95"][1] < -gate.min_drop):
                failures.append(f"{name!r} fell by {-paired['diff_mean']:g}, beyond noise (95% "
                                f"interval of the change [{paired['ci95'][0]:g}, "
                                f"{paired['ci95'][1]:g}] over {plural(paired['n'], 'pair')})")
    if summary["missing"] and not gate.allow_missing:
        failures.append(f"{plural(summary['missing'], 'baseline case')} missing from the run "
                        f"(e.g. {'; '.join(missing_examples)}; --allow-missing accepts a run "
                        "on a subset)")
    return failures


# ---------------------------------------------------------------------------------------
# Records: what of a case gets printed
# ---------------------------------------------------------------------------------------

def record_keys(include: Iterable[str], compared: bool, edited_only: bool) -> List[str]:
    """A record's keys, in order: the standard seven, --include's, the comparison, edited."""
    return [*STANDARD_KEYS, *include, *(COMPARISON_KEYS if compared else ()),
            *(("edited",) if edited_only else ())]


# What --schema prints: the JSON Schema (draft 2020-12) of one record (each field's, from
# FIELDS), or of the summary.
def object_schema(properties: Dict[str, Any], **more: Any) -> Dict[str, Any]:
    return {**more, "type": "object", "required": list(properties),
            "additionalProperties": False, "properties": properties}


def summary_schema(compared: bool) -> Dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    mean_or_null = NUMBER_OR_NULL
    score = {"count": count, "mean": mean_or_null, "min": mean_or_null, "max": mean_or_null}
    if compared:
        score.update(
            improvements=count, regressions=count, lost=count,
            paired=object_schema({
                "n": count, "mean": mean_or_null, "baseline_mean": mean_or_null,
                "diff_mean": mean_or_null,
                "ci95": {"oneOf": [{"type": "null"}, {"type": "array", "minItems": 2,
                                                      "maxItems": 2,
                                                      "items": {"type": "number"}}]},
                "p_value": {"type": ["number", "null"], "minimum": 0, "maximum": 1}},
                description="over the records with this score a number on both sides, and "
                "only those: both means and the mean difference (null with no pair), a 95% "
                "t interval of that difference and an exact sign-test p-value (null under 2 "
                "pairs)"))
    summary = {
        "experiment_id": {"type": "string"}, "records": count, "errors": count,
        "edited": count,
        "scores": {"type": "object", "additionalProperties": object_schema(score)},
        "metrics": object_schema({"duration_mean": mean_or_null, "llm_calls": count,
                                  "prompt_tokens": {"type": "number"},
                                  "completion_tokens": {"type": "number"},
                                  "tokens": {"type": "number"}}),
    }
    if compared:
        summary.update(baseline_experiment_id={"type": "string"}, matched=count, new=count,
                       missing=count, regressed=count, improved=count, unchanged=count,
                       new_errors=count)
    return summary


def output_schema(keys: Optional[List[str]], compared: bool, jsonl: bool) -> Dict[str, Any]:
    """--schema: what one record with these keys holds (keys None: the summary)."""
    if keys is None:
        body, title = summary_schema(compared), "summary"
    else:
        body, title = {key: FIELD[key].schema for key in keys}, "record"
    return object_schema(body, **{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{PROG} {__version__}: one {title}" + (
            " (one line of --format jsonl)" if jsonl else "")})


def as_record(case: Dict[str, Any], keys: List[str], most: Optional[int]) -> Dict[str, Any]:
    """The case's fields that `keys` names, in that order, cut by --truncate (`most`)."""
    record = {key: case[key] for key in keys}
    if most is not None:
        for key in keys:
            if FIELD[key].cut is not None:
                record[key] = FIELD[key].cut(record[key], most)
    return record


# ---------------------------------------------------------------------------------------
# Output: JSON array, JSON lines, CSV or markdown, written once every page has arrived
# ---------------------------------------------------------------------------------------

# Built once: json.dumps with options would build a new encoder for every record.
INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2)
COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# What json writes for NaN and the infinities (1e400 parses as one): outside a string,
# these words are not JSON (RFC 8259), and jq and strict parsers refuse them.
NOT_JSON = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN')


class StrictJson:
    """Makes what json writes strict JSON: NaN, Infinity and -Infinity become null, and
    are counted, for one note on stderr. Text without those words is never scanned. U+2028
    and U+2029 are written escaped: JSON allows them raw, but readers that split lines on
    them (Python's str.splitlines, some JavaScript) would cut a record in two."""

    def __init__(self) -> None:
        self.nulls = 0

    def __call__(self, text: str) -> str:
        if "\u2028" in text or "\u2029" in text:  # only ever inside strings
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if "NaN" not in text and "Infinity" not in text:
            return text
        return NOT_JSON.sub(self.null_unless_string, text)

    def null_unless_string(self, match: "re.Match[str]") -> str:
        if match.group().startswith('"'):
            return match.group()
        self.nulls += 1
        return "null"


def encode(record: Any, encoder: json.JSONEncoder,
           strict: Callable[[str], str] = StrictJson()) -> bytes:
    try:
        return strict(encoder.encode(record)).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the API: keep it, as a \u escape
        fallback = json.JSONEncoder(indent=encoder.indent, separators=(encoder.item_separator,
                                                                       encoder.key_separator))
        return strict(fallback.encode(record)).encode("ascii")


def render(records: Iterable[Dict[str, Any]], output_format: str,
           strict: Callable[[str], str] = StrictJson()) -> Iterator[bytes]:
    """The output, record by record, so no second copy of it is built in memory."""
    if output_format == "jsonl":
        for record in records:
            yield encode(record, COMPACT, strict) + b"\n"
        return
    # The same bytes as json.dumps(records, indent=2): JSON strings hold no raw newline,
    # so indenting a record by two more spaces is a plain replace.
    opening = b"[\n  "
    for record in records:
        yield opening + encode(record, INDENTED, strict).replace(b"\n", b"\n  ")
        opening = b",\n  "
    yield b"[]\n" if opening == b"[\n  " else b"\n]\n"


def render_summary(summary: Dict[str, Any], output_format: str,
                   strict: Callable[[str], str] = StrictJson()) -> Iterator[bytes]:
    yield encode(summary, COMPACT if output_format == "jsonl" else INDENTED, strict) + b"\n"


def csv_columns(keys: List[str], score_names: Iterable[str]) -> List[str]:
    """The record's keys, each spread over the columns its field names (scores, origin)."""
    columns: List[str] = []
    for key in keys:
        spread = FIELD[key].columns
        columns += spread(score_names) if spread else [key]
    return columns


def csv_cell(value: Any, strict: Callable[[str], str]) -> str:
    if isinstance(value, str):
        return value
    text = "null" if value is None else strict(COMPACT.encode(value))
    return "" if text == "null" else text


def csv_value(record: Dict[str, Any], column: str) -> Any:
    key, _, name = column.partition(".")
    if name and FIELD[key].columns is not None:  # one of the columns a field spreads over
        return (record[key] or {}).get(name)
    return record[column]


def render_csv(score_names: Callable[[], Iterable[str]], records: Iterable[Dict[str, Any]],
               keys: List[str], strict: Callable[[str], str] = StrictJson()) -> Iterator[bytes]:
    """RFC 4180 (the csv module's defaults: quoted when needed, CRLF), UTF-8, a header row.
    The score columns are every name `score_names` gives (a first pass over the cases)."""
    columns = csv_columns(keys, set(score_names()))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for record in records:
        writer.writerow([csv_cell(csv_value(record, column), strict) for column in columns])
        yield buffer.getvalue().encode("utf-8", "backslashreplace")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode("utf-8", "backslashreplace")


# The markdown report: counts, a table of scores, then the cases to look at (the regressed
# ones with --baseline, else the errored ones), at most REPORT_ROWS of them.
REPORT_ROWS = 20
REPORT_PREVIEW = 80  # characters of an input shown, unless --truncate says otherwise
WHOLE = sys.maxsize  # ids and score names are never cut short, as --truncate never cuts them
LINE_BREAKS = re.compile(r"\r\n|[\n\r\u2028\u2029\x0b\x0c\x85]")
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|<>#~])")


def markdown_cell(value: Any, most: int) -> str:
    """Any value as the text of one table cell: cut as --truncate cuts, control characters
    and terminal escapes dropped, line breaks as <br>, markdown's own characters escaped."""
    text = value if isinstance(value, str) else COMPACT.encode(value)
    text = truncated(text, most)
    text = CONTROL_OR_ESCAPE.sub("", text)
    text = "".join(char for char in LINE_BREAKS.sub("\n", text)
                   if char == "\n" or unicodedata.category(char) not in ("Cc", "Cf"))
    return MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", "<br>") or " "


def number(value: Any, signed: bool = False) -> str:
    if not is_number(value):
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def table(header: List[str], rows: Iterable[List[str]], right: int) -> List[str]:
    """A markdown table whose columns after the first `right` are aligned right."""
    return ["| " + " | ".join(header) + " |",
            "| " + " | ".join("---:" if n >= right else "---" for n in range(len(header)))
            + " |", *("| " + " | ".join(row) + " |" for row in rows)]


def why_regressed(case: Dict[str, Any], min_drop: float) -> List[str]:
    """A regressed case's reasons, in words: each score before → after, each lost score,
    a new error."""
    return ([f"{name} {number(case['baseline']['scores'][name])} → "
             f"{number(case['scores'][name])}" for name, change in case["diff"].items()
             if is_regression(change, min_drop)]
            + [f"{name} {number(case['baseline']['scores'][name])} → none (lost)"
               for name in case["lost_scores"]]
            + (["an error, where the baseline had none"] if case["new_error"] else []))


def report_rows(cases: Iterable[Dict[str, Any]], compared: bool, min_drop: float,
                most: int) -> List[List[str]]:
    """The report's rows: its first REPORT_ROWS regressed cases when `compared`, else its
    first cases with an error; each as id, input, and why (or the error)."""
    shown = (case for case in cases
             if (case["status"] == "regressed" if compared else failed(case)))
    return [[markdown_cell(case["root_span_id"], WHOLE), markdown_cell(case["input"], most),
             markdown_cell("; ".join(why_regressed(case, min_drop)), WHOLE)  # our words
             if compared else markdown_cell(failures_of(case)[0], most)]
            for case in islice(shown, REPORT_ROWS)]


def experiment_title(experiment_id: str, names: Optional[Names], app_url: Optional[str]
                     ) -> str:
    """An experiment as the report names it: its id, after its name when that is known,
    linked to the web app when the organisation and the app's URL are known too."""
    code = f"`{markdown_cell(experiment_id, WHOLE)}`"
    if names is None:
        return code
    title = markdown_cell(names.experiment, WHOLE)
    if app_url and names.org:
        org, project, experiment = (urllib.parse.quote(name, safe="")
                                    for name in (names.org, names.project, names.experiment))
        title = f"[{title}]({app_url}/app/{org}/p/{project}/experiments/{experiment})"
    return f"{title} ({code})"


def render_markdown(summary: Dict[str, Any], cases: List[List[str]], titles: Dict[str, str]
                    ) -> Iterator[bytes]:
    """The report; `titles`: each experiment's id -> how it is named (experiment_title)."""
    compared = "baseline_experiment_id" in summary
    lines = [f"**Experiment** {titles[summary['experiment_id']]}"
             + (f" vs **baseline** {titles[summary['baseline_experiment_id']]}"
                if compared else "")
             + f": {plural(summary['records'], 'record')}, {plural(summary['errors'], 'error')}"
             + (f"; {summary['matched']} matched, {summary['new']} new, {summary['missing']} "
                f"missing; {summary['regressed']} regressed, {summary['improved']} improved, "
                f"{summary['unchanged']} unchanged" if compared else ""), ""]
    if compared:
        rows = []
        for name, score in summary["scores"].items():
            both = score["paired"]
            interval = ("–" if both["ci95"] is None else
                        f"[{number(both['ci95'][0], True)}, {number(both['ci95'][1], True)}]")
            rows.append([markdown_cell(name, WHOLE), str(both["n"]),
                         number(both["mean"]), number(both["baseline_mean"]),
                         number(both["diff_mean"], True), interval,
                         number(both["p_value"]), str(score["regressions"]),
                         str(score["lost"]), str(score["improvements"])])
        # Every figure is the summary's `paired` one: over the cases scored on both sides.
        lines += table(["score", "pairs", "paired mean", "baseline", "diff", "95% CI",
                        "p (sign test)", "fell", "lost", "rose"], rows, 1) if rows else [
            "No scores."]
        title, last = "Regressed cases", "scores: before → after"
    else:
        lines += table(["score", "records", "mean", "min", "max"], [
            [markdown_cell(name, WHOLE), str(score["count"]), number(score["mean"]),
             number(score["min"]), number(score["max"])]
            for name, score in summary["scores"].items()], 1) if summary["scores"] else [
            "No scores."]
        title, last = "Cases with an error", "error"
    listed_count = summary["regressed"] if compared else summary["errors"]
    lines += ["", f"**{title}** ({listed_count})" + (":" if listed_count else ": none"), ""]
    if listed_count:
        lines += table(["case", "input", last], cases, 3)
    if listed_count > len(cases):
        lines += ["", f"…and {listed_count - len(cases)} more."]
    yield ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


# JUnit XML (--format junit), the report CI systems show: one testsuite, a testcase per
# record printed, a failure for each regressed case (or, without a baseline, each error).
# What XML 1.0's Char leaves out, named directly: its complement, [^\t\n\r\x20-\ud7ff...],
# takes the re module 6 ms to compile at every start.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
JUNIT_NAME = 80  # characters of a case's input in its testcase name
JUNIT_DETAIL = 2000  # characters of an input or error in a failure's text


def xml_text(value: Any, most: int = WHOLE) -> str:
    """Any value as XML 1.0 text: cut like --truncate, characters XML forbids dropped."""
    text = truncated(value if isinstance(value, str) else COMPACT.encode(value), most)
    return NOT_XML.sub("", text)


def xml_escaped(text: str) -> str:
    """xml.sax.saxutils.escape, which is not imported for it: it imports urllib.request, a
    tenth of the script's start-up."""
    return text.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


def xml_attribute(value: Any, most: int = WHOLE) -> str:
    """An attribute's quoted value, as xml.sax.saxutils.quoteattr quotes it (white space as
    character references, so a reader keeps it)."""
    text = xml_escaped(xml_text(value, most))
    text = text.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in text:
        return f'"{text}"'
    return f"'{text}'" if "'" not in text else '"{}"'.format(text.replace('"', "&quot;"))


def junit_case(case: Dict[str, Any], experiment_id: str, compared: bool,
               min_drop: float) -> str:
    name = f"{xml_text(case['input'], JUNIT_NAME)} [{case['root_span_id']}]"
    head = (f'  <testcase classname={xml_attribute("braintrust." + experiment_id)} '
            f"name={xml_attribute(name)}")
    if compared and case["status"] == "new":
        return head + '>\n    <skipped message="new: no baseline case matches"/>\n  </testcase>'
    if compared and case["status"] == "regressed":
        reasons = "; ".join(why_regressed(case, min_drop))
        kind = "regression"
    elif not compared and failed(case):
        reasons, kind = "the case raised an error", "error"
    else:
        return head + "/>"
    detail = "\n".join([f"input: {xml_text(case['input'], JUNIT_DETAIL)}"] + [
        f"error: {xml_text(failure, JUNIT_DETAIL)}" for failure in failures_of(case)])
    return (head + f">\n    <failure type={xml_attribute(kind)} message={xml_attribute(reasons)}>"
            f"{xml_escaped(detail)}</failure>\n  </testcase>")


def render_junit(summary: Dict[str, Any], verdict: Optional[List[str]],
                 cases: Iterable[Dict[str, Any]], min_drop: float) -> Iterator[bytes]:
    """One testsuite for the run, its counts and the gate's verdict (`verdict`: the gate's
    failures, None without a gate) among its properties, then a testcase per case."""
    compared = "baseline_experiment_id" in summary
    experiment_id = summary["experiment_id"]
    failures = summary["regressed"] if compared else summary["errors"]
    skipped = summary["new"] if compared else 0
    counts = (f'tests="{summary["records"]}" failures="{failures}" errors="0" '
              f'skipped="{skipped}"')
    title = f"braintrust experiment {experiment_id}" + (
        f" vs baseline {summary['baseline_experiment_id']}" if compared else "")
    gate = ("not asked" if verdict is None else
            "failed: " + "; ".join(verdict) if verdict else "passed")
    properties = {"experiment_id": experiment_id, **{
        key: summary[key] for key in ("baseline_experiment_id", "matched", "new", "missing",
                                      "regressed", "improved", "unchanged", "new_errors")
        if key in summary}, "gate": gate}
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f"<testsuites name={xml_attribute(title)} {counts}>",
             f"<testsuite name={xml_attribute(title)} {counts}>", "  <properties>",
             *(f"    <property name={xml_attribute(name)} value={xml_attribute(value)}/>"
               for name, value in properties.items()), "  </properties>"]
    yield ("\n".join(lines) + "\n").encode("utf-8")
    for case in cases:
        yield (junit_case(case, experiment_id, compared, min_drop) + "\n").encode("utf-8")
    yield b"</testsuite>\n</testsuites>\n"


def write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a failed or
    interrupted run leaves an existing file as it was, and no temporary file behind."""
    folder = os.path.dirname(path)
    try:
        mode = os.stat(path).st_mode & 0o777  # a replaced file keeps its permissions
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle = None
    try:
        with SIGNALS.held():  # a signal now would leave a file that nothing removes
            handle = tempfile.NamedTemporaryFile(
                "wb", dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                delete=False)
        with handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)
        os.replace(handle.name, path)
    except BaseException:
        if handle is not None:
            with SIGNALS.held():
                try:
                    os.unlink(handle.name)
                except OSError:
                    pass
        raise


def write_into(path: str, chunks: Iterable[bytes]) -> None:
    """A FIFO or a device (/dev/null, /dev/stdout) is written into: it can't be replaced."""
    with open(path, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)


def write_file(path: str, chunks: Iterable[bytes]) -> None:
    """--output: a regular file is replaced atomically (a symlink's target, so the link
    stays a link); anything else that exists is written into."""
    try:
        if is_regular_or_missing(path):
            write_atomically(os.path.realpath(path), chunks)
        else:
            write_into(path, chunks)
    except OSError as error:
        raise ApiError(f"could not write {path!r}: {error.strerror or error}") from None


def write_stdout(chunks: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()


# ---------------------------------------------------------------------------------------
# The run, as a pipeline: options -> experiment and baseline -> store -> cases ->
# comparison -> filters -> output -> verdict. One reporter says everything on stderr.
# ---------------------------------------------------------------------------------------

class Reporter:
    """Stderr, all of it: messages, notes, retry notices (from any thread), progress (a
    line that keeps updating on a terminal, a line a page with --verbose, a plain line every
    `every` seconds otherwise), the key always redacted; and how far the run got, for the
    line an interrupted run ends with."""

    def __init__(self, terminal: bool, quiet: bool = False, verbose: bool = False,
                 every: float = 0.0):
        self.terminal, self.quiet, self.verbose, self.every = terminal, quiet, verbose, every
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.label, self.pages, self.live, self.writing = "", 0, 0, False
        self.stopped = threading.Event()

    def start_ticking(self) -> None:
        """Off a terminal (an agent, a CI log), a run still going says so every `every`
        seconds, so a long run is never mistaken for a hung one; a quick run stays silent."""
        if self.every > 0 and not (self.terminal or self.quiet or self.verbose):
            threading.Thread(target=self.tick, daemon=True).start()

    def tick(self) -> None:
        if hasattr(signal, "pthread_sigmask"):  # Ctrl-C and SIGTERM are the main thread's
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self.stopped.wait(self.every):
            self.say(f"writing the output, {self.elapsed():.0f} s" if self.writing else
                     f"{self.label}page {self.pages}: {plural(self.live, 'record')} so far, "
                     f"{self.elapsed():.0f} s")

    def stop(self) -> None:
        self.stopped.set()

    def say(self, message: str) -> None:
        """A message that always shows: an error, a verdict."""
        with self.lock:
            sys.stderr.write(("\r\x1b[K" if self.terminal else "") + REDACT(message) + "\n")
            sys.stderr.flush()

    def note(self, message: str) -> None:
        """What a careful user wants to know (retries, notes): hidden by --quiet."""
        if not self.quiet:
            self.say(message)

    def detail(self, message: str) -> None:
        """What --verbose adds."""
        if self.verbose:
            self.say(message)

    def reading(self, label: str) -> None:
        self.label, self.pages, self.live = label, 0, 0

    def page(self, pages: int, live: int, shown: int) -> None:
        """A page is in: `live` records so far, `shown` of them counted (the chosen ones
        with --max-results and filters)."""
        self.pages, self.live = pages, live
        self.progress(f"{self.label}page {pages}: {plural(shown, 'record')} so far, "
                      f"{self.elapsed():.1f} s")

    def read(self, records: int) -> None:
        self.progress(f"{self.label}{plural(records, 'record')} from "
                      f"{plural(self.pages, 'page')} in {self.elapsed():.1f} s", done=True)

    def progress(self, line: str, done: bool = False) -> None:
        if self.verbose:
            self.say(line)
        elif self.terminal and not self.quiet:
            with self.lock:  # the last line is ended, so the output starts on its own
                sys.stderr.write("\r\x1b[K" + fitted(line) + ("\n" if done else ""))
                sys.stderr.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def how_far(self, output: Optional[str], existed: bool) -> str:
        """What an interrupted run had done, and what it left of the output."""
        if self.writing:
            done = "while writing the output"
        elif self.pages:
            done = (f"after {plural(self.pages, 'page')} of the {self.label}experiment "
                    f"({plural(self.live, 'record')} so far)")
        else:
            done = "before the first page came"
        if output is None:
            left = "what reached stdout is incomplete" if self.writing else "nothing was printed"
        elif not is_regular_or_missing(output):
            left = f"{output!r} got {'part of the output' if self.writing else 'nothing'}"
        else:
            left = f"{output!r} is unchanged" if existed else f"no {output!r} was written"
        return f"{done}; {left}"


def fitted(line: str) -> str:
    """A progress line cut to the terminal's width, so a redraw never wraps."""
    try:
        columns = int(os.environ.get("COLUMNS") or 0) or os.get_terminal_size(2).columns
    except (OSError, ValueError):
        columns = 0
    columns = columns or 80
    return line if len(line) < columns else line[: max(columns - 2, 1)] + "…"


def read_experiment(session: requests.Session, settings: Settings, experiment_id: str,
                    options: Options, reporter: Reporter, label: str = "",
                    stop_at: Optional[int] = None,
                    chosen: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Store:
    """Every page of one experiment folded into a store of newest versions. With
    --max-results, no page is requested once the pages so far give that many records
    (nor ahead of time: it may not be needed), counting only the `chosen` ones when given;
    each page's cases are judged again, and only those (constant work per page)."""
    store = Store(settings.spill_after, options.with_costs)
    passing: Dict[Any, int] = {}  # with `chosen`: each trace's cases that are chosen
    pages = found = 0
    reporter.reading(label)
    try:
        for page, size in fetch_pages(session, settings, experiment_id, options.limit,
                                      reporter.note, label, ahead=not stop_at,
                                      note=reporter.detail):
            try:
                touched = store.add(page, size)
            except MalformedAnswer as error:
                raise MalformedAnswer(f"{label}page {pages + 1}: {error}") from None
            pages += 1
            del page  # before the next page is parsed: one parsed page at a time
            if chosen is not None and stop_at:
                for trace in touched:
                    now = sum(map(chosen, store.cases_of([trace])))
                    found += now - passing.get(trace, 0)
                    passing[trace] = now
            else:
                found = store.live
            reporter.page(pages, store.live, found)
            if stop_at and found >= stop_at:
                found = stop_at
                break
    except BaseException:
        store.close()
        raise
    reporter.read(found)
    return store


class Comparison(NamedTuple):
    """--baseline, once read: the baseline's id, and its cases by key in a scratch database
    (a baseline of any size costs no memory). None stands for "no baseline"."""
    baseline_id: str
    index: sqlite3.Connection
    min_drop: float

    def compared(self, case: Dict[str, Any]) -> Dict[str, Any]:
        """The case, with what --baseline adds: baseline, diff, lost_scores, new_error, status."""
        case.update(comparison(case, baseline_match(self.index, case_key(case)),
                               self.min_drop))
        return case

    def score_names(self) -> set:
        """Every score name that a baseline case holds a number for."""
        return {name for trial, in self.index.execute("SELECT trial FROM baseline")
                for name, value in marshal.loads(trial)[2].items() if is_number(value)}

    def missing(self, store: Store) -> Tuple[int, List[str]]:
        """Baseline cases that no case read has (before any filter), and a few of them."""
        return (unread_baseline_cases(self.index, map(case_key, store.cases())),
                unread_examples(self.index))


def read_baseline(session: requests.Session, settings: Settings, options: Options,
                  baseline: Union[Target, str, None], experiment_id: str, reporter: Reporter
                  ) -> Optional[Comparison]:
    """The baseline --baseline names, read in full and indexed by case key; None without."""
    if baseline is None:
        return None
    baseline_id = (base_experiment_id(session, settings, experiment_id, reporter.note)
                   if baseline == AUTO else
                   resolve_experiment(session, settings, baseline, reporter.note))
    if baseline_id == experiment_id:
        raise UsageError(f"--baseline is experiment {experiment_id} itself: compare with "
                         "another one")
    reporter.detail(f"baseline: experiment {baseline_id}")
    store = read_experiment(session, settings, baseline_id, options, reporter, "baseline ")
    try:
        return Comparison(baseline_id, index_baseline(store.cases()), options.min_drop)
    finally:
        store.close()


def chosen_cases(store: Store, compared: Optional[Comparison],
                 keep: Callable[[Dict[str, Any]], bool], most: Optional[int]
                 ) -> Iterator[Dict[str, Any]]:
    """The cases to print, in the order their roots came: compared, filtered, the first
    `most` of them."""
    cases = store.cases() if compared is None else map(compared.compared, store.cases())
    return islice(filter(keep, cases), most)


def names_read(store: Store, compared: Optional[Comparison]) -> Tuple[set, set]:
    """Every score name and tag that a case read has (and a baseline case, for scores):
    to say which filter or gated name matches nothing."""
    scores, tags = set(), set()
    for case in store.cases():
        scores.update(case["scores"])
        tags.update(tag for tag in case["tags"] if isinstance(tag, str))
    return scores | (compared.score_names() if compared else set()), tags


def report_titles(session: requests.Session, settings: Settings, experiment_ids: List[str],
                  announce: Callable[[str], None]) -> Dict[str, str]:
    """Each experiment as the markdown report names it (experiment_title)."""
    return {experiment_id: experiment_title(
        experiment_id, experiment_names(session, settings, experiment_id, announce),
        settings.app_url) for experiment_id in experiment_ids}


def rendered(options: Options, experiment_id: str, compared: Optional[Comparison],
             cases: Callable[[], Iterator[Dict[str, Any]]], tally: "Tally",
             missing: Tuple[int, List[str]], strict: StrictJson, titles: Dict[str, str]
             ) -> Iterator[bytes]:
    """The output the options ask for, chunk by chunk; every case printed passes through
    `tally`, which the summary, the reports and the gate read. `titles`: the markdown
    report's names of the experiments."""
    baseline_id = compared.baseline_id if compared else None
    output_format, min_drop = options.output_format, options.min_drop
    if output_format == "markdown":
        for case in cases():  # the counts, then the first rows: two passes
            tally.add(case)
        rows = report_rows(cases(), compared is not None, min_drop,
                           options.truncate or REPORT_PREVIEW)
        return render_markdown(tally.summary(experiment_id, baseline_id, missing[0]), rows,
                               titles)
    if options.summary:
        for case in cases():
            tally.add(case)
        return render_summary(tally.summary(experiment_id, baseline_id, missing[0]),
                              output_format, strict)
    if output_format == "junit":  # the suite's counts and verdict come first: two passes
        for case in cases():
            tally.add(case)
        summary = tally.summary(experiment_id, baseline_id, missing[0])
        verdict = (None if options.gate is None else
                   gate_failures(options.gate, summary, tally.gate_regressed, missing[1]))
        return render_junit(summary, verdict, cases(), min_drop)
    keys = record_keys(options.include, compared is not None, options.filters.edited_only)
    counted = cases() if options.gate is None else map(tally.add, cases())  # for the gate
    records = (as_record(case, keys, options.truncate) for case in counted)
    if output_format == "csv":
        return render_csv(lambda: (name for case in cases() for name in case["scores"]),
                          records, keys, strict)
    return render(records, output_format, strict)


def write_output(options: Options, experiment_id: str, compared: Optional[Comparison],
                 store: Store, reporter: Reporter, titles: Dict[str, str]) -> Optional[str]:
    """Write what the options ask for; then the notes, and the gate's verdict: why it
    failed (None: it passed, or there is no gate)."""
    # The collector is back for the output: json's indenting encoder leaves a reference
    # cycle behind for every record. What is held now is frozen, so it is never rescanned.
    gc.freeze()
    gc.enable()
    gate = options.gate
    tally = Tally(compared is not None, options.min_drop, gate.scores if gate else None)
    missing = (compared.missing(store) if compared is not None and (
        gate is not None or options.summary or options.output_format in ("markdown", "junit"))
        else (0, []))
    keep = case_filter(options.filters)
    strict = StrictJson()
    chunks = rendered(options, experiment_id, compared,
                      lambda: chosen_cases(store, compared, keep, options.max_results), tally,
                      missing, strict, titles)
    reporter.writing = True
    if options.output:
        write_file(options.output, chunks)
    else:
        write_stdout(chunks)
    if strict.nulls:
        reporter.note(f"{PROG}: note: {plural(strict.nulls, 'value')} in the experiment "
                      f"{'was' if strict.nulls == 1 else 'were'} NaN or infinite, which JSON "
                      "cannot hold: written as null")
    known_scores, known_tags = (
        names_read(store, compared) if options.filters.scores or options.filters.tags or (
            gate is not None and gate.scores) else (set(), set()))
    for line in unmatched_filters(options.filters, known_scores, known_tags):
        reporter.note(line)
    if gate is None:
        return None
    unknown = sorted((gate.scores or set()) - known_scores)
    if unknown:
        raise UsageError(f"--fail-on-regression: no record or baseline case has the score "
                         f"{', '.join(map(repr, unknown))} (the scores: "
                         f"{', '.join(map(repr, sorted(known_scores))) or 'none'}), so it "
                         "could never fail; check the name (it is exact and case-sensitive)")
    failures = gate_failures(gate, tally.summary(experiment_id, None, missing[0]),
                             tally.gate_regressed, missing[1])
    if not failures:
        return None
    return (f"{failures[0]} against baseline {compared.baseline_id} (--fail-on-regression)"
            + "".join(f"; {failure}" for failure in failures[1:]))


def run(options: Options, target: Target, baseline: Union[Target, str, None],
        settings: Settings, reporter: Reporter) -> Optional[str]:
    """The run, step by step; the gate's verdict (None: no gate, or it passed)."""
    # JSON trees hold no reference cycles, so the cyclic collector would only rescan the
    # growing record table on every page it parses: reference counting frees everything.
    gc.disable()
    session = open_session(settings)
    try:
        experiment_id = resolve_experiment(session, settings, target, reporter.note)
        if target.id is None:
            reporter.detail(f"{target.name!r} in project {target.project!r} is experiment "
                            f"{experiment_id}")
        compared = read_baseline(session, settings, options, baseline, experiment_id,
                                 reporter)
        try:
            titles = report_titles(
                session, settings, [experiment_id] + ([compared.baseline_id] if compared else []),
                reporter.note) if options.output_format == "markdown" else {}
            keep = case_filter(options.filters)
            filtering = keep is not keep_all
            store = read_experiment(session, settings, experiment_id, options, reporter,
                                    stop_at=options.max_results,
                                    chosen=(None if not filtering else
                                            keep if compared is None else
                                            lambda case: keep(compared.compared(case))))
            try:
                return write_output(options, experiment_id, compared, store, reporter, titles)
            finally:
                store.close()
        finally:
            if compared is not None:
                compared.index.close()
    finally:
        session.close()


def schema_of(options: Options) -> bytes:
    """--schema: the JSON Schema of one record (or of the summary) for these options."""
    compared = options.baseline is not None
    keys = None if options.summary else record_keys(options.include, compared,
                                                    options.filters.edited_only)
    return encode(output_schema(keys, compared, options.output_format == "jsonl"),
                  INDENTED) + b"\n"


def checked(options: Options, environ: Dict[str, str]
            ) -> Tuple[Target, Union[Target, str, None], Settings]:
    """What the arguments name, and the settings: the first thing wrong is a UsageError,
    raised before any request."""
    target = parse_target(options.experiment, options.project, options.org)
    baseline = (parse_baseline(options.baseline, target) if options.baseline is not None
                else None)
    return target, baseline, read_settings(environ, options.api_url, options.output)


def main(argv: Optional[List[str]] = None) -> int:
    reporter = Reporter(sys.stderr.isatty())
    SIGNALS.install()
    output, existed = None, False
    try:
        REDACT.add(key_in_sight(dict(os.environ)))  # before any message about the arguments
        options = parse_args(argv)
        output = options.output
        existed = bool(output) and os.path.lexists(output)
        if options.schema:
            write_stdout([schema_of(options)])
            return EXIT_OK
        target, baseline, settings = checked(options, dict(os.environ))
        REDACT.add(settings.key)
        reporter = Reporter(reporter.terminal, options.quiet, options.verbose,
                            settings.progress_every)
        reporter.start_ticking()
        verdict = run(options, target, baseline, settings, reporter)
        reporter.stop()
        if verdict is not None:
            raise Regressed(verdict)
        return EXIT_OK
    except UsageError as error:
        reporter.say(f"{PROG}: error: {error}")
        return EXIT_USAGE
    except Regressed as verdict:
        reporter.say(f"{PROG}: {verdict}")
        return EXIT_REGRESSED
    except ApiError as error:
        reporter.say(f"{PROG}: error: {error}")
        return EXIT_API
    except KeyboardInterrupt:
        reporter.say(f"{PROG}: interrupted {reporter.how_far(output, existed)}")
        return EXIT_INTERRUPTED
    except Terminated:
        reporter.say(f"{PROG}: terminated {reporter.how_far(output, existed)}")
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except RecursionError:  # a value nested deeper than Python's stack: the data, not a bug
        reporter.say(f"{PROG}: error: the experiment holds a value nested deeper than this "
                     f"Python can handle (about {sys.getrecursionlimit()} levels of arrays or "
                     "objects)")
        return EXIT_API
    except sqlite3.Error as error:  # the temporary store: its disk is full, most likely
        reporter.say(f"{PROG}: error: the temporary store in {tempfile.gettempdir()!r} failed "
                     f"({error}); free some space there, or point TMPDIR at a folder with more "
                     "room (the store takes about what the records would as JSON)")
        return EXIT_API
    except OSError as error:  # writing stdout failed: disk full...
        where = f" ({error.filename})" if error.filename else ""
        reporter.say(f"{PROG}: error: {error.strerror or error}{where}")
        return EXIT_API
    except Exception as error:  # a bug of ours: still one line, and never the key
        reporter.say(f"{PROG}: error: unexpected {type(error).__name__}: "
                     f"{clean_text(str(error))}; please report this with the command you ran")
        return EXIT_API
    finally:
        reporter.stop()


if __name__ == "__main__":
    sys.exit(main())

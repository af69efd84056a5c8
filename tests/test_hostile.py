"""The script against hostile and broken servers (issue 20): every run ends, shows no part
of the key, refuses garbage in one clear line, and leaves no file behind.

The servers are raw sockets on 127.0.0.1 (`hostile.py`). Deadlines are 1 s and the read
timeout 60 s, so a run that only the read timeout would end outlives the test's 45 s limit
and fails it. Every run goes through `run_script`, which checks that no 8 characters of a
key in a row reach stdout or stderr.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import SCRIPT, clean_env, run_script
from fake_api import API_KEY
from hostile import (UUID, Client, HostileServer, gzip_bomb, head, page, root_event,
                     serve_pages)

PROG = "fetch_experiment_results.py"
LATE = "no whole answer within BRAINTRUST_HTTP_DEADLINE (1 s)"
SLOWLY = ("the server (or a proxy) is sending it very slowly; try again later, or raise "
          "BRAINTRUST_HTTP_DEADLINE")


def fetch(server, *args, tmp_path, **settings):
    """The script against `server`: no retries, a read timeout of 60 s, and a deadline of
    30 s, which a loaded machine keeps for an answer that is not hostile (the tests of the
    deadline itself set 1 s)."""
    env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=server.url,
                    BRAINTRUST_NUM_RETRIES="0", BRAINTRUST_HTTP_DEADLINE="30",
                    BRAINTRUST_HTTP_TIMEOUT="60")
    env.update(settings)
    return run_script(*(args or (UUID,)), env=env, cwd=tmp_path, timeout=45)


def error_line(result):
    assert (result.code, result.stdout) == (1, b""), result.stderr
    [line] = result.stderr.splitlines()
    return line


def record(number):
    """What root_event(number) gives as a record."""
    return {"root_span_id": f"trace-{number}", "input": f"question {number}",
            "output": f"answer {number}", "expected": None, "metadata": {},
            "scores": {"Exact Match": 1}, "origin": None}


# -- 1. the deadline holds from the first byte sent to the last received -----------------

@pytest.mark.parametrize("version, headers", [
    ("HTTP/1.1", {"Connection": "close"}),
    ("HTTP/1.0", {}),  # no length either: the body ends when the connection does
], ids=["connection-close", "http-1.0"])
def test_a_body_trickled_on_a_closing_connection_is_cut_off_at_the_deadline(
        tmp_path, version, headers):
    body = page([root_event(1)])

    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            length = len(body) if version == "HTTP/1.1" else None
            client.send(head("200 OK", dict(headers, **{"Content-Type": "application/json"}),
                             length, version))
            client.trickle(body, 0.2)

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_HTTP_DEADLINE="1")
    assert error_line(result) == f"{PROG}: error: page 1: {LATE}, 1 time: {SLOWLY}"


def trickle_the_head(client: Client) -> None:
    """A status line and headers a byte every 0.2 s (over a minute in all), then at once
    a body: only a bound on the time before the headers can end it early."""
    body = page([])
    client.trickle(head("200 OK", {"Content-Type": "application/json", "X-Padding": "p" * 300},
                        len(body)), 0.2)
    client.send(body)


def test_a_status_line_and_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_deadline(
        tmp_path):
    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            trickle_the_head(client)

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_HTTP_DEADLINE="1")
    assert error_line(result) == f"{PROG}: error: page 1: {LATE}, 1 time: {SLOWLY}"


def test_endless_100_continue_answers_are_cut_off_at_the_deadline(tmp_path):
    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            while client.send(b"HTTP/1.1 100 Continue\r\n\r\n"):
                client.wait(0.05)

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_HTTP_DEADLINE="1")
    assert error_line(result) == f"{PROG}: error: page 1: {LATE}, 1 time: {SLOWLY}"


def test_a_server_that_takes_the_request_and_never_answers_ends_at_the_deadline_each_try(
        tmp_path):
    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            client.wait(120)

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_NUM_RETRIES="1",
                       BRAINTRUST_HTTP_DEADLINE="1")
        assert len(server.requests) == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"page 1: the connection failed ({LATE}); retrying in ")
    assert lines[1:] == [f"{PROG}: error: page 1: {LATE}, 2 times: {SLOWLY}"]
    assert (result.code, result.stdout) == (1, b"")


def test_an_attempt_cut_off_before_its_headers_is_retried_and_the_next_answer_counts(
        tmp_path):
    pages = serve_pages(page([root_event(1)], cursor="next"), page([]))

    def behave(client: Client, number: int) -> None:
        if number == 1:
            if client.request() is not None:
                trickle_the_head(client)
        else:
            pages(client, number)

    with HostileServer(behave) as server:  # 5 s: the second, honest answer comes well within
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_NUM_RETRIES="1",
                       BRAINTRUST_HTTP_DEADLINE="5")
    assert result.code == 0, result.stderr
    assert result.json() == [record(1)]
    [retry] = result.stderr.splitlines()
    assert retry.startswith(f"page 1: the connection failed ({LATE.replace('(1 s)', '(5 s)')}); "
                            "retrying in ")


# -- 2. no part of the key, ever ----------------------------------------------------------

@pytest.mark.parametrize("status, content_type, start", [
    ("200 OK", "text/html", 100), ("200 OK", "text/html", 130),  # near the cut of a preview
    ("500 Internal Server Error", "text/plain", 281),  # near the cut of a message
    ("400 Bad Request", "text/plain", 290)])
def test_a_key_inside_a_long_answer_shows_no_part_of_it(tmp_path, start, status,
                                                        content_type):
    text = "x" * start + API_KEY + " and more" * 40

    with HostileServer(serve_pages(text.encode(), status=status,
                                   content_type=content_type)) as server:
        result = fetch(server, tmp_path=tmp_path)  # run_script checks every 8 characters
    line = error_line(result)
    assert "xxxxxxxx" in line


def test_a_key_in_a_garbled_status_line_shows_no_part_of_it(tmp_path):
    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            client.send(("GARBAGE " + "x" * 110 + API_KEY + "\r\n\r\n").encode())

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path)
    assert "GARBAGE xxx" in error_line(result)


def test_the_key_pasted_where_the_experiment_goes_is_not_printed_back(tmp_path):
    with HostileServer(serve_pages(page([]))) as server:
        result = fetch(server, API_KEY, tmp_path=tmp_path)
    assert (result.code, server.requests) == (2, [])
    assert "'[redacted]' is not an experiment id" in result.stderr


def test_the_key_given_as_a_flag_is_not_printed_back_by_argparse(tmp_path):
    with HostileServer(serve_pages(page([]))) as server:
        result = fetch(server, UUID, "--api-key", API_KEY, tmp_path=tmp_path)
    assert result.code == 2
    assert "unrecognized arguments: --api-key [redacted]" in result.stderr


def test_a_key_read_only_from_dotenv_is_redacted_in_argument_errors(tmp_path):
    # Shorter than the shape of a real key after sk-: only knowing the key redacts it.
    key = "sk-other-Hq2Lw9Xe"
    (tmp_path / ".env").write_text(f"BRAINTRUST_API_KEY={key}\n")
    with HostileServer(serve_pages(page([]))) as server:
        result = fetch(server, key, tmp_path=tmp_path, BRAINTRUST_API_KEY="")
    assert result.code == 2
    assert key not in result.stderr and "'[redacted]' is not an experiment id" in result.stderr


def test_anything_shaped_like_a_braintrust_key_is_redacted_in_argument_errors(tmp_path):
    someone_elses = "sk-A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
    with HostileServer(serve_pages(page([]))) as server:
        result = fetch(server, UUID, someone_elses, tmp_path=tmp_path)
    assert result.code == 2
    assert "unrecognized arguments: [redacted]" in result.stderr
    assert "A1b2C3d4" not in result.stderr


# -- 3. no terminal escapes from the server -----------------------------------------------

ESCAPES = "Oops\x1b]0;owned\x07\x1b[2J"


@pytest.mark.parametrize("status", [f"500 {ESCAPES}", f"401 {ESCAPES}"])
def test_a_reason_phrase_with_terminal_escapes_is_shown_without_them(tmp_path, status):
    with HostileServer(serve_pages(b"no", status=status, content_type="text/plain")) as server:
        result = fetch(server, tmp_path=tmp_path)
    line = error_line(result)
    assert "Oops" in line
    assert "\x1b" not in line and "\x07" not in line and "owned" not in line


def test_a_content_type_with_terminal_escapes_is_shown_without_them(tmp_path):
    with HostileServer(serve_pages(b"<html>login</html>",
                                   content_type=f"text/html{ESCAPES}")) as server:
        result = fetch(server, tmp_path=tmp_path)
    line = error_line(result)
    assert "not JSON" in line and "text/htmlOops" in line
    assert "\x1b" not in line and "\x07" not in line and "owned" not in line


# -- 4. a bound on one answer -------------------------------------------------------------

def test_a_gzip_bomb_with_content_encoding_is_refused_past_the_page_limit(tmp_path):
    bomb = gzip_bomb(20 << 20)
    with HostileServer(serve_pages(bomb, **{"Content-Encoding": "gzip"})) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_MAX_PAGE_MB="1")
    assert error_line(result) == (
        f"{PROG}: error: page 1: the answer is larger than BRAINTRUST_MAX_PAGE_MB (1 MB, "
        "unpacked); if the experiment's pages really are that large, raise it, or lower "
        "--limit")


def test_a_gzip_bomb_without_content_encoding_is_refused_past_the_page_limit(tmp_path):
    bomb = gzip_bomb(20 << 20)  # as an object store sends a stored .json.gz
    with HostileServer(serve_pages(bomb, content_type="application/octet-stream")) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_MAX_PAGE_MB="1")
    assert error_line(result) == (
        f"{PROG}: error: page 1: the answer unpacks to more than BRAINTRUST_MAX_PAGE_MB (1 "
        "MB); if the experiment's pages really are that large, raise it, or lower --limit")


def test_an_endless_chunked_body_is_refused_past_the_page_limit(tmp_path):
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"

    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            client.send(head("200 OK", {"Content-Type": "application/json",
                                        "Transfer-Encoding": "chunked"}))
            while client.send(chunk):
                pass

    with HostileServer(behave) as server:  # a deadline far off: only the limit can end it
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_MAX_PAGE_MB="1",
                       BRAINTRUST_HTTP_DEADLINE="300")
    assert "larger than BRAINTRUST_MAX_PAGE_MB (1 MB, unpacked)" in error_line(result)


def test_a_content_length_past_the_page_limit_is_refused_before_any_body_comes(tmp_path):
    def behave(client: Client, number: int) -> None:
        if client.request() is not None:
            client.send(head("200 OK", {"Content-Type": "application/json"}, 2 << 20))
            client.wait(120)  # and no body: reading it would wait for ever

    with HostileServer(behave) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_MAX_PAGE_MB="1",
                       BRAINTRUST_HTTP_DEADLINE="300")
    assert "larger than BRAINTRUST_MAX_PAGE_MB (1 MB, unpacked)" in error_line(result)


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_one_large_event_within_the_page_limit_is_read_whole(tmp_path, encoding):
    import gzip
    large = "y" * (3 << 19)  # 1.5 MB in one event, under a limit of 2 MB
    body = page([root_event(1, output=large)])
    headers = {"Content-Encoding": "gzip"} if encoding else {}
    first = gzip.compress(body) if encoding else body
    with HostileServer(serve_pages(first, page([]), **headers)) as server:
        result = fetch(server, tmp_path=tmp_path, BRAINTRUST_MAX_PAGE_MB="2")
    assert result.code == 0, result.stderr
    assert result.json() == [dict(record(1), output=large)]


# -- 5. strict JSON out, whatever numbers came in -----------------------------------------

def refuse_non_json(word):
    raise ValueError(f"{word} is not JSON")


STRANGE_SCORES = ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, "0.5"]


def strange_page() -> bytes:
    """Six cases whose score is each of STRANGE_SCORES, written literally into the page."""
    text = page([root_event(n, scores={"Exact Match": f"@{n}@"}) for n in range(6)],
                cursor="next").decode()
    for n, literal in enumerate(STRANGE_SCORES):
        text = text.replace(f'"@{n}@"', literal)
    return text.encode()


@pytest.mark.parametrize("output_format", ["json", "jsonl"])
def test_nan_and_infinite_scores_are_written_as_null_with_one_note(tmp_path, output_format):
    with HostileServer(serve_pages(strange_page(), page([]))) as server:
        result = fetch(server, UUID, "--format", output_format, tmp_path=tmp_path)
    assert result.code == 0, result.stderr
    text = result.stdout.decode()
    records = ([json.loads(line, parse_constant=refuse_non_json) for line in text.splitlines()]
               if output_format == "jsonl" else json.loads(text, parse_constant=refuse_non_json))
    assert [r["scores"]["Exact Match"] for r in records] == [None, None, None, None,
                                                             10 ** 400, 0.5]
    assert result.stderr == (f"{PROG}: note: 4 values in the experiment were NaN or infinite, "
                             "which JSON cannot hold: written as null\n")


def test_the_summary_of_nan_infinite_and_huge_scores_is_strict_json_over_the_usable_ones(
        tmp_path):
    with HostileServer(serve_pages(strange_page(), page([]))) as server:
        result = fetch(server, UUID, "--summary", tmp_path=tmp_path)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout, parse_constant=refuse_non_json)
    assert summary["records"] == 6
    assert summary["scores"] == {"Exact Match": {"count": 1, "mean": 0.5, "min": 0.5,
                                                 "max": 0.5}}


# -- 6. garbage from the server is named, never "please report this" ---------------------

@pytest.mark.parametrize("body, says", [
    (b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
     "page 1: the answer nests JSON arrays or objects deeper than Python reads"),
    (page([root_event(1)], cursor={"offset": 2}),
     "page 1: the answer's cursor is an object, not a string"),
    (page([root_event(1, id=["row-1"])]), "page 1: an event's id is an array, not a string"),
    (page([root_event(1, root_span_id={"trace": 1})]),
     "page 1: an event's root_span_id is an object, not a string"),
    (page([root_event(1, span_id=[1, 2])]), "page 1: an event's span_id is an array, not a "
                                            "string"),
], ids=["deep", "cursor-object", "id-array", "root-object", "span-array"])
def test_a_malformed_answer_is_named_in_one_line_and_exits_1(tmp_path, body, says):
    with HostileServer(serve_pages(body, page([]))) as server:
        result = fetch(server, tmp_path=tmp_path)
    line = error_line(result)
    assert line.startswith(f"{PROG}: error: {says}")
    assert "unexpected" not in line and "please report" not in line


# -- 7. a redirect to a host that refuses --------------------------------------------------

def test_a_redirect_to_a_host_that_refuses_names_that_host_and_the_redirect(tmp_path):
    # Port 9 (discard) has no listener here: the kernel refuses at once.
    location = "http://127.0.0.1:9/blob/page.json.gz?X-Amz-Signature=secret"
    with HostileServer(serve_pages(b"", status="303 See Other", content_type="text/plain",
                                   Location=location)) as server:
        result = fetch(server, tmp_path=tmp_path)
    assert error_line(result) == (
        f"{PROG}: error: page 1: could not reach 127.0.0.1:9, where the API redirected the "
        "request (Connection refused); the API URL is not at fault: try again later, or "
        "report it to Braintrust if it goes on")


# -- 8. signals around the temporary output file ------------------------------------------

LOAD = """
import importlib.util, os, signal, sys, tempfile, threading, time
spec = importlib.util.spec_from_file_location("script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
"""


def run_python(code, *args, env=None, cwd=None):
    done = subprocess.run([sys.executable, "-c", LOAD + code, str(SCRIPT), *args],
                          capture_output=True, timeout=45, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_a_sigterm_while_the_temporary_output_file_is_created_leaves_no_file(tmp_path):
    # The signal lands inside the creation itself, after the file exists on disk and before
    # the call returns it: the moment a run used to leave the file behind.
    code = """
script.SIGNALS.install()
create = tempfile.NamedTemporaryFile
def creating(*args, **kwargs):
    handle = create(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # Python runs the handler in here
        pass
    return handle
tempfile.NamedTemporaryFile = creating
try:
    script.write_file(sys.argv[2], [b"data"])
except script.Terminated:
    print("terminated")
"""
    code_, stdout, stderr = run_python(code, str(tmp_path / "results.json"))
    assert (code_, stdout, stderr) == (0, "terminated\n", "")
    assert list(tmp_path.iterdir()) == []


def test_a_second_signal_while_the_first_unwinds_is_ignored():
    code = """
script.SIGNALS.install()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):
        pass
except script.Terminated:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10000):
        pass
    print("one")
"""
    assert run_python(code) == (0, "one\n", "")


def test_signals_during_the_write_its_cleanup_and_the_report_end_in_one_line_and_no_file(
        api, env, catalog, tmp_path):
    # A real run against the fake API; a SIGTERM lands as the first record is written, another
    # as the temporary file is being removed, a SIGINT as the line about the first is printed.
    code = """
def signalled(function, signum):
    def call(*args, **kwargs):
        os.kill(os.getpid(), signum)
        for _ in range(10000):  # Python runs the handler in here
            pass
        return function(*args, **kwargs)
    return call
render = script.render
def rendering(*args, **kwargs):
    for chunk in render(*args, **kwargs):
        yield chunk
        signalled(lambda: None, signal.SIGTERM)()
script.render = rendering
os.unlink = signalled(os.unlink, signal.SIGTERM)
sys.stderr.write = signalled(sys.stderr.write, signal.SIGINT)
sys.exit(script.main([sys.argv[2], "--output", sys.argv[3]]))
"""
    out = tmp_path / "out"
    out.mkdir()
    code_, stdout, stderr = run_python(code, catalog.rich, str(out / "results.json"),
                                       env=env, cwd=tmp_path)
    assert (code_, stdout) == (143, "")
    assert stderr == (f"{PROG}: terminated while writing the output; no "
                      f"{str(out / 'results.json')!r} was written\n")
    assert list(out.iterdir()) == []

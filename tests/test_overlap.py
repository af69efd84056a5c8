"""End to end: the next page requested while this one arrives (issue 11). The fake counts
the fetch requests it answers at once, so these tests prove the overlap without timing it."""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import sys

import pytest

import experiments
from conftest import SCRIPT, assert_no_key
from fake_api import encode_cursor, page_of
from test_cli import non_empty_pages, rich_records

# Every shape whose pages carry a header cursor, so that overlap happens (the others never
# overlap, and their records are checked exactly elsewhere, with overlap allowed).
SHAPES = ["both_cursors", "header_cursor", "redirect_cursor_on_303", "redirect_cursor_on_blob",
          "redirect_cursor_amz_meta", "decoy_header", "odd_headers", "versions", "analysis",
          "many", "current"]


def one_at_a_time(env):
    return dict(env, BRAINTRUST_MAX_IN_FLIGHT="1")


STANDARD = ("root_span_id", "input", "output", "expected", "metadata", "scores", "origin")


def truth(catalog, api, shape):
    """What the experiment of `shape` must give, from how it was built: its records' seven
    standard fields where the generator wrote them out, else the set of its cases' roots."""
    if shape == "versions":
        return experiments.versions_records(catalog.versions_cases)
    if shape == "analysis":
        return [experiments.analysis_record(catalog.analysis_cases, name)
                for name in experiments.ANALYSIS_ORDER]
    if shape in ("many", "current"):
        rows = api.experiments[getattr(catalog, shape)].rows
        return {row["root_span_id"] for row in rows if row.get("is_root")}
    return rich_records(catalog)  # every other shape serves the rich experiment


def matches_truth(records, catalog, api, shape):
    expected = truth(catalog, api, shape)
    if isinstance(expected, set):
        return len(records) == len(expected) and {r["root_span_id"] for r in records} == expected
    return [{key: record[key] for key in STANDARD} for record in records] == expected


@pytest.mark.parametrize("shape", SHAPES)
def test_records_are_the_same_byte_for_byte_with_and_without_overlap(run, api, env, catalog,
                                                                       shape):
    experiment_id = getattr(catalog, shape)
    overlapped = run(experiment_id, "--limit", "3", "--include", "all")
    sequential = run(experiment_id, "--limit", "3", "--include", "all", env=one_at_a_time(env))
    assert (overlapped.code, sequential.code) == (0, 0)
    assert overlapped.stdout == sequential.stdout
    assert matches_truth(overlapped.json(), catalog, api, shape)  # and both are right


def test_the_next_page_is_requested_while_this_ones_body_is_on_its_way(run, api, catalog):
    # The fake holds each body until the next page is asked for: only overlap gets two.
    result = run(catalog.both_held, "--limit", "5")
    assert result.json() == rich_records(catalog)
    assert api.most_in_flight == 2
    assert len(api.fetches()) == non_empty_pages(api, catalog.both_held, 5) + 1


def test_never_more_than_two_page_requests_are_in_flight(run, api, catalog):
    assert run(catalog.both_held, "--limit", "1").code == 0
    assert len(api.fetches()) > 20 and api.most_in_flight == 2


def test_max_in_flight_1_requests_each_page_after_the_one_before(run, api, env, catalog):
    result = run(catalog.both_cursors, "--limit", "5", env=one_at_a_time(env))
    assert result.json() == rich_records(catalog)
    assert (api.most_in_flight, api.connections) == (1, 1)


def test_overlap_opens_a_second_connection_and_no_more(run, api, catalog):
    assert run(catalog.both_cursors, "--limit", "2").code == 0
    assert api.connections == 2


@pytest.mark.parametrize("value", ["3"])  # every refused value: test_records.py
def test_a_bad_max_in_flight_is_a_usage_error_before_any_request(run, api, env, catalog,
                                                                  value):
    result = run(catalog.both_cursors, env=dict(env, BRAINTRUST_MAX_IN_FLIGHT=value))
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "BRAINTRUST_MAX_IN_FLIGHT" in result.stderr


def test_a_header_cursor_unlike_the_bodys_is_dropped_and_the_page_asked_again(run, api,
                                                                            catalog):
    result = run(catalog.decoy_header, "--limit", "5", "--verbose")
    assert result.json() == rich_records(catalog)
    api.settle()  # a decoy request sent as the script exited is logged only once it is in
    pages = non_empty_pages(api, catalog.decoy_header, 5)
    # Each page's body cursor was asked for; a decoy request was sent at most once a page
    # (none when it was dropped while still waiting for a free slot).
    asked = [request.body.get("cursor") for request in api.fetches()]
    assert len(set(asked)) == len(asked) and pages + 1 <= len(asked) <= 2 * pages + 1
    rows, offset, body_cursors = api.experiments[catalog.decoy_header].rows, 0, []
    while offset < len(rows):
        offset = page_of(rows, offset, 5)[1]
        body_cursors.append(encode_cursor(offset))
    assert set(body_cursors) <= set(asked)
    notes = [line for line in result.stderr.splitlines() if "differs" in line]
    assert notes[0] == ("page 1: the body's cursor differs from the header's; asking for "
                        "page 2 again with the body's")
    assert len(notes) == pages


def test_a_page_without_a_header_cursor_falls_back_to_one_request_after_another(run, api,
                                                                              catalog):
    result = run(catalog.odd_headers, "--limit", "5")
    assert result.json() == rich_records(catalog)
    assert len(api.fetches()) == non_empty_pages(api, catalog.odd_headers, 5) + 1


def test_a_retried_page_does_not_disturb_the_one_in_flight_beside_it(run, api, catalog):
    # Request 2 is page 2, asked for as page 1's headers came: it gets a 503, then retries.
    api.faults[2] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run(catalog.both_cursors, "--limit", "5")
    assert result.json() == rich_records(catalog)
    assert [line.split(";")[0] for line in result.stderr.splitlines()] == [
        "page 2: the API answered 503"]
    assert len(api.fetches()) == non_empty_pages(api, catalog.both_cursors, 5) + 2


def test_max_results_keeps_its_single_request_for_a_first_page_that_completes_it(run, api,
                                                                                 catalog):
    assert len(run(catalog.both_cursors, "--limit", "10", "--max-results", "5").json()) == 5
    assert len(api.fetches()) == 1


def test_max_results_sends_no_request_that_one_page_at_a_time_would_not(run, api, env,
                                                                        catalog):
    overlapped = run(catalog.both_cursors, "--limit", "2", "--max-results", "5")
    requests_overlapped = len(api.fetches())
    api.reset()
    sequential = run(catalog.both_cursors, "--limit", "2", "--max-results", "5",
                     env=one_at_a_time(env))
    assert overlapped.stdout == sequential.stdout
    # The first five cases; scores aside, as a scorer span on a page not read is missed
    # (--max-results' documented price).
    without_scores = [{**record, "scores": None} for record in overlapped.json()]
    assert without_scores == [{**record, "scores": None} for record in rich_records(catalog)[:5]]
    assert requests_overlapped == len(api.fetches()) > 1


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_a_signal_with_two_requests_in_flight_ends_the_run_at_once(api, env, catalog,
                                                                   tmp_path, sig, code, word):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")
    # Page 1's body and page 2's answer both hang (for longer than the test waits).
    api.faults.update({1: {"body_delay": 60}, 2: {"delay": 60}})
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.both_cursors, "--limit",
                                "5", "--output", str(target)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert api.wait_for_in_flight(2, timeout=30)
    assert api.in_flight == 2
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=20)  # far less than the hanging requests
    assert_no_key(stdout, stderr)
    assert (process.returncode, stdout) == (code, b"")
    assert stderr.decode().splitlines() == [
        f"fetch_experiment_results.py: {word} before the first page came; {str(target)!r} is "
        "unchanged"]
    assert target.read_bytes() == b"previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())  # the syscall's number


@pytest.mark.skipif(TGKILL is None or not sys.platform.startswith("linux"),
                    reason="tgkill targets one thread on Linux x86_64 and aarch64 only")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_the_kernel_hands_to_a_worker_thread_still_ends_the_run(api, env, catalog,
                                                                          tmp_path, sig, code):
    # The kernel may deliver a process's signal to any of its threads; tgkill makes it one
    # that waits on a page, not the main thread, whose handler must still run at once.
    api.faults.update({1: {"body_delay": 60}, 2: {"delay": 60}})
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.both_cursors, "--limit",
                                "5"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert api.wait_for_in_flight(2, timeout=30)
    workers = [int(tid) for tid in os.listdir(f"/proc/{process.pid}/task")
               if int(tid) != process.pid]
    assert len(workers) >= 2  # the two page requests (and their deadlines' watchers)
    libc = ctypes.CDLL(None, use_errno=True)
    for worker in workers:  # a watcher blocks it; a page's thread takes it
        assert libc.syscall(TGKILL, process.pid, worker, int(sig)) == 0
    stdout, stderr = process.communicate(timeout=20)  # without the fix: 60 s, a time-out
    assert_no_key(stdout, stderr)
    assert (process.returncode, stdout) == (code, b"")

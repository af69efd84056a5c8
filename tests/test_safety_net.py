"""Behaviours a mutation audit found unguarded (issue 21): each test here kills a small,
plausible bug that the rest of the suite let through (`tests/mutate.py` plants them).

Expected values come from how each experiment was built, never from the script.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zlib

import pytest

from conftest import (SCRIPT, assert_no_key, clean_env, load_script, run_on_a_terminal,
                      run_script)
from benchmark import LAUNCHER
from fake_api import API_KEY, Experiment
from hostile import HostileServer, UUID, page, root_event, serve_by_cursor, serve_pages
from traces import Ids, eval_trace

script = load_script()
PROG = "fetch_experiment_results.py"


def against(server, *args, tmp_path, **settings):
    env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=server.url,
                    BRAINTRUST_NUM_RETRIES="0")
    env.update(settings)
    return run_script(UUID, *args, env=env, cwd=tmp_path, timeout=45)


def record(number, **fields):
    """What root_event(number, ...) gives as a record."""
    return {"root_span_id": f"trace-{number}", "input": f"question {number}",
            "output": f"answer {number}", "expected": None, "metadata": {},
            "scores": {"Exact Match": 1}, "origin": None, **fields}


# -- 1. versions: integers, however long ----------------------------------------------------

OLDER, NEWER = "1000192656880881000", "1000192656880881001"  # one apart; as floats, equal


def test_of_two_adjacent_19_digit_versions_the_newer_wins_when_the_older_comes_first():
    older = root_event(1, _xact_id=OLDER, output="older")
    newer = root_event(1, _xact_id=NEWER, output="newer")
    latest = {}
    script.absorb(latest, [older])
    script.absorb(latest, [newer])
    [case] = script.cases_from(latest)
    assert case["output"] == "newer"


@pytest.mark.parametrize("spill_mb", ["48", "0"], ids=["memory", "disk"])
def test_the_newer_of_two_adjacent_versions_wins_on_a_later_page_in_either_store(
        tmp_path, spill_mb):
    pages = serve_by_cursor({
        None: page([root_event(1, _xact_id=OLDER, output="older")], cursor="c1"),
        "c1": page([root_event(1, _xact_id=NEWER, output="newer")]),
    })
    with HostileServer(pages) as server:
        result = against(server, tmp_path=tmp_path, BRAINTRUST_SPILL_MB=spill_mb)
    assert result.json() == [record(1, output="newer")]


# -- 2. and 3. where paging stops -----------------------------------------------------------

def test_a_cursor_that_comes_back_after_another_one_stops_the_run(tmp_path):
    # A -> B -> A: not the last cursor repeated, an older one; the run must not go round.
    cycle = serve_by_cursor({None: page([root_event(1)], cursor="A"),
                             "A": page([root_event(2)], cursor="B"),
                             "B": page([root_event(3)], cursor="A")})
    with HostileServer(cycle) as server:
        result = against(server, tmp_path=tmp_path)
        assert len(server.requests) == 3
    assert (result.code, result.stdout) == (1, b"")
    assert result.stderr == (
        f"{PROG}: error: page 3: the API sent back a cursor it had already sent, so paging "
        "would never end; stopping. Try again later, or report it to Braintrust\n")


def test_an_empty_page_that_still_carries_a_cursor_ends_paging(tmp_path):
    pages = serve_by_cursor({None: page([root_event(1)], cursor="c1"),
                             "c1": page([], cursor="c2"),
                             "c2": page([root_event(2)])})
    with HostileServer(pages) as server:
        result = against(server, tmp_path=tmp_path)
        assert len(server.requests) == 2
    assert result.json() == [record(1)]


# -- 4. and 5. what is retried, and how long it waits ----------------------------------------

def test_a_408_is_retried(run, api, catalog):
    api.faults[1] = {"status": 408, "headers": {"Retry-After": "0"}}
    result = run(catalog.rich)
    assert result.code == 0
    assert result.stderr.splitlines() == [
        "page 1: the API answered 408; retrying in 0.0 s (attempt 2 of 6)"]
    # Page 1 twice (the 408, then its answer), then the trailing empty page.
    assert [r.body for r in api.requests] == [{"limit": 1000}] * 2 + [api.requests[2].body]
    assert "cursor" in api.requests[2].body


def test_retry_after_is_honoured_on_a_502_too(run, api, catalog):
    # The wait shows in the announcement (the backoff alone would say 0.5 to 1.0 s).
    api.faults[1] = {"status": 502, "headers": {"Retry-After": "2"}}
    result = run(catalog.rich)
    assert result.code == 0
    assert result.stderr.splitlines() == [
        "page 1: the API answered 502; retrying in 2.0 s (attempt 2 of 6)"]


# -- 8. a new --output file -----------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_a_new_output_file_gets_the_mode_the_umask_gives(env, catalog, tmp_path, umask, mode):
    target = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(SCRIPT), catalog.rich, "--output", str(target)],
                          env=env, cwd=tmp_path, capture_output=True, timeout=60,
                          preexec_fn=lambda: os.umask(umask))
    assert_no_key(done.stdout, done.stderr)
    assert done.returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == mode


# -- 9. and 11. the gate counts records, `missing` counts cases -----------------------------

GATE_CURRENT, GATE_BASELINE = ("c1b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                               "c2b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a")


@pytest.fixture(scope="module")
def gate_pair(fake):
    """A run of two cases and its baseline of three: "both" fell on two scores at once,
    "held" did not change, and "gone" (two trials in the baseline) was not run."""
    now, then = Ids(seed=61), Ids(seed=67)
    current = [*eval_trace(now, GATE_CURRENT, input="both", output="b", expected="b",
                           scores={"Exact Match": 0.0, "Accuracy": 0.2}),
               *eval_trace(now, GATE_CURRENT, input="held", output="h", expected="h",
                           scores={"Exact Match": 1.0, "Accuracy": 0.5})]
    baseline = [*eval_trace(then, GATE_BASELINE, input="both", output="b", expected="b",
                            scores={"Exact Match": 1.0, "Accuracy": 0.9}),
                *eval_trace(then, GATE_BASELINE, input="held", output="h", expected="h",
                            scores={"Exact Match": 1.0, "Accuracy": 0.5}),
                *eval_trace(then, GATE_BASELINE, input="gone", output="g", expected="g",
                            scores={"Exact Match": 1.0}),
                *eval_trace(then, GATE_BASELINE, input="gone", output="g", expected="g",
                            scores={"Exact Match": 0.0})]
    fake.add(Experiment(current, name="gate run"), GATE_CURRENT)
    fake.add(Experiment(baseline, name="gate baseline"), GATE_BASELINE)
    return GATE_CURRENT, GATE_BASELINE


def test_the_gate_counts_a_case_that_fell_on_two_scores_as_one_record(run, gate_pair, tmp_path):
    current, baseline = gate_pair
    result = run(current, "--baseline", baseline, "--fail-on-regression", "--allow-missing",
                 "--output", str(tmp_path / "r.json"))
    assert result.code == 3
    assert result.stderr == (f"{PROG}: 1 of 2 records regressed against baseline {baseline} "
                             "(--fail-on-regression)\n")


def test_missing_counts_baseline_cases_not_their_trials(run, gate_pair):
    current, baseline = gate_pair
    summary = run(current, "--baseline", baseline, "--summary").json()
    assert (summary["matched"], summary["new"], summary["missing"]) == (2, 0, 1)


def test_unread_baseline_cases_counts_keys_not_rows():
    cases = [{"origin": None, "input": name, "root_span_id": n, "output": None, "scores": {},
              "error": None} for n, name in enumerate(["gone", "gone", "held"])]
    index = script.index_baseline(cases)
    try:
        assert script.unread_baseline_cases(index, [("input", '"held"')]) == 1
    finally:
        index.close()


# -- 10. --min-drop, give or take float noise ------------------------------------------------

def test_a_fall_equal_to_min_drop_regresses_though_floats_make_it_a_hair_smaller():
    assert 0.5 - 0.45 < 0.05  # the float noise the rule must look past
    case = {"scores": {"Accuracy": 0.45}, "root_span_id": "r", "output": None, "error": None}
    found = script.BaselineCase("b", None, {"Accuracy": 0.5}, {"Accuracy": 1}, 1)
    assert script.comparison(case, found, min_drop=0.05)["status"] == "regressed"
    assert script.comparison(case, found, min_drop=0.06)["status"] == "unchanged"


# -- 12. --quiet on a terminal ----------------------------------------------------------------

def test_quiet_draws_no_progress_on_a_terminal(env, catalog, tmp_path):
    code, (shown, stdout) = run_on_a_terminal([catalog.many, "--limit", "10", "--quiet"], env,
                                              tmp_path)
    assert code == 0 and len(json.loads(stdout)) == 200
    assert shown == b""


def test_without_quiet_the_same_run_draws_progress_on_a_terminal(env, catalog, tmp_path):
    # The other side of the test above: the terminal and the run are such that progress shows.
    code, (shown, _) = run_on_a_terminal([catalog.many, "--limit", "10"], env, tmp_path)
    assert code == 0 and b"200 records from 21 pages in " in shown


# -- found in the audit of issues 20 to 24 ------------------------------------------------------

def test_max_results_with_a_filter_counts_a_trace_seen_again_once(tmp_path):
    # A's scorer comes a page after its root: A is judged again there, and must not count
    # twice, or the run would stop before B, the second match, arrives.
    a_score = {"id": "score-1", "_xact_id": "999", "span_id": "s1", "root_span_id": "trace-1",
               "span_parents": ["trace-1"], "span_attributes": {"type": "score"},
               "scores": {"Exact Match": 1}}
    pages = serve_by_cursor({None: page([root_event(1, tags=["x"])], cursor="p2"),
                             "p2": page([a_score], cursor="p3"),
                             "p3": page([root_event(2, tags=["x"])], cursor="p4"),
                             "p4": page([root_event(3, tags=["x"])])})
    with HostileServer(pages) as server:
        result = against(server, "--tag", "x", "--max-results", "2", tmp_path=tmp_path)
        assert len(server.requests) == 3
    assert [record["root_span_id"] for record in result.json()] == ["trace-1", "trace-2"]


def test_a_gzip_bomb_is_refused_before_it_is_unpacked_in_memory(tmp_path):
    # 200 MB of zeros in about 200 KB: refused past 1 MB, without ever holding the 200 MB
    # (unpacked whole first, the run's peak memory would pass 200 MB).
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(200)) + packer.flush()
    with HostileServer(serve_pages(bomb, **{"Content-Encoding": "gzip"})) as server:
        env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=server.url,
                        BRAINTRUST_NUM_RETRIES="0", BRAINTRUST_MAX_PAGE_MB="1")
        # Through the benchmark's launcher: a child's peak RSS counts the memory of the
        # process that forked it (here, the test run, which may be larger than 150 MB).
        done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, sys.executable,
                               str(SCRIPT), UUID], env=env, cwd=tmp_path,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    stderr, measured = done.stderr.rsplit(b"\nmeasured ", 1)
    code, _, peak_kib = measured.split()
    assert_no_key(done.stdout, stderr)
    assert int(code) == 1
    assert b"larger than BRAINTRUST_MAX_PAGE_MB" in stderr
    assert int(peak_kib) < 150 * 1024  # KiB: far below the 200 MB the bomb holds

"""End to end: the store of newest versions on disk (issue 15). BRAINTRUST_SPILL_MB sets how
many megabytes of pages are handled in memory before the rows move to a temporary SQLite
file; 0 puts them there from the first page, a few kilobytes moves them half-way through."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import experiments
import pytest

from conftest import SCRIPT, assert_no_key, load_script
from test_cli import rich_records

script = load_script()

ON_DISK = "0"
HALF_WAY = "0.004"  # about 4 KB: the rich experiment's first pages, then the disk


def spilled(env, tmp_path, when=ON_DISK):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return dict(env, BRAINTRUST_SPILL_MB=when, TMPDIR=str(scratch))


def root_trace(rows):
    return experiments.root_of(rows)["root_span_id"]


def by_input(records):
    return {record["input"]: record for record in records}


def generator_records(catalog, experiment):
    """The default records an experiment of the catalog must give, from how it was built."""
    if experiment == catalog.rich:
        return rich_records(catalog)
    if experiment == catalog.versions:
        return experiments.versions_records(catalog.versions_cases)
    return [experiments.analysis_record(catalog.analysis_cases, name)
            for name in experiments.ANALYSIS_ORDER]


@pytest.mark.parametrize("when", [ON_DISK, HALF_WAY])
def test_on_disk_the_records_are_exact_in_the_order_the_roots_arrived(run, env, catalog,
                                                                       tmp_path, when):
    result = run(catalog.rich, "--limit", "2", env=spilled(env, tmp_path, when))
    assert result.code == 0, result.stderr
    assert result.json() == rich_records(catalog)


@pytest.mark.parametrize("when", [ON_DISK, HALF_WAY])
def test_on_disk_a_newer_version_from_a_later_page_wins_and_an_older_one_loses(
        run, env, catalog, tmp_path, when):
    # With one trace a page, each edited root's newest version comes pages before the old
    # one; "crossing" moves from 18 to 19 digits, so its versions sort only as numbers.
    for experiment, cases, name, field, want in [
            (catalog.rich, catalog.rich_cases, "edited", "expected", {"answer": "new"}),
            (catalog.rich, catalog.rich_cases, "metadata_edit", "metadata", {"note": "checked"}),
            (catalog.versions, catalog.versions_cases, "crossing", "expected", "new")]:
        records = run(experiment, "--limit", "1", env=spilled(env, tmp_path, when)).json()
        root_input = experiments.root_of(cases[name])["input"]
        assert by_input(records)[root_input][field] == want


@pytest.mark.parametrize("when", [ON_DISK, HALF_WAY])
def test_on_disk_a_score_from_a_later_page_is_merged_into_its_case(run, env, catalog,
                                                                   tmp_path, when):
    records = run(catalog.versions, "--limit", "1", env=spilled(env, tmp_path, when)).json()
    assert by_input(records)["rescored"]["scores"] == {"Accuracy": 1.0}  # re-scored later
    records = run(catalog.rich, "--limit", "1", env=spilled(env, tmp_path, when)).json()
    assert by_input(records)["input of rescored"]["scores"] == {"Exact Match": 1.0,
                                                                 "Accuracy": 0.5}


@pytest.mark.parametrize("when", [ON_DISK, HALF_WAY])
def test_on_disk_a_deleted_row_does_not_come_back(run, env, catalog, tmp_path, when):
    records = run(catalog.rich, "--limit", "1", env=spilled(env, tmp_path, when)).json()
    inputs = by_input(records)
    assert "input of deleted" not in inputs  # its deletion is the newest row of all
    assert inputs["score deleted"]["scores"] == {"Exact Match": 1.0}  # its Accuracy deleted
    assert len(records) == len(experiments.RICH_ORDER)


@pytest.mark.parametrize("args", [["--include", "all"], ["--format", "jsonl"],
                                  ["--format", "csv", "--include", "all"],
                                  ["--summary"], ["--edited-only"], ["--errors-only"],
                                  ["--score", "Exact Match<1", "--max-results", "2"]])
def test_every_output_is_byte_for_byte_the_same_from_disk_as_from_memory(
        run, env, catalog, tmp_path, args):
    # Each flag set on one experiment of three, in turn; the default records on all three.
    chosen = [catalog.rich, catalog.analysis, catalog.versions]
    if args != ["--format", "jsonl"]:
        chosen = [chosen[len(" ".join(args)) % 3]]
    for experiment in chosen:
        in_memory = run(experiment, "--limit", "2", *args)
        on_disk = run(experiment, "--limit", "2", *args, env=spilled(env, tmp_path))
        assert (in_memory.code, on_disk.code) == (0, 0), on_disk.stderr
        assert on_disk.stdout == in_memory.stdout
        if args == ["--format", "jsonl"]:  # and both are what the experiment holds
            assert [json.loads(line) for line in on_disk.stdout.splitlines()] == \
                generator_records(catalog, experiment)


def test_on_disk_metrics_add_up_a_trace_whose_spans_arrive_on_different_pages(
        run, env, catalog, tmp_path):
    records = run(catalog.analysis, "--limit", "1", "--include", "metrics",
                  env=spilled(env, tmp_path)).json()
    assert records == run(catalog.analysis, "--limit", "1000", "--include", "metrics").json()
    assert [record["metrics"] for record in records] == [
        experiments.ANALYSIS_TRUTH[name]["metrics"] for name in experiments.ANALYSIS_ORDER]
    assert any(record["metrics"]["llm_calls"] > 1 for record in records)


@pytest.mark.parametrize("args", [[], ["--summary"], ["--regressions-only", "--format", "csv"]])
def test_on_disk_the_baseline_comparison_is_the_same(run, env, catalog, tmp_path, args):
    in_memory = run(catalog.current, "--baseline", catalog.baseline, "--limit", "2", *args)
    on_disk = run(catalog.current, "--baseline", catalog.baseline, "--limit", "2", *args,
                  env=spilled(env, tmp_path))
    assert (in_memory.code, on_disk.code) == (0, 0), on_disk.stderr
    assert on_disk.stdout == in_memory.stdout
    if args == ["--summary"]:
        assert on_disk.json()["missing"] == experiments.PAIR_MISSING
    if args == []:  # and both are what the two experiments hold
        statuses = {record["root_span_id"]: record["status"] for record in on_disk.json()}
        assert statuses == {
            root_trace(catalog.current_cases[name]): experiments.PAIR_TRUTH[name]["status"]
            for name in experiments.PAIR_ORDER}


def test_csv_from_disk_has_every_score_column_of_the_records(run, env, catalog, tmp_path):
    rows = list(csv.reader(io.StringIO(run(catalog.rich, "--limit", "1", "--format", "csv",
                                           env=spilled(env, tmp_path)).stdout.decode())))
    assert [c for c in rows[0] if c.startswith("scores.")] == ["scores.Accuracy",
                                                               "scores.Exact Match"]
    assert len(rows) == 1 + len(experiments.RICH_ORDER)


# -- the temporary file: in TMPDIR, gone on every exit -------------------------------------

def open_files_in(pid, folder):
    """The files under `folder` that process `pid` holds open (deleted ones included)."""
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            names.append(target)
    return names


def start_held_run(api, env, catalog, tmp_path, *args):
    """A run on disk that hangs on its second page; the store's file, while it runs."""
    api.faults[2] = {"delay": 30}
    env = spilled(env, tmp_path)
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.rich, "--limit", "3",
                                *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    # Page 2 is asked for once page 1 is in the store (no page is asked ahead here).
    assert api.wait_for_fetches(2, timeout=30)
    return process, open_files_in(process.pid, tmp_path / "scratch")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_the_store_lives_in_tmpdir_and_is_gone_after_a_signal(api, env, catalog, tmp_path,
                                                              sig, code, word):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")
    process, held = start_held_run(api, env, catalog, tmp_path, "--output", str(target))
    # Unlinked as soon as it was opened: only the running process still has it.
    assert len(held) == 1 and held[0].endswith(" (deleted)"), held
    assert Path(held[0]).name.startswith("braintrust-fetch-")
    assert list((tmp_path / "scratch").iterdir()) == []
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=20)
    assert_no_key(stdout, stderr)
    assert (process.returncode, stdout) == (code, b"")
    [line] = stderr.decode().splitlines()
    so_far = experiments.live_cases_after(api.experiments[catalog.rich].rows, 3, 1)
    assert line == (f"fetch_experiment_results.py: {word} after 1 page of the experiment "
                    f"({so_far} record{'' if so_far == 1 else 's'} so far); "
                    f"{str(target)!r} is unchanged")
    assert list((tmp_path / "scratch").iterdir()) == []
    assert target.read_bytes() == b"previous results\n"


@pytest.mark.parametrize("fault, code", [(None, 0), ({"status": 403, "body": "no"}, 1)])
def test_the_store_is_gone_after_a_finished_or_failed_run(run, api, env, catalog, tmp_path,
                                                          fault, code):
    if fault:
        api.faults[3] = fault
    result = run(catalog.rich, "--limit", "3", "--baseline", catalog.versions,
                 env=spilled(env, tmp_path))
    assert result.code == code, result.stderr
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_full_disk_under_the_store_exits_1_naming_tmpdir_and_keeps_the_output_file(
        env, catalog, tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")
    env = spilled(env, tmp_path)

    def limit_file_size():  # the kernel refuses writes past 64 KB (EFBIG): no mocking
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([sys.executable, str(SCRIPT), catalog.many, "--limit", "10",
                           "--output", str(target)], env=env, cwd=tmp_path,
                          capture_output=True, timeout=60, preexec_fn=limit_file_size)
    assert_no_key(done.stdout, done.stderr)
    assert (done.returncode, done.stdout) == (1, b"")
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"fetch_experiment_results.py: error: the temporary store in "
                           f"{env['TMPDIR']!r} failed (")
    assert "TMPDIR" in line.split("failed")[1]
    assert target.read_bytes() == b"previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "scratch"]
    assert list((tmp_path / "scratch").iterdir()) == []


# -- the store alone: any order of arrival gives the same cases --------------------------

def stored_cases(pages, spill_after):
    store = script.Store(spill_after, with_costs=True)
    try:
        for page in pages:
            store.add(page, 10_000)
        return sorted(store.cases(), key=lambda case: case["root_span_id"]), store.live
    finally:
        store.close()


@pytest.mark.parametrize("spill_after", [0, 15_000, 10 ** 9])  # on disk, half-way, memory
@pytest.mark.parametrize("order", ["newest first", "oldest first", "shuffled"])
def test_the_cases_do_not_depend_on_the_order_the_rows_arrive_in(spill_after, order):
    rows = experiments.rows_of(experiments.rich("0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"))
    rows = sorted(rows, key=lambda row: int(row["_xact_id"]), reverse=order != "oldest first")
    if order == "shuffled":
        random.Random(4).shuffle(rows)
    pages = [rows[start:start + 7] for start in range(0, len(rows), 7)]
    got, count = stored_cases(pages, spill_after)
    want = sorted((experiments.expected_record(
        experiments.rich("0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"), name)
        for name in experiments.RICH_ORDER), key=lambda record: record["root_span_id"])
    assert [{key: case[key] for key in want[0]} for case in got] == want
    assert count == len(want)

"""End to end: where the output goes and how the run ends (issue 8): --output into
symlinks, FIFOs and devices, failed writes, a reader that goes away, a terminal. (SIGTERM:
test_reliability.py, beside Ctrl-C.)"""
from __future__ import annotations

import json
import re
import os
import resource
import stat
import subprocess
import sys
import threading

import pytest

import experiments
from conftest import SCRIPT, assert_no_key, load_script, run_on_a_terminal

script = load_script()


def rich_records(catalog):
    """The records the rich experiment must give, from how it was built."""
    return [experiments.expected_record(catalog.rich_cases, name)
            for name in experiments.RICH_ORDER]


def files_in(folder):
    return sorted(path.name for path in folder.iterdir())


# -- --output -------------------------------------------------------------------------------

def test_output_through_a_symlink_replaces_its_target_and_the_link_stays(run, catalog,
                                                                          tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "results.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert run(catalog.rich, "--output", str(link)).code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert experiments.is_json_of(target.read_bytes(), rich_records(catalog))
    assert files_in(tmp_path / "data") == ["results.json"]


def test_output_into_a_fifo_is_written_straight_into_it(run, catalog, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run(catalog.rich, "--output", str(fifo))
    reader.join(timeout=30)
    assert result.code == 0, result.stderr
    [data] = received
    assert experiments.is_json_of(data, rich_records(catalog))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and files_in(tmp_path) == ["pipe"]


def test_output_dev_null_is_written_into_and_never_replaced(run, catalog):
    before = os.stat("/dev/null")
    result = run(catalog.rich, "--output", "/dev/null")
    after = os.stat("/dev/null")
    assert (result.code, result.stdout) == (0, b"")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_output_dev_stdout_writes_to_stdout(run, catalog):
    data = run(catalog.rich, "--output", "/dev/stdout").stdout
    assert experiments.is_json_of(data, rich_records(catalog))


def test_output_dash_means_stdout(run, catalog, tmp_path):
    result = run(catalog.rich, "--output", "-")
    assert result.code == 0 and experiments.is_json_of(result.stdout, rich_records(catalog))
    assert files_in(tmp_path) == []


def test_an_empty_output_is_a_usage_error_before_any_request(run, api, catalog):
    result = run(catalog.rich, "--output", "")
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "--output" in result.stderr


def test_a_write_past_the_file_size_limit_names_the_file_and_keeps_the_old_one(env, catalog,
                                                                               tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")

    def limit_file_size():  # real EFBIG from the kernel: no mocking
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, str(SCRIPT), catalog.rich, "--output", str(target)],
                          env=env, cwd=tmp_path, capture_output=True, timeout=60,
                          preexec_fn=limit_file_size)
    assert_no_key(done.stdout, done.stderr)
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode().splitlines() == [
        f"fetch_experiment_results.py: error: could not write {str(target)!r}: File too large"]
    assert target.read_bytes() == b"previous results\n"
    assert files_in(tmp_path) == ["results.json"]


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(b"previous results\n")

    def chunks():
        yield b"[\n"
        raise script.Terminated()

    with pytest.raises(script.Terminated):
        script.write_file(str(target), chunks())
    assert target.read_bytes() == b"previous results\n"
    assert files_in(tmp_path) == ["results.json"]


def test_a_reader_that_goes_away_ends_the_run_quietly_with_exit_0(env, catalog, tmp_path):
    # As `| head -c 10`: the reader closes the pipe, so the write meets EPIPE.
    process = subprocess.Popen([sys.executable, str(SCRIPT), catalog.many], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=30) == 0
    assert stderr == b""


def test_head_in_a_shell_pipeline_gets_its_bytes_and_no_traceback(env, catalog, tmp_path):
    done = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" "{SCRIPT}" {catalog.many} | head -c 10; '
                       'exit "${PIPESTATUS[0]}"'],
        env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"[\n  {\n    ", b"")


# -- a terminal -----------------------------------------------------------------------------

def on_a_terminal(env, tmp_path, *args):
    """Run with stdout and stderr on one pseudo-terminal, as in an interactive shell."""
    code, shown = run_on_a_terminal(args, env, tmp_path, stdout=None)
    return code, shown.replace(b"\r\n", b"\n")


def test_on_a_terminal_the_records_start_on_a_line_of_their_own(env, catalog, tmp_path):
    code, shown = on_a_terminal(env, tmp_path, catalog.rich, "--limit", "10",
                                "--format", "jsonl")
    assert code == 0
    progress, _, records = shown.partition(b"\n")
    assert re.search(rb"\r\x1b\[K24 records from 5 pages in \d+\.\d s$", progress)
    lines = records.decode().split("\n")
    assert lines[-1] == ""  # the output's own last newline, and no blank line after it
    assert [json.loads(line) for line in lines[:-1]] == [
        experiments.expected_record(catalog.rich_cases, name)
        for name in experiments.RICH_ORDER]


def test_progress_counts_read_naturally_in_the_singular(run, catalog):
    result = run(catalog.rich, "--max-results", "1", "--verbose")
    assert re.fullmatch(r"1 record from 1 page in \d+\.\d s", result.stderr.splitlines()[-1])
    # One trace a page: the newest rows first, a deletion and a deleted score, then roots.
    lines = run(catalog.rich, "--limit", "1", "--verbose").stderr.splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        "page 1: 0 records so far", "page 2: 0 records so far", "page 3: 1 record so far"]

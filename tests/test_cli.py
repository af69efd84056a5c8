"""End to end: the script, run as a subprocess, against the loopback fake API.

Each test is one behaviour of the fetch CLI (issue 2), named for it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

import experiments
from conftest import SCRIPT, SKILL, assert_no_key, clean_env, load_script, run_on_a_terminal
from fake_api import API_KEY, page_of

script = load_script()


def rich_records(catalog, names=experiments.RICH_ORDER):
    return [experiments.expected_record(catalog.rich_cases, name) for name in names]


# -- records --------------------------------------------------------------------------------

def test_prints_one_record_per_live_root_in_the_order_the_roots_arrive(run, catalog):
    result = run(catalog.rich)
    assert result.code == 0, result.stderr
    assert result.json() == rich_records(catalog)


def test_record_keys_come_in_the_documented_order(run, catalog):
    records = run(catalog.rich).json()
    assert all(list(record) == ["root_span_id", "input", "output", "expected", "metadata",
                                "scores", "origin"] for record in records)


@pytest.mark.parametrize("limit", ["1", "7"])
def test_page_size_does_not_change_the_records(run, catalog, limit):
    assert run(catalog.rich, "--limit", limit).json() == rich_records(catalog)


def test_an_empty_experiment_gives_an_empty_array(run, catalog):
    result = run(catalog.empty)
    assert (result.code, result.stdout) == (0, b"[]\n")


def test_edited_only_keeps_records_whose_expected_was_edited_in_the_ui(run, catalog):
    records = run(catalog.rich, "--edited-only").json()
    want = [dict(record, edited=True) for record in rich_records(catalog, ["edited_flat",
                                                                          "edited"])]
    assert records == want
    assert all(list(record)[-1] == "edited" for record in records)


def test_max_results_returns_the_first_n_records(run, catalog):
    assert run(catalog.rich, "--max-results", "6").json() == rich_records(catalog)[:6]


def test_max_results_counts_records_after_edited_only(run, catalog):
    records = run(catalog.rich, "--edited-only", "--max-results", "1").json()
    assert [record["expected"] for record in records] == [{"answer": "flat"}]


def test_edited_only_with_max_results_across_pages_returns_the_first_n_edited(run, api,
                                                                            catalog):
    # One trace a page: the edited cases are spread over several pages among others. (Their
    # scorer spans come on pages not read: --max-results' documented price.)
    records = run(catalog.rich, "--edited-only", "--max-results", "2", "--limit", "1").json()
    first_edited = [name for name in experiments.RICH_ORDER if name in experiments.EDITED][:2]
    assert [(r["root_span_id"], r["expected"], r["edited"]) for r in records] == [
        (r["root_span_id"], r["expected"], True) for r in rich_records(catalog, first_edited)]
    # No page after the one that brings the second edited root (nor any ahead of time).
    rows = api.experiments[catalog.rich].rows
    second = experiments.root_of(catalog.rich_cases[first_edited[1]])["root_span_id"]
    assert len(api.fetches()) == experiments.page_where_root_arrives(rows, 1, second)
    assert len(api.fetches()) < non_empty_pages(api, catalog.rich, 1)


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_the_newest_version_wins_by_integer_xact_id_across_pages(run, catalog, limit):
    # Transaction ids go from 18 to 19 digits: as strings, the older versions would win.
    assert run(catalog.versions, "--limit", limit).json() == \
        experiments.versions_records(catalog.versions_cases)


def test_a_scorer_logged_twice_counts_with_its_newer_result_from_an_earlier_page(run, api,
                                                                                  catalog):
    scorer = next(row for row in catalog.versions_cases["rescored"]
                  if row["span_attributes"]["type"] == "score")
    rows, offset, found = api.experiments[catalog.versions].rows, 0, []
    for number in range(len(rows)):  # which page holds each version, at one trace a page
        page, offset = page_of(rows, offset, 1)
        found += [(row["scores"]["Accuracy"], number) for row in page
                  if row["id"] == scorer["id"]]
    (newer, newer_page), (older, older_page) = found
    assert (newer, older) == (1.0, 0.0) and newer_page < older_page
    record = run(catalog.versions, "--limit", "1").json()[-1]
    assert record["input"] == "rescored" and record["scores"] == {"Accuracy": 1.0}


def test_max_results_stops_requesting_once_the_page_completes_n_records(run, api, catalog):
    result = run(catalog.many, "--limit", "10", "--max-results", "5")
    assert len(result.json()) == 5
    assert len(api.fetches()) == 1


def test_max_results_above_the_total_returns_everything(run, catalog):
    assert run(catalog.rich, "--max-results", "500").json() == rich_records(catalog)


# -- paging ---------------------------------------------------------------------------------

def test_pages_are_posted_with_the_limit_then_the_previous_cursor(run, api, catalog):
    run(catalog.rich, "--limit", "5")
    bodies = [request.body for request in api.fetches()]
    assert bodies[0] == {"limit": 5}
    assert all(set(body) == {"limit", "cursor"} and body["limit"] == 5 for body in bodies[1:])
    assert len({body["cursor"] for body in bodies[1:]}) == len(bodies) - 1
    assert any("+" in body["cursor"] and "/" in body["cursor"] for body in bodies[1:])


def test_each_request_carries_the_key_as_a_bearer_token_and_names_the_tool(run, api, catalog):
    run(catalog.rich)
    request = api.fetches()[0]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["user-agent"].startswith(
        f"braintrust-fetch-experiment-results/{script.__version__}")
    assert request.path == f"/v1/experiment/{catalog.rich}/fetch"


def non_empty_pages(api, experiment_id, limit):
    """How many non-empty pages the fake serves for this experiment at this page size."""
    rows, offset, pages = api.experiments[experiment_id].rows, 0, 0
    while offset < len(rows):
        offset = page_of(rows, offset, limit)[1]
        pages += 1
    return pages


def test_paging_stops_at_the_trailing_empty_page(run, api, catalog):
    assert run(catalog.rich, "--limit", "10").code == 0
    assert len(api.fetches()) == non_empty_pages(api, catalog.rich, 10) + 1


def test_paging_stops_when_a_page_comes_without_a_cursor(run, api, catalog):
    result = run(catalog.no_trailing_page, "--limit", "10")
    assert result.json() == rich_records(catalog)
    assert len(api.fetches()) == non_empty_pages(api, catalog.no_trailing_page, 10)


def test_a_cursor_sent_only_as_the_x_bt_cursor_header_is_followed(run, api, catalog):
    result = run(catalog.header_cursor, "--limit", "4")
    assert result.json() == rich_records(catalog)
    assert len(api.fetches()) > 5


def test_one_connection_serves_the_whole_run(run, api, catalog):
    run(catalog.rich, "--limit", "2")
    assert len(api.fetches()) > 10
    assert api.connections == 1


def test_an_uppercase_id_is_sent_in_canonical_form(run, api, catalog):
    assert run(catalog.rich.upper()).code == 0
    assert api.fetches()[0].path == f"/v1/experiment/{catalog.rich}/fetch"


# -- output ---------------------------------------------------------------------------------

def test_json_output_is_an_array_indented_by_two_in_utf8(run, catalog):
    result = run(catalog.rich)
    assert experiments.is_json_of(result.stdout, rich_records(catalog))
    assert "日本語 🚀".encode() in result.stdout


def test_jsonl_output_is_one_compact_record_per_line(run, catalog):
    result = run(catalog.rich, "--format", "jsonl")
    lines = result.stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == rich_records(catalog)
    assert all(line == json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":"))
               for line in lines)


def test_jsonl_of_an_empty_experiment_is_empty(run, catalog):
    assert run(catalog.empty, "--format", "jsonl").stdout == b""


def test_output_writes_the_same_bytes_to_the_file_and_nothing_to_stdout(run, catalog, tmp_path):
    target = tmp_path / "results.json"
    result = run(catalog.rich, "--output", str(target))
    assert (result.code, result.stdout) == (0, b"")
    assert experiments.is_json_of(target.read_bytes(), rich_records(catalog))
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_output_replaces_an_existing_file_when_the_run_succeeds(run, catalog, tmp_path):
    target = tmp_path / "results.jsonl"
    target.write_text("old\n")
    assert run(catalog.rich, "--format", "jsonl", "--output", str(target)).code == 0
    assert len(target.read_text().splitlines()) == len(experiments.RICH_ORDER)


@pytest.mark.parametrize("where", ["missing/results.json"])  # every form, as a unit: test_usage.py
def test_an_output_that_cannot_be_written_is_refused_before_any_request(run, api, catalog,
                                                                        tmp_path, where):
    result = run(catalog.rich, "--output", str(tmp_path / where))
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "--output" in result.stderr


def test_an_output_file_keeps_the_permissions_of_the_file_it_replaces(run, catalog, tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    target.chmod(0o640)
    assert run(catalog.rich, "--output", str(target)).code == 0
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_full_disk_on_stdout_exits_1_with_one_line(env, catalog, tmp_path):
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, str(SCRIPT), catalog.rich], env=env,
                              cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1
    assert_no_key(done.stderr)
    assert done.stderr.decode().splitlines() == [
        "fetch_experiment_results.py: error: No space left on device"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
@pytest.mark.parametrize("fmt, program, want", [("json", "length", "24"),
                                                 ("json", ".[0].origin.dataset_id",
                                                  '"ae0d7731-33af-4012-8e1c-0820b48776dd"'),
                                                 ("jsonl", "-s length", "24")])
def test_jq_reads_the_output(run, catalog, fmt, program, want):
    stdout = run(catalog.rich, "--format", fmt).stdout
    done = subprocess.run(["jq", *program.split()], input=stdout, capture_output=True)
    assert (done.returncode, done.stdout.decode().strip()) == (0, want)


# -- settings -------------------------------------------------------------------------------

def test_the_key_is_read_from_a_dotenv_file_in_a_parent_folder(run, api, catalog, tmp_path):
    (tmp_path / ".env").write_text(f"BRAINTRUST_API_KEY={API_KEY}\nBRAINTRUST_API_URL={api.url}\n")
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    result = run(catalog.rich, env=clean_env(), cwd=folder)
    assert result.code == 0, result.stderr
    assert len(result.json()) == 24


def test_an_exported_key_wins_over_the_dotenv_file(run, env, catalog, tmp_path):
    (tmp_path / ".env").write_text("BRAINTRUST_API_KEY=sk-wrong-key-from-dotenv\n")
    assert run(catalog.rich, env=env).code == 0


def test_an_exported_but_empty_key_counts_as_unset(run, api, catalog, tmp_path):
    (tmp_path / ".env").write_text(f"BRAINTRUST_API_KEY={API_KEY}\n")
    env = clean_env(BRAINTRUST_API_KEY="", BRAINTRUST_API_URL=api.url)
    assert run(catalog.rich, env=env).code == 0


def test_a_missing_key_is_a_usage_error_before_any_request(run, api, catalog):
    result = run(catalog.rich, env=clean_env(BRAINTRUST_API_URL=api.url))
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "BRAINTRUST_API_KEY is not set" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_api_url_flag_wins_over_the_environment(run, api, catalog):
    env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL="http://127.0.0.1:9")
    assert run(catalog.rich, "--api-url", api.url + "/", env=env).code == 0


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000"])
# (every refused form, as a unit: test_records.py::test_refused_api_urls, test_usage.py)
def test_an_api_url_the_key_may_not_travel_to_is_refused_before_any_connection(run, api,
                                                                               catalog, url):
    result = run(catalog.rich, "--api-url", url)
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("experiment_id", ["../../v1/project"])  # every form, as a unit: test_usage.py
def test_an_experiment_that_is_not_an_id_is_a_usage_error(run, api, experiment_id):
    result = run(experiment_id)
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--limit", "ten")])  # every form, as a unit: test_usage.py
def test_a_bad_number_or_format_is_a_usage_error(run, api, catalog, flag, value):
    result = run(catalog.rich, flag, value)
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert len(result.stderr.splitlines()) == 1
    assert flag in result.stderr


def test_a_bad_timeout_setting_is_a_usage_error(run, api, env, catalog):
    result = run(catalog.rich, env=dict(env, BRAINTRUST_HTTP_TIMEOUT="soon"))
    assert (result.code, api.requests) == (2, [])
    assert "BRAINTRUST_HTTP_TIMEOUT" in result.stderr


# -- errors from the API --------------------------------------------------------------------

def test_a_refused_key_exits_1_after_one_request(run, api, catalog):
    env = clean_env(BRAINTRUST_API_KEY="sk-not-a-real-key", BRAINTRUST_API_URL=api.url)
    result = run(catalog.rich, env=env)
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "refused the key" in result.stderr and "401" in result.stderr
    assert "sk-not-a-real-key" not in result.stderr


@pytest.mark.parametrize("status", [400, 404])
def test_an_unknown_experiment_exits_1_after_one_request(run, api, status):
    api.unknown_experiment_status = status
    result = run("9f8e7d6c-5b4a-4321-8fed-cba987654321")
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "9f8e7d6c-5b4a-4321-8fed-cba987654321 was not found" in result.stderr
    assert str(status) in result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- messages -------------------------------------------------------------------------------

def test_a_successful_run_prints_nothing_on_stderr(run, catalog):
    assert run(catalog.rich).stderr == ""


def test_verbose_prints_a_line_per_page(run, api, catalog):
    result = run(catalog.rich, "--limit", "10", "--verbose")
    lines = result.stderr.splitlines()
    assert len(lines) == len(api.fetches()) + 1
    assert lines[0].startswith("page 1: ")
    assert re.fullmatch(rf"24 records from {len(api.fetches())} pages in \d+\.\d s", lines[-1])
    so_far = experiments.live_cases_after(api.experiments[catalog.rich].rows, 10, 1)
    assert re.fullmatch(rf"page 1: {so_far} records so far, \d+\.\d s", lines[0])


def test_an_abbreviated_flag_is_not_taken_for_another(run, api, catalog):
    result = run(catalog.rich, "--max", "3")
    assert (result.code, api.requests) == (2, [])
    assert "--max" in result.stderr


def test_quiet_and_verbose_cannot_be_combined(run, api, catalog):
    assert run(catalog.rich, "--quiet", "--verbose").code == 2


@pytest.mark.parametrize("args", [["--limit", "5", "--include", "all"],
                                  ["--limit", "0"], ["--format", "markdown"]])
def test_the_suites_launch_gives_the_same_bytes_as_the_plain_command(run, env, catalog,
                                                                     tmp_path, args):
    # The suite runs the script through conftest.SCRIPT_COMMAND (its bytecode compiled once);
    # a user runs `python3 SCRIPT`: records, a usage error and a report, the same either way.
    plain = subprocess.run([sys.executable, str(SCRIPT), catalog.analysis, *args], env=env,
                           cwd=tmp_path, capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    launched = run(catalog.analysis, *args)
    assert (launched.code, launched.stdout, launched.stderr) == (
        plain.returncode, plain.stdout, plain.stderr.decode())
    assert plain.stdout or plain.returncode == 2


def test_version_prints_the_version(run):
    result = run("--version")
    assert (result.code, result.stdout.decode().split()) == (0, [
        "fetch_experiment_results.py", script.__version__])


def test_every_flag_in_help_is_documented_in_the_skill_and_the_other_way_round(run):
    help_text = run("--help").stdout.decode()
    skill = "".join(path.read_text() for path in [SKILL / "SKILL.md",
                                                  *(SKILL / "references").glob("*.md")])
    in_help = set(re.findall(r"--[a-z][a-z-]+", help_text))
    in_skill = set(re.findall(r"--[a-z][a-z-]+", skill))
    assert in_help == in_skill


def test_the_script_is_executable_with_a_python_shebang_and_inline_metadata():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert SCRIPT.stat().st_mode & 0o111
    block = re.search(r"^# /// script\n(.*?)^# ///$", text, re.M | re.S).group(1)
    assert 'requires-python = ">=3.9"' in block
    assert re.findall(r'"(requests|python-dotenv)[^"]*"', block) == ["requests", "python-dotenv"]


def test_a_terminal_on_stderr_gets_a_progress_line_and_stdout_only_the_data(env, catalog,
                                                                             tmp_path):
    code, (shown, stdout) = run_on_a_terminal([catalog.rich, "--limit", "10"], env, tmp_path)
    assert code == 0
    assert b"page 1: " in shown and b"24 records from" in shown
    assert len(json.loads(stdout)) == 24


def test_the_version_is_the_same_in_the_script_and_pyproject():
    pyproject = (SCRIPT.parents[4] / "pyproject.toml").read_text()
    assert f'version = "{script.__version__}"' in pyproject


def test_the_script_runs_on_python_3_9():
    # vermin reads the code and names the oldest Python that has everything it uses.
    done = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
                           "-t=3.9-", "--no-tips", "--eval-annotations", "--violations",
                           str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

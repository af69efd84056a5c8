"""What an agent running the skill trips over (issue 24, the items done so far): the key in
a parent's .env behind a nearer one, silence on long runs off a terminal, U+2028 in JSON
lines, and the smaller ones."""
from __future__ import annotations

import json
import re

from conftest import clean_env, run_script
from fake_api import API_KEY
from hostile import HostileServer, UUID, page, root_event, serve_pages

PROG = "fetch_experiment_results.py"


# -- .env: a nearer one without the key does not hide a parent's ----------------------------

def project_under(parent, parent_dotenv, api):
    """A project folder whose .env sets the API URL only, below `parent`, whose .env says
    `parent_dotenv`: what a run from the project finds."""
    (parent / ".env").write_text(parent_dotenv)
    project = parent / "project"
    project.mkdir()
    (project / ".env").write_text(f"BRAINTRUST_API_URL={api.url}\n")  # no key here
    return project


def test_a_nearer_dotenv_without_the_key_does_not_hide_a_parents(run, api, catalog, tmp_path):
    project = project_under(tmp_path, f"BRAINTRUST_API_KEY={API_KEY}\n", api)
    result = run(catalog.rich, env=clean_env(), cwd=project)
    assert result.code == 0, result.stderr
    assert len(result.json()) > 0


def test_a_refused_key_names_the_parent_dotenv_it_came_from(run, api, catalog, tmp_path):
    project = project_under(tmp_path, "BRAINTRUST_API_KEY=sk-wrong-key-from-dotenv\n", api)
    result = run(catalog.rich, env=clean_env(), cwd=project)
    assert result.code == 1
    assert f"BRAINTRUST_API_KEY (read from {tmp_path / '.env'})" in result.stderr


def test_no_key_anywhere_names_the_dotenv_files_read(run, api, catalog, tmp_path):
    project = project_under(tmp_path, "OTHER=1\n", api)
    result = run(catalog.rich, env=clean_env(), cwd=project)
    assert (result.code, api.requests) == (2, [])
    assert f"(read: {project / '.env'}, {tmp_path / '.env'})" in result.stderr


# -- off a terminal, a long run says it is still going ----------------------------------------

def test_off_a_terminal_a_slow_run_prints_a_plain_line_every_few_seconds(run, api, env,
                                                                        catalog):
    api.faults[2] = {"delay": 2.5}  # the second page takes a while: the run is still going
    result = run(catalog.rich, "--limit", "5", env=dict(env, BRAINTRUST_PROGRESS_EVERY="1"))
    assert result.code == 0
    lines = result.stderr.splitlines()
    assert lines and all(re.fullmatch(r"(page \d: \d+ records? so far|writing the output), "
                                      r"\d+ s", line) for line in lines), lines
    assert any(line.startswith("page ") for line in lines)


def test_quiet_keeps_a_slow_run_silent_off_a_terminal(run, api, env, catalog):
    api.faults[2] = {"delay": 2.5}
    result = run(catalog.rich, "--limit", "5", "--quiet",
                 env=dict(env, BRAINTRUST_PROGRESS_EVERY="1"))
    assert (result.code, result.stderr) == (0, "")


# -- U+2028 and U+2029 ----------------------------------------------------------------------

def test_line_and_paragraph_separators_are_escaped_in_json_lines(tmp_path):
    body = page([root_event(1, input="a\u2028b\u2029c"), root_event(2)])
    with HostileServer(serve_pages(body, page([]))) as server:
        env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=server.url)
        result = run_script(UUID, "--format", "jsonl", env=env, cwd=tmp_path)
    text = result.stdout.decode()
    assert "\u2028" not in text and "\u2029" not in text
    assert [json.loads(line)["input"] for line in text.splitlines()] == [
        "a\u2028b\u2029c", "question 2"]


# -- the smaller ones -------------------------------------------------------------------------

def test_a_max_results_beyond_any_count_means_every_record(run, catalog):
    result = run(catalog.rich, "--max-results", "9223372036854775808")
    assert result.code == 0, result.stderr
    assert len(result.json()) == len(run(catalog.rich).json())


def test_a_single_equals_sign_in_score_is_refused_with_the_double_one_suggested(run, api,
                                                                              catalog):
    result = run(catalog.rich, "--score", "Exact Match = 1")
    assert (result.code, api.requests) == (2, [])
    assert "write == to compare for equality, e.g. \"Exact Match==1\"" in result.stderr


def test_a_report_of_no_scores_says_so_rather_than_an_empty_table(run, catalog):
    report = run(catalog.empty, "--format", "markdown").stdout.decode()
    assert "No scores." in report
    assert "| score |" not in report


# -- edits with provenance: --include edits ----------------------------------------------------

def test_include_edits_says_who_changed_expected_from_what_to_what(run, catalog):
    records = run(catalog.rich, "--edited-only", "--include", "edits").json()
    want = []
    for name in ("edited_flat", "edited"):  # the order the roots come in
        entry = catalog.rich_cases[name][-1]["audit_data"][-1]  # the edit, as the UI logged it
        change = entry.get("audit_data", entry)
        user = entry.get("metadata", {}).get("user_id", entry.get("user_id"))
        want.append([{"path": change["path"], "from": change["from"], "to": change["to"],
                      "user_id": user, "source": "app", "xact_id": entry["_xact_id"]}])
    assert [record["edits"] for record in records] == want
    assert all(list(record)[-2:] == ["edits", "edited"] for record in records)


def test_an_api_write_without_from_and_to_is_an_edit_too_and_edits_come_in_order(tmp_path):
    audit = [{"_xact_id": "1", "audit_data": {"action": "upsert"}, "source": "api"},
             {"_xact_id": "2", "audit_data": {"action": "merge", "path": ["expected"]},
              "metadata": {}, "source": "api"},
             {"_xact_id": "3", "audit_data": {"action": "merge", "path": ["expected"],
                                              "from": None, "to": "fruit"},
              "metadata": {"user_id": "a5ca"}, "source": "app"},
             {"_xact_id": "4", "audit_data": {"action": "merge", "path": ["metadata"]},
              "metadata": {}, "source": "app"}]  # not expected: no edit of it
    body = page([root_event(1, audit_data=audit), root_event(2)])
    with HostileServer(serve_pages(body, page([]))) as server:
        env = clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=server.url)
        result = run_script(UUID, "--edited-only", "--include", "edits", env=env, cwd=tmp_path)
    [record] = result.json()
    assert record["edits"] == [
        {"path": ["expected"], "user_id": None, "source": "api", "xact_id": "2"},
        {"path": ["expected"], "from": None, "to": "fruit", "user_id": "a5ca", "source": "app",
         "xact_id": "3"}]


def test_a_case_never_edited_has_no_edits(run, catalog):
    records = run(catalog.rich, "--include", "edits", "--max-results", "8").json()
    assert [r["edits"] == [] for r in records].count(False) == 2  # the two edited, only

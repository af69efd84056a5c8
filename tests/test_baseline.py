"""End to end: comparing a run with its baseline case by case (issue 10). The `candidate`
run and its base experiment `main branch` come from experiments.pair; what each case must
gain is experiments.PAIR_TRUTH, written by hand from how the pair was built."""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from urllib.parse import quote

import pytest

from experiments import PAIR_MISSING, PAIR_ORDER, PAIR_TRUTH, root_of

STANDARD = ["root_span_id", "input", "output", "expected", "metadata", "scores", "origin"]


def comparison(catalog, name, truncate=None):
    """What case `name` of the candidate gains, from the truth."""
    truth = PAIR_TRUTH[name]
    if truth["baseline"] is None:
        return {"baseline": None, "diff": {}, "lost_scores": [], "new_error": False,
                "status": "new"}
    first = root_of(catalog.baseline_cases[truth["first"]])
    output = first["output"]
    if truncate is not None and len(output) > truncate:
        output = f"{output[:truncate]}…[+{len(output) - truncate} chars]"
    return {"baseline": {"root_span_id": first["root_span_id"], "output": output,
                         "scores": truth["baseline"], "count": truth["count"]},
            "diff": truth["diff"], "lost_scores": truth.get("lost", []), "new_error": False,
            "status": truth["status"]}


COMPARED = ["baseline", "diff", "lost_scores", "new_error", "status"]


def names_of(records, catalog):
    by_trace = {root_of(catalog.current_cases[name])["root_span_id"]: name
                for name in PAIR_ORDER}
    return [by_trace[record["root_span_id"]] for record in records]


def fetched(api, experiment_id):
    return [r for r in api.fetches() if r.path == f"/v1/experiment/{experiment_id}/fetch"]


def link(name):
    return f"https://www.braintrust.dev/app/acme/p/evals/experiments/{quote(name)}"


# -- what each record gains ---------------------------------------------------------------

def test_each_record_gains_its_baseline_the_score_diffs_and_a_status(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline).json()
    assert names_of(records, catalog) == PAIR_ORDER
    assert [{key: r[key] for key in COMPARED} for r in records] == [
        comparison(catalog, name) for name in PAIR_ORDER]
    assert all(list(r) == STANDARD + COMPARED for r in records)


def test_diff_names_are_sorted(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline).json()
    regressed = records[PAIR_ORDER.index("regressed")]
    assert list(regressed["diff"]) == ["Accuracy", "Exact Match"]


def test_the_comparison_comes_after_included_fields(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline, "--include", "id").json()
    assert list(records[0]) == STANDARD + ["id", *COMPARED]


def test_truncate_also_shortens_the_baselines_output(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline, "--truncate", "5").json()
    assert [r["baseline"] for r in records] == [
        comparison(catalog, name, truncate=5)["baseline"] for name in PAIR_ORDER]


def test_csv_carries_the_comparison_as_cells(run, catalog):
    stdout = run(catalog.current, "--baseline", catalog.baseline, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(stdout.decode(), newline="")))
    assert [row["status"] for row in rows] == [PAIR_TRUTH[n]["status"] for n in PAIR_ORDER]
    assert [json.loads(row["diff"]) for row in rows] == [PAIR_TRUTH[n]["diff"]
                                                         for n in PAIR_ORDER]
    assert rows[PAIR_ORDER.index("new")]["baseline"] == ""


# -- naming the baseline ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["id", "link", "name", "auto"])
def test_the_baseline_can_be_named_by_id_link_name_or_auto(run, api, catalog, how):
    main = {"name": ["candidate", "--project", "evals", "--org", "acme"],
            "link": [link("candidate")]}.get(how, [catalog.current])
    baseline = {"id": catalog.baseline, "link": link("main branch"), "name": "main branch",
                "auto": "auto"}[how]
    records = run(*main, "--baseline", baseline).json()
    assert [r["status"] for r in records] == [PAIR_TRUTH[n]["status"] for n in PAIR_ORDER]
    assert len(fetched(api, catalog.baseline)) == 2  # every page of it: one, then the empty one


def test_auto_reads_the_base_experiment_of_the_experiment(run, api, catalog):
    assert run(catalog.current, "--baseline", "auto").code == 0
    assert api.requests[0].method == "GET"
    assert api.requests[0].path == f"/v1/experiment/{catalog.current}"


def test_a_baseline_name_is_looked_up_in_the_experiments_project(run, api, catalog):
    assert run("candidate", "--project", "evals", "--org", "acme",
               "--baseline", "main branch").code == 0
    lookups = [r.query for r in api.requests if r.path == "/v1/experiment"]
    assert lookups == [{"project_name": ["evals"], "experiment_name": ["candidate"],
                        "org_name": ["acme"]},
                       {"project_name": ["evals"], "experiment_name": ["main branch"],
                        "org_name": ["acme"]}]


def test_the_baseline_is_read_in_full_even_with_max_results(run, api, catalog):
    result = run(catalog.current, "--baseline", catalog.baseline, "--limit", "2",
                 "--max-results", "1")
    assert [r["status"] for r in result.json()] == [PAIR_TRUTH[PAIR_ORDER[0]]["status"]]
    assert len(fetched(api, catalog.baseline)) == 7  # 12 baseline traces, 2 a page, + empty
    assert len(fetched(api, catalog.current)) == 1


def test_both_experiments_are_read_over_one_keep_alive_session(run, api, env, catalog):
    # One page request at a time: one connection for the lookup and both experiments.
    assert run(catalog.current, "--baseline", "auto", "--limit", "3",
               env=dict(env, BRAINTRUST_MAX_IN_FLIGHT="1")).code == 0
    assert len(api.fetches()) > 6 and api.connections == 1


def test_baseline_pages_are_retried_like_the_others_and_named_in_messages(run, api, catalog):
    api.faults[1] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run(catalog.current, "--baseline", catalog.baseline)
    assert result.code == 0
    assert result.stderr.splitlines() == [
        "baseline page 1: the API answered 503; retrying in 0.0 s (attempt 2 of 6)"]


def test_verbose_progress_says_which_experiment_a_page_belongs_to(run, catalog):
    lines = run(catalog.current, "--baseline", catalog.baseline, "--verbose").stderr.splitlines()
    assert lines[0] == f"baseline: experiment {catalog.baseline}"
    assert lines[1].startswith("baseline page 1: ")
    assert re.fullmatch(r"baseline 11 records from 2 pages in \d+\.\d s", lines[3])
    assert lines[4].startswith("page 1: ")
    assert lines[-1].startswith("11 records from 2 pages")


# -- --regressions-only -------------------------------------------------------------------

def test_regressions_only_keeps_the_regressed_records(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline, "--regressions-only").json()
    assert names_of(records, catalog) == [n for n in PAIR_ORDER
                                          if PAIR_TRUTH[n]["status"] == "regressed"]


def test_regressions_only_combines_with_filters_and_max_results(run, catalog):
    records = run(catalog.current, "--baseline", catalog.baseline, "--regressions-only",
                  "--score", "Accuracy>0.5").json()
    assert names_of(records, catalog) == ["regressed"]
    records = run(catalog.current, "--baseline", catalog.baseline, "--regressions-only",
                  "--max-results", "1").json()
    first = next(n for n in PAIR_ORDER if PAIR_TRUTH[n]["status"] == "regressed")
    assert names_of(records, catalog) == [first] == ["null_score"]


# -- --summary ----------------------------------------------------------------------------

def test_summary_with_a_baseline_counts_matches_and_compares_each_score(run, catalog):
    summary = run(catalog.current, "--baseline", catalog.baseline, "--summary").json()
    truths = {name: PAIR_TRUTH[name] for name in PAIR_ORDER}
    assert (summary["baseline_experiment_id"], summary["matched"], summary["new"],
            summary["missing"]) == (
        catalog.baseline, sum(t["baseline"] is not None for t in truths.values()),
        sum(t["baseline"] is None for t in truths.values()), PAIR_MISSING)
    statuses = [t["status"] for t in truths.values()]
    assert {key: summary[key] for key in ("regressed", "improved", "unchanged", "new_errors")} \
        == {"regressed": statuses.count("regressed"), "improved": statuses.count("improved"),
            "unchanged": statuses.count("unchanged"), "new_errors": 0}
    for score in ("Accuracy", "Exact Match"):
        # The paired figures: over the cases with a number on both sides, and only those.
        pairs = [(t["baseline"][score] + t["diff"][score], t["baseline"][score])
                 for t in truths.values() if score in t["diff"]]
        diffs = [t["diff"][score] for t in truths.values() if score in t["diff"]]
        figures = summary["scores"][score]
        assert {key: figures[key] for key in ("improvements", "regressions", "lost")} == {
            "improvements": sum(d > 1e-9 for d in diffs),
            "regressions": sum(d < -1e-9 for d in diffs),
            "lost": sum(score in t.get("lost", []) for t in truths.values())}
        paired = figures["paired"]
        assert paired["n"] == len(pairs)
        assert paired["mean"] == pytest.approx(statistics.mean(now for now, _ in pairs))
        assert paired["baseline_mean"] == pytest.approx(
            statistics.mean(then for _, then in pairs))
        assert paired["diff_mean"] == pytest.approx(statistics.mean(diffs), abs=1e-12)


def test_missing_counts_every_record_read_not_only_those_the_filters_keep(run, catalog):
    summary = run(catalog.current, "--baseline", catalog.baseline, "--summary",
                  "--regressions-only").json()
    regressed = sum(PAIR_TRUTH[name]["status"] == "regressed" for name in PAIR_ORDER)
    assert (summary["records"], summary["matched"], summary["new"], summary["missing"]) == (
        regressed, regressed, 0, PAIR_MISSING)


def test_a_summary_without_a_baseline_has_no_comparison_keys(run, catalog):
    summary = run(catalog.current, "--summary").json()
    assert "baseline_experiment_id" not in summary
    assert "diff_mean" not in summary["scores"]["Exact Match"]


# -- refused ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [  # every form, as a unit: test_usage.py
    (["--baseline", "main branch"], "pass the baseline's id or link"),
])
def test_a_bad_baseline_is_a_usage_error_before_any_request(run, api, catalog, args, words):
    result = run(catalog.current, *args)
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert words in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_same_experiment_by_name_twice_is_a_usage_error_before_any_request(run, api):
    result = run("candidate", "--project", "evals", "--baseline", "candidate")
    assert (result.code, api.requests) == (2, [])


def test_a_baseline_that_resolves_to_the_experiment_itself_is_a_usage_error(run, api,
                                                                            catalog):
    result = run(catalog.current, "--baseline", link("candidate"))
    assert (result.code, result.stdout) == (2, b"")
    assert "itself" in result.stderr and api.fetches() == []


def test_auto_on_an_experiment_without_a_base_exits_1_saying_how_to_name_one(run, api,
                                                                            catalog):
    result = run(catalog.rich, "--baseline", "auto")
    assert (result.code, result.stdout, api.fetches()) == (1, b"", [])
    [line] = result.stderr.splitlines()
    assert "no base experiment" in line and "--baseline" in line


def test_an_unknown_baseline_exits_1_after_one_fetch(run, api, catalog):
    result = run(catalog.current, "--baseline", "9f8e7d6c-5b4a-4321-8fed-cba987654321")
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "9f8e7d6c-5b4a-4321-8fed-cba987654321 was not found" in result.stderr

"""End to end: records an agent can act on (issue 9): --include, the filters, --truncate,
--format csv and --summary, against the `analysis` experiment. Expected values come from
experiments.ANALYSIS_TRUTH, written by hand from how each case was built."""
from __future__ import annotations

import csv
import io
import json

import pytest

import experiments
from experiments import ANALYSIS_ORDER, ANALYSIS_TRUTH
from fake_api import Experiment
from traces import Ids, eval_trace

STANDARD = ["root_span_id", "input", "output", "expected", "metadata", "scores", "origin"]


def newest_root(catalog, name):
    return max((row for row in catalog.analysis_cases[name] if row.get("is_root")),
               key=lambda row: int(row["_xact_id"]))


def record(catalog, name, *fields):
    """The record of case `name` with the --include `fields`, from the generator's truth."""
    root, truth = newest_root(catalog, name), ANALYSIS_TRUTH[name]
    extra = {"id": root["id"], "span_id": root["span_id"], "created": root["created"],
             "span_errors": experiments.span_errors_of(name), "edits": edits_of(catalog, name),
             **{key: truth[key] for key in ("tags", "error", "comments", "metrics")}}
    return {**experiments.analysis_record(catalog.analysis_cases, name),
            **{field: extra[field] for field in fields}}


def edits_of(catalog, name):
    """The edits of expected the generator logged for case `name` (the edited_* cases)."""
    if name not in ("edited_ok", "edited_error"):  # the two edited_in_ui wrote to
        return []
    entry = newest_root(catalog, name)["audit_data"][-1]  # the edit, as the UI logged it
    change = entry["audit_data"]
    return [{"path": change["path"], "from": change["from"], "to": change["to"],
             "user_id": entry["metadata"]["user_id"], "source": "app",
             "xact_id": entry["_xact_id"]}]


def names_of(records, catalog):
    by_trace = {newest_root(catalog, name)["root_span_id"]: name for name in ANALYSIS_ORDER}
    return [by_trace[r["root_span_id"]] for r in records]


# -- --include ------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["id", "metrics"])  # each value: include all, below
def test_include_adds_one_field_after_origin(run, catalog, field):
    records = run(catalog.analysis, "--include", field).json()
    assert records == [record(catalog, name, field) for name in ANALYSIS_ORDER]
    assert all(list(r) == STANDARD + [field] for r in records)


def test_include_all_adds_every_field_in_the_documented_order(run, catalog):
    records = run(catalog.analysis, "--include", "all").json()
    fields = ["id", "span_id", "created", "tags", "error", "span_errors", "comments", "edits",
              "metrics"]
    assert records == [record(catalog, name, *fields) for name in ANALYSIS_ORDER]
    assert all(list(r) == STANDARD + fields for r in records)


def test_included_fields_come_in_their_own_order_whatever_order_they_were_asked_in(run,
                                                                                   catalog):
    records = run(catalog.analysis, "--include", "metrics,id", "--include", "tags").json()
    assert list(records[0]) == STANDARD + ["id", "tags", "metrics"]


def test_edited_stays_last_after_included_fields(run, catalog):
    records = run(catalog.analysis, "--edited-only", "--include", "error,id").json()
    assert [list(r)[-4:] for r in records] == [["id", "error", "span_errors", "edited"]] * 2
    assert records == [dict(record(catalog, name, "id", "error", "span_errors"), edited=True)
                       for name in ("edited_ok", "edited_error")]


@pytest.mark.parametrize("limit", ["1", "3"])
def test_metrics_add_up_a_trace_whose_spans_arrive_on_different_pages(run, catalog, limit):
    records = run(catalog.analysis, "--include", "metrics", "--limit", limit).json()
    assert [r["metrics"] for r in records] == [ANALYSIS_TRUTH[n]["metrics"]
                                               for n in ANALYSIS_ORDER]


def test_an_unknown_include_field_is_a_usage_error_listing_the_fields(run, api, catalog):
    result = run(catalog.analysis, "--include", "id,cost")
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "'cost'" in result.stderr
    assert "id, span_id, created, tags, error, span_errors, comments, edits, metrics" in \
        result.stderr


# -- filters --------------------------------------------------------------------------------

def test_errors_only_keeps_the_cases_where_any_span_failed(run, catalog):
    # The root (edited_error, empty_error, error_object, failed), a scorer (two_llm) or a
    # tool span (child_error).
    records = run(catalog.analysis, "--errors-only").json()
    assert records == [record(catalog, name) for name in ANALYSIS_ORDER
                       if experiments.failed_in_analysis(name)]
    assert names_of(records, catalog) == ["edited_error", "empty_error", "error_object",
                                          "two_llm", "child_error", "failed"]


def test_include_error_says_which_spans_failed_with_their_name_and_type(run, catalog):
    records = run(catalog.analysis, "--errors-only", "--include", "error").json()
    assert [(r["error"], r["span_errors"]) for r in records] == [
        (ANALYSIS_TRUTH[name]["error"], experiments.span_errors_of(name))
        for name in ANALYSIS_ORDER if experiments.failed_in_analysis(name)]
    assert list(records[0])[-2:] == ["error", "span_errors"]


@pytest.mark.parametrize("expr, op", [
    ("Exact Match<1", lambda v: v < 1), ("Exact Match <= 0.5", lambda v: v <= 0.5),
    ("  Accuracy>=0.5 ", lambda v: v >= 0.5), ("Accuracy>0", lambda v: v > 0),
    ("Exact Match==0.5", lambda v: v == 0.5), ("Accuracy!=0.2", lambda v: v != 0.2)])
def test_score_keeps_the_cases_whose_score_passes_and_a_missing_or_null_one_fails(
        run, catalog, expr, op):
    name = expr.strip().split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
    want = [n for n in ANALYSIS_ORDER
            if ANALYSIS_TRUTH[n]["scores"].get(name) is not None
            and op(ANALYSIS_TRUTH[n]["scores"][name])]
    assert names_of(run(catalog.analysis, "--score", expr).json(), catalog) == want


def test_several_scores_must_all_pass(run, catalog):
    records = run(catalog.analysis, "--score", "Exact Match<1", "--score", "Accuracy<0.5").json()
    assert names_of(records, catalog) == ["partial_metrics", "child_error"]


def test_tag_keeps_the_cases_holding_every_tag_given(run, catalog):
    assert names_of(run(catalog.analysis, "--tag", "smoke").json(), catalog) == [
        "edited_ok", "failed", "ok"]
    assert names_of(run(catalog.analysis, "--tag", "smoke", "--tag", "slow").json(),
                    catalog) == ["failed"]


def test_filters_combine_with_edited_only_as_and(run, catalog):
    records = run(catalog.analysis, "--edited-only", "--errors-only").json()
    assert records == [dict(record(catalog, "edited_error"), edited=True)]


@pytest.mark.parametrize("flags, want", [
    (["--tag", "smoke", "--edited-only"], ["edited_ok"]),
    (["--score", "Exact Match<1", "--edited-only"], ["edited_error"]),
    (["--tag", "smoke", "--max-results", "2"], ["edited_ok", "failed"]),
    (["--score", "Exact Match>=0.5", "--max-results", "2"], ["edited_ok", "deleted_llm"]),
])
def test_tag_and_score_combine_with_edited_only_and_max_results(run, catalog, flags, want):
    assert names_of(run(catalog.analysis, *flags).json(), catalog) == want


def test_max_results_counts_the_records_left_after_the_filters(run, catalog):
    records = run(catalog.analysis, "--errors-only", "--max-results", "2").json()
    assert names_of(records, catalog) == ["edited_error", "empty_error"]


@pytest.mark.parametrize("expr", ["Exact Match"])  # more: test_records.py, test_usage.py
def test_a_malformed_score_is_a_usage_error_showing_the_form(run, api, catalog, expr):
    result = run(catalog.analysis, "--score", expr)
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "NAME OP NUMBER" in result.stderr and len(result.stderr.splitlines()) == 1


# -- --truncate -----------------------------------------------------------------------------

def test_truncate_cuts_longer_strings_and_keeps_ones_of_exactly_n(run, catalog):
    [long_text] = [r for r in run(catalog.analysis, "--truncate", "10").json()
                   if names_of([r], catalog) == ["long_text"]]
    assert long_text == dict(
        record(catalog, "long_text"), input="a" * 10, output="b" * 10 + "…[+1 chars]",
        expected={"text": "c" * 10 + "…[+2 chars]", "n": 12345678901},
        metadata={"note": "d" * 10 + "…[+1 chars]",
                  "a_key_longer_than_ten": ["e" * 10, "f" * 10 + "…[+3 chars]"]})


def test_truncate_reaches_the_error_and_leaves_ids_tags_and_scores(run, catalog):
    records = run(catalog.analysis, "--truncate", "4", "--include", "error,tags,id",
                  "--errors-only").json()
    errors = [r["error"] for r in records]
    assert errors == ["boom", "", {"message": "bad …[+7 chars]", "type": "Valu…[+6 chars]"},
                      None, None, "Time…[+29 chars]"]
    assert [r["span_errors"][0]["error"] for r in records if r["span_errors"]] == [
        "scor…[+10 chars]", "sear…[+9 chars]", "rate…[+8 chars]"]
    assert [r["tags"] for r in records] == [[], [], ["slow"], [], [], ["smoke", "slow"]]
    assert [(r["root_span_id"], r["id"], r["scores"]) for r in records] == [
        (record(catalog, n, "id")["root_span_id"], record(catalog, n, "id")["id"],
         ANALYSIS_TRUTH[n]["scores"])
        for n in ("edited_error", "empty_error", "error_object", "two_llm", "child_error",
                  "failed")]


def test_truncate_needs_a_positive_number(run, api, catalog):
    result = run(catalog.analysis, "--truncate", "0")
    assert (result.code, api.requests) == (2, [])


# -- --format csv ---------------------------------------------------------------------------

def csv_rows(stdout):
    return list(csv.DictReader(io.StringIO(stdout.decode("utf-8"), newline="")))


def test_csv_has_a_header_and_one_row_per_record_cell_by_cell(run, catalog):
    result = run(catalog.analysis, "--format", "csv", "--include", "tags,error")
    rows = csv_rows(result.stdout)
    assert list(rows[0]) == ["root_span_id", "input", "output", "expected", "metadata",
                             "scores.Accuracy", "scores.Exact Match", "origin.dataset_id",
                             "origin.dataset_record_id", "tags", "error", "span_errors"]

    def cell(value):
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"),
                                                                ensure_ascii=False)

    for row, name in zip(rows, ANALYSIS_ORDER, strict=True):
        want = record(catalog, name, "tags", "error", "span_errors")
        assert row == {"root_span_id": want["root_span_id"], "input": cell(want["input"]),
                       "output": cell(want["output"]), "expected": cell(want["expected"]),
                       "metadata": cell(want["metadata"]),
                       "scores.Accuracy": cell(want["scores"].get("Accuracy")),
                       "scores.Exact Match": cell(want["scores"].get("Exact Match")),
                       "origin.dataset_id": want["origin"]["dataset_id"],
                       "origin.dataset_record_id": want["origin"]["dataset_record_id"],
                       "tags": cell(want["tags"]), "error": cell(want["error"]),
                       "span_errors": cell(want["span_errors"])}


def test_csv_cells_are_json_text_for_numbers_and_objects_and_empty_for_null(run, catalog):
    rows = {row["input"]: row for row in csv_rows(
        run(catalog.analysis, "--format", "csv", "--include", "error").stdout)}
    assert rows["input of ok"]["scores.Accuracy"] == "0.9"
    assert rows["input of ok"]["output"] == 'He said "hi", then\nleft'
    assert rows["input of failed"]["output"] == "" and rows["input of failed"]["scores.Accuracy"] == ""
    assert rows["input of two_llm"]["scores.Accuracy"] == ""
    assert rows["aaaaaaaaaa"]["expected"] == '{"text":"cccccccccccc","n":12345678901}'
    assert rows["input of error_object"]["error"] == '{"message":"bad request","type":"ValueError"}'


def test_csv_is_rfc_4180_with_crlf_line_ends_and_quoted_cells(run, catalog):
    stdout = run(catalog.analysis, "--format", "csv", "--max-results", "1").stdout
    assert stdout.count(b"\r\n") == 2 and not stdout.replace(b"\r\n", b"").count(b"\n") > 0
    stdout = run(catalog.analysis, "--format", "csv").stdout
    assert b'"He said ""hi"", then\nleft"' in stdout


@pytest.mark.parametrize("args, header", [
    ((), "root_span_id,input,output,expected,metadata,origin.dataset_id,"
         "origin.dataset_record_id"),
    (("--include", "id,metrics", "--edited-only"),
     "root_span_id,input,output,expected,metadata,origin.dataset_id,"
     "origin.dataset_record_id,id,metrics,edited")])
def test_csv_of_no_records_is_the_header_alone_without_score_columns(run, catalog, args,
                                                                     header):
    result = run(catalog.empty, "--format", "csv", *args)
    assert (result.code, result.stdout) == (0, header.encode() + b"\r\n")


def test_csv_of_records_all_filtered_away_is_the_header_alone(run, catalog):
    result = run(catalog.analysis, "--format", "csv", "--tag", "no such tag")
    assert result.stdout == (b"root_span_id,input,output,expected,metadata,origin.dataset_id,"
                             b"origin.dataset_record_id\r\n")


# -- --summary ------------------------------------------------------------------------------

def to_12_digits(value):
    """Means are given to 12 significant digits (SKILL.md)."""
    return float(f"{value:.12g}")


def summary_of(names, experiment_id):
    """The summary of these cases, computed here from the truth."""
    truths = [ANALYSIS_TRUTH[name] for name in names]
    scores = {}
    for score in sorted({s for t in truths for s, v in t["scores"].items() if v is not None}):
        values = [t["scores"][score] for t in truths if t["scores"].get(score) is not None]
        scores[score] = {"count": len(values), "mean": to_12_digits(sum(values) / len(values)),
                         "min": min(values), "max": max(values)}
    durations = [t["metrics"]["duration"] for t in truths if t["metrics"]["duration"] is not None]
    return {"experiment_id": experiment_id, "records": len(names),
            "errors": sum(experiments.failed_in_analysis(name) for name in names),
            "edited": sum(t["edited"] for t in truths), "scores": scores,
            "metrics": {"duration_mean": (to_12_digits(sum(durations) / len(durations))
                                          if durations else None),
                        **{key: sum(t["metrics"][key] for t in truths)
                           for key in ("llm_calls", "prompt_tokens", "completion_tokens",
                                       "tokens")}}}


def test_summary_describes_every_record(run, catalog):
    result = run(catalog.analysis, "--summary")
    expected = summary_of(ANALYSIS_ORDER, catalog.analysis)
    assert result.json() == expected
    assert result.stdout == (json.dumps(expected, indent=2, ensure_ascii=False) + "\n").encode()


def test_summary_describes_exactly_the_records_the_filters_and_max_results_leave(run, catalog):
    result = run(catalog.analysis, "--summary", "--score", "Exact Match<1",
                 "--max-results", "3")
    assert result.json() == summary_of(["edited_error", "empty_error", "error_object"],
                                       catalog.analysis)


def test_summary_of_no_records_has_zeros_and_nulls(run, catalog):
    assert run(catalog.empty, "--summary").json() == {
        "experiment_id": catalog.empty, "records": 0, "errors": 0, "edited": 0, "scores": {},
        "metrics": {"duration_mean": None, "llm_calls": 0, "prompt_tokens": 0,
                    "completion_tokens": 0, "tokens": 0}}


def test_summary_with_jsonl_is_one_compact_line(run, catalog):
    stdout = run(catalog.analysis, "--summary", "--format", "jsonl").stdout
    assert stdout.count(b"\n") == 1 and json.loads(stdout) == summary_of(ANALYSIS_ORDER,
                                                                         catalog.analysis)
    assert b": " not in stdout


def test_summary_with_csv_is_a_usage_error(run, api, catalog):
    result = run(catalog.analysis, "--summary", "--format", "csv")
    assert (result.code, api.requests) == (2, [])
    assert "--summary" in result.stderr


def test_summary_means_carry_no_float_noise_from_adding_up(run, api, tmp_path):
    # 0.1 + 0.2 + 0.56 + 0.3 is 1.1600000000000001 in floats: the plain mean is
    # 0.29000000000000004; to 12 significant digits it is 0.29.
    ids = Ids(seed=3)
    rows = [row for value in (0.1, 0.2, 0.56, 0.3)
            for row in eval_trace(ids, "c1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a", input=str(value),
                                  output="o", expected="e", scores={"Accuracy": value})]
    api.add(Experiment(rows), "c1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a")
    assert sum([0.1, 0.2, 0.56, 0.3]) / 4 != 0.29
    summary = run("c1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a", "--summary").json()
    assert summary["scores"]["Accuracy"]["mean"] == 0.29


# -- filters that can match nothing say so (issue 17) -------------------------------------

def test_a_score_name_no_record_has_is_said_with_the_names_closest_first(run, catalog):
    result = run(catalog.analysis, "--score", "exact match<1")
    assert (result.code, result.json()) == (0, [])
    assert result.stderr.splitlines() == [
        "fetch_experiment_results.py: note: no record has a score named 'exact match', so "
        "--score matched nothing; the scores (closest first): 'Exact Match', 'Accuracy'"]


def test_a_comma_separated_tag_is_said_to_be_two_tags(run, catalog):
    result = run(catalog.analysis, "--tag", "smoke,slow")
    assert (result.code, result.json()) == (0, [])
    assert result.stderr.splitlines() == [
        "fetch_experiment_results.py: note: no record has the tag 'smoke,slow'; --tag takes "
        "one tag and is repeatable (not comma-separated): --tag 'smoke' --tag 'slow'"]
    both = [name for name in ANALYSIS_ORDER
            if {"smoke", "slow"} <= set(ANALYSIS_TRUTH[name]["tags"])]
    assert len(run(catalog.analysis, "--tag", "smoke", "--tag", "slow").json()) == len(both)


def test_a_tag_no_record_has_is_said_with_the_tags_closest_first(run, catalog):
    result = run(catalog.analysis, "--tag", "smok")
    assert result.stderr.splitlines() == [
        "fetch_experiment_results.py: note: no record has the tag 'smok', so --tag matched "
        "nothing; the tags (closest first): 'smoke', 'slow'"]


def test_a_filter_that_names_known_scores_and_tags_says_nothing(run, catalog):
    assert run(catalog.analysis, "--score", "Accuracy<0", "--tag", "smoke").stderr == ""


@pytest.mark.parametrize("expr", ["Accuracy=<0.5"])  # every form, as a unit: test_usage.py
def test_eq_before_lt_or_gt_is_refused_with_the_right_spelling(run, api, catalog, expr):
    result = run(catalog.analysis, "--score", expr)
    assert (result.code, api.requests) == (2, [])
    assert "write <= or >= (the = comes second)" in result.stderr


def test_the_report_lists_a_case_whose_only_error_is_a_child_spans(run, catalog):
    report = run(catalog.analysis, "--format", "markdown").stdout.decode()
    failed = [name for name in ANALYSIS_ORDER if experiments.failed_in_analysis(name)]
    assert f"**Cases with an error** ({len(failed)}):" in report
    assert r"search\_0 (tool): search failed" in report  # _ escaped, as markdown needs
    assert "Accuracy (score): scorer crashed" in report

"""A comparison people can act on (issue 16): paired statistics in --summary, the CI gate
--fail-on-regression (with --min-drop), the markdown report, and --schema. Expected
statistics are worked out here independently: Pascal's triangle for the sign test, the
statistics module and printed t tables for the intervals; never the script's functions."""
from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
import subprocess
import sys
from fractions import Fraction

import jsonschema
import pytest

import experiments
from conftest import SCRIPT, load_script
from experiments import PAIR_ORDER, PAIR_TRUTH
from fake_api import Experiment
from traces import Ids, eval_trace

script = load_script()

# 97.5th percentiles of Student's t, from printed tables (e.g. NIST/SEMATECH's).
T_TABLE = {1: 12.706204736, 2: 4.302652730, 5: 2.570581836, 9: 2.262157163,
           29: 2.045229642, 99: 1.984216952, 999: 1.962341461}


def sign_test_by_pascal(rises, falls):
    """Two-sided sign test from a row of Pascal's triangle, added up as fractions."""
    n = rises + falls
    row = [1]
    for _ in range(n):
        row = [a + b for a, b in zip([0] + row, row + [0])]
    tail = sum(row[:min(rises, falls) + 1])
    return min(1.0, float(Fraction(2 * tail, 2 ** n)))


# -- the sign test and the t interval, alone ---------------------------------------------------

@pytest.mark.parametrize("rises, falls", [(8, 2), (2, 8), (10, 0), (5, 5), (1, 0), (0, 0),
                                          (20, 3), (60, 41), (3, 120)])
def test_the_sign_test_is_exact(rises, falls):
    assert script.sign_test(rises, falls) == sign_test_by_pascal(rises, falls)


def test_eight_rises_against_two_falls_give_0_109375():
    assert script.sign_test(8, 2) == 0.109375


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_the_t_quantile_matches_the_printed_tables(df):
    assert script.t_quantile_975(df) == pytest.approx(T_TABLE[df], abs=2e-9)


def test_the_t_quantile_tends_to_the_normal_one():
    assert script.t_quantile_975(1_000_000) == pytest.approx(1.959966, abs=1e-6)


def pairs_case(now, then, name="s"):
    change = now - then
    return {"scores": {name: now}, "baseline": {"scores": {name: then}},
            "diff": {name: change}, "lost_scores": [], "new_error": False,
            "status": ("regressed" if change < -1e-9 else "improved" if change > 1e-9
                       else "unchanged"), "error": None, "span_errors": [], "edited": False,
            "metrics": {"duration": None, "llm_calls": 0, "prompt_tokens": 0,
                        "completion_tokens": 0, "tokens": 0}}


def paired_of(cases):
    return script.summarise(cases, "e", ("b", lambda: 0))["scores"]["s"]["paired"]


def generated(seed, n, shift, noise=0.2):
    rng = random.Random(seed)
    then = [rng.random() for _ in range(n)]
    return then, [b + shift + rng.gauss(0, noise) for b in then]


def test_the_interval_is_the_t_interval_of_the_mean_difference():
    then, now = generated(seed=3, n=30, shift=0.1)
    got = paired_of([pairs_case(a, b) for a, b in zip(now, then)])
    diffs = [a - b for a, b in zip(now, then)]
    half = T_TABLE[29] * statistics.stdev(diffs) / math.sqrt(30)
    assert got["n"] == 30
    assert got["mean"] == pytest.approx(statistics.mean(now), abs=1e-12)
    assert got["baseline_mean"] == pytest.approx(statistics.mean(then), abs=1e-12)
    assert got["diff_mean"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert got["ci95"] == pytest.approx([statistics.mean(diffs) - half,
                                         statistics.mean(diffs) + half], abs=1e-9)


def test_the_interval_holds_the_true_difference_about_95_times_in_100():
    held = 0
    for seed in range(400):
        then, now = generated(seed, n=25, shift=0.05)
        low, high = paired_of([pairs_case(a, b) for a, b in zip(now, then)])["ci95"]
        held += low <= 0.05 <= high
    assert 0.92 * 400 <= held <= 0.98 * 400


def test_a_clear_shift_gives_an_interval_without_0_and_a_small_p_value():
    then, now = generated(seed=5, n=100, shift=0.2, noise=0.1)
    got = paired_of([pairs_case(a, b) for a, b in zip(now, then)])
    assert 0 < got["ci95"][0] < 0.2 < got["ci95"][1]
    rises = sum(a - b > 1e-9 for a, b in zip(now, then))
    assert got["p_value"] == sign_test_by_pascal(rises, 100 - rises) < 1e-6


def test_no_change_gives_an_interval_around_0_and_p_1():
    got = paired_of([pairs_case(0.5, 0.5) for _ in range(5)])
    assert (got["ci95"], got["p_value"]) == ([0.0, 0.0], 1.0)


def test_no_pair_gives_nulls():
    # The score shows on the run's side only.
    cases = [dict(pairs_case(1.0, 0.0), baseline=None, diff={}, status="new")]
    assert paired_of(cases) == {"n": 0, "mean": None, "baseline_mean": None,
                                "diff_mean": None, "ci95": None, "p_value": None}


def test_one_pair_gives_its_means_and_no_interval_or_p_value():
    assert paired_of([pairs_case(1.0, 0.25)]) == {"n": 1, "mean": 1.0, "baseline_mean": 0.25,
                                                  "diff_mean": 0.75, "ci95": None,
                                                  "p_value": None}


# -- in --summary, end to end ----------------------------------------------------------------

def truth_pairs(score):
    """(now, then) of each case of the pair with this score on both sides, from the truth."""
    return [(PAIR_TRUTH[name]["baseline"][score] + PAIR_TRUTH[name]["diff"][score],
             PAIR_TRUTH[name]["baseline"][score])
            for name in PAIR_ORDER if score in PAIR_TRUTH[name]["diff"]]


@pytest.mark.parametrize("score", ["Exact Match", "Accuracy"])
def test_summary_with_a_baseline_gives_paired_statistics_per_score(run, catalog, score):
    got = run(catalog.current, "--baseline", catalog.baseline,
              "--summary").json()["scores"][score]["paired"]
    pairs = truth_pairs(score)
    diffs = [now - then for now, then in pairs]
    half = T_TABLE[len(pairs) - 1] * statistics.stdev(diffs) / math.sqrt(len(pairs))
    rises, falls = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
    assert got["n"] == len(pairs)
    assert got["mean"] == pytest.approx(statistics.mean(now for now, _ in pairs))
    assert got["baseline_mean"] == pytest.approx(statistics.mean(then for _, then in pairs))
    assert got["ci95"] == pytest.approx([statistics.mean(diffs) - half,
                                         statistics.mean(diffs) + half], abs=1e-9)
    assert got["p_value"] == sign_test_by_pascal(rises, falls)


# -- the gate -------------------------------------------------------------------------------

def gate(run, catalog, tmp_path, *args):
    target = tmp_path / "gate.json"
    result = run(catalog.current, "--baseline", catalog.baseline, "--output", str(target),
                 *args)
    return result, target


def fell_names(min_drop=0.0, score=None):
    """The cases of the pair where a score (or `score`) fell by min_drop or more."""
    return sorted(name for name in PAIR_ORDER
                  if any(d < -1e-9 and -d >= min_drop - 1e-9
                         for s, d in PAIR_TRUTH[name]["diff"].items() if score in (None, s)))


def regressed_names(min_drop=0.0):
    """Those, and the cases that lost a score (whatever --min-drop says)."""
    return sorted({*fell_names(min_drop), *(name for name in PAIR_ORDER
                                            if PAIR_TRUTH[name].get("lost"))})


def missing_line(catalog):
    record_id = experiments.root_of(catalog.baseline_cases["missing#0"])["origin"]["id"]
    return (f"1 baseline case missing from the run (e.g. dataset record {record_id}; "
            "--allow-missing accepts a run on a subset)")


def test_a_regression_exits_3_after_writing_the_output(run, catalog, tmp_path):
    result, target = gate(run, catalog, tmp_path, "--fail-on-regression")
    assert result.code == 3
    assert len(json.loads(target.read_bytes())) == len(PAIR_ORDER)
    assert result.stderr.splitlines() == [
        f"fetch_experiment_results.py: {len(regressed_names())} of {len(PAIR_ORDER)} records "
        f"regressed against baseline {catalog.baseline} (--fail-on-regression); "
        + missing_line(catalog)]


def test_no_regression_on_the_gated_score_exits_0_after_writing_the_output(run, catalog,
                                                                          tmp_path):
    # Of the cases scored on Accuracy, none fell or lost it: the others' falls do not count.
    result, target = gate(run, catalog, tmp_path, "--fail-on-regression", "Accuracy",
                          "--score", "Accuracy>=0", "--allow-missing")
    assert (result.code, result.stderr) == (0, "")
    assert len(json.loads(target.read_bytes())) == sum(
        "Accuracy" in PAIR_TRUTH[name]["diff"] or name == "one_side_score"
        for name in PAIR_ORDER)


def test_a_lost_gated_score_fails_the_gate(run, catalog, tmp_path):
    # disjoint_scores has Accuracy in its baseline, and none now.
    result, _ = gate(run, catalog, tmp_path, "--fail-on-regression", "Accuracy",
                     "--allow-missing")
    assert result.code == 3
    assert result.stderr == (f"fetch_experiment_results.py: 1 of {len(PAIR_ORDER)} records "
                             f"regressed on 'Accuracy' against baseline {catalog.baseline} "
                             "(--fail-on-regression)\n")


def test_the_gate_is_repeatable_and_fails_on_any_score_named(run, catalog, tmp_path):
    result, _ = gate(run, catalog, tmp_path, "--fail-on-regression", "Accuracy",
                     "--fail-on-regression", "Exact Match")
    assert result.code == 3 and "on 'Accuracy', 'Exact Match'" in result.stderr


def test_the_gate_judges_the_records_the_filters_leave(run, catalog, tmp_path):
    result, target = gate(run, catalog, tmp_path, "--fail-on-regression", "--score",
                          "Exact Match>=1", "--allow-missing")
    assert result.code == 0
    assert all(r["status"] != "regressed" for r in json.loads(target.read_bytes()))


def test_a_gated_score_that_no_case_has_exits_2_after_writing_the_output(run, catalog,
                                                                         tmp_path):
    result, target = gate(run, catalog, tmp_path, "--fail-on-regression", "accuracy")
    assert result.code == 2 and target.exists()
    assert "no record or baseline case has the score 'accuracy'" in result.stderr
    assert "'Accuracy', 'Exact Match'" in result.stderr


@pytest.mark.parametrize("drop", ["0.5", "0.6", "1.5"])
def test_min_drop_sets_what_counts_as_a_regression_in_status_summary_and_gate(
        run, catalog, tmp_path, drop):
    records = run(catalog.current, "--baseline", catalog.baseline, "--min-drop", drop).json()
    by_trace = {experiments.root_of(catalog.current_cases[n])["root_span_id"]: n
                for n in PAIR_ORDER}
    assert sorted(by_trace[r["root_span_id"]] for r in records
                  if r["status"] == "regressed") == regressed_names(float(drop))
    summary = run(catalog.current, "--baseline", catalog.baseline, "--min-drop", drop,
                  "--summary").json()
    assert summary["scores"]["Exact Match"]["regressions"] == len(
        fell_names(float(drop), "Exact Match"))
    result, _ = gate(run, catalog, tmp_path, "--fail-on-regression", "Exact Match",
                     "--min-drop", drop, "--allow-missing")
    lost = [name for name in PAIR_ORDER if "Exact Match" in PAIR_TRUTH[name].get("lost", [])]
    assert lost == ["null_score"]  # a lost score fails the gate whatever --min-drop says
    assert result.code == 3


@pytest.mark.parametrize("args", [["--fail-on-regression"]])  # every form, as a unit: test_usage.py
def test_the_gate_and_min_drop_need_a_baseline(run, api, catalog, args):
    result = run(catalog.current, *args)
    assert (result.code, api.requests) == (2, [])
    assert f"{args[0]} needs --baseline" in result.stderr


@pytest.mark.parametrize("value", ["much"])  # every form, as a unit: test_usage.py
def test_a_bad_min_drop_is_a_usage_error(run, api, catalog, value):
    result = run(catalog.current, "--baseline", catalog.baseline, "--min-drop", value)
    assert (result.code, api.requests) == (2, []) and "--min-drop" in result.stderr


# -- the markdown report --------------------------------------------------------------------

HOSTILE = "a | b\nc `code` *bold* <b>x</b> [link](y) \\ end\r\n| last"
HOSTILE_ID = "a1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a"
HOSTILE_BASELINE_ID = "a2c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a"
HOSTILE_CASES = 25  # regressed: more than the report lists
# Names with markdown's and URLs' special characters; each with what the report must show:
# escaped as text, percent-encoded in a link.
HOSTILE_NAMES = {HOSTILE_ID: "run | 1 [a](b)", HOSTILE_BASELINE_ID: "base *2*"}
HOSTILE_PROJECT, HOSTILE_ORG = "p (x) <y>", "acme/eu labs"
HOSTILE_TEXT = {HOSTILE_ID: r"run \| 1 \[a\](b)", HOSTILE_BASELINE_ID: r"base \*2\*"}
APP = "https://app.example.test/bt"  # a self-hosted web app, under a path
HOSTILE_LINK = {
    HOSTILE_ID: f"{APP}/app/acme%2Feu%20labs/p/p%20%28x%29%20%3Cy%3E/experiments/"
                "run%20%7C%201%20%5Ba%5D%28b%29",
    HOSTILE_BASELINE_ID: f"{APP}/app/acme%2Feu%20labs/p/p%20%28x%29%20%3Cy%3E/experiments/"
                         "base%20%2A2%2A"}


def linked(experiment_id):
    return f"[{HOSTILE_TEXT[experiment_id]}]({HOSTILE_LINK[experiment_id]}) (`{experiment_id}`)"


@pytest.fixture
def hostile(api):
    """A run whose inputs, errors and score names hold pipes, newlines and backticks, each
    case worse than in its baseline."""
    runs = {}
    for experiment_id, score in ((HOSTILE_ID, 0.0), (HOSTILE_BASELINE_ID, 1.0)):
        ids = Ids(seed=5)
        rows = []
        for n in range(HOSTILE_CASES):
            case = eval_trace(ids, experiment_id, input=f"{HOSTILE} {n}", output="o",
                              expected="e", scores={"Pipe | score`": score})
            root = next(r for r in case if r["is_root"])
            root["error"] = HOSTILE if n % 2 else None
            rows += case
        runs[experiment_id] = rows
        api.add(Experiment(rows, name=HOSTILE_NAMES[experiment_id], project=HOSTILE_PROJECT,
                           org=HOSTILE_ORG), experiment_id)
    return runs


def table_rows(report):
    """Each markdown table in the report: its lines, split into cells on unescaped pipes."""
    tables, current = [], []
    for line in report.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return [[re.split(r"(?<!\\)\|", line)[1:-1] for line in lines] for lines in tables]


def assert_well_formed(tables):
    for rows in tables:
        widths = {len(row) for row in rows}
        assert len(widths) == 1, rows
        assert all(re.fullmatch(r" ?-{3,}:? ?", cell) for cell in rows[1])


def test_the_report_with_a_baseline_is_well_formed_tables_with_hostile_strings(
        run, env, hostile):
    result = run(HOSTILE_ID, "--baseline", HOSTILE_BASELINE_ID, "--format", "markdown",
                 env={**env, "BRAINTRUST_APP_URL": APP + "/"})
    assert (result.code, result.stderr) == (0, "")
    report = result.stdout.decode()
    lines = report.splitlines()
    assert lines[0] == (f"**Experiment** {linked(HOSTILE_ID)} vs **baseline** "
                        f"{linked(HOSTILE_BASELINE_ID)}"
                        f": {HOSTILE_CASES} records, {HOSTILE_CASES // 2} errors; "
                        f"{HOSTILE_CASES} matched, 0 new, 0 missing; {HOSTILE_CASES} regressed, "
                        "0 improved, 0 unchanged")
    scores, cases = table_rows(report)
    assert_well_formed([scores, cases])
    assert [cell.strip() for cell in scores[0]] == [
        "score", "pairs", "paired mean", "baseline", "diff", "95% CI", "p (sign test)", "fell",
        "lost", "rose"]
    assert [cell.strip() for cell in scores[2]] == [
        r"Pipe \| score\`", str(HOSTILE_CASES), "0", "1", "-1", "[-1, -1]",
        f"{sign_test_by_pascal(0, HOSTILE_CASES):.4g}", str(HOSTILE_CASES), "0", "0"]
    assert len(cases) == 2 + 20
    assert lines[-1] == f"…and {HOSTILE_CASES - 20} more."
    assert "\x1b" not in report and "<b>" not in report


def test_a_hostile_input_shows_escaped_cut_and_on_one_line(run, hostile):
    report = run(HOSTILE_ID, "--baseline", HOSTILE_BASELINE_ID, "--format", "markdown",
                 "--truncate", "14").stdout.decode()
    row = table_rows(report)[1][2]
    assert row[1].strip() == r"a \| b<br>c \`code\`…\[+{} chars\]".format(
        len(HOSTILE) + len(" 24") - 14)
    assert row[2].strip() == r"Pipe \| score\` 1 → 0"


def test_the_report_without_a_baseline_lists_the_errored_cases(run, hostile):
    report = run(HOSTILE_ID, "--format", "markdown").stdout.decode()
    tables = table_rows(report)
    assert_well_formed(tables)
    # No link: the API is not the default one, and BRAINTRUST_APP_URL does not say the app's.
    assert report.splitlines()[0] == (
        f"**Experiment** {HOSTILE_TEXT[HOSTILE_ID]} (`{HOSTILE_ID}`): {HOSTILE_CASES} records,"
        f" {HOSTILE_CASES // 2} errors")
    assert [cell.strip() for cell in tables[0][2]] == [r"Pipe \| score\`", "25", "0", "0", "0"]
    assert len(tables[1]) == 2 + HOSTILE_CASES // 2
    assert all(row[2].strip().startswith(r"a \| b<br>c \`code\`") for row in tables[1][2:])


@pytest.mark.parametrize("refused, shown", [
    (3, f"{HOSTILE_TEXT[HOSTILE_ID]} (`{HOSTILE_ID}`)"),  # the organisation: no link
    (1, f"`{HOSTILE_ID}`")])  # the experiment: the id alone
def test_a_name_that_cannot_be_read_leaves_the_report_whole_with_a_note(
        run, api, env, hostile, refused, shown):
    api.faults[refused] = {"status": 403, "body": '{"error": "no read access"}',
                           "content_type": "application/json"}
    result = run(HOSTILE_ID, "--format", "markdown",
                 env={**env, "BRAINTRUST_APP_URL": APP})
    assert result.code == 0
    assert result.stdout.decode().splitlines()[0].startswith(f"**Experiment** {shown}: ")
    kind = {1: "experiment", 3: "organization"}[refused]
    assert re.search(rf"note: reading the name of {kind} [0-9a-f-]{{36}}: the key is valid "
                     r"but may not read this \(403 .*no read access", result.stderr)
    assert result.stderr.rstrip().endswith(
        "the names read, without a link" if refused == 3 else "the id alone")
    assert [r.path.split("/")[2] for r in api.requests[:refused]] == [
        "experiment", "project", "organization"][:refused]


def test_a_parent_id_that_is_no_uuid_is_never_put_in_a_path(run, api, env, hostile):
    api.experiments[HOSTILE_ID].project_id = "../../v1/dataset/x"
    result = run(HOSTILE_ID, "--format", "markdown", env={**env, "BRAINTRUST_APP_URL": APP})
    assert result.code == 0
    assert result.stdout.decode().startswith(
        f"**Experiment** {HOSTILE_TEXT[HOSTILE_ID]} (`{HOSTILE_ID}`): ")
    assert "the API gave an id that is not a UUID" in result.stderr
    assert [r.path for r in api.requests if "/fetch" not in r.path] == [
        f"/v1/experiment/{HOSTILE_ID}"]


def test_a_report_of_no_listed_cases_says_none(run, catalog):
    report = run(catalog.rich, "--format", "markdown").stdout.decode()
    assert "**Cases with an error** (0): none" in report
    assert len(table_rows(report)) == 1


@pytest.mark.parametrize("args", [["--summary"]])  # every form, as a unit: test_usage.py
def test_markdown_goes_with_neither_summary_nor_schema(run, api, catalog, args):
    result = run(catalog.rich, "--format", "markdown", *args)
    assert (result.code, api.requests) == (2, [])


# -- --schema -------------------------------------------------------------------------------

SCHEMA_EDITS = "b1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a"  # the rich cases run again: a baseline


def schema_of(*flags):
    done = subprocess.run([sys.executable, str(SCRIPT), "--schema", *flags],
                          capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                          stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stderr) == (0, b"")
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def script_schema(*flags):
    """The schema --schema prints for these flags, from the script's own function (printed
    end to end by the tests around this one), checked as a schema."""
    schema = json.loads(script.schema_of(script.parse_args(["--schema", *flags])))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_schema_needs_no_key_no_experiment_and_no_network():
    schema = schema_of()  # env without any BRAINTRUST_ variable; no fake asked
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["root_span_id", "input", "output", "expected", "metadata",
                                  "scores", "origin"]


@pytest.mark.parametrize("include, baseline, edited, summary",
                         list(itertools.product([False, True], repeat=4)))
def test_every_record_printed_validates_against_its_schema(run, api, catalog, include,
                                                           baseline, edited, summary):
    api.add(Experiment(experiments.rows_of(experiments.rich(SCHEMA_EDITS))), SCHEMA_EDITS)
    flags = ([*(["--include", "all"] if include else []),
              *(["--baseline", SCHEMA_EDITS] if baseline else []),
              *(["--edited-only"] if edited else []), *(["--summary"] if summary else [])])
    validator = jsonschema.Draft202012Validator(script_schema(*flags))
    # Each format on half the combinations (a jsonl line holds what a json item holds).
    output_format = ("json", "jsonl")[(include + baseline + edited + summary) % 2]
    result = run(catalog.rich, "--format", output_format, *flags)
    assert result.code == 0, result.stderr
    if output_format == "jsonl":
        printed = [json.loads(line) for line in result.stdout.splitlines()]
    else:
        printed = [result.json()] if summary else result.json()
    assert printed, "nothing to validate"
    for item in printed:
        validator.validate(item)


def test_a_record_with_a_field_the_schema_does_not_name_fails_it(run, catalog):
    record = run(catalog.rich, "--include", "all").json()[0]
    schema = schema_of()  # without --include: the extra fields are not allowed
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, schema, cls=jsonschema.Draft202012Validator)

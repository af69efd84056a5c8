"""A gate that fails closed and knows noise (issue 22): crashed, unscored and missing cases
regress; --gate cases|mean|significant; one vocabulary for the summary's figures; JUnit.

Every experiment here is built in the test from `traces.eval_trace`, and every expected
figure comes from how it was built (statistics from the standard library), never from the
script.
"""
from __future__ import annotations

import json
import math
import statistics
import xml.etree.ElementTree as ElementTree

import pytest
from jsonschema import Draft202012Validator

from fake_api import Experiment
from test_comparison import T_TABLE
from traces import Ids, eval_trace, root_of

PROG = "fetch_experiment_results.py"


def build(fake, experiment_id, cases, seed):
    """An experiment of `cases`: (input, scores, error) each; its rows by input."""
    ids, rows, by_input = Ids(seed=seed), [], {}
    for input, scores, error in cases:
        trace = eval_trace(ids, experiment_id, input=input, output=f"out {input}",
                           expected=f"exp {input}", scores=scores)
        root_of(trace)["error"] = error
        rows += trace
        by_input[input] = trace
    fake.add(Experiment(rows, name=experiment_id[:8]), experiment_id)
    return by_input


# -- a case worse in kind regresses ---------------------------------------------------------

CRASH_RUN, CRASH_BASE = ("d1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                         "d2c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a")
SUBSET_RUN = "d3c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a"
LONG_ID_RUN, LONG_ID_BASE = ("d4c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                             "d5c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a")
CRASHED = ["q1", "q2", "q3"]  # raised an error; their scorers never ran


@pytest.fixture(scope="module")
def crash(fake):
    """A baseline of five cases, all Exact Match 1.0; a run where three crashed unscored,
    one lost its score to a null, one held; and a run of one case of the five."""
    build(fake, CRASH_BASE, [(f"q{n}", {"Exact Match": 1.0}, None) for n in range(5)], 71)
    run = build(fake, CRASH_RUN, [("q0", {"Exact Match": 1.0}, None),
                                  *((name, {}, "Traceback: boom") for name in CRASHED),
                                  ("q4", {"Exact Match": None}, None)], 73)
    build(fake, SUBSET_RUN, [("q0", {"Exact Match": 1.0}, None)], 79)
    return run


def gated(run, experiment, baseline, tmp_path, *args):
    target = tmp_path / "out"
    result = run(experiment, "--baseline", baseline, "--fail-on-regression",
                 "--output", str(target), *args)
    return result, target


def test_crashed_cases_fail_the_gate_after_the_whole_output_is_written(run, crash, tmp_path):
    result, target = gated(run, CRASH_RUN, CRASH_BASE, tmp_path)
    assert result.code == 3
    records = json.loads(target.read_bytes())
    assert len(records) == 5
    assert result.stderr == (f"{PROG}: 4 of 5 records regressed against baseline {CRASH_BASE} "
                             "(--fail-on-regression)\n")


def test_a_crashed_case_says_why_in_its_record_without_include(run, crash):
    records = run(CRASH_RUN, "--baseline", CRASH_BASE).json()
    by_input = {record["input"]: record for record in records}
    for name in CRASHED:
        assert {key: by_input[name][key] for key in ("diff", "lost_scores", "new_error",
                                                     "status")} == {
            "diff": {}, "lost_scores": ["Exact Match"], "new_error": True,
            "status": "regressed"}
    assert "error" not in by_input["q1"]  # the error itself is --include error's


def test_a_score_gone_from_a_number_to_null_is_lost_and_fails_the_gate(run, crash, tmp_path):
    records = run(CRASH_RUN, "--baseline", CRASH_BASE).json()
    [q4] = [record for record in records if record["input"] == "q4"]
    assert (q4["lost_scores"], q4["new_error"], q4["status"]) == (["Exact Match"], False,
                                                                 "regressed")
    result, _ = gated(run, CRASH_RUN, CRASH_BASE, tmp_path, "--regressions-only",
                      "--score", "Exact Match>=0")  # none left: q4's score is no number
    assert result.code == 0


def test_the_summary_and_the_report_count_crashed_cases_as_regressed(run, crash):
    summary = run(CRASH_RUN, "--baseline", CRASH_BASE, "--summary").json()
    assert {key: summary[key] for key in ("records", "regressed", "unchanged", "new_errors",
                                          "missing")} == {
        "records": 5, "regressed": 4, "unchanged": 1, "new_errors": 3, "missing": 0}
    assert summary["scores"]["Exact Match"]["lost"] == 4
    report = run(CRASH_RUN, "--baseline", CRASH_BASE, "--format", "markdown").stdout.decode()
    assert "; 4 regressed, 0 improved, 1 unchanged" in report.splitlines()[0]
    assert report.count("Exact Match 1 → none (lost); an error, where the baseline had none") \
        == 3


def test_a_run_of_a_subset_fails_the_gate_naming_the_missing_cases(run, crash, tmp_path):
    result, target = gated(run, SUBSET_RUN, CRASH_BASE, tmp_path)
    assert result.code == 3 and len(json.loads(target.read_bytes())) == 1
    # The first three in the order the baseline's cases arrive: newest first.
    assert result.stderr == (
        f"{PROG}: 4 baseline cases missing from the run (e.g. input \"q4\"; input \"q3\"; "
        f"input \"q2\"; --allow-missing accepts a run on a subset) against baseline "
        f"{CRASH_BASE} (--fail-on-regression)\n")


def test_allow_missing_accepts_a_run_on_a_subset(run, crash, tmp_path):
    result, _ = gated(run, SUBSET_RUN, CRASH_BASE, tmp_path, "--allow-missing")
    assert (result.code, result.stderr) == (0, "")


def test_filters_never_make_a_case_missing(run, crash, tmp_path):
    result, _ = gated(run, CRASH_RUN, CRASH_BASE, tmp_path, "--max-results", "1",
                      "--score", "Exact Match>=1")  # q0 alone is printed; none is missing
    assert (result.code, result.stderr) == (0, "")


def test_the_gate_counts_each_record_once_with_csv(run, crash, tmp_path):
    result, target = gated(run, CRASH_RUN, CRASH_BASE, tmp_path, "--format", "csv")
    assert result.code == 3
    assert result.stderr == (f"{PROG}: 4 of 5 records regressed against baseline {CRASH_BASE} "
                             "(--fail-on-regression)\n")
    assert len(target.read_bytes().splitlines()) == 1 + 5


@pytest.fixture(scope="module")
def long_id(fake):
    ids = Ids(seed=83)
    long_trace = "t" * 130 + "-" + "x" * 129  # 260 characters
    rows = eval_trace(ids, LONG_ID_RUN, input="long", output="o", expected="e",
                      scores={"Exact Match": 0.0})
    for row in rows:
        row["root_span_id"] = long_trace
    fake.add(Experiment(rows, name="long id run"), LONG_ID_RUN)
    build(fake, LONG_ID_BASE, [("long", {"Exact Match": 1.0}, None)], 89)
    return long_trace


def test_an_id_of_260_characters_shows_whole_in_the_report(run, long_id):
    report = run(LONG_ID_RUN, "--baseline", LONG_ID_BASE, "--format", "markdown"
                 ).stdout.decode()
    assert len(long_id) == 260 and f"| {long_id} |" in report


# -- gate modes: cases, mean, significant ----------------------------------------------------

N = 30  # cases in each pair below: T_TABLE holds the t quantile for 29 degrees of freedom
MODE_BASE = "e0c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a"
SHAPES = {
    # 10 cases dip by 0.1, 20 rise by 0.1: the mean rises.
    "dips_mean_rises": ("e1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a", [-0.1] * 10 + [0.1] * 20),
    # the mean falls by 0.02, well inside its noise
    "noisy_fall": ("e2c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a", [0.3, -0.34] * 15),
    # every case falls by about 0.2
    "clear_fall": ("e3c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                   [-0.2 + 0.01 * (n % 5 - 2) for n in range(N)]),
}


@pytest.fixture(scope="module")
def modes(fake):
    build(fake, MODE_BASE, [(f"case {n}", {"Judge": 0.5}, None) for n in range(N)], 97)
    for seed, (experiment_id, changes) in enumerate(SHAPES.values(), 101):
        build(fake, experiment_id, [(f"case {n}", {"Judge": 0.5 + change}, None)
                                    for n, change in enumerate(changes)], seed)
    return SHAPES


def independent_figures(changes):
    """The paired mean change and its 95% t interval, by the standard library."""
    diffs = [(0.5 + change) - 0.5 for change in changes]
    middle = statistics.mean(diffs)
    half = T_TABLE[N - 1] * statistics.stdev(diffs) / math.sqrt(N)
    return middle, middle - half, middle + half


@pytest.mark.parametrize("shape, fails", [
    ("dips_mean_rises", {"cases"}),
    ("noisy_fall", {"cases", "mean"}),
    ("clear_fall", {"cases", "mean", "significant"}),
])
def test_each_mode_fails_on_what_it_is_for(run, modes, tmp_path, shape, fails):
    experiment_id, changes = modes[shape]
    middle, low, high = independent_figures(changes)
    # The data is what its name says, by the standard library's arithmetic:
    assert any(change < 0 for change in changes)
    assert (middle < 0) == (shape != "dips_mean_rises")
    assert (high < 0) == (shape == "clear_fall")
    for mode in ("cases", "mean", "significant"):
        result, _ = gated(run, experiment_id, MODE_BASE, tmp_path, "--gate", mode)
        assert result.code == (3 if mode in fails else 0), (mode, result.stderr)


def test_the_summary_gives_the_paired_figures_the_standard_library_computes(run, modes):
    experiment_id, changes = modes["noisy_fall"]
    middle, low, high = independent_figures(changes)
    summary = run(experiment_id, "--baseline", MODE_BASE, "--summary").json()
    judge = summary["scores"]["Judge"]
    assert judge["paired"]["n"] == N
    assert judge["paired"]["diff_mean"] == pytest.approx(middle, abs=1e-9)
    assert judge["paired"]["ci95"] == pytest.approx([low, high], abs=1e-6)
    assert judge["mean"] == pytest.approx(statistics.mean(0.5 + c for c in changes), abs=1e-9)


def test_the_mean_modes_messages_give_the_figures(run, modes, tmp_path):
    experiment_id, changes = modes["clear_fall"]
    middle, low, high = independent_figures(changes)
    result, _ = gated(run, experiment_id, MODE_BASE, tmp_path, "--gate", "significant")
    assert result.stderr.startswith(f"{PROG}: 'Judge' fell by {-middle:g}, beyond noise (95% "
                                    f"interval of the change [")
    assert f"over 30 pairs) against baseline {MODE_BASE}" in result.stderr


def test_in_the_mean_modes_a_crashed_case_still_fails_the_gate(run, crash, tmp_path):
    for mode in ("mean", "significant"):
        result, _ = gated(run, CRASH_RUN, CRASH_BASE, tmp_path, "--gate", mode)
        assert result.code == 3
        assert result.stderr == (
            f"{PROG}: 4 scores lost (a number in the baseline, none now) against baseline "
            f"{CRASH_BASE} (--fail-on-regression); 3 cases raised an error that the baseline "
            "did not\n")


@pytest.mark.parametrize("args", [["--allow-missing"]])  # every form, as a unit: test_usage.py
def test_gate_and_allow_missing_go_with_fail_on_regression(run, api, catalog, args):
    result = run(catalog.current, "--baseline", catalog.baseline, *args)
    assert (result.code, api.requests) == (2, [])
    assert f"{args[0]} goes with --fail-on-regression" in result.stderr


def test_every_summary_printed_here_validates_against_its_schema(run, modes, crash):
    schema = json.loads(run("--schema", "--summary", "--baseline", "auto").stdout)
    validator = Draft202012Validator(schema)
    for experiment_id, baseline in ((CRASH_RUN, CRASH_BASE), (SUBSET_RUN, CRASH_BASE),
                                    *((e, MODE_BASE) for e, _ in SHAPES.values())):
        validator.validate(run(experiment_id, "--baseline", baseline, "--summary").json())


# -- JUnit XML ------------------------------------------------------------------------------

JUNIT_RUN, JUNIT_BASE = ("f1c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                         "f3c0ffee-5d7f-4e21-9c3a-8f1e2d3c4b5a")
HOSTILE = 'a <b>&amp; "quoted" ]]> \x00\x01\x1b[2J \ud800 \ufffe tail'
SCORE = 'Judge <"&">'


@pytest.fixture(scope="module")
def junit(fake):
    """Three hostile cases: one fell, one crashed (an error and no score), one held; and
    one the baseline does not have."""
    build(fake, JUNIT_BASE, [(f"{HOSTILE} {n}", {SCORE: 1.0}, None) for n in range(3)], 107)
    build(fake, JUNIT_RUN, [(f"{HOSTILE} 0", {SCORE: 0.0}, None),
                            (f"{HOSTILE} 1", {}, f"error {HOSTILE}"),
                            (f"{HOSTILE} 2", {SCORE: 1.0}, None),
                            (f"{HOSTILE} new", {SCORE: 1.0}, None)], 109)


def test_junit_is_read_by_a_junit_reader_with_a_testcase_per_record(run, junit, tmp_path):
    junitparser = pytest.importorskip("junitparser")
    result, target = gated(run, JUNIT_RUN, JUNIT_BASE, tmp_path, "--format", "junit")
    assert result.code == 3
    ElementTree.fromstring(target.read_bytes())  # well-formed XML 1.0
    [suite] = list(junitparser.JUnitXml.fromfile(str(target)))
    assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (4, 2, 1, 0)
    cases = {case.name.rsplit(" [", 1)[0].rsplit(" ", 1)[1]: case for case in suite}
    assert sorted(cases) == ["0", "1", "2", "new"]
    fell, crashed, held, new = (cases[name] for name in ("0", "1", "2", "new"))
    assert [[type(r).__name__ for r in case.result] for case in (fell, crashed, held, new)] \
        == [["Failure"], ["Failure"], [], ["Skipped"]]
    assert fell.result[0].message == f"{SCORE} 1 → 0"
    assert crashed.result[0].message == (f"{SCORE} 1 → none (lost); an error, where the "
                                         "baseline had none")
    assert "\nerror: error a <b>&amp; \"quoted\" ]]>" in crashed.result[0].text
    assert all(case.name.endswith("]") and "[" in case.name for case in cases.values())
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["gate"].startswith("failed: 2 of 4 records regressed")
    assert properties["baseline_experiment_id"] == JUNIT_BASE


def test_junit_drops_the_characters_xml_forbids_and_keeps_the_rest(run, junit):
    data = run(JUNIT_RUN, "--baseline", JUNIT_BASE, "--format", "junit").stdout
    text = data.decode("utf-8")
    root = ElementTree.fromstring(data)
    names = sorted(case.get("name") for case in root.iter("testcase"))
    assert names[0].startswith('a <b>&amp; "quoted" ]]> [2J   tail 0 [')
    assert not any(ch in text for ch in "\x00\x01\x1b\ufffe")


def test_junit_without_a_baseline_fails_the_cases_with_an_error(run, junit):
    root = ElementTree.fromstring(run(JUNIT_RUN, "--format", "junit").stdout)
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "0")
    [failure] = root.iter("failure")
    assert failure.get("type") == "error"


@pytest.mark.parametrize("args", [["--schema"]])  # every form, as a unit: test_usage.py
def test_junit_goes_with_neither_summary_nor_schema(run, api, catalog, args):
    result = run(catalog.rich, "--format", "junit", *args)
    assert (result.code, api.requests) == (2, [])


@pytest.mark.parametrize("text", ['a"b', "a'b", 'a"b\'c', "plain", "x<y&z>\n\t\r", '{"q":"w"}', ""])
def test_xml_quoting_is_the_standard_librarys(text):
    from xml.sax import saxutils

    from conftest import load_script
    script = load_script()
    assert script.xml_attribute(text) == saxutils.quoteattr(
        text, {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
    assert script.xml_escaped(text) == saxutils.escape(text)

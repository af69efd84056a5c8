"""Usage errors, each as the checks that run before any request raise it: the arguments
(`parse_args`), then what they name and the settings (`checked`). main prints the message
after "error: " and exits 2; the end-to-end tests run one of each kind (test_cli.py,
test_names.py, test_baseline.py, test_analysis.py, test_comparison.py, test_gate.py,
test_reliability.py), and these cover every form."""
from __future__ import annotations

import pytest

from conftest import load_script

script = load_script()

RICH = "0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"
LINK = "https://www.braintrust.dev/app/acme/p/support%20bot/experiments/baseline%20run"


@pytest.fixture(autouse=True)
def no_dotenv_around(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # settings come from the environment given, nothing else


def refusal(*argv, **environ):
    """The message of the UsageError these arguments and settings meet first."""
    environ = {"BRAINTRUST_API_KEY": "sk-unit-key", **environ}
    with pytest.raises(script.UsageError) as refused:
        script.checked(script.parse_args(list(argv)), environ)
    return str(refused.value)


@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "1001"),
                                         ("--limit", "ten"), ("--max-results", "0"),
                                         ("--max-results", "-3"), ("--format", "xml")])
def test_a_bad_number_or_format_names_its_flag(flag, value):
    message = refusal(RICH, flag, value)
    assert flag in message and "\n" not in message


@pytest.mark.parametrize("value", ["-0.1", "much", "inf"])
def test_a_bad_min_drop_names_its_flag(value):
    assert "--min-drop" in refusal(RICH, "--baseline", "auto", "--min-drop", value)


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/V1"])
def test_an_api_url_ending_in_v1_is_refused(suffix):
    assert "ends in /v1: give the base URL without it" in refusal(
        RICH, "--api-url", "https://api.braintrust.dev" + suffix)


@pytest.mark.parametrize("url, words", [
    ("http://10.1.2.3:8000", "refusing to send the API key over plain http to 10.1.2.3"),
    ("https://user:pw@api.braintrust.dev", "must be a plain base URL, with no credentials")])
def test_an_api_url_the_key_may_not_travel_to_is_refused(url, words):
    assert words in refusal(RICH, "--api-url", url)


@pytest.mark.parametrize("experiment", ["../../v1/project", f"{RICH}/../x"])
def test_an_experiment_that_is_no_id_is_refused_saying_how_to_name_one(experiment):
    assert "is not an experiment id (a UUID): to fetch by name, add --project" in refusal(
        experiment)


@pytest.mark.parametrize("where", ["missing/results.json", "."])
def test_an_output_that_cannot_be_written_is_refused(tmp_path, where):
    assert "--output" in refusal(RICH, "--output", str(tmp_path / where))


@pytest.mark.parametrize("expr", ["Exact Match", "Exact Match<"])
def test_a_malformed_score_shows_the_form(expr):
    assert "NAME OP NUMBER" in refusal(RICH, "--score", expr)


@pytest.mark.parametrize("expr", ["Accuracy=<0.5", "Accuracy=>0.5"])
def test_eq_before_lt_or_gt_gets_the_right_spelling(expr):
    assert "write <= or >= (the = comes second)" in refusal(RICH, "--score", expr)


@pytest.mark.parametrize("bad_link", [
    "https://www.braintrust.dev/app/acme/p/support%20bot/datasets/golden",
    "https://www.braintrust.dev/app/acme/p/%20/experiments/x"])
def test_a_link_that_is_not_an_experiment_link_is_refused(bad_link):
    assert "is not an experiment link" in refusal(bad_link)


@pytest.mark.parametrize("experiment", [RICH, LINK])
@pytest.mark.parametrize("args", [["--project", "support bot"], ["--org", "acme"]])
def test_project_and_org_go_with_a_name_not_an_id_or_a_link(experiment, args):
    assert "--project and --org go with an experiment name" in refusal(experiment, *args)


@pytest.mark.parametrize("args, words", [
    (["--regressions-only"], "--regressions-only needs --baseline"),
    (["--baseline", "main branch"], "pass the baseline's id or link"),
    (["--baseline", RICH.upper()], "the experiment itself"),
    (["--baseline", ""], "--baseline is empty"),
    (["--fail-on-regression"], "--fail-on-regression needs --baseline"),
    (["--min-drop", "0.1"], "--min-drop needs --baseline"),
])
def test_a_missing_or_bad_baseline_is_refused(args, words):
    assert words in refusal(RICH, *args)


@pytest.mark.parametrize("output_format", ["markdown", "junit"])
@pytest.mark.parametrize("flag", ["--summary", "--schema"])
def test_the_reports_go_with_neither_summary_nor_schema(output_format, flag):
    assert flag in refusal(RICH, "--format", output_format, flag)


@pytest.mark.parametrize("args", [["--gate", "mean"], ["--allow-missing"]])
def test_gate_and_allow_missing_go_with_fail_on_regression(args):
    assert f"{args[0]} goes with --fail-on-regression" in refusal(
        RICH, "--baseline", "auto", *args)


def test_checks_that_pass_give_the_target_the_baseline_and_the_settings():
    # The other side of every test above: nothing is refused that should pass.
    target, baseline, settings = script.checked(
        script.parse_args([LINK, "--baseline", "auto", "--min-drop", "0.1"]),
        {"BRAINTRUST_API_KEY": "sk-unit-key"})
    assert target == script.Target(None, "acme", "support bot", "baseline run")
    assert (baseline, settings.key) == ("auto", "sk-unit-key")

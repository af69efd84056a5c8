"""The current script against the previous release (tests/previous_release/), side by side:
for every output format and a spread of flags, on experiments with versions, deletions,
UI edits, errors, trials and a baseline, the same bytes on stdout, the same stderr and the
same exit code (issue 23: a reorganisation of the file that changes no output). What
changed on purpose since (issue 24) is written out below, not ignored."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRIPT, assert_no_key

PREVIOUS = Path(__file__).parent / "previous_release" / "fetch_experiment_results.py"

# Changed on purpose since 1.3.0 (issue 24), and beyond any byte-for-byte rule on the old
# output: --include error and all add `span_errors`, --include all `edits`; a case whose
# child span failed counts as failed; an llm span without a token total counts prompt +
# completion. The runs below stay clear of them: --include lists the other fields, metrics
# only on cases whose spans give every count, and the reports that list errors read `rich`,
# which has none.
INCLUDE_MOST = ["--include", "id,span_id,created,tags,comments"]
GATE = ["--fail-on-regression"]
# A spread of flags over every format (the formats share how cases are chosen; each run
# here costs two). Each on one experiment of two (rich: versions, deletions, UI edits;
# analysis: errors, tags, costs), in turn; the reports on rich.
UNCOMPARED_RUNS = [("json", []), ("json", ["--edited-only", "--limit", "2"]),
                   ("json", ["--tag", "slow", "--include", "tags,metrics"]),
                   ("jsonl", ["--max-results", "3", "--limit", "1"]), ("csv", INCLUDE_MOST),
                   ("markdown", ["--score", "Exact Match<1", "--truncate", "12"]),
                   ("junit", ["--edited-only", "--limit", "2"])]
COMPARED_RUNS = [("json", [*INCLUDE_MOST, "--truncate", "8"]),
                 ("json", ["--min-drop", "0.3", "--max-results", "4"]),
                 ("json", [*GATE, "--gate", "significant", "--limit", "3"]),
                 ("jsonl", ["--regressions-only"]),
                 ("csv", [*INCLUDE_MOST, "--truncate", "8"]),
                 ("markdown", GATE), ("junit", [*GATE, "Accuracy", "--allow-missing", "--gate",
                                                "mean"])]


REPORTS = ("markdown", "junit")  # they list the cases with an error


def named(runs):
    return [f"{output_format} {' '.join(flags)}".strip() for output_format, flags in runs]


# What changed on purpose since the previous release, applied to its output (issue 24): a
# markdown report with no scores says so instead of printing an empty table, and its first
# line names each experiment before its id (the names the fake gives; these have no
# character markdown escapes, and without BRAINTRUST_APP_URL a test API gets no link); and
# a schema's title names this version (1.4.0).
EMPTY_SCORES_TABLE = re.compile(rb"\| score \| [^\n]*\n\| --- \|[^\n]*\n(?=\n)")
REPORT_ID = re.compile(rb"(?<=^\*\*Experiment\*\* )`([0-9a-f-]{36})`|"
                       rb"(?<= vs \*\*baseline\*\* )`([0-9a-f-]{36})`")


VERSION = re.search(r'__version__ = "(.+)"', SCRIPT.read_text())[1].encode()
SCHEMA_TITLE = re.compile(rb'(?<="title": "fetch_experiment_results\.py )[^:]+(?=:)')


def as_changed_on_purpose(stdout, api, output_format):
    if output_format == "schema":  # a schema's title holds the version
        return SCHEMA_TITLE.sub(VERSION, stdout, count=1)
    if output_format != "markdown":
        return stdout
    first, rest = stdout.split(b"\n", 1)
    first = REPORT_ID.sub(lambda found: b"%s (%s)" % (
        api.experiments[(found[1] or found[2]).decode()].name.encode(), found[0]), first)
    return first + b"\n" + EMPTY_SCORES_TABLE.sub(b"No scores.\n", rest)


def both(args, env, cwd, api):
    runs = []
    output_format = ("schema" if "--schema" in args else
                     args[args.index("--format") + 1] if "--format" in args else "json")
    for script in (SCRIPT, PREVIOUS):
        done = subprocess.run([sys.executable, str(script), *args], env=env, cwd=cwd,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert_no_key(done.stdout, done.stderr, env=env)
        stdout = (done.stdout if script == SCRIPT else
                  as_changed_on_purpose(done.stdout, api, output_format))
        runs.append((done.returncode, stdout, done.stderr))
    return runs


@pytest.mark.parametrize("output_format, flags", UNCOMPARED_RUNS, ids=named(UNCOMPARED_RUNS))
def test_the_same_bytes_as_the_previous_release(api, env, catalog, tmp_path, output_format,
                                                flags):
    experiment = (catalog.rich, catalog.analysis)[UNCOMPARED_RUNS.index((output_format, flags))
                                                  % 2 if output_format not in REPORTS else 0]
    now, before = both([experiment, "--format", output_format, *flags], env, tmp_path, api)
    assert now == before


@pytest.mark.parametrize("output_format, flags", COMPARED_RUNS, ids=named(COMPARED_RUNS))
def test_the_same_comparison_as_the_previous_release(api, env, catalog, tmp_path,
                                                     output_format, flags):
    now, before = both([catalog.current, "--baseline", catalog.baseline, "--format",
                        output_format, *flags], env, tmp_path, api)
    assert now == before


@pytest.mark.parametrize("flags", [["--baseline", "auto"], ["--errors-only", "--tag", "x",
                                                              "--format", "jsonl"]])
def test_the_same_summary_as_the_previous_release(api, env, catalog, tmp_path, flags):
    now, before = both([catalog.current, "--summary", *flags], env, tmp_path, api)
    assert now == before


@pytest.mark.parametrize("flags", [[*INCLUDE_MOST, "--baseline", "auto", "--edited-only"],
                                   ["--summary", "--baseline", "auto"]])
def test_the_same_schema_as_the_previous_release(env, tmp_path, flags):
    now, before = both(["--schema", *flags], env, tmp_path, None)
    assert now == before

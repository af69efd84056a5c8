"""What a new user trips over (issue 17): a Python without requests, short keys, an empty
key in .env, near-miss ids, links and API URLs, a 403, narrow terminals, an interrupted
run, and SKILL.md's and README's recipes taken as written. (Filters that match nothing:
test_analysis.py; refused connections and the /v1 API URL: test_reliability.py; the
organisations of an ambiguous name: test_names.py.)"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPT, SKILL, load_script, run_on_a_terminal
from fake_api import API_KEY
from test_cli import rich_records

script = load_script()
NAME_AND_LINK = "https://www.braintrust.dev/app/acme/p/support%20bot/experiments/"


def test_a_python_without_requests_says_how_to_run_the_script_in_one_line(tmp_path):
    # -S leaves site-packages out: requests and python-dotenv cannot be imported.
    done = subprocess.run([sys.executable, "-S", str(SCRIPT), "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("fetch_experiment_results.py: error: this Python (")
    assert "has no 'requests'" in line and "uv run" in line and "python3 -m venv .venv" in line


# -- the key ---------------------------------------------------------------------------------

def test_a_short_key_is_redacted_only_where_it_stands_alone():
    assert script.redacted("fetch_experiment_results.py: x", "x") == (
        "fetch_experiment_results.py: [redacted]")
    assert script.redacted("token x, or (x)", "x") == "token [redacted], or ([redacted])"


def test_a_key_as_long_as_a_real_one_is_redacted_wherever_it_is():
    key = "sk-" + "a1" * 20
    assert script.redacted(f"Bearer{key}tail and {key}", key) == (
        "Bearer[redacted]tail and [redacted]")


def test_a_short_key_leaves_the_programs_name_whole_in_a_refusal(api, env, catalog, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), catalog.rich],
                          env=dict(env, BRAINTRUST_API_KEY="x"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    [line] = done.stderr.splitlines()
    assert done.returncode == 1 and line.startswith("fetch_experiment_results.py: error: ")
    assert "Invalid API key" in line


def test_an_empty_key_in_dotenv_names_the_file_it_came_from(run, api, env, tmp_path):
    (tmp_path / ".env").write_text("BRAINTRUST_API_KEY=\n")
    result = run("0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                 env=dict(env, BRAINTRUST_API_KEY=""))
    assert (result.code, api.requests) == (2, [])
    assert f"BRAINTRUST_API_KEY is empty in {tmp_path / '.env'}" in result.stderr


@pytest.mark.parametrize("from_dotenv", [False, True])
def test_a_refused_key_says_where_it_was_read(run, api, env, catalog, tmp_path, from_dotenv):
    if from_dotenv:
        (tmp_path / ".env").write_text("BRAINTRUST_API_KEY=sk-wrong-key-from-dotenv\n")
        env = dict(env, BRAINTRUST_API_KEY="")
    else:
        env = dict(env, BRAINTRUST_API_KEY="sk-other-Hq2Lw9Xe")
    result = run(catalog.rich, env=env)
    where = tmp_path / ".env" if from_dotenv else "the environment"
    assert result.code == 1 and f"BRAINTRUST_API_KEY (read from {where})" in result.stderr


def test_a_403_says_the_key_is_valid_but_may_not_read_it(run, api, catalog):
    api.faults[1] = {"status": 403, "body": "Forbidden"}
    result = run(catalog.rich)
    assert result.code == 1
    assert "the key is valid but may not read this (403" in result.stderr
    assert "needs access to the experiment's project" in result.stderr


# -- near misses ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("www.braintrust.dev/app/acme/p/support%20bot/experiments/baseline%20run",
     "looks like an experiment link without its https://"),
    ("braintrust.dev/app/acme/p/x/experiments/y", "without its https://"),
    ("0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5", "has 31 hex digits where an id has 32"),
    ("0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5aa", "has 33 hex digits where an id has 32"),
])
def test_a_near_miss_experiment_says_what_is_wrong_with_it(run, api, text, words):
    result = run(text)
    assert (result.code, api.requests) == (2, [])
    assert words in result.stderr and "--project" not in result.stderr


def test_a_link_that_ends_in_the_experiments_id_fetches_that_id(run, api, catalog):
    result = run(NAME_AND_LINK + catalog.rich.upper() + "?c=1")
    assert result.json() == rich_records(catalog)
    assert [r.path for r in api.requests][0] == f"/v1/experiment/{catalog.rich}/fetch"


# -- the terminal and an interrupted run -----------------------------------------------------

def test_the_progress_line_fits_a_narrow_terminal(env, catalog, tmp_path):
    code, (shown, _) = run_on_a_terminal([catalog.rich, "--limit", "1"],
                                         dict(env, COLUMNS="30"), tmp_path)
    redraws = [part for part in shown.decode().split("\r\x1b[K") if part]
    assert code == 0 and len(redraws) > 20
    assert all(len(part.rstrip("\r\n")) < 30 for part in redraws), redraws  # \r\n: the tty
    assert redraws[-1].startswith("24 records from 33 pag")


@pytest.mark.parametrize("so_far, output, existed, want", [
    ({}, None, False, "before the first page came; nothing was printed"),
    ({"label": "", "pages": 3, "live": 1}, "r.json", True,
     "after 3 pages of the experiment (1 record so far); 'r.json' is unchanged"),
    ({"label": "baseline ", "pages": 1, "live": 0}, "r.json", False,
     "after 1 page of the baseline experiment (0 records so far); no 'r.json' was written"),
    ({"pages": 9, "writing": True}, None, False,
     "while writing the output; what reached stdout is incomplete"),
    ({"pages": 9, "writing": True}, "/dev/null", True,
     "while writing the output; '/dev/null' got part of the output"),
])
def test_an_interrupted_run_says_how_far_it_got_and_what_it_left(so_far, output, existed,
                                                                 want):
    reporter = script.Reporter(terminal=False)
    for name, value in so_far.items():
        setattr(reporter, name, value)
    assert reporter.how_far(output, existed) == want


# -- the recipes as written ------------------------------------------------------------------

def skill_text():
    return (SKILL / "SKILL.md").read_text()


def set_s_line():
    [line] = [line for line in skill_text().splitlines() if line.startswith("S=")]
    return line


@pytest.mark.parametrize("installed", ["for the user", "in the project"])
def test_the_skills_s_line_finds_the_script_outside_the_repository(tmp_path, installed):
    home, project = tmp_path / "home", tmp_path / "project"
    skills = (home if installed == "for the user" else project) / ".claude" / "skills"
    shutil.copytree(SKILL, skills / SKILL.name)
    project.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    done = subprocess.run(["bash", "-c", f'{set_s_line()}\n"$PYTHON" "$S" --version'],
                          cwd=project, capture_output=True, text=True, timeout=30,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin",
                               "PYTHON": sys.executable})
    assert (done.returncode, done.stdout.split()[0]) == (0, "fetch_experiment_results.py")


def test_every_recipe_in_skill_md_calls_the_script_through_s():
    calls = re.findall(r"^python3 (\S+)", skill_text(), re.M)
    assert len(calls) > 10 and set(calls) == {"$S"}


def test_skill_md_says_when_records_start_to_flow_and_to_start_small():
    text = skill_text()
    assert "for streaming tools" not in text
    assert "records are written once every page has arrived" in text
    assert "start with `--summary`" in text and "--truncate 200" in text


def test_readmes_first_command_leaves_no_file_when_it_fails(api, env, tmp_path):
    readme = (ROOT / "README.md").read_text()
    [command] = [line for line in readme.splitlines()
                 if line.startswith("python3 -m pip install . && ")]
    fetch = command.split(" && ", 1)[1].replace("python3 ", "", 1).split()
    assert fetch[-2:] == ["--output", "results.json"]
    done = subprocess.run([sys.executable, str(ROOT / fetch[0]), "nightly", *fetch[2:]],
                          cwd=tmp_path, env=dict(env), capture_output=True, timeout=30)
    assert done.returncode == 2 and list(tmp_path.iterdir()) == []
    assert API_KEY.encode() not in done.stderr

"""Fixtures: the loopback fake API, its experiments, and a runner for the real script."""
from __future__ import annotations

import importlib.util
import json
import os
import pty
import py_compile
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import experiments  # noqa: E402
import traces  # noqa: E402
from fake_api import API_KEY, OTHER_KEYS, Experiment, FakeBraintrust  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SKILL = ROOT / ".claude" / "skills" / "braintrust-fetch-experiment-results"
SCRIPT = SKILL / "scripts" / "fetch_experiment_results.py"

# The script as `python3 SCRIPT ARGS` runs it, but from bytecode compiled once for the session:
# Python caches the bytecode of what it imports only, so each plain run compiled the whole
# file again (a fifth of a run's CPU, over some 500 runs). runpy runs the cached module as
# __main__, with sys.argv[0] and sys.path[0] as the plain command sets them. The recipes
# (test_skill_docs.py), the tests that start the process themselves, Python 3.9 and the
# previous release run the plain command; test_cli.py shows that both give the same bytes.
py_compile.compile(str(SCRIPT), doraise=True)  # into scripts/__pycache__, which git ignores
SCRIPT_COMMAND = [sys.executable, "-c",
                  f"import runpy, sys; sys.path[0] = {str(SCRIPT.parent)!r}; "
                  "runpy.run_module('fetch_experiment_results', run_name='__main__', "
                  "alter_sys=True)"]


def load_script():
    """The script file as a module, for unit tests of its pure functions."""
    spec = importlib.util.spec_from_file_location("fetch_experiment_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Result(NamedTuple):
    code: int
    stdout: bytes
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def clean_env(**overrides: Optional[str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINTRUST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


FRAGMENT = 8  # characters of a key in a row that count as a leak


def key_fragments(key: str) -> List[bytes]:
    """Every run of FRAGMENT characters of `key` (the key itself when it is shorter)."""
    if len(key) <= FRAGMENT:
        return [key.encode()]
    return [key[start:start + FRAGMENT].encode() for start in range(len(key) - FRAGMENT + 1)]


def assert_no_key(*printed: bytes, env: Optional[Dict[str, str]] = None) -> None:
    """No key a test uses (the fake's, the others, the one in `env`), nor any 8 characters
    of one in a row, is in what was printed."""
    keys = {API_KEY, *OTHER_KEYS, (env or {}).get("BRAINTRUST_API_KEY") or API_KEY}
    for output in printed:
        for key in keys:
            for fragment in key_fragments(key):
                assert fragment not in output, f"a key leaked: {fragment[:3]!r}..."


def run_on_a_terminal(args, env: Dict[str, str], cwd: Path, stdout: Any = subprocess.PIPE):
    """Run the script with stderr (and stdout too, when `stdout` is None) on a
    pseudo-terminal; the exit code and what the terminal showed, checked for keys."""
    leader, follower = pty.openpty()
    done = subprocess.run([*SCRIPT_COMMAND, *args], env=env, cwd=cwd,
                          stdout=follower if stdout is None else stdout, stderr=follower,
                          stdin=subprocess.DEVNULL, timeout=60)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal's other end is gone: all was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert_no_key(shown, done.stdout or b"", env=env)
    return done.returncode, shown if stdout is None else (shown, done.stdout)


def run_script(*args: str, env: Dict[str, str], cwd: Path, timeout: float = 60) -> Result:
    """Run the script as a user would (SCRIPT_COMMAND), and check no key shows in what it
    printed."""
    done = subprocess.run([*SCRIPT_COMMAND, *args], env=env, cwd=cwd,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert_no_key(done.stdout, done.stderr, env=env)
    return Result(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


ODD_NAME = "café 🚀 / run #1 & more+"
ODD_PROJECT = "проект α?"


class Catalog(NamedTuple):
    """The experiments the fake serves, by role."""
    rich: str
    rich_cases: Dict[str, List[Dict[str, Any]]]
    header_cursor: str
    no_trailing_page: str
    redirect_encoded: str
    redirect_raw: str
    empty: str
    many: str  # 200 small traces: many pages with a small --limit
    same_names_other_org: str  # "baseline run" in "support bot", like `rich`, in another org
    odd_names: str  # names with spaces, '/', '&', '#' and unicode
    # Behind a 303, the cursor only in: x-bt-cursor on the 303; x-bt-cursor, or
    # x-amz-meta-bt_cursor, on the object store's answer.
    redirect_cursor_on_303: str
    redirect_cursor_on_blob: str
    redirect_cursor_amz_meta: str
    versions: str
    versions_cases: Dict[str, List[Dict[str, Any]]]
    analysis: str  # errors, tags, comments, llm costs (issue 9)
    analysis_cases: Dict[str, List[Dict[str, Any]]]
    current: str  # "candidate" in project "evals" of acme, whose base experiment is...
    baseline: str  # ..."main branch", in the same project (issue 10)
    current_cases: Dict[str, List[Dict[str, Any]]]
    baseline_cases: Dict[str, List[Dict[str, Any]]]
    # The cursor in the body and in x-bt-cursor, as the real API sends it (issue 11): plain;
    # each body held until the next page is asked for; the header's a decoy; the header
    # only on odd pages.
    both_cursors: str
    both_held: str
    decoy_header: str
    odd_headers: str


@pytest.fixture(scope="session")
def fake():
    server = FakeBraintrust()
    yield server
    server.close()


@pytest.fixture(scope="session")
def catalog(fake) -> Catalog:
    def add(experiment_id: str, **options: Any) -> str:
        cases = experiments.rich(experiment_id)
        return fake.add(Experiment(experiments.rows_of(cases), **options), experiment_id)

    def small(experiment_id: str, **options: Any) -> str:
        rows = traces.synthetic_experiment(experiment_id, traces=3, trace_bytes=100)
        return fake.add(Experiment(rows, **options), experiment_id)

    versions_id = "cb6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"
    versions_cases = experiments.versions(versions_id)
    fake.add(Experiment(experiments.rows_of(versions_cases), name="versions", cursor_in="both"),
             versions_id)
    analysis_id = "e1b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a"
    analysis_cases = experiments.analysis(analysis_id)
    fake.add(Experiment(experiments.rows_of(analysis_cases), name="analysis", cursor_in="both"),
             analysis_id)
    current_id, baseline_id = ("f1b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                               "f2b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a")
    current_cases, baseline_cases = experiments.pair(current_id, baseline_id)
    fake.add(Experiment(experiments.rows_of(current_cases), name="candidate", project="evals",
                        org="acme", base_exp_id=baseline_id, cursor_in="both"), current_id)
    fake.add(Experiment(experiments.rows_of(baseline_cases), name="main branch",
                        project="evals", org="acme"), baseline_id)
    rich_id = "0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"
    rich_cases = experiments.rich(rich_id)
    fake.add(Experiment(experiments.rows_of(rich_cases), name="baseline run",
                        project="support bot", org="acme"), rich_id)
    catalog = Catalog(
        rich=rich_id,
        rich_cases=rich_cases,
        header_cursor=add("1b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", cursor_in="header",
                          name="header cursor"),
        no_trailing_page=add("2b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                             trailing_empty_page=False, name="no trailing page"),
        redirect_encoded=add("3b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", redirect="gzip-encoding",
                             name="redirected"),
        redirect_raw=add("4b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", redirect="gzip-raw",
                         name="redirected raw"),
        empty=fake.add(Experiment([], name="empty"), "5b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"),
        many=fake.add(Experiment(traces.synthetic_experiment(
            "6b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", traces=200, trace_bytes=300), name="many",
            cursor_in="both"),
            "6b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a"),
        same_names_other_org=small("7b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", name="baseline run",
                                   project="support bot", org="other org"),
        odd_names=small("8b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", name=ODD_NAME,
                        project=ODD_PROJECT, org="org"),
        redirect_cursor_on_303=add("d1b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", redirect="gzip-raw",
                                   cursor_in="header"),
        redirect_cursor_on_blob=add("d2b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                                    redirect="gzip-encoding", cursor_in="blob-header"),
        redirect_cursor_amz_meta=add("d3b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", redirect="gzip-raw",
                                     cursor_in="blob-amz-meta"),
        versions=versions_id,
        versions_cases=versions_cases,
        analysis=analysis_id,
        analysis_cases=analysis_cases,
        current=current_id,
        baseline=baseline_id,
        current_cases=current_cases,
        baseline_cases=baseline_cases,
        both_cursors=add("a1b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", cursor_in="both"),
        # Held until the next page is asked for, or 30 s: only a run without overlap waits.
        both_held=add("a2b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", cursor_in="both", hold=30.0),
        decoy_header=add("a3b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", cursor_in="both",
                         header_cursor="decoy"),
        odd_headers=add("a4b6c2a4-5d7f-4e21-9c3a-8f1e2d3c4b5a", cursor_in="both",
                        header_cursor="odd"),
    )
    # Near misses that an exact lookup of "baseline run" in "support bot" of acme must skip.
    small("9b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", name="Baseline Run", project="support bot",
          org="acme")
    small("ab6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", name="baseline run", project="support bot 2",
          org="acme")
    small("bb6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", name="baseline run 2", project="support bot",
          org="acme")
    return catalog


@pytest.fixture
def api(fake, catalog) -> FakeBraintrust:
    """The fake, with no faults and an empty request log."""
    fake.reset()
    return fake


@pytest.fixture
def env(api) -> Dict[str, str]:
    return clean_env(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=api.url)


@pytest.fixture
def run(env, tmp_path):
    """run(*args) runs the script in an empty folder against the fake."""
    def runner(*args: str, env: Dict[str, str] = env, cwd: Path = tmp_path,
               timeout: float = 60) -> Result:
        return run_script(*args, env=env, cwd=cwd, timeout=timeout)
    return runner

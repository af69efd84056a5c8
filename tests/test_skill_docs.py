"""SKILL.md as an agent reads it (issue 24): a short body that links its reference files, an
`S=` line that finds the script from anywhere, and every recipe of SKILL.md and of the
reference files run as written (taken from the files themselves) against the fake API."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPT, SKILL, assert_no_key
from traces import DATASET_ID, root_of

SKILL_MD = SKILL / "SKILL.md"
REFERENCES = sorted((SKILL / "references").glob("*.md"))


def body(text):
    """What follows the frontmatter: what an agent reads once the skill triggers."""
    return text.split("---", 2)[2]


def test_the_body_of_skill_md_is_at_most_10000_bytes():
    assert len(body(SKILL_MD.read_text()).encode()) <= 10_000


def test_skill_md_links_each_reference_file_and_each_link_resolves():
    linked = re.findall(r"\]\((references/[^)]+)\)", SKILL_MD.read_text())
    assert sorted(set(linked)) == sorted(f"references/{path.name}" for path in REFERENCES)
    assert all((SKILL / link).is_file() for link in linked)


def test_every_setting_the_script_reads_is_documented_for_agents_and_people():
    read = set(re.findall(r'"(BRAINTRUST_[A-Z_]+)"', SCRIPT.read_text()))
    assert {"BRAINTRUST_API_KEY", "BRAINTRUST_APP_URL"} <= read  # the pattern finds them
    for document in (SKILL / "references" / "settings.md", ROOT / "README.md",
                     ROOT / ".env.example"):
        assert read <= set(re.findall(r"BRAINTRUST_[A-Z_]+", document.read_text())), document


def s_line():
    [line] = [line for line in SKILL_MD.read_text().splitlines() if line.startswith("S=")]
    return line


def find_script(cwd, home):
    return subprocess.run(["bash", "-c", f'{s_line()}\nprintf %s "$S"'], cwd=cwd,
                          capture_output=True, text=True, timeout=30,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


def test_the_s_line_finds_the_script_from_a_subfolder_of_the_project(tmp_path):
    project, home = tmp_path / "project", tmp_path / "home"
    shutil.copytree(SKILL, project / ".claude" / "skills" / SKILL.name)
    (project / "src" / "deep").mkdir(parents=True)
    home.mkdir()
    done = find_script(project / "src" / "deep", home)
    assert (done.stdout, done.stderr) == (
        str(project / ".claude/skills" / SKILL.name / "scripts/fetch_experiment_results.py"),
        "")


def test_the_s_line_says_so_when_it_finds_no_skill(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "elsewhere").mkdir()
    done = find_script(tmp_path / "elsewhere", tmp_path / "home")
    assert done.stdout == ""  # not "/scripts/...": nothing to run by mistake
    assert "no .claude/skills/braintrust-fetch-experiment-results here, above, or in " \
           "~/.claude/skills" in done.stderr


def recipes():
    """Every line of SKILL.md and the reference files that runs the script through $S."""
    found = {}  # each command once (comments aside), as the first file that gives it
    for path in [SKILL_MD, *REFERENCES]:
        for line in path.read_text().splitlines():
            command = line.split("  #")[0].strip()
            if line.startswith("python3 $S ") and command not in found:
                found[command] = pytest.param(line, id=f"{path.name}: {line[11:60]}")
    return list(found.values())


@pytest.fixture
def installed_for_the_user(tmp_path):
    """The skill installed in ~/.claude/skills of the test's HOME (its tmp_path)."""
    shutil.copytree(SKILL, tmp_path / ".claude" / "skills" / SKILL.name)


@pytest.mark.parametrize("recipe", recipes())
def test_every_recipe_runs_as_written(api, env, catalog, tmp_path, installed_for_the_user,
                                      recipe):
    # EXPERIMENT_ID: a run with a base experiment, dataset rows and regressions.
    command = (recipe.replace("EXPERIMENT_ID", catalog.current)
               .replace("BASELINE_ID", catalog.baseline)
               .replace("python3 ", '"$PYTHON" ', 1))
    done = subprocess.run(["bash", "-c", f"{s_line()}\n{command}"], cwd=tmp_path,
                          capture_output=True, timeout=60,
                          env=dict(env, HOME=str(tmp_path), PYTHON=sys.executable))
    assert_no_key(done.stdout, done.stderr, env=env)
    assert done.returncode in ((3,) if "--fail-on-regression" in recipe else (0,)), (
        done.returncode, done.stderr.decode())




def test_the_sync_back_recipe_changes_only_expected(api, env, catalog, tmp_path,
                                                    installed_for_the_user):
    edited = {name: root_of(catalog.rich_cases[name]) for name in ("edited", "edited_flat")}
    rows = api.datasets.setdefault(DATASET_ID, {})
    for name, root in edited.items():
        row_id = root["origin"]["id"]
        rows[row_id] = {"id": row_id, "input": f"{name}, reworded in the dataset since",
                        "expected": {"answer": "old", "stale key": 1},
                        "metadata": {"source": "seed"}, "tags": ["gold"]}
    before = json.loads(json.dumps(rows))
    fetch = subprocess.run(["bash", "-c", f'{s_line()}\n"$PYTHON" "$S" {catalog.rich} '
                            "--edited-only --output corrections.json"], cwd=tmp_path,
                           env=dict(env, HOME=str(tmp_path), PYTHON=sys.executable),
                           capture_output=True, timeout=60)
    assert fetch.returncode == 0, fetch.stderr
    recipe = re.search(r"```bash\n(python3 - corrections.json <<'PY'\n.*?\nPY)\n```",
                       (SKILL / "references" / "sync-back.md").read_text(), re.S).group(1)
    done = subprocess.run(["bash", "-c", recipe.replace("python3", '"$PYTHON"', 1)],
                          cwd=tmp_path, env=dict(env, PYTHON=sys.executable),
                          capture_output=True, timeout=60)
    assert_no_key(done.stdout, done.stderr, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode() == f"{DATASET_ID}: 2 rows updated\n"
    corrected = {"edited": {"answer": "new"}, "edited_flat": {"answer": "flat"}}
    for name, root in edited.items():
        row_id = root["origin"]["id"]
        # Only expected changed, and whole (no key of the old one merged into it).
        assert rows[row_id] == dict(before[row_id], expected=corrected[name])

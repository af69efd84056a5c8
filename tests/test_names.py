"""End to end: naming the experiment by web-app link or by names (issue 5)."""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest

import experiments
from conftest import ODD_NAME, ODD_PROJECT


def rich_records(catalog):
    return [experiments.expected_record(catalog.rich_cases, n) for n in experiments.RICH_ORDER]


def lookups(api):
    return [r for r in api.requests if r.method == "GET" and r.path == "/v1/experiment"]


def link(org, project, experiment, host="https://www.braintrust.dev"):
    return f"{host}/app/{quote(org, safe='')}/p/{quote(project, safe='')}/experiments/" \
           f"{quote(experiment, safe='')}"


# -- accepted forms -------------------------------------------------------------------------

def test_an_id_needs_no_lookup(run, api, catalog):
    assert run(catalog.rich).code == 0
    assert lookups(api) == [] and api.requests[0].path.endswith("/fetch")


def test_a_name_with_project_and_org_is_looked_up_then_fetched(run, api, catalog):
    result = run("baseline run", "--project", "support bot", "--org", "acme")
    assert result.json() == rich_records(catalog)
    assert len(lookups(api)) == 1 and api.requests[0] is lookups(api)[0]
    assert lookups(api)[0].query == {"project_name": ["support bot"],
                                     "experiment_name": ["baseline run"], "org_name": ["acme"]}
    assert api.requests[1].path == f"/v1/experiment/{catalog.rich}/fetch"


def test_a_lookup_keeps_only_the_exact_live_name_whatever_the_server_matched(run, api,
                                                                            catalog):
    # A server that matched loosely (case, prefix) or still lists a deleted experiment.
    def experiment(id, name, deleted_at=None):
        return {"id": id, "name": name, "project_id": "p", "public": False,
                "created": "2026-11-01T00:00:00Z", "deleted_at": deleted_at}
    objects = [experiment("9b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", "Baseline Run"),
               experiment("bb6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", "baseline run 2"),
               experiment("ab6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", "baseline run",
                          deleted_at="2026-11-02T00:00:00Z"),
               experiment(catalog.rich, "baseline run")]
    api.faults[1] = {"status": 200, "body": json.dumps({"objects": objects}),
                     "content_type": "application/json"}
    result = run("baseline run", "--project", "support bot", "--org", "acme")
    assert result.json() == rich_records(catalog)
    assert api.requests[1].path == f"/v1/experiment/{catalog.rich}/fetch"


def test_a_name_unique_without_org_needs_no_org(run, api, catalog):
    result = run(ODD_NAME, "--project", ODD_PROJECT)
    assert result.code == 0, result.stderr
    assert "org_name" not in lookups(api)[0].query
    assert api.requests[1].path == f"/v1/experiment/{catalog.odd_names}/fetch"


def test_names_with_spaces_slashes_ampersands_hashes_and_unicode_reach_the_api_intact(
        run, api, catalog):
    assert run(ODD_NAME, "--project", ODD_PROJECT, "--org", "org").code == 0
    assert lookups(api)[0].query == {"project_name": [ODD_PROJECT],
                                     "experiment_name": [ODD_NAME], "org_name": ["org"]}


@pytest.mark.parametrize("suffix", ["", "/?c=x#y"])  # more forms: test_records.py
def test_a_web_app_link_is_resolved_with_its_names(run, api, catalog, suffix):
    result = run(link("acme", "support bot", "baseline run") + suffix)
    assert result.json() == rich_records(catalog)
    assert lookups(api)[0].query == {"project_name": ["support bot"],
                                     "experiment_name": ["baseline run"], "org_name": ["acme"]}


def test_a_link_from_any_app_host_is_accepted(run, api, catalog):
    odd = link("org", ODD_PROJECT, ODD_NAME, host="http://braintrust.internal.example:3000")
    assert run(odd).code == 0
    assert api.requests[1].path == f"/v1/experiment/{catalog.odd_names}/fetch"


def test_verbose_says_which_id_a_name_resolved_to(run, catalog):
    result = run("baseline run", "--project", "support bot", "--org", "acme", "--verbose")
    assert catalog.rich in result.stderr.splitlines()[0]


def test_the_lookup_is_retried_like_a_page(run, api, catalog):
    api.faults[1] = {"status": 503, "headers": {"Retry-After": "0"}}
    result = run("baseline run", "--project", "support bot", "--org", "acme")
    assert result.json() == rich_records(catalog)
    assert "looking up" in result.stderr and "retrying" in result.stderr


# -- refused --------------------------------------------------------------------------------

def test_no_match_exits_1_saying_what_was_looked_for(run, api, catalog):
    result = run("nightly", "--project", "support bot", "--org", "acme")
    assert (result.code, result.stdout, len(api.requests)) == (1, b"", 1)
    assert "'nightly'" in result.stderr and "'support bot'" in result.stderr \
        and "'acme'" in result.stderr


def test_several_matches_exit_1_listing_the_candidates_with_their_organisations(run, api,
                                                                              catalog):
    result = run("baseline run", "--project", "support bot")
    assert (result.code, result.stdout) == (1, b"")
    assert [r.path for r in api.requests] == ["/v1/experiment", "/v1/project",
                                              "/v1/organization"]
    [line] = result.stderr.splitlines()
    assert f"id {catalog.rich} (organisation 'acme', created " in line
    assert f"id {catalog.same_names_other_org} (organisation 'other org', created " in line
    assert "Add --org with one of 'acme', 'other org' to choose" in line


def test_several_matches_still_list_their_projects_when_organisations_are_unreadable(
        run, api, catalog):
    api.faults[3] = {"status": 403, "body": "no"}  # the organisation list
    result = run("baseline run", "--project", "support bot")
    [line] = result.stderr.splitlines()
    assert result.code == 1 and catalog.rich in line and "(project " in line
    assert "Add --org NAME to choose" in line


def test_a_refused_key_during_the_lookup_exits_1(run, api, env, catalog):
    result = run("baseline run", "--project", "support bot",
                 env=dict(env, BRAINTRUST_API_KEY="sk-other-Hq2Lw9Xe"))
    assert (result.code, len(api.requests)) == (1, 1)
    assert "401" in result.stderr


def test_a_name_without_project_is_a_usage_error_with_no_request(run, api):
    result = run("baseline run")
    assert (result.code, result.stdout, api.requests) == (2, b"", [])
    assert "--project" in result.stderr


@pytest.mark.parametrize("bad_link", [  # more forms: test_records.py, test_usage.py
    "https://www.braintrust.dev/app/acme/p/support%20bot/datasets/golden",
])
def test_a_link_that_is_not_an_experiment_link_is_a_usage_error(run, api, bad_link):
    result = run(bad_link)
    assert (result.code, api.requests) == (2, [])
    assert "not an experiment link" in result.stderr


@pytest.mark.parametrize("args", [["--org", "acme"]])  # every form, as a unit: test_usage.py
def test_project_or_org_with_an_id_or_a_link_is_a_usage_error(run, api, catalog, args):
    assert run(catalog.rich, *args).code == 2
    assert run(link("acme", "support bot", "baseline run"), *args).code == 2
    assert api.requests == []

"""The loopback fake API itself: its events follow the public spec, its paging the notes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from openapi_schema_validator import OAS30Validator, oas30_format_checker

import experiments
import traces
from conftest import ROOT
from fake_api import API_KEY, Experiment, decode_cursor, encode_cursor, page_of

SPEC = ROOT / "tests" / "braintrust-openapi" / "schemas.json"  # vendored: see its README


def validator(schema_name):
    spec = json.loads(Path(SPEC).read_text())
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def post_page(api, experiment_id, body):
    return requests.post(f"{api.url}/v1/experiment/{experiment_id}/fetch", json=body,
                         headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


def every_page(api, experiment_id, limit):
    pages, cursor = [], None
    while True:
        body = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = post_page(api, experiment_id, body)
        page = response.json()
        pages.append(page)
        cursor = page.get("cursor") or response.headers.get("x-bt-cursor")
        if not page["events"] or not cursor:
            return pages


def test_every_event_of_the_rich_experiment_is_a_valid_experiment_event(catalog):
    check = validator("ExperimentEvent")
    rows = experiments.rows_of(catalog.rich_cases)
    for row in rows:
        check.validate(row)
    assert len(rows) > 100


def test_every_event_of_the_benchmark_experiment_is_a_valid_experiment_event():
    check = validator("ExperimentEvent")
    for row in traces.synthetic_experiment("6b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a", 5):
        check.validate(row)


def test_the_validator_rejects_an_event_missing_a_required_field(catalog):
    row = dict(experiments.rows_of(catalog.rich_cases)[0])
    del row["root_span_id"]
    assert not validator("ExperimentEvent").is_valid(row)


def test_pages_are_valid_fetch_responses(api, catalog):
    check = validator("FetchExperimentEventsResponse")
    for page in every_page(api, catalog.rich, 5):
        check.validate(page)


def test_the_rich_experiment_has_each_quirk_of_the_notes(catalog):
    rows = experiments.rows_of(catalog.rich_cases)
    assert any("is_root" not in row and "span_parents" not in row for row in rows)
    assert any(row.get("is_root") and row["span_id"] != row["root_span_id"] for row in rows)
    assert any(row.get("_object_delete") for row in rows)
    assert any(row["span_attributes"]["type"] == "review" for row in rows
               if "span_attributes" in row)
    assert len({row["id"] for row in rows}) < len(rows)  # several versions of some rows


def test_limit_counts_traces_not_rows(api, catalog):
    events = post_page(api, catalog.many, {"limit": 2}).json()["events"]
    assert len({event["root_span_id"] for event in events}) == 2
    assert len(events) > 2


def test_stale_versions_come_on_later_pages(api, catalog):
    pages = every_page(api, catalog.rich, 4)
    first_seen = {}
    for number, page in enumerate(pages):
        for event in page["events"]:
            first_seen.setdefault(event["id"], number)
            if first_seen[event["id"]] < number:
                return
    pytest.fail("no row came again on a later page")


def test_the_last_page_has_a_cursor_and_the_next_is_empty_without_one(api, catalog):
    pages = every_page(api, catalog.rich, 10)
    assert pages[-2]["events"] and pages[-2].get("cursor")
    assert pages[-1] == {"events": []}


def test_the_header_cursor_variant_sends_no_cursor_in_the_body(api, catalog):
    response = post_page(api, catalog.header_cursor, {"limit": 3})
    assert "cursor" not in response.json() and response.headers["x-bt-cursor"]


def test_cursors_hold_plus_and_slash_and_round_trip():
    cursor = encode_cursor(1234)
    assert "+" in cursor and "/" in cursor and decode_cursor(cursor) == 1234


def test_a_wrong_key_gets_401(api, catalog):
    response = requests.post(f"{api.url}/v1/experiment/{catalog.rich}/fetch", json={},
                             headers={"Authorization": "Bearer nope"}, timeout=10)
    assert response.status_code == 401


def test_page_of_stops_before_the_trace_past_the_limit():
    rows = [{"root_span_id": trace} for trace in "aabbaccd"]
    assert page_of(rows, 0, 2) == (rows[:5], 5)
    assert page_of(rows, 5, 2) == (rows[5:8], 8)


def test_experiments_are_served_newest_first():
    rows = [{"_xact_id": "9", "root_span_id": "a"}, {"_xact_id": "10", "root_span_id": "b"}]
    assert [row["_xact_id"] for row in Experiment(rows).rows] == ["10", "9"]

"""Unit tests of the script's pure functions: events to records, output, settings parsing."""
from __future__ import annotations

import json

import pytest

from conftest import load_script

script = load_script()


def event(id, xact, trace="t1", **fields):
    row = {"id": id, "_xact_id": str(xact), "root_span_id": trace, "span_id": id}
    row.update(fields)
    return row


def root(id="r", xact=10, trace="t1", **fields):
    fields = {"input": "in", "output": "out", "expected": "exp", **fields}
    return event(id, xact, trace, is_root=True, span_attributes={"type": "eval"}, **fields)


def score(id, xact, trace="t1", **scores):
    return event(id, xact, trace, is_root=False, span_parents=["r"],
                 span_attributes={"type": "score", "purpose": "scorer"}, scores=scores)


def records(*pages, edited_only=False):
    latest = {}
    for page in pages:
        script.absorb(latest, page)
    return list(script.records_from(latest, edited_only))


# -- roots ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, is_root", [
    ({"is_root": True, "span_parents": ["x"]}, True),
    ({"is_root": False}, False),
    ({"is_root": None}, True),
    ({"is_root": None, "span_parents": ["p"]}, False),
    ({}, True),
    ({"span_parents": None}, True),
    ({"span_parents": []}, True),
    ({"span_parents": ["p"]}, False),
])
def test_is_root_trusts_the_flag_else_looks_for_parents(fields, is_root):
    assert script.is_root_span(fields) is is_root


def test_a_root_need_not_have_its_span_id_equal_to_its_trace_id():
    otel = root(trace="0af7651916cd43dd8448eb211c80319c")
    otel["span_id"] = "b7ad6b7169203331"
    assert [r["root_span_id"] for r in records([otel])] == ["0af7651916cd43dd8448eb211c80319c"]


def test_a_trace_without_a_root_gives_no_record():
    assert records([score("s1", 5, "t9", Accuracy=1.0)]) == []


# -- versions -------------------------------------------------------------------------------

def test_the_newest_version_wins_comparing_xact_ids_as_integers():
    # As strings "9" > "10"; as integers the version 10 is newer.
    newer, older = root(xact=10, expected="new"), root(xact=9, expected="old")
    assert [r["expected"] for r in records([older], [newer])] == ["new"]
    assert [r["expected"] for r in records([newer], [older])] == ["new"]


def test_a_row_whose_newest_version_is_a_deletion_is_gone():
    tombstone = {"id": "r", "_xact_id": "11", "_object_delete": True, "root_span_id": "t1"}
    assert records([tombstone], [root(xact=10)]) == []


def test_a_deleted_score_span_no_longer_counts():
    tombstone = {"id": "s2", "_xact_id": "20", "_object_delete": True, "root_span_id": "t1"}
    page = [root(), score("s1", 5, Accuracy=1.0), score("s2", 6, Factuality=0.5), tombstone]
    assert records(page)[0]["scores"] == {"Accuracy": 1.0}


def test_spans_no_record_shows_are_not_remembered_but_deletions_are():
    task = event("k", 5, is_root=False, span_parents=["r"], span_attributes={"type": "task"})
    tombstone = {"id": "gone", "_xact_id": "9", "_object_delete": True, "root_span_id": "t1"}
    latest = {}
    script.absorb(latest, [root(), task, score("s", 6, Accuracy=1.0), tombstone])
    assert sorted(latest) == ["gone", "r", "s"]


def test_records_come_in_the_order_the_roots_first_arrive():
    a, b = root("a", 30, "ta"), root("b", 20, "tb")
    a_older = root("a", 10, "ta")
    assert [r["root_span_id"] for r in records([a_older, b], [a])] == ["ta", "tb"]


# -- scores ---------------------------------------------------------------------------------

def test_scores_merge_the_scorer_spans_under_the_roots_own():
    page = [root(scores={"Accuracy": 0.25}), score("s1", 5, Accuracy=1.0),
            score("s2", 6, Factuality=0.5)]
    assert records(page)[0]["scores"] == {"Accuracy": 0.25, "Factuality": 0.5}


def test_review_and_llm_spans_do_not_count_as_scores():
    review = event("v", 7, is_root=False, span_parents=["r"],
                   span_attributes={"type": "review"}, scores={"Accuracy": 0.0})
    llm = event("l", 8, is_root=False, span_parents=["r"], span_attributes={"type": "llm"},
                scores={"tokens": 3})
    assert records([root(), review, llm])[0]["scores"] == {}


def test_score_spans_of_another_trace_do_not_count():
    assert records([root(), score("s", 5, "t2", Accuracy=1.0)])[0]["scores"] == {}


def test_a_null_score_is_kept():
    assert records([root(), score("s", 5, Accuracy=None)])[0]["scores"] == {"Accuracy": None}


# -- fields ---------------------------------------------------------------------------------

def test_missing_or_null_metadata_becomes_an_empty_object():
    assert records([root(metadata=None)])[0]["metadata"] == {}
    assert records([root()])[0]["metadata"] == {}


@pytest.mark.parametrize("origin, want", [
    ({"object_type": "dataset", "object_id": "d1", "id": "rec1", "_xact_id": "3"},
     {"dataset_id": "d1", "dataset_record_id": "rec1"}),
    ({"object_type": "experiment", "object_id": "e1", "id": "x"}, None),
    (None, None),
    ("garbage", None),
])
def test_origin_is_the_dataset_link_or_null(origin, want):
    assert script.dataset_origin(origin) == want


# -- edits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("audit_data, edited", [
    ([{"audit_data": {"action": "merge", "path": ["expected", "answer"]}}], True),
    ([{"action": "merge", "path": ["expected"]}], True),
    ([{"audit_data": {"action": "upsert"}}], False),
    ([{"audit_data": {"action": "merge", "path": ["metadata", "expected"]}}], False),
    ([{"audit_data": {"action": "merge", "path": "expected"}}], False),
    ([{"audit_data": {"action": "merge"}}], False),
    ([{"audit_data": None}, None, "x", 3], False),
    (None, False),
    ({"action": "merge", "path": ["expected"]}, False),
])
def test_an_edit_is_a_merge_whose_path_starts_with_expected(audit_data, edited):
    assert script.was_expected_edited(audit_data) is edited


def test_edited_only_keeps_edited_records_and_marks_them_last():
    edit = [{"audit_data": {"action": "merge", "path": ["expected"]}}]
    page = [root("a", 5, "ta", audit_data=edit), root("b", 4, "tb")]
    got = records(page, edited_only=True)
    assert [r["root_span_id"] for r in got] == ["ta"]
    assert list(got[0])[-1] == "edited" and got[0]["edited"] is True


def test_count_records_counts_live_roots_and_edits():
    edit = [{"action": "merge", "path": ["expected"]}]
    latest = {}
    script.absorb(latest, [root("a", 5, "ta", audit_data=edit), root("b", 4, "tb"),
                           score("s", 3, "ta", Accuracy=1.0)])
    assert script.count_records(latest, False) == 2
    assert script.count_records(latest, True) == 1


def test_events_that_are_not_objects_are_skipped():
    assert len(records([None, "x", 3, root()])) == 1


# -- output ---------------------------------------------------------------------------------

SAMPLE = [{"root_span_id": "t", "input": "日本語 🚀", "output": {"a": [1, {"b": None}]},
           "expected": "line\nbreak", "metadata": {}, "scores": {"x": 0.5}, "origin": None},
          {"root_span_id": "u", "input": "", "output": [], "expected": {}, "metadata": {},
           "scores": {}, "origin": None}]


def test_json_output_is_exactly_json_dumps_indented_by_two():
    rendered = b"".join(script.render(iter(SAMPLE), "json"))
    assert rendered == (json.dumps(SAMPLE, indent=2, ensure_ascii=False) + "\n").encode()


def test_json_output_of_no_records_is_an_empty_array():
    assert b"".join(script.render(iter([]), "json")) == b"[]\n"


def test_jsonl_output_is_one_compact_line_per_record():
    lines = b"".join(script.render(iter(SAMPLE), "jsonl")).decode().splitlines()
    assert [json.loads(line) for line in lines] == SAMPLE
    assert lines[0].startswith('{"root_span_id":"t","input":"日本語 🚀"')


def test_a_lone_surrogate_is_kept_as_an_escape_instead_of_failing():
    record = {"input": "bad \ud800 text"}
    out = b"".join(script.render(iter([record]), "jsonl"))
    assert json.loads(out) == record


# -- messages -------------------------------------------------------------------------------

def test_clean_text_removes_escapes_and_control_characters_and_trims():
    text = "\x1b[2J\x1b]8;;http://x\x07link\x1b]8;;\x07 ok\r\n\tnext\u202e" + "y" * 500
    cleaned = script.clean_text(text, limit=40)
    assert cleaned.startswith("link ok next")
    assert len(cleaned) == 40 and cleaned.endswith("…")
    assert not any(ord(c) < 32 or c == "\u202e" for c in cleaned)


def test_clean_text_redacts_the_secret():
    assert script.clean_text("token sk-abc rejected", secret="sk-abc") == \
        "token [redacted] rejected"


# -- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("url, want", [
    ("https://api.braintrust.dev", "https://api.braintrust.dev"),
    ("https://api-eu.braintrust.dev/", "https://api-eu.braintrust.dev"),
    ("https://bt.example.com/api/", "https://bt.example.com/api"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.9.9.9", "http://127.9.9.9"),
    ("http://localhost:3000/", "http://localhost:3000"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_accepted_api_urls(url, want):
    assert script.checked_api_url(url) == want


@pytest.mark.parametrize("url", ["http://api.braintrust.dev", "http://192.168.1.5",
                                 "http://[::2]", "file:///etc/passwd", "https://",
                                 "https://host:port", "https://a.dev?x=1",
                                 "https://k:s@a.dev", "api.braintrust.dev"])
def test_refused_api_urls(url):
    with pytest.raises(script.UsageError):
        script.checked_api_url(url)


# -- the experiment argument ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["0B6C2A4E-5D7F-4E21-9C3A-8F1E2D3C4B5A",
                                  "{0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a}",
                                  "urn:uuid:0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a",
                                  "0b6c2a4e5d7f4e219c3a8f1e2d3c4b5a",
                                  " 0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a\n"])
def test_an_id_in_any_uuid_spelling_becomes_the_canonical_form(text):
    assert script.parse_target(text, None, None) == script.Target(
        "0b6c2a4e-5d7f-4e21-9c3a-8f1e2d3c4b5a")


def test_a_link_gives_its_percent_decoded_names():
    link = "https://app.example.eu/app/My%20Org/p/caf%C3%A9%2Fbot/experiments/run%20%231/?x=1#y"
    assert script.parse_target(link, None, None) == script.Target(None, "My Org", "café/bot",
                                                                   "run #1")


def test_a_name_takes_project_and_org_from_the_flags():
    assert script.parse_target("nightly", " bot ", "acme") == script.Target(
        None, "acme", "bot", "nightly")

"""Unit tests of the script's pure functions: events to records, output, settings parsing."""
from __future__ import annotations

import json
import re

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
    """The records the script prints for these pages (with --edited-only if asked)."""
    latest = {}
    for page in pages:
        script.absorb(latest, page)
    keep = script.case_filter(script.Filters(edited_only=edited_only))
    keys = script.record_keys((), compared=False, edited_only=edited_only)
    return [script.as_record(case, keys, None) for case in script.cases_from(latest)
            if keep(case)]


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


def test_absorbing_a_page_says_by_how_many_the_live_roots_grew():
    tombstone = {"id": "c", "_xact_id": "9", "_object_delete": True, "root_span_id": "tc"}
    latest = {}
    assert script.absorb(latest, [root("a", 5, "ta"), root("b", 4, "tb"), root("c", 3, "tc"),
                                  score("s", 3, "ta", Accuracy=1.0)]) == 3
    assert script.absorb(latest, [tombstone, root("b", 1, "tb")]) == -1  # b's is older


@pytest.mark.parametrize("spill_after", [1 << 30, 0], ids=["memory", "disk"])
def test_the_store_counts_live_roots_as_pages_come_and_rebuilds_a_traces_cases(spill_after):
    store = script.Store(spill_after, with_costs=False)
    try:
        assert store.add([root("a", 5, "ta"), root("b", 4, "tb")], 100) and store.live == 2
        touched = store.add([{"id": "a", "_xact_id": "9", "_object_delete": True,
                              "root_span_id": "ta"}, score("s", 3, "tb", Accuracy=1.0)], 100)
        assert store.live == 1
        [case] = store.cases_of(touched)
        assert (case["root_span_id"], case["scores"]) == ("tb", {"Accuracy": 1.0})
    finally:
        store.close()


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


def test_junit_text_keeps_exactly_the_characters_xml_1_0_allows():
    # XML 1.0, production [2]: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD]
    # | [#x10000-#x10FFFF]. Every code point, at once.
    allowed = [(0x9, 0x9), (0xA, 0xA), (0xD, 0xD), (0x20, 0xD7FF), (0xE000, 0xFFFD),
               (0x10000, 0x10FFFF)]
    every = "".join(map(chr, range(0x110000)))
    kept = "".join(chr(n) for start, end in allowed for n in range(start, end + 1))
    assert script.xml_text(every) == kept


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


KEY = "sk-test-Zq8vR2mN4pL6xT0wY3bC5dF7gH9jK1"


def test_a_cut_that_leaves_the_start_of_a_known_key_redacts_that_start():
    redact = script.Redactor()
    redact.add(KEY)
    assert redact.cut("error: " + KEY[:20] + "…", 20) == "error: [redacted]…"
    assert redact.cut("error: " + KEY[:3] + "tail", 11) == "error: sk-…"  # under 4: kept


def test_a_key_split_by_terminal_escapes_is_redacted_once_they_are_gone():
    script.REDACT.add(KEY)
    text = KEY[:10] + "\x1b[0m" + KEY[10:]
    assert script.clean_text(f"token {text} refused") == "token [redacted] refused"


@pytest.mark.parametrize("text", ["sk-A1b2C3d4E5f6G7h8I9j0K1l2M3n4", "bt-st-A1b2C3d4E5f6G7h8I9j0",
                                  "sk_A1b2C3d4E5f6G7h8I9j0K1l2M3n4"])
def test_anything_shaped_like_a_braintrust_key_is_redacted(text):
    assert script.Redactor()(f"unrecognized arguments: {text} x") == (
        "unrecognized arguments: [redacted] x")


@pytest.mark.parametrize("text", ["sk-short", "task-A1b2C3d4E5f6G7h8I9j0K1l2", "0b6c2a4e-5d7f-4e21"])
def test_what_is_not_shaped_like_a_key_stays(text):
    assert script.Redactor()(text) == text


def test_gzip_members_back_to_back_unpack_as_one_body():
    import gzip
    assert script.unpacked(gzip.compress(b"ab") + gzip.compress(b"cd"), 10) == b"abcd"


def test_unpacking_past_the_limit_stops_before_making_it_all():
    import gzip
    with pytest.raises(script.TooLarge):
        script.unpacked(gzip.compress(b" " * 10_000_000), 1000)


def test_a_truncated_gzip_body_is_an_error_not_a_short_body():
    import gzip, zlib
    with pytest.raises(zlib.error):
        script.unpacked(gzip.compress(b"x" * 1000)[:-10], 10_000)


@pytest.mark.parametrize("value, number", [(0.5, True), (10 ** 300, True), (float("nan"), False),
                                           (float("inf"), False), (-float("inf"), False),
                                           (10 ** 400, False), (True, False), ("1", False)])
def test_is_number_means_usable_in_arithmetic(value, number):
    assert script.is_number(value) is number


def test_strict_json_turns_nan_and_infinities_into_null_but_not_inside_strings():
    strict = script.StrictJson()
    text = '{"a": NaN, "b": [Infinity, -Infinity], "c": "NaN \\" Infinity", "d": 1}'
    assert strict(text) == '{"a": null, "b": [null, null], "c": "NaN \\" Infinity", "d": 1}'
    assert strict.nulls == 3


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


# -- analysis: fields, filters, truncation (issue 9) ------------------------------------------

def test_include_fields_come_in_printing_order_and_all_means_every_one():
    assert script.include_fields(["metrics,id", " tags "]) == ("id", "tags", "metrics")
    assert script.include_fields(["all"]) == ("id", "span_id", "created", "tags", "error",
                                               "span_errors", "comments", "edits", "metrics")
    assert script.include_fields(["error"]) == ("error", "span_errors")  # and the spans'
    assert script.include_fields(None) == ()


def test_an_unknown_include_field_is_refused():
    with pytest.raises(script.UsageError, match="'cost'"):
        script.include_fields(["id,cost"])


@pytest.mark.parametrize("text, want", [
    ("Exact Match<1", ("Exact Match", "<", 1.0)),
    (" Exact Match >= 0.5 ", ("Exact Match", ">=", 0.5)),
    ("a<=-2", ("a", "<=", -2.0)),
    ("x==1e-3", ("x", "==", 0.001)),
    ("x!=0", ("x", "!=", 0.0)),
    ("x>1", ("x", ">", 1.0)),
])
def test_a_score_expression_is_name_operator_number(text, want):
    assert tuple(script.score_test(text)) == want


@pytest.mark.parametrize("text", ["x", "<1", "x<", "x<a", "x<inf", "x<1 2", ""])
def test_a_malformed_score_expression_is_refused(text):
    with pytest.raises(script.argparse.ArgumentTypeError, match="NAME OP NUMBER"):
        script.score_test(text)


def test_a_single_equals_sign_is_refused_with_the_double_one_suggested():
    with pytest.raises(script.argparse.ArgumentTypeError, match='write == .* "x==1"'):
        script.score_test("x=1")


@pytest.mark.parametrize("value", [None, "0.5", True])
def test_a_score_that_is_not_a_number_fails_every_comparison(value):
    test = script.score_test("x!=7")
    assert script.passes_score({"x": value}, test) is False
    assert script.passes_score({}, test) is False


def test_truncated_cuts_strings_longer_than_n_and_says_how_many_characters_went():
    value = {"long key stays": ["12345", "123456", 1234567], "s": "日本語 🚀!"}
    assert script.truncated(value, 5) == {"long key stays": ["12345", "12345…[+1 chars]",
                                                             1234567],
                                          "s": "日本語 🚀…[+1 chars]"}


def test_record_keys_put_include_then_the_comparison_then_edited_last():
    options = script.parse_args(["x", "--include", "error,id", "--baseline", "auto",
                                 "--edited-only"])
    assert script.record_keys(options.include, options.baseline is not None,
                              options.filters.edited_only) == [
        "root_span_id", "input", "output", "expected", "metadata", "scores", "origin",
        "id", "error", "span_errors", "baseline", "diff", "lost_scores", "new_error", "status",
        "edited"]


def test_a_span_without_a_token_total_counts_prompt_and_completion():
    llm = {"span_attributes": {"type": "llm"}, "error": None,
           "metrics": {"prompt_tokens": 120, "completion_tokens": 9}}
    assert script.span_cost(llm) == script.Cost(1, 120, 9, 129, 0)
    llm["metrics"]["tokens"] = 100  # a total given is taken as it is
    assert script.span_cost(llm) == script.Cost(1, 120, 9, 100, 0)


def test_llm_costs_count_only_numbers_and_errors_count_on_any_span():
    llm = {"span_attributes": {"type": "llm"}, "error": "x",
           "metrics": {"prompt_tokens": 5, "completion_tokens": "7", "tokens": True}}
    assert script.span_cost(llm) == script.Cost(1, 5, 0, 5, 1)  # tokens: 5 + none
    assert script.span_cost({"span_attributes": {"type": "tool"}, "error": None}) == \
        script.Cost(0, 0, 0, 0, 0)


# -- baseline (issue 10) ----------------------------------------------------------------------

def case(input="q", origin=None, scores=None, output="o", trace="t", error=None):
    return {"root_span_id": trace, "input": input, "output": output, "origin": origin,
            "scores": scores or {}, "error": error}


def test_the_key_is_the_dataset_record_else_the_input_with_sorted_keys():
    by_row = {"dataset_id": "d", "dataset_record_id": "r1"}
    assert script.case_key(case(origin=by_row)) == script.case_key(case("other", by_row))
    assert script.case_key(case({"a": 1, "b": [2]})) == script.case_key(case({"b": [2], "a": 1}))
    assert script.case_key(case("r1")) != script.case_key(case(origin=by_row))


def trial(scores, trace="t", output="o", errored=False):
    return (trace, output, scores, errored)


def test_trials_of_the_baseline_average_per_score_and_keep_the_first():
    found = script.baseline_case([trial({"a": 1.0, "b": None}, "first"),
                                  trial({"a": 0.0, "c": 0.5}, "second", "o2")])
    assert script.comparison(case(scores={"a": 0.5, "c": 0.5}), found) == {
        "baseline": {"root_span_id": "first", "output": "o",
                     "scores": {"a": 0.5, "c": 0.5}, "count": 2},
        "diff": {"a": 0.0, "c": 0.0}, "lost_scores": [], "new_error": False,
        "status": "unchanged"}


@pytest.mark.parametrize("now, status", [(0.5 - 2e-9, "regressed"), (0.5 - 1e-10, "unchanged"),
                                         (0.5 + 2e-9, "improved"), (0.5, "unchanged")])
def test_a_status_ignores_differences_within_1e_9(now, status):
    found = script.baseline_case([trial({"a": 0.5})])
    assert script.comparison(case(scores={"a": now}), found)["status"] == status


@pytest.mark.parametrize("now, status", [(0.45, "unchanged"), (0.44, "regressed"), (0.43, "regressed"),
                                         (0.51, "improved")])
def test_min_drop_makes_a_smaller_fall_no_regression(now, status):
    found = script.baseline_case([trial({"a": 0.5})])
    assert script.comparison(case(scores={"a": now}), found, min_drop=0.06)["status"] == status


def test_one_regressed_score_outweighs_improved_ones():
    found = script.baseline_case([trial({"a": 0.5, "b": 0.5})])
    assert script.comparison(case(scores={"a": 1.0, "b": 0.4}), found)["status"] == "regressed"


def test_an_unmatched_case_is_new():
    assert script.comparison(case("q"), None) == {"baseline": None, "diff": {},
                                                  "lost_scores": [], "new_error": False,
                                                  "status": "new"}


@pytest.mark.parametrize("now", [{}, {"a": None}, {"a": float("nan")}, {"a": "1"}])
def test_a_score_that_was_a_number_and_is_none_now_is_lost_and_a_regression(now):
    found = script.baseline_case([trial({"a": 1.0, "b": 0.5})])
    compared = script.comparison(case(scores={**now, "b": 0.9}), found)
    assert (compared["lost_scores"], compared["diff"], compared["status"]) == (
        ["a"], {"b": pytest.approx(0.4)}, "regressed")


def test_an_error_the_baseline_did_not_raise_is_a_regression_whatever_the_scores():
    found = script.baseline_case([trial({"a": 1.0})])
    compared = script.comparison(case(scores={"a": 1.0}, error="boom"), found)
    assert (compared["new_error"], compared["status"]) == (True, "regressed")


def test_an_error_the_baseline_raised_too_is_no_new_error():
    found = script.baseline_case([trial({"a": 1.0}, errored=True)])
    compared = script.comparison(case(scores={"a": 1.0}, error="boom"), found)
    assert (compared["new_error"], compared["status"]) == (False, "unchanged")


def test_an_error_is_new_when_any_baseline_trial_ran_clean():
    found = script.baseline_case([trial({"a": 1.0}, errored=True), trial({"a": 1.0})])
    assert script.comparison(case(scores={"a": 1.0}, error="x"), found)["new_error"] is True


# -- paging: where the next cursor travels (issue 8) --------------------------------------------

@pytest.mark.parametrize("body, final, redirects, want", [
    ({"cursor": "b"}, {"x-bt-cursor": "h", "x-amz-meta-bt_cursor": "m"}, [{"x-bt-cursor": "r"}], "b"),
    ({}, {"x-bt-cursor": "h", "x-amz-meta-bt_cursor": "m"}, [{"x-bt-cursor": "r"}], "h"),
    ({}, {"x-amz-meta-bt_cursor": "m"}, [{"x-bt-cursor": "r"}], "m"),
    ({}, {}, [{}, {"x-bt-cursor": "r"}], "r"),
    ({}, {}, [], None),
])
def test_the_next_cursor_is_the_bodys_then_the_answers_headers_then_a_redirects(
        body, final, redirects, want):
    answer = script.Answer(200, "OK", final, b"", 1, tuple(redirects))
    assert script.next_cursor(body, answer) == want


# -- settings from the environment (issues 8 and 11) ------------------------------------------

def settings_with(monkeypatch, tmp_path, **environ):
    monkeypatch.chdir(tmp_path)  # no .env around
    return script.read_settings({"BRAINTRUST_API_KEY": "sk-unit", **environ})


def test_retries_and_requests_in_flight_default_to_5_and_2(monkeypatch, tmp_path):
    settings = settings_with(monkeypatch, tmp_path)
    assert (settings.retries, settings.max_in_flight) == (5, 2)


@pytest.mark.parametrize("value", ["0", "7", "100"])
def test_num_retries_takes_a_whole_number_from_0_to_100(monkeypatch, tmp_path, value):
    assert settings_with(monkeypatch, tmp_path, BRAINTRUST_NUM_RETRIES=value).retries == int(value)


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "101", "1e2"])
def test_a_bad_num_retries_is_refused(monkeypatch, tmp_path, value):
    with pytest.raises(script.UsageError, match="BRAINTRUST_NUM_RETRIES"):
        settings_with(monkeypatch, tmp_path, BRAINTRUST_NUM_RETRIES=value)


def test_the_deadline_defaults_to_300_s_and_the_spill_to_48_mb(monkeypatch, tmp_path):
    settings = settings_with(monkeypatch, tmp_path)
    assert (settings.deadline, settings.spill_after) == (300.0, 48 * 2 ** 20)
    settings = settings_with(monkeypatch, tmp_path, BRAINTRUST_HTTP_DEADLINE="2.5",
                             BRAINTRUST_SPILL_MB="0.5")
    assert (settings.deadline, settings.spill_after) == (2.5, 2 ** 19)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_deadline_is_refused(monkeypatch, tmp_path, value):
    with pytest.raises(script.UsageError, match="BRAINTRUST_HTTP_DEADLINE must be a number"):
        settings_with(monkeypatch, tmp_path, BRAINTRUST_HTTP_DEADLINE=value)


@pytest.mark.parametrize("value", ["-1", "lots", "inf", "nan"])
def test_a_bad_spill_setting_is_refused(monkeypatch, tmp_path, value):
    with pytest.raises(script.UsageError, match="BRAINTRUST_SPILL_MB must be a number"):
        settings_with(monkeypatch, tmp_path, BRAINTRUST_SPILL_MB=value)


@pytest.mark.parametrize("value", ["0", "3", "two", "-1", "1.0"])
def test_max_in_flight_is_1_or_2(monkeypatch, tmp_path, value):
    assert settings_with(monkeypatch, tmp_path, BRAINTRUST_MAX_IN_FLIGHT="1").max_in_flight == 1
    with pytest.raises(script.UsageError, match="BRAINTRUST_MAX_IN_FLIGHT"):
        settings_with(monkeypatch, tmp_path, BRAINTRUST_MAX_IN_FLIGHT=value)


def test_the_report_links_to_the_default_app_only_for_the_default_api(monkeypatch, tmp_path):
    assert settings_with(monkeypatch, tmp_path).app_url == "https://www.braintrust.dev"
    assert settings_with(monkeypatch, tmp_path,
                         BRAINTRUST_API_URL="https://bt.example.com").app_url is None
    assert settings_with(monkeypatch, tmp_path, BRAINTRUST_API_URL="https://bt.example.com",
                         BRAINTRUST_APP_URL="https://app.example.com/bt/").app_url == (
        "https://app.example.com/bt")


@pytest.mark.parametrize("value", ["javascript:alert(1)", "www.braintrust.dev",
                                   "https://a.test/x)(y", "https://a.test/ x", "https://"])
def test_an_app_url_that_cannot_go_into_a_markdown_link_is_refused(monkeypatch, tmp_path,
                                                                   value):
    with pytest.raises(script.UsageError, match="BRAINTRUST_APP_URL must be the web app"):
        settings_with(monkeypatch, tmp_path, BRAINTRUST_APP_URL=value)


def test_the_reports_link_reads_back_as_the_names_it_was_made_of():
    names = ("acme/eu labs", "p (x) <y>?", "run #1 | 50%")
    title = script.experiment_title("0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                    script.Names(names[2], names[1], names[0]),
                                    "https://www.braintrust.dev")
    link = re.fullmatch(r"\[.*\]\((\S+)\) \(`[0-9a-f-]+`\)", title).group(1)
    assert script.parse_target(link, None, None) == script.Target(None, *names)


@pytest.mark.parametrize("suffix", ["", "/", "?r=abc&s=def", "#row-3", "/?c=x#y"])
def test_a_link_may_end_in_a_slash_query_or_fragment(suffix):
    link = "https://www.braintrust.dev/app/acme/p/support%20bot/experiments/baseline%20run"
    assert script.parse_target(link + suffix, None, None) == script.Target(
        None, "acme", "support bot", "baseline run")


@pytest.mark.parametrize("link", [
    "https://www.braintrust.dev/app/acme/p/support%20bot",
    "https://www.braintrust.dev/app/acme/p/support%20bot/experiments/",
    "https://www.braintrust.dev/app/acme/p/support%20bot/datasets/golden",
    "https://www.braintrust.dev/app/acme/p/%20/experiments/x",
])
def test_a_link_that_is_not_an_experiment_link_is_refused(link):
    with pytest.raises(script.UsageError, match="not an experiment link"):
        script.parse_target(link, None, None)


@pytest.mark.parametrize("text", ["not-a-uuid", "../../v1/project", " "])
def test_an_experiment_that_is_no_id_link_or_named_name_is_refused(text):
    with pytest.raises(script.UsageError):
        script.parse_target(text, None, None)

"""The experiments the end-to-end tests fetch, with the records each must give.

`rich` holds one case for each quirk in API-NOTES.md. Its expected records are written out
here by hand from how the cases were built, not computed by the code under test.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from traces import DATASET_ID, Ids, deleted, edited_in_ui, eval_trace, root_of

FRANCE = "What is the capital of France?"


def rich(experiment_id: str) -> Dict[str, List[Dict[str, Any]]]:
    """Rows per case name; edits and deletions come last, as the newest transactions."""
    ids = Ids(seed=11)
    cases: Dict[str, List[Dict[str, Any]]] = {}
    cases["france"] = eval_trace(
        ids, experiment_id, input=FRANCE, output={"answer": "Paris"},
        expected={"answer": "Paris"}, metadata={"keysChecked": ["answer"]},
        scores={"Exact Match": 1.0, "Accuracy": 1.0}, dataset_record_id=ids.uuid())
    cases["otel"] = eval_trace(
        ids, experiment_id, input="2 + 2?", output={"answer": "5"}, expected={"answer": "4"},
        scores={"Exact Match": 0.0, "Accuracy": 0.0}, root_scores={"Accuracy": 1.0},
        origin={"object_type": "experiment", "object_id": ids.uuid(), "id": ids.uuid()},
        otel=True)
    cases["legacy"] = eval_trace(
        ids, experiment_id, input="Qu'est-ce que « ça » ? 日本語 🚀",
        output={"answer": "ça 🚀"}, expected={"answer": "ça"}, metadata={"lang": "fr"},
        scores={"Exact Match": 0.0}, legacy=True, review=True)
    for name in ("edited", "edited_flat", "rescored", "metadata_edit", "deleted"):
        cases[name] = eval_trace(
            ids, experiment_id, input=f"input of {name}", output={"answer": "old"},
            expected={"answer": "old"}, scores={"Exact Match": 1.0, "Accuracy": 1.0},
            dataset_record_id=ids.uuid())
    cases["rootless"] = eval_trace(
        ids, experiment_id, input="lost", output=None, expected=None,
        scores={"Exact Match": 1.0}, with_root=False)
    cases["score_deleted"] = eval_trace(
        ids, experiment_id, input="score deleted", output="a", expected="a",
        scores={"Exact Match": 1.0, "Accuracy": 1.0})
    cases["null_score"] = eval_trace(
        ids, experiment_id, input="no score", output="b", expected="c",
        scores={"Exact Match": None})
    for n in range(15):
        cases[f"plain-{n}"] = eval_trace(
            ids, experiment_id, input=f"question {n}", output={"answer": n},
            expected={"answer": n}, scores={"Exact Match": 1.0},
            dataset_record_id=ids.uuid())
    cases["edited"].append(edited_in_ui(ids, root_of(cases["edited"]), "expected",
                                        {"answer": "new"}, path=["expected", "answer"]))
    cases["edited_flat"].append(edited_in_ui(ids, root_of(cases["edited_flat"]), "expected",
                                             {"answer": "flat"}, nested=False))
    rescored = root_of(cases["rescored"])
    cases["rescored"].append(edited_in_ui(ids, rescored, "scores", {"Accuracy": 0.5}))
    cases["metadata_edit"].append(edited_in_ui(ids, root_of(cases["metadata_edit"]),
                                               "metadata", {"note": "checked"},
                                               path=["metadata", "note"]))
    cases["deleted"].append(deleted(ids, root_of(cases["deleted"])))
    accuracy = next(row for row in cases["score_deleted"]
                    if row["span_attributes"]["name"] == "Accuracy")
    cases["score_deleted"].append(deleted(ids, accuracy))
    return cases


# The API sends the newest rows first: the four roots edited last (newest edit first), then
# the cases, newest first.
RICH_ORDER = (["metadata_edit", "rescored", "edited_flat", "edited"]
              + [f"plain-{n}" for n in reversed(range(15))]
              + ["null_score", "score_deleted", "legacy", "otel", "france"])
EDITED = ["edited", "edited_flat"]


def rows_of(cases: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    return [row for rows in cases.values() for row in rows]


def as_json(records: List[Dict[str, Any]]) -> bytes:
    """The bytes of records in the default format: one array indented by two, UTF-8."""
    return (json.dumps(records, indent=2, ensure_ascii=False) + "\n").encode()


def is_json_of(data: bytes, records: List[Dict[str, Any]]) -> bool:
    """`data` holds exactly `records` (as the generator knows them), in the default format
    (key order within a record aside, which follows the order rows arrive in)."""
    printed = json.loads(data)
    return printed == records and data == as_json(printed)


# -- paging, as the fake serves it (newest first, `limit` traces a page) -------------------

def pages_of(rows: List[Dict[str, Any]], limit: int) -> List[List[Dict[str, Any]]]:
    from fake_api import page_of  # the fake's own paging: what the world serves
    rows = sorted(rows, key=lambda row: int(row["_xact_id"]), reverse=True)
    pages, offset = [], 0
    while offset < len(rows):
        page, offset = page_of(rows, offset, limit)
        pages.append(page)
    return pages


def live_cases_after(rows: List[Dict[str, Any]], limit: int, pages: int) -> int:
    """How many cases the first `pages` pages give: rows whose newest version so far is a
    root (is_root true, or no parents on a row without is_root) and not a deletion."""
    newest: Dict[str, Dict[str, Any]] = {}
    for page in pages_of(rows, limit)[:pages]:
        for row in page:
            known = newest.get(row["id"])
            if known is None or int(row["_xact_id"]) > int(known["_xact_id"]):
                newest[row["id"]] = row
    return sum(1 for row in newest.values() if not row.get("_object_delete")
               and row.get("is_root", not row.get("span_parents")))


def page_where_root_arrives(rows: List[Dict[str, Any]], limit: int, root_span_id: str) -> int:
    """The number (from 1) of the page that brings the first version of this trace's root."""
    for number, page in enumerate(pages_of(rows, limit), 1):
        if any(row["root_span_id"] == root_span_id and row.get("is_root", not row.get(
                "span_parents")) for row in page):
            return number
    raise ValueError(f"no root of {root_span_id}")


def expected_record(cases: Dict[str, List[Dict[str, Any]]], name: str) -> Dict[str, Any]:
    """The record each case must give, from how `rich` built it."""
    root = root_of(cases[name])
    origin = None
    if (root.get("origin") or {}).get("object_type") == "dataset":
        origin = {"dataset_id": DATASET_ID, "dataset_record_id": root["origin"]["id"]}
    record = {
        "root_span_id": root["root_span_id"],
        "input": root["input"],
        "output": root["output"],
        "expected": root["expected"],
        "metadata": root["metadata"] if root["metadata"] is not None else {},
        "scores": {"Exact Match": 1.0, "Accuracy": 1.0},
        "origin": origin,
    }
    special = {
        "otel": {"scores": {"Exact Match": 0.0, "Accuracy": 1.0}},
        "legacy": {"scores": {"Exact Match": 0.0}},
        "edited": {"expected": {"answer": "new"}},
        "edited_flat": {"expected": {"answer": "flat"}},
        "rescored": {"scores": {"Exact Match": 1.0, "Accuracy": 0.5}},
        "metadata_edit": {"metadata": {"note": "checked"}},
        "score_deleted": {"scores": {"Exact Match": 1.0}},
        "null_score": {"scores": {"Exact Match": None}},
    }
    if name.startswith("plain-"):
        record["scores"] = {"Exact Match": 1.0}
    record.update(special.get(name, {}))
    return record


def versions(experiment_id: str) -> Dict[str, List[Dict[str, Any]]]:
    """Versions that must be told apart by integer `_xact_id`: the transaction ids cross
    from 18 to 19 digits, so as strings the older versions would sort after the newer.
    "rescored" logs its scorer again (Accuracy 0.0, then 1.0); "crossing" has its expected
    edited in the UI. Both newer versions come first, the older ones pages later."""
    ids = Ids(seed=23, first_xact=999_999_999_999_999_990)
    cases: Dict[str, List[Dict[str, Any]]] = {}
    cases["crossing"] = eval_trace(ids, experiment_id, input="crossing", output="x",
                                   expected="old", scores={"Accuracy": 1.0})
    cases["rescored"] = eval_trace(ids, experiment_id, input="rescored", output="y",
                                   expected="y", scores={"Accuracy": 0.0})
    for n in range(3):
        cases[f"plain-{n}"] = eval_trace(ids, experiment_id, input=f"plain {n}", output=n,
                                         expected=n, scores={"Accuracy": 1.0})
    scorer = next(row for row in cases["rescored"] if row["span_attributes"]["type"] == "score")
    rescored = dict(scorer, _xact_id=ids.xact(), scores={"Accuracy": 1.0},
                    output={"score": 1.0})
    cases["rescored"].append(rescored)
    cases["crossing"].append(edited_in_ui(ids, root_of(cases["crossing"]), "expected", "new"))
    return cases


def versions_records(cases: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The records `versions` must give, in the order the roots first arrive (the edited
    root is the newest row of all), written out from how the cases were built."""
    def record(name: str, input: Any, output: Any, expected: Any) -> Dict[str, Any]:
        return {"root_span_id": root_of(cases[name])["root_span_id"], "input": input,
                "output": output, "expected": expected, "metadata": {},
                "scores": {"Accuracy": 1.0}, "origin": None}
    return [record("crossing", "crossing", "x", "new"),
            *(record(f"plain-{n}", f"plain {n}", n, n) for n in (2, 1, 0)),
            record("rescored", "rescored", "y", "y")]


# -- analysis (issue 9): errors, tags, comments, llm costs ----------------------------------

def _spans(rows: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [row for row in rows if row.get("span_attributes", {}).get("type") == kind]


def analysis(experiment_id: str) -> Dict[str, List[Dict[str, Any]]]:
    """One case per thing an agent asks of a run: which failed (on the root, or only in a
    child span), what it cost (llm spans and their tokens), its tags and comments, strings
    long enough to truncate. ANALYSIS_TRUTH says what each must give."""
    ids = Ids(seed=31)
    cases: Dict[str, List[Dict[str, Any]]] = {}

    def case(name: str, scores: Dict[str, Optional[float]], **fields: Any) -> List[Dict]:
        rows = eval_trace(ids, experiment_id, input=fields.pop("input", f"input of {name}"),
                          output=fields.pop("output", f"output of {name}"),
                          expected=fields.pop("expected", f"expected of {name}"),
                          metadata=fields.pop("metadata", None), scores=scores,
                          dataset_record_id=ids.uuid(), tool_calls=fields.pop("tool_calls", 0))
        root_of(rows).update(fields)
        cases[name] = rows
        return rows

    case("ok", {"Exact Match": 1.0, "Accuracy": 0.9}, tags=["smoke"],
         output='He said "hi", then\nleft')  # a CSV cell that needs quoting
    failed = case("failed", {"Exact Match": 0.0}, output=None, tags=["smoke", "slow"],
                  error="TimeoutError: model took too long")
    _spans(failed, "llm")[0]["error"] = "rate limited"
    child_error = case("child_error", {"Exact Match": 0.5, "Accuracy": 0.2}, tool_calls=1)
    _spans(child_error, "tool")[0]["error"] = "search failed"
    two_llm = case("two_llm", {"Exact Match": 1.0, "Accuracy": None},
                   comments=[{"text": "looks wrong", "user": "ana"}])
    second = dict(_spans(two_llm, "llm")[0], id=ids.uuid(), span_id=ids.uuid(),
                  _xact_id=ids.xact(),
                  metrics={"prompt_tokens": 300, "completion_tokens": 50, "tokens": 350})
    two_llm.insert(-1, second)
    # Its Accuracy scorer crashed: no score, the error on the scorer's span.
    next(row for row in _spans(two_llm, "score")
         if row["span_attributes"]["name"] == "Accuracy")["error"] = "scorer crashed"
    partial = case("partial_metrics", {"Exact Match": 0.0, "Accuracy": 0.0},
                   metrics={"start": 1763633700.0})
    _spans(partial, "llm")[0]["metrics"] = {"prompt_tokens": 50}
    case("error_object", {"Exact Match": 0.0}, tags=["slow"],
         error={"message": "bad request", "type": "ValueError"})
    case("long_text", {"Exact Match": 1.0}, input="a" * 10, output="b" * 11,
         expected={"text": "c" * 12, "n": 12345678901},
         metadata={"note": "d" * 11, "a_key_longer_than_ten": ["e" * 10, "f" * 13]})
    deleted_llm = case("deleted_llm", {"Exact Match": 1.0})
    case("empty_error", {"Exact Match": 0.0}, error="")  # not null: an error all the same
    case("edited_error", {"Exact Match": 0.0}, error="boom")
    case("edited_ok", {"Exact Match": 1.0}, tags=["smoke"])
    deleted_llm.append(deleted(ids, _spans(deleted_llm, "llm")[0]))
    for name in ("edited_error", "edited_ok"):
        cases[name].append(edited_in_ui(ids, root_of(cases[name]), "expected", f"fixed {name}"))
    return cases


# Newest root first: the two edits, then the cases, newest first.
ANALYSIS_ORDER = ["edited_ok", "edited_error", "empty_error", "deleted_llm", "long_text", "error_object",
                  "partial_metrics", "two_llm", "child_error", "failed", "ok"]

_RUN = {"start": 1763633700.25, "end": 1763633702.5, "duration": 2.25}
_ONE_LLM = {"llm_calls": 1, "prompt_tokens": 120, "completion_tokens": 9, "tokens": 129}

# What each case of `analysis` must give, written out by hand from how it was built.
ANALYSIS_TRUTH: Dict[str, Dict[str, Any]] = {
    "ok": {"scores": {"Exact Match": 1.0, "Accuracy": 0.9}, "tags": ["smoke"], "error": None,
           "comments": [], "edited": False, "metrics": {**_RUN, **_ONE_LLM, "errors": 0}},
    "failed": {"scores": {"Exact Match": 0.0}, "tags": ["smoke", "slow"],
               "error": "TimeoutError: model took too long", "comments": [], "edited": False,
               "metrics": {**_RUN, **_ONE_LLM, "errors": 2},
               "span_errors": [{"name": "Chat Completion", "type": "llm",
                                "error": "rate limited"}]},
    "child_error": {"scores": {"Exact Match": 0.5, "Accuracy": 0.2}, "tags": [], "error": None,
                    "comments": [], "edited": False,
                    "metrics": {**_RUN, **_ONE_LLM, "errors": 1},
                    "span_errors": [{"name": "search_0", "type": "tool",
                                     "error": "search failed"}]},
    "two_llm": {"scores": {"Exact Match": 1.0, "Accuracy": None}, "tags": [], "error": None,
                "comments": [{"text": "looks wrong", "user": "ana"}], "edited": False,
                "metrics": {**_RUN, "llm_calls": 2, "prompt_tokens": 420,
                            "completion_tokens": 59, "tokens": 479, "errors": 1},
                "span_errors": [{"name": "Accuracy", "type": "score",
                                 "error": "scorer crashed"}]},
    "partial_metrics": {"scores": {"Exact Match": 0.0, "Accuracy": 0.0}, "tags": [],
                        "error": None, "comments": [], "edited": False,
                        "metrics": {"start": 1763633700.0, "end": None, "duration": None,
                                    "llm_calls": 1, "prompt_tokens": 50,
                                    # no tokens logged: prompt + completion, 50 + none
                                    "completion_tokens": 0, "tokens": 50, "errors": 0}},
    "error_object": {"scores": {"Exact Match": 0.0}, "tags": ["slow"],
                     "error": {"message": "bad request", "type": "ValueError"},
                     "comments": [], "edited": False,
                     "metrics": {**_RUN, **_ONE_LLM, "errors": 1}},
    "long_text": {"scores": {"Exact Match": 1.0}, "tags": [], "error": None, "comments": [],
                  "edited": False, "metrics": {**_RUN, **_ONE_LLM, "errors": 0}},
    "deleted_llm": {"scores": {"Exact Match": 1.0}, "tags": [], "error": None,
                    "comments": [], "edited": False,
                    "metrics": {**_RUN, "llm_calls": 0, "prompt_tokens": 0,
                                "completion_tokens": 0, "tokens": 0, "errors": 0}},
    "empty_error": {"scores": {"Exact Match": 0.0}, "tags": [], "error": "", "comments": [],
                    "edited": False, "metrics": {**_RUN, **_ONE_LLM, "errors": 1}},
    "edited_error": {"scores": {"Exact Match": 0.0}, "tags": [], "error": "boom",
                     "comments": [], "edited": True,
                     "metrics": {**_RUN, **_ONE_LLM, "errors": 1}},
    "edited_ok": {"scores": {"Exact Match": 1.0}, "tags": ["smoke"], "error": None,
                  "comments": [], "edited": True, "metrics": {**_RUN, **_ONE_LLM, "errors": 0}},
}


def span_errors_of(name: str) -> List[Dict[str, Any]]:
    """The errors of an `analysis` case's child spans (none for most)."""
    return ANALYSIS_TRUTH[name].get("span_errors", [])


def failed_in_analysis(name: str) -> bool:
    """Whether any span of the case raised an error (--errors-only keeps it)."""
    return ANALYSIS_TRUTH[name]["error"] is not None or bool(span_errors_of(name))


def analysis_record(cases: Dict[str, List[Dict[str, Any]]], name: str) -> Dict[str, Any]:
    """The default record of an `analysis` case: the root's newest fields, the truth's scores."""
    root = max((row for row in cases[name] if row.get("is_root")),
               key=lambda row: int(row["_xact_id"]))
    return {"root_span_id": root["root_span_id"], "input": root["input"],
            "output": root["output"], "expected": root["expected"],
            "metadata": root["metadata"] if root["metadata"] is not None else {},
            "scores": ANALYSIS_TRUTH[name]["scores"],
            "origin": {"dataset_id": DATASET_ID, "dataset_record_id": root["origin"]["id"]}}


# -- a run and its baseline (issue 10) ------------------------------------------------------

def pair(current_id: str, baseline_id: str
         ) -> Tuple[Dict[str, List[Dict[str, Any]]], Dict[str, List[Dict[str, Any]]]]:
    """Two runs over one dataset: the current one and its baseline, case by case as
    PAIR_TRUTH describes. Cases share their dataset record id, except `by_input`, which has
    no origin and is matched on its input (its keys in another order in the baseline)."""
    rows_ids, now_ids, then_ids = Ids(seed=41), Ids(seed=43), Ids(seed=47)
    current: Dict[str, List[Dict[str, Any]]] = {}
    baseline: Dict[str, List[Dict[str, Any]]] = {}

    def case(name: str, now: Optional[Dict[str, Any]], *then: Dict[str, Any],
             input: Any = None, by_input: bool = False) -> None:
        record_id = None if by_input else rows_ids.uuid()
        for run_ids, run_id, cases, scores, suffix in (
                [(then_ids, baseline_id, baseline, s, f"#{n}") for n, s in enumerate(then)]
                + ([(now_ids, current_id, current, now, "")] if now is not None else [])):
            case_input = input if input is not None else f"input of {name}"
            if by_input and run_id == baseline_id:
                case_input = dict(reversed(list(input.items())))
            rows = eval_trace(run_ids, run_id, input=case_input,
                              output=f"{name} output{' then' if run_id == baseline_id else ''}",
                              expected=f"expected of {name}", scores=scores,
                              dataset_record_id=record_id)
            cases[name + suffix] = rows

    case("regressed", {"Exact Match": 0.0, "Accuracy": 0.9},
         {"Exact Match": 1.0, "Accuracy": 0.8})
    case("improved", {"Exact Match": 1.0}, {"Exact Match": 0.0})
    case("unchanged", {"Exact Match": 1.0, "Accuracy": 0.5},
         {"Exact Match": 1.0, "Accuracy": 0.5})
    case("float_noise", {"Accuracy": 0.3}, {"Accuracy": 0.1 + 0.2})
    case("new", {"Exact Match": 1.0})
    case("trials", {"Exact Match": 0.0}, {"Exact Match": 1.0}, {"Exact Match": 0.0})
    case("by_input", {"Exact Match": 1.0}, {"Exact Match": 0.5},
         input={"question": "what", "lang": "en"}, by_input=True)
    case("one_side_score", {"Exact Match": 1.0, "Accuracy": 0.7}, {"Exact Match": 1.0})
    case("disjoint_scores", {"Exact Match": 0.0}, {"Accuracy": 1.0})
    case("null_score", {"Exact Match": None}, {"Exact Match": 1.0})
    case("baseline_deleted", {"Exact Match": 1.0}, {"Exact Match": 1.0})
    case("missing", None, {"Exact Match": 1.0})
    gone = baseline["baseline_deleted#0"]
    gone.append(deleted(then_ids, root_of(gone)))
    return current, baseline


# Current records come newest first: the reverse of how `pair` built them.
PAIR_ORDER = ["baseline_deleted", "null_score", "disjoint_scores", "one_side_score",
              "by_input", "trials", "new", "float_noise", "unchanged", "improved", "regressed"]

# What each current case must gain, written out by hand. `first` names the baseline case
# whose root comes first in the baseline's order (newest first: the later trial).
PAIR_TRUTH: Dict[str, Dict[str, Any]] = {
    "regressed": {"baseline": {"Exact Match": 1.0, "Accuracy": 0.8}, "count": 1,
                  "first": "regressed#0", "diff": {"Accuracy": 0.9 - 0.8,
                                                   "Exact Match": -1.0},
                  "status": "regressed"},
    "improved": {"baseline": {"Exact Match": 0.0}, "count": 1, "first": "improved#0",
                 "diff": {"Exact Match": 1.0}, "status": "improved"},
    "unchanged": {"baseline": {"Exact Match": 1.0, "Accuracy": 0.5}, "count": 1,
                  "first": "unchanged#0", "diff": {"Accuracy": 0.0, "Exact Match": 0.0},
                  "status": "unchanged"},
    "float_noise": {"baseline": {"Accuracy": 0.1 + 0.2}, "count": 1, "first": "float_noise#0",
                    "diff": {"Accuracy": 0.3 - (0.1 + 0.2)}, "status": "unchanged"},
    "new": {"baseline": None, "diff": {}, "status": "new"},
    "trials": {"baseline": {"Exact Match": 0.5}, "count": 2, "first": "trials#1",
               "diff": {"Exact Match": -0.5}, "status": "regressed"},
    "by_input": {"baseline": {"Exact Match": 0.5}, "count": 1, "first": "by_input#0",
                 "diff": {"Exact Match": 0.5}, "status": "improved"},
    "one_side_score": {"baseline": {"Exact Match": 1.0}, "count": 1,
                       "first": "one_side_score#0", "diff": {"Exact Match": 0.0},
                       "status": "unchanged"},
    # A score that was a number in the baseline and is none now is lost: a regression.
    "disjoint_scores": {"baseline": {"Accuracy": 1.0}, "count": 1,
                        "first": "disjoint_scores#0", "diff": {}, "lost": ["Accuracy"],
                        "status": "regressed"},
    "null_score": {"baseline": {"Exact Match": 1.0}, "count": 1, "first": "null_score#0",
                   "diff": {}, "lost": ["Exact Match"], "status": "regressed"},
    "baseline_deleted": {"baseline": None, "diff": {}, "status": "new"},
}
PAIR_MISSING = 1  # "missing": only in the baseline (the deleted baseline row is no record)

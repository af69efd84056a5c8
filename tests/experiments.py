"""The experiments the end-to-end tests fetch, with the records each must give.

`rich` holds one case for each quirk in API-NOTES.md. Its expected records are written out
here by hand from how the cases were built, not computed by the code under test.
"""
from __future__ import annotations

from typing import Any, Dict, List

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

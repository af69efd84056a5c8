"""Realistic Braintrust experiment events, built the way evals log them.

One test case is one trace: a root span (type "eval") with task, llm, one score span per
scorer, and sometimes review spans. Rows follow `ExperimentEvent` in the public OpenAPI spec;
the quirks that API-NOTES.md lists (OpenTelemetry-style ids, rows without is_root, traces
without a root, stale versions, deletions, UI edits in audit_data) each have a builder here.
"""
from __future__ import annotations

import copy
import json
import itertools
import random
import uuid
from typing import Any, Dict, List, Optional

PROJECT_ID = "5b9e1c52-8f0a-4f0e-9a43-1d2f7a6b3c11"
DATASET_ID = "ae0d7731-33af-4012-8e1c-0820b48776dd"


class Ids:
    """Deterministic ids and transaction ids, so every run builds the same experiment."""

    def __init__(self, seed: int = 7, first_xact: int = 1000192656880881000):
        self.random = random.Random(seed)
        self.xacts = itertools.count(first_xact)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))

    def hex(self, digits: int) -> str:
        return "%0*x" % (digits, self.random.getrandbits(digits * 4))

    def xact(self) -> str:
        return str(next(self.xacts))


def _row(ids: Ids, experiment_id: str, *, span_id: str, root_span_id: str,
         parents: Optional[List[str]], span_type: str, name: str, legacy: bool,
         **fields: Any) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "id": ids.uuid(),
        "_xact_id": ids.xact(),
        "_pagination_key": "p" + ids.hex(12),
        "created": "2026-11-20T10:15:%02d.%03dZ" % (ids.random.randrange(60),
                                                     ids.random.randrange(1000)),
        "project_id": PROJECT_ID,
        "experiment_id": experiment_id,
        "span_id": span_id,
        "root_span_id": root_span_id,
        "span_parents": parents,
        "span_attributes": {"name": name, "type": span_type},
        "metrics": {"start": 1763633700.25, "end": 1763633702.5},
        "context": {"caller_functionname": "run_eval", "caller_filename": "eval.py",
                    "caller_lineno": 42},
        "tags": None,
        "comments": None,
        "audit_data": [{"_xact_id": None, "audit_data": {"action": "upsert"}, "source": "api"}],
    }
    if legacy:  # older rows carry no is_root; roots have no span_parents at all
        if not parents:
            del row["span_parents"]
    else:
        row["is_root"] = not parents
    row["audit_data"][0]["_xact_id"] = row["_xact_id"]
    row.update(fields)
    return row


def eval_trace(ids: Ids, experiment_id: str, *, input: Any, output: Any, expected: Any,
               scores: Dict[str, Optional[float]], metadata: Any = None,
               root_scores: Optional[Dict[str, Optional[float]]] = None,
               dataset_record_id: Optional[str] = None, origin: Any = None,
               otel: bool = False, legacy: bool = False, review: bool = False,
               prompt_padding: str = "", with_root: bool = True,
               tool_calls: int = 0) -> List[Dict[str, Any]]:
    """The rows of one eval test case, oldest first."""
    if otel:  # OpenTelemetry ids: a root's span_id (16 hex) differs from its trace id (32 hex)
        trace_id, root_id = ids.hex(32), ids.hex(16)
        new_span = lambda: ids.hex(16)  # noqa: E731
    else:
        trace_id = root_id = ids.uuid()
        new_span = ids.uuid
    if dataset_record_id is not None:
        origin = {"object_type": "dataset", "object_id": DATASET_ID, "id": dataset_record_id,
                  "_xact_id": "1000192600000000001", "created": "2026-11-01T09:00:00.000Z"}
    common = dict(root_span_id=trace_id, legacy=legacy)
    rows = []
    root = _row(ids, experiment_id, span_id=root_id, parents=None, span_type="eval",
                name="eval", input=input, output=output, expected=expected,
                metadata=metadata, scores=root_scores, origin=origin, **common)
    task_id = new_span()
    rows.append(_row(ids, experiment_id, span_id=task_id, parents=[root_id], span_type="task",
                     name="task", input=input, output=output, metadata=None, **common))
    rows.append(_row(ids, experiment_id, span_id=new_span(), parents=[task_id],
                     span_type="llm", name="Chat Completion",
                     input=[{"role": "system", "content": "Answer briefly." + prompt_padding},
                            {"role": "user", "content": str(input)}],
                     output=[{"message": {"role": "assistant", "content": str(output)}}],
                     metadata={"model": "gpt-4o-mini", "temperature": 0},
                     metrics={"prompt_tokens": 120, "completion_tokens": 9, "tokens": 129},
                     **common))
    for call in range(tool_calls):  # an agent's steps: spans no record shows
        rows.append(_row(ids, experiment_id, span_id=new_span(), parents=[task_id],
                         span_type="tool", name=f"search_{call}",
                         input={"query": f"step {call}"},
                         output={"hits": [f"document {call}"]}, **common))
    for name, value in scores.items():
        score = _row(ids, experiment_id, span_id=new_span(), parents=[root_id],
                     span_type="score", name=name, input={"output": output,
                                                          "expected": expected},
                     output={"score": value}, scores={name: value}, **common)
        score["span_attributes"]["purpose"] = "scorer"
        rows.append(score)
    if review:  # a reviewer's own values: not the case's scores
        rows.append(_row(ids, experiment_id, span_id=new_span(), parents=[root_id],
                         span_type="review", name="review", scores={"Accuracy": 0.0},
                         **common))
    if with_root:
        rows.append(root)  # the SDK logs the root last, when the case is done
    return rows


def root_of(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    return next(row for row in rows if row["span_attributes"]["type"] == "eval")


def edited_in_ui(ids: Ids, root: Dict[str, Any], field: str, value: Any,
                 path: Optional[List[str]] = None, nested: bool = True) -> Dict[str, Any]:
    """A newer version of a root after someone changed one of its fields in the experiment
    UI (`expected`, usually), with the audit entry the UI leaves. Nested, as recorded from
    the production API: {"_xact_id", "audit_data": {"action": "merge", "path", "from",
    "to"}, "metadata": {"user_id"}, "source": "app"}; flat, the other shape seen: the change
    and the user's id on the entry itself."""
    row = copy.deepcopy(root)
    row["_xact_id"] = ids.xact()
    row[field] = value
    change = {"action": "merge", "path": path or [field], "from": root.get(field), "to": value}
    entry: Dict[str, Any] = {"_xact_id": row["_xact_id"], "source": "app"}
    if nested:
        entry.update(audit_data=change, metadata={"user_id": ids.uuid()})
    else:
        entry.update(change, user_id=ids.uuid())
    row["audit_data"] = list(root.get("audit_data") or []) + [entry]
    return row


def deleted(ids: Ids, row: Dict[str, Any]) -> Dict[str, Any]:
    """The tombstone the API returns as the newest version of a deleted row."""
    tombstone = {key: row[key] for key in ("id", "created", "project_id", "experiment_id",
                                           "span_id", "root_span_id")}
    tombstone.update(_xact_id=ids.xact(), _object_delete=True)
    return tombstone


def synthetic_experiment(experiment_id: str, traces: int, spans_per_trace: int = 5,
                         trace_bytes: int = 12_000, seed: int = 1) -> List[Dict[str, Any]]:
    """Many plain eval cases for benchmarks: root, task, llm, up to two score spans, then
    tool spans for the rest, about `trace_bytes` of JSON per trace, most of it in child
    spans as long LLM prompts put it."""
    ids = Ids(seed)
    scorers = max(1, min(2, spans_per_trace - 3))
    tool_calls = max(0, spans_per_trace - 3 - scorers)

    def case(number: int, pad: str) -> List[Dict[str, Any]]:
        # The padding shows five times: root, task and llm inputs, and twice in the prompt.
        return eval_trace(
            ids, experiment_id, input=f"Question {number}: {pad}",
            output={"answer": f"Answer {number}"}, expected={"answer": f"Answer {number}"},
            metadata={"case": number}, scores={f"Scorer {n}": 1.0 for n in range(scorers)},
            dataset_record_id=ids.uuid(), prompt_padding=pad * 2, tool_calls=tool_calls)

    bare = len(json.dumps(case(0, "")))
    pad = "x" * max(0, (trace_bytes - bare) // 5)
    ids = Ids(seed)
    return [row for number in range(traces) for row in case(number, pad)]

#!/usr/bin/env python3
"""Plant small, plausible bugs in the script one at a time and report which the suite kills.

    python3 tests/mutate.py              # every mutant (about 20 minutes on 2 cores)
    python3 tests/mutate.py --only gate  # the mutants whose name holds "gate"
    python3 tests/mutate.py --list       # the list, nothing run

Each mutant is one textual change to the script, in a copy of the repository (its tracked
files and the untracked ones git does not ignore) in a temporary folder, so the working tree
is never touched. The whole suite runs on each, stopping at its first failure (`-x`): a
failing suite kills the mutant, a passing one lets it survive, which means no test guards
that behaviour. A change whose text is no longer in the script is reported as stale.
Standard library only; not run in CI (it takes minutes). Exit 0 when every mutant is killed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(".claude/skills/braintrust-fetch-experiment-results/scripts/"
              "fetch_experiment_results.py")


class Mutant(NamedTuple):
    name: str  # the bug, in words
    where: str  # the function (or table) it is planted in
    old: str  # text that must be in the script exactly once
    new: str  # what it becomes


# The test file meant to catch each mutant (by the start of its name): it runs first, alone,
# and a failure there kills the mutant at once (the whole suite would fail with it); else the
# whole suite runs. This saves time, never a verdict.
GUARDS = {
    "transaction ids": "test_safety_net.py", "only the previous cursor": "test_safety_net.py",
    "an empty page": "test_safety_net.py", "408": "test_safety_net.py",
    "Retry-After": "test_safety_net.py", "no redaction of": "test_records.py",
    "no redaction in": "test_hostile.py",
    "a new --output": "test_safety_net.py", "the gate counts": "test_safety_net.py",
    "--min-drop": "test_safety_net.py", "missing counts": "test_safety_net.py",
    "--quiet": "test_safety_net.py", "the deadline": "test_hostile.py",
    "the socket": "test_hostile.py", "a cut leaves": "test_hostile.py",
    "key-shaped": "test_hostile.py", "the key unknown": "test_hostile.py",
    "a reason phrase": "test_hostile.py", "a content type": "test_hostile.py",
    "no bound": "test_hostile.py", "gzip unpacked": "test_safety_net.py",
    "a Content-Length": "test_hostile.py", "NaN and infinities": "test_hostile.py",
    "NaN, infinities": "test_hostile.py", "a cursor that": "test_hostile.py",
    "ids that are": "test_hostile.py", "deep JSON": "test_hostile.py",
    "a refused redirect": "test_hostile.py", "signals not held": "test_hostile.py",
    "a second signal": "test_hostile.py", "the key sent along": "test_reliability.py",
    "a lost score": "test_gate.py", "a new error": "test_records.py",
    "missing baseline": "test_gate.py", "--gate": "test_gate.py",
    "characters XML": "test_gate.py", "with CSV": "test_gate.py", "ids over": "test_gate.py",
    "a baseline that raised": "test_records.py", "a deleted root": "test_records.py",
    "on disk, a root": "test_records.py", "a trace judged": "test_safety_net.py",
    "a field's": "test_analysis.py", "deletions": "test_cli.py",
    "a span without": "test_records.py", "scorer spans": "test_cli.py",
    "an edit nested": "test_cli.py", "the dataset record": "test_cli.py",
    "the header's cursor": "test_overlap.py", "x-amz-meta": "test_reliability.py",
    "metadata null": "test_cli.py", "404": "test_reliability.py",
    "a refused connection": "test_reliability.py", "--max-results": "test_cli.py",
    "--truncate": "test_analysis.py", "<=": "test_records.py",
    "float noise": "test_baseline.py", "the sign test": "test_comparison.py",
    "a 90%": "test_comparison.py", "a baseline score": "test_baseline.py",
    "inputs matched": "test_baseline.py", "a replaced file": "test_output.py",
    "--tag": "test_analysis.py", "an empty-string": "test_analysis.py",
    "--errors-only sees": "test_analysis.py", "on disk, a failed": "test_store.py",
    "a scorer's error": "test_analysis.py", "an edit's user": "test_agent_use.py",
    "the rows never": "test_store.py", "on disk, any": "test_store.py",
    "report names": "test_comparison.py", "a report link": "test_records.py",
}


def guard_of(mutant: Mutant) -> List[str]:
    return [f"tests/{test}" for start, test in GUARDS.items() if mutant.name.startswith(start)]


MUTANTS: List[Mutant] = [
    # -- the twelve the first audit found surviving (issue 21) ----------------------------
    Mutant("transaction ids parsed as floats", "xact_number",
           'return int(event.get("_xact_id"))', 'return int(float(event.get("_xact_id")))'),
    Mutant("only the previous cursor checked for a repeat", "PageReader.__iter__",
           "if cursor in self.cursors_sent:", "if cursor == page.cursor:"),
    Mutant("an empty page with a cursor does not end paging", "fetch_pages",
           "if not events or not cursor:", "if not cursor:"),
    Mutant("408 not retried", "RETRIED_STATUSES",
           "RETRIED_STATUSES = (408, 429,", "RETRIED_STATUSES = (429,"),
    Mutant("Retry-After honoured only on 429 and 503", "AnnouncedRetry.sleep",
           'if response is not None and response.headers.get("Retry-After"):',
           'if response is not None and response.status in (429, 503) and '
           'response.headers.get("Retry-After"):'),
    Mutant("no redaction of a server's words before they are cut", "clean_text",
           'text = redacted(REDACT(CONTROL_OR_ESCAPE.sub("", redacted(REDACT(text), secret))), '
           'secret)', 'text = CONTROL_OR_ESCAPE.sub("", text)'),
    Mutant("no redaction in the stderr writer", "main.tell",
           '+ REDACT(message) + "\\n")', '+ message + "\\n")'),
    Mutant("a new --output file made 0600 whatever the umask", "write_atomically",
           "mode = 0o666 & ~umask", "mode = 0o600"),
    Mutant("the gate counts regressed scores, not records", "Tally.add_comparison",
           "self.gate_regressed += regressed_on(case, self.gated, self.min_drop)",
           "self.gate_regressed += sum(is_regression(change, self.min_drop) "
           "for change in case[\"diff\"].values()) + len(case[\"lost_scores\"])"),
    Mutant("--min-drop without its float tolerance", "is_regression",
           "-change >= min_drop - CHANGE", "-change >= min_drop"),
    Mutant("missing counts baseline trials, not cases", "unread_baseline_cases",
           '"SELECT COUNT(*) FROM (SELECT key FROM baseline GROUP BY key "\n'
           '                            "HAVING MAX(read) = 0)"',
           '"SELECT COUNT(*) FROM baseline WHERE read = 0"'),
    Mutant("--quiet still draws progress on a terminal", "Reporter.progress",
           "elif self.terminal and not self.quiet:", "elif self.terminal:"),
    # -- hostile servers (issue 20) -------------------------------------------------------
    Mutant("the deadline does not know the connection in use", "watched.request",
           "                deadline.using(self)\n", "                pass\n"),
    Mutant("the socket of a closing connection forgotten", "watched.getresponse",
           "                deadline.answering(self)\n", "                pass\n"),
    Mutant("a cut leaves the start of a key", "Redactor.cut",
           "else self.edge(text[: most - 1]) + \"…\"", "else text[: most - 1] + \"…\""),
    Mutant("key-shaped strings not redacted", "Redactor.__call__",
           'return KEY_SHAPE.sub("[redacted]", text)', "return text"),
    Mutant("the key unknown until the settings are read", "main",
           "REDACT.add(key_in_sight(dict(os.environ)))", "pass"),
    Mutant("a reason phrase shown raw", "check_status",
           "clean_text(answer.reason, limit=80)", "answer.reason"),
    Mutant("a content type shown raw", "first_bytes",
           'kind = clean_text(answer.headers.get("Content-Type") or "no content type", '
           'limit=80)', 'kind = answer.headers.get("Content-Type") or "no content type"'),
    Mutant("no bound on a body of unknown length", "read_body",
           "            if size > most:\n                raise TooLarge()\n"
           "            pieces.append(piece)",
           "            pieces.append(piece)"),
    Mutant("gzip unpacked without a bound", "unpacked",
           "inflate.decompress(data, most - size + 1)", "inflate.decompress(data)"),
    Mutant("a Content-Length past the limit is read anyway", "read_body",
           "    if length.isdigit() and int(length) > most:\n        raise TooLarge()\n", ""),
    Mutant("NaN and infinities written as they come", "StrictJson.__call__",
           "return NOT_JSON.sub(self.null_unless_string, text)", "return text"),
    Mutant("NaN, infinities and huge integers count as numbers", "is_number",
           "and -sys.float_info.max <= value <= sys.float_info.max)", ")"),
    Mutant("a cursor that is not a string used as one", "fetch_pages",
           "if not isinstance(cursor, (str, type(None))):", "if False:"),
    Mutant("ids that are arrays or objects used as keys", "row_key",
           "if isinstance(event.get(field), (list, dict)):", "if False:"),
    Mutant("deep JSON reported as a nesting of the data, not of the answer", "read_json",
           "    except RecursionError:\n        raise MalformedAnswer(",
           "    except ZeroDivisionError:\n        raise MalformedAnswer("),
    Mutant("a refused redirect target blamed on the API URL", "attempt",
           "redirected=bool(redirects)", "redirected=False"),
    Mutant("signals not held while the temporary output file is made", "write_atomically",
           "with SIGNALS.held():  # a signal now would leave", "if True:  # a signal now would leave"),
    Mutant("a second signal raised while the first unwinds", "Signals.arrived",
           "        if self.raised:\n            return\n", ""),
    Mutant("the key sent along a redirect to another host", "attempt",
           "auth=None if same_origin(url, hop_url) else no_key", "auth=None"),
    # -- a gate that fails closed (issue 22) -----------------------------------------------
    Mutant("a lost score is no regression", "comparison",
           "if lost or new_error or any(", "if new_error or any("),
    Mutant("a new error is no regression", "comparison",
           "if lost or new_error or any(", "if lost or any("),
    Mutant("missing baseline cases pass the gate", "gate_failures",
           'if summary["missing"] and not gate.allow_missing:', "if False:"),
    Mutant("--gate significant judges the mean, not its interval", "gate_failures",
           'and paired["ci95"][1] < -gate.min_drop', 'and paired["diff_mean"] < -gate.min_drop'),
    Mutant("--gate mean never fails", "gate_failures",
           'if gate.mode == "mean" and is_regression(', 'if gate.mode == "mean!" and is_regression('),
    Mutant("characters XML forbids kept in JUnit", "xml_text",
           'return NOT_XML.sub("", text)', "return text"),
    Mutant("with CSV, the gate counts each record twice", "rendered",
           "return render_csv(lambda: (name for case in cases()",
           "return render_csv(lambda: (name for case in map(tally.add, cases())"),
    Mutant("ids over 200 characters cut in the report", "WHOLE",
           "WHOLE = sys.maxsize", "WHOLE = 200"),
    Mutant("a baseline that raised the error too makes it new", "comparison",
           'new_error = case["error"] is not None and found.errors < found.count',
           'new_error = case["error"] is not None'),
    # -- constant work per page (issue 23) --------------------------------------------------
    Mutant("a deleted root still counted live, in memory", "Store.add",
           "self.live += isinstance(part, RootPart) - (known is not None",
           "self.live += isinstance(part, RootPart) - (False"),
    Mutant("on disk, a root that becomes a deletion still counted live", "LIVE_ROOTS",
           "BEGIN UPDATE live SET roots = roots + (CASE WHEN new.kind = {ROOT} THEN 1 ELSE -1",
           "BEGIN UPDATE live SET roots = roots + (CASE WHEN new.kind = {ROOT} THEN 1 ELSE 0"),
    Mutant("a trace judged again counts its cases twice", "read_experiment",
           "found += now - passing.get(trace, 0)", "found += now"),
    Mutant("a field's --truncate cut ignored", "as_record",
           "                record[key] = FIELD[key].cut(record[key], most)",
           "                record[key] = record[key]"),
    # -- failures of any span (issue 24) ----------------------------------------------------
    Mutant("--errors-only sees only the root's error", "failed",
           'return case["error"] is not None or bool(case["span_errors"])',
           'return case["error"] is not None'),
    Mutant("on disk, a failed span's error forgotten", "cases_stored",
           "        if failure is not None:\n            failures.append(failure)\n", ""),
    Mutant("a scorer's error not kept", "essentials",
           "return ScorePart(event.get(\"root_span_id\"), score_dict(event.get(\"scores\")), cost,\n"
           "                         failure)",
           "return ScorePart(event.get(\"root_span_id\"), score_dict(event.get(\"scores\")), cost,\n"
           "                         None)"),
    Mutant("an edit's user read only from the entry", "expected_edits",
           '"user_id": metadata.get("user_id", entry.get("user_id")),',
           '"user_id": entry.get("user_id"),'),
    # -- records, paging, analysis, output (already guarded when the audit ran) ------------
    Mutant("deletions ignored", "essentials",
           'if event.get("_object_delete") is True:', "if False:"),
    Mutant("a span without parents is no root", "is_root_span",
           'return not event.get("span_parents")', "return False"),
    Mutant("scorer spans win over the root's own scores", "case_of",
           '{**trace_scores, **root.values["scores"]}', '{**root.values["scores"], **trace_scores}'),
    Mutant("an edit nested in audit_data not seen", "was_expected_edited",
           'for fields in (entry, entry.get("audit_data")):', "for fields in (entry,):"),
    Mutant("the dataset record id taken from the dataset id", "dataset_origin",
           '"dataset_record_id": origin.get("id")', '"dataset_record_id": origin.get("object_id")'),
    Mutant("the header's cursor wins over the body's", "next_cursor",
           'return data.get("cursor") or headers_cursor(answer.headers, answer.redirects)',
           'return headers_cursor(answer.headers, answer.redirects) or data.get("cursor")'),
    Mutant("x-amz-meta-bt_cursor not read", "headers_cursor",
           'or headers.get("x-amz-meta-bt_cursor")', 'or None'),
    Mutant("metadata null printed as null", "FIELDS",
           'lambda event: {} if event.get("metadata") is None else event["metadata"],',
           'lambda event: event.get("metadata"),'),
    Mutant("404 retried", "RETRIED_STATUSES", "502, 503, 504)", "502, 503, 504, 404)"),
    Mutant("a refused connection retried", "AnnouncedRetry.increment",
           "isinstance(error, (NameResolutionError, SSLError)) or caused_by(\n"
           "                error, ConnectionRefusedError)",
           "isinstance(error, (NameResolutionError, SSLError))"),
    Mutant("--max-results stops one page late", "read_experiment",
           "if stop_at and found >= stop_at:", "if stop_at and found > stop_at:"),
    Mutant("--truncate cuts a string of exactly N", "truncated",
           "isinstance(value, str) and len(value) > most", "isinstance(value, str) and len(value) >= most"),
    Mutant("<= compares as <", "COMPARISONS", '"<=": operator.le', '"<=": operator.lt'),
    Mutant("float noise counts as a regression", "is_regression",
           "return change < -CHANGE and", "return change < 0 and"),
    Mutant("the sign test one-sided", "sign_test",
           "float(Fraction(2 * tail, 2 ** n))", "float(Fraction(tail, 2 ** n))"),
    Mutant("a 90% interval called 95%", "t_quantile_975",
           "    while t_distribution(high, df) < 0.975:", "    while t_distribution(high, df) < 0.95:"),
    Mutant("a baseline score averaged over every trial, scored or not", "comparison",
           "found.score_sums[name] / found.score_counts[name]", "found.score_sums[name] / found.count"),
    Mutant("inputs matched with their keys in order", "case_key",
           "json.dumps(case[\"input\"], sort_keys=True,", "json.dumps(case[\"input\"], sort_keys=False,"),
    Mutant("a replaced file loses its permissions", "write_atomically",
           "mode = os.stat(path).st_mode & 0o777", "mode = 0o600 if os.stat(path) else 0"),
    Mutant("--tag keeps a record with any one of the tags", "case_filter",
           "wanted.issubset(", "not wanted.isdisjoint("),
    Mutant("an empty-string error is no error", "failed",
           'return case["error"] is not None or bool(case["span_errors"])',
           'return bool(case["error"]) or bool(case["span_errors"])'),
    Mutant("the rows never move to disk", "Store.add",
           "self.bytes_read > self.spill_after", "self.bytes_read < 0"),
    Mutant("on disk, any later version wins", "UPSERT",
           " WHERE excluded.version > rows.version", ""),
    Mutant("report names not percent-encoded in a link", "experiment_title",
           'urllib.parse.quote(name, safe="")', "name"),
    Mutant("a report link guessed for any API", "app_url_setting",
           "return DEFAULT_APP_URL if api_url == DEFAULT_API_URL else None",
           "return DEFAULT_APP_URL"),
    Mutant("report names that fail to read fail the run", "experiment_names",
           "    except ApiError as error:\n        announce(f\"{PROG}: note: {error}; the report",
           "    except KeyError as error:\n        announce(f\"{PROG}: note: {error}; the report"),
    Mutant("report names read from an id that is no UUID", "named_object",
           "    if path_id is None:", "    if False:"),
]


def copy_of_repository(into: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def suite_passes(folder: Path, timeout: float, first: List[str] = ()) -> bool:
    """Whether the whole suite passes (`first`: test files to run alone before it)."""
    return all(tests_pass(folder, timeout, files) for files in ([*first], ["tests"])
               if files)


def tests_pass(folder: Path, timeout: float, files: List[str]) -> bool:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                               "no:cacheprovider", *files], cwd=folder, env=env,
                              timeout=timeout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False  # a hang the suite's own timeouts did not end: the suite failed
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the mutants whose name holds this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per suite run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or args.only.lower() in m.name.lower()]
    if args.list:
        for number, mutant in enumerate(chosen, 1):
            print(f"{number:2}. {mutant.name} ({mutant.where})")
        return 0
    original = (ROOT / SCRIPT).read_text()
    stale = [m for m in chosen if original.count(m.old) != 1]
    results = []
    with tempfile.TemporaryDirectory(prefix="mutate-") as folder:
        copy = Path(folder)
        copy_of_repository(copy)
        print("the suite on the unchanged script...", flush=True)
        if not suite_passes(copy, args.timeout):
            print("the suite fails without any mutant: fix that first")
            return 2
        for number, mutant in enumerate(chosen, 1):
            if mutant in stale:
                results.append((mutant, "stale"))
                print(f"{number:2}/{len(chosen)} stale     {mutant.name}", flush=True)
                continue
            (copy / SCRIPT).write_text(original.replace(mutant.old, mutant.new))
            started = time.monotonic()
            passed = suite_passes(copy, args.timeout, guard_of(mutant))
            verdict = "SURVIVED" if passed else "killed"
            results.append((mutant, verdict))
            print(f"{number:2}/{len(chosen)} {verdict:9} {mutant.name} ({mutant.where}; "
                  f"{time.monotonic() - started:.0f} s)", flush=True)
        (copy / SCRIPT).write_text(original)
    killed = sum(verdict == "killed" for _, verdict in results)
    print(f"\n{killed} of {len(results)} mutants killed"
          + "".join(f"\n  {verdict}: {m.name} ({m.where})"
                    for m, verdict in results if verdict != "killed"))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

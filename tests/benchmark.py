"""Benchmark: the script against the cost of merely downloading the pages, and against the
simplest script that does the job. Not collected by pytest; run it by hand:

    python3 tests/benchmark.py                      # the issue's setting: 3,000 traces ...
    python3 tests/benchmark.py --traces 300 --runs 3
    python3 tests/benchmark.py --network            # pages that take server time to build

It starts the loopback fake API in this process with a synthetic experiment, then runs each
client as a fresh child process and reads its wall time and peak RSS (`os.wait4`, as the OS
reports it for that child alone):
- floor: a minimal loop that POSTs each page with requests and parses it, keeping nothing;
- naive: the same loop keeping every event, then building the records and printing them;
- script (default json, and --format jsonl), writing to /dev/null;
- script --include all (every extra field, metrics added up over every span), and
  script --baseline with a baseline experiment as large as the main one (both fetched).
It prints the medians of several runs, the ratios script/floor (time) and script/naive
(memory), and the requests and TCP connections of one script run.

With --pipeline (issue 23), 6,000 small traces in 100 pages, three of them tagged `late`
and served last: the script with progress off (--quiet) and on (--verbose, a line a page),
and `--tag late --max-results 3` (whose matches come on the last page) against the full
fetch. Each page's work must not grow with the pages before it.

With --network, the fake takes a fixed server time to build each page and streams each body
at a limited rate (per connection), and the rows compare the sequential floor with the
script requesting the next page while this one arrives, and with that turned off
(BRAINTRUST_MAX_IN_FLIGHT=1).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).parent))

from fake_api import API_KEY, Experiment, FakeBraintrust  # noqa: E402
from traces import synthetic_experiment  # noqa: E402

SCRIPT = (Path(__file__).resolve().parent.parent / ".claude" / "skills"
          / "braintrust-fetch-experiment-results" / "scripts" / "fetch_experiment_results.py")
EXPERIMENT_ID = "c0ffee00-5d7f-4e21-9c3a-8f1e2d3c4b5a"
BASELINE_ID = "c0ffee01-5d7f-4e21-9c3a-8f1e2d3c4b5a"  # as large, another run of the cases

PAGING_LOOP = """
import json, os, sys, requests
url, limit = sys.argv[1], int(sys.argv[2])
session = requests.Session()
session.headers["Authorization"] = "Bearer " + os.environ["BRAINTRUST_API_KEY"]
cursor = None
while True:
    body = {"limit": limit}
    if cursor:
        body["cursor"] = cursor
    page = session.post(url, json=body).json()
    KEEP
    cursor = page.get("cursor")
    if not page["events"] or not cursor:
        break
"""

# The download alone: every page requested and parsed, nothing kept.
FLOOR = PAGING_LOOP.replace("KEEP", "pass")

# The simplest script that does the job: keep every event, then flatten.
NAIVE = "events = []\n" + PAGING_LOOP.replace("KEEP", "events.extend(page['events'])") + """
latest = {}
for event in events:
    known = latest.get(event["id"])
    if known is None or int(event["_xact_id"]) > int(known["_xact_id"]):
        latest[event["id"]] = event
live = [e for e in latest.values() if not e.get("_object_delete")]
scores = {}
for e in live:
    if (e.get("span_attributes") or {}).get("type") == "score":
        scores.setdefault(e["root_span_id"], {}).update(e.get("scores") or {})
records = []
for e in live:
    if e.get("is_root") or (e.get("is_root") is None and not e.get("span_parents")):
        origin = e.get("origin") or {}
        records.append({
            "root_span_id": e["root_span_id"], "input": e.get("input"),
            "output": e.get("output"), "expected": e.get("expected"),
            "metadata": e.get("metadata") or {},
            "scores": {**scores.get(e["root_span_id"], {}), **(e.get("scores") or {})},
            "origin": {"dataset_id": origin.get("object_id"), "dataset_record_id": origin.get("id")}
            if origin.get("object_type") == "dataset" else None})
sys.stdout.write(json.dumps(records, indent=2, ensure_ascii=False) + "\\n")
"""


def start_fake(traces: int, spans: int, trace_bytes: int, **network: float) -> FakeBraintrust:
    """The fake with the experiment and its baseline; `network` (server_delay, bandwidth)
    shapes how the experiment's pages are served, with the cursor in body and header."""
    fake = FakeBraintrust()
    rows = synthetic_experiment(EXPERIMENT_ID, traces, spans, trace_bytes)
    fake.add(Experiment(rows, **({"cursor_in": "both", **network} if network else {})),
             EXPERIMENT_ID)
    baseline = synthetic_experiment(BASELINE_ID, traces, spans, trace_bytes)  # same cases
    fake.add(Experiment(baseline), BASELINE_ID)
    # The fake's millions of row objects live as long as it does: kept out of the garbage
    # collector's passes, so its server threads answer at the same pace whatever they hold.
    gc.freeze()
    return fake


def commands(fake: FakeBraintrust, page_size: int, network: bool = False,
             script_path: Path = SCRIPT) -> Dict[str, List[str]]:
    url = f"{fake.url}/v1/experiment/{EXPERIMENT_ID}/fetch"
    script = [sys.executable, str(script_path), EXPERIMENT_ID, "--limit", str(page_size)]
    if network:
        return {
            "floor": [sys.executable, "-c", FLOOR, url, str(page_size)],
            "naive": [sys.executable, "-c", NAIVE, url, str(page_size)],
            "script": script,
            # env is the launcher's argument list here: the variable goes through `env`.
            "script, BRAINTRUST_MAX_IN_FLIGHT=1": ["/usr/bin/env", "BRAINTRUST_MAX_IN_FLIGHT=1",
                                                  *script],
        }
    return {
        "floor": [sys.executable, "-c", FLOOR, url, str(page_size)],
        "naive": [sys.executable, "-c", NAIVE, url, str(page_size)],
        "script": script,
        "script --format jsonl": script + ["--format", "jsonl"],
        "script --include all": script + ["--include", "all"],
        "script --baseline": script + ["--baseline", BASELINE_ID],
    }


# A child's peak RSS counts the memory of whatever forked it (the kernel keeps the high-water
# mark across exec), and this process holds the fake's data. So each client is started by a
# small launcher, a bare interpreter far lighter than any client, which times it and reads
# its peak RSS from wait4.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
sys.stderr.write("\\nmeasured %d %f %d\\n" % (os.waitstatus_to_exitcode(status), elapsed, usage.ru_maxrss))
"""


def measure(command: List[str], env: Dict[str, str], stdout_path: str = os.devnull
            ) -> Tuple[float, int]:
    """Wall seconds and peak RSS in KiB of one client process."""
    with open(stdout_path, "wb") as stdout:
        done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], env=env,
                              stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              cwd=Path(__file__).parent)
    code, seconds, peak_kib = done.stderr.decode().split()[-3:]
    if int(code) != 0:
        raise RuntimeError(f"{command[:3]} exited {code}: {done.stderr.decode()[-500:]}")
    return float(seconds), int(peak_kib)


def client_env(fake: FakeBraintrust) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINTRUST_")}
    env.update(BRAINTRUST_API_KEY=API_KEY, BRAINTRUST_API_URL=fake.url)
    return env


def run_benchmark(traces: int, spans: int, trace_bytes: int, page_size: int, runs: int,
                  out=sys.stdout, outputs: Optional[Path] = None, network: bool = False,
                  server_delay: float = 0.25, script_path: Path = SCRIPT
                  ) -> Dict[str, Dict[str, float]]:
    """The table; with `outputs`, each client's output of its first run is kept there."""
    shape: Dict[str, float] = {}
    if network:  # a body takes about as long to arrive as the server took to build it
        page_bytes = len(json.dumps(synthetic_experiment(EXPERIMENT_ID, page_size, spans,
                                                         trace_bytes)))
        shape = {"server_delay": server_delay, "bandwidth": page_bytes / server_delay}
    fake = start_fake(traces, spans, trace_bytes, **shape)
    served_bytes = len(json.dumps(fake.experiments[EXPERIMENT_ID].rows))  # one experiment
    try:
        env = client_env(fake)
        clients = commands(fake, page_size, network, script_path)
        measure(clients["floor"], env)  # warm the fake's page cache and the OS file cache
        samples: Dict[str, List[Tuple[float, int]]] = {name: [] for name in clients}
        for run in range(runs):  # interleaved, so drift hits every client alike
            for name, command in clients.items():
                kept = outputs / name.replace(" ", "_") if outputs and run == 0 else None
                samples[name].append(measure(command, env, str(kept or os.devnull)))
        fake.reset()
        measure(clients["script"], env)
        requests_made, connections = len(fake.requests), fake.connections
        in_flight = fake.most_in_flight
        fake.reset()
        measure(clients["script"] + ["--max-results", "10"], env)
        requests_for_ten = len(fake.requests)
        pages = sum(1 for _ in range(0, traces, page_size))
    finally:
        fake.close()
    table = {name: {"seconds": statistics.median(s for s, _ in got),
                    "peak_mib": statistics.median(kib for _, kib in got) / 1024}
             for name, got in samples.items()}
    floor, naive = table["floor"], table["naive"]
    print(f"{traces} traces x {spans} spans, {served_bytes / traces / 1000:.1f} KB of JSON per "
          f"trace ({served_bytes / 1e6:.0f} MB in all), page size {page_size}, "
          f"median of {runs} runs; Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores", file=out)
    if network:
        print(f"network: {server_delay:.2f} s of server time per page, bodies at "
              f"{shape['bandwidth'] / 1e6:.1f} MB/s per connection", file=out)
    print("| client | wall time (s) | x floor | peak RSS (MiB) | x naive |", file=out)
    print("| --- | ---: | ---: | ---: | ---: |", file=out)
    for name, row in table.items():
        print(f"| {name} | {row['seconds']:.2f} | {row['seconds'] / floor['seconds']:.2f} | "
              f"{row['peak_mib']:.1f} | {row['peak_mib'] / naive['peak_mib']:.2f} |", file=out)
    print(f"requests: {requests_made} for {pages} pages; TCP connections: {connections}; "
          f"most page requests in flight: {in_flight}; "
          f"--max-results 10: {requests_for_ten} request(s)", file=out)
    table["counts"] = {"requests": requests_made, "pages": pages, "connections": connections,
                       "in_flight": in_flight, "requests_for_ten": requests_for_ten}
    return table


LATE_TAG = "late"


def start_tagged_fake(traces: int, spans: int, trace_bytes: int) -> FakeBraintrust:
    """The fake with one experiment whose first three cases, served last (the API serves
    newest first), carry the tag LATE_TAG."""
    fake = FakeBraintrust()
    rows = synthetic_experiment(EXPERIMENT_ID, traces, spans, trace_bytes)
    roots = [row for row in rows if row.get("is_root")]
    for root in roots[:3]:
        root["tags"] = [LATE_TAG]
    fake.add(Experiment(rows), EXPERIMENT_ID)
    gc.freeze()
    return fake


def run_pipeline_benchmark(traces: int, spans: int, trace_bytes: int, page_size: int,
                           runs: int, out=sys.stdout, script_path: Path = SCRIPT
                           ) -> Dict[str, float]:
    """Progress on against off, and --max-results with a filter whose matches come last
    against the full fetch: the ratios issue 23 sets (1.05 and 1.10 at most)."""
    fake = start_tagged_fake(traces, spans, trace_bytes)
    try:
        env = client_env(fake)
        script = [sys.executable, str(script_path), EXPERIMENT_ID, "--limit", str(page_size)]
        clients = {"script --quiet": script + ["--quiet"],
                   "script --verbose": script + ["--verbose"],
                   "script (full fetch)": script,
                   f"script --tag {LATE_TAG} --max-results 3":
                       script + ["--tag", LATE_TAG, "--max-results", "3"]}
        measure(clients["script --quiet"], env)  # warm the fake's page cache
        samples: Dict[str, List[float]] = {name: [] for name in clients}
        for _ in range(runs):
            for name, command in clients.items():
                samples[name].append(measure(command, env)[0])
        fake.reset()
        measure(clients[f"script --tag {LATE_TAG} --max-results 3"], env)
        requests_made = len(fake.fetches())
    finally:
        fake.close()
    seconds = {name: statistics.median(got) for name, got in samples.items()}
    pages = -(-traces // page_size)
    progress = seconds["script --verbose"] / seconds["script --quiet"]
    late = (seconds[f"script --tag {LATE_TAG} --max-results 3"]
            / seconds["script (full fetch)"])
    print(f"{script_path.relative_to(SCRIPT.parents[4])}: "
          f"{traces} traces x {spans} spans in {pages} pages of {page_size}, median of {runs} "
          f"runs; Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores", file=out)
    print("| client | wall time (s) |", file=out)
    print("| --- | ---: |", file=out)
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} |", file=out)
    print(f"progress on / off: {progress:.2f} (target 1.05 at most); --tag {LATE_TAG} "
          f"--max-results 3 / full fetch: {late:.2f} (target 1.10 at most), "
          f"{requests_made} requests", file=out)
    return {"progress": progress, "late": late, "requests": requests_made}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=3000)
    parser.add_argument("--spans", type=int, default=5, help="spans per trace")
    parser.add_argument("--trace-bytes", type=int, default=12_000, help="payload per trace")
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--network", action="store_true",
                        help="pages take server time and bodies stream at a limited rate "
                        "(page size then 250: 12 pages)")
    parser.add_argument("--server-delay", type=float, default=0.25,
                        help="with --network: seconds to build each page")
    parser.add_argument("--script", type=Path, default=SCRIPT,
                        help="the script to measure (e.g. the previous "
                        "release, tests/previous_release/fetch_experiment_results.py)")
    parser.add_argument("--pipeline", action="store_true",
                        help="progress on and off, and --max-results with a late filter "
                        "(6,000 traces of 2 KB in pages of 60, unless given)")
    args = parser.parse_args(argv)
    if args.pipeline:
        traces = args.traces if args.traces != 3000 else 6000
        trace_bytes = args.trace_bytes if args.trace_bytes != 12_000 else 2000
        page_size = args.page_size if args.page_size != 200 else 60
        run_pipeline_benchmark(traces, args.spans, trace_bytes, page_size, args.runs,
                               script_path=args.script.resolve())
        return
    if args.network and args.page_size == 200:
        args.page_size = 250
    run_benchmark(args.traces, args.spans, args.trace_bytes, args.page_size, args.runs,
                  network=args.network, server_delay=args.server_delay,
                  script_path=args.script.resolve())


if __name__ == "__main__":
    main()

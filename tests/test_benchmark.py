"""The benchmark's machinery on a tiny experiment, so it cannot rot. Asserts no times."""
from __future__ import annotations

import io
import json
import sys

import benchmark


def test_every_client_runs_the_counts_are_right_and_script_and_naive_agree(tmp_path):
    out = io.StringIO()
    table = benchmark.run_benchmark(traces=12, spans=5, trace_bytes=300, page_size=5, runs=1,
                                    out=out, outputs=tmp_path)
    # 3 pages and the trailing empty one; the cursor is only in the body: one at a time.
    assert table["counts"] == {"requests": 4, "pages": 3, "connections": 1, "in_flight": 1,
                               "requests_for_ten": 2}
    printed = out.getvalue()
    outputs = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    for client in ("floor", "naive", "script", "script --format jsonl",
                   "script --include all", "script --baseline"):
        assert f"| {client} |" in printed
        assert table[client]["seconds"] > 0 and table[client]["peak_mib"] > 1
    assert outputs["floor"] == b""
    records = json.loads(outputs["naive"])
    assert len(records) == 12
    assert json.loads(outputs["script"]) == records
    lines = outputs["script_--format_jsonl"].decode().splitlines()
    assert [json.loads(line) for line in lines] == records
    with_fields = json.loads(outputs["script_--include_all"])
    assert [{k: r[k] for k in records[0]} for r in with_fields] == records
    assert all(r["metrics"]["llm_calls"] == 1 for r in with_fields)
    compared = json.loads(outputs["script_--baseline"])
    assert [r["status"] for r in compared] == ["unchanged"] * 12


def test_the_network_rows_run_and_give_the_same_records_either_way(tmp_path):
    out = io.StringIO()
    table = benchmark.run_benchmark(traces=12, spans=5, trace_bytes=300, page_size=4, runs=1,
                                    out=out, outputs=tmp_path, network=True,
                                    server_delay=0.05)
    assert table["counts"]["requests"] == 4  # overlap itself: test_overlap.py (no timing)
    assert "network: 0.05 s of server time per page" in out.getvalue()
    one_at_a_time = tmp_path / "script,_BRAINTRUST_MAX_IN_FLIGHT=1"
    assert (tmp_path / "script").read_bytes() == one_at_a_time.read_bytes()
    assert len(json.loads(one_at_a_time.read_bytes())) == 12


def test_the_memory_benchmark_measures_a_run_and_the_store_it_keeps_on_disk():
    import benchmark_memory  # noqa: E402  (the issue 15 benchmark)

    fake = benchmark.start_fake(200, 5, 2000)
    try:
        env = benchmark.client_env(fake)
        script = [sys.executable, str(benchmark.SCRIPT), benchmark.EXPERIMENT_ID,
                  "--limit", "20"]
        # The last request (page 11, the empty one) is held 2 s, with the store's file
        # open: the poll, every 20 ms, sees it on any machine however loaded.
        fake.faults[11] = {"delay": 2}
        seconds, peak_mib, store_mib = benchmark_memory.measure(
            script, dict(env, BRAINTRUST_SPILL_MB="0", BRAINTRUST_HTTP_DEADLINE="30"))
        fake.faults.clear()
        in_memory = benchmark_memory.measure(script, env)
    finally:
        fake.close()
    assert seconds > 0 and peak_mib > 1
    assert store_mib > 0  # the store's file was seen while the script ran
    assert in_memory[2] == 0  # 200 small traces stay in memory by default


def test_the_pipeline_rows_run_and_the_late_filter_reads_every_page():
    out = io.StringIO()
    figures = benchmark.run_pipeline_benchmark(traces=30, spans=5, trace_bytes=300,
                                               page_size=3, runs=1, out=out)
    # The tagged cases are the three served last: all ten pages are needed, and no more.
    assert figures["requests"] == 10
    assert "progress on / off: " in out.getvalue()

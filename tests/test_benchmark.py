"""The benchmark's machinery on a tiny experiment, so it cannot rot. Asserts no times."""
from __future__ import annotations

import io
import json

import benchmark


def test_every_client_of_the_benchmark_runs_and_script_and_naive_agree(tmp_path):
    fake = benchmark.start_fake(traces=12, spans=5, trace_bytes=300)
    try:
        env = benchmark.client_env(fake)
        outputs = {}
        for name, command in benchmark.commands(fake, page_size=5).items():
            path = tmp_path / name.replace(" ", "_")
            seconds, peak_kib = benchmark.measure(command, env, str(path))
            assert seconds > 0 and peak_kib > 1024
            outputs[name] = path.read_bytes()
    finally:
        fake.close()
    assert outputs["floor"] == b""
    records = json.loads(outputs["naive"])
    assert len(records) == 12
    assert json.loads(outputs["script"]) == records
    lines = outputs["script --format jsonl"].decode().splitlines()
    assert [json.loads(line) for line in lines] == records
    with_fields = json.loads(outputs["script --include all"])
    assert [{k: r[k] for k in records[0]} for r in with_fields] == records
    assert all(r["metrics"]["llm_calls"] == 1 for r in with_fields)
    compared = json.loads(outputs["script --baseline"])
    assert [r["status"] for r in compared] == ["unchanged"] * 12


def test_the_benchmark_counts_requests_and_connections_and_prints_a_table():
    out = io.StringIO()
    table = benchmark.run_benchmark(traces=12, spans=5, trace_bytes=300, page_size=5, runs=1,
                                    out=out)
    assert table["counts"] == {"requests": 4, "pages": 3, "connections": 1,
                               "requests_for_ten": 2}
    printed = out.getvalue()
    for client in ("floor", "naive", "script", "script --format jsonl",
                   "script --include all", "script --baseline"):
        assert f"| {client} |" in printed

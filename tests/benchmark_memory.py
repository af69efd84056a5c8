"""Benchmark: the script's peak memory as experiments grow (issue 15). Not collected by
pytest; run it by hand (100,000 traces take several minutes, most of it in the fake):

    python3 tests/benchmark_memory.py                        # 1,000, 10,000 and 100,000 traces
    python3 tests/benchmark_memory.py --sizes 1000 10000     # quicker

For each size it starts the loopback fake API with a synthetic experiment of that many
traces (5 spans, ~12 KB of JSON each, page size 200 as in benchmark.py) and a baseline as
large, then runs the script once per mode, writing to /dev/null, and prints each run's peak
RSS and wall time (through benchmark.py's launcher: `os.wait4` of that process alone) and the
most disk its temporary store took (the size of the store's file, polled every 20 ms through
/proc while the script runs). Last, the cost of the disk per million cases: the same 10,000
traces with every row kept in memory (BRAINTRUST_SPILL_MB=100000) and on disk from the first
page (BRAINTRUST_SPILL_MB=0).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).parent))

from benchmark import (BASELINE_ID, EXPERIMENT_ID, LAUNCHER, SCRIPT, client_env,  # noqa: E402
                       start_fake)

MODES = {
    "json": [],
    "jsonl": ["--format", "jsonl"],
    "csv": ["--format", "csv"],
    "--summary": ["--summary"],
    "--baseline": ["--baseline", BASELINE_ID],
    "--baseline --summary": ["--baseline", BASELINE_ID, "--summary"],
}


def store_bytes(launcher_pid: int) -> int:
    """The size of the temporary store the launcher's child holds open, 0 if none."""
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    except OSError:
        return 0
    total = 0
    for pid in children.split():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                name = os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}"))
                # the store's file (not the script's own, whose folder has a like name)
                if name.startswith("braintrust-fetch-") and ".sqlite" in name:
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except OSError:
                pass
    return total


def measure(command: List[str], env: Dict[str, str]) -> Tuple[float, float, float]:
    """Wall seconds, peak RSS in MiB, and the store's largest size in MiB, of one run."""
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, *command], env=env,
                                   stdout=devnull, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, cwd=Path(__file__).parent)
        most = [0]

        def poll() -> None:
            while process.poll() is None:
                most[0] = max(most[0], store_bytes(process.pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, err = process.communicate()
        watcher.join()
    code, seconds, peak_kib = err.decode().split()[-3:]
    if int(code) != 0:
        raise RuntimeError(f"{command[:3]} exited {code}: {err.decode()[-500:]}")
    return float(seconds), int(peak_kib) / 1024, most[0] / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--trace-bytes", type=int, default=12_000)
    parser.add_argument("--page-size", type=int, default=200)
    args = parser.parse_args()
    script = [sys.executable, str(SCRIPT), EXPERIMENT_ID, "--limit", str(args.page_size)]
    results: Dict[str, Dict[int, Tuple[float, float, float]]] = {name: {} for name in MODES}
    cost = None
    for size in args.sizes:
        fake = start_fake(size, 5, args.trace_bytes)
        try:
            env = client_env(fake)
            measure(script + ["--max-results", "1"], env)  # warm the fake's page cache
            for name, flags in MODES.items():
                results[name][size] = measure(script + flags, env)
                print(f"{size} traces, {name}: {results[name][size]}", file=sys.stderr)
            if size == 10_000:
                in_memory = measure(script, dict(env, BRAINTRUST_SPILL_MB="100000"))
                on_disk = measure(script, dict(env, BRAINTRUST_SPILL_MB="0"))
                cost = (in_memory, on_disk)
        finally:
            fake.close()
            del fake
    print(f"Peak RSS in MiB (wall time in s; the store's largest size on disk in MiB), "
          f"one run each; traces of {args.trace_bytes / 1000:.0f} KB of JSON, 5 spans, "
          f"page size {args.page_size}; Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores")
    sizes = args.sizes
    print("| mode | " + " | ".join(f"{size:,} traces" for size in sizes)
          + (f" | {sizes[-1]:,} minus {sizes[0]:,} |" if len(sizes) > 1 else " |"))
    print("| --- |" + " ---: |" * (len(sizes) + (len(sizes) > 1)))
    for name, by_size in results.items():
        cells = [f"{by_size[s][1]:.1f} ({by_size[s][0]:.1f} s; {by_size[s][2]:.0f} MiB)"
                 for s in sizes]
        grown = [f"{by_size[sizes[-1]][1] - by_size[sizes[0]][1]:+.1f}"] if len(sizes) > 1 else []
        print(f"| {name} | " + " | ".join(cells + grown) + " |")
    if cost:
        (memory_s, memory_mib, _), (disk_s, disk_mib, disk_store) = cost
        print(f"10,000 traces all in memory: {memory_s:.2f} s, {memory_mib:.1f} MiB; all on "
              f"disk: {disk_s:.2f} s, {disk_mib:.1f} MiB, store {disk_store:.0f} MiB. Per "
              f"million cases the disk costs {(disk_s - memory_s) * 100:.0f} s and "
              f"{disk_store * 100 / 1024:.1f} GiB of temporary space")


if __name__ == "__main__":
    main()

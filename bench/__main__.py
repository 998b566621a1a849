"""`make bench`: run every benchmark, print the figures and write them, dated, with the machine, to BENCHMARKS.md.

Each benchmark is a script that prints one JSON object and measures Ephemera against a baseline in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
BENCHMARKS = [
    ("P1 + P5: zygote cold start, idle warm environment memory", ["bench/bench_cold_start.py"]),
    ("P2: warm synchronous invoke through HTTP", ["bench/bench_sync_invoke.py"]),
]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{platform.node()}: {os.cpu_count()} vCPU ({cpu}), {memory_kb // 1024 // 1024} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()} (sandbox: /usr/bin/python3)"
    )


def run(command: list[str]) -> dict:
    started = time.monotonic()
    print(f"running {' '.join(command)} ...", flush=True)
    completed = subprocess.run([sys.executable, *command], cwd=BASE_DIR, capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{completed.stderr[-3000:]}")
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(completed.stdout[completed.stdout.index("{") :])


def main() -> None:
    results = [(title, run(command)) for title, command in BENCHMARKS]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Latest run: **{stamp}** on {machine()}.",
        "",
        "Produced by `make bench` (`python -m bench`); every figure is measured against its baseline in the same run.",
        "Goals are DESIGN.md §7. Raw JSON of each benchmark follows its heading.",
        "",
    ]
    for title, result in results:
        lines += [f"## {title}", "", "```json", json.dumps(result, indent=2), "```", ""]
    (BASE_DIR / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""How soon the command lines answer, against `python -c "import torch"` on the same machine in the same run: the
wall time (median of N runs) of `python -m analysis --help`, `python -m rfsweep --help` and the demo's 122-job dry run
(`python -m rfsweep +experiment=demo -m dry_run=true`, its run and sweep folders in a temporary folder, which must
stay empty: a dry run writes nothing), each with its ratio to importing torch and whether it meets its target (the
helps at most 1.0x, the dry run at most 3x).
`python benchmarks/bench_cli.py [--n N] [--dry-run-n N]` (`make bench-cli`)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_JOBS = 122  # sweeps/demo.yaml: 61 variants x 2 data sets


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what `nproc` says: the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def timed(cmd: list[str], env: dict, check=None) -> float:
    """Wall seconds of one run of `cmd` (its output captured; a non-zero exit or a failed `check` stops the bench)."""
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if r.returncode != 0 or (check is not None and not check(r.stdout + r.stderr)):
        sys.exit(f"bench-cli: `{' '.join(cmd)}` failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return took


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5, help="runs per command; the median is reported (default 5)")
    p.add_argument("--dry-run-n", type=int, help="runs of the 122-job dry run (default: --n; it takes the longest)")
    a = p.parse_args(argv)
    if a.n < 1 or (a.dry_run_n is not None and a.dry_run_n < 1):
        p.error("--n and --dry-run-n must be at least 1")
    py, env = sys.executable, {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="rfsweep-bench-cli-") as tmp:
        dry = [py, "-m", "rfsweep", "+experiment=demo", "-m", "dry_run=true", f"paths.runs={tmp}/runs",
               f"paths.sweeps={tmp}/multirun", f"paths.cache={tmp}/cache"]
        cases = [  # (name, command, target ratio to import torch, runs, what its output must show)
            ('python -c "import torch"', [py, "-c", "import torch"], None, a.n, None),
            ("python -m analysis --help", [py, "-m", "analysis", "--help"], 1.0, a.n, None),
            ("python -m rfsweep --help", [py, "-m", "rfsweep", "--help"], 1.0, a.n,
             lambda out: "Configuration groups" in out),
            (f"dry run, {DEMO_JOBS} jobs (+experiment=demo -m dry_run=true)", dry, 3.0, a.dry_run_n or a.n,
             lambda out: out.count("dry-run: variant=") == DEMO_JOBS and not any(Path(tmp).iterdir())),
        ]
        print(f"machine: {cores()} cores (nproc), {cpu_model()}; {platform.python_implementation()} "
              f"{platform.python_version()}; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
        print(f"runs per command: {a.n}" + (f" ({a.dry_run_n} of the dry run)" if a.dry_run_n else "") +
              "; the median wall time; one untimed run of each of the first three before (bytecode, file cache)",
              flush=True)
        results = []
        for name, cmd, target, n, check in cases:
            if cmd is not dry:
                timed(cmd, env, check)  # warm-up, not counted
            times = [timed(cmd, env, check) for _ in range(n)]
            results.append((name, statistics.median(times), min(times), max(times), target))
            print(f"  measured: {name}: {statistics.median(times):.2f} s", flush=True)
    base = results[0][1]
    width = max(len(r[0]) for r in results)
    print(f"\n{'command':<{width}}  {'median s':>8}  {'min-max s':>13}  {'x torch':>7}  {'target':>7}  meets")
    for name, med, lo, hi, target in results:
        shown, verdict = ("-", "-") if target is None else (f"<={target:g}x", "yes" if med / base <= target else "NO")
        print(f"{name:<{width}}  {med:8.2f}  {f'{lo:.2f}-{hi:.2f}':>13}  {med / base:7.2f}  {shown:>7}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed on a machine where other work holds cores: all cores' threads vs the idle-core default.

    python benchmarks/busy_machine.py                 # 1 busy process, 300 steps of the CPU default
    python benchmarks/busy_machine.py --busy 0 --steps 200

Starts --busy processes that spin (pure Python: one core each), waits for them to show in the
load, then runs `sagan train` (the CPU defaults) twice, side by side in one run:
  all cores   --threads <all cores>: what sagan did before it picked threads
  default     no --threads: as many threads as cores are idle at the start (sagan.runtime.idle_cores)
and prints the images/s of each run (the mean of its metrics.jsonl records after the first).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spin() -> None:
    while True:
        pass


def images_per_second(run: Path) -> float:
    rates = [json.loads(x)["images_per_s"] for x in (run / "metrics.jsonl").read_text().splitlines() if "loss_d" in x]
    return sum(rates[1:]) / max(1, len(rates) - 1)


def train(run: Path, steps: int, threads: int | None) -> tuple[float, str]:
    argv = [sys.executable, "-m", "sagan", "train", "--out", str(run), "--steps", str(steps), "--quiet"]
    argv += ["--log-every", "25", "--sample-every", "10000", "--checkpoint-every", "10000"]
    argv += ["--threads", str(threads)] if threads else []
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    first_line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    return images_per_second(run), first_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=1, help="spinning processes (default 1)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    time.sleep(3)  # let the load average see them
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = {
                f"all cores (--threads {cores})": train(Path(tmp) / "all", args.steps, cores),
                "default (idle cores)": train(Path(tmp) / "default", args.steps, None),
            }
    finally:
        for p in spinners:
            p.terminate()
    print(f"{cores} cores, {args.busy} busy process(es), {args.steps} steps of `sagan train` (CPU defaults)")
    for name, (rate, line) in rows.items():
        picked = line.split("picked ")[-1] if "picked" in line else ""
        print(f"  {name:<28}{rate:>7.1f} images/s   {picked}")
    base = next(iter(rows.values()))[0]
    print(f"default / all cores: {rows['default (idle cores)'][0] / base:.2f}x")


if __name__ == "__main__":
    main()

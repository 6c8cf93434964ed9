"""Time to the first training step on a folder of many small images: before and after listing without opening.

    python benchmarks/time_to_first_step.py                     # 100,000 images, before = 47a4ada
    python benchmarks/time_to_first_step.py --images 20000 --before-rev HEAD~5

Makes (once, under --folder) a folder of N 8x8 PNGs in 10 class subfolders, then times
`sagan train --steps 1` on it, side by side in one run:
  before   the sagan of --before-rev (from `git archive`), which opened and verified every file before step 1
  after    this tree: the folder is listed with os.scandir, no file opened; the listing is saved in the run
  resumed  this tree, `--resume` of that run: the saved listing is read, the folder not walked
  shapes   this tree on the built-in data: the start-up cost that is not the folder's
Every run is one process, one thread, the same tiny net; wall-clock seconds, best of --repeat.
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

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--steps", "1", "--batch-size", "4", "--ch", "8", "--quiet", "--sample-count", "4"]
FLAGS += ["--sample-every", "1000", "--checkpoint-every", "1000"]


def make_folder(folder: Path, n: int) -> Path:
    marker = folder / f".complete-{n}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(n):
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 128)).save(sub / f"{i:07d}.png")
    marker.touch()
    return folder


def timed(argv: list[str], pythonpath: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1")
    cmd, start = [sys.executable, "-m", "sagan", *argv], time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def old_tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--before-rev", default="47a4ada")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "sagan-bench-images")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    t0 = time.perf_counter()
    folder = make_folder(args.folder / str(args.images), args.images)
    print(f"folder of {args.images:,} 8x8 PNGs in 10 classes: {folder} ({time.perf_counter() - t0:.0f} s to make)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_src = old_tree(args.before_rev, tmp / "before")
        rows: dict[str, float] = {}

        def best(key: str, value: float) -> None:
            rows[key] = min(rows.get(key, value), value)

        for r in range(args.repeat):
            runs = tmp / f"runs{r}"
            best("before", timed(["train", "--data", str(folder), "--out", str(runs / "before"), *FLAGS], before_src))
            best("after", timed(["train", "--data", str(folder), "--out", str(runs / "after"), *FLAGS], ROOT / "src"))
            resume = ["train", "--resume", str(runs / "after"), "--steps", "2", "--quiet"]
            best("resumed", timed(resume, ROOT / "src"))
            best("shapes", timed(["train", "--out", str(runs / "shapes"), "--data-size", "64", *FLAGS], ROOT / "src"))
    base = rows["shapes"]
    print(f"\n{'run':<10}{'wall s':>9}{'minus shapes':>14}")
    for key, value in rows.items():
        print(f"{key:<10}{value:>9.2f}{value - base:>14.2f}")
    before, after, resumed = (rows[k] - base for k in ("before", "after", "resumed"))
    print(f"\nbefore / after: {rows['before'] / rows['after']:.1f}x wall; the folder's own cost "
          f"{before:.1f} s -> {after:.1f} s (resumed: {resumed:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()

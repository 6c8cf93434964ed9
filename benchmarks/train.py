"""SAGAN training throughput and memory: fused attention vs the same nets with naive attention.

    python benchmarks/train.py [--presets 32 128] [--batch 8 2] [--steps 6]

Runs the real training loop (`sagan.training.train`) for each preset twice, once with the fused
SDPA attention and once with `fused_attention=False`: every attention block on its explicit
bmm + softmax path (which stores the N x N matrix, as public ports do); same weights, data, seed. Each variant
runs in a fresh process: images/s is read from the run's metrics.jsonl (the second half of the
steps, after warm-up), peak memory is the growth of the process's peak RSS during training on CPU
or torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WORKER = r"""
import json, sys, torch
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
from attention import rss_growth
from sagan.training import TrainConfig, train
config = TrainConfig.create(**json.loads({config!r}))
cuda = torch.cuda.is_available()
if cuda:
    torch.cuda.reset_peak_memory_stats()
peak = rss_growth(lambda: train(config))
if cuda:
    peak = torch.cuda.max_memory_allocated()
lines = [json.loads(l) for l in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({{"images_per_s": lines[-1]["images_per_s"], "peak_bytes": peak}}))
"""


def run_variant(preset: int, batch: int, steps: int, fused: bool, out: Path) -> dict:
    half = max(1, steps // 2)
    config = {
        "resolution": preset,
        "batch_size": batch,
        "steps": 2 * half,
        "log_every": half,
        "sample_every": 10**9,
        "checkpoint_every": 10**9,
        "quiet": True,
        "out": str(out),
        "ch": 64,
        "data_size": max(64, batch * 2 * half),
    }
    config["fused_attention"] = fused
    code = WORKER.format(bench_dir=str(Path(__file__).parent), config=json.dumps(config))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see benchmarks/attention.py: RSS follows live tensors
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="per preset (default: 8 and 2 on CPU, 64 and 32 on GPU)"
    )
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    batches = args.batch or ([64, 32] if cuda else [8, 2])
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(
        f"# {time.strftime('%Y-%m-%d')} torch {torch.__version__} on {'cuda' if cuda else 'cpu'} ({name}), "
        f"threads={torch.get_num_threads()}, ch=64 presets, {'bf16' if cuda else 'fp32'}, "
        f"{args.steps} steps per variant"
    )
    print(
        f"{'preset':>6} {'batch':>5} | {'fused img/s':>11} {'naive img/s':>11} {'speed-up':>8} | "
        f"{'fused MiB':>9} {'naive MiB':>9} {'fused/naive mem':>15}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset, batch in zip(args.presets, batches):
            fused = run_variant(preset, batch, args.steps, True, Path(tmp) / f"f{preset}")
            naive = run_variant(preset, batch, args.steps, False, Path(tmp) / f"n{preset}")
            print(
                f"{preset:>6} {batch:>5} | {fused['images_per_s']:11.2f} {naive['images_per_s']:11.2f} "
                f"{fused['images_per_s'] / naive['images_per_s']:7.2f}x | {fused['peak_bytes'] / 2**20:9.0f} "
                f"{naive['peak_bytes'] / 2**20:9.0f} {fused['peak_bytes'] / naive['peak_bytes']:14.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The tiny, fast, reproducible training runs that the tests make: their flags, and torchrun."""

from __future__ import annotations

import os
import subprocess
import sys


def tiny_flags(batch_size: int = 4, sample_count: int = 4, log_every: int = 1, device: str | None = None) -> list[str]:
    """A narrow net on 64 shapes images, one thread (runs compared bit for bit must compute alike), no bar."""
    flags = f"--batch-size {batch_size} --ch 8 --threads 1 --quiet --data-size 64 --sample-count {sample_count}"
    flags += f" --log-every {log_every}" + (f" --device {device}" if device else "")
    return flags.split()


def torchrun(*args: str, max_restarts: int = 0) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m sagan train ARGS`, one thread per process, output piped."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--max-restarts", str(max_restarts), "-m", "sagan", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

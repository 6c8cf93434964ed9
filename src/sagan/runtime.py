"""Where and how a command computes: the device, mixed precision, CPU threads."""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device; anything else is a one-line ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: sagan runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 ..")
    return device


@dataclass(frozen=True)
class Precision:
    """Mixed precision for one device: the autocast dtype (None: full precision); fp16 also needs grad scalers."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def choose(cls, amp: str, device: torch.device) -> Precision:
        """`auto`: bf16 on GPUs that support it, fp16 (with a grad scaler) on older ones, off on CPU."""
        if amp == "auto":
            amp = "off" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
        return cls(device.type, dtype)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, active for fp16 only (bf16 has fp32's range): one per optimiser."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def idle_cores(sample_s: float = 0.3) -> int:
    """Cores this process may use that are not busy with other work right now, at least 1.

    torch uses every core by default; on a machine where another process is busy, its threads
    then wait on each other, and fewer threads run faster (benchmarks/busy_machine.py). Busy time is
    read per CPU from /proc/stat over `sample_s` seconds, for the CPUs this process may run on (it sees
    a process that started a moment ago), or, where there is no /proc, from the one-minute load average.
    """
    cpus = _allowed_cpus()
    busy = busy_cores(cpus, sample_s)
    return max(1, min(len(cpus), round(len(cpus) - busy)))


def _allowed_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """{cpu: (idle, total) jiffies since boot} from /proc/stat's per-CPU lines; None where there is none."""
    try:
        with open("/proc/stat") as fh:
            lines = [line.split() for line in fh if line.startswith("cpu") and line[3:4].isdigit()]
        times = {}
        for name, *fields in lines:
            values = [int(v) for v in fields]
            times[int(name[3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values[:8]))
    except (OSError, ValueError, IndexError):
        return None
    return times or None  # idle + iowait, of user..steal (guest time is inside user)


def busy_cores(cpus: set[int], sample_s: float = 0.3) -> float:
    """How many of `cpus`' worth of work the machine is doing now (all processes)."""
    first = _cpu_times()
    if first is not None:
        time.sleep(sample_s)
        second = _cpu_times()
        if second is not None:
            busy = 0.0
            for cpu in cpus & first.keys() & second.keys():
                idle, total = second[cpu][0] - first[cpu][0], second[cpu][1] - first[cpu][1]
                busy += 1 - idle / total if total > 0 else 0.0
            return busy
    try:
        return min(os.getloadavg()[0], len(cpus))
    except OSError:
        return 0.0

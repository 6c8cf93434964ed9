"""A run directory: its lock, `config.json`, `metrics.jsonl` and sample grids. Used by train, sample, eval and plot.

RUN/.lock                 held by the one process that trains into RUN (rank 0 under torchrun)
RUN/config.json           what the run is (TrainConfig, class names, processes)
RUN/metrics.jsonl         one JSON object per line: training records and evaluations
RUN/samples/step-N.png    sample grids of the EMA generator
RUN/checkpoint-N.pt       see sagan.checkpoint
RUN/listing.json          a folder dataset's listing, read again on resume (see data.ImageFolderDataset)
RUN/fidelity-cache/       the real images' Inception features, computed once per run (see sagan.metrics)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typing_extensions import Self

from .files import RunLock, atomic_write_json, atomic_write_text, remove_stale_temporaries

LISTING_FILE = "listing.json"
FIDELITY_CACHE = "fidelity-cache"


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed (rank 0 only)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            # Drop lines from after the checkpoint we resume from, and any line a crash cut short.
            kept = [r for r in self.read(self.path) if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """The records of a metrics.jsonl; a line that a crash cut short, or that is not a record, is skipped."""
        records = []
        for line in Path(path).read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if (
                isinstance(record, dict)
                and isinstance(record.get("step"), int)
                and not isinstance(record["step"], bool)
            ):
                records.append(record)
        return records

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


class RunDirectory:
    """The files of one run, written by the process that holds its lock.

    Args:
        path: the folder (created if missing).
        writer: True for the process that writes (rank 0); the others only read paths from it.
    """

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path, self.writer = Path(path), writer
        self.lock = RunLock(self.path)
        self.metrics: MetricsLog | None = None

    def open(self, config: dict[str, Any], resume_step: int | None) -> RunDirectory:
        """Create and lock the folder, clear a killed process's temporaries, write config.json."""
        if not self.writer:
            return self
        try:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"cannot create the run directory {self.path}: {err.strerror}; pass another --out"
            ) from None
        self.lock.acquire()
        for folder in (self.path, self.path / "samples"):
            remove_stale_temporaries(folder)
        atomic_write_json(self.path / "config.json", config)
        self.metrics = MetricsLog(self.path / "metrics.jsonl", resume_step)
        return self

    def log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def sample_path(self, step: int) -> Path:
        return self.path / "samples" / f"step-{step:08d}.png"

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (for `sagan plot`)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a sagan run directory?")
    return MetricsLog.read(path)

"""Checkpoints: atomic save, safe load (no code runs), fallback past broken files, pruning.

A run directory holds `checkpoint-<step>.pt` files. Each is written to a temporary file and
renamed into place, and older ones are deleted only after the new one is complete, so a crash
at any moment leaves at least one loadable checkpoint. Loading uses `torch.load(weights_only=True)`:
a file that holds anything but tensors and plain data is refused without running it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .files import atomic_write

#: Bumped when the checkpoint layout changes; other versions are refused with a clear message.
FORMAT_VERSION = 1
CHECKPOINT_GLOB = "checkpoint-*.pt"
_STEP = re.compile(r"checkpoint-(\d+)\.pt$")
REQUIRED_KEYS = ("format_version", "step", "config", "model_config", "G", "D", "G_ema")


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read or used; the message names the file and the fix."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in run_dir, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob(CHECKPOINT_GLOB) if (m := _STEP.search(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write state to path atomically; on failure the previous files are untouched."""
    path = Path(path)
    try:
        atomic_write(path, lambda fh: torch.save(state, fh))
    except OSError as err:
        raise CheckpointError(
            f"could not write checkpoint {path}: {err.strerror or err}; free disk space or fix the folder's "
            f"permissions (earlier checkpoints in {path.parent} are intact)"
        ) from None


def prune_checkpoints(run_dir: str | Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != protect:
            old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without executing anything in it; validate its layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run code "
            f"when unpickled ({first[:160]}); only load checkpoints written by sagan"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, zip errors... for damaged files
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}); use an earlier checkpoint") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a sagan training checkpoint (missing {[k for k in REQUIRED_KEYS if k not in (state if isinstance(state, dict) else {})]})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, this sagan reads format {FORMAT_VERSION}; "
            f"use the sagan version that wrote it"
        )
    return state


def load_latest(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that loads; broken newer ones are skipped with a warning."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint-*.pt in {run_dir}; is it a sagan run directory?")
    errors = []
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{str(err).split('; ')[0]}; falling back to the previous checkpoint")
            continue
        return path, state
    raise CheckpointError(f"no loadable checkpoint in {run_dir}: {errors[0]}")


def resolve_checkpoint(run_or_file: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or a run directory's newest loadable checkpoint."""
    target = Path(run_or_file)
    if target.is_dir():
        return load_latest(target)
    return target, load_checkpoint(target)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """load_state_dict with a one-line error when the checkpoint was made for other networks."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path}: its {what} weights do not fit the networks built from its config ({detail}); "
            f"the file was written by another config or version of sagan"
        ) from None


def load_generator(run_or_file: str | Path, use_ema: bool = True):
    """The generator of a checkpoint (its EMA copy by default), in eval mode on the CPU; and the checkpoint."""
    from .models import Generator  # the nets import nothing from here; keep it that way

    path, state = resolve_checkpoint(run_or_file)
    G = Generator(**state["model_config"]["generator"])
    load_state(G, state["G_ema" if use_ema else "G"], path, "EMA generator" if use_ema else "generator")
    return G.eval(), state


def discriminator_from(state: dict[str, Any], path: str | Path):
    """The discriminator held in a loaded checkpoint `state` (read from `path`), in eval mode."""
    from .models import Discriminator

    D = Discriminator(**state["model_config"]["discriminator"])
    load_state(D, state["D"], path, "discriminator")
    return D.eval()

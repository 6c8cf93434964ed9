"""Checkpoints: the `TrainState` schema, atomic save, safe load (no code runs), fallback past broken files.

A run directory holds `checkpoint-<step>.pt` files. Each is written to a temporary file and
renamed into place, and older ones are deleted only after the new one is complete, so a crash
at any moment leaves at least one loadable checkpoint. Loading uses `torch.load(weights_only=True)`:
a file that holds anything but tensors and plain data is refused without running it. What a file
claims (its config) is validated, and checked against the tensors whose size it sets, before any
network is allocated; `load_state` checks every shape when the weights go into the nets.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, ModelConfig, TrainConfig
from .files import atomic_write, describe_write_error

#: Bumped when the checkpoint layout changes. Format 1 (a flat config) is still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        raise CheckpointError(
            f"could not write checkpoint {path}: {describe_write_error(err)}; free disk space in {path.parent} or fix "
            f"its permissions (earlier checkpoints in {path.parent} are intact)"
        ) from None


def prune_checkpoints(run_dir: str | Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != protect:
            old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without executing anything in it; check its layout and version."""
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
    except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, EOFError, zip errors... for damaged files)
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}); use an earlier checkpoint"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if k not in (state if isinstance(state, dict) else {})]
        raise CheckpointError(f"{path} is not a sagan training checkpoint (missing {missing})")
    if state["format_version"] not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']!r}, this sagan reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}; use the sagan version that wrote it"
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


_GENERATOR_EXTRAS = {"shared_embedding": False, "hierarchical_z": False, "embed_dim": 128}


def generator_config_of(g: Any, source: str) -> ModelConfig:
    """The ModelConfig of a generator's own config dict (`Generator.config`, as checkpoints and exports hold it)."""
    if not isinstance(g, dict):
        raise CheckpointError(f"{source}: the generator's config is a {type(g).__name__}, not a mapping")
    g = dict(g)
    if any(g.pop(k, v) != v for k, v in _GENERATOR_EXTRAS.items()):
        raise CheckpointError(f"{source}: a generator with {_GENERATOR_EXTRAS} changed is not one sagan trains")
    renamed = {"attention": "attention_g"}
    try:
        model = ModelConfig.from_dict({renamed.get(k, k): v for k, v in g.items()}, source)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    if model.ch is None or model.num_classes is None:
        raise CheckpointError(f"{source}: the generator's config lacks its width or number of classes")
    return model


def class_names_of(names: Any, num_classes: int, source: str | Path) -> list[str]:
    """The class names a checkpoint or export holds: one string per class, or none (data without names)."""
    if not isinstance(names, list) or len(names) not in (0, num_classes) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(
            f"{source}: its class names are not a list of {num_classes} strings, one per class; the file was "
            f"written by another tool or version of sagan"
        )
    return names


def nets_config(model: ModelConfig) -> dict[str, dict[str, Any]]:
    """What the nets' own `.config` dicts hold, for a resolved ModelConfig (attention lists filled in)."""
    return {
        "generator": {**model.generator_kwargs(), **_GENERATOR_EXTRAS},
        "discriminator": model.discriminator_kwargs(),
    }


def model_config_of(nets: Any, source: str) -> ModelConfig:
    """The ModelConfig that a checkpoint's `model_config` ({"generator": ..., "discriminator": ...}) describes."""
    if not isinstance(nets, dict) or not isinstance(nets.get("discriminator"), dict):
        raise CheckpointError(f"{source}: its model_config is not a mapping with 'generator' and 'discriminator'")
    model, d = generator_config_of(nets.get("generator"), source), nets["discriminator"]
    if set(d) != {"resolution", "num_classes", "ch", "attention"} or (d["resolution"], d["num_classes"]) != (
        model.resolution,
        model.num_classes,
    ):
        raise CheckpointError(f"{source}: the discriminator's config {d} does not match the generator's")
    try:
        model.ch_d, model.attention_d = d["ch"], d["attention"]
        return ModelConfig.from_dict(vars(model), source)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _require_tensors(state: Any, path: str | Path, what: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: its {what} weights are not a mapping of tensors")


def check_shapes(state: dict[str, Any], expected: dict[str, tuple[int, ...]], path: str | Path, what: str) -> None:
    """The tensors of a state dict against the shapes of the network they are for."""
    _require_tensors(state, path, what)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise CheckpointError(
            f"{path}: its {what} weights do not fit the networks built from its config ({len(wrong)} tensor(s) differ, "
            f"first {wrong[0]}: {got.get(wrong[0])} vs {expected.get(wrong[0])}); "
            f"the file was written by another config or version of sagan"
        )


def check_sizes(state: Any, model: ModelConfig, net: str, path: str | Path, what: str) -> None:
    """The size-defining tensors of a state dict against the config (see models.size_shapes), before any build."""
    from .models import size_shapes

    _require_tensors(state, path, what)
    for key, shape in size_shapes(model)[net].items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            raise CheckpointError(
                f"{path}: its {what} weights do not fit the networks built from its config ({key}: {got} vs "
                f"{shape}); the file was written by another config or version of sagan"
            )


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """load_state_dict with a one-line error when the checkpoint was made for other networks."""
    check_shapes(state, {k: tuple(v.shape) for k, v in module.state_dict().items()}, path, what)
    module.load_state_dict(state)


@dataclass
class TrainState:
    """Everything a run needs to continue: the checkpoint schema, saved and validated in one place.

    `config` is resolved (no None widths, batch, steps); `rng` holds the global CPU generator, the
    training noise generator and, where there is one, the CUDA generator.
    """

    config: TrainConfig
    classes: list[str]
    step: int
    data_position: int
    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor]
    G_ema: dict[str, torch.Tensor]
    opt_G: dict[str, Any]
    opt_D: dict[str, Any]
    rng: dict[str, torch.Tensor]
    best_fid: float = math.inf
    scaler: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        nets = nets_config(self.config.model)
        return {
            "format_version": FORMAT_VERSION,
            "sagan_version": __version__,
            "step": self.step,
            "data_position": self.data_position,
            "config": asdict(self.config),
            "model_config": nets,
            "classes": self.classes,
            "G": self.G,
            "D": self.D,
            "G_ema": self.G_ema,
            "opt_G": self.opt_G,
            "opt_D": self.opt_D,
            "rng": self.rng,
            "best_fid": self.best_fid,
            "scaler": self.scaler,
        }

    def save(self, path: str | Path) -> Path:
        save_checkpoint(self.to_dict(), path)
        return Path(path)

    @classmethod
    def from_dict(cls, state: dict[str, Any], path: str | Path) -> TrainState:
        """Validate a loaded checkpoint: its config, and its size-defining tensors against that config.

        Every other shape is checked when the weights are loaded into the nets (`load_state`).
        """
        model = model_config_of(state["model_config"], str(path))
        try:
            config = TrainConfig.from_dict(state["config"], str(path))
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        config.model = model
        nets = {"G": "generator", "G_ema": "EMA generator", "D": "discriminator"}
        for key, what in nets.items():
            check_sizes(state[key], model, key[0], path, what)
        classes = class_names_of(state.get("classes", []), model.num_classes or 0, path)
        for key in ("step", "data_position"):
            if not isinstance(state.get(key, 0), int) or state.get(key, 0) < 0:
                raise CheckpointError(f"{path}: its {key} is not a non-negative integer")
        return cls(
            config,
            classes,
            state["step"],
            state.get("data_position", 0),
            state["G"],
            state["D"],
            state["G_ema"],
            state.get("opt_G", {}),
            state.get("opt_D", {}),
            state.get("rng", {}),
            float(state.get("best_fid", math.inf)),
            state.get("scaler") or {},
        )

    @classmethod
    def load(cls, run_or_file: str | Path) -> tuple[Path, TrainState]:
        """The newest loadable checkpoint of a run directory (or one file), validated."""
        path, state = resolve_checkpoint(run_or_file)
        return path, cls.from_dict(state, path)


def load_generator(run_or_file: str | Path, use_ema: bool = True):
    """The generator of a checkpoint (its EMA copy by default), in eval mode on the CPU; and the TrainState."""
    path, state = TrainState.load(run_or_file)
    return generator_from(state, path, use_ema), state


def generator_from(state: TrainState, path: str | Path, use_ema: bool = True):
    """The generator (or its EMA copy) held in a loaded TrainState (read from `path`), in eval mode."""
    from .models import build_generator

    G = build_generator(state.config.model)
    load_state(G, state.G_ema if use_ema else state.G, path, "EMA generator" if use_ema else "generator")
    G.class_names = list(state.classes)
    return G.eval()


def discriminator_from(state: TrainState, path: str | Path):
    """The discriminator held in a loaded TrainState (read from `path`), in eval mode."""
    from .models import build_discriminator

    D = build_discriminator(state.config.model)
    load_state(D, state.D, path, "discriminator")
    return D.eval()

"""What a run is: `ModelConfig` (the networks) inside `TrainConfig` (data, optimisation, the run).

Each field is written once here, with its default, its allowed range and its help text; the CLI
builds its flags from these fields and `validate` checks a config from any source (flags, a
library call, a checkpoint) against the same ranges. `ModelConfig` holds exactly what a resumed
run may not change. This module imports no torch, so `sagan --help` stays fast.

None in a field means "pick for me": the device's defaults (`DEVICE_DEFAULTS`) fill widths, batch,
length and the G learning rate; the data fills `num_classes`.
"""

from __future__ import annotations

import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

#: The image resolutions that have a preset (sagan.models.PRESETS; a test keeps the two equal).
RESOLUTIONS = (32, 64, 128, 256)
#: Upper bounds on sizes read from flags or files: far beyond any published GAN, low enough that a
#: typo or a hostile file is refused before it allocates (ch=4096 makes the 128 preset's widest
#: block 65,536 channels; ImageNet-21k has 21,841 classes).
MAX_WIDTH, MAX_CLASSES, MAX_Z, MAX_BATCH, MAX_STEPS = 4096, 100_000, 4096, 65_536, 10**9
MAX_DATA_SIZE = 10**7  # shapes images: the sampler keeps one permutation of this many indices

#: What None picks, by device type: on a CPU a run that a 2-core laptop finishes in minutes, on a
#: GPU the paper's recipe. docs/tuning.md has the trials behind the CPU row.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"ch": 16, "ch_d": 24, "batch_size": 16, "steps": 4600, "lr_g": 2e-4},
    "cuda": {"ch": 64, "ch_d": 64, "batch_size": 64, "steps": 100_000, "lr_g": 1e-4},
}
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
LOSS_CHOICES = ("hinge", "nonsaturating", "wasserstein")
METRIC_CHOICES = ("fid", "is", "kid")


class ConfigError(ValueError):
    """A config value is out of range or conflicts with a saved run; the message names the field."""


def _field(default: Any, help: str, **rules: Any) -> Any:
    """A config field: `rules` are min / max / below / choices / flag; `help` is the flag's text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=dict(help=help, **rules))
    return field(default=default, metadata=dict(help=help, **rules))


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(name: str, value: Any, rules: dict[str, Any]) -> None:
    """Raise ConfigError unless `value` obeys `rules`; the rules of one field, for flags and files alike."""
    if value is None:
        return
    label = f"{flag_name(name)} {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{label} is not a finite number")
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{label}: choose one of {', '.join(map(str, rules['choices']))}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if "min" in rules and item < rules["min"]:
            raise ConfigError(f"{label} must be at least {rules['min']}")
        if "max" in rules and item > rules["max"]:
            raise ConfigError(f"{label} must be at most {rules['max']:,}")
        if "below" in rules and not item < rules["below"]:
            raise ConfigError(f"{label} must be below {rules['below']}")


def _check_types(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """The fields of `cls` in `data`, refusing unknown keys and values of the wrong type."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown config field(s) {unknown}; it was written by another version of sagan")
    for name, value in data.items():
        kind = str(known[name].type)
        ok = (value is None and "None" in kind) or (
            isinstance(value, bool)
            if kind.startswith("bool")
            else isinstance(value, int) and not isinstance(value, bool)
            if kind.startswith("int")
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind.startswith("float")
            else isinstance(value, str)
            if kind.startswith("str")
            else isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if kind.startswith("list")
            else False
        )
        if not ok:
            raise ConfigError(f"{source}: config field {name}={value!r} should be of type {kind}")
    return {k: float(v) if str(known[k].type).startswith("float") and v is not None else v for k, v in data.items()}


@dataclass
class ModelConfig:
    """The networks: what `sagan.models.build` needs, and what a resumed run must keep."""

    resolution: int = _field(32, "image size: one of 32, 64, 128, 256", min=1)
    z_dim: int = _field(128, "length of the noise vector z", min=1, max=MAX_Z)
    num_classes: int | None = _field(
        None,
        "classes of a conditional model (0: unconditional)",
        default_help="from the data",
        min=0,
        max=MAX_CLASSES,
        cli=False,
    )
    ch: int | None = _field(None, "G's base width, and D's unless --ch-d is given", min=1, max=MAX_WIDTH)
    ch_d: int | None = _field(
        None, "D's base width", default_help="--ch if given, else 24 on CPU, 64 on GPU", min=1, max=MAX_WIDTH
    )
    attention_g: list[int] | None = _field(
        None, "G feature resolutions with self-attention, e.g. 16", default_help="the preset's", min=1, max=256
    )
    attention_d: list[int] | None = _field(
        None, "D feature resolutions with self-attention", default_help="the preset's", min=1, max=256
    )

    def validate(self) -> ModelConfig:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), dict(f.metadata))
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution={self.resolution!r} has no preset; choose one of {list(RESOLUTIONS)}")
        return self

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the model config is a {type(data).__name__}, not a mapping")
        return cls(**_check_types(cls, data, source)).validate()

    def generator_kwargs(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            "num_classes": self.num_classes or 0,
            "ch": self.ch,
            "attention": self.attention_g,
        }

    def discriminator_kwargs(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "num_classes": self.num_classes or 0,
            "ch": self.ch_d,
            "attention": self.attention_d,
        }


@dataclass
class TrainConfig:
    """A training run. `model` defines the nets; every other field may change when a run is resumed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = _field(
        "shapes",
        "shapes (built-in), cifar10, a folder or .zip of images, an .npz, cifar-10-python.tar.gz, or hf:DATASET",
    )
    split: str = _field("train", "the split of hf: data")
    image_column: str = _field("image", "the image column of hf: data")
    label_column: str | None = _field(None, "the label column of hf: data", default_help="label, if there is one")
    mirror: bool = _field(
        False, "flip real images left-right at random (deterministic by seed)", flag=("--mirror", "--no-mirror")
    )
    steps: int | None = _field(None, "generator steps", min=1, max=MAX_STEPS)
    batch_size: int | None = _field(None, "images per process and step", min=1, max=MAX_BATCH)
    out: str | None = _field(None, "run directory", default_help="runs/<timestamp>")
    conditional: bool | None = _field(
        None, "class-conditional", default_help="when the data has labels", flag=("--conditional", "--unconditional")
    )
    loss: str = _field("hinge", "GAN loss", choices=LOSS_CHOICES)
    lr_g: float | None = _field(None, "generator learning rate", min=0, below=1)
    lr_d: float = _field(4e-4, "discriminator learning rate (two-timescale: 4x G's in the paper)", min=0, below=1)
    lr_decay: float = _field(
        0.0,
        "final fraction of the run over which both rates fall linearly to 0 (0: constant, as in the paper)",
        min=0,
        below=1,
    )
    beta1: float = _field(0.0, "Adam beta1", min=0, below=1)
    beta2: float = _field(0.9, "Adam beta2", min=0, below=1)
    d_steps: int = _field(1, "D steps per G step", min=1, max=100)
    ema_decay: float = _field(0.999, "EMA decay of G's weights, after a warm-up", min=0, below=1)
    seed: int = _field(0, "seed for weights, data order and noise", min=0, max=2**62)
    device: str = _field("auto", "auto, cpu, cuda or cuda:N")
    compile: bool = _field(False, "torch.compile the networks", flag=("--compile", "--no-compile"))
    amp: str = _field(
        "auto",
        "mixed precision: auto (bf16 on GPUs that have it, else fp16 with a grad scaler; "
        "off on CPU), bf16, fp16 or off",
        choices=AMP_CHOICES,
    )
    channels_last: bool = _field(True, "NHWC convs in a single process", flag=("--channels-last", "--no-channels-last"))
    sync_bn: bool = _field(
        True, "batch-norm statistics over all processes under DDP", flag=("--sync-bn", "--no-sync-bn")
    )
    fused_attention: bool = _field(True, "fused attention kernel (off: the explicit N x N reference path)", cli=False)
    num_workers: int | None = _field(None, "data-loading processes", default_help="0 on CPU, 8 on GPU", min=0, max=64)
    threads: int | None = _field(
        None, "CPU threads", default_help="as many as cores are idle at the start, kept on resume", min=1, max=1024
    )
    data_dir: str | None = _field(None, "folder of downloaded datasets", default_help="$SAGAN_DATA or ~/.cache/sagan")
    download: bool = _field(False, "fetch CIFAR-10 if it is not in --data-dir (needs internet)", flag=("--download",))
    data_size: int = _field(50_000, "images in the shapes dataset", min=1, max=MAX_DATA_SIZE)
    log_every: int = _field(50, "steps between metrics.jsonl lines", min=1)
    sample_every: int = _field(500, "steps between sample grids", min=1)
    checkpoint_every: int = _field(500, "steps between checkpoints", min=1)
    keep_checkpoints: int = _field(2, "checkpoints kept", min=1, max=10_000)
    sample_count: int = _field(64, "images in each sample grid", min=1, max=1024)
    quiet: bool = _field(False, "no progress bar", flag=("--quiet",))
    tensorboard: bool = _field(
        False, "also write TensorBoard events (pip install 'sagan-pytorch[tensorboard]')", flag=("--tensorboard",)
    )
    wandb: bool = _field(False, "also log to Weights & Biases (pip install 'sagan-pytorch[wandb]')", flag=("--wandb",))
    eval_every: int = _field(0, "steps between evaluations (0: never); keeps best.pt by FID", min=0)
    eval_n: int = _field(5000, "samples per evaluation", min=2, max=1_000_000)
    eval_metrics: str = _field("fid", "comma-separated subset of fid,is,kid,prc (precision/recall)")
    inception_weights: str | None = _field(
        None, "Inception weights file for evaluation", default_help="$SAGAN_INCEPTION_WEIGHTS, then torch hub's folder"
    )

    @classmethod
    def create(cls, **values: Any) -> TrainConfig:
        """A config from flat keyword arguments: model fields (ch, resolution, ...) go into `model`."""
        model_names = {f.name for f in fields(ModelConfig)}
        model = {k: values.pop(k) for k in list(values) if k in model_names}
        return cls(model=ModelConfig(**model), **values)

    @classmethod
    def from_run(cls, run_or_checkpoint: str | Path) -> TrainConfig:
        """The config a run was trained with (from its newest loadable checkpoint), to continue or vary it."""
        from .checkpoint import TrainState

        return TrainState.load(run_or_checkpoint)[1].config

    def flat(self) -> dict[str, Any]:
        """Every field by name, the model's included (the shape of the CLI's flags)."""
        out = asdict(self)
        out.update(out.pop("model"))
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TrainConfig:
        """A config read from a file (nested, or format 1's flat layout), type-checked and validated."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the training config is a {type(data).__name__}, not a mapping")
        data = dict(data)
        if "model" in data:
            model = ModelConfig.from_dict(data.pop("model"), source)
        else:  # format 1: one flat dict, `conditional` standing for num_classes, `amp` a bool
            names = {f.name for f in fields(ModelConfig)}
            model = ModelConfig.from_dict({k: data.pop(k) for k in list(data) if k in names}, source)
            legacy_amp = data.get("amp")
            if isinstance(legacy_amp, bool) or legacy_amp is None:
                data["amp"] = {True: "bf16", False: "off", None: "auto"}[legacy_amp]
        return cls(model=model, **_check_types(cls, data, source)).validate()

    def validate(self) -> TrainConfig:
        """Check every field's range (the same rules as the flags); returns self. Raises ConfigError."""
        self.model.validate()
        for f in fields(self):
            if f.name != "model":
                check_value(f.name, getattr(self, f.name), dict(f.metadata))
        unknown = [m for m in self.eval_metrics.split(",") if m.strip().lower() not in METRIC_CHOICES]
        if unknown or not self.eval_metrics.strip():
            raise ConfigError(
                f"--eval-metrics {self.eval_metrics!r}: choose from {','.join(METRIC_CHOICES)} (comma-separated)"
            )
        return self

    def resolved(self, device_type: str, processes: int = 1) -> tuple[TrainConfig, list[str]]:
        """A copy with the device's defaults in the None fields, and the `name=value` picks it made.

        A single CPU process gets as many threads as cores are idle now; the number is saved with the
        run, so a resumed run computes as the first leg did.
        """
        table = DEVICE_DEFAULTS["cpu" if device_type == "cpu" else "cuda"]
        model, c, picked = replace(self.model), replace(self), []
        if model.ch is not None and model.ch_d is None:
            model.ch_d = model.ch  # a width the user chose sets both nets; the table's wider D goes with its own ch
        for name, value in table.items():
            target = model if hasattr(model, name) else c
            if getattr(target, name) is None:
                setattr(target, name, value)
                picked.append(f"{name}={value}")
        c.model = model
        if c.num_workers is None:
            c.num_workers = 0 if device_type == "cpu" else 8
        if c.threads is None and device_type == "cpu" and processes == 1:
            from .runtime import idle_cores

            c.threads = idle_cores()
            picked.append(f"threads={c.threads}")
        if c.out is None:
            c.out = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        return c.validate(), picked


def model_field_names() -> list[str]:
    return [f.name for f in fields(ModelConfig)]


def default_text(name: str) -> str:
    """The default of a field as the help text says it (device-dependent ones name both)."""
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if f.name == name:
                if "default_help" in f.metadata:
                    return f.metadata["default_help"]
                if name in DEVICE_DEFAULTS["cpu"]:
                    return f"{DEVICE_DEFAULTS['cpu'][name]} on CPU, {DEVICE_DEFAULTS['cuda'][name]} on GPU"
                return str(f.default if f.default is not MISSING else None)
    raise KeyError(name)

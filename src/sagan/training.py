"""The training loop: SAGAN's recipe, a run directory, checkpoints, resume, signals, DDP.

Reads top to bottom: resolve the config -> build data, nets, optimisers -> (resume) -> loop of
D steps and a G step -> log, sample, checkpoint. The nets know nothing of files or flags;
the CLI knows nothing of tensors; this module joins them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_latest,
    load_state,
    prune_checkpoints,
    save_checkpoint,
)
from .data import StepSampler, build_dataset
from .distributed import Distributed, broadcast_flag, process_group, restart_count, synchronise_batchnorm, unwrap
from .ema import EMA
from .files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from .losses import get_loss
from .models import Discriminator, Generator
from .sampling import sample_labels, sample_noise
from .viz import save_grid

#: What `sagan train` with no flags picks on a CPU: widths, batch and length that a 2-core laptop
#: finishes in about 15 minutes, and a G learning rate twice the paper's (a 1:2 instead of 1:4
#: two-timescale ratio), which learned visibly faster in these short runs. Many small steps beat
#: fewer large ones here (batch 16 x 4600 steps vs 32 x 2400 in the same time: more varied
#: samples). D is half again as wide as G: at equal widths the narrow D let the harder classes
#: (circles, stars) blur into blobs; the wider one costs ~13% images/s. Timings: README, "What
#: the first run shows".
CPU_DEFAULTS = dict(ch=16, ch_d=24, batch_size=16, steps=4600, lr_g=2e-4)
#: On a GPU: the preset's width and the paper's recipe, for a length in the range of its runs.
GPU_DEFAULTS = dict(ch=64, ch_d=64, batch_size=64, steps=100_000, lr_g=1e-4)


@dataclass
class TrainResult:
    """What `train` returns: the run directory and the final networks (plain modules, on their device)."""

    run_dir: Path
    G: Generator
    D: Discriminator
    G_ema: Generator
    step: int


class TrainingStopped(Exception):
    """Raised after a clean stop (SIGINT/SIGTERM): the checkpoint is saved; `signal` says which."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf. The last good checkpoint stays in the run directory."""


@dataclass
class TrainConfig:
    """Everything a run needs. None means "pick for me" (see `resolve`)."""

    data: str = "shapes"
    resolution: int = 32
    steps: int | None = None  # None: CPU_DEFAULTS / GPU_DEFAULTS
    batch_size: int | None = None  # per process; the effective batch is batch_size * number of processes
    out: str | None = None
    ch: int | None = None  # G's base width
    ch_d: int | None = None  # D's base width; None: the table's when ch is also left to it, else ch
    z_dim: int = 128
    conditional: bool | None = None  # None: conditional when the data has labels
    attention_g: list[int] | None = None
    attention_d: list[int] | None = None
    loss: str = "hinge"
    lr_g: float | None = None  # two-timescale update rule (Heusel et al. 2017): SAGAN's 1e-4 G, 4e-4 D
    lr_d: float = 4e-4
    lr_decay: float = 0.0  # final fraction of the run over which both rates fall linearly to 0 (0: constant, the paper's)
    beta1: float = 0.0
    beta2: float = 0.9
    d_steps: int = 1
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    fused_attention: bool = True  # False: attention's explicit bmm + softmax path (reference, N x N memory)
    channels_last: bool = True  # NHWC convs (single process): about 1.2x faster on CPU (oneDNN), fast on GPUs too
    amp: bool | None = None  # None: bf16 autocast on CUDA, off on CPU
    sync_bn: bool = True
    num_workers: int | None = None
    data_dir: str | None = None
    download: bool = False
    data_size: int = 50_000  # images in the `shapes` dataset
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_count: int = 64
    quiet: bool = False
    tensorboard: bool = False
    eval_every: int = 0
    eval_n: int = 5000
    eval_metrics: str = "fid"
    inception_weights: str | None = None

    #: Fields that define the model and the data it learns: a resumed run must keep them.
    FIXED_ON_RESUME = ("data", "resolution", "batch_size", "ch", "ch_d", "z_dim", "conditional", "attention_g", "attention_d",
                       "loss", "d_steps", "seed", "data_size")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def lr_factor(step: int, steps: int, decay: float) -> float:
    """The learning-rate multiplier at `step` (0-based): 1, then falling linearly to 0 over the last
    `decay` fraction of the run (as SNGAN's projection-discriminator code does). A function of the step
    alone, so a resumed run follows the same schedule."""
    if decay <= 0:
        return 1.0
    return min(1.0, (steps - step) / (decay * steps))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return device


def resolve(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, str]:
    """Fill the None fields for this device; return the config and a line saying what was picked."""
    c = TrainConfig(**asdict(config))
    picked = []
    if c.ch is not None and c.ch_d is None:
        c.ch_d = c.ch  # a width the user chose sets both nets; the CPU table's wider D goes with its own ch
    for name, value in (CPU_DEFAULTS if device.type == "cpu" else GPU_DEFAULTS).items():
        if getattr(c, name) is None:
            setattr(c, name, value)
            picked.append(f"{name}={value}")
    if c.amp is None:
        c.amp = device.type == "cuda"
    if c.num_workers is None:
        c.num_workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    if c.out is None:
        c.out = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if not 0 <= c.lr_decay <= 1:
        raise ValueError(f"--lr-decay {c.lr_decay} must be a fraction of the run in [0, 1] (0 keeps the rates constant)")
    for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "d_steps", "ch", "ch_d", "z_dim"):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(c, name)} must be at least 1")
    where = "on the CPU (a 2-core machine: about 15 minutes)" if device.type == "cpu" else f"on {device}"
    flags = "/".join("--" + p.split("=")[0].replace("_", "-") for p in picked)
    note = f"training the {c.resolution}-pixel preset {where}" + (f"; picked {', '.join(picked)} (set {flags} to change)" if picked else "")
    return c, note


def build_networks(model_config: dict[str, Any]) -> tuple[Generator, Discriminator]:
    return Generator(**model_config["generator"]), Discriminator(**model_config["discriminator"])


def _new_networks(c: TrainConfig, num_classes: int) -> tuple[Generator, Discriminator]:
    """Fresh nets for a new run; their .config (resolved attention lists included) is what gets saved."""
    G = Generator(resolution=c.resolution, z_dim=c.z_dim, num_classes=num_classes, ch=c.ch, attention=c.attention_g)
    D = Discriminator(resolution=c.resolution, num_classes=num_classes, ch=c.ch_d, attention=c.attention_d)
    return G, D


def merge_resume_config(saved: dict[str, Any], given: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The saved config with the flags given now; flags that would change the model are refused."""
    merged = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
    for key, value in given.items():
        if key in TrainConfig.FIXED_ON_RESUME and merged.get(key) is not None and value != merged[key]:
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"run {run_dir} was trained with {key}={merged[key]!r}; {flag} {value!r} conflicts with it. "
                f"Drop {flag} to continue the run, or start a new one with another --out"
            )
        merged[key] = value
    merged["out"] = str(run_dir)
    return TrainConfig(**merged)


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # asked twice: give up on the clean stop
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed (rank 0 only)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            # Drop lines from after the checkpoint we resume from, and any line a crash cut short.
            kept = [r for r in self.read(path) if r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The records of a metrics.jsonl, skipping a line that a crash cut short."""
        records = []
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _gammas(G: nn.Module, D: nn.Module) -> dict[str, float]:
    blocks = {**unwrap(G).attention_blocks(), **unwrap(D).attention_blocks()}
    return {name: float(block.gamma.detach()) for name, block in blocks.items()}


def _rng_state(noise: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "noise": noise.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def train(config: TrainConfig, resume: str | None = None, given: dict[str, Any] | None = None,
          ctx: Distributed | None = None) -> TrainResult:
    """Train SAGAN as `config` says; returns the run directory and the trained networks.

    resume: a run directory to continue from its newest loadable checkpoint; `given` holds the
    flags passed explicitly this time (they may extend --steps, not change the model).
    """
    device = resolve_device(config.device)
    if ctx is not None:
        return _train(config, resume, given, ctx, device)
    with process_group(device.type) as group:
        return _train(config, resume, given, group, device)


def _train(config: TrainConfig, resume: str | None, given: dict[str, Any] | None, ctx: Distributed,
           device: torch.device) -> TrainResult:
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)

    # -- where the run lives, and what it was ------------------------------------------------------
    state = None
    run_dir = Path(resume) if resume else (Path(config.out) if config.out else None)
    if resume is None and run_dir is not None and list_checkpoints(run_dir):
        if restart_count() == 0:
            raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass another --out")
        resume = str(run_dir)  # torchrun restarted us after a failure: pick the run up where it was saved
    if resume:
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such run directory")
        ckpt_path, state = load_latest(resume)
        config = merge_resume_config(state["config"], given or {}, Path(resume))
    config, note = resolve(config, device)
    run_dir = Path(config.out)

    # -- data, networks, optimisers ----------------------------------------------------------------
    dataset = build_dataset(config.data, config.resolution, seed=config.seed, shapes_size=config.data_size,
                            download=config.download and ctx.is_main, data_dir=config.data_dir)
    labelled = dataset.num_classes > 0
    if config.conditional and not labelled:
        raise ValueError(f"--conditional needs class labels, and {config.data} has none (use a folder with one subfolder per class)")
    config.conditional = labelled if config.conditional is None else config.conditional
    num_classes = dataset.num_classes if config.conditional else 0
    classes = list(dataset.classes) if config.conditional else []
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    G, D = build_networks(state["model_config"]) if state else _new_networks(config, num_classes)
    model_config = {"generator": G.config, "discriminator": D.config}
    for block in [*G.attention_blocks().values(), *D.attention_blocks().values()]:
        block.fused = config.fused_attention
    # DDP's gradient buckets are laid out for contiguous weights: keep those under DDP.
    memory_format = torch.channels_last if config.channels_last and not ctx.enabled else torch.contiguous_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    if ctx.enabled and config.sync_bn:
        synchronise_batchnorm(G, device.type)
    ema = EMA(G, config.ema_decay)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=betas)
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)
    step, data_position = 0, 0
    if state:
        for module, key in ((G, "G"), (D, "D"), (ema.model, "G_ema")):
            load_state(module, state[key], ckpt_path, key)
        opt_g.load_state_dict(state["opt_G"])
        opt_d.load_state_dict(state["opt_D"])
        noise.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        step, data_position = state["step"], state["data_position"]
    loss = get_loss(config.loss)
    G_train = DistributedDataParallel(G, device_ids=[device.index] if device.type == "cuda" else None) if ctx.enabled else G
    D_train = DistributedDataParallel(D, device_ids=[device.index] if device.type == "cuda" else None) if ctx.enabled else D
    G_fake, D_plain = G, D  # no-grad fakes for the D step; D in the G step (no DDP all-reduce it would not need)
    if config.compile:
        G_train, D_train, G_fake, D_plain = (torch.compile(m) for m in (G_train, D_train, G, D))

    global_batch = config.batch_size * ctx.world_size
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, ctx.rank, ctx.world_size, data_position)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=config.num_workers > 0)
    batches = iter(loader)

    # -- the run directory (rank 0 writes, everyone else only reads) -------------------------------
    fixed_gen = torch.Generator().manual_seed(config.seed + 2)
    fixed_z = sample_noise(config.sample_count, config.z_dim, fixed_gen).to(device)
    fixed_y = None
    if num_classes:  # one class per row of the grid
        per_row = max(1, math.ceil(math.sqrt(config.sample_count)))
        fixed_y = (torch.arange(config.sample_count) // per_row % num_classes).to(device)
    log = None
    tb = None
    if ctx.is_main:
        try:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create the run directory {run_dir}: {err.strerror}; pass another --out") from None
        remove_stale_temporaries(run_dir)
        remove_stale_temporaries(run_dir / "samples")
        atomic_write_json(run_dir / "config.json", {
            "sagan_version": __version__, "train": asdict(config), "model": model_config, "classes": classes,
            "world_size": ctx.world_size, "effective_batch_size": global_batch,
        })
        log = MetricsLog(run_dir / "metrics.jsonl", step if state else None)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--tensorboard needs the tensorboard package: pip install 'sagan-pytorch[tensorboard]'") from None
            tb = SummaryWriter(str(run_dir / "tensorboard"))
        tqdm.write(f"sagan: {note}")
        if not config.quiet:
            tqdm.write(f"sagan: run {run_dir}: {len(dataset)} images, {num_classes or 'no'} classes, "
                       f"batch {config.batch_size} x {ctx.world_size} process(es) = {global_batch}, "
                       f"{'resuming at step ' + str(step) if state else 'starting'}")

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "sagan_version": __version__, "step": step, "data_position": data_position,
            "config": asdict(config), "model_config": model_config, "classes": classes,
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": ema.model.state_dict(),
            "opt_G": opt_g.state_dict(), "opt_D": opt_d.state_dict(), "rng": _rng_state(noise), "best_fid": best_fid,
        }

    def save() -> Path:
        path = checkpoint_path(run_dir, step)
        if ctx.is_main:
            save_checkpoint(checkpoint_state(), path)
            prune_checkpoints(run_dir, config.keep_checkpoints, protect=path)
        return path

    def sample_grid() -> None:
        if ctx.is_main:
            with torch.no_grad():
                images = ema.model(fixed_z, fixed_y)
            save_grid(images.float().cpu(), run_dir / "samples" / f"step-{step:08d}.png")

    # -- the loop --------------------------------------------------------------------------------
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    totals = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z)) summed since the last log
    since_log, t_log, last_good = 0, time.perf_counter(), None
    best_fid = state.get("best_fid", math.inf) if state else math.inf
    bar = tqdm(total=config.steps, initial=step, disable=config.quiet or not ctx.is_main, dynamic_ncols=True, unit="step")

    def fake_batch() -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's slice of the global batch of noise (and fake classes) of this step."""
        z = torch.randn(global_batch, config.z_dim, generator=noise, device=device)
        y = sample_labels(global_batch, num_classes, noise, device=device)
        sl = slice(ctx.rank * config.batch_size, (ctx.rank + 1) * config.batch_size)
        return z[sl], None if y is None else y[sl]

    def check_finite(where: str) -> None:
        if bool(broadcast_flag(bool(nonfinite.item()), ctx)):
            hint = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
            raise TrainingDiverged(
                f"a loss became NaN or Inf before step {step} ({where}); {hint}. Lower --lr-d/--lr-g "
                f"or try --loss hinge, then --resume {run_dir}"
            )

    with _StopRequest() as stop:
        while step < config.steps:
            factor = lr_factor(step, config.steps, config.lr_decay)
            for opt, lr in ((opt_g, config.lr_g), (opt_d, config.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * factor
            for _ in range(config.d_steps):  # -- D step: hinge on real vs fake, one forward for both
                real, y_real = next(batches)
                real = real.to(device, memory_format=memory_format, non_blocking=True)
                y_real = y_real.to(device, non_blocking=True) if num_classes else None
                z, y_fake = fake_batch()
                with torch.no_grad(), autocast:
                    fake = G_fake(z, y_fake)
                with autocast:
                    both = D_train(torch.cat([real, fake.to(real.dtype)]),
                                   None if y_fake is None else torch.cat([y_real, y_fake]))
                    d_real, d_fake = both.float().split(real.shape[0])
                    loss_d = loss.d(d_real, d_fake)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                data_position += global_batch
            # -- G step: D's weights need no gradient here
            z, y_fake = fake_batch()
            D.requires_grad_(False)
            with autocast:
                loss_g = loss.g(D_plain(G_train(z, y_fake), y_fake).float())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            ema.update(G, step)
            step += 1

            with torch.no_grad():
                nonfinite |= ~torch.isfinite(loss_d.detach() + loss_g.detach())
                totals += torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().mean(), d_fake.detach().mean()])
            since_log += 1
            bar.update(1)
            last = step == config.steps
            if step % config.log_every == 0 or last:
                check_finite("at a log step")
                if ctx.enabled:
                    torch.distributed.all_reduce(totals)
                    totals /= ctx.world_size
                means = (totals / since_log).tolist()
                elapsed = time.perf_counter() - t_log
                record = {"step": step, "loss_d": means[0], "loss_g": means[1], "d_real": means[2], "d_fake": means[3],
                          "gamma": _gammas(G, D), "images_per_s": since_log * global_batch * config.d_steps / elapsed,
                          "time": time.time()}
                if log:
                    log.write(record)
                if tb:
                    for key in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s"):
                        tb.add_scalar(key, record[key], step)
                    for name, g in record["gamma"].items():
                        tb.add_scalar(f"gamma/{name}", g, step)
                bar.set_postfix(loss_d=f"{means[0]:.3f}", loss_g=f"{means[1]:.3f}", img_s=f"{record['images_per_s']:.0f}")
                totals.zero_()
                since_log, t_log = 0, time.perf_counter()
            if step % config.sample_every == 0 or last:
                sample_grid()
            if config.eval_every and (step % config.eval_every == 0 or last) and ctx.is_main:
                results = _evaluate(config, ema.model, dataset, device)
                log.write({"step": step, "eval": results, "eval_n": config.eval_n})
                if "fid" in results and results["fid"] < best_fid:
                    check_finite("before saving best.pt")
                    best_fid = results["fid"]
                    save_checkpoint(checkpoint_state(), run_dir / "best.pt")
            stopping = broadcast_flag(stop.signum is not None, ctx)
            if step % config.checkpoint_every == 0 or last or stopping:
                check_finite("before saving a checkpoint")
                last_good = save()
            if stopping:
                bar.close()
                name = signal.Signals(stop.signum or signal.SIGTERM).name
                raise TrainingStopped(stop.signum or signal.SIGTERM,
                                      f"stopped by {name} at step {step}; saved {last_good}; continue with: sagan train --resume {run_dir}")
    bar.close()
    if tb:
        tb.close()
    return TrainResult(run_dir, G, D, ema.model, step)


def _evaluate(config: TrainConfig, G: nn.Module, dataset: Any, device: torch.device) -> dict[str, float]:
    """--eval-every: the metrics of the EMA generator against the training data."""
    from .metrics import evaluate_generator  # torch-fidelity is only imported when asked for

    return evaluate_generator(G, dataset, n=config.eval_n, metrics=config.eval_metrics,
                              inception_weights=config.inception_weights, seed=config.seed, device=device)

"""The training loop: SAGAN's recipe (hinge loss, two timescales, EMA) with checkpoints, resume and DDP.

    train(config, resume=None)
        set_up()       config -> data, nets, optimisers, run directory (or a checkpoint's state)
        the loop       D step(s), G step, EMA; log, sample, evaluate, checkpoint
    d_step / g_step    one update of each net: functions of the nets and a batch, tested alone

The nets know nothing of files or flags; the CLI knows nothing of tensors; this module joins them.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from typing_extensions import Self

from . import __version__
from .checkpoint import TrainState, checkpoint_path, list_checkpoints, load_state, nets_config, prune_checkpoints
from .config import ConfigError, ModelConfig, TrainConfig, flag_name, model_field_names
from .data import StepSampler, build_dataset, mirror
from .distributed import Distributed, any_rank, process_group, restart_count, synchronise_batchnorm
from .ema import EMA
from .loggers import ExperimentLoggers
from .losses import GANLoss, get_loss
from .models import Discriminator, Generator, build
from .rundir import FIDELITY_CACHE, LISTING_FILE, RunDirectory
from .runtime import Precision, resolve_device
from .sampling import sample_labels, sample_noise
from .viz import save_grid


@dataclass
class TrainResult:
    """What `train` returns: the run directory and the final networks (plain modules, on their device)."""

    run_dir: Path
    G: Generator
    D: Discriminator
    G_ema: Generator
    step: int


class TrainingStopped(Exception):
    """Raised after a clean stop (SIGINT/SIGTERM): the checkpoint is saved; `signum` says which."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or Inf. Nothing of it was saved; the message names the last good checkpoint."""


# -- the two updates ----------------------------------------------------------------------------
def d_step(
    D: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss: GANLoss,
    real: torch.Tensor,
    y_real: torch.Tensor | None,
    fake: torch.Tensor,
    y_fake: torch.Tensor | None,
    precision: Precision,
) -> torch.Tensor:
    """One discriminator update on real and (detached) fake images, in one forward for both.

    Returns the detached [loss_d, mean D(x), mean D(G(z))] on the batch, before the update.
    """
    with precision.autocast():
        both = D(torch.cat([real, fake.to(real.dtype)]), None if y_real is None else torch.cat([y_real, y_fake]))
        d_real, d_fake = both.float().split(real.shape[0])
        loss_d = loss.d(d_real, d_fake)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([loss_d.detach(), d_real.detach().mean(), d_fake.detach().mean()])


def g_step(
    G: nn.Module,
    D: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss: GANLoss,
    z: torch.Tensor,
    y: torch.Tensor | None,
    precision: Precision,
) -> torch.Tensor:
    """One generator update through a frozen D (its weights get no gradient). Returns the detached loss_g."""
    D.requires_grad_(False)
    try:
        with precision.autocast():
            loss_g = loss.g(D(G(z, y), y).float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(optimizer)
        scaler.update()
    finally:
        D.requires_grad_(True)
    return loss_g.detach()


def lr_factor(step: int, steps: int, decay: float) -> float:
    """The learning-rate multiplier at `step` (0-based): 1, then falling linearly to 0 over the last
    `decay` fraction of the run (as SNGAN's projection-discriminator code does). A function of the step
    alone, so a resumed run follows the same schedule."""
    if decay <= 0:
        return 1.0
    return min(1.0, (steps - step) / (decay * steps))


def all_finite(modules: list[nn.Module], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor on `device`: every parameter and float buffer of `modules` is finite (no host sync)."""
    tensors = [t.detach() for m in modules for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()]
    norms = torch._foreach_norm(tensors) if tensors else [torch.zeros((), device=device)]
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum()).to(device)


# -- set-up -------------------------------------------------------------------------------------
class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
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

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def merge_resumed(given: TrainConfig, saved: TrainConfig, run_dir: Path) -> TrainConfig:
    """`given` for a resumed run: its model fields must match the saved ones (None takes the saved value);
    other None fields take the saved value, the rest are used as given."""
    model = {}
    for name in model_field_names():
        new, old = getattr(given.model, name), getattr(saved.model, name)
        if new is not None and new != old:
            raise ConfigError(
                f"run {run_dir} was trained with {name}={old!r}; {flag_name(name)} {new!r} conflicts "
                f"with it. Drop {flag_name(name)} to continue the run, or start a new one with another --out"
            )
        model[name] = old
    fields = {k: (v if v is not None else getattr(saved, k)) for k, v in vars(given).items() if k != "model"}
    return replace(saved, **{**fields, "out": str(run_dir), "model": ModelConfig(**model)})


def describe(config: TrainConfig, picked: list[str], device: torch.device) -> str:
    where = (
        "on the CPU (2 free cores: about 15-30 minutes; the bar shows images/s)"
        if device.type == "cpu"
        else f"on {device}"
    )
    flags = "/".join(flag_name(p.split("=")[0]) for p in picked)
    return f"training the {config.model.resolution}-pixel preset {where}" + (
        f"; picked {', '.join(picked)} (set {flags} to change)" if picked else ""
    )


@dataclass
class _Run:
    """What set-up made, and the loop reads and advances."""

    config: TrainConfig
    ctx: Distributed
    precision: Precision
    run_dir: RunDirectory
    dataset: Any
    classes: list[str]
    G: Generator
    D: Discriminator
    ema: EMA
    G_train: nn.Module  # DDP and/or compiled, for the G step
    D_train: nn.Module  # DDP and/or compiled, for the D step
    G_fake: nn.Module  # plain (or compiled): no-grad fakes for the D step
    D_judge: nn.Module  # plain (or compiled): D inside the G step, no all-reduce it would not need
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    noise: torch.Generator
    batches: Any
    step: int
    data_position: int
    best_fid: float
    last_good: Path | None = None

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes or 0

    def next_real(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        real, y = next(self.batches)
        memory_format = (
            torch.channels_last if self.config.channels_last and not self.ctx.enabled else torch.preserve_format
        )
        real = real.to(self.ctx.device, memory_format=memory_format, non_blocking=True)
        if self.config.mirror:
            real = mirror(real, self.config.seed, self.data_position, self.ctx.rank, self.ctx.world_size)
        self.data_position += self.config.batch_size * self.ctx.world_size
        return real, (y.to(self.ctx.device, non_blocking=True) if self.num_classes else None)

    def next_noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's slice of the global batch of noise (and fake classes) of this step."""
        b, world = self.config.batch_size, self.ctx.world_size
        z = torch.randn(b * world, self.config.model.z_dim, generator=self.noise, device=self.ctx.device)
        y = sample_labels(b * world, self.num_classes, self.noise, device=self.ctx.device)
        sl = slice(self.ctx.rank * b, (self.ctx.rank + 1) * b)
        return z[sl], None if y is None else y[sl]

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.ctx.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.ctx.device)
        return state

    def state(self) -> TrainState:
        return TrainState(
            self.config,
            self.classes,
            self.step,
            self.data_position,
            self.G.state_dict(),
            self.D.state_dict(),
            self.ema.model.state_dict(),
            self.opt_g.state_dict(),
            self.opt_d.state_dict(),
            self.rng_state(),
            self.best_fid,
            {"G": self.scaler_g.state_dict(), "D": self.scaler_d.state_dict()},
        )

    def check_finite(self, where: str, losses: torch.Tensor) -> None:
        """Stop on every rank, before anything is saved, if a loss or a weight of G, D or the EMA is not finite."""
        finite = all_finite([self.G, self.D, self.ema.model], self.ctx.device) & torch.isfinite(losses).all()
        if any_rank(~finite, self.ctx):
            hint = (
                f"the last good checkpoint is {self.last_good}"
                if self.last_good
                else "no checkpoint was saved before it"
            )
            raise TrainingDiverged(
                f"a loss or weight became NaN or Inf by step {self.step} ({where}); nothing of it was "
                f"saved, {hint}. Lower --lr-d/--lr-g, then --resume {self.run_dir.path}"
            )


def _resume_from(
    config: TrainConfig, resume: str | Path | None, ctx: Distributed
) -> tuple[TrainConfig, TrainState | None]:
    """The config and saved state of the run to continue, if any (a restart under torchrun counts)."""
    run_dir = Path(resume) if resume else (Path(config.out) if config.out else None)
    if resume is None and run_dir is not None and list_checkpoints(run_dir):
        if restart_count() == 0:
            raise ValueError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass another --out"
            )
        resume = run_dir  # torchrun restarted us after a failure: pick the run up where it was saved
    if not resume:
        return config, None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such run directory")
    _, state = TrainState.load(resume)
    return merge_resumed(config, state.config, Path(resume)), state


def _build_nets(
    config: TrainConfig, state: TrainState | None, ctx: Distributed
) -> tuple[Generator, Discriminator, EMA]:
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    G, D = build(config.model, fused_attention=config.fused_attention)
    # DDP's gradient buckets are laid out for contiguous weights: keep those under DDP.
    memory_format = torch.channels_last if config.channels_last and not ctx.enabled else torch.contiguous_format
    G, D = G.to(ctx.device, memory_format=memory_format), D.to(ctx.device, memory_format=memory_format)
    if ctx.enabled and config.sync_bn:
        synchronise_batchnorm(G, ctx.device.type)
    ema = EMA(G, config.ema_decay)
    if state:
        for net, weights, what in ((G, state.G, "generator"), (D, state.D, "discriminator"),
                                   (ema.model, state.G_ema, "EMA generator")):  # fmt: skip
            load_state(net, weights, config.out, what)
    return G, D, ema


def _data(config: TrainConfig, state: TrainState | None, ctx: Distributed) -> tuple[Any, int]:
    """The dataset, and the number of classes the nets condition on (checked against a resumed run's)."""
    dataset = build_dataset(config.data, config.model.resolution, seed=config.seed, shapes_size=config.data_size,
                            download=config.download and ctx.is_main, data_dir=config.data_dir, split=config.split,
                            image_column=config.image_column, label_column=config.label_column,
                            listing_cache=Path(config.out) / LISTING_FILE, write_listing=ctx.is_main,
                            reuse_listing=state is not None)  # fmt: skip
    if config.conditional and not dataset.num_classes:
        raise ValueError(f"--conditional needs class labels, and {config.data} has none "
                         f"(use a folder with one subfolder per class)")  # fmt: skip
    num_classes = dataset.num_classes if config.conditional is not False else 0
    if state is not None and state.config.model.num_classes != num_classes:
        raise ConfigError(f"run {config.out} was trained with num_classes={state.config.model.num_classes}; --data "
                          f"{config.data} gives {num_classes}. Use the run's data, or start a new run")  # fmt: skip
    return dataset, num_classes


def _optimisers(config: TrainConfig, G: nn.Module, D: nn.Module, precision: Precision, state: TrainState | None,
                device: torch.device) -> tuple[Any, ...]:  # fmt: skip
    """Adam for each net (the paper's betas), a grad scaler each, the training noise generator; restored on resume."""
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))
    scaler_g, scaler_d = precision.scaler(), precision.scaler()
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)
    if state:
        opt_g.load_state_dict(state.opt_G)
        opt_d.load_state_dict(state.opt_D)
        for scaler, key in ((scaler_g, "G"), (scaler_d, "D")):
            if key in state.scaler:
                scaler.load_state_dict(state.scaler[key])
        noise.set_state(state.rng["noise"])
        torch.set_rng_state(state.rng["torch"])
        if device.type == "cuda" and "cuda" in state.rng:
            torch.cuda.set_rng_state(state.rng["cuda"], device)
    return opt_g, opt_d, scaler_g, scaler_d, noise


def _wrapped(config: TrainConfig, ctx: Distributed, G: nn.Module, D: nn.Module) -> list[nn.Module]:
    """[G_train, D_train, G_fake, D_judge]: DDP for the nets whose gradients are all-reduced, compiled if asked."""
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    nets = (
        [DistributedDataParallel(G, device_ids=ids), DistributedDataParallel(D, device_ids=ids)]
        if ctx.enabled
        else [G, D]
    )
    nets += [G, D]
    return [torch.compile(m) for m in nets] if config.compile else nets


def _loader(config: TrainConfig, dataset: Any, ctx: Distributed, position: int) -> DataLoader:
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, ctx.rank, ctx.world_size, position)
    # The loader seeds its workers from its own generator, not the global one: resume restores that exactly.
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                      pin_memory=ctx.device.type == "cuda", drop_last=True, persistent_workers=config.num_workers > 0,
                      generator=torch.Generator().manual_seed(config.seed))  # fmt: skip


def set_up(config: TrainConfig, resume: str | Path | None, ctx: Distributed) -> _Run:
    """Everything the loop needs: a fresh run from `config`, or the saved run in `resume` continued."""
    config, state = _resume_from(config.validate(), resume, ctx)
    config, picked = config.resolved(ctx.device.type, ctx.world_size)
    if config.threads:  # busy cores make torch's threads wait on each other: fewer run faster
        torch.set_num_threads(config.threads)
    dataset, config.model.num_classes = _data(config, state, ctx)
    G, D, ema = _build_nets(config, state, ctx)
    config.model.attention_g, config.model.attention_d = G.config["attention"], D.config["attention"]
    precision = Precision.choose(config.amp, ctx.device)
    opt_g, opt_d, scaler_g, scaler_d, noise = _optimisers(config, G, D, precision, state, ctx.device)
    position = state.data_position if state else 0
    classes = list(dataset.classes) if config.model.num_classes else []
    run = _Run(config, ctx, precision, RunDirectory(config.out, writer=ctx.is_main), dataset, classes, G, D, ema,
               *_wrapped(config, ctx, G, D), opt_g, opt_d, scaler_g, scaler_d, noise,
               iter(_loader(config, dataset, ctx, position)), state.step if state else 0, position,
               state.best_fid if state else math.inf)  # fmt: skip
    run.run_dir.open({"sagan_version": __version__, "train": config.flat(), "model": nets_config(config.model),
                      "classes": classes, "world_size": ctx.world_size,
                      "effective_batch_size": config.batch_size * ctx.world_size},
                     resume_step=run.step if state else None)  # fmt: skip
    if ctx.is_main:
        tqdm.write(f"sagan: {describe(config, picked, ctx.device)}")
        if not config.quiet:
            batch, world = config.batch_size, ctx.world_size
            tqdm.write(f"sagan: run {config.out}: {len(dataset)} images, {config.model.num_classes or 'no'} classes, "
                       f"batch {batch} x {world} process(es) = {batch * world}, {precision.name}, "
                       f"{'resuming at step ' + str(run.step) if state else 'starting'}")  # fmt: skip
    return run


# -- what the loop reports -----------------------------------------------------------------------
class _Reporter:
    """Losses averaged between log steps, the progress bar, metrics.jsonl, sample grids, TensorBoard and W&B."""

    def __init__(self, run: _Run) -> None:
        c, device = run.config, run.ctx.device
        self.totals = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z)) summed since the last log
        self.since, self.t0 = 0, time.perf_counter()
        gen = torch.Generator().manual_seed(c.seed + 2)
        self.fixed_z = sample_noise(c.sample_count, c.model.z_dim, gen).to(device)
        per_row = max(1, math.ceil(math.sqrt(c.sample_count)))  # one class per row of the grid
        self.fixed_y = (
            (torch.arange(c.sample_count) // per_row % run.num_classes).to(device) if run.num_classes else None
        )
        self.bar = tqdm(
            total=c.steps, initial=run.step, disable=c.quiet or not run.ctx.is_main, dynamic_ncols=True, unit="step"
        )
        self.trackers = ExperimentLoggers(
            run.run_dir.path, c.flat(), tensorboard=c.tensorboard and run.ctx.is_main, wandb=c.wandb and run.ctx.is_main
        )

    def add(self, d_stats: torch.Tensor, loss_g: torch.Tensor) -> None:
        self.totals += torch.stack([d_stats[0], loss_g, d_stats[1], d_stats[2]])
        self.since += 1
        self.bar.update(1)

    def log(self, run: _Run) -> None:
        """Average the losses over the ranks (a collective) and write one record."""
        if run.ctx.enabled:
            torch.distributed.all_reduce(self.totals)
            self.totals /= run.ctx.world_size
        means = (self.totals / self.since).tolist()
        images = self.since * run.config.batch_size * run.ctx.world_size * run.config.d_steps
        blocks = {**run.G.attention_blocks(), **run.D.attention_blocks()}
        record = {
            "step": run.step,
            "loss_d": means[0],
            "loss_g": means[1],
            "d_real": means[2],
            "d_fake": means[3],
            "gamma": {name: float(b.gamma.detach()) for name, b in blocks.items()},
            "images_per_s": images / (time.perf_counter() - self.t0),
            "time": time.time(),
        }
        run.run_dir.log(record)
        scalars = {k: record[k] for k in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s")}
        self.trackers.scalars(scalars | {f"gamma/{name}": g for name, g in record["gamma"].items()}, run.step)
        self.bar.set_postfix(loss_d=f"{means[0]:.3f}", loss_g=f"{means[1]:.3f}", img_s=f"{record['images_per_s']:.0f}")
        self.totals.zero_()
        self.since, self.t0 = 0, time.perf_counter()

    @torch.no_grad()
    def sample_grid(self, run: _Run) -> None:
        if run.ctx.is_main:
            images = run.ema.model(self.fixed_z, self.fixed_y).float().cpu()
            save_grid(images, run.run_dir.sample_path(run.step))
            self.trackers.images("samples", images, run.step)

    def evaluation(self, run: _Run, results: dict[str, float]) -> None:
        run.run_dir.log({"step": run.step, "eval": results, "eval_n": run.config.eval_n})
        self.trackers.scalars({f"eval/{key}": value for key, value in results.items()}, run.step)

    def close(self) -> None:
        self.bar.close()
        self.trackers.close()


def _save(run: _Run, losses: torch.Tensor, path: Path | None = None) -> None:
    """A checkpoint (or best.pt), after every rank agreed that nothing in it is NaN or Inf."""
    run.check_finite("before saving a checkpoint", losses)
    if run.ctx.is_main:
        written = run.state().save(path or checkpoint_path(run.run_dir.path, run.step))
        if path is None:
            prune_checkpoints(run.run_dir.path, run.config.keep_checkpoints, protect=written)
            run.last_good = written


def _evaluate(run: _Run, reporter: _Reporter, losses: torch.Tensor) -> None:
    """--eval-every: rank 0 scores the EMA generator; the other ranks wait for it at their next collective."""
    run.check_finite("before evaluating", losses)  # every rank, before the rank-0-only work
    if not run.ctx.is_main:
        return
    from .metrics import evaluate_generator  # torch-fidelity is imported only when asked for

    results = evaluate_generator(
        run.ema.model,
        run.dataset,
        n=run.config.eval_n,
        metrics=run.config.eval_metrics,
        inception_weights=run.config.inception_weights,
        seed=run.config.seed,
        device=run.ctx.device,
        cache_dir=run.run_dir.path / FIDELITY_CACHE,  # the real images' features, computed at the first evaluation
        data_key=run.config.data,
    )
    reporter.evaluation(run, results)
    if results.get("fid", math.inf) < run.best_fid:
        run.best_fid = results["fid"]
        run.state().save(run.run_dir.path / "best.pt")


# -- the loop -----------------------------------------------------------------------------------
def train(config: TrainConfig, resume: str | Path | None = None, ctx: Distributed | None = None) -> TrainResult:
    """Train SAGAN as `config` says; returns the run directory and the trained networks.

    resume: a run directory to continue from its newest loadable checkpoint. Its model fields must
    match `config.model` (None fields take the saved values); other fields of `config` are used as
    given, so `TrainConfig.from_run(dir)` with a larger `steps` continues a run unchanged.
    """
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    try:
        if ctx is not None:
            return _loop(set_up(config, resume, ctx))
        with process_group(device) as group:
            return _loop(set_up(config, resume, group))
    finally:
        torch.set_num_threads(threads_before)


def _loop(run: _Run) -> TrainResult:
    c = run.config
    due: Callable[[int], bool] = lambda every: run.step % every == 0 or run.step == c.steps
    reporter = _Reporter(run)
    losses = torch.zeros(2, device=run.ctx.device)  # this step's loss_d, loss_g: checked before anything is saved
    try:
        with _StopRequest() as stop:
            while run.step < c.steps:
                # Set this step's learning rates (SNGAN's optional linear decay).
                factor = lr_factor(run.step, c.steps, c.lr_decay)
                for opt, lr in ((run.opt_g, c.lr_g), (run.opt_d, c.lr_d)):
                    for group in opt.param_groups:
                        group["lr"] = lr * factor
                # D steps: real images against fakes of the current G.
                for _ in range(c.d_steps):
                    real, y_real = run.next_real()
                    z, y_fake = run.next_noise()
                    with torch.no_grad(), run.precision.autocast():
                        fake = run.G_fake(z, y_fake)
                    d_stats = d_step(
                        run.D_train,
                        run.opt_d,
                        run.scaler_d,
                        get_loss(c.loss),
                        real,
                        y_real,
                        fake,
                        y_fake,
                        run.precision,
                    )
                # G step, then the EMA copy follows G.
                z, y_fake = run.next_noise()
                loss_g = g_step(
                    run.G_train, run.D_judge, run.opt_g, run.scaler_g, get_loss(c.loss), z, y_fake, run.precision
                )
                run.ema.update(run.G, run.step)
                run.step += 1
                losses = torch.stack([d_stats[0], loss_g])
                reporter.add(d_stats, loss_g)
                # Log, sample, evaluate: the collectives in each are entered by every rank.
                if due(c.log_every):
                    run.check_finite("at a log step", losses)
                    reporter.log(run)
                if due(c.sample_every):
                    reporter.sample_grid(run)
                if c.eval_every and due(c.eval_every):
                    _evaluate(run, reporter, losses)
                # Checkpoint on schedule, at the end, and when asked to stop.
                stopping = any_rank(stop.signum is not None, run.ctx)
                if due(c.checkpoint_every) or stopping:
                    _save(run, losses)
                if stopping:
                    name = signal.Signals(stop.signum or signal.SIGTERM).name
                    raise TrainingStopped(
                        stop.signum or signal.SIGTERM,
                        f"stopped by {name} at step {run.step}; saved "
                        f"{run.last_good}; continue with: sagan train --resume {run.run_dir.path}",
                    )
    finally:
        reporter.close()
        run.run_dir.close()
    return TrainResult(run.run_dir.path, run.G, run.D, run.ema.model, run.step)

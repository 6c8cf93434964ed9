"""The `sagan` command: parses flags into config dataclasses and calls the library. Nothing else.

    sagan train      train a SAGAN (built-in `shapes` data by default)
    sagan sample     draw images from a trained generator
    sagan eval       FID / IS / KID with torch-fidelity
    sagan attention  the paper's attention-map picture
    sagan plot       training curves from metrics.jsonl
    sagan export     the EMA generator as safetensors (+ ONNX)
    sagan info       a preset's architecture and parameter counts

Every bad flag or input ends in one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(Exception):
    """Bad input found after parsing: one line, exit 2."""


def _typed(kind: type, name: str, check: Callable[[Any], bool]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}")
        return value

    parse.__name__ = name
    return parse


positive_int = _typed(int, "a positive integer", lambda v: v > 0)
non_negative_int = _typed(int, "a non-negative integer", lambda v: v >= 0)
positive_float = _typed(float, "a positive number", lambda v: v > 0)
non_negative_float = _typed(float, "a non-negative number", lambda v: v >= 0)
unit_interval = _typed(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
any_int = _typed(int, "an integer", lambda v: True)


def resolutions(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of resolutions such as 16,32") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: resolutions must be positive")
    return values


def points(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError:
        out = []
    if not out or any(len(p) != 2 for p in out):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of points such as \"8,8;24,16\"")
    return out  # type: ignore[return-value]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a SAGAN", description="Train a SAGAN. With no flags: 32-pixel shapes, "
                       "sized for the device (on a CPU: about 15 minutes on 2 cores).", argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--data", help="shapes (built-in, default), cifar10, a folder of images, an .npz, or cifar-10-python.tar.gz")
    a("--resolution", type=positive_int, help="image size: 32, 64, 128 or 256 (default 32)")
    a("--steps", type=positive_int, help="generator steps (default: 4600 on CPU, 100000 on GPU)")
    a("--batch-size", type=positive_int, help="images per process and step (default: 16 on CPU, 64 on GPU)")
    a("--out", help="run directory (default runs/<timestamp>)")
    a("--resume", metavar="RUN_DIR", help="continue a run from its newest loadable checkpoint")
    a("--checkpoint-every", type=positive_int, help="steps between checkpoints (default 500)")
    a("--sample-every", type=positive_int, help="steps between sample grids (default 500)")
    a("--log-every", type=positive_int, help="steps between metrics.jsonl lines (default 50)")
    a("--seed", type=any_int, help="seed for weights, data order and noise (default 0)")
    a("--device", help="auto (default), cpu, cuda or cuda:N")
    a("--ch", type=positive_int, help="G's base width, and D's unless --ch-d is given (default: 64 on GPU, 16 on CPU)")
    a("--ch-d", type=positive_int, help="D's base width (default: --ch; 24 with the CPU's default ch 16)")
    a("--z-dim", type=positive_int, help="noise size (default 128)")
    a("--conditional", action="store_true", help="class-conditional (default: when the data has labels)")
    a("--unconditional", dest="conditional", action="store_false", help="ignore the data's labels")
    a("--attention-g", type=resolutions, help="G feature resolutions with attention, e.g. 16 (default: preset)")
    a("--attention-d", type=resolutions, help="D feature resolutions with attention (default: preset)")
    a("--loss", choices=["hinge", "nonsaturating", "wasserstein"], help="GAN loss (default hinge)")
    a("--lr-g", type=positive_float, help="generator learning rate (default: 1e-4 on GPU, 2e-4 on CPU)")
    a("--lr-d", type=positive_float, help="discriminator learning rate (default 4e-4)")
    a("--lr-decay", type=unit_interval, help="final fraction of the run over which both rates fall linearly to 0 "
      "(default 0: constant, as in the paper)")
    a("--beta1", type=unit_interval, help="Adam beta1 (default 0)")
    a("--beta2", type=unit_interval, help="Adam beta2 (default 0.9)")
    a("--d-steps", type=positive_int, help="D steps per G step (default 1)")
    a("--ema-decay", type=unit_interval, help="EMA decay of G's weights, after warm-up (default 0.999)")
    a("--compile", action="store_true", help="torch.compile the networks")
    a("--amp", action="store_true", help="bf16 autocast (default on CUDA)")
    a("--no-amp", dest="amp", action="store_false", help="no autocast")
    a("--no-sync-bn", dest="sync_bn", action="store_false", help="per-process batch-norm statistics under DDP")
    a("--num-workers", type=non_negative_int, help="data-loading processes (default: 0 on CPU, up to 8 on GPU)")
    a("--data-dir", help="folder of downloaded datasets (default $SAGAN_DATA or ~/.cache/sagan)")
    a("--download", action="store_true", help="fetch CIFAR-10 if it is not in --data-dir (needs internet)")
    a("--data-size", type=positive_int, help="images in the shapes dataset (default 50000)")
    a("--keep-checkpoints", type=positive_int, help="checkpoints kept (default 2)")
    a("--sample-count", type=positive_int, help="images in each sample grid (default 64)")
    a("--quiet", action="store_true", help="no progress bar")
    a("--tensorboard", action="store_true", help="also write TensorBoard events (pip install 'sagan-pytorch[tensorboard]')")
    a("--eval-every", type=non_negative_int, help="steps between evaluations (0: never); keeps best.pt by FID")
    a("--eval-n", type=positive_int, help="samples per evaluation (default 5000)")
    a("--eval-metrics", help="comma-separated subset of fid,is,kid (default fid)")
    a("--inception-weights", help="local Inception weights file for evaluation (offline machines)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, TrainingDiverged, TrainingStopped, train

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "resume")}
    if "eval_metrics" in given:
        from .metrics import parse_metrics

        parse_metrics(given["eval_metrics"])
    resume = getattr(args, "resume", None)
    try:
        train(TrainConfig(**given), resume=resume, given=given)
    except TrainingStopped as stop:
        print(f"sagan: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except TrainingDiverged as err:
        print(f"sagan: error: {err}", file=sys.stderr)
        return 1
    return 0


def _add_source(p: argparse.ArgumentParser) -> None:
    """The trained model a command reads: a run directory (its newest checkpoint) or a checkpoint."""
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the trained G, not its EMA copy")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a trained generator")
    _add_source(p)
    p.add_argument("--n", type=positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--class", dest="class_index", type=non_negative_int, help="draw only this class")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float, help="truncate |z| at this value (BigGAN's trick)")
    p.add_argument("--device", default="auto")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="grid PNG (default samples.png)")
    out.add_argument("--out-dir", help="one PNG per image in this folder")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator
    from .sampling import generate
    from .training import resolve_device
    from .viz import save_grid, save_png, to_uint8

    device = resolve_device(args.device)
    G, _ = load_generator(args.source, use_ema=args.ema)
    images, _ = generate(G.to(device), args.n, seed=args.seed, class_index=args.class_index,
                         truncation=args.truncation, device=device)
    if args.out_dir:
        folder = Path(args.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(images)):
            save_png(image, folder / f"{i:06d}.png")
        print(f"wrote {len(images)} images to {folder}")
    else:
        out = Path(args.out or "samples.png")
        save_grid(images, out)
        print(f"wrote a grid of {len(images)} images to {out}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="a preset's architecture and parameter counts")
    p.add_argument("preset", type=positive_int, help="32, 64, 128 or 256")
    p.add_argument("--num-classes", type=non_negative_int, default=None, help="default: 1000 for 128, else 0")
    p.add_argument("--ch", type=positive_int, default=64)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from .models import Discriminator, Generator, count_parameters, get_preset

    preset = get_preset(args.preset)
    classes = args.num_classes if args.num_classes is not None else (1000 if args.preset == 128 else 0)
    G, D = Generator(args.preset, num_classes=classes, ch=args.ch), Discriminator(args.preset, num_classes=classes, ch=args.ch)
    r = 4
    print(f"SAGAN preset {args.preset}x{args.preset}, ch={args.ch}, z=128, {classes or 'no'} classes")
    print(f"Generator ({count_parameters(G):,} parameters)")
    print(f"  z -> linear -> {preset.g_widths[0] * args.ch} x 4 x 4")
    for i, block in enumerate(G.blocks):
        r *= 2
        attn = "  + self-attention" if str(i) in G.attention else ""
        print(f"  UpBlock {block.conv1.in_channels:>5} -> {block.conv2.out_channels:<5} {r:>3}x{r:<3}{attn}")
    print(f"  BN -> ReLU -> conv3x3 -> 3 x {r} x {r} -> tanh")
    print(f"Discriminator ({count_parameters(D):,} parameters)")
    r = args.preset
    for i, block in enumerate(D.blocks):
        r = r // 2 if block.downsample else r
        attn = "  + self-attention" if str(i) in D.attention else ""
        print(f"  DownBlock {block.conv1.in_channels:>5} -> {block.conv2.out_channels:<5} {r:>3}x{r:<3}{attn}")
    print(f"  ReLU -> sum over {r}x{r} -> linear" + (" + projection <embed(y), h>" if classes else ""))
    print(f"Total: {count_parameters(G) + count_parameters(D):,} parameters")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="FID / IS / KID of a trained generator (torch-fidelity)")
    _add_source(p)
    p.add_argument("--data", help="real data to compare with (default: the run's training data)")
    p.add_argument("--n", type=positive_int, default=50_000, help="generated samples, and at most as many real images (default 50000)")
    p.add_argument("--metrics", default="fid,is,kid", help="comma-separated subset of fid,is,kid (default all)")
    p.add_argument("--inception-weights", help="local Inception weights file (offline machines); or set SAGAN_INCEPTION_WEIGHTS")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", help="folder of downloaded datasets")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator, resolve_checkpoint
    from .data import build_dataset
    from .metrics import evaluate_generator, parse_metrics
    from .training import MetricsLog, resolve_device

    metrics = parse_metrics(args.metrics)
    device = resolve_device(args.device)
    path, _ = resolve_checkpoint(args.source)
    G, state = load_generator(path, use_ema=args.ema)
    train = state["config"]
    dataset = build_dataset(args.data or train["data"], G.resolution, seed=train.get("seed", 0),
                            shapes_size=train.get("data_size", 50_000), data_dir=args.data_dir)
    results = evaluate_generator(G.to(device), dataset, n=args.n, metrics=metrics, inception_weights=args.inception_weights,
                                 seed=args.seed, device=device, truncation=args.truncation)
    print(f"step {state['step']}, {args.n} samples: " + ", ".join(f"{k.upper()} {v:.4g}" for k, v in results.items()))
    if (path.parent / "config.json").is_file():  # a run directory: keep the result with the run
        MetricsLog(path.parent / "metrics.jsonl").write({"step": state["step"], "eval": results, "eval_n": args.n,
                                                         "checkpoint": path.name, "ema": args.ema,
                                                         "data": args.data or train["data"]})
    return 0


def _add_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="attention maps of a generated (or real) image, as in the paper")
    _add_source(p)
    p.add_argument("--class", dest="class_index", type=non_negative_int)
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--points", type=points, help='query pixels "x,y;x,y" (default: four spread points)')
    p.add_argument("--layer", help="attention block, e.g. G.attn16 or D.attn16 (default: G's first)")
    p.add_argument("--image", help="a real image to feed D (with a D.attn* --layer)")
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=_attention)


def _attention(args: argparse.Namespace) -> int:
    from .checkpoint import discriminator_from, load_generator
    from .data import ImageFolderDataset
    from .viz import attention_picture, save_pil

    G, state = load_generator(args.source, use_ema=args.ema)
    D = discriminator_from(state, args.source)
    layer = args.layer or sorted(G.attention_blocks())[0]
    image = None
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"--image {path} does not exist")
        image = ImageFolderDataset.load_image(path, G.resolution)
    picture = attention_picture(G, layer, D=D, seed=args.seed, class_index=args.class_index,
                                points=args.points, image=image)
    save_pil(picture, args.out)
    print(f"wrote attention maps of {layer} to {args.out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="training curves from a run's metrics.jsonl")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png")
    p.set_defaults(func=_plot)


def _plot(args: argparse.Namespace) -> int:
    from .training import MetricsLog
    from .viz import plot_curves

    log = Path(args.run) / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log} does not exist; is {args.run} a sagan run directory?")
    plot_curves(MetricsLog.read(log), args.out)
    print(f"wrote {args.out}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the EMA generator as model.safetensors + config.json (+ ONNX)")
    _add_source(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--onnx", action="store_true", help="also write generator.onnx (needs the onnx package)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator
    from .export import export_generator

    G, state = load_generator(args.source, use_ema=args.ema)
    written = export_generator(G, args.out, classes=state.get("classes", []), onnx=args.onnx)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="sagan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sagan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_sample, _add_eval, _add_attention, _add_plot, _add_export, _add_info]


def _warning_line(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"sagan: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    warnings.formatwarning = _warning_line  # type: ignore[assignment]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, CheckpointError, UsageError) as err:
        print(f"sagan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sagan: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the machine, not the input: a full disk, a lost mount...
        print(f"sagan {args.command}: error: {err}", file=sys.stderr)
        return 1

"""The `sagan` command: parses flags into config dataclasses and calls the library. Nothing else.

    sagan train      train a SAGAN (built-in `shapes` data by default)
    sagan sample     draw images from a trained generator
    sagan eval       FID / IS / KID with torch-fidelity
    sagan attention  the paper's attention-map picture
    sagan plot       training curves from metrics.jsonl
    sagan export     the EMA generator as safetensors (+ ONNX)
    sagan info       a preset's architecture and parameter counts

Bad flags and inputs end in one line on stderr and exit code 2; an unexpected error in one line
and exit code 1 (SAGAN_DEBUG=1 shows its traceback). Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from .config import MAX_WIDTH, ModelConfig, TrainConfig, check_value, default_text, flag_name

DEBUG_ENV = "SAGAN_DEBUG"
MAX_SAMPLES = 1_000_000  # sample --n / eval --n: more is a typo, not a plan


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, name: str, rules: dict[str, Any]) -> Callable[[str], Any]:
    """An argparse type: parse `kind`, refuse inf/nan, and apply the config field's `rules`."""
    lowest = rules.get("min")
    description = (
        ("a positive integer" if lowest == 1 else "a non-negative integer" if lowest == 0 else "an integer")
        if kind is int
        else ("a non-negative number" if lowest == 0 else "a number")
    )

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {description}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        try:
            check_value(name, value, rules)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).split(" ", 2)[-1]) from None
        return value

    parse.__name__ = description
    return parse


def resolutions(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of resolutions such as 16,32"
        ) from None
    if any(not 1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: resolutions must lie in 1..256")
    return values


def points(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError:
        out = []
    if not out or any(len(p) != 2 for p in out) or len(out) > 16:
        raise argparse.ArgumentTypeError(f'{text!r} is not a list of up to 16 points such as "8,8;24,16"')
    return out  # type: ignore[return-value]


positive_int = _number(int, "n", {"min": 1, "max": MAX_SAMPLES})
non_negative_int = _number(int, "class", {"min": 0})
any_int = _number(int, "seed", {})
positive_float = _number(float, "truncation", {"min": 1e-6})


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field, its type, range, help and default all read from the dataclasses."""
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            rules = dict(f.metadata)
            if f.name == "model" or rules.get("cli") is False:
                continue
            text = f"{rules['help']} (default: {default_text(f.name)})"
            kind = str(f.type)
            if kind.startswith("bool"):
                on, *off = rules["flag"]
                p.add_argument(on, dest=f.name, action="store_true", help=text)
                for name in off:
                    p.add_argument(name, dest=f.name, action="store_false", help=f"the opposite of {on}")
            elif "choices" in rules:
                p.add_argument(
                    flag_name(f.name), choices=rules["choices"], help=text, type=int if kind.startswith("int") else None
                )
            elif kind.startswith("list"):
                p.add_argument(flag_name(f.name), type=resolutions, help=text)
            elif kind.startswith(("int", "float")):
                p.add_argument(
                    flag_name(f.name), type=_number(int if kind.startswith("int") else float, f.name, rules), help=text
                )
            else:
                p.add_argument(flag_name(f.name), help=text)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a SAGAN",
        description="Train a SAGAN. With no flags: 32-pixel shapes, "
        "sized for the device (on a CPU: 15-30 minutes on 2 free cores).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest loadable checkpoint")
    add_config_flags(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .config import model_field_names
    from .training import TrainingDiverged, TrainingStopped, train

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "resume")}
    resume = getattr(args, "resume", None)
    if resume:  # the run's own settings, then the flags given now (model flags are checked against it in train)
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such run directory")
        saved = {k: v for k, v in TrainConfig.from_run(resume).flat().items() if k not in model_field_names()}
        given = {**saved, **given}
    config = TrainConfig.create(**given).validate()
    if config.eval_every:  # find and check the Inception weights now, not after the first eval_every steps
        from .metrics import load_inception_state

        load_inception_state(config.inception_weights)
    try:
        train(config, resume=resume)
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
    p.add_argument("--n", type=positive_int, default=64, help=f"number of images, at most {MAX_SAMPLES:,} (default 64)")
    p.add_argument("--class", dest="class_index", type=non_negative_int, help="draw only this class")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float, help="truncate z to [-T, T] (BigGAN's trick)")
    p.add_argument("--device", default="auto")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="grid PNG (default samples.png; at most 4096 images)")
    out.add_argument("--out-dir", help="one PNG per image in this folder")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator
    from .runtime import resolve_device
    from .sampling import generate, iter_generate
    from .viz import save_grid, save_png, to_uint8

    device = resolve_device(args.device)
    if not args.out_dir and args.n > 4096:
        raise ValueError(f"--n {args.n} is too many for one grid (at most 4096); use --out-dir for single images")
    G, _ = load_generator(args.source, use_ema=args.ema)
    G = G.to(device)
    if args.out_dir:
        folder = Path(args.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for start, images, _ in iter_generate(
            G,
            args.n,
            seed=args.seed,
            class_index=args.class_index,
            truncation=args.truncation,
            device=device,
            progress=True,
        ):
            for i, image in enumerate(to_uint8(images)):
                save_png(image, folder / f"{start + i:06d}.png")
        print(f"wrote {args.n} images to {folder}")
    else:
        images, _ = generate(
            G, args.n, seed=args.seed, class_index=args.class_index, truncation=args.truncation, device=device
        )
        out = Path(args.out or "samples.png")
        save_grid(images, out)
        print(f"wrote a grid of {len(images)} images to {out}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="a preset's architecture and parameter counts")
    p.add_argument("preset", type=_number(int, "resolution", {"min": 1}), help="32, 64, 128 or 256")
    p.add_argument(
        "--num-classes",
        type=_number(int, "num_classes", {"min": 0, "max": 100_000}),
        default=None,
        help="default: 1000 for 128, else 0",
    )
    p.add_argument("--ch", type=_number(int, "ch", {"min": 1, "max": MAX_WIDTH}), default=64)
    p.add_argument("--z-dim", type=_number(int, "z_dim", {"min": 1, "max": 4096}), default=128)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    import torch

    from .models import Discriminator, Generator, block_resolutions, count_parameters, get_preset

    preset = get_preset(args.preset)
    classes = args.num_classes if args.num_classes is not None else (1000 if args.preset == 128 else 0)
    with torch.device("meta"):  # counts and widths only: nothing is allocated, whatever the width
        G = Generator(args.preset, z_dim=args.z_dim, num_classes=classes, ch=args.ch)
        D = Discriminator(args.preset, num_classes=classes, ch=args.ch)
    g_res, d_res = block_resolutions(args.preset)
    print(f"SAGAN preset {args.preset}x{args.preset}, ch={args.ch}, z={args.z_dim}, {classes or 'no'} classes")
    print(f"Generator ({count_parameters(G):,} parameters)")
    print(f"  z -> linear -> {preset.g_widths[0] * args.ch} x 4 x 4")
    for i, (block, r) in enumerate(zip(G.blocks, g_res)):
        attn = "  + self-attention" if str(i) in G.attention else ""
        print(f"  UpBlock {block.conv1.in_channels:>5} -> {block.conv2.out_channels:<5} {r:>3}x{r:<3}{attn}")
    print(f"  BN -> ReLU -> conv3x3 -> 3 x {args.preset} x {args.preset} -> tanh")
    print(f"Discriminator ({count_parameters(D):,} parameters)")
    for i, (block, r) in enumerate(zip(D.blocks, d_res)):
        attn = "  + self-attention" if str(i) in D.attention else ""
        print(f"  DownBlock {block.conv1.in_channels:>5} -> {block.conv2.out_channels:<5} {r:>3}x{r:<3}{attn}")
    print(f"  ReLU -> sum over {d_res[-1]}x{d_res[-1]} -> linear" + (" + projection <embed(y), h>" if classes else ""))
    print(f"Total: {count_parameters(G) + count_parameters(D):,} parameters")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="FID / IS / KID of a trained generator (torch-fidelity)")
    _add_source(p)
    p.add_argument("--data", help="real data to compare with (default: the run's training data)")
    p.add_argument(
        "--n",
        type=positive_int,
        default=50_000,
        help="generated samples, and at most as many real images (default 50000)",
    )
    p.add_argument("--metrics", default="fid,is,kid", help="comma-separated subset of fid,is,kid (default all)")
    p.add_argument(
        "--inception-weights", help="local Inception weights file (offline machines); or set SAGAN_INCEPTION_WEIGHTS"
    )
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", help="folder of downloaded datasets")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator
    from .data import build_dataset
    from .metrics import evaluate_generator, load_inception_state, parse_metrics
    from .rundir import MetricsLog
    from .runtime import resolve_device

    metrics = parse_metrics(args.metrics)
    device = resolve_device(args.device)
    inception = load_inception_state(args.inception_weights)
    G, state = load_generator(args.source, use_ema=args.ema)
    train = state.config
    dataset = build_dataset(
        args.data or train.data, G.resolution, seed=train.seed, shapes_size=train.data_size, data_dir=args.data_dir
    )
    results = evaluate_generator(
        G.to(device),
        dataset,
        n=args.n,
        metrics=metrics,
        inception_weights=inception,
        seed=args.seed,
        device=device,
        truncation=args.truncation,
        progress=True,
    )
    print(f"step {state.step}, {args.n} samples: " + ", ".join(f"{k.upper()} {v:.4g}" for k, v in results.items()))
    run_dir = Path(args.source) if Path(args.source).is_dir() else Path(args.source).parent
    if (run_dir / "config.json").is_file():  # a run directory: keep the result with the run
        MetricsLog(run_dir / "metrics.jsonl").write(
            {"step": state.step, "eval": results, "eval_n": args.n, "ema": args.ema, "data": args.data or train.data}
        )
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
    from .data import load_image
    from .viz import attention_picture, save_pil

    G, state = load_generator(args.source, use_ema=args.ema)
    D = discriminator_from(state, args.source)
    layer = args.layer or min(G.attention_blocks())
    image = None
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"--image {path} does not exist")
        image = load_image(path, G.resolution)
    picture = attention_picture(
        G, layer, D=D, seed=args.seed, class_index=args.class_index, points=args.points, image=image
    )
    save_pil(picture, args.out)
    print(f"wrote attention maps of {layer} to {args.out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="training curves from a run's metrics.jsonl")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png")
    p.set_defaults(func=_plot)


def _plot(args: argparse.Namespace) -> int:
    from .rundir import read_metrics
    from .viz import plot_curves

    plot_curves(read_metrics(args.run), args.out)
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
    written = export_generator(G, args.out, classes=state.classes, onnx=args.onnx)
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
    _add_train,
    _add_sample,
    _add_eval,
    _add_attention,
    _add_plot,
    _add_export,
    _add_info,
]


def _warning_line(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"sagan: warning: {message}\n"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _warning_line  # type: ignore[assignment]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        print(f"sagan {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sagan: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the machine, not the input: a full disk, a lost mount...
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"sagan {args.command}: error: {err.strerror or _one_line(err)}{where}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug, or a case nobody foresaw: one line, and how to see more
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"sagan {args.command}: internal error: {type(err).__name__}: {_one_line(err)[:300]} "
            f"(set {DEBUG_ENV}=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1

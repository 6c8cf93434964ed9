"""The `sagan` command: parses flags into config dataclasses and calls the library. Nothing else.

    sagan train        train a SAGAN (built-in `shapes` data by default)
    sagan sample       draw images from a trained generator
    sagan interpolate  walks between noise vectors (slerp) or between classes
    sagan eval         FID / IS / KID (and precision/recall) with torch-fidelity
    sagan attention    the paper's attention-map picture
    sagan plot         training curves from metrics.jsonl
    sagan export       the EMA generator as safetensors (+ ONNX), optionally to the Hugging Face Hub
    sagan info         a preset's architecture and parameter counts

Reading commands take a run directory, a checkpoint, an export folder or a Hub id (owner/name).

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


SOURCE_HELP = (
    "a run directory (its newest checkpoint), a checkpoint, an export folder or a Hugging Face Hub id "
    "(owner/name, or owner/name@revision)"
)


def _add_source(p: argparse.ArgumentParser) -> None:
    """The trained model a command reads (see sagan.source)."""
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the trained G, not its EMA copy")


def _add_class(p: argparse.ArgumentParser, flag: str = "--class", dest: str = "class_index", what: str = "") -> None:
    p.add_argument(flag, dest=dest, metavar="CLASS", help=f"{what or 'draw only this class'}: an index or a class name")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a trained generator")
    _add_source(p)
    p.add_argument("--n", type=positive_int, default=64, help=f"number of images, at most {MAX_SAMPLES:,} (default 64)")
    _add_class(p)
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float, help="truncate z to [-T, T] (BigGAN's trick)")
    p.add_argument("--device", default="auto")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="grid PNG (default samples.png; at most 4096 images)")
    out.add_argument("--out-dir", help="one PNG per image in this folder")
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from .runtime import resolve_device
    from .sampling import class_index_of, generate, iter_generate
    from .source import load_source
    from .viz import save_grid, save_png, to_uint8

    device = resolve_device(args.device)
    if not args.out_dir and args.n > 4096:
        raise ValueError(f"--n {args.n} is too many for one grid (at most 4096); use --out-dir for single images")
    G = load_source(args.source, use_ema=args.ema).G.to(device)
    options = {
        "seed": args.seed,
        "class_index": class_index_of(G, args.class_index),
        "truncation": args.truncation,
        "device": device,
    }
    if args.out_dir:
        folder = Path(args.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for start, images, _ in iter_generate(G, args.n, progress=True, **options):
            for i, image in enumerate(to_uint8(images)):
                save_png(image, folder / f"{start + i:06d}.png")
        print(f"wrote {args.n} images to {folder}")
    else:
        images, _ = generate(G, args.n, **options)
        out = Path(args.out or "samples.png")
        save_grid(images, out)
        print(f"wrote a grid of {len(images)} images to {out}")
    return 0


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="walks between noise vectors (slerp) or between classes",
        description="Rows of images walking from one noise vector to another (slerp) at a fixed class; "
        "with --to-class, from one class to another at fixed noise. Deterministic by --seed.",
    )
    _add_source(p)
    _add_class(p, what="the class of every row (default: each row's own random class)")
    _add_class(p, "--to-class", "to_class", what="walk from the row's class to this one, noise fixed")
    p.add_argument("--n", type=_number(int, "n", {"min": 2, "max": 64}), default=8, help="steps per row (default 8)")
    p.add_argument("--rows", type=_number(int, "rows", {"min": 1, "max": 64}), default=4, help="walks (default 4)")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float, help="truncate the end points' z to [-T, T]")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="interpolation.png", help="the picture, a row per walk (default interpolation.png)")
    p.add_argument("--gif", help="also an animated GIF of the walks")
    p.set_defaults(func=_interpolate)


def _interpolate(args: argparse.Namespace) -> int:
    from .interpolation import interpolate
    from .runtime import resolve_device
    from .sampling import class_index_of
    from .source import load_source
    from .viz import interpolation_grid, save_gif, save_png

    device = resolve_device(args.device)
    G = load_source(args.source, use_ema=args.ema).G.to(device)
    images = interpolate(
        G,
        rows=args.rows,
        steps=args.n,
        seed=args.seed,
        class_index=class_index_of(G, args.class_index),
        to_class=class_index_of(G, args.to_class, "--to-class"),
        truncation=args.truncation,
        device=device,
    )
    save_png(interpolation_grid(images), args.out)
    written = [args.out]
    if args.gif:
        save_gif(images, args.gif)
        written.append(args.gif)
    print(f"wrote {args.rows} walks of {args.n} steps to {' and '.join(written)}")
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
    p.add_argument("--metrics", default="fid,is,kid", help="comma-separated: fid,is,kid,prc (default fid,is,kid)")
    p.add_argument(
        "--inception-weights", help="local Inception weights file (offline machines); or set SAGAN_INCEPTION_WEIGHTS"
    )
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--truncation", type=positive_float)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", help="folder of downloaded datasets")
    p.add_argument("--split", help="split of hf: data (default: the run's, or train)")
    p.add_argument("--image-column", help="image column of hf: data (default: the run's, or image)")
    p.add_argument("--label-column", help="label column of hf: data (default: the run's, or label if there is one)")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .metrics import evaluate_generator, load_inception_state, parse_metrics
    from .rundir import FIDELITY_CACHE, MetricsLog
    from .runtime import resolve_device
    from .source import load_source

    metrics = parse_metrics(args.metrics)
    device = resolve_device(args.device)
    inception = load_inception_state(args.inception_weights)
    source = load_source(args.source, use_ema=args.ema)
    train = source.state.config if source.state is not None else None
    data = args.data or (train.data if train is not None else None)
    if data is None:
        raise ValueError(f"{args.source} is {source.kind} and does not record its training data: pass --data")
    options = {"seed": train.seed, "shapes_size": train.data_size} if train is not None else {}
    for name in ("split", "image_column", "label_column"):  # hf: data: the flag, else the run's own
        value = getattr(args, name) or (getattr(train, name) if train is not None and data == train.data else None)
        if value is not None:
            options[name] = value
    dataset = build_dataset(data, source.G.resolution, data_dir=args.data_dir, **options)
    results = evaluate_generator(
        source.G.to(device),
        dataset,
        n=args.n,
        metrics=metrics,
        inception_weights=inception,
        seed=args.seed,
        device=device,
        truncation=args.truncation,
        progress=True,
        # a run keeps its real images' features: the next evaluation (or the training run's) reuses them
        cache_dir=None if source.run_dir is None else source.run_dir / FIDELITY_CACHE,
        data_key=data,
    )
    print(f"{source.describe()}, {args.n} samples: " + ", ".join(f"{k.upper()} {v:.4g}" for k, v in results.items()))
    if source.run_dir is not None:  # keep the result with the run
        MetricsLog(source.run_dir / "metrics.jsonl").write(
            {"step": source.step, "eval": results, "eval_n": args.n, "ema": args.ema, "data": data}
        )
    return 0


def _add_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="attention maps of a generated (or real) image, as in the paper")
    _add_source(p)
    _add_class(p, what="the generated image's class")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--points", type=points, help='query pixels "x,y;x,y" (default: four spread points)')
    p.add_argument("--layer", help="attention block, e.g. G.attn16 or D.attn16 (default: G's first)")
    p.add_argument("--image", help="a real image to feed D (with a D.attn* --layer)")
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=_attention)


def _attention(args: argparse.Namespace) -> int:
    from .image_files import load_image
    from .sampling import class_index_of
    from .source import load_source
    from .viz import attention_picture, save_pil

    source = load_source(args.source, use_ema=args.ema)
    G = source.G
    layer = args.layer or min(G.attention_blocks())
    D = source.discriminator(f"--layer {layer}") if layer.startswith("D.") or args.image else None
    image = None
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"--image {path} does not exist")
        image = load_image(path, G.resolution)
    picture = attention_picture(
        G, layer, D=D, seed=args.seed, class_index=class_index_of(G, args.class_index), points=args.points, image=image
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
    p = sub.add_parser("export", help="the EMA generator as model.safetensors + config.json (+ ONNX), or to the Hub")
    _add_source(p)
    p.add_argument("--out", required=True, help="output folder (it loads with Generator.from_pretrained)")
    p.add_argument("--onnx", action="store_true", help="also write generator.onnx (needs the onnx package)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx
    from .hub import REPO_ID, push_folder, write_card
    from .source import load_source

    if args.push_to_hub and not REPO_ID.match(args.push_to_hub):
        raise ValueError(f"--push-to-hub {args.push_to_hub!r} is not a Hub repository id such as owner/name")
    G = load_source(args.source, use_ema=args.ema).G
    G.save_pretrained(args.out)
    out = Path(args.out)
    written = sorted(str(p) for p in out.iterdir() if p.name in ("model.safetensors", "config.json", "README.md"))
    if args.push_to_hub:  # the card names the repository it loads from
        write_card(G, out, repo_id=args.push_to_hub)
    if args.onnx:
        written.append(str(export_onnx(G, out / "generator.onnx")))
    print("wrote " + ", ".join(written))
    if args.push_to_hub:
        print(f"pushed {out} to {push_folder(out, args.push_to_hub, private=args.private)}")
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
    _add_interpolate,
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

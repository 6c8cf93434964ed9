"""Sharing a trained generator: safetensors weights + config.json (and optionally ONNX).

The folder loads back with `Generator.from_pretrained(folder)` (or from the Hub: `sagan.hub`): no
training state and no unpickling (safetensors holds raw tensors only).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from .checkpoint import class_names_of, generator_config_of
from .files import atomic_write, atomic_write_json
from .models import Generator, build_generator, size_shapes
from .spectral import bake_spectral_norm

WEIGHTS_FILE, CONFIG_FILE, ONNX_FILE = "model.safetensors", "config.json", "generator.onnx"


def export_generator(
    G: Generator, out_dir: str | Path, classes: list[str] | None = None, onnx: bool = False
) -> list[Path]:
    """Write G's weights and config to out_dir (atomically); returns the files written. Refuses non-finite weights."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"the generator has NaN or Inf weights ({len(bad)} tensors, first {bad[0]}); export an earlier checkpoint"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the export folder {out}: {err.strerror}; pass another --out") from None
    atomic_write(out / WEIGHTS_FILE, lambda fh: fh.write(save(state, metadata={"format": "pt"})))
    atomic_write_json(out / CONFIG_FILE, {"generator": G.config, "classes": classes or []})
    written = [out / WEIGHTS_FILE, out / CONFIG_FILE]
    if onnx:
        written.append(export_onnx(G, out / ONNX_FILE))
    return written


def load_pretrained(folder: str | Path) -> Generator:
    """A Generator from an exported folder, in eval mode (see `Generator.from_pretrained`).

    config.json is validated, and the weights' shapes (read from the safetensors header) checked
    against it, before the network is built; safetensors holds raw tensors only, so nothing runs.
    """
    from safetensors import safe_open

    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing; make the folder with `sagan export RUN --out {folder}`"
            )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON ({err}); export the model again") from None
    if not isinstance(config, dict) or not isinstance(config.get("generator"), dict):
        what = f"a {type(config).__name__}" if not isinstance(config, dict) else "a mapping without a 'generator' entry"
        raise ValueError(  # noqa: TRY004 (a bad file: an input error, like every other one here)
            f"{folder / CONFIG_FILE} is {what}, not a sagan export's config; make the folder with `sagan export`"
        )
    model = generator_config_of(config["generator"], str(folder / CONFIG_FILE))
    class_names = class_names_of(config.get("classes", []), model.num_classes or 0, folder / CONFIG_FILE)
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types for files not of its format)
        raise ValueError(
            f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({err}); export the model again"
        ) from None
    for key, shape in size_shapes(model)["G"].items():  # before building: the config cannot claim more than the file
        if shapes.get(key) != shape:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit the generator its config.json describes ({key}: "
                             f"{shapes.get(key)} vs {shape}); export the model again")  # fmt: skip
    G = build_generator(model)
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    if shapes != expected:
        wrong = sorted(k for k in set(shapes) | set(expected) if shapes.get(k) != expected.get(k))
        raise ValueError(
            f"{folder / WEIGHTS_FILE} does not fit the generator its config.json describes "
            f"({len(wrong)} tensor(s) differ, first {wrong[0]}); export the model again"
        )
    from safetensors.torch import load_file

    G.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    G.class_names = class_names
    return G.eval()


def export_onnx(G: Generator, path: Path) -> Path:
    """ONNX graph of G: (z, y) -> image (y only for conditional nets), batch size dynamic."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so plainly if it is missing)
    except ImportError:
        raise ValueError("--onnx needs the onnx package: pip install 'sagan-pytorch[onnx]'") from None
    G = bake_spectral_norm(copy.deepcopy(G).eval())  # plain weights: the graph need not compute sigma
    z = torch.randn(2, G.z_dim)
    args = (z,) if not G.num_classes else (z, torch.zeros(2, dtype=torch.long))
    names = ["z"] + (["y"] if G.num_classes else [])
    # The TorchScript exporter needs only `onnx` (the torch.export one also needs onnxscript). Its
    # tracer warns about the label range checks, which are constants for a trace: expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        atomic_write(
            path,
            lambda fh: torch.onnx.export(
                G,
                args,
                fh,
                input_names=names,
                output_names=["image"],
                dynamic_axes={n: {0: "batch"} for n in names + ["image"]},
                opset_version=17,
                dynamo=False,
            ),
        )
    return path

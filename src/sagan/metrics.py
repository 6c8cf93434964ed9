"""FID, Inception Score and KID through torch-fidelity (the reference implementation that
matches the original TensorFlow numbers). Nothing here re-implements Inception or the metrics.

Inception weights: torch-fidelity downloads `weights-inception-2015-12-05-6726825d.pth` into
torch's hub folder on first use. Offline, put that file there, or pass its path
(`--inception-weights PATH` or the environment variable SAGAN_INCEPTION_WEIGHTS).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .sampling import draw_inputs
from .viz import to_uint8

METRICS = ("fid", "is", "kid", "prc")  # prc: precision and recall (Kynkäänniemi et al. 2019)
#: torch-fidelity's result names -> ours
RESULT_NAMES = {
    "frechet_inception_distance": "fid",
    "inception_score_mean": "is",
    "inception_score_std": "is_std",
    "kernel_inception_distance_mean": "kid",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
INCEPTION_ENV = "SAGAN_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def parse_metrics(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: choose from {','.join(METRICS)} (comma-separated)")
    if "prc" in names and not has_prc():
        raise ValueError(
            "--metrics prc needs a torch-fidelity with precision/recall (0.3 or later): pip install -U torch-fidelity"
        )
    return names


def has_prc() -> bool:
    """Whether the installed torch-fidelity computes precision and recall."""
    from torch_fidelity.defaults import DEFAULTS

    return "prc" in DEFAULTS


def inception_hub_path() -> Path:
    """Where torch-fidelity's download lands (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _offline_hint() -> str:
    return f"put {INCEPTION_FILE} at {inception_hub_path()}, or pass --inception-weights PATH (or set {INCEPTION_ENV})"


def load_inception_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The Inception-v3 weights as tensors, read once, here, with weights_only=True: nothing in the file can run.

    Looks at `path`, then $SAGAN_INCEPTION_WEIGHTS, then torch hub's folder; if none has the file,
    downloads it there (hash-checked) first. Every failure is a one-line ValueError/FileNotFoundError.
    """
    given = path or os.environ.get(INCEPTION_ENV) or None
    target = Path(given) if given else inception_hub_path()
    if given and not target.is_file():
        raise FileNotFoundError(f"Inception weights {target} do not exist; download {INCEPTION_FILE} and point to it")
    if not target.is_file():
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # the file name carries the first digits of its sha256, which torch hub checks
            torch.hub.download_url_to_file(
                URL_INCEPTION_V3, str(target), hash_prefix=INCEPTION_FILE.split("-")[-1][:8], progress=False
            )
        except Exception as err:  # noqa: BLE001 (no network, a proxy, a bad hash: all say the same to the user)
            raise ValueError(
                f"could not download the Inception weights ({type(err).__name__}: {str(err)[:120]}); on an "
                f"offline machine {_offline_hint()}"
            ) from None
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch's refusals and damaged-file errors vary)
        raise ValueError(
            f"Inception weights {target} cannot be read safely as a state dict ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:120]}); use torch-fidelity's {INCEPTION_FILE}"
        ) from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if (
        not isinstance(fc, torch.Tensor)
        or tuple(fc.shape) != (1008, 2048)
        or "Mixed_7c.branch1x1.conv.weight" not in state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{target} is not an Inception-v3 state dict for torch-fidelity (expected {INCEPTION_FILE})")
    return state


def _in_memory(state: dict[str, torch.Tensor]) -> io.BytesIO:
    """The tensors as a file object for torch-fidelity's own torch.load: it reads what we read, no file again."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _array_globals() -> list[Any]:
    """What unpickling a plain numpy array takes (torch-fidelity caches FID statistics as arrays); none runs code."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, *{type(np.dtype(t)) for t in (np.float32, np.float64, np.int64)}]


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every torch.load in this block reads tensors (and plain numpy arrays) only, whatever its caller asks
    (torch's own switch)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with torch.serialization.safe_globals(_array_globals()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _AsUint8(Dataset):
    """A sagan dataset's images as the (3, H, W) uint8 tensors torch-fidelity reads."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_uint8(self.dataset[self.indices[i]][0])


class _GeneratedImages(Dataset):
    """n images of G, made a chunk at a time when first read (in order), as uint8 tensors.

    Noise and uniformly drawn classes are fixed by the seed, so two evaluations of one generator
    see the same samples.
    """

    def __init__(
        self, G: nn.Module, n: int, seed: int, device: torch.device, chunk: int = 64, truncation: float | None = None
    ) -> None:
        self.z, self.y = draw_inputs(0, n, G.z_dim, G.num_classes, seed, truncation=truncation)
        self.G, self.device, self.chunk = G, device, chunk
        self._cached: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.z)

    @torch.no_grad()
    def __getitem__(self, i: int) -> torch.Tensor:
        start = i - i % self.chunk
        if self._cached is None or self._cached[0] != start:
            sl = slice(start, start + self.chunk)
            y = None if self.y is None else self.y[sl].to(self.device)
            self._cached = (start, to_uint8(self.G(self.z[sl].to(self.device), y)).cpu())
        return self._cached[1][i - start]


def _cache_options(
    cache_dir: str | Path | None, data_key: str, dataset: Dataset, indices: list[int]
) -> dict[str, object]:
    """torch-fidelity's cache settings: the real input's features kept in cache_dir under a name for its content."""
    if cache_dir is None:
        return {"cache": False}
    import hashlib

    image = dataset[indices[0]][0] if indices else torch.empty(0)
    digest = hashlib.sha256(f"{data_key}|{tuple(image.shape)}|{len(dataset)}|".encode())
    digest.update(torch.tensor(indices, dtype=torch.int64).numpy().tobytes())
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    _vet_cache(Path(cache_dir))
    return {"cache": True, "cache_root": str(cache_dir), "input2_cache_name": f"sagan-real-{digest.hexdigest()[:20]}"}


def _vet_cache(folder: Path) -> None:
    """Read every cached file here first, tensors and arrays only; anything else is deleted (and recomputed).

    torch-fidelity then loads them itself, under the weights-only switch as well.
    """
    for path in folder.glob("*.pt"):
        try:
            with torch.serialization.safe_globals(_array_globals()):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (a damaged or foreign file: drop it, the features are recomputed)
            warnings.warn(f"removing {path}: not a feature cache of tensors; it will be recomputed")
            path.unlink(missing_ok=True)


def evaluate_generator(
    G: nn.Module,
    dataset: Dataset,
    n: int = 50_000,
    metrics: str | list[str] = "fid",
    inception_weights: str | Path | dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    truncation: float | None = None,
    batch_size: int = 64,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    data_key: str = "",
) -> dict[str, float]:
    """{fid, is, is_std, kid, kid_std, precision, recall, f_score} (those asked for) of n samples of G (in
    eval mode, classes drawn uniformly) against up to n images of dataset. inception_weights: a state dict
    from `load_inception_state`, or where to find one (see there).

    With cache_dir, the real images' features are computed once and kept there (torch-fidelity's cache),
    keyed by data_key (what the data is), the resolution and the images chosen (so the seed and n):
    the evaluations of a run read its real images once.
    """
    import torch_fidelity

    names = parse_metrics(metrics) if isinstance(metrics, str) else list(metrics)
    if n < 2:
        raise ValueError(f"--n {n}: the metrics need at least 2 samples (50000 for numbers comparable to papers)")
    state = inception_weights if isinstance(inception_weights, dict) else load_inception_state(inception_weights)
    device = torch.device(device)
    was_training = G.training
    G.eval()
    real_gen = torch.Generator().manual_seed(seed)
    real_indices = torch.randperm(len(dataset), generator=real_gen)[: min(n, len(dataset))].tolist()
    kwargs = {
        "input1": _GeneratedImages(G, n, seed, device, chunk=batch_size, truncation=truncation),
        "input2": _AsUint8(dataset, real_indices),
        "cuda": device.type == "cuda",
        "batch_size": batch_size,
        "save_cpu_ram": True,  # no loader workers: G lives here
        "fid": "fid" in names,
        "isc": "is" in names,
        "kid": "kid" in names,
        "kid_subset_size": min(1000, n, len(real_indices)),
        "isc_splits": min(10, n),
        "feature_extractor": "inception-v3-compat",
        # torch-fidelity torch.loads its weights itself: it gets the tensors read above, in memory, and
        # (below) torch's switch that makes every load tensors-only. No file is unpickled on our behalf.
        "feature_extractor_weights_path": _in_memory(state),
        "prc": "prc" in names,
        "verbose": progress,
        "rng_seed": seed,
        **_cache_options(cache_dir, data_key, dataset, real_indices),
    }
    try:
        with _weights_only_loads():
            raw = torch_fidelity.calculate_metrics(**kwargs)
    finally:
        G.train(was_training)
    return {short: float(raw[long]) for long, short in RESULT_NAMES.items() if long in raw}

"""FID, Inception Score and KID through torch-fidelity (the reference implementation that
matches the original TensorFlow numbers). Nothing here re-implements Inception or the metrics.

Inception weights: torch-fidelity downloads `weights-inception-2015-12-05-6726825d.pth` into
torch's hub folder on first use. Offline, put that file there, or pass its path
(`--inception-weights PATH` or the environment variable SAGAN_INCEPTION_WEIGHTS).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .sampling import sample_labels, sample_noise
from .viz import to_uint8

METRICS = ("fid", "is", "kid")
INCEPTION_ENV = "SAGAN_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def parse_metrics(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: choose from {','.join(METRICS)} (comma-separated)")
    return names


def inception_hub_path() -> Path:
    """Where torch-fidelity's download lands (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def resolve_inception_weights(path: str | None) -> str | None:
    """The weights file to use (explicit, $SAGAN_INCEPTION_WEIGHTS, or None to let torch-fidelity fetch it).

    A given file is read once with weights_only=True first: torch-fidelity itself unpickles with
    weights_only=False, so a file that would run code is refused here before it gets there.
    """
    path = path or os.environ.get(INCEPTION_ENV) or None
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist; download {INCEPTION_FILE} and point to it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"Inception weights {path} cannot be read safely as a state dict ({type(err).__name__}); "
                         f"use torch-fidelity's {INCEPTION_FILE}") from None
    if not isinstance(state, dict) or "fc.weight" not in state or "Mixed_7c.branch1x1.conv.weight" not in state:
        raise ValueError(f"{path} is not an Inception-v3 state dict for torch-fidelity (expected {INCEPTION_FILE})")
    return str(path)


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

    def __init__(self, G: nn.Module, n: int, seed: int, device: torch.device, chunk: int = 64, truncation: float | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.z = sample_noise(n, G.z_dim, gen, truncation)
        self.y = sample_labels(n, G.num_classes, gen)
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


def evaluate_generator(
    G: nn.Module,
    dataset: Dataset,
    n: int = 50_000,
    metrics: str | list[str] = "fid",
    inception_weights: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    truncation: float | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Metrics of n samples of G against up to n images of dataset.

    Returns a subset of {fid, is, is_std, kid, kid_std}. G is used in eval mode; conditional
    generators draw classes uniformly.
    """
    import torch_fidelity

    names = parse_metrics(metrics) if isinstance(metrics, str) else list(metrics)
    if n < 2:
        raise ValueError(f"--n {n}: the metrics need at least 2 samples (50000 for numbers comparable to papers)")
    weights = resolve_inception_weights(inception_weights)
    device = torch.device(device)
    was_training = G.training
    G.eval()
    real_gen = torch.Generator().manual_seed(seed)
    real_indices = torch.randperm(len(dataset), generator=real_gen)[: min(n, len(dataset))].tolist()
    kwargs = dict(
        input1=_GeneratedImages(G, n, seed, device, chunk=batch_size, truncation=truncation),
        input2=_AsUint8(dataset, real_indices),
        cuda=device.type == "cuda", batch_size=batch_size, save_cpu_ram=True,  # no loader workers: G lives here
        fid="fid" in names, isc="is" in names, kid="kid" in names,
        kid_subset_size=min(1000, n, len(real_indices)), isc_splits=min(10, n),
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=weights,
        cache=False, verbose=False, rng_seed=seed,
    )
    try:
        raw = torch_fidelity.calculate_metrics(**kwargs)
    except (OSError, RuntimeError) as err:
        if weights is None and not inception_hub_path().is_file():
            raise ValueError(
                f"could not download the Inception weights ({type(err).__name__}: {str(err)[:120]}); on an offline "
                f"machine put {INCEPTION_FILE} at {inception_hub_path()}, or pass --inception-weights PATH "
                f"(or set {INCEPTION_ENV})"
            ) from None
        raise
    finally:
        G.train(was_training)
    keys = {"frechet_inception_distance": "fid", "inception_score_mean": "is", "inception_score_std": "is_std",
            "kernel_inception_distance_mean": "kid", "kernel_inception_distance_std": "kid_std"}
    return {short: float(raw[long]) for long, short in keys.items() if long in raw}

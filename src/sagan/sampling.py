"""Drawing images from a generator: noise (optionally truncated), class labels, batching.

An image's noise and class depend only on the seed and its own index: inputs come in blocks of
`BLOCK` images, each block from its own generator seeded by (seed, block). So `--n 8` draws the
first 8 images of `--n 64`, on any device and with any batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

BLOCK = 1024


def sample_noise(
    n: int,
    z_dim: int,
    generator: torch.Generator | None = None,
    truncation: float | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(n, z_dim) standard normal noise; with truncation T, normal noise restricted to [-T, T] (BigGAN's trick).

    The truncated draw inverts the normal CDF on [Phi(-T), Phi(T)]: one draw per entry, for any T > 0
    (no redraw loop, so a tiny T costs no more than a large one).
    """
    if truncation is None:
        return torch.randn(n, z_dim, generator=generator, device=device)
    if not truncation > 0 or not math.isfinite(truncation):
        raise ValueError(
            f"truncation={truncation} must be a finite number > 0 (smaller trades variety for fidelity; 1-2 is typical)"
        )
    u = torch.rand(n, z_dim, generator=generator, device=device, dtype=torch.float64)
    low = 0.5 * math.erfc(truncation / math.sqrt(2))  # Phi(-T)
    z = math.sqrt(2) * torch.erfinv(2 * (low + u * (1 - 2 * low)) - 1)
    return z.clamp(-truncation, truncation).float()


def sample_labels(
    n: int,
    num_classes: int,
    generator: torch.Generator | None = None,
    class_index: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """(n,) class labels: all `class_index`, or uniform over the classes; None for unconditional nets."""
    check_class(class_index, num_classes)
    if num_classes == 0:
        return None
    if class_index is not None:
        return torch.full((n,), class_index, dtype=torch.long, device=device)
    return torch.randint(num_classes, (n,), generator=generator, device=device)


def check_class(class_index: int | None, num_classes: int, flag: str = "--class") -> None:
    """A class index (given with `flag`) must name one of the model's classes; None always passes."""
    if class_index is None:
        return
    if num_classes == 0:
        raise ValueError(f"this generator is unconditional: drop {flag}")
    if not 0 <= class_index < num_classes:
        raise ValueError(f"{flag} {class_index} is outside [0, {num_classes}); the model has {num_classes} classes")


def class_index_of(G: nn.Module, text: str | int | None, flag: str = "--class") -> int | None:
    """A class given as an index or as one of G's class names (`G.class_names`), checked against G."""
    if text is None:
        return None
    names = list(getattr(G, "class_names", []) or [])
    if isinstance(text, int) or str(text).lstrip("-").isdigit():
        index = int(text)
    elif text in names:
        index = names.index(text)
    else:
        known = f"its classes are {', '.join(names[:20])}" if names else "it has no class names: give an index"
        raise ValueError(f"{flag} {text!r} is not a class of this generator; {known}")
    check_class(index, G.num_classes, flag)
    return index


def draw_inputs(
    start: int,
    count: int,
    z_dim: int,
    num_classes: int,
    seed: int = 0,
    class_index: int | None = None,
    truncation: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (count, z_dim) and labels (count,) of images start .. start + count - 1 for this seed, on the CPU."""
    check_class(class_index, num_classes)  # before any work
    zs, ys = [], []
    for block in range(start // BLOCK, (start + count - 1) // BLOCK + 1 if count else start // BLOCK):
        gen = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63))
        z = sample_noise(BLOCK, z_dim, gen, truncation)
        y = sample_labels(BLOCK, num_classes, gen, class_index)
        lo, hi = max(start - block * BLOCK, 0), min(start + count - block * BLOCK, BLOCK)
        zs.append(z[lo:hi])
        ys.append(None if y is None else y[lo:hi])
    z = torch.cat(zs) if zs else torch.empty(0, z_dim)
    y = None if num_classes == 0 else (torch.cat(ys) if ys else torch.empty(0, dtype=torch.long))
    return z, y


@torch.no_grad()
def iter_generate(
    G: nn.Module,
    n: int,
    *,
    seed: int = 0,
    class_index: int | None = None,
    truncation: float | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(first index, images (b, 3, R, R) in [-1, 1] on the CPU, labels) for batches of the n images."""
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not progress, unit="img", desc="generating", leave=False) as bar:
        for start in range(0, n, batch_size):
            z, y = draw_inputs(start, min(batch_size, n - start), G.z_dim, G.num_classes, seed, class_index, truncation)
            images = G(z.to(device), None if y is None else y.to(device)).float().cpu()
            bar.update(len(images))
            yield start, images, y


def generate(G: nn.Module, n: int, **options: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images (n, 3, R, R) in [-1, 1] on the CPU, and their labels; image i depends only on (seed, i).

    options: those of `iter_generate` (seed, class_index, truncation, batch_size, device).
    """
    parts = list(iter_generate(G, n, **options))
    if not parts:
        labels = sample_labels(0, G.num_classes, class_index=options.get("class_index"))
        return torch.empty(0, 3, G.resolution, G.resolution), labels
    labels = None if parts[0][2] is None else torch.cat([y for _, _, y in parts])
    return torch.cat([images for _, images, _ in parts]), labels

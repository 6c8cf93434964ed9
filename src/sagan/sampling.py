"""Drawing images from a generator: noise (optionally truncated), class labels, batching."""

from __future__ import annotations

import torch
import torch.nn as nn


def sample_noise(n: int, z_dim: int, generator: torch.Generator | None = None, truncation: float | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, z_dim) standard normal noise; with truncation T, entries with |z| > T are redrawn (BigGAN's trick)."""
    z = torch.randn(n, z_dim, generator=generator, device=device)
    if truncation is not None:
        if truncation <= 0:
            raise ValueError(f"truncation={truncation} must be > 0 (smaller trades variety for fidelity; 1-2 is typical)")
        while (outside := z.abs() > truncation).any():
            z = torch.where(outside, torch.randn(n, z_dim, generator=generator, device=device), z)
    return z


def sample_labels(n: int, num_classes: int, generator: torch.Generator | None = None, class_index: int | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(n,) class labels: all `class_index`, or uniform over the classes; None for unconditional nets."""
    if num_classes == 0:
        if class_index is not None:
            raise ValueError("this generator is unconditional: drop --class")
        return None
    if class_index is not None:
        if not 0 <= class_index < num_classes:
            raise ValueError(f"--class {class_index} is outside [0, {num_classes}); the model has {num_classes} classes")
        return torch.full((n,), class_index, dtype=torch.long, device=device)
    return torch.randint(num_classes, (n,), generator=generator, device=device)


@torch.no_grad()
def generate(G: nn.Module, n: int, *, seed: int = 0, class_index: int | None = None, truncation: float | None = None,
             batch_size: int = 64, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images (n, 3, R, R) in [-1, 1] on the CPU, and their labels; deterministic for a seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = sample_noise(n, G.z_dim, gen, truncation)
    y = sample_labels(n, G.num_classes, gen, class_index)
    images = []
    for i in range(0, n, batch_size):
        yi = None if y is None else y[i : i + batch_size].to(device)
        images.append(G(z[i : i + batch_size].to(device), yi).float().cpu())
    return torch.cat(images) if images else torch.empty(0, 3, G.resolution, G.resolution), y

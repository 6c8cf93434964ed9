"""Walks through a generator's inputs: slerp between noise vectors, and between classes.

Row r of an interpolation starts at image 2r of `sampling.draw_inputs` for the seed and, for a
noise walk, ends at image 2r + 1; so a picture depends only on the seed and its own rows (a
4-row picture is the first 4 rows of an 8-row one). With `to_class`, the noise stays at the
row's start and the class moves: the class-conditional batch norms read a weighted sum of the
two classes' embeddings (see `layers.embed_classes`), from all of A to all of B.
"""

from __future__ import annotations

import torch
from torch import nn

from .sampling import check_class, draw_inputs


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (N, D) at fractions t (T,) -> (N, T, D).

    Gaussian noise lies near a sphere of radius sqrt(D); the straight line between two draws cuts
    through its inside, where G saw no noise, and the great circle does not. Norms are interpolated
    linearly. Nearly parallel rows take the straight line's weights (the formulas agree there).
    """
    a64, b64, t = a.double(), b.double(), t.double()[None, :, None]
    na, nb = a64.norm(dim=1, keepdim=True), b64.norm(dim=1, keepdim=True)
    ua, ub = a64 / na.clamp_min(1e-12), b64 / nb.clamp_min(1e-12)
    omega = torch.arccos((ua * ub).sum(1).clamp(-1, 1))[:, None, None]  # (N, 1, 1)
    sin = torch.sin(omega)
    near = sin < 1e-6
    safe = torch.where(near, 1.0, sin)
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(near, t, torch.sin(t * omega) / safe)
    norm = (1 - t) * na[:, None] + t * nb[:, None]
    return ((wa * ua[:, None] + wb * ub[:, None]) * norm).to(a.dtype)


def interpolation_inputs(
    z_dim: int,
    num_classes: int,
    rows: int = 4,
    steps: int = 8,
    seed: int = 0,
    class_index: int | None = None,
    to_class: int | None = None,
    truncation: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (rows * steps, z_dim) and class weights (rows * steps, num_classes) of an interpolation (row-major).

    Class weights are None for an unconditional generator.
    """
    if steps < 2 or rows < 1:
        raise ValueError(f"an interpolation needs at least 2 steps and 1 row (got steps={steps}, rows={rows})")
    check_class(to_class, num_classes, "--to-class")
    z, y = draw_inputs(0, 2 * rows, z_dim, num_classes, seed, class_index, truncation)
    t = torch.linspace(0, 1, steps)
    if to_class is None:
        noise = slerp(z[0::2], z[1::2], t).reshape(rows * steps, z_dim)
    else:  # the class moves, the noise stays
        noise = z[0::2].repeat_interleave(steps, dim=0)
    if y is None:
        return noise, None
    first = nn.functional.one_hot(y[0::2], num_classes).float()  # (rows, K)
    last = nn.functional.one_hot(torch.full((rows,), to_class), num_classes).float() if to_class is not None else first
    weights = (1 - t)[None, :, None] * first[:, None] + t[None, :, None] * last[:, None]
    return noise, weights.reshape(rows * steps, num_classes)


@torch.no_grad()
def interpolate(
    G: nn.Module,
    rows: int = 4,
    steps: int = 8,
    seed: int = 0,
    class_index: int | None = None,
    to_class: int | None = None,
    truncation: float | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """Images (rows, steps, 3, R, R) in [-1, 1] on the CPU: each row a walk from its start to its end.

    Without to_class, a row walks the noise (slerp) at the start image's class (or class_index);
    with it, a row walks from the class (class_index, or the start image's) to to_class at fixed noise.
    """
    z, y = interpolation_inputs(G.z_dim, G.num_classes, rows, steps, seed, class_index, to_class, truncation)
    images = []
    for i in range(0, len(z), batch_size):
        labels = None if y is None else y[i : i + batch_size].to(device)
        images.append(G(z[i : i + batch_size].to(device), labels).float().cpu())
    return torch.cat(images).reshape(rows, steps, *images[0].shape[1:])

"""GAN losses as pairs of functions (d_loss(real, fake), g_loss(fake)) of discriminator logits.

Each takes raw logits D(x) of shape (B,) and returns a scalar to minimise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]  (SAGAN, eq. 3; Lim & Ye 2017)."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g(fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]  (SAGAN, eq. 3)."""
    return -fake.mean()


def nonsaturating_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))] = -E[log s(D(x))] - E[log(1 - s(D(G(z))))]."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsaturating_g(fake: torch.Tensor) -> torch.Tensor:
    """L_G = E[softplus(-D(G(z)))] = -E[log s(D(G(z)))]  (Goodfellow et al. 2014, non-saturating)."""
    return F.softplus(-fake).mean()


def wasserstein_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[D(G(z))] - E[D(x)]  (Arjovsky et al. 2017; the Lipschitz bound comes from spectral norm)."""
    return fake.mean() - real.mean()


def wasserstein_g(fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake.mean()


class GANLoss(NamedTuple):
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]


LOSSES: dict[str, GANLoss] = {
    "hinge": GANLoss(hinge_d, hinge_g),
    "nonsaturating": GANLoss(nonsaturating_d, nonsaturating_g),
    "wasserstein": GANLoss(wasserstein_d, wasserstein_g),
}


def get_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]

"""Exponential moving average of the generator's weights, the copy used for sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """theta_ema <- d * theta_ema + (1 - d) * theta, with a warm-up on d.

    d = min(decay, (1 + step) / (10 + step)): the first updates follow the trained weights almost
    fully, so a short run samples from its trained generator rather than from an average that is
    mostly the random initialisation; long runs reach `decay`. Buffers (batch-norm statistics,
    spectral norm's u and v) are copied, not averaged.

    Args:
        model: the network to track (its weights are copied at construction).
        decay: the long-run decay (0.999 in BigGAN / StudioGAN).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must lie in [0, 1)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], weight)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

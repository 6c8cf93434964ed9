"""Spectral normalisation (Miyato et al. 2018) for every layer SAGAN normalises.

SAGAN applies spectral norm to all convolutions, linear layers and embeddings of both the
generator and the discriminator, attention included. We use PyTorch's own parametrization
(`torch.nn.utils.parametrizations.spectral_norm`): the weight is stored as `original`, the power
iteration vectors `_u`, `_v` are buffers (so they live in `state_dict` and are checkpointed), and
one power iteration runs per forward pass in training mode.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _torch_spectral_norm

#: Layer types whose `weight` SAGAN normalises.
NORMALISED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)


def has_spectral_norm(layer: nn.Module) -> bool:
    """True if `layer.weight` is computed by a spectral-norm parametrization."""
    return parametrize.is_parametrized(layer, "weight") and any(
        type(p).__name__ == "_SpectralNorm" for p in layer.parametrizations["weight"]
    )


def add_spectral_norm(layer: nn.Module) -> nn.Module:
    """Spectrally normalise one layer's `weight` in place (idempotent) and return it."""
    if not isinstance(layer, NORMALISED_LAYERS):
        raise TypeError(
            f"spectral norm applies to {[t.__name__ for t in NORMALISED_LAYERS]}, not {type(layer).__name__}"
        )
    if not has_spectral_norm(layer):
        _torch_spectral_norm(layer)
    return layer


def apply_spectral_norm(root: nn.Module) -> nn.Module:
    """Spectrally normalise every conv, linear and embedding below `root` (in place)."""
    for layer in list(root.modules()):
        if isinstance(layer, NORMALISED_LAYERS):
            add_spectral_norm(layer)
    return root


def bake_spectral_norm(root: nn.Module) -> nn.Module:
    """Replace every spectral-norm parametrization below root by its current normalised weight.

    For inference exports (ONNX): the graph then holds plain weights instead of the sigma
    computation. Uses the stored u, v (as eval mode does). In place; returns root.
    """
    for layer in list(root.modules()):
        if has_spectral_norm(layer):
            layer.eval()
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return root

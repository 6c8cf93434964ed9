"""sagan: the Self-Attention GAN (Zhang et al. 2018) for PyTorch.

Names are imported on first use, so `sagan --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_WHERE = {
    "SelfAttention1d": "attention",
    "SelfAttention2d": "attention",
    "SelfAttention3d": "attention",
    "set_fused_attention": "attention",
    "use_fused_attention": "attention",
    "Generator": "models",
    "Discriminator": "models",
    "PRESETS": "models",
    "build": "models",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "train": "training",
    "TrainResult": "training",
    "add_self_attention": "insert",
    "generate": "sampling",
    "interpolate": "interpolation",
    "load_source": "source",
}
__all__ = [
    "PRESETS",
    "Discriminator",
    "Generator",
    "ModelConfig",
    "SelfAttention1d",
    "SelfAttention2d",
    "SelfAttention3d",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "add_self_attention",
    "build",
    "generate",
    "interpolate",
    "load_source",
    "set_fused_attention",
    "train",
    "use_fused_attention",
]

if TYPE_CHECKING:
    from .attention import SelfAttention1d, SelfAttention2d, SelfAttention3d, set_fused_attention, use_fused_attention
    from .config import ModelConfig, TrainConfig
    from .insert import add_self_attention
    from .interpolation import interpolate
    from .models import PRESETS, Discriminator, Generator, build
    from .sampling import generate
    from .source import load_source
    from .training import TrainResult, train


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sagan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

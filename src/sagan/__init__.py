"""sagan: the Self-Attention GAN (Zhang et al. 2018) for PyTorch."""

from .attention import SelfAttention1d, SelfAttention2d, SelfAttention3d
from .models import PRESETS, Discriminator, Generator

__version__ = "0.1.0"

__all__ = ["SelfAttention1d", "SelfAttention2d", "SelfAttention3d", "Generator", "Discriminator", "PRESETS", "__version__"]

"""The SAGAN generator and discriminator, and the presets for 32, 64, 128 and 256 pixel images.

Both nets are BigGAN-style residual networks with self-attention at chosen feature resolutions,
spectral norm on every conv, linear and embedding (attention included), and orthogonal init.
Class-conditional nets use conditional batch norm in G and the projection discriminator
(Miyato & Koyama 2018) in D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention2d
from .config import ModelConfig
from .hub import HubMixin
from .layers import DownBlock, UpBlock, embed_classes
from .spectral import apply_spectral_norm


@dataclass(frozen=True)
class Preset:
    """Widths (multiples of ch) and attention placement of one image resolution.

    g_widths[0] is the 4x4 map from the linear layer; each further entry is one UpBlock's output.
    d_widths are the DownBlocks' outputs; d_downsample says which of them halve the resolution.
    Attention is placed after the block whose output has the named resolution.
    """

    g_widths: tuple[int, ...]
    d_widths: tuple[int, ...]
    d_downsample: tuple[bool, ...]
    g_attention: tuple[int, ...]
    d_attention: tuple[int, ...]


PRESETS: dict[int, Preset] = {
    # StudioGAN's CIFAR-10 SAGAN: G 256 wide, D 128 wide, attention on 16x16 maps in both.
    32: Preset((4, 4, 4, 4), (2, 2, 2, 2), (True, True, False, False), (16,), (16,)),
    # The ImageNet pattern below, one block shorter, attention at 32x32.
    64: Preset((16, 16, 8, 4, 2), (1, 2, 4, 8, 16), (True, True, True, True, False), (32,), (32,)),
    # The official SAGAN ImageNet model: G 1024-1024-512-256-128-64, attention after the 64x64 block;
    # D 64-128-256-512-1024-1024, attention after the 32x32 block.
    128: Preset((16, 16, 8, 4, 2, 1), (1, 2, 4, 8, 16, 16), (True, True, True, True, True, False), (64,), (32,)),
    # One more block each, attention at 64x64.
    256: Preset((16, 16, 8, 8, 4, 2, 1), (1, 2, 4, 8, 8, 16, 16), (True,) * 6 + (False,), (64,), (64,)),
}


def get_preset(resolution: int) -> Preset:
    if resolution not in PRESETS:
        raise ValueError(f"resolution={resolution!r} has no preset; choose one of {sorted(PRESETS)}")
    return PRESETS[resolution]


def block_resolutions(resolution: int) -> tuple[list[int], list[int]]:
    """The output resolution of each G block and of each D block of a preset: where attention can sit."""
    preset = get_preset(resolution)
    g = [4 * 2 ** (i + 1) for i in range(len(preset.g_widths) - 1)]
    d, r = [], resolution
    for down in preset.d_downsample:
        r = r // 2 if down else r
        d.append(r)
    return g, d


def _check_attention(attention: tuple[int, ...], available: list[int], net: str) -> tuple[int, ...]:
    attention = tuple(int(r) for r in attention)
    bad = [r for r in attention if r not in available]
    if bad:
        raise ValueError(f"{net} attention at {bad}: {net} has feature maps at {available} only; pick from those")
    return attention


def orthogonal_init_(net: nn.Module) -> None:
    """Orthogonal weights and zero biases for every conv, linear and embedding (as BigGAN / StudioGAN)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) and not m.weight.is_meta:  # meta: shapes only
            nn.init.orthogonal_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def _check_labels(y: torch.Tensor | None, num_classes: int, batch: int, net: str) -> None:
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"{net} is unconditional (num_classes=0) but class labels y were given; drop y")
        return
    if y is None:
        raise ValueError(f"{net} is conditional (num_classes={num_classes}): pass class labels y of shape ({batch},)")
    if net == "Generator" and y.is_floating_point() and y.shape == (batch, num_classes):
        return  # class weights: a point between classes
    if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32):
        weights = f" or ({batch}, {num_classes}) float class weights" if net == "Generator" else ""
        raise ValueError(
            f"{net} expects y as ({batch},) integer class indices{weights}, got {tuple(y.shape)} {y.dtype}"
        )
    # The range check reads values: on a GPU that would stall every forward, and under torch.compile
    # break the graph, so it runs for CPU tensors only (the data pipeline hands out valid labels).
    if (
        batch
        and y.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and (int(y.min()) < 0 or int(y.max()) >= num_classes)
    ):
        raise ValueError(
            f"{net} got class indices in [{int(y.min())}, {int(y.max())}]; they must lie in [0, {num_classes})"
        )


class Generator(nn.Module, HubMixin):
    """SAGAN generator: z (and a class) -> image in [-1, 1].

        z -> linear -> 4x4 map -> UpBlocks (self-attention after the blocks at `attention`)
          -> BN -> ReLU -> 3x3 conv -> tanh

    Args:
        resolution: output size R (32, 64, 128 or 256; picks the preset).
        z_dim: length of z (128 in the paper).
        num_classes: 0 for unconditional; otherwise every BN in the UpBlocks is class-conditional
            (per-class gain and bias embeddings, as SAGAN).
        ch: base width; block widths are multiples of it (the paper's 128 model: 64).
        attention: feature resolutions after which a self-attention block sits (preset if None).
        shared_embedding: BigGAN's form: one shared class embedding of size embed_dim, mapped to
            each BN's gain and bias by linear layers (conditional nets only).
        hierarchical_z: BigGAN's form: split z into one chunk per block (plus one for the 4x4 map)
            and condition each block's BNs on [shared embedding, its chunk]; implies shared_embedding.
        embed_dim: size of the shared class embedding.
        fused_attention: the attention blocks' path (None: `sagan.attention.use_fused_attention()`).

    `Generator.from_pretrained(FOLDER_OR_HUB_ID)`, `save_pretrained(FOLDER)` and `push_to_hub(REPO_ID)`
    share a trained generator (see `sagan.hub`).

    Shape:
        - z: (B, z_dim); y: (B,) class indices when conditional, or (B, num_classes) float class
          weights (a point between classes: one-hot rows give the classes themselves).
        - Output: (B, 3, R, R).

    Examples::

        >>> G = Generator(32, num_classes=10, ch=16)
        >>> G(torch.randn(4, 128), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(
        self,
        resolution: int = 32,
        z_dim: int = 128,
        num_classes: int = 0,
        ch: int = 64,
        attention: tuple[int, ...] | None = None,
        shared_embedding: bool = False,
        hierarchical_z: bool = False,
        embed_dim: int = 128,
        fused_attention: bool | None = None,
    ) -> None:
        super().__init__()
        preset = get_preset(resolution)
        widths = [ch * m for m in preset.g_widths]
        resolutions = block_resolutions(resolution)[0]
        attention = _check_attention(preset.g_attention if attention is None else attention, resolutions, "Generator")
        shared_embedding = shared_embedding or hierarchical_z
        if shared_embedding and not num_classes:
            raise ValueError("shared_embedding / hierarchical_z need a conditional generator (num_classes > 0)")
        num_chunks = len(widths)  # one for the 4x4 map, one per block
        if hierarchical_z and z_dim % num_chunks:
            raise ValueError(
                f"hierarchical_z splits z into {num_chunks} chunks: z_dim={z_dim} must be a multiple of {num_chunks}"
            )
        self.config = {
            "resolution": resolution,
            "z_dim": z_dim,
            "num_classes": num_classes,
            "ch": ch,
            "attention": list(attention),
            "shared_embedding": shared_embedding,
            "hierarchical_z": hierarchical_z,
            "embed_dim": embed_dim,
        }
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        self.class_names: list[str] = []  # the training data's, where known (kept by export and the Hub)
        self.chunk = z_dim // num_chunks if hierarchical_z else 0
        self.shared = nn.Embedding(num_classes, embed_dim) if shared_embedding else None
        condition_dim = (embed_dim + self.chunk) if shared_embedding else 0
        block_classes = 0 if shared_embedding else num_classes
        self.linear = nn.Linear(z_dim - self.chunk * (num_chunks - 1), widths[0] * 4 * 4)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        for i, (c_in, c_out, res) in enumerate(zip(widths[:-1], widths[1:], resolutions)):
            self.blocks.append(UpBlock(c_in, c_out, block_classes, condition_dim))
            if res in attention:
                self.attention[str(i)] = SelfAttention2d(c_out, fused=fused_attention)
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], 3, 3, padding=1)
        orthogonal_init_(self)
        apply_spectral_norm(self)

    def attention_blocks(self) -> dict[str, SelfAttention2d]:
        """The self-attention blocks by name ('G.attn16' = after the block that outputs 16x16)."""
        resolutions = block_resolutions(self.resolution)[0]
        return {f"G.attn{resolutions[int(i)]}": m for i, m in self.attention.items()}

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"Generator expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        _check_labels(y, self.num_classes, z.shape[0], "Generator")
        chunks: list[torch.Tensor | None] = [None] * len(self.blocks)
        if self.chunk:
            z, *rest = torch.split(z, [self.z_dim - self.chunk * len(self.blocks)] + [self.chunk] * len(self.blocks), 1)
            chunks = list(rest)
        embedding = embed_classes(self.shared, y) if self.shared is not None else y  # what the BNs are conditioned on
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            condition = embedding if chunks[i] is None else torch.cat([embedding, chunks[i]], 1)
            h = block(h, condition)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))


class Discriminator(nn.Module):
    """SAGAN discriminator with projection: image (and class) -> one logit.

        x -> DownBlocks (self-attention after the blocks at `attention`) -> ReLU -> sum over H, W = h
        D(x, y) = w^T h + b + <embed(y), h>

    Args:
        resolution: input size R (32, 64, 128 or 256; picks the preset).
        num_classes: 0 for unconditional; otherwise adds the projection term (Miyato & Koyama 2018).
        ch: base width (the paper's 128 model: 64).
        attention: feature resolutions after which a self-attention block sits (preset if None).
        fused_attention: the attention blocks' path (None: `sagan.attention.use_fused_attention()`).

    Shape:
        - x: (B, 3, R, R); y: (B,) class indices when conditional.
        - Output: (B,) logits.

    Examples::

        >>> D = Discriminator(32, num_classes=10, ch=16)
        >>> D(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4])
    """

    def __init__(
        self,
        resolution: int = 32,
        num_classes: int = 0,
        ch: int = 64,
        attention: tuple[int, ...] | None = None,
        fused_attention: bool | None = None,
    ) -> None:
        super().__init__()
        preset = get_preset(resolution)
        widths = [ch * m for m in preset.d_widths]
        resolutions = block_resolutions(resolution)[1]
        available = sorted(set(resolutions), reverse=True)
        attention = _check_attention(preset.d_attention if attention is None else attention, available, "Discriminator")
        self.config = {"resolution": resolution, "num_classes": num_classes, "ch": ch, "attention": list(attention)}
        self.resolution, self.num_classes = resolution, num_classes
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        self._attention_names: dict[str, str] = {}
        placed: set[int] = set()
        for i, (c_in, c_out, down, res) in enumerate(zip([3] + widths[:-1], widths, preset.d_downsample, resolutions)):
            self.blocks.append(DownBlock(c_in, c_out, downsample=down, preactivation=i > 0))
            if res in attention and res not in placed:  # after the first block that reaches res
                placed.add(res)
                self.attention[str(i)] = SelfAttention2d(c_out, fused=fused_attention)
                self._attention_names[str(i)] = f"D.attn{res}"
        self.linear = nn.Linear(widths[-1], 1)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None
        orthogonal_init_(self)
        apply_spectral_norm(self)

    def attention_blocks(self) -> dict[str, SelfAttention2d]:
        """The self-attention blocks by name ('D.attn16' = after the block that outputs 16x16)."""
        return {self._attention_names[i]: m for i, m in self.attention.items()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h: (B, 3, R, R) -> (B, C) pooled features before the output layer."""
        for i, block in enumerate(self.blocks):
            x = block(x)
            if str(i) in self.attention:
                x = self.attention[str(i)](x)
        return F.relu(x).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r = self.resolution
        if x.dim() != 4 or x.shape[1:] != (3, r, r):
            raise ValueError(f"Discriminator expects images of shape (B, 3, {r}, {r}), got {tuple(x.shape)}")
        _check_labels(y, self.num_classes, x.shape[0], "Discriminator")
        h = self.features(x)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters (spectral norm's u, v vectors are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def build(config: ModelConfig, fused_attention: bool | None = None) -> tuple[Generator, Discriminator]:
    """The generator and discriminator that a ModelConfig describes: the one way the nets are built."""
    return build_generator(config, fused_attention), build_discriminator(config, fused_attention)


def build_generator(config: ModelConfig, fused_attention: bool | None = None) -> Generator:
    """The generator alone (for sampling from a checkpoint or an export)."""
    return Generator(**config.generator_kwargs(), fused_attention=fused_attention)


def build_discriminator(config: ModelConfig, fused_attention: bool | None = None) -> Discriminator:
    """The discriminator alone (for its attention maps)."""
    return Discriminator(**config.discriminator_kwargs(), fused_attention=fused_attention)


def size_shapes(config: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """The shapes of the tensors that grow with the widths, the classes and z, found without building a net.

    A checkpoint's tensors are checked against these before its nets are built, so a file whose config
    claims more than its tensors hold is refused before anything of that size is allocated.
    """
    preset, weight = get_preset(config.resolution), "parametrizations.weight.original"
    g_first, g_last = config.ch * preset.g_widths[0], config.ch * preset.g_widths[-1]
    g = {f"linear.{weight}": (16 * g_first, config.z_dim), f"out_conv.{weight}": (3, g_last, 3, 3)}
    d: dict[str, tuple[int, ...]] = {}
    if config.ch_d is not None:
        d[f"linear.{weight}"] = (1, config.ch_d * preset.d_widths[-1])
    if config.num_classes:
        g[f"blocks.0.norm1.norm.gain.{weight}"] = (config.num_classes, g_first)
        if config.ch_d is not None:
            d[f"embed.{weight}"] = (config.num_classes, config.ch_d * preset.d_widths[-1])
    return {"G": g, "D": d}

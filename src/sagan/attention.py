"""The SAGAN self-attention block (Zhang, Goodfellow, Metaxas, Odena 2018, section 3).

For a feature map x with C channels at N positions (x_i is the C-vector at position i):

    f(x) = W_f x,  g(x) = W_g x,  h(x) = W_h x      (1x1 convs, C -> C/8)
    v(x) = W_v x                                    (1x1 conv,  C/8 -> C)
    s_ij      = f(x_i)^T g(x_j)                     (no 1/sqrt(d) scaling)
    beta_{j,i} = exp(s_ij) / sum_i exp(s_ij)        (softmax over the input positions i)
    o_j       = v( sum_i beta_{j,i} h(x_i) )
    y_j       = gamma * o_j + x_j                   (gamma: learnable scalar, starts at 0)

So output position j *queries* with g(x_j) and reads the *keys* f(x_i) and *values* h(x_i).
(The paper's text prints g(x_i) inside s_ij: a typo; the official code uses g(x_j).)

The training path hands q, k, v to `F.scaled_dot_product_attention` in the layout its fused
kernels accept (last dimension contiguous), so the N x N matrix beta is never stored: memory grows
linearly in N. `attention_map` and `fused = False` use the explicit bmm + softmax of the formula,
which the tests compare the fused path against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spectral import add_spectral_norm

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_SHAPE_NAME = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
_FUSED_DEFAULT = True


def use_fused_attention() -> bool:
    """The path that blocks built with `fused=None` take: the fused kernel unless switched off."""
    return _FUSED_DEFAULT


def set_fused_attention(enable: bool) -> None:
    """Switch the default of blocks built from now on (tests and benchmarks compare the two paths).

    Blocks already built keep their path; pass `fused=` to one block to choose for it alone.
    """
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = bool(enable)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v, written out: the slow path that builds the (N, N') matrix.

    Shapes: q (B, N, d), k (B, N', d), v (B, N', d_v) -> (B, N, d_v).
    """
    return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)


class _SelfAttentionNd(nn.Module):
    """One implementation of the block for 1, 2 and 3 spatial dimensions (see module docstring)."""

    spatial_dims: int = 2

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        value_reduction: int | None = None,
        pool: int = 1,
        bias: bool = True,
        spectral_norm: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        channels = _positive_int("channels", channels)
        reduction = _positive_int("reduction", reduction)
        value_reduction = reduction if value_reduction is None else _positive_int("value_reduction", value_reduction)
        pool = _positive_int("pool", pool)
        for name, r in (("reduction", reduction), ("value_reduction", value_reduction)):
            if channels // r == 0:
                raise ValueError(
                    f"channels={channels} is smaller than {name}={r}; use at least {r} channels or a smaller {name}"
                )
        self.channels = channels
        self.reduction = reduction
        self.value_reduction = value_reduction
        self.pool = pool
        self.key_channels = channels // reduction  # C-bar
        self.value_channels = channels // value_reduction
        conv = _CONV[self.spatial_dims]
        self.query = conv(channels, self.key_channels, 1, bias=bias)  # g
        self.key = conv(channels, self.key_channels, 1, bias=bias)  # f
        self.value = conv(channels, self.value_channels, 1, bias=bias)  # h
        self.out = conv(self.value_channels, channels, 1, bias=bias)  # v
        self.gamma = nn.Parameter(torch.zeros(1))
        #: True: fused SDPA kernel, linear memory. False: explicit bmm + softmax (reference).
        self.fused = use_fused_attention() if fused is None else bool(fused)
        if spectral_norm:
            for layer in (self.query, self.key, self.value, self.out):
                add_spectral_norm(layer)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, value_reduction={self.value_reduction}, "
            f"pool={self.pool}, fused={self.fused}"
        )

    # -- input checks ---------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{name} expects a {_SHAPE_NAME[self.spatial_dims]} tensor of rank {self.spatial_dims + 2}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{name} was built for channels={self.channels} but the input has {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); build it with channels={x.shape[1]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point input, got dtype {x.dtype}; convert it with x.float()")
        dtype = self.gamma.dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{name} has {dtype} parameters but the input is {x.dtype}; "
                f"call .to({x.dtype}) on the module, or run under torch.autocast"
            )

    # -- projections ----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q = g(x), k = f(x), v = h(x) as (B, N, C-bar) tensors whose last dimension is contiguous.

        The three 1x1 convs run as one batched GEMM on a (B, N, C) view of x (a view for both
        channels-first and channels-last input), so q, k, v come out as slices of one
        (B, N, 2 C-bar + C_v) tensor: no copies, and the layout SDPA's fused kernels want.
        With pool > 1, k and v are max-pooled over pool^d windows (the official TF code / BigGAN variant).
        """
        batch, spatial = x.shape[0], x.shape[2:]
        tokens = x.movedim(1, -1).flatten(1, -2)  # (B, N, C), a view
        layers = (self.query, self.key, self.value)
        weight = torch.cat([layer.weight.flatten(1) for layer in layers]).t()  # (C, 2 C-bar + C_v)
        if self.query.bias is not None:
            bias = torch.cat([layer.bias for layer in layers])
            qkv = torch.baddbmm(bias, tokens, weight.expand(batch, *weight.shape))
        else:
            qkv = torch.bmm(tokens, weight.expand(batch, *weight.shape))  # (B, N, 2 C-bar + C_v)
        d = self.key_channels
        q, kv = qkv[..., :d], qkv[..., d:]
        if self.pool > 1:
            kv = kv.unflatten(1, spatial).movedim(-1, 1)  # (B, C_kv, *spatial), channels-last strides
            kv = _MAX_POOL[self.spatial_dims](kv, self.pool, self.pool, ceil_mode=True)
            kv = kv.movedim(1, -1).flatten(1, -2).contiguous()  # (B, N', C_kv)
        return q, kv[..., :d], kv[..., d:]

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y = x + gamma * v(o) = x + (gamma W_v) o + gamma b_v, with o (B, N, C_v).

        One batched GEMM that adds onto x, with gamma folded into the small (C, C_v) weight: no
        full-size v(o) or gamma * v(o) is stored for backward. The result has x's shape and layout.
        """
        weight = self.gamma * self.out.weight.flatten(1)  # (C, C_v)
        batch = o.shape[0]
        if x.movedim(1, -1).is_contiguous():  # channels-last input: work in (B, N, C)
            y = torch.baddbmm(x.movedim(1, -1).flatten(1, -2), o, weight.t().expand(batch, -1, -1))
            y = y.unflatten(1, x.shape[2:]).movedim(-1, 1)
        else:  # channels-first input: (B, C, N) directly, no transpose copy
            y = torch.baddbmm(x.flatten(2), weight.expand(batch, -1, -1), o.transpose(1, 2)).unflatten(2, x.shape[2:])
        if self.out.bias is not None:  # in place: baddbmm's backward does not need its output
            y.add_((self.gamma * self.out.bias).view(-1, *([1] * (x.dim() - 2))))
        return y

    # -- public API -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.numel() == 0:  # empty batch or empty map: nothing to attend over
            return x + self.gamma * torch.zeros_like(x)
        q, k, v = self._project(x)
        if self.fused:
            o = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)
        else:
            o = attend_reference(q, k, v)
        return self._output(o, x)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """beta as a (B, N, N') tensor: `[b, j, i]` is the share of input position i in output position j.

        Rows sum to 1. N' = N / pool^d. This materialises the N x N' matrix: for pictures, not training.
        """
        self._check_input(x)
        q, k, _ = self._project(x)
        return torch.softmax(torch.bmm(q.float(), k.float().transpose(1, 2)), dim=-1)


class SelfAttention2d(_SelfAttentionNd):
    r"""SAGAN self-attention over the H x W positions of a feature map.

    .. math::
        s_{ij} = f(x_i)^\top g(x_j),\quad \beta_{j,i} = \mathrm{softmax}_i(s_{ij}),\quad
        y_j = \gamma\, v\Big(\sum_i \beta_{j,i}\, h(x_i)\Big) + x_j

    Children: ``query`` is g, ``key`` is f, ``value`` is h, ``out`` is v (all ``nn.Conv2d``, kernel 1);
    ``gamma`` is a ``(1,)`` parameter that starts at 0, so a fresh block is the identity.
    Never stores the N x N matrix on the forward/backward path (fused SDPA); ``attention_map`` does.

    Args:
        channels: C, channels of the input.
        reduction: C-bar = C // reduction channels for f and g (the paper: 8).
        value_reduction: h has C // value_reduction channels; None means ``reduction`` (the paper's
            text). The official TF code and BigGAN use 2.
        pool: max-pool f(x) and h(x) over pool x pool windows, so N queries attend to N / pool^2
            positions (official TF code / BigGAN: 2). Maps not divisible by pool are padded
            (``ceil_mode``): every position is seen.
        bias: 1x1 convs with bias (paper's text: True; official TF code: False).
        spectral_norm: wrap the four convs in spectral norm, as SAGAN does in G and D.
        fused: True for the fused SDPA kernel (linear memory), False for the explicit bmm + softmax
            reference path (N x N memory); None takes :func:`use_fused_attention` at construction.

    The official TF / BigGAN variant is ``SelfAttention2d(C, value_reduction=2, pool=2, bias=False)``.

    Shape:
        - Input: (B, C, H, W), any B, H, W; channels-last input gives channels-last output.
        - Output: (B, C, H, W).

    Examples::

        >>> attn = SelfAttention2d(64)
        >>> x = torch.randn(2, 64, 16, 24)
        >>> attn(x).shape
        torch.Size([2, 64, 16, 24])
        >>> attn.attention_map(x).shape  # (B, N, N)
        torch.Size([2, 384, 384])
    """

    spatial_dims = 2


class SelfAttention1d(_SelfAttentionNd):
    """SAGAN self-attention over the L positions of a sequence: (B, C, L) -> (B, C, L).

    Same arguments, children and math as :class:`SelfAttention2d` (convs are ``nn.Conv1d``);
    ``pool`` pools keys and values over windows of ``pool`` steps.

    Examples::

        >>> SelfAttention1d(32)(torch.randn(4, 32, 100)).shape
        torch.Size([4, 32, 100])
    """

    spatial_dims = 1


class SelfAttention3d(_SelfAttentionNd):
    """SAGAN self-attention over the D x H x W positions of a volume or video: (B, C, D, H, W).

    Same arguments, children and math as :class:`SelfAttention2d` (convs are ``nn.Conv3d``);
    ``pool`` pools keys and values over pool^3 windows.

    Examples::

        >>> SelfAttention3d(16)(torch.randn(1, 16, 4, 8, 8)).shape
        torch.Size([1, 16, 4, 8, 8])
    """

    spatial_dims = 3

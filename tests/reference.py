"""Slow, obviously-correct float64 implementations that the fast paths are tested against.

Written from the paper's formulas with einsum, sharing no code with `sagan` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def effective_weight(conv: torch.nn.Module, params: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """W as the layer uses it: W_orig / sigma under spectral norm, sigma = u^T W_orig v (stored u, v)."""
    if f"{prefix}.weight" in params:
        w = params[f"{prefix}.weight"]
    else:
        w = params[f"{prefix}.parametrizations.weight.original"]
        sn = conv.parametrizations.weight[0]
        u, v = sn._u.double(), sn._v.double()
        w = w / torch.dot(u, w.flatten(1) @ v)
    return w.flatten(1)  # (out, in) for a 1x1 conv


def self_attention(
    x: torch.Tensor, module: torch.nn.Module, params: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """y and beta of SAGAN self-attention, for x of shape (B, C, *spatial), in float64.

    params: float64 leaf tensors named as in module.named_parameters() (so gradients can be compared).
    Returns y (B, C, *spatial) and beta (B, N, N') with beta[b, j, i] = beta_{j,i}.
    """
    b, c, *spatial = x.shape
    xs = x.reshape(b, c, -1)  # (B, C, N)

    def conv(name: str, inp: torch.Tensor) -> torch.Tensor:
        layer = getattr(module, name)
        w = effective_weight(layer, params, name)
        out = torch.einsum("oc,bcn->bon", w, inp)
        bias = params.get(f"{name}.bias")
        return out if bias is None else out + bias[None, :, None]

    f, g, h = conv("key", xs), conv("query", xs), conv("value", xs)
    if module.pool > 1:
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(spatial) - 1]

        def pooled(t: torch.Tensor) -> torch.Tensor:
            return pool(t.reshape(b, -1, *spatial), module.pool, module.pool, ceil_mode=True).reshape(b, t.shape[1], -1)

        f, h = pooled(f), pooled(h)
    s = torch.einsum("bci,bcj->bij", f, g)  # s[b, i, j] = f(x_i)^T g(x_j)
    beta = torch.softmax(s, dim=1)  # normalised over the input positions i
    o = torch.einsum("bij,bci->bcj", beta, h)  # o_j = sum_i beta_{j,i} h(x_i)
    o = conv("out", o)  # v(.)
    y = params["gamma"] * o + xs
    return y.reshape(x.shape), beta.transpose(1, 2)

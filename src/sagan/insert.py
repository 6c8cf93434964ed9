"""`add_self_attention`: a SAGAN block after named submodules of any network, without editing its code.

    model = torchvision.models.resnet18()
    add_self_attention(model, after=["layer2", "layer3"])   # gamma = 0: outputs unchanged at insertion

Each block becomes a child named `self_attention` of the module it follows, so the network's
own state_dict keys stay as they were and the new ones read `<name>.self_attention.*`
(`layer2.self_attention.query.weight`, ..., `layer2.self_attention.gamma`). A forward hook
applies the block to that module's output; an `nn.Sequential` runs its new last child itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attention import SelfAttention1d, SelfAttention2d, SelfAttention3d

CHILD = "self_attention"
_BLOCKS = {3: SelfAttention1d, 4: SelfAttention2d, 5: SelfAttention3d}
_PROBE_SIZE = {1: (64,), 2: (32, 32), 3: (8, 16, 16)}  # spatial sizes of the default probe input


def _attend_after(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the block that sits in `module` applied to its output (a function, so models stay picklable)."""
    return getattr(module, CHILD)(output)


def _default_probe(model: nn.Module) -> torch.Tensor:
    """A zero input shaped for the model's first convolution: (1, C_in, 32, 32) for a Conv2d, and so on."""
    for layer in model.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = len(layer.kernel_size)
            return torch.zeros(1, layer.in_channels, *_PROBE_SIZE[dims], device=layer.weight.device)
    raise ValueError("no convolution found to shape a probe input; pass example_input=(a batch the model accepts)")


def _output_shapes(model: nn.Module, names: list[str], example_input: Any) -> dict[str, tuple[int, ...]]:
    """The output shape of each named module on one forward pass of the probe input."""
    shapes: dict[str, Any] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: the output is left as it is
            shapes.setdefault(name, tuple(output.shape) if torch.is_tensor(output) else type(output))

        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    was_training = model.training
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model.eval()(*args)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _checked_names(model: nn.Module, names: list[str]) -> list[str]:
    """The names, each an existing submodule without a block yet, none twice; else a one-line ValueError."""
    known = [name for name, _ in model.named_modules() if name]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see model.named_modules()"
            raise ValueError(f"add_self_attention: {type(model).__name__} has no submodule {name!r}{hint}")
        if hasattr(model.get_submodule(name), CHILD):
            raise ValueError(f"add_self_attention: {name!r} already has a self-attention block")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"add_self_attention: {repeated} named more than once; give each submodule once")
    return names


def _shapes(model: nn.Module, names: list[str], channels: Any, spatial_dims: int, example_input: Any) -> dict[str, Any]:
    """Each named module's output shape: from `channels` and `spatial_dims` if given, else from a probe pass."""
    if channels is None:
        return _output_shapes(model, names, _default_probe(model) if example_input is None else example_input)
    counts = [channels] * len(names) if isinstance(channels, int) else list(channels)
    if len(counts) != len(names):
        raise ValueError(f"add_self_attention: {len(counts)} channel counts for {len(names)} names")
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"add_self_attention: spatial_dims={spatial_dims!r} must be 1, 2 or 3")
    return {name: (1, count) + (1,) * spatial_dims for name, count in zip(names, counts)}


def add_self_attention(
    model: nn.Module,
    after: str | Sequence[str],
    *,
    channels: int | Sequence[int] | None = None,
    spatial_dims: int = 2,
    example_input: Any = None,
    **block_kwargs: Any,
) -> nn.Module:
    """Put a SAGAN self-attention block after each named submodule of `model` (in place); returns `model`.

    Args:
        model: any nn.Module (a torchvision ResNet, a U-Net, sagan's own nets).
        after: names as in `model.named_modules()` ("layer2", "down.1", ...).
        channels: the channel count of each named output; found by a probe forward pass if None.
        spatial_dims: with `channels` given: 1, 2 or 3 (the probe finds it otherwise).
        example_input: the probe's input (a tensor, or a tuple of arguments); default: zeros shaped
            for the model's first convolution, (1, C_in, 32, 32) for a Conv2d.
        **block_kwargs: passed to the blocks (reduction, value_reduction, pool, bias, spectral_norm, fused).

    A 3-, 4- or 5-dimensional output (B, C, ...) gets a SelfAttention1d, 2d or 3d. Every block starts
    with gamma = 0, so the model computes exactly what it did before, and learns how much to attend.

    Raises:
        ValueError: an unknown name (with the closest names), a name given twice, a module that
            already has a block, an output that is not a feature map, or a module the probe never ran.

    Examples::

        >>> import torchvision
        >>> net = add_self_attention(torchvision.models.resnet18(), after=["layer2"])
        >>> net.layer2.self_attention
        SelfAttention2d(channels=128, reduction=8, value_reduction=8, pool=1, fused=True)
    """
    names = _checked_names(model, [after] if isinstance(after, str) else list(after))
    shapes = _shapes(model, names, channels, spatial_dims, example_input)
    for name in names:
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(
                f"add_self_attention: {name!r} did not run when the model was probed; name a module "
                f"that the forward pass calls, or pass channels="
            )
        if not isinstance(shape, tuple) or len(shape) not in _BLOCKS:
            got = f"shape {shape}" if isinstance(shape, tuple) else f"a {getattr(shape, '__name__', shape)}"
            raise ValueError(
                f"add_self_attention: {name!r} outputs {got}, not a feature map (B, C, L), (B, C, H, W) "
                f"or (B, C, D, H, W); name a convolutional stage"
            )
    for name in names:
        target = model.get_submodule(name)
        reference = next(target.parameters(), None)
        reference = next(model.parameters(), None) if reference is None else reference
        block = _BLOCKS[len(shapes[name])](shapes[name][1], **block_kwargs)
        if reference is not None:
            block = block.to(device=reference.device, dtype=reference.dtype)
        target.add_module(CHILD, block)
        if not isinstance(target, nn.Sequential):  # a Sequential runs its new last child by itself
            target.register_forward_hook(_attend_after)
    return model

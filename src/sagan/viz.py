"""Pictures: image grids (torchvision), attention-map overlays, training curves (matplotlib)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from .files import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-1, 1] -> uint8 in [0, 255]."""
    return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG, atomically."""
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile (B, 3, H, W) images in [-1, 1] into one uint8 (3, H', W') picture, nrow a row (square by default)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(to_uint8(images), nrow=nrow, padding=padding, pad_value=255)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> None:
    """`grid` of (B, 3, H, W) images in [-1, 1], as one PNG."""
    save_png(grid(images, nrow, padding), path)


def interpolation_grid(images: torch.Tensor, padding: int = 2) -> torch.Tensor:
    """(rows, steps, 3, H, W) in [-1, 1] -> one uint8 (3, H', W') picture, a row per walk."""
    return grid(images.flatten(0, 1), nrow=images.shape[1], padding=padding)


def save_gif(images: torch.Tensor, path: str | Path, frame_ms: int = 120) -> None:
    """(rows, steps, 3, H, W) in [-1, 1] as an animated GIF, atomically: frame t shows every row at step t.

    The walk plays forwards then backwards, so the loop has no jump.
    """
    frames = [grid(images[:, t]) for t in range(images.shape[1])]
    frames += frames[-2:0:-1]
    pictures = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))


# -- attention maps ------------------------------------------------------------------------------
#: Marker colours for query points (RGB), cycled.
POINT_COLOURS = [(0, 255, 255), (255, 64, 255), (255, 255, 0), (64, 255, 64), (255, 128, 0), (128, 128, 255)]


def default_points(resolution: int) -> list[tuple[int, int]]:
    """Four query points spread over the image: the quarter points of both diagonals."""
    a, b = resolution // 4, (3 * resolution) // 4
    return [(a, a), (b, a), (a, b), (b, b)]


def query_rows(points: list[tuple[int, int]], resolution: int, map_size: tuple[int, int]) -> list[int]:
    """Row j of beta for each image point (x, y): the feature-map position that covers it."""
    h, w = map_size
    rows = []
    for x, y in points:
        if not (0 <= x < resolution and 0 <= y < resolution):
            raise ValueError(
                f"query point ({x},{y}) is outside the {resolution}x{resolution} image; use 0..{resolution - 1}"
            )
        rows.append((y * h // resolution) * w + (x * w // resolution))
    return rows


def attention_figure(
    image: torch.Tensor,
    beta: torch.Tensor,
    map_size: tuple[int, int],
    keys_size: tuple[int, int],
    points: list[tuple[int, int]],
    panel: int = 192,
) -> Image.Image:
    """The paper's picture: the image with query points marked, then one heat map per point.

    image: (3, R, R) in [-1, 1]; beta: (N, N') attention of one image, beta[j, i]; map_size: the
    query map (h, w) with N = h * w; keys_size: the key map (h', w') with N' = h' * w'.
    """
    import matplotlib

    resolution = image.shape[-1]
    colormap = matplotlib.colormaps["inferno"]
    base = Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).resize((panel, panel), Image.NEAREST)
    marked = base.copy()
    draw = ImageDraw.Draw(marked)
    scale = panel / resolution
    panels = []
    for k, (row, (x, y)) in enumerate(zip(query_rows(points, resolution, map_size), points)):
        colour = POINT_COLOURS[k % len(POINT_COLOURS)]
        cx, cy, r = (x + 0.5) * scale, (y + 0.5) * scale, max(3, panel // 40)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        heat = beta[row].reshape(1, 1, *keys_size).float()
        heat = torch.nn.functional.interpolate(heat, size=(panel, panel), mode="bilinear", align_corners=False)[0, 0]
        heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
        coloured = Image.fromarray((colormap(heat.numpy())[..., :3] * 255).astype("uint8"))
        overlay = Image.blend(base.convert("L").convert("RGB"), coloured, 0.65)
        ImageDraw.Draw(overlay).ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        panels.append(overlay)
    gap = 4
    figure = Image.new("RGB", ((panel + gap) * (1 + len(panels)) - gap, panel), (255, 255, 255))
    for k, p in enumerate([marked] + panels):
        figure.paste(p, (k * (panel + gap), 0))
    return figure


def save_pil(picture: Image.Image, path: str | Path) -> None:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))


# -- training curves -----------------------------------------------------------------------------
def plot_curves(records: list[dict], path: str | Path) -> None:
    """Losses, D(x)/D(G(z)), every attention gamma and eval metrics over steps, from metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss_d" in r]
    evals = [r for r in records if "eval" in r]
    if not train and not evals:
        raise ValueError("metrics.jsonl holds no training or evaluation records yet")
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss_d"] for r in train], label="loss D")
    axes[0].plot(steps, [r["loss_g"] for r in train], label="loss G")
    axes[0].set_title("losses")
    axes[1].plot(steps, [r["d_real"] for r in train], label="D(x)")
    axes[1].plot(steps, [r["d_fake"] for r in train], label="D(G(z))")
    axes[1].set_title("discriminator outputs")
    for name in sorted({n for r in train for n in r.get("gamma", {})}):
        axes[2].plot(steps, [r["gamma"].get(name, float("nan")) for r in train], label=name)
    axes[2].set_title("attention gamma")
    for metric in sorted({m for r in evals for m in r["eval"] if not m.endswith("_std")}):
        pts = [(r["step"], r["eval"][metric]) for r in evals if metric in r["eval"]]
        axes[3].plot(*zip(*pts), marker="o", label=metric.upper())
    axes[3].set_title("evaluation" if evals else "evaluation (none yet: --eval-every)")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))


@torch.no_grad()
def attention_picture(
    G: torch.nn.Module,
    layer: str,
    *,
    D: torch.nn.Module | None = None,
    seed: int = 0,
    class_index: int | None = None,
    points: list[tuple[int, int]] | None = None,
    image: torch.Tensor | None = None,
    panel: int = 192,
) -> Image.Image:
    """The attention-map figure for one attention block of G ('G.attn16') or D ('D.attn16').

    The image is generated by G from (seed, class), unless `image` (3, R, R) in [-1, 1] is given
    (D only: a real image). Points are (x, y) pixels of the image; default: `default_points`.
    """
    from .sampling import generate

    blocks = {**G.attention_blocks(), **(D.attention_blocks() if D is not None else {})}
    if layer not in blocks:
        raise ValueError(f"--layer {layer!r}: this model's attention blocks are {sorted(blocks)}")
    if image is not None and layer.startswith("G."):
        raise ValueError("--image feeds the discriminator; pick a D.attn* --layer, or drop --image")
    block = blocks[layer]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda mod, inputs, out: captured.append(inputs[0]))
    try:  # G's blocks are seen while the image is generated; D's while D judges it
        if image is None:
            images, labels = generate(G, 1, seed=seed, class_index=class_index)
        else:
            images = image[None]
            labels = torch.full((1,), class_index or 0) if G.num_classes else None
        if layer.startswith("D."):
            D.eval()(images, labels)
    finally:
        handle.remove()
    features = captured[-1]
    beta = block.attention_map(features)[0]  # (N, N')
    map_size = tuple(features.shape[2:])
    keys_size = tuple(-(-s // block.pool) for s in map_size)  # ceil: the pooled key map
    return attention_figure(images[0], beta, map_size, keys_size, points or default_points(images.shape[-1]), panel)

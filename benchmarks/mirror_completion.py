"""Mirror completion: does a self-attention block help a U-Net restore what only the far side shows?

    python benchmarks/mirror_completion.py [--steps 800] [--seeds 0 1 2] [--picture docs/mirror-completion.png]

Every `shapes` image holds a shape and its mirror image across the centre line. Hide the half
with one copy (zeroed, plus a mask channel) and train a small U-Net to restore the image: the
hidden copy can only come from its partner on the other side, a dependency across the image that
convolutions reach through depth and the attention block in one step. The same U-Net is trained
with and without `add_self_attention` after its 16x16 stage (same steps, data and seed) and scored
on held-out images by:
  err     mean squared error over the hidden half (images in [-1, 1])
  recog   the restored half, mirrored into the visible half, shown to a classifier of real shapes
          (benchmarks/shapes_recognition.py's): the share it assigns to the right class
The picture: masked input, restoration without and with attention, truth; then where a query
on the hidden copy looks (the attention map of the 16x16 block).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from shapes_recognition import train_classifier

from sagan import add_self_attention
from sagan.shapes import ShapesDataset, draw

RESOLUTION = 32


class UNet(nn.Module):
    """A U-Net on masked image + mask (4 channels) -> image: `levels` halvings from 32x32, skips between.

    levels=2 (32 -> 16 -> 8 and back) sees the whole image from its 8x8 bottom; levels=1 (32 -> 16
    and back) sees about 20 pixels, less than the distance between most mirrored pairs.
    """

    def __init__(self, c: int = 16, levels: int = 2, coords: bool = False) -> None:
        super().__init__()
        self.coords = coords

        def stage(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU(),
            )  # fmt: skip

        self.levels = levels
        self.enc32, self.enc16 = stage(6 if coords else 4, c), stage(c, 2 * c, 2)
        if levels == 2:
            self.enc8, self.up16, self.dec16 = (
                stage(2 * c, 4 * c, 2),
                nn.ConvTranspose2d(4 * c, 2 * c, 2, 2),
                stage(4 * c, 2 * c),
            )
        self.up32, self.dec32 = nn.ConvTranspose2d(2 * c, c, 2, 2), stage(2 * c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coords:  # CoordConv: the pixel's position as two more input channels
            axis = torch.linspace(-1, 1, x.shape[-1], device=x.device)
            grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).expand(x.shape[0], -1, -1, -1)
            x = torch.cat([x, grid], 1)
        h32 = self.enc32(x)
        h = h16 = self.enc16(h32)
        if self.levels == 2:
            h = self.dec16(torch.cat([self.up16(self.enc8(h16)), h16], 1))
        h = self.dec32(torch.cat([self.up32(h), h32], 1))
        return torch.tanh(self.out(h))


class Cached:
    """A shapes dataset rendered once into memory (every net trains on the same images)."""

    def __init__(self, data: ShapesDataset) -> None:
        self.seed, self.images = data.seed, [data[i] for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index]


def hidden_masks(indices: list[int], seed: int) -> torch.Tensor:
    """(n, 1, R, R): 1 on the half that holds one copy (left/right or top/bottom pair; which copy by index)."""
    half = RESOLUTION // 2
    masks = torch.zeros(len(indices), 1, RESOLUTION, RESOLUTION)
    for row, index in enumerate(indices):
        second = index % 2 == 1
        region = slice(half, None) if second else slice(None, half)
        if draw(index, seed).vertical_pair:
            masks[row, :, region, :] = 1
        else:
            masks[row, :, :, region] = 1
    return masks


def batch(
    data: ShapesDataset | Cached, indices: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input with the hidden half zeroed + mask channel, mask, truth, labels)."""
    pairs = [data[i] for i in indices]
    truth = torch.stack([p[0] for p in pairs])
    mask = hidden_masks(indices, data.seed)
    return torch.cat([truth * (1 - mask), mask], 1), mask, truth, torch.tensor([p[1] for p in pairs])


def mirrored_restoration(restored: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The restored half and its mirror image: an image made from the restoration alone."""
    lr = restored.flip(3) * mask.flip(3) + restored * mask  # for left/right pairs
    tb = restored.flip(2) * mask.flip(2) + restored * mask  # for top/bottom pairs
    vertical = (mask[:, :, :, 0] == mask[:, :, :, -1]).all(2).view(-1, 1, 1, 1)  # a top/bottom mask spans every column
    return torch.where(vertical, tb, lr)


def train_unet(
    attention: bool, seed: int, steps: int, data: Cached, levels: int = 2, coords: bool = False, batch_size: int = 32
) -> nn.Module:
    torch.manual_seed(seed)
    net = UNet(levels=levels, coords=coords)
    if attention:
        add_self_attention(net, after=["enc16"])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    for step in range(steps):
        idx = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        x, mask, truth, _ = batch(data, idx)
        loss = ((net(x) - truth).square() * mask).sum() / mask.sum() / 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def score(net: nn.Module, classifier: nn.Module, test: tuple) -> tuple[float, float]:
    x, mask, truth, labels = test
    restored = net(x)
    err = (((restored - truth).square() * mask).sum() / mask.sum() / 3).item()
    recognised = (classifier(mirrored_restoration(restored, mask)).argmax(1) == labels).float().mean().item()
    return err, recognised


def picture(nets: dict[str, nn.Module], test: tuple, path: Path, count: int = 6) -> None:
    """Rows: masked input, without attention, with attention, truth; last column: a hidden-side query's map."""
    from PIL import Image
    from torchvision.utils import make_grid

    x, mask, truth, _ = (t[:count] for t in test)
    with torch.no_grad():
        rows = [x[:, :3]] + [x[:, :3] + nets[k](x) * mask for k in ("without", "with")] + [truth]
    grid = make_grid(torch.cat(rows).add(1).div(2).clamp(0, 1), nrow=count, padding=2, pad_value=1)
    image = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).resize(
        (grid.shape[2] * 4, grid.shape[1] * 4), Image.NEAREST
    )
    image.save(path)


def hidden_centre(index: int, seed: int) -> tuple[int, int]:
    """(x, y) pixel of the centre of the copy that `hidden_masks` hides in image `index`."""
    p = draw(index, seed)
    along = -p.cx if index % 2 == 1 else p.cx  # the second copy sits at -cx

    def pixel(c: float) -> int:
        return min(RESOLUTION - 1, max(0, round((c + 1) / 2 * RESOLUTION - 0.5)))

    return (pixel(p.cy), pixel(along)) if p.vertical_pair else (pixel(along), pixel(p.cy))


def attention_figure(net: nn.Module, test: tuple, seed: int, path: Path, count: int = 4) -> None:
    """The first `count` test images, a query on the hidden copy's centre, and where the 16x16 block looks."""
    from PIL import Image

    from sagan.viz import attention_figure as figure

    x = test[0][:count]
    block = net.enc16.self_attention
    captured = []
    handle = block.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    beta = block.attention_map(captured[0])
    panels = [figure(x[k, :3], beta[k], (16, 16), (16, 16), [hidden_centre(k, seed)], panel=128) for k in range(count)]
    out = Image.new("RGB", (panels[0].width, sum(p.height for p in panels) + 4 * (count - 1)), (255, 255, 255))
    for k, p in enumerate(panels):
        out.paste(p, (0, k * (p.height + 4)))
    out.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-images", type=int, default=600)
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=2, choices=[1, 2], help="U-Net depth (see UNet)")
    parser.add_argument("--coords", action="store_true", help="give both nets the pixel coordinates as input channels")
    parser.add_argument("--picture", type=Path, help="also write the restorations picture (PNG) here")
    parser.add_argument("--attention-picture", type=Path, help="also write the attention maps picture (PNG) here")
    args = parser.parse_args()
    started = time.perf_counter()
    classifier, real = train_classifier(RESOLUTION, 6000, 2)
    train_data = Cached(ShapesDataset(RESOLUTION, size=args.train_images, seed=0))
    test_data = ShapesDataset(RESOLUTION, size=args.test_images, seed=777)
    test = batch(test_data, list(range(args.test_images)))
    print(
        f"# {time.strftime('%Y-%m-%d')} torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"{args.steps} steps of batch 32 per net; classifier {real:.1%} on held-out real shapes "
        f"({time.perf_counter() - started:.0f} s)"
    )
    params = {
        a: sum(p.numel() for p in train_unet(a, 0, 0, train_data, args.levels, args.coords).parameters())
        for a in (False, True)
    }
    print(f"U-Net parameters: without attention {params[False]:,}, with {params[True]:,}")
    print(
        f"{'seed':>4} | {'err without':>11} {'err with':>9} {'with/without':>12} | "
        f"{'recog without':>13} {'recog with':>10} | {'gamma':>6} | {'time':>5}"
    )
    results = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        nets = {
            "without": train_unet(False, seed, args.steps, train_data, args.levels, args.coords),
            "with": train_unet(True, seed, args.steps, train_data, args.levels, args.coords),
        }
        (e0, r0), (e1, r1) = score(nets["without"], classifier, test), score(nets["with"], classifier, test)
        results.append((e0, e1, r0, r1))
        gamma = nets["with"].enc16.self_attention.gamma.item()
        print(
            f"{seed:>4} | {e0:11.4f} {e1:9.4f} {e1 / e0:12.2f} | {r0:13.1%} {r1:10.1%} | {gamma:6.3f} | "
            f"{time.perf_counter() - t0:4.0f}s",
            flush=True,
        )
        if seed == args.seeds[0] and args.picture:
            picture(nets, test, args.picture)
        if seed == args.seeds[0] and args.attention_picture:
            attention_figure(nets["with"], test, test_data.seed, args.attention_picture)
    mean = [sum(r[i] for r in results) / len(results) for i in range(4)]
    print(
        f"mean | {mean[0]:11.4f} {mean[1]:9.4f} {mean[1] / mean[0]:12.2f} | {mean[2]:13.1%} {mean[3]:10.1%} | {'':6} | "
        f"total {time.perf_counter() - started:.0f}s"
    )


if __name__ == "__main__":
    main()

"""How recognisable are a `shapes` run's samples? A classifier trained on real shapes judges them.

    python benchmarks/shapes_recognition.py RUN_DIR [RUN_DIR ...] [--n-per-class 100] [--classifier FILE]

Trains a small CNN on real `shapes` images (fixed seed; 2 minutes on 2 CPU cores), reports its
accuracy on held-out real images, then, for each run, draws n images per class from the EMA
generator and reports the fraction the classifier assigns to the class they were drawn for
(overall and per class). Real images score near 100%; a generator that draws smeared blobs
scores near chance (1/6). A number to compare runs and settings by, next to looking at the grids.
With --classifier FILE the trained classifier is kept there and reused by later calls.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sagan.checkpoint import load_generator
from sagan.files import atomic_write
from sagan.sampling import generate
from sagan.shapes import CLASSES, ShapesDataset


def classifier() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, len(CLASSES))
    )


def images_of(data: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [data[i] for i in range(len(data))]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def train_classifier(resolution: int, n_train: int, epochs: int) -> tuple[nn.Module, float]:
    """A classifier of real shapes (data seed 12345, not a training run's seed 0) and its held-out accuracy."""
    torch.manual_seed(0)
    x, y = images_of(ShapesDataset(resolution, size=n_train + 2000, seed=12345))
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    net = classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n_train)
        for i in range(n_train // 128):
            idx = order[i * 128 : (i + 1) * 128]
            batch = x_train[idx]
            if torch.rand(()) < 0.5:  # both mirror axes occur in the data; flips keep the class
                batch = batch.flip(3)
            loss = F.cross_entropy(net(batch), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net, accuracy(net, x_test, y_test)[0]


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[float]]:
    pred = torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    per_class = [(pred[y == k] == k).float().mean().item() for k in range(len(CLASSES))]
    return (pred == y).float().mean().item(), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or checkpoint files) of shapes runs")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="noise seed for the generated images")
    parser.add_argument("--classifier", type=Path, help="file to keep the classifier in (trained if it is missing)")
    args = parser.parse_args()

    G0, _ = load_generator(args.runs[0])
    if args.classifier and args.classifier.exists():
        kept = torch.load(args.classifier, weights_only=True)
        if kept["resolution"] != G0.resolution:
            raise SystemExit(
                f"{args.classifier} judges {kept['resolution']}px shapes, the run makes "
                f"{G0.resolution}px ones: pass another --classifier file"
            )
        net, real = classifier(), kept["accuracy"]
        net.load_state_dict(kept["state"])
        net.eval()
        print(f"classifier from {args.classifier}: {real:.1%} on held-out real shapes")
    else:
        t0 = time.perf_counter()
        net, real = train_classifier(G0.resolution, args.train_images, args.epochs)
        print(
            f"classifier: {real:.1%} on held-out real {G0.resolution}px shapes "
            f"({time.perf_counter() - t0:.0f} s to train)"
        )
        if args.classifier:
            atomic_write(
                args.classifier,
                lambda f: torch.save({"state": net.state_dict(), "accuracy": real, "resolution": G0.resolution}, f),
            )
    print(f"{'run':40s} {'all':>6s} " + " ".join(f"{c:>8s}" for c in CLASSES))
    for run in args.runs:
        G, _ = load_generator(run)
        if G.num_classes != len(CLASSES):
            raise SystemExit(f"{run}: not a class-conditional shapes run ({G.num_classes} classes)")
        xs, ys = [], []
        for k in range(len(CLASSES)):
            x, y = generate(G, args.n_per_class, seed=args.seed + k, class_index=k)
            xs.append(x)
            ys.append(y)
        total, per_class = accuracy(net, torch.cat(xs), torch.cat(ys))
        print(f"{str(run)[-40:]:40s} {total:6.1%} " + " ".join(f"{a:8.1%}" for a in per_class))


if __name__ == "__main__":
    main()

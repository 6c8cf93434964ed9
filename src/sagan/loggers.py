"""Experiment trackers behind one interface: TensorBoard (`--tensorboard`) and Weights & Biases (`--wandb`).

Both get the same things: the training scalars, the sample grids and the evaluation metrics. Both
write into the run directory (RUN/tensorboard, RUN/wandb); a resumed run continues the same W&B
run (its id is derived from the run directory). `WANDB_MODE=offline` keeps W&B on the local disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .viz import grid


class ExperimentLoggers:
    """The trackers a run asked for (possibly none): scalars, image grids, close."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tensorboard: bool = False, wandb: bool = False) -> None:
        self.tb, self.wandb = None, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    "--tensorboard needs the tensorboard package: pip install 'sagan-pytorch[tensorboard]'"
                ) from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ValueError("--wandb needs the wandb package: pip install 'sagan-pytorch[wandb]'") from None
            run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]  # the same run on resume
            self.wandb = wandb_module.init(
                project=os.environ.get("WANDB_PROJECT", "sagan"),
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
            )

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb:
            self.wandb.log(values, step=step)

    def images(self, name: str, images: torch.Tensor, step: int) -> None:
        """(B, 3, H, W) images in [-1, 1], as one grid."""
        if self.tb:
            self.tb.add_images(name, images.add(1).div(2).clamp(0, 1), step)
        if self.wandb:
            import wandb

            self.wandb.log({name: wandb.Image(grid(images).permute(1, 2, 0).numpy())}, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()

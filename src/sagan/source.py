"""Where a trained generator comes from: a run directory, a checkpoint, an export folder or a Hub id.

Every reading command (`sagan sample | attention | eval | interpolate | export`) takes any of the
four. Runs and checkpoints also hold the discriminator and the training config; exports and Hub
models hold the generator only, and the commands that need more say so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import TrainState
    from .models import Discriminator, Generator

KINDS = ("run directory", "checkpoint", "export folder", "Hub model")


@dataclass
class Source:
    """A loaded generator (eval mode, CPU) and what else its source holds.

    kind: one of KINDS; state: the training state for runs and checkpoints (None otherwise);
    path: the checkpoint file read, or the export folder / Hub id.
    """

    G: Generator
    kind: str
    name: str
    path: Path | str
    state: TrainState | None = None

    @property
    def step(self) -> int | None:
        return None if self.state is None else self.state.step

    @property
    def run_dir(self) -> Path | None:
        """The run directory this generator was read from, if it was one (where results are kept)."""
        if self.kind == "run directory":
            return Path(self.name)
        if self.kind == "checkpoint" and (Path(self.path).parent / "config.json").is_file():
            return Path(self.path).parent
        return None

    def discriminator(self, why: str) -> Discriminator:
        """The trained D; an export holds none, which is an input error naming `why` D is wanted."""
        from .checkpoint import discriminator_from

        if self.state is None:
            raise ValueError(
                f"{self.name} is {_a(self.kind)}, which holds the generator only; {why} needs the discriminator: "
                f"pass the run directory or a checkpoint"
            )
        return discriminator_from(self.state, self.path)

    def describe(self) -> str:
        return f"step {self.step}" if self.step is not None else f"{self.kind} {self.name}"


def kind_of(name: str) -> str:
    """Which of KINDS a command-line SOURCE names (nothing is read)."""
    from .export import CONFIG_FILE, WEIGHTS_FILE
    from .hub import HUB_SOURCE

    path = Path(name)
    if path.is_dir():
        exported = (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()
        return "export folder" if exported else "run directory"
    if path.is_file():
        return "checkpoint"
    if HUB_SOURCE.match(name):
        return "Hub model"
    raise FileNotFoundError(
        f"{name}: no such run directory, checkpoint or export folder "
        f"(a Hugging Face Hub id looks like owner/name, or owner/name@revision)"
    )


def load_source(name: str | Path, use_ema: bool = True) -> Source:
    """The generator that `name` holds (its EMA copy by default), with the rest of what it holds."""
    from .checkpoint import TrainState, generator_from
    from .models import Generator

    name = str(name)
    kind = kind_of(name)
    if kind in ("run directory", "checkpoint"):
        path, state = TrainState.load(name)
        return Source(generator_from(state, path, use_ema), kind, name, path, state)
    if not use_ema:
        raise ValueError(f"{name} is {_a(kind)}, which holds one generator; --no-ema applies to runs and checkpoints")
    if kind == "Hub model":
        from .hub import HUB_SOURCE

        parts = HUB_SOURCE.match(name)
        return Source(Generator.from_pretrained(parts["repo"], revision=parts["revision"]), kind, name, name)
    return Source(Generator.from_pretrained(name), kind, name, name)


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind

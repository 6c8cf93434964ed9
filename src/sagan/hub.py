"""Generators on the Hugging Face Hub: `from_pretrained`, `save_pretrained`, `push_to_hub`.

With the `hub` extra installed (`pip install 'sagan-pytorch[hub]'`), `Generator` is a
`huggingface_hub.PyTorchModelHubMixin`: `Generator.from_pretrained("owner/name")` fetches an
export from the Hub (or its local cache; `HF_HUB_OFFLINE=1` never touches the network) and
`push_to_hub` uploads one. Without it, the same methods read and write local folders only.

Either way the folder is what `sagan export` writes: model.safetensors, config.json and a model
card (README.md). Only safetensors is read, never a pickle, and the config is checked against the
weights' shapes before anything is built (`export.load_pretrained`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'sagan-pytorch[hub]'"
#: What a Hub repository id looks like (owner/name); a local path that does not exist and has this form is tried there.
_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
REPO_ID = re.compile(f"^{_REPO}$")
#: A Hub model as a command's SOURCE: owner/name, optionally @revision (a branch, tag or commit).
HUB_SOURCE = re.compile(rf"^(?P<repo>{_REPO})(@(?P<revision>[\w./-]+))?$")

try:
    from huggingface_hub import PyTorchModelHubMixin as _Base

    HUB_AVAILABLE = True
except ImportError:  # the optional extra is not installed: local folders only
    HUB_AVAILABLE = False

    class _Base:  # type: ignore[no-redef]
        """The mixin's saving methods for local folders, so code written for the Hub runs without it."""

        def __init_subclass__(cls, **card: Any) -> None:  # the mixin's model-card keywords, unused here
            super().__init_subclass__()

        def save_pretrained(self, save_directory: str | Path, *, push_to_hub: bool = False, **kwargs: Any) -> None:
            if push_to_hub:
                raise ValueError(f"pushing to the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}")
            self._save_pretrained(Path(save_directory))  # type: ignore[attr-defined]

        def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
            raise ValueError(f"pushing to the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}")


CARD = """---
library_name: sagan-pytorch
tags:
- sagan
- gan
- image-generation
- pytorch_model_hub_mixin
---

# SAGAN generator ({resolution}x{resolution}, {conditioning})

A Self-Attention GAN generator (Zhang, Goodfellow, Metaxas, Odena 2018) trained with sagan
(`pip install 'sagan-pytorch[hub]'`). Weights in safetensors; no pickle.

```python
from sagan import Generator, generate
G = Generator.from_pretrained("{repo_id}")
images, labels = generate(G, 16, seed=0)  # (16, 3, {resolution}, {resolution}) in [-1, 1]
```

Or from the shell: `sagan sample {repo_id} --n 64 --out samples.png`.
"""


class HubMixin(
    _Base,
    library_name="sagan-pytorch",
    paper_url="https://arxiv.org/abs/1805.08318",
    tags=["sagan", "gan", "image-generation"],
):
    """`from_pretrained` / `save_pretrained` / `push_to_hub` for sagan's Generator (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> Any:
        """A generator from an export folder or a Hub id ("owner/name"), in eval mode on the CPU.

        kwargs: huggingface_hub's (revision, cache_dir, local_files_only, token, force_download),
        and map_location (default "cpu").
        """
        name = str(pretrained_model_name_or_path)
        # Not the mixin's from_pretrained: it would read config.json itself, as keyword arguments
        # for __init__, before our checks. Ours reads the folder (fetched first for a Hub id) once.
        if not HUB_AVAILABLE and not os.path.isdir(name):
            raise ValueError(f"{name} is not a folder; loading from the Hugging Face Hub needs huggingface_hub: "
                             f"{INSTALL_HINT}")  # fmt: skip
        try:
            return cls._from_pretrained(model_id=name, **kwargs)
        except Exception as err:
            if type(err).__module__.startswith("huggingface_hub"):
                raise ValueError(hub_error(name, err)) from None
            raise

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **hub_options: Any) -> Any:
        from .export import load_pretrained

        folder = model_id if os.path.isdir(model_id) else fetch(model_id, **hub_options)
        return load_pretrained(folder).to(map_location)

    def _save_pretrained(self, save_directory: Path) -> None:
        from .export import export_generator

        export_generator(self, save_directory, classes=getattr(self, "class_names", []))  # type: ignore[arg-type]
        write_card(self, save_directory, repo_id=f"OWNER/{save_directory.resolve().name}")


def write_card(G: Any, folder: Path, repo_id: str) -> Path:
    """The model card (README.md) of an export folder, written atomically."""
    from .files import atomic_write_text

    conditioning = f"{G.num_classes} classes" if G.num_classes else "unconditional"
    card = CARD.format(resolution=G.resolution, conditioning=conditioning, repo_id=repo_id)
    path = Path(folder) / "README.md"
    atomic_write_text(path, card)
    return path


def fetch(repo_id: str, revision: str | None = None, **hub_options: Any) -> str:
    """The local folder (in the Hub cache) holding repo_id's config.json and model.safetensors."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # a file the repository lacks (not one missing from the local cache)
        from huggingface_hub.errors import RemoteEntryNotFoundError as Missing
    except ImportError:  # older huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError as Missing

    passed = ("cache_dir", "force_download", "local_files_only", "token")
    options = {k: v for k, v in hub_options.items() if k in passed}
    paths = []
    for filename in ("config.json", "model.safetensors"):
        try:
            paths.append(hf_hub_download(repo_id, filename, revision=revision, **options))
        except LocalEntryNotFoundError:
            raise
        except Missing:
            raise ValueError(
                f"the Hub repository {repo_id} has no {filename}; sagan reads exports made by `sagan export` "
                f"(safetensors only, never a pickle)"
            ) from None
    return str(Path(paths[0]).parent)


def hub_error(name: str, err: BaseException) -> str:
    """One line for a failed Hub lookup: what was asked, what went wrong, what to do."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    hint = (
        "HF_HUB_OFFLINE is set, so only the local Hub cache is read: fetch it once online"
        if offline
        else "check the id (owner/name), your connection and, for a private model, `hf auth login`"
    )
    return f"{name}: no such local folder, and the Hugging Face Hub gave {type(err).__name__} ({first}); {hint}"


def push_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an export folder (as written: ONNX too, if there) to the Hub repository repo_id; returns its URL."""
    if not HUB_AVAILABLE:
        raise ValueError(f"--push-to-hub needs huggingface_hub: {INSTALL_HINT}")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="Upload a sagan generator")
    except Exception as err:  # noqa: BLE001 (the Hub's, HTTP's and the network's errors: all one line here)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"could not push {folder} to {repo_id}: {type(err).__name__} ({first}); the export itself is complete, "
            f"check the connection and `hf auth login`, then run the command again"
        ) from None
    return f"https://huggingface.co/{repo.repo_id}"

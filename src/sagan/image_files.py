"""Datasets of image files, read one at a time: a folder, a zip, and the reading they share.

`ImageFilesDataset` holds a listing of (key, class index) and turns a key into an image on read;
an image that fails to decode then is replaced by the next readable one in the listing. A folder
is listed from directory entries and its listing kept with the run; a zip is read in place.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .config import MAX_CLASSES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def resize_and_crop(resolution: int) -> v2.Compose:
    """Shorter side to R, centre crop to R x R, uint8 -> float in [-1, 1]."""
    return v2.Compose(
        [
            v2.Resize(resolution, antialias=True),
            v2.CenterCrop(resolution),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )


def _list_images(folder: Path) -> list[Path]:
    """Image files below `folder` by extension, sorted; directory entries only, no file is opened."""
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(Path(entry.path))
    return sorted(found)


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any PIL image; 16- and 32-bit images are scaled to 8 bits, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or wide.max(initial=0) <= 65535 else float(2**32 - 1)
        gray = np.clip(np.rint(wide / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        gray = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))


def load_image(
    path: str | Path | IO[bytes],
    resolution: int | None = None,
    transform: v2.Compose | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """One image (a file, or a file object called `name`) as a (3, R, R) float tensor in [-1, 1], resized and
    centre-cropped. ValueError if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a file cut short or with broken data fails here, not later
            image = torch.from_numpy(_pil_to_uint8(im)).permute(2, 0, 1)
    except Exception as err:  # noqa: BLE001 (PIL's error types for bad files vary by format)
        raise ValueError(f"cannot read image {name or path} ({type(err).__name__}: {err})") from None
    return (transform or resize_and_crop(resolution))(image)


class ImageFilesDataset(Dataset):
    """Images read one at a time from somewhere (a folder, a zip, a Hugging Face dataset): the common part.

    `samples` lists (key, class index); subclasses say how a key opens (`open_image`) and is named.
    A file that fails to decode when it is read is replaced by the next readable one in the listing
    (the same one every time, so a resumed run sees what an uninterrupted one saw), and counted in
    `unreadable`; the first one is reported in a warning. Images are resized (shorter side) and
    centre-cropped to resolution x resolution.
    """

    def __init__(self, samples: list[tuple[Any, int]], classes: list[str], resolution: int, where: str) -> None:
        if not samples:
            raise ValueError(
                f"no readable images in {where}; put {'/'.join(IMAGE_EXTENSIONS)} files in it "
                f"or in one subfolder per class"
            )
        self.samples, self.classes, self.where = samples, classes, where
        self.transform = resize_and_crop(resolution)
        self.unreadable: set[Any] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def open_image(self, key: Any) -> str | Path | IO[bytes]:
        """What PIL opens for a key: a path, or a file object of the image's bytes."""
        return key

    def name_of(self, key: Any) -> str:
        return str(key)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):  # bounded: at most one pass over the listing
            key, label = self.samples[(index + offset) % len(self.samples)]
            if key in self.unreadable:
                continue
            try:
                return load_image(self.open_image(key), transform=self.transform, name=self.name_of(key)), label
            except (ValueError, OSError) as err:
                if not self.unreadable:
                    warnings.warn(
                        f"skipping an unreadable image, replaced by the next readable one: {err}; "
                        f"further ones are counted at the end"
                    )
                self.unreadable.add(key)
        raise ValueError(f"no readable images in {self.where}: every one of {len(self.samples)} failed to decode")


def labelled(groups: list[tuple[str, list[Any]]], flat: list[Any]) -> tuple[list[tuple[Any, int]], list[str]]:
    """Samples and class names from (class name, keys) groups, in order; the flat keys when no group has any."""
    groups = [(name, keys) for name, keys in groups if keys]
    if groups:
        return [(k, label) for label, (_, keys) in enumerate(groups) for k in keys], [name for name, _ in groups]
    return [(k, 0) for k in flat], []


class ImageFolderDataset(ImageFilesDataset):
    """Images in a folder: flat (no labels), or one subfolder per class (labels from folder names).

    Listing reads directory entries only (`os.scandir`): no file is opened before it is read.
    """

    def __init__(self, root: str | Path, resolution: int, listing: list[tuple[str, int]] | None = None,
                 classes: list[str] | None = None) -> None:  # fmt: skip
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        if listing is not None:  # a run's saved listing (see listing_of): the same images in the same order
            samples, names = [(root / rel, label) for rel, label in listing], list(classes or [])
        else:
            class_dirs = sorted(Path(e.path) for e in os.scandir(root) if e.is_dir())
            groups = [(d.name, _list_images(d)) for d in class_dirs]
            samples, names = labelled(groups, [] if any(files for _, files in groups) else _list_images(root))
        super().__init__(samples, names, resolution, str(root))
        self.root = root

    def listing_of(self) -> list[tuple[str, int]]:
        """The listing as (path relative to the folder, class index): what a run directory keeps."""
        return [(str(path.relative_to(self.root)), label) for path, label in self.samples]

    @classmethod
    def with_listing_cache(
        cls, root: str | Path, resolution: int, cache: Path, write: bool, reuse: bool = True
    ) -> ImageFolderDataset:
        """The folder, listed once per run: a run keeps its listing in `cache` (JSON) and reads it on resume.

        So a resumed run (`reuse`) sees the images, order and classes it started with without walking the
        folder again (minutes for millions of files on a network disk); files added since are not seen, and
        files removed since are skipped when read. A cache of another folder is ignored; a fresh run
        (`reuse=False`) lists the folder and writes the cache (`write`: rank 0).
        """
        root = Path(root)
        saved = _read_listing(cache, root) if reuse else None
        if saved is not None:
            return cls(root, resolution, listing=saved["files"], classes=saved["classes"])
        dataset = cls(root, resolution)
        if write:
            from .files import atomic_write_json

            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                cache, {"root": str(root.resolve()), "classes": dataset.classes, "files": dataset.listing_of()}
            )
        return dataset


def _read_listing(cache: Path, root: Path) -> dict[str, Any] | None:
    """A run's saved folder listing, if it is there, intact and of this folder."""
    try:
        saved = json.loads(cache.read_text())
        files, classes = saved["files"], saved["classes"]
        ok = saved["root"] == str(root.resolve()) and isinstance(classes, list) and isinstance(files, list)
        ok = ok and all(isinstance(f, list) and len(f) == 2 and 0 <= f[1] < max(len(classes), 1) for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok or not files:
        return None
    return saved


#: A zip member larger than this is not an image to train on (a zip bomb claims gigabytes).
MAX_MEMBER_BYTES = 64 * 2**20


class ZipImageDataset(ImageFilesDataset):
    """Images in a zip file, read in place (no extraction).

    Labels: stylegan2-ada's `dataset.json` ({"labels": [[name, class], ...] or null}) when the zip has
    one; otherwise one top-level folder per class, as for a folder (a single folder wrapping
    everything is looked through). Members are opened lazily, once per process (DataLoader workers too).
    """

    def __init__(self, path: str | Path, resolution: int) -> None:
        self.path = Path(path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                infos = [i for i in archive.infolist() if not i.is_dir() and _is_image(i.filename)]
                labels = _zip_labels(archive, self.path)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise ValueError(
                f"{self.path} is not a readable zip file ({err}); make it with zip or dataset_tool"
            ) from None
        names = [i.filename for i in infos if i.file_size <= MAX_MEMBER_BYTES]
        if labels == {}:  # dataset.json without labels: unconditional, whatever the folders
            samples, classes = [(n, 0) for n in sorted(names)], []
        elif labels is not None:
            samples = [(n, labels[n]) for n in sorted(names) if n in labels]
            classes = [str(i) for i in range(max((lab for _, lab in samples), default=-1) + 1)]
        else:
            samples, classes = _zip_samples(sorted(names))
        super().__init__(samples, classes, resolution, str(self.path))
        self._archive: tuple[int, zipfile.ZipFile] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_archive": None}  # an open zip does not cross into another process

    def open_image(self, key: str) -> IO[bytes]:
        if self._archive is None or self._archive[0] != os.getpid():
            self._archive = (os.getpid(), zipfile.ZipFile(self.path))
        return io.BytesIO(self._archive[1].read(key))

    def name_of(self, key: str) -> str:
        return f"{self.path}:{key}"


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not Path(name).name.startswith(".")


def _zip_labels(archive: zipfile.ZipFile, path: Path) -> dict[str, int] | None:
    """stylegan2-ada's dataset.json labels ({member: class}); {} when its labels are null, None without the file."""
    if "dataset.json" not in archive.namelist():
        return None
    info = archive.getinfo("dataset.json")
    try:
        if info.file_size > 16 * MAX_MEMBER_BYTES:
            raise ValueError("too large")
        labels = json.loads(archive.read(info)).get("labels")
        if labels is None:
            return {}
        table = {str(name): label for name, label in labels}
        if not all(type(v) is int and 0 <= v < MAX_CLASSES for v in table.values()):
            raise ValueError("labels must be integers 0, 1, 2, ...")
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ValueError(
            f'{path}: dataset.json is not stylegan2-ada\'s form {{"labels": [[file, class], ...]}} ({err})'
        ) from None
    return table


def _zip_samples(names: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Class folders inside a zip (looking through one wrapping folder), else every image unlabelled."""
    parts = [n.split("/") for n in names]
    depth = 0
    while parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1  # one folder wraps everything: look inside it
    groups: dict[str, list[str]] = {}
    for name, p in zip(names, parts):
        if len(p) > depth + 1:
            groups.setdefault(p[depth], []).append(name)
    return labelled(sorted(groups.items()), names)

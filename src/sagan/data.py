"""Datasets for training and evaluation, and the sampler that makes runs resumable.

Every dataset yields ((3, R, R) float tensor in [-1, 1], class index) and has `classes` (a list of
class names; empty when the data has no labels). `build_dataset` turns the `--data` argument into
one of them:

    shapes                        the built-in procedural dataset (sagan.shapes), no download
    cifar10                       CIFAR-10's python archive in the data folder (--download fetches it)
    path/to/cifar-10-python.tar.gz  the same archive, given by path
    path/to/file.npz              `images` (N, H, W, 3) uint8 and optional `labels` (N,) ints
    path/to/folder                images (jpg/png/webp/bmp): flat (unconditional) or one subfolder per class
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from .shapes import ShapesDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BUILTIN = ("shapes", "cifar10")


def default_data_dir() -> Path:
    """Where `--data cifar10` looks for (and --download puts) its archive: $SAGAN_DATA or ~/.cache/sagan."""
    return Path(os.environ.get("SAGAN_DATA", Path.home() / ".cache" / "sagan"))


def _resize_and_crop(resolution: int) -> v2.Compose:
    """Shorter side to R, centre crop to R x R, uint8 -> float in [-1, 1]."""
    return v2.Compose([
        v2.Resize(resolution, antialias=True),
        v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])


class ArrayDataset(Dataset):
    """Images held in memory as a (N, H, W, 3) uint8 array, with optional labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, classes: list[str], resolution: int, source: str) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{source}: images must be a (N, H, W, 3) uint8 array, got {images.shape} {images.dtype}")
        if len(images) == 0:
            raise ValueError(f"{source} holds no images")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise ValueError(f"{source}: labels must be ({len(images)},) non-negative integers, got {labels.shape} {labels.dtype}")
            classes = classes or [str(i) for i in range(int(labels.max()) + 1)]
        self.images, self.labels, self.classes = images, labels, list(classes) if labels is not None else []
        self.transform = _resize_and_crop(resolution)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        return self.transform(image), int(self.labels[index]) if self.labels is not None else 0


def load_npz(path: str | Path, resolution: int) -> ArrayDataset:
    """An .npz file with `images` (N, H, W, 3) uint8 and optional `labels` (N,) integers."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise ValueError(f"{path} has no 'images' array (it has {archive.files}); save one of shape (N, H, W, 3) uint8")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); write it with numpy.savez") from None
    return ArrayDataset(images, labels, [], resolution, str(path))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow numpy arrays and plain containers, nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def load_cifar10(archive: str | Path, resolution: int, split: str = "train") -> ArrayDataset:
    """CIFAR-10 from its standard python archive (cifar-10-python.tar.gz), read without extracting."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels, classes = [], [], []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{archive} is not CIFAR-10's python archive: it lacks {missing}")
            for name in names:
                batch = _ArraysOnlyUnpickler(io.BytesIO(tar.extractfile(members[name]).read()), encoding="bytes").load()
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.extend(batch[b"labels"])
            if "batches.meta" in members:
                meta = _ArraysOnlyUnpickler(io.BytesIO(tar.extractfile(members["batches.meta"]).read()), encoding="bytes").load()
                classes = [c.decode() for c in meta[b"label_names"]]
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError) as err:
        raise ValueError(f"{archive} is not a readable CIFAR-10 python archive ({err}); download it again") from None
    return ArrayDataset(np.concatenate(images), np.asarray(labels, dtype=np.int64), classes, resolution, str(archive))


def cifar10_archive(data_dir: Path, download: bool) -> Path:
    """Path of cifar-10-python.tar.gz in data_dir, fetched (md5-checked, by torchvision) if asked to."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_url

    path = data_dir / CIFAR10.filename
    if not path.is_file():
        if not download:
            raise FileNotFoundError(
                f"CIFAR-10 archive not found at {path}; add --download (needs internet), "
                f"or pass --data /path/to/{CIFAR10.filename}, or set SAGAN_DATA to its folder"
            )
        download_url(CIFAR10.url, str(data_dir), CIFAR10.filename, CIFAR10.tgz_md5)
    return path


class ImageFolderDataset(Dataset):
    """Images in a folder: flat (no labels), or one subfolder per class (labels from folder names).

    Files that cannot be read as images are skipped, with one warning that counts them.
    Images are resized (shorter side) and centre-cropped to resolution x resolution.
    """

    def __init__(self, root: str | Path, resolution: int) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")

        def images_in(folder: Path) -> list[Path]:
            return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and images_in(d))
        if class_dirs:
            self.classes = [d.name for d in class_dirs]
            candidates = [(p, label) for label, d in enumerate(class_dirs) for p in images_in(d)]
        else:
            self.classes = []
            candidates = [(p, 0) for p in images_in(root)]
        self.samples, bad = [], []
        for path, label in candidates:
            try:
                with Image.open(path) as im:
                    im.verify()
                self.samples.append((path, label))
            except Exception:  # PIL raises many types for broken files; any of them means "skip"
                bad.append(path)
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image file(s) of {len(candidates)} in {root} (first: {bad[0]})")
        if not self.samples:
            raise ValueError(f"no readable images in {root}; put {'/'.join(IMAGE_EXTENSIONS)} files in it or in one subfolder per class")
        self.root, self.transform = root, _resize_and_crop(resolution)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.load_image(path, transform=self.transform), label

    @staticmethod
    def load_image(path: str | Path, resolution: int | None = None, transform: v2.Compose | None = None) -> torch.Tensor:
        """One image file as a (3, R, R) float tensor in [-1, 1] (resized and centre-cropped)."""
        try:
            with Image.open(path) as im:
                image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        except Exception as err:  # PIL's error types for bad files vary by format
            raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err})") from None
        return (transform or _resize_and_crop(resolution))(image)


def build_dataset(
    data: str,
    resolution: int,
    *,
    seed: int = 0,
    shapes_size: int = 50_000,
    download: bool = False,
    data_dir: str | Path | None = None,
) -> Dataset:
    """The dataset that `--data` names (see the module docstring). Errors say what to pass instead."""
    if data == "shapes":
        return ShapesDataset(resolution, size=shapes_size, seed=seed)
    if data == "cifar10":
        return load_cifar10(cifar10_archive(Path(data_dir) if data_dir else default_data_dir(), download), resolution)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing file or folder")
    if path.is_dir():
        return ImageFolderDataset(path, resolution)
    if path.suffix == ".npz":
        return load_npz(path, resolution)
    if path.name.endswith((".tar.gz", ".tgz")):
        return load_cifar10(path, resolution)
    raise ValueError(f"--data {data!r}: cannot read {path.suffix or 'this'} files; give a folder of images, an .npz file or cifar-10-python.tar.gz")


class StepSampler(Sampler[int]):
    """Dataset indices for one rank, as an endless stream that can start anywhere.

    The global stream is epoch after epoch of a permutation seeded by (seed, epoch). Each step
    takes the next world_size * batch_size positions of it, and rank r reads its slice
    [r * batch_size, (r + 1) * batch_size) of those. So what a step sees depends only on the
    seed and how far the run has read (`start_position`, kept in checkpoints): a resumed run, or
    one with another number of processes and the same global batch, sees the same images.
    (torch's DistributedSampler has the per-epoch seeding and sharding but cannot start mid-epoch.)
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_position: int = 0) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.start_position = rank, world_size, start_position

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        first, epoch, perm = self.start_position + self.rank * self.batch_size, -1, None
        while True:
            for position in range(first, first + self.batch_size):
                if position // self.length != epoch:
                    epoch = position // self.length
                    perm = self._permutation(epoch)
                yield int(perm[position % self.length])
            first += global_batch

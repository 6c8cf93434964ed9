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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from .config import MAX_CLASSES
from .shapes import ShapesDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BUILTIN = ("shapes", "cifar10")


def default_data_dir() -> Path:
    """Where `--data cifar10` looks for (and --download puts) its archive: $SAGAN_DATA or ~/.cache/sagan."""
    return Path(os.environ.get("SAGAN_DATA", Path.home() / ".cache" / "sagan"))


def _resize_and_crop(resolution: int) -> v2.Compose:
    """Shorter side to R, centre crop to R x R, uint8 -> float in [-1, 1]."""
    return v2.Compose(
        [
            v2.Resize(resolution, antialias=True),
            v2.CenterCrop(resolution),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )


class ArrayDataset(Dataset):
    """Images held in memory as a (N, H, W, 3) uint8 array, with optional labels."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray | None, classes: list[str], resolution: int, source: str
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{source}: images must be a (N, H, W, 3) uint8 array, got {images.shape} {images.dtype}")
        if len(images) == 0:
            raise ValueError(f"{source} holds no images")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise ValueError(
                    f"{source}: labels must be ({len(images)},) non-negative integers, "
                    f"got {labels.shape} {labels.dtype}"
                )
            if int(labels.max()) >= MAX_CLASSES:
                raise ValueError(
                    f"{source}: a label of {int(labels.max())} means over {MAX_CLASSES:,} classes; "
                    f"number the classes 0, 1, 2, ..."
                )
            if classes and int(labels.max()) >= len(classes):
                raise ValueError(f"{source}: a label of {int(labels.max())} but only {len(classes)} class names")
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


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in an .npz, read from its header before the data is."""
    with archive.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return shape, dtype


def load_npz(path: str | Path, resolution: int) -> ArrayDataset:
    """An .npz file with `images` (N, H, W, 3) uint8 and optional `labels` (N,) integers.

    Shapes and dtypes are checked from the arrays' headers before anything is decompressed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            if "images" not in names:
                raise ValueError(f"{path} has no 'images' array (it has {names}); save one of shape (N, H, W, 3) uint8")
            shape, dtype = _npy_header(archive, "images")
            if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
                raise ValueError(f"{path}: images must be a (N, H, W, 3) uint8 array, got {shape} {dtype}")
            if "labels" in names:
                label_shape, label_dtype = _npy_header(archive, "labels")
                if label_shape != (shape[0],) or not np.issubdtype(label_dtype, np.integer):
                    raise ValueError(f"{path}: labels must be ({shape[0]},) integers, got {label_shape} {label_dtype}")
        with np.load(path, allow_pickle=False) as arrays:
            images = arrays["images"]
            labels = arrays["labels"] if "labels" in names else None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); write it with numpy.savez") from None
    return ArrayDataset(images, labels, [], resolution, str(path))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow numpy arrays and plain containers, nothing that runs code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


#: CIFAR-10's archive: 8 members; a batch of 10,000 images is 30.7 MB unpacked. Larger is not CIFAR-10.
_CIFAR_MAX_MEMBERS, _CIFAR_MAX_MEMBER_BYTES = 64, 64 * 2**20


def _cifar_batch(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str | Path) -> tuple[np.ndarray, list[int]]:
    """One data batch: (n, 32, 32, 3) uint8 images and n labels, type-checked."""
    batch = _ArraysOnlyUnpickler(io.BytesIO(tar.extractfile(member).read()), encoding="bytes").load()
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.ndim != 2
        or data.shape[1] != 3072
        or not isinstance(labels, list)
        or len(labels) != len(data)
        or not all(type(v) is int and 0 <= v < 10 for v in labels)
    ):
        raise ValueError(f"{archive}: {member.name} is not a CIFAR-10 batch (a dict of 3072-byte rows and labels 0-9)")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(archive: str | Path, resolution: int, split: str = "train") -> ArrayDataset:
    """CIFAR-10 from its standard python archive (cifar-10-python.tar.gz), read without extracting.

    The archive is read member by member, with bounds on their number and size, so a hostile file
    cannot make it inflate gigabytes.
    """
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels, classes = [], [], []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: dict[str, tarfile.TarInfo] = {}
            for count, member in enumerate(tar):
                if count >= _CIFAR_MAX_MEMBERS or member.size > _CIFAR_MAX_MEMBER_BYTES:
                    raise ValueError(
                        f"{archive} is not CIFAR-10's python archive: it has a member of "
                        f"{member.size:,} bytes or over {_CIFAR_MAX_MEMBERS} members"
                    )
                if member.isfile():
                    members[Path(member.name).name] = member
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{archive} is not CIFAR-10's python archive: it lacks {missing}")
            for name in names:
                data, batch_labels = _cifar_batch(tar, members[name], archive)
                images.append(data)
                labels.extend(batch_labels)
            if "batches.meta" in members:
                meta = _ArraysOnlyUnpickler(
                    io.BytesIO(tar.extractfile(members["batches.meta"]).read()), encoding="bytes"
                ).load()
                names_ = meta.get(b"label_names") if isinstance(meta, dict) else None
                if isinstance(names_, list) and len(names_) == 10 and all(isinstance(c, bytes) for c in names_):
                    classes = [c.decode(errors="replace") for c in names_]
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(
            f"{archive} is not a readable CIFAR-10 python archive ({type(err).__name__}: {err}); download it again"
        ) from None
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


def load_image(path: str | Path, resolution: int | None = None, transform: v2.Compose | None = None) -> torch.Tensor:
    """One image file as a (3, R, R) float tensor in [-1, 1] (resized and centre-cropped). ValueError if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a file cut short or with broken data fails here, not later
            image = torch.from_numpy(_pil_to_uint8(im)).permute(2, 0, 1)
    except Exception as err:  # noqa: BLE001 (PIL's error types for bad files vary by format)
        raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err})") from None
    return (transform or _resize_and_crop(resolution))(image)


class ImageFolderDataset(Dataset):
    """Images in a folder: flat (no labels), or one subfolder per class (labels from folder names).

    Listing reads directory entries only. A file that fails to decode when it is read is replaced by
    the next readable file in the listing (the same one every time, so a resumed run sees what an
    uninterrupted one saw), and counted; the first one is reported in a warning.
    Images are resized (shorter side) and centre-cropped to resolution x resolution.
    """

    def __init__(self, root: str | Path, resolution: int) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        class_dirs = sorted(Path(e.path) for e in os.scandir(root) if e.is_dir())
        per_class = [(d, _list_images(d)) for d in class_dirs]
        per_class = [(d, files) for d, files in per_class if files]
        if per_class:
            self.classes = [d.name for d, _ in per_class]
            self.samples = [(p, label) for label, (_, files) in enumerate(per_class) for p in files]
        else:
            self.classes = []
            self.samples = [(p, 0) for p in _list_images(root)]
        if not self.samples:
            raise ValueError(
                f"no readable images in {root}; put {'/'.join(IMAGE_EXTENSIONS)} files in it "
                f"or in one subfolder per class"
            )
        self.root, self.transform = root, _resize_and_crop(resolution)
        self.unreadable: set[Path] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):  # bounded: at most one pass over the listing
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in self.unreadable:
                continue
            try:
                return load_image(path, transform=self.transform), label
            except ValueError as err:
                if not self.unreadable:
                    warnings.warn(
                        f"skipping an unreadable image, replaced by the next readable one: {err}; "
                        f"further ones are counted at the end"
                    )
                self.unreadable.add(path)
        raise ValueError(f"no readable images in {self.root}: every one of {len(self.samples)} files failed to decode")


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
        raise FileNotFoundError(
            f"--data {data!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing file or folder"
        )
    if path.is_dir():
        return ImageFolderDataset(path, resolution)
    if path.suffix == ".npz":
        return load_npz(path, resolution)
    if path.name.endswith((".tar.gz", ".tgz")):
        return load_cifar10(path, resolution)
    raise ValueError(
        f"--data {data!r}: cannot read {path.suffix or 'this'} files; "
        f"give a folder of images, an .npz file or cifar-10-python.tar.gz"
    )


class StepSampler(Sampler[int]):
    """Dataset indices for one rank, as an endless stream that can start anywhere.

    The global stream is epoch after epoch of a permutation seeded by (seed, epoch). Each step
    takes the next world_size * batch_size positions of it, and rank r reads its slice
    [r * batch_size, (r + 1) * batch_size) of those. So what a step sees depends only on the
    seed and how far the run has read (`start_position`, kept in checkpoints): a resumed run, or
    one with another number of processes and the same global batch, sees the same images.
    (torch's DistributedSampler has the per-epoch seeding and sharding but cannot start mid-epoch.)
    """

    def __init__(
        self, length: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start_position: int = 0
    ) -> None:
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

"""Datasets for training and evaluation, and the sampler that makes runs resumable.

Every dataset yields ((3, R, R) float tensor in [-1, 1], class index) and has `classes` (a list of
class names; empty when the data has no labels). `build_dataset` turns the `--data` argument into
one of them:

    shapes                        the built-in procedural dataset (sagan.shapes), no download
    cifar10                       CIFAR-10's python archive in the data folder (--download fetches it)
    path/to/cifar-10-python.tar.gz  the same archive, given by path
    path/to/file.npz              `images` (N, H, W, 3) uint8 and optional `labels` (N,) ints
    path/to/folder                images (jpg/png/webp/bmp): flat (unconditional) or one subfolder per class
    path/to/images.zip            the same inside a zip, read in place; or stylegan2-ada's dataset_tool zip
                                  (labels from its dataset.json)
    hf:PATH_OR_NAME               a Hugging Face `datasets` dataset (save_to_disk folder, data files, or the
                                  local cache), with --split, --image-column, --label-column
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .config import MAX_CLASSES
from .image_files import ImageFolderDataset, ZipImageDataset, resize_and_crop
from .shapes import ShapesDataset

BUILTIN = ("shapes", "cifar10")


def default_data_dir() -> Path:
    """Where `--data cifar10` looks for (and --download puts) its archive: $SAGAN_DATA or ~/.cache/sagan."""
    return Path(os.environ.get("SAGAN_DATA", Path.home() / ".cache" / "sagan"))


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
        self.transform = resize_and_crop(resolution)

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


def build_dataset(
    data: str,
    resolution: int,
    *,
    seed: int = 0,
    shapes_size: int = 50_000,
    download: bool = False,
    data_dir: str | Path | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = None,
    listing_cache: Path | None = None,
    write_listing: bool = True,
    reuse_listing: bool = True,
) -> Dataset:
    """The dataset that `--data` names (see the module docstring). Errors say what to pass instead.

    split, image_column and label_column are for `hf:` data; a folder's listing is kept in (and read
    from) `listing_cache` when given (see ImageFolderDataset.with_listing_cache).
    """
    if data.startswith("hf:"):
        from .hf_data import HFImageDataset

        return HFImageDataset(data[3:], resolution, split, image_column, label_column)
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
        if listing_cache is not None:
            return ImageFolderDataset.with_listing_cache(path, resolution, listing_cache, write_listing, reuse_listing)
        return ImageFolderDataset(path, resolution)
    if path.suffix == ".npz":
        return load_npz(path, resolution)
    if path.suffix.lower() == ".zip":
        return ZipImageDataset(path, resolution)
    if path.name.endswith((".tar.gz", ".tgz")):
        return load_cifar10(path, resolution)
    raise ValueError(
        f"--data {data!r}: cannot read {path.suffix or 'this'} files; "
        f"give a folder of images, a .zip of images, an .npz file, cifar-10-python.tar.gz or hf:DATASET"
    )


def mirror(images: torch.Tensor, seed: int, position: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Flip images (B, C, H, W) left-right at random: this rank's slice of the global batch at `position`.

    Which images flip depends only on the seed and the position in the data stream (like the data
    order, see StepSampler), so a resumed run, or one with another number of processes, flips the same.
    """
    b = images.shape[0]
    gen = torch.Generator().manual_seed((seed * 1_000_003 + position + 0x5EED) % (2**63))
    flips = (torch.rand(b * world_size, generator=gen) < 0.5)[rank * b : (rank + 1) * b]
    return torch.where(flips.to(images.device)[:, None, None, None], images.flip(-1), images)


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

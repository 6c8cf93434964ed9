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
import json
import os
import pickle
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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
    return (transform or _resize_and_crop(resolution))(image)


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
        self.transform = _resize_and_crop(resolution)
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


class HFImageDataset(ImageFilesDataset):
    """A Hugging Face `datasets` dataset: an image column, and optionally a label column.

    `spec` is a folder written by `save_to_disk`, a folder of data files, or a dataset name in the
    local cache (`HF_DATASETS_OFFLINE=1` keeps it off the network); no loading script ever runs.
    Images are read undecoded and decoded here, so a bad one is skipped like a bad file.
    Labels: a ClassLabel column gives its names; integers 0..K-1 or strings give their sorted values.
    """

    def __init__(self, spec: str, resolution: int, split: str = "train", image_column: str = "image",
                 label_column: str | None = None) -> None:  # fmt: skip
        table = load_hf_table(spec, split)
        columns = table.column_names
        if image_column not in columns:
            raise ValueError(f"hf:{spec} has no column {image_column!r} (it has {columns}); pass --image-column")
        if label_column is not None and label_column not in columns:
            raise ValueError(f"hf:{spec} has no column {label_column!r} (it has {columns}); pass --label-column")
        label_column = label_column or ("label" if "label" in columns else None)
        labels, classes = _hf_labels(table, label_column, spec) if label_column else ([0] * len(table), [])
        try:
            from datasets import Image as ImageFeature

            if isinstance(table.features[image_column], ImageFeature):
                table = table.cast_column(image_column, ImageFeature(decode=False))
        except ImportError:  # pragma: no cover (load_hf_table needs datasets)
            pass
        self.table, self.image_column, self.spec = table, image_column, spec
        super().__init__(list(zip(range(len(table)), labels)), classes, resolution, f"hf:{spec}")

    def open_image(self, key: int) -> str | IO[bytes]:
        value = self.table[key][self.image_column]
        if isinstance(value, dict) and value.get("bytes"):
            return io.BytesIO(value["bytes"])
        if isinstance(value, dict) and value.get("path"):
            return value["path"]
        if isinstance(value, (bytes, bytearray)):
            return io.BytesIO(value)
        if isinstance(value, str):
            return value
        raise ValueError(f"hf:{self.spec} row {key}: {self.image_column!r} holds no image bytes or path")

    def name_of(self, key: int) -> str:
        return f"hf:{self.spec} row {key}"


def load_hf_table(spec: str, split: str) -> Any:
    """One split of a Hugging Face dataset: from `save_to_disk`'s folder, or `load_dataset` (local files / cache)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--data hf:{spec} needs the datasets package: pip install 'sagan-pytorch[hf]'") from None
    folder = Path(spec)
    try:
        if folder.is_dir() and any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
            table = datasets.load_from_disk(str(folder))
            if isinstance(table, datasets.DatasetDict):
                if split not in table:
                    raise ValueError(f"hf:{spec} has splits {sorted(table)}, not {split!r}; pass --split")
                table = table[split]
            return table
        return datasets.load_dataset(spec, split=split)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 (datasets raises its own error types, and OSError / FileNotFoundError)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"--data hf:{spec}: cannot load it ({type(err).__name__}: {first}); give a folder written by "
            f"save_to_disk, a folder of data files, or a dataset name in the local Hugging Face cache"
        ) from None


def _hf_labels(table: Any, column: str, spec: str) -> tuple[list[int], list[str]]:
    """Class indices and names of a label column (ClassLabel names, or the sorted distinct values)."""
    values = table[column]
    names = getattr(table.features[column], "names", None)
    if names:
        return [int(v) for v in values], list(names)
    distinct = set(values)
    kinds = {int if isinstance(v, int) and not isinstance(v, bool) else str if isinstance(v, str) else None
             for v in distinct}  # fmt: skip
    if len(distinct) > MAX_CLASSES or len(kinds) != 1 or None in kinds:
        raise ValueError(
            f"hf:{spec}: labels in {column!r} must be all integers or all strings, at most {MAX_CLASSES:,} of them "
            f"(pass another --label-column, or --unconditional)"
        )
    distinct = sorted(distinct)
    if all(isinstance(v, int) for v in distinct) and distinct == list(range(len(distinct))):
        return list(values), [str(v) for v in distinct]
    index = {v: i for i, v in enumerate(distinct)}
    return [index[v] for v in values], [str(v) for v in distinct]


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

"""Hugging Face `datasets` as training data: `--data hf:PATH_OR_NAME` (the optional extra `hf`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

from .config import MAX_CLASSES
from .image_files import ImageFilesDataset


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

"""Datasets: shapes, image folders, .npz, CIFAR-10 archives, and the resumable sampler."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagan.data import StepSampler, build_dataset, load_cifar10, load_npz
from sagan.shapes import CLASSES, ShapesDataset


# -- shapes ----------------------------------------------------------------------------------------
def test_shapes_is_deterministic_labelled_and_in_range():
    a, b = ShapesDataset(32, size=50, seed=3), ShapesDataset(32, size=50, seed=3)
    assert len(CLASSES) >= 5 and a.num_classes == len(CLASSES)
    for i in (0, 7, 49):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and ya == yb
        assert xa.shape == (3, 32, 32) and xa.min() >= -1 and xa.max() <= 1
    assert not torch.equal(a[0][0], ShapesDataset(32, size=50, seed=4)[0][0])
    assert {a[i][1] for i in range(50)} == set(range(len(CLASSES)))  # every class shows up
    with pytest.raises(IndexError):
        a[50]


@pytest.mark.parametrize("resolution", [12, 20, 64])
def test_shapes_any_resolution(resolution):
    x, _ = ShapesDataset(resolution, size=2)[1]
    assert x.shape == (3, resolution, resolution)


def test_shapes_hold_a_mirrored_pair():
    """The shape and its mirror image: pixels on the shapes equal their mirror pixels exactly."""
    data = ShapesDataset(48, size=40, seed=1)
    for i in range(len(data)):
        x, _ = data[i]
        same = max((x == x.flip(axis)).all(0).float().mean().item() for axis in (1, 2))  # flip rows or columns
        assert same > 0.03, (i, same)
    # and it is not an accident of the images: unrelated pairs do not line up
    x, y = data[0][0], data[1][0]
    assert (x == y.flip(2)).all(0).float().mean() < 0.01


# -- image folders ---------------------------------------------------------------------------------
def _png(path: Path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_flat_folder_is_unconditional_and_resized(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (255, 0, 0))
    Image.new("RGB", (20, 50), (0, 0, 255)).save(tmp_path / "tall.jpg")
    data = build_dataset(str(tmp_path), 16)
    assert len(data) == 4 and data.classes == []
    x, y = data[0]
    assert x.shape == (3, 16, 16) and y == 0
    torch.testing.assert_close(x[0], torch.ones(16, 16))  # red -> +1 in the red channel


def test_class_subfolders_give_labels_and_corrupt_files_are_counted(tmp_path):
    _png(tmp_path / "cats" / "a.png", (0, 255, 0))
    _png(tmp_path / "dogs" / "b.png", (0, 0, 255))
    _png(tmp_path / "dogs" / "c.webp", (0, 0, 255))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = build_dataset(str(tmp_path), 8)  # listing opens no file: broken ones are found when read
        assert data.classes == ["cats", "dogs"] and len(data) == 5 and not caught
        first = [data[i] for i in range(5)]
        again = [data[i] for i in range(5)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipping an unreadable image" in messages[0]  # reported once
    assert len(data.unreadable) == 2  # counted
    # each broken file is replaced by the next readable one in the listing, the same one every time
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    assert [label for _, label in first] == [0, 1, 1, 1, 1]  # cats/a, cats/empty -> dogs/b, dogs/b, broken -> c, c


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no readable images"):
        build_dataset(str(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        build_dataset(str(tmp_path / "nope"), 8)
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        build_dataset("imagenet", 8)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="cannot read .csv files"):
        build_dataset(str(tmp_path / "x.csv"), 8)


# -- npz -------------------------------------------------------------------------------------------
def test_npz_with_and_without_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "l.npz", images=images, labels=np.array([0, 2, 1, 2, 0]))
    np.savez(tmp_path / "u.npz", images=images)
    labelled, plain = build_dataset(str(tmp_path / "l.npz"), 8), build_dataset(str(tmp_path / "u.npz"), 8)
    assert labelled.num_classes == 3 and [labelled[i][1] for i in range(5)] == [0, 2, 1, 2, 0]
    assert plain.num_classes == 0 and plain[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pictures": np.zeros((2, 4, 4, 3), np.uint8)}, "has no 'images' array"),
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "uint8"),
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "\\(N, H, W, 3\\)"),
        ({"images": np.zeros((0, 4, 4, 3), np.uint8)}, "holds no images"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0, -1])}, "non-negative"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "bad.npz", 8)


def test_corrupt_npz(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "c.npz", 8)


# -- CIFAR-10 --------------------------------------------------------------------------------------
def _cifar_archive(path: Path, per_batch: int = 4, extra: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj) -> None:
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(
                name,
                {
                    b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    b"labels": rng.integers(0, 10, per_batch).tolist(),
                },
            )
        add("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
        for name, obj in (extra or {}).items():
            add(name, obj)
    return path


def test_cifar10_archive_is_read_without_extracting(tmp_path):
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    data = build_dataset(str(archive), 32)
    assert len(data) == 20 and data.num_classes == 10 and data.classes[3] == "class3"
    assert data[0][0].shape == (3, 32, 32)
    assert len(load_cifar10(archive, 16, split="test")) == 4


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)]:
            payload = pickle.dumps({b"data": _RunsCode(), b"labels": []}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="refusing to unpickle posix.system|refusing to unpickle os.system"):
        load_cifar10(archive, 32)


def test_cifar10_missing_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        build_dataset("cifar10", 32, data_dir=tmp_path)


# -- sampler ---------------------------------------------------------------------------------------
def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_resumes_mid_stream_and_splits_the_global_batch():
    whole = _take(StepSampler(10, batch_size=4, seed=1), 40)  # 4 epochs of 10
    assert sorted(whole[:10]) == list(range(10)) and whole[:10] != whole[10:20]  # each epoch a new permutation
    assert _take(StepSampler(10, batch_size=4, seed=1, start_position=12), 8) == whole[12:20]
    ranks = [_take(StepSampler(10, batch_size=2, seed=1, rank=r, world_size=2), 6) for r in range(2)]
    for b in range(3):  # batch b of the two ranks together = global batch b of one process with batch 4
        assert ranks[0][2 * b : 2 * b + 2] + ranks[1][2 * b : 2 * b + 2] == whole[4 * b : 4 * b + 4]

"""Data in: zip files (plain and stylegan2-ada's), Hugging Face datasets, --mirror, and the run's listing cache."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from runs import tiny_flags

from sagan.cli import main
from sagan.data import build_dataset, mirror
from sagan.image_files import ZipImageDataset

COLOURS = {"cats": (0, 255, 0), "dogs": (0, 0, 255)}


def _png_bytes(colour, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_with_class_folders_gives_labels_looking_through_a_wrapping_folder(tmp_path):
    members = {f"pets/{c}/{i}.png": _png_bytes(colour) for c, colour in COLOURS.items() for i in range(3)}
    members["pets/readme.txt"] = b"not an image"
    members["pets/dogs/broken.png"] = b"\x89PNG\r\n\x1a\n garbage"
    data = build_dataset(str(_zip(tmp_path / "pets.zip", members)), 8)
    assert isinstance(data, ZipImageDataset) and data.classes == ["cats", "dogs"] and len(data) == 7
    with pytest.warns(UserWarning, match="pets.zip:pets/dogs/broken.png"):
        items = [data[i] for i in range(len(data))]
    assert [y for _, y in items] == [0, 0, 0, 1, 1, 1, 0]  # the broken one (last) replaced by the next: the first
    torch.testing.assert_close(items[0][0][1], torch.ones(8, 8))  # green cats
    torch.testing.assert_close(items[3][0][2], torch.ones(8, 8))  # blue dogs
    assert len(data.unreadable) == 1


def test_a_flat_zip_is_unconditional_and_a_stylegan2_ada_zip_takes_its_labels(tmp_path):
    flat = build_dataset(str(_zip(tmp_path / "flat.zip", {f"{i}.png": _png_bytes((9, 9, 9)) for i in range(4)})), 8)
    assert flat.classes == [] and len(flat) == 4
    # dataset_tool's layout: 1000 images per folder, labels in dataset.json (the folders are not classes)
    names = [f"00000/img{i:08d}.png" for i in range(4)] + ["00001/img00001000.png"]
    members = {n: _png_bytes((255, 0, 0)) for n in names}
    members["dataset.json"] = json.dumps({"labels": [[n, i % 3] for i, n in enumerate(names)]}).encode()
    data = build_dataset(str(_zip(tmp_path / "ada.zip", members)), 8)
    assert data.classes == ["0", "1", "2"] and [data[i][1] for i in range(5)] == [0, 1, 2, 0, 1]
    members["dataset.json"] = json.dumps({"labels": None}).encode()
    assert build_dataset(str(_zip(tmp_path / "ada-none.zip", members)), 8).classes == []


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"dataset.json": b"[1, 2]", "a.png": _png_bytes((1, 1, 1))}, "dataset.json is not stylegan2-ada's form"),
        ({"dataset.json": b'{"labels": [["a.png", -1]]}', "a.png": _png_bytes((1, 1, 1))}, "stylegan2-ada's form"),
        ({"notes.txt": b"hello"}, "no readable images in"),
    ],
)
def test_zip_errors_are_one_clear_line(tmp_path, members, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(str(_zip(tmp_path / "x.zip", members)), 8)


def test_a_damaged_zip_is_refused(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a readable zip file"):
        build_dataset(str(tmp_path / "bad.zip"), 8)


def test_zip_data_trains_with_workers_and_resumes_exactly(tmp_path):
    members = {f"{c}/{i}.png": _png_bytes(colour, (40, 30)) for c, colour in COLOURS.items() for i in range(6)}
    data = str(_zip(tmp_path / "pets.zip", members))
    flags = ["--data", data, "--num-workers", "1", "--checkpoint-every", "2", "--sample-every", "100", *tiny_flags()]
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "straight"), *flags]) == 0
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "split"), *flags]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "4"]) == 0
    from test_training import _assert_same_weights

    _assert_same_weights(tmp_path / "straight", tmp_path / "split")
    assert json.loads((tmp_path / "split" / "config.json").read_text())["classes"] == ["cats", "dogs"]


# -- Hugging Face datasets --------------------------------------------------------------------------
datasets = pytest.importorskip("datasets", reason="the hf extra is not installed (pip install 'sagan-pytorch[hf]')")


def _hf_dataset(n: int = 6, label_kind: str = "classlabel"):
    images = [Image.new("RGB", (12, 10), (0, 255, 0) if i % 2 == 0 else (0, 0, 255)) for i in range(n)]
    features = {"img": datasets.Image()}
    if label_kind == "classlabel":
        features["kind"] = datasets.ClassLabel(names=["green", "blue"])
        labels = [i % 2 for i in range(n)]
    else:
        features["kind"] = datasets.Value("string")
        labels = ["green" if i % 2 == 0 else "blue" for i in range(n)]
    return datasets.Dataset.from_dict({"img": images, "kind": labels}, features=datasets.Features(features))


def test_a_saved_hf_dataset_with_class_labels(tmp_path):
    datasets.DatasetDict({"train": _hf_dataset(), "test": _hf_dataset(2)}).save_to_disk(str(tmp_path / "ds"))
    data = build_dataset(f"hf:{tmp_path / 'ds'}", 8, image_column="img", label_column="kind")
    assert data.classes == ["green", "blue"] and len(data) == 6
    x, y = data[1]
    assert x.shape == (3, 8, 8) and y == 1
    torch.testing.assert_close(x[2], torch.ones(8, 8))  # blue
    assert len(build_dataset(f"hf:{tmp_path / 'ds'}", 8, split="test", image_column="img")) == 2
    assert build_dataset(f"hf:{tmp_path / 'ds'}", 8, split="test", image_column="img").classes == []  # no `label`
    for kwargs, message in [
        ({"split": "validation", "image_column": "img"}, r"has splits \['test', 'train'\], not 'validation'"),
        ({}, "has no column 'image'.*--image-column"),
        ({"image_column": "img", "label_column": "y"}, "has no column 'y'.*--label-column"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_dataset(f"hf:{tmp_path / 'ds'}", 8, **kwargs)
    with pytest.raises(ValueError, match="cannot load it"):
        build_dataset(f"hf:{tmp_path / 'nothing-here'}", 8)


def test_hf_data_files_with_string_labels_train_and_evaluate_from_the_cli(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "parquet"
    folder.mkdir()
    _hf_dataset(8, label_kind="string").to_parquet(str(folder / "train-00000.parquet"))
    data = build_dataset(f"hf:{folder}", 8, image_column="img", label_column="kind")
    assert data.classes == ["blue", "green"] and [data[i][1] for i in range(4)] == [1, 0, 1, 0]
    out = tmp_path / "run"
    argv = ["train", "--data", f"hf:{folder}", "--image-column", "img", "--label-column", "kind", "--steps", "2"]
    assert main([*argv, "--out", str(out), "--sample-every", "100", *tiny_flags()]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["blue", "green"] and config["train"]["image_column"] == "img"
    # eval reads the run's data with the run's columns
    assert main(["eval", str(out), "--n", "4", "--metrics", "fid", "--inception-weights", inception_weights]) == 0


# -- --mirror -------------------------------------------------------------------------------------
def test_mirror_flips_about_half_deterministically_and_alike_for_any_number_of_processes():
    images = torch.arange(2 * 8 * 3 * 2 * 4, dtype=torch.float32).reshape(16, 3, 2, 4)
    out = mirror(images, seed=1, position=32)
    flipped = [not torch.equal(a, b) for a, b in zip(out, images)]
    assert all(torch.equal(o, i.flip(-1)) for o, i, f in zip(out, images, flipped) if f)
    assert 3 <= sum(flipped) <= 13
    assert torch.equal(mirror(images, seed=1, position=32), out)
    assert not torch.equal(mirror(images, seed=1, position=48), out)
    halves = [mirror(images[r * 8 : (r + 1) * 8], seed=1, position=32, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), out)  # two ranks flip what one process flips


def test_a_mirrored_run_resumes_exactly_and_differs_from_an_unmirrored_one(tmp_path):
    from test_training import _assert_same_weights

    flags = ["--mirror", "--checkpoint-every", "2", "--sample-every", "100", *tiny_flags()]
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "straight"), *flags]) == 0
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "split"), *flags]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "4"]) == 0
    _assert_same_weights(tmp_path / "straight", tmp_path / "split")
    plain = flags[1:]
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "plain"), *plain]) == 0
    # D saw other real images: its scores of them differ (the weights may not yet: hinge saturates early)
    d_real = [[json.loads(x)["d_real"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("straight", "plain")]  # fmt: skip
    assert d_real[0] != d_real[1]


# -- the listing cache -----------------------------------------------------------------------------
def test_a_run_keeps_its_folder_listing_and_resumes_on_it(tmp_path):
    folder = tmp_path / "images"
    for c, colour in COLOURS.items():
        for i in range(4):
            (folder / c).mkdir(parents=True, exist_ok=True)
            (folder / c / f"{i}.png").write_bytes(_png_bytes(colour))
    run = tmp_path / "run"
    flags = ["--data", str(folder), "--checkpoint-every", "2", "--sample-every", "100", *tiny_flags()]
    assert main(["train", "--steps", "2", "--out", str(run), *flags]) == 0
    listing = json.loads((run / "listing.json").read_text())
    assert listing["classes"] == ["cats", "dogs"] and len(listing["files"]) == 8
    assert listing["files"][0] == ["cats/0.png", 0] and listing["root"] == str(folder.resolve())
    (folder / "cats" / "new.png").write_bytes(_png_bytes((1, 2, 3)))  # added after the run started
    (folder / "dogs" / "3.png").unlink()  # and one removed
    with pytest.warns(UserWarning, match="unreadable image"):
        assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    assert len(json.loads((run / "listing.json").read_text())["files"]) == 8  # the run's own listing, unchanged
    from sagan.image_files import ImageFolderDataset

    fresh = ImageFolderDataset.with_listing_cache(folder, 8, run / "listing.json", write=False)
    assert len(fresh) == 8  # the cached listing, not the folder's 8 files now (one new, one gone)
    other = ImageFolderDataset.with_listing_cache(folder / "cats", 8, run / "listing.json", write=False)
    assert len(other) == 5 and other.classes == []  # a cache of another folder is ignored
    fresh_run = ImageFolderDataset.with_listing_cache(folder, 8, run / "listing.json", write=False, reuse=False)
    assert "new.png" in {p.name for p, _ in fresh_run.samples}  # listed anew
    (run / "listing.json").write_text("{not json")
    assert len(ImageFolderDataset.with_listing_cache(folder, 8, run / "listing.json", write=False)) == 8


def test_hf_labels_that_are_not_all_integers_or_all_strings_are_one_line(tmp_path):
    images = [Image.new("RGB", (8, 8)) for _ in range(3)]
    for i, labels in enumerate(([0, None, 1], [0.5, 1.5, 2.5])):  # arrow columns hold one type (or nulls)
        datasets.Dataset.from_dict({"image": images, "y": labels}).save_to_disk(str(tmp_path / f"ds{i}"))
        with pytest.raises(ValueError, match="must be all integers or all strings"):
            build_dataset(f"hf:{tmp_path / f'ds{i}'}", 8, label_column="y")

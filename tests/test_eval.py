"""sagan eval / attention / plot / export, offline: Inception weights come from the test itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagan import Generator
from sagan.cli import main
from sagan.metrics import evaluate_generator
from sagan.shapes import ShapesDataset


class _Replay(torch.nn.Module):
    """A 'generator' that returns given images in order: lets FID compare two known sets."""

    z_dim, num_classes = 4, 0

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images, self.next = images, 0

    def forward(self, z, y=None):
        out = self.images[self.next : self.next + len(z)]
        self.next += len(z)
        return out


def _dataset_images(n: int, seed: int = 0) -> torch.Tensor:
    data = ShapesDataset(32, size=n, seed=seed)
    return torch.stack([data[i][0] for i in range(n)])


def test_fid_is_zero_for_identical_sets_and_larger_for_different_ones(inception_weights):
    n = 24
    real = ShapesDataset(32, size=n, seed=0)
    same = torch.stack([real[i][0] for i in torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()])
    identical = evaluate_generator(_Replay(same), real, n=n, metrics="fid,kid", inception_weights=inception_weights)
    noise = evaluate_generator(
        _Replay(torch.rand(n, 3, 32, 32) * 2 - 1), real, n=n, metrics="fid,kid,is", inception_weights=inception_weights
    )
    print(identical, noise)
    assert abs(identical["fid"]) < 1e-3 and noise["fid"] > 1.0
    # KID is an unbiased estimate over random subsets: ~0 with some spread for equal sets
    assert noise["kid"] > 3 * abs(identical["kid"])
    assert noise["is"] >= 1.0 and set(noise) == {"fid", "kid", "kid_std", "is", "is_std"}


def test_precision_and_recall_of_a_set_against_itself_and_against_noise(inception_weights):
    n = 24
    real = ShapesDataset(32, size=n, seed=0)
    same = torch.stack([real[i][0] for i in torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()])
    identical = evaluate_generator(_Replay(same), real, n=n, metrics="prc", inception_weights=inception_weights)
    assert identical["precision"] == 1.0 and identical["recall"] == 1.0  # every sample lies in the other set's manifold
    assert set(identical) == {"precision", "recall", "f_score"}


def test_eval_command_prints_and_logs(tiny_run, inception_weights, capsys):
    assert (
        main(["eval", tiny_run, "--n", "16", "--metrics", "fid,is,kid", "--inception-weights", inception_weights]) == 0
    )
    out = capsys.readouterr().out
    assert "step 6, 16 samples: FID" in out and "IS" in out and "KID" in out
    last = json.loads((Path(tiny_run) / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["eval_n"] == 16 and set(last["eval"]) >= {"fid", "is", "kid"}
    assert list((Path(tiny_run) / "fidelity-cache").glob("sagan-real-*.pt"))  # kept with the run for the next one


def test_inception_weights_from_the_environment_and_bad_files(
    tiny_run, inception_weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    assert main(["eval", tiny_run, "--n", "4", "--metrics", "fid"]) == 2
    assert "missing.pth do not exist" in capsys.readouterr().err
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    assert main(["eval", tiny_run, "--n", "4", "--inception-weights", str(tmp_path / "other.pth")]) == 2
    assert "not an Inception-v3 state dict" in capsys.readouterr().err
    assert main(["eval", tiny_run, "--n", "4", "--metrics", "fid,lpips"]) == 2
    assert "choose from fid,is,kid" in capsys.readouterr().err


def test_offline_without_weights_says_where_to_put_them(tiny_run, tmp_path, monkeypatch, capsys):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["eval", tiny_run, "--n", "4", "--metrics", "fid"]) == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and str(tmp_path / "hub" / "checkpoints") in err
    assert "--inception-weights" in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("error:removing")  # a cache file we wrote must read back
def test_train_with_eval_every_keeps_best_by_fid(tmp_path, inception_weights, monkeypatch):
    import sagan.metrics

    reads = []
    read = sagan.metrics._AsUint8.__getitem__
    monkeypatch.setattr(sagan.metrics._AsUint8, "__getitem__", lambda self, i: reads.append(i) or read(self, i))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--steps",
                "4",
                "--out",
                str(run),
                "--batch-size",
                "8",
                "--ch",
                "8",
                "--quiet",
                "--data-size",
                "32",
                "--eval-every",
                "2",
                "--eval-n",
                "12",
                "--inception-weights",
                inception_weights,
                "--sample-every",
                "100",
                "--checkpoint-every",
                "100",
            ]
        )
        == 0
    )
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval" in x]
    assert [e["step"] for e in evals] == [2, 4] and all("fid" in e["eval"] for e in evals)
    # the real images' features: computed at the first evaluation (12 images, and torch-fidelity's probe of
    # the first), then read from the run's cache: the second evaluation reads no real image
    assert 12 <= len(reads) <= 13
    assert list((run / "fidelity-cache").glob("sagan-real-*.pt"))
    from sagan.checkpoint import load_checkpoint

    best = load_checkpoint(run / "best.pt")
    assert best["best_fid"] == min(e["eval"]["fid"] for e in evals)
    assert best["step"] == min(evals, key=lambda e: e["eval"]["fid"])["step"]


def test_attention_picture_for_g_and_d(tiny_run, tmp_path):
    out = tmp_path / "attn.png"
    assert (
        main(["attention", tiny_run, "--points", "4,4;27,27", "--layer", "G.attn16", "--class", "1", "--out", str(out)])
        == 0
    )
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    panel = 192
    assert picture.shape == (panel, 3 * panel + 2 * 4, 3)  # image + one overlay per point
    first, second = picture[:, panel + 4 : 2 * panel + 4], picture[:, 2 * panel + 8 :]
    assert np.abs(first - second).mean() > 1.0  # different query points, different maps
    real = tmp_path / "real.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(real)
    assert (
        main(["attention", tiny_run, "--layer", "D.attn16", "--image", str(real), "--out", str(tmp_path / "d.png")])
        == 0
    )
    assert Image.open(tmp_path / "d.png").size == (5 * panel + 4 * 4, panel)  # four default points
    assert main(["attention", tiny_run, "--layer", "G.attn8", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["attention", tiny_run, "--points", "40,1", "--out", str(tmp_path / "x.png")]) == 2


def test_plot_curves(tiny_run, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", tiny_run, "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 1000 and height > 300
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 2


def test_export_and_from_pretrained(tiny_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", tiny_run, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    G = Generator.from_pretrained(str(out))
    from sagan.checkpoint import load_generator

    reference, _ = load_generator(tiny_run)
    z, y = torch.randn(3, 128), torch.tensor([0, 1, 5])
    assert torch.equal(G(z, y), reference(z, y))
    raw = (out / "model.safetensors").read_bytes()
    assert b"\x80\x02" not in raw[:16]  # safetensors: a JSON header and raw bytes, no pickle
    with pytest.raises(FileNotFoundError, match="sagan export"):
        Generator.from_pretrained(str(tmp_path))


def test_onnx_export_runs_in_onnxruntime(tiny_run, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'sagan-pytorch[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = tmp_path / "export"
    assert main(["export", tiny_run, "--out", str(out), "--onnx"]) == 0
    G = Generator.from_pretrained(str(out))
    session = ort.InferenceSession(str(out / "generator.onnx"))
    z, y = torch.randn(3, 128), torch.tensor([0, 2, 4])
    (image,) = session.run(None, {"z": z.numpy(), "y": y.numpy()})
    np.testing.assert_allclose(image, G(z, y).detach().numpy(), atol=1e-4)

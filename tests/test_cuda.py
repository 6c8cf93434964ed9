"""The CUDA paths: training in bf16 and fp16 (with its grad scaler), channels-last, pinned memory, resume.

Skipped without a GPU; `python benchmarks/gpu_check.py` runs them on one, with the DDP and speed rows.
The logic they share with the CPU (collectives on the run's device, precision choice) is tested
on the CPU in test_promises.py and below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from runs import tiny_flags

from sagan.checkpoint import load_latest
from sagan.cli import main
from sagan.runtime import Precision

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = tiny_flags(batch_size=8, device="cuda")


def test_precision_choice_follows_the_device():
    cpu = torch.device("cpu")
    assert Precision.choose("auto", cpu).dtype is None and Precision.choose("bf16", cpu).dtype == torch.bfloat16
    fp16 = Precision.choose("fp16", cpu)
    assert fp16.dtype == torch.float16 and fp16.scaler().is_enabled()
    assert not Precision.choose("bf16", cpu).scaler().is_enabled()  # bf16 has fp32's range: no scaling


@CUDA
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_on_cuda_is_finite_and_writes_its_files(tmp_path, amp):
    run = tmp_path / amp
    assert main(["train", "--steps", "4", "--out", str(run), "--checkpoint-every", "2", "--amp", amp, *TINY]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in records)
    state = load_latest(run)[1]
    assert state["config"]["amp"] == amp and ("G" in state["scaler"]) and state["rng"]["cuda"].numel() > 0


@CUDA
def test_cuda_resume_restores_the_cuda_rng(tmp_path):
    common = ["--checkpoint-every", "2", "--sample-every", "100", *TINY]
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "b"), *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "4", "--quiet"]) == 0
    a, b = load_latest(tmp_path / "a")[1]["rng"], load_latest(tmp_path / "b")[1]["rng"]
    assert (
        torch.equal(a["cuda"], b["cuda"])
        and torch.equal(a["torch"], b["torch"])
        and torch.equal(a["noise"], b["noise"])
    )


@CUDA
def test_cuda_sample_and_export_round_trip(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--out", str(run), *TINY]) == 0
    assert main(["sample", str(run), "--n", "4", "--device", "cuda", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    from sagan import Generator

    G = Generator.from_pretrained(str(tmp_path / "export")).cuda()
    assert (
        Path(tmp_path / "g.png").is_file()
        and G(torch.randn(2, 128, device="cuda"), torch.tensor([0, 1], device="cuda")).is_cuda
    )

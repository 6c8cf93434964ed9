"""The README's promises under attack: one test per class of hole that an outside attack found.

Each test drives the program as a hostile user would (the CLI where it can) and asserts the
promise: no code from a file runs, nothing non-finite is saved, a broken image does not end a
run, one process per run directory, one line for a full disk, bounded work for tiny inputs,
one line for malformed input, collectives in step, resume restores every RNG.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runs import tiny_flags, torchrun

from sagan import checkpoint
from sagan.checkpoint import list_checkpoints, load_checkpoint, load_latest
from sagan.cli import main

TINY = tiny_flags()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if not x.startswith("sagan: warning")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. no file is unpickled with code in it, by us or by a dependency on our behalf ----------------
class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path, wrap=lambda e: {"payload": e}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(_Exploit(marker)), path)
    return path


def test_no_file_we_read_runs_code(tiny_run, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    evil = _plant(tmp_path / "evil.pth", marker)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # torch hub's folder, where the README sends users
    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)
    from sagan.metrics import INCEPTION_FILE

    _plant(tmp_path / "torch-home" / "hub" / "checkpoints" / INCEPTION_FILE, marker)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _plant(
        run / "best.pt",
        marker,
        lambda e: {"format_version": 2, "step": 1, "config": e, "model_config": {}, "G": {}, "D": {}, "G_ema": {}},
    )
    export = tmp_path / "export"
    assert main(["export", tiny_run, "--out", str(export)]) == 0
    _plant(export / "model.safetensors", marker)
    np.save(tmp_path / "objects.npy", np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    with open(tmp_path / "objects.npz", "wb") as fh:  # an npz whose images are an object array
        np.savez(fh, images=np.array([_Exploit(marker)], dtype=object))
    cifar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(cifar, "w:gz") as tar:
        data = pickle.dumps({b"data": _Exploit(marker), b"labels": [0]})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    attempts = [
        ["eval", tiny_run, "--n", "4"],  # the hub folder
        ["eval", tiny_run, "--n", "4", "--inception-weights", str(evil)],  # the flag
        ["sample", str(run / "best.pt")],
        ["sample", str(_plant(tmp_path / "r2" / "checkpoint-00000001.pt", marker))],
        ["sample", str(export)],
        ["train", "--data", str(tmp_path / "objects.npz"), "--steps", "1", "--out", str(tmp_path / "o1"), *TINY],
        ["train", "--data", str(cifar), "--steps", "1", "--out", str(tmp_path / "o2"), *TINY],
    ]
    for argv in attempts:
        assert main(argv) == 2, argv
        _one_line(capsys)
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(evil))  # the environment variable
    assert main(["eval", tiny_run, "--n", "4"]) == 2
    _one_line(capsys)
    assert not marker.exists()


def test_torch_fidelity_never_unpickles_a_file_for_us(tiny_run, inception_weights, monkeypatch):
    """Our one read is tensors-only; what torch-fidelity loads is the tensors we hand it, tensors-only too."""
    calls = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == "1"
        calls.append((isinstance(f, (str, os.PathLike)), kwargs.get("weights_only"), forced))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert main(["eval", tiny_run, "--n", "4", "--metrics", "fid", "--inception-weights", inception_weights]) == 0
    files = [c for c in calls if c[0]]
    assert files and all(weights_only is True for _, weights_only, _ in files), calls  # every file: tensors only
    assert all(weights_only is True or forced for _, weights_only, forced in calls), calls


# -- 2. nothing non-finite is saved --------------------------------------------------------------
def _poison_after(monkeypatch, calls: int) -> None:
    """Make every weight Inf after the `calls`-th optimiser step (what --lr-g inf did), losses still finite."""
    real_step = torch.optim.Adam.step
    seen = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        seen["n"] += 1
        if seen["n"] == calls:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)


def _all_finite(path: Path) -> bool:
    state = load_checkpoint(path)
    return all(torch.isfinite(v).all() for k in ("G", "D", "G_ema") for v in state[k].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "flag, value", [("--lr-g", "inf"), ("--lr-d", "nan"), ("--ema-decay", "nan"), ("--beta2", "inf")]
)
def test_float_flags_refuse_inf_and_nan(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag, value])
    assert exit_info.value.code == 2 and flag in _one_line(capsys)


def test_weights_that_became_inf_are_never_saved(tmp_path, monkeypatch, capsys):
    _poison_after(monkeypatch, 2)  # the G step of step 1: its losses were finite
    run = tmp_path / "one"
    assert main(["train", "--steps", "1", "--checkpoint-every", "1", "--out", str(run), *TINY]) == 1
    assert "no checkpoint was saved" in _one_line(capsys) and not list_checkpoints(run)
    monkeypatch.undo()
    _poison_after(monkeypatch, 4)  # the G step of step 2
    run = tmp_path / "three"
    assert main(["train", "--steps", "3", "--checkpoint-every", "1", "--out", str(run), *TINY]) == 1
    assert "the last good checkpoint is" in (line := _one_line(capsys)) and "checkpoint-00000001.pt" in line
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000001.pt"] and _all_finite(
        run / "checkpoint-00000001.pt"
    )


def test_export_refuses_non_finite_weights(tmp_path):
    from sagan import Generator
    from sagan.export import export_generator

    G = Generator(32, ch=8)
    with torch.no_grad():
        G.out_conv.bias.fill_(math.nan)
    with pytest.raises(ValueError, match="NaN or Inf"):
        export_generator(G, tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


# -- 3. an image that fails to decode does not end the run ----------------------------------------
def _png_with_broken_zlib(path: Path) -> None:
    """A PNG whose chunks all have valid CRCs but whose IDAT is not zlib data: verify() passes, decoding fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data at all") + chunk(b"IEND", b"")
    )


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (root / "a" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _png_with_broken_zlib(root / "b" / "zlib.png")
    for path in (root / "a" / "cut.jpg", root / "b" / "zlib.png"):  # both pass the listing-time check of old
        with Image.open(path) as im:
            im.verify()
    return root


def test_images_that_fail_to_decode_are_replaced_and_resume_stays_exact(tmp_path):
    data = str(_image_folder(tmp_path / "images"))
    common = ["--data", data, "--checkpoint-every", "3", "--sample-every", "100", *tiny_flags()]
    with pytest.warns(UserWarning, match="skipping an unreadable image"):
        assert main(["train", "--steps", "6", "--out", str(tmp_path / "straight"), *common]) == 0
    assert main(["train", "--steps", "3", "--out", str(tmp_path / "split"), *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "6", "--quiet"]) == 0
    a, b = load_latest(tmp_path / "straight")[1], load_latest(tmp_path / "split")[1]
    for net in ("G", "D", "G_ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from sagan.image_files import load_image

    gray = np.full((8, 8), 32768, dtype=np.uint16)  # half of the 16-bit range
    Image.fromarray(gray).save(tmp_path / "half.png")
    assert Image.open(tmp_path / "half.png").mode.startswith("I")
    image = load_image(tmp_path / "half.png", 8)
    assert torch.allclose(image, torch.full_like(image, 128 / 255 * 2 - 1), atol=1e-6)


# -- 4. one live process per run directory --------------------------------------------------------
def test_a_second_process_in_a_run_directory_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagan",
            "train",
            "--steps",
            "100000",
            "--checkpoint-every",
            "100000",
            "--out",
            str(run),
            *TINY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert main(["train", "--steps", "2", "--out", str(run), *TINY]) == 2
        assert "in use by process" in _one_line(capsys)
    finally:
        first.kill()  # kill -9: the OS drops the lock with the process
        first.wait(timeout=60)
    assert main(["train", "--steps", "2", "--out", str(run), *TINY]) == 0


# -- 5. a full disk is one line and exit 2 --------------------------------------------------------
def test_disk_full_as_torch_reports_it_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def full(obj, fh, *args, **kwargs):  # what torch.save raises on ENOSPC: a RuntimeError with no errno
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(checkpoint.torch, "save", full)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--checkpoint-every", "1", *TINY]) == 2
    line = _one_line(capsys)
    assert str(run) in line and "No space left on device" in line


def test_disk_full_while_writing_a_sample_grid_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from sagan import viz

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(viz, "atomic_write", full)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--sample-every", "1", *TINY]) == 2
    line = _one_line(capsys)
    assert "No space left on device" in line and str(run) in line


# -- 6. bounded work for tiny inputs --------------------------------------------------------------
def test_a_tiny_truncation_is_one_draw(tiny_run, tmp_path):
    from sagan.sampling import sample_noise

    z = sample_noise(1000, 128, torch.Generator().manual_seed(0), truncation=1e-6)
    assert z.abs().max() <= 1e-6 and z.std() > 1e-7
    started = time.time()
    assert main(["sample", tiny_run, "--truncation", "1e-6", "--n", "8", "--out", str(tmp_path / "t.png")]) == 0
    assert time.time() - started < 30


def _resaved(tiny_run: str, tmp_path: Path, name: str, change) -> Path:
    state = load_checkpoint(max(Path(tiny_run).glob("checkpoint-*.pt")))
    change(state)
    path = tmp_path / name / "checkpoint-00000001.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("wide", lambda s: s["model_config"]["generator"].update(ch=1500), "do not fit"),
        (
            "classes",
            lambda s: (
                s["model_config"]["generator"].update(num_classes=10**8),
                s["model_config"]["discriminator"].update(num_classes=10**8),
            ),
            "at most 100,000",
        ),
        ("list", lambda s: s.update(config=[1, 2]), "not a mapping"),
        ("extra", lambda s: s["config"].update(wings=2), "unknown config field"),
        ("negative", lambda s: s["model_config"]["generator"].update(ch=-4), "must be at least 1"),
        ("type", lambda s: s["model_config"]["generator"].update(z_dim="128"), "should be of type"),
    ],
)
def test_a_hostile_checkpoint_is_refused_before_anything_is_built(tiny_run, tmp_path, capsys, name, change, message):
    path = _resaved(tiny_run, tmp_path, name, change)
    started = time.time()
    assert main(["sample", str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert message in _one_line(capsys) and time.time() - started < 30


def test_tiny_data_files_cannot_ask_for_huge_work(tmp_path, capsys):
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 10**8]))
    assert (
        main(["train", "--data", str(tmp_path / "labels.npz"), "--steps", "1", "--out", str(tmp_path / "a"), *TINY])
        == 2
    )
    assert "100,000 classes" in _one_line(capsys)
    bomb = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:  # a member that inflates to 100 MB
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 100 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 2**20
    started = time.time()
    assert main(["train", "--data", str(bomb), "--steps", "1", "--out", str(tmp_path / "b"), *TINY]) == 2
    assert "not CIFAR-10" in _one_line(capsys) and time.time() - started < 20


# -- 7. one line for malformed input, checked where it enters -------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "RUN", "--n", "1000000000000"], "--n"),
        (["sample", "RUN", "--device", "meta"], "cpu or cuda"),
        (["train", "--data-size", "1e15"], "--data-size"),
        (["train", "--data-size", "1000000000000000"], "--data-size"),
        (["info", "32", "--ch", "100000"], "--ch"),
        (["train", "--eval-every", "2", "--inception-weights", "/no/such/file", "--steps", "4"], "/no/such/file"),
        (["train", "--eval-every", "2", "--eval-n", "1", "--steps", "4"], "--eval-n"),
    ],
)
def test_bad_flags_are_one_line_before_any_work(argv, message, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [tiny_run if a == "RUN" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2 and message in _one_line(capsys)
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_cifar_batch_of_the_wrong_type_is_one_line(tmp_path, capsys):
    cifar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(cifar, "w:gz") as tar:
        for i in range(1, 6):
            data = pickle.dumps({b"data": [1, 2, 3], b"labels": "x"})
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(["train", "--data", str(cifar), "--steps", "1", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "not a CIFAR-10 batch" in _one_line(capsys)


def test_a_metrics_line_of_the_wrong_type_does_not_stop_a_resume(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('[1, 2]\n{"step": "seven"}\n"text"\n')
    assert main(["train", "--resume", str(run), "--steps", "7", "--quiet"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 7 and all(isinstance(s, int) for s in steps)


def test_an_unexpected_error_is_one_line_and_exit_1(tiny_run, monkeypatch, capsys):
    import sagan.sampling

    monkeypatch.setattr(sagan.sampling, "draw_inputs", lambda *a, **k: {}["boom"])
    monkeypatch.delenv("SAGAN_DEBUG", raising=False)
    assert main(["sample", tiny_run, "--n", "2", "--out", os.devnull]) == 1
    line = _one_line(capsys)
    assert "internal error: KeyError" in line and "SAGAN_DEBUG=1" in line


# -- 8. collectives: same order on every rank, tensors on the run's device -----------------------
def test_collectives_use_the_runs_device(monkeypatch):
    import torch.distributed as dist

    from sagan.distributed import Distributed, any_rank

    seen = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: seen.append(t.device))
    ctx = Distributed(rank=0, world_size=2, device=torch.device("meta"))  # stands for cuda:N: not the CPU
    try:
        any_rank(True, ctx)
    except (NotImplementedError, RuntimeError):
        pass  # reading a meta tensor's value fails: the device the collective got is what is checked
    assert seen == [torch.device("meta")]


def test_two_ranks_with_eval_every_run_to_the_end(tmp_path, inception_weights):
    run = tmp_path / "run"
    flags = f"--steps 4 --eval-every 2 --eval-n 8 --checkpoint-every 2 --device cpu --out {run}".split()
    proc = torchrun(*flags, "--inception-weights", inception_weights, *tiny_flags())
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and (run / "best.pt").is_file()


# -- 9. resume restores the global RNG ------------------------------------------------------------
def test_the_global_rng_after_resume_equals_the_uninterrupted_runs(tmp_path):
    common = TINY + ["--checkpoint-every", "3", "--sample-every", "100"]
    assert main(["train", "--steps", "6", "--out", str(tmp_path / "straight"), *common]) == 0
    assert main(["train", "--steps", "3", "--out", str(tmp_path / "split"), *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "6", "--quiet"]) == 0
    a, b = load_latest(tmp_path / "straight")[1]["rng"], load_latest(tmp_path / "split")[1]["rng"]
    assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["noise"], b["noise"])


def test_rank_synchronised_batch_norm_stays_on_the_nets_device():
    """The all-reduce BN replaces BatchNorm2d where the net already lives (a GPU under gloo), not on the CPU."""
    from sagan.distributed import CrossRankBatchNorm2d, synchronise_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).to("meta")  # meta stands for cuda:N
    synchronise_batchnorm(net, "cpu")
    assert isinstance(net[1], CrossRankBatchNorm2d)
    assert {t.device.type for t in [*net.parameters(), *net.buffers()]} == {"meta"}

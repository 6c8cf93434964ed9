"""Hard faults: kill -9 at random moments, disk full, unwritable folders, truncated checkpoints."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from runs import tiny_flags

from sagan import checkpoint
from sagan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from sagan.cli import main

TINY = tiny_flags()


def _assert_nothing_corrupt(run: Path) -> None:
    for path in run.rglob("*"):
        if path.is_dir():
            continue
        assert not path.name.startswith(".tmp-"), f"temporary file left: {path}"
        if path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".png":
            Image.open(path).load()
        elif path.name == "config.json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)


def test_kill_9_five_times_then_resume(tmp_path):
    run, steps, every = tmp_path / "run", 400, 4
    rng = random.Random(0)
    started = False
    for kill in range(5):
        args = (
            ["--resume", str(run)]
            if started
            else ["--out", str(run), "--steps", str(steps), "--checkpoint-every", str(every), "--sample-every", "3"]
            + TINY
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagan", "train", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # a random moment, once training is under way (a new checkpoint since the last kill)
        before = load_latest(run)[1]["step"] if started else -1
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            ckpts = list_checkpoints(run)
            if ckpts and int(ckpts[-1].stem.split("-")[1]) > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        started = True
        reached = max(
            json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")
        )
        saved = load_latest(run)[1]["step"]
        assert reached - saved <= every, f"kill {kill}: reached step {reached} but the newest checkpoint is {saved}"
    done = subprocess.run(
        [sys.executable, "-m", "sagan", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert load_latest(run)[1]["step"] == steps
    _assert_nothing_corrupt(run)
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # every step once: lines past a checkpoint were dropped on resume


def _tiny_state(step: int) -> dict:
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "step": step,
        "config": {},
        "model_config": {},
        "G": {"w": torch.full((3,), float(step))},
        "D": {},
        "G_ema": {},
    }


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    save_checkpoint(_tiny_state(1), tmp_path / "checkpoint-00000001.pt")

    def failing_save(obj, fh):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError(error, "No space left on device" if error == errno.ENOSPC else "Permission denied")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*checkpoint-00000002.pt.*intact"):
        save_checkpoint(_tiny_state(2), tmp_path / "checkpoint-00000002.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001.pt"]  # no half file, no temporary
    assert load_checkpoint(tmp_path / "checkpoint-00000001.pt")["G"]["w"][0] == 1


def test_disk_full_during_training_is_one_clear_line(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def full_after_first(obj, fh, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_after_first)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "4", "--checkpoint-every", "2"] + TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000002.pt"]
    load_checkpoint(run / "checkpoint-00000002.pt")


def test_an_out_path_that_cannot_be_a_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--out", str(blocker / "run"), "--steps", "1"] + TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_truncated_checkpoint_is_named_and_resume_falls_back(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "4", "--checkpoint-every", "2"] + TINY) == 0
    newest = run / "checkpoint-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="checkpoint-00000004.pt is truncated or corrupt"):
        load_checkpoint(newest)
    with pytest.warns(
        UserWarning, match="checkpoint-00000004.pt is truncated or corrupt .*falling back to the previous"
    ):
        assert main(["train", "--resume", str(run), "--steps", "6", "--quiet"]) == 0
    assert load_latest(run)[1]["step"] == 6

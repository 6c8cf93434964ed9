"""`sagan train` / `sagan sample`: the run directory, resume, signals, NaN, safe loading."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from runs import tiny_flags

from sagan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest
from sagan.cli import main
from sagan.models import Discriminator

TINY = tiny_flags(batch_size=8, sample_count=12, log_every=2)


def test_a_short_run_writes_every_file(tiny_run):
    run = Path(tiny_run)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 6 and config["model"]["generator"]["num_classes"] == 6
    assert config["classes"][:2] == ["circle", "square"] and config["effective_batch_size"] == 8
    lines = [r for x in (run / "metrics.jsonl").read_text().splitlines() if "loss_d" in (r := json.loads(x))]
    assert [r["step"] for r in lines] == [2, 4, 6]  # every --log-every steps, and the final step
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s"):
        assert all(isinstance(r[key], float) for r in lines)
    assert set(lines[-1]["gamma"]) == {"G.attn16", "D.attn16"}
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["step-00000003.png", "step-00000006.png"]
    assert Image.open(run / "samples" / grids[-1]).size == (4 * 34 + 2, 3 * 34 + 2)  # 12 images, 4 a row
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000003.pt", "checkpoint-00000006.pt"]
    state = load_checkpoint(run / "checkpoint-00000006.pt")
    assert state["step"] == 6 and {"G", "D", "G_ema", "opt_G", "opt_D", "rng", "config"} <= set(state)
    assert not any(p.name.startswith(".tmp-") for p in run.iterdir())


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    _, state = load_latest(run)
    return {k: state[k] for k in ("G", "D", "G_ema")} | {"opt_D": state["opt_D"]["state"][0]}


def _assert_same_weights(run_a: Path, run_b: Path) -> None:
    a, b = _weights(run_a), _weights(run_b)
    for part in a:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    common = TINY + ["--checkpoint-every", "3", "--sample-every", "100"]
    assert main(["train", "--steps", "6", "--out", str(tmp_path / "straight")] + common) == 0
    assert main(["train", "--steps", "3", "--out", str(tmp_path / "split")] + common) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "6", "--quiet"]) == 0
    _assert_same_weights(tmp_path / "straight", tmp_path / "split")
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]  # the first leg's final line, then the resumed ones; nothing twice


def test_lr_decay_falls_linearly_to_zero_over_the_final_fraction():
    from sagan.training import lr_factor

    assert [lr_factor(s, 10, 0.5) for s in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert [lr_factor(s, 10, 0.0) for s in range(10)] == [1.0] * 10
    assert [lr_factor(s, 4, 1.0) for s in range(4)] == pytest.approx([1, 0.75, 0.5, 0.25])


def test_a_decaying_run_resumes_on_its_schedule(tmp_path):
    common = TINY + [
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--sample-every",
        "100",
        "--lr-decay",
        "0.5",
        "--lr-g",
        "3e-4",
        "--lr-d",
        "5e-4",
    ]
    assert main(["train", "--out", str(tmp_path / "straight")] + common) == 0
    _, state = load_latest(tmp_path / "straight")
    # the last step (5 of 0..5) ran at 1/3 of the rates: (6 - 5) / (0.5 * 6)
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert state["opt_D"]["param_groups"][0]["lr"] == pytest.approx(5e-4 / 3)
    # Interrupted after step 3: only the first checkpoint survives; resuming must follow the same schedule.
    shutil.copytree(tmp_path / "straight", tmp_path / "cut")
    (tmp_path / "cut" / "checkpoint-00000006.pt").unlink()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    _assert_same_weights(tmp_path / "straight", tmp_path / "cut")


def test_d_width_follows_g_width_unless_both_are_left_to_the_cpu_table():
    from sagan.config import DEVICE_DEFAULTS, TrainConfig

    cpu_table = DEVICE_DEFAULTS["cpu"]

    def widths(device_type: str, **given: int) -> tuple[int, int]:
        config, _ = TrainConfig.create(**given).resolved(device_type)
        return config.model.ch, config.model.ch_d

    assert widths("cpu") == (cpu_table["ch"], cpu_table["ch_d"]) and cpu_table["ch_d"] > cpu_table["ch"]
    assert widths("cpu", ch=32) == (32, 32)  # a width the user picked is not paired with the table's D
    assert widths("cpu", ch_d=40) == (cpu_table["ch"], 40)
    assert widths("cuda") == (64, 64) and widths("cuda", ch=8, ch_d=12) == (8, 12)
    assert "ch=16" in TrainConfig().resolved("cpu")[1] and "ch_d=24" in TrainConfig().resolved("cpu")[1]


def test_a_wider_d_is_saved_rebuilt_and_kept_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--out", str(run), "--ch-d", "12", "--checkpoint-every", "2"] + TINY) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["generator"]["ch"], model["discriminator"]["ch"]) == (8, 12)
    _, state = load_latest(run)
    shapes = lambda weights: {k: v.shape for k, v in weights.items()}
    assert shapes(state["D"]) == shapes(Discriminator(32, num_classes=6, ch=12).state_dict())
    assert main(["train", "--resume", str(run), "--ch-d", "16"]) == 2
    assert "trained with ch_d=12; --ch-d 16 conflicts" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "3", "--quiet"]) == 0
    _, state = load_latest(run)
    assert state["step"] == 3 and state["config"]["model"]["ch_d"] == 12


def test_a_run_saved_before_ch_d_existed_resumes_with_d_as_wide_as_g(tiny_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    for path in list_checkpoints(run):  # written as format 1 did: one flat config, no ch_d in it
        state = load_checkpoint(path)
        model = state["config"].pop("model")
        flat = {**state["config"], **model}
        del flat["ch_d"], flat["num_classes"], flat["threads"]
        flat["amp"] = None
        state["config"], state["format_version"] = flat, 1
        torch.save(state, path)
    assert main(["train", "--resume", str(run), "--steps", "7", "--quiet"]) == 0
    _, state = load_latest(run)
    assert state["step"] == 7 and state["config"]["model"]["ch_d"] == state["config"]["model"]["ch"] == 8


def test_resume_refuses_flags_that_change_the_model(tiny_run, capsys):
    assert main(["train", "--resume", tiny_run, "--resolution", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with resolution=32" in err and "--resolution 64 conflicts" in err and len(err.splitlines()) == 1


def test_an_existing_run_is_not_overwritten(tiny_run, capsys):
    assert main(["train", "--out", tiny_run, "--steps", "2"] + TINY) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagan", "train", "--steps", "100000", "--out", str(run), "--checkpoint-every", "100000"]
        + TINY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # wait until it is really training
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    path, state = load_latest(run)
    assert state["step"] >= 2 and path.name == f"checkpoint-{state['step']:08d}.pt"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint-00000001.pt"
    torch.save({"format_version": 1, "payload": _Exploit(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        load_checkpoint(evil)
    assert main(["sample", str(evil), "--out", str(tmp_path / "x.png")]) == 2
    assert not marker.exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from sagan import training
    from sagan.losses import GANLoss, hinge_d, hinge_g

    calls = {"n": 0}

    def poisoned_d(real, fake):
        calls["n"] += 1
        loss = hinge_d(real, fake)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(training, "get_loss", lambda name: GANLoss(poisoned_d, hinge_g))
    run = tmp_path / "run"
    assert main(["train", "--steps", "10", "--out", str(run), "--checkpoint-every", "2"] + TINY) == 1
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and "checkpoint-00000004.pt" in err
    _path, state = load_latest(run)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_wrong_checkpoint_version_and_config(tiny_run, tmp_path):
    _, state = load_latest(tiny_run)
    state["format_version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    _, state = load_latest(tiny_run)
    state["model_config"]["generator"]["ch"] = 16  # claims other networks than its weights
    torch.save(state, tmp_path / "other.pt")
    from sagan.checkpoint import load_generator

    with pytest.raises(CheckpointError, match="do not fit the networks built from its config"):
        load_generator(tmp_path / "other.pt")


def test_sample_writes_a_grid_and_single_images(tiny_run, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert (
        main(
            ["sample", tiny_run, "--n", "10", "--class", "2", "--seed", "1", "--truncation", "1.5", "--out", str(grid)]
        )
        == 0
    )
    assert Image.open(grid).size == (4 * 34 + 2, 3 * 34 + 2)
    folder = tmp_path / "each"
    assert main(["sample", tiny_run, "--n", "3", "--out-dir", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(folder / "000000.png").size == (32, 32)
    assert main(["sample", tiny_run, "--class", "9"]) == 2
    assert "outside [0, 6)" in capsys.readouterr().err


def test_sampling_is_deterministic_by_seed(tiny_run):
    from sagan.checkpoint import load_generator
    from sagan.sampling import generate

    G, _ = load_generator(tiny_run)
    a, ya = generate(G, 5, seed=3)
    b, yb = generate(G, 5, seed=3)
    c, _ = generate(G, 5, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)


def test_tensorboard_logs_scalars_sample_grids_and_evaluations(tmp_path, inception_weights):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["train", "--steps", "2", "--out", str(tmp_path / "tb"), "--tensorboard", "--sample-every", "1"]
    argv += ["--eval-every", "2", "--eval-n", "8", "--inception-weights", inception_weights]
    assert main(argv + TINY) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard")).Reload().Tags()
    assert {"loss_d", "loss_g", "images_per_s", "gamma/G.attn16", "eval/fid"} <= set(events["scalars"])
    assert events["images"] == ["samples"]


def test_wandb_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wb"
    assert main(["train", "--steps", "2", "--out", str(run), "--wandb", "--sample-every", "1"] + TINY) == 0
    (offline,) = (run / "wandb").glob("offline-run-*")
    (record,) = offline.glob("run-*.wandb")  # the run's local record, which `wandb sync` uploads later
    assert b"loss_d" in record.read_bytes() and b"gamma/G.attn16" in record.read_bytes()
    assert len(list((offline / "files" / "media" / "images").glob("samples_*.png"))) == 2  # steps 1 and 2


def test_trackers_that_are_not_installed_are_one_line(tmp_path, monkeypatch, capsys):
    import sys

    for flag, module, extra in (
        ("--tensorboard", "torch.utils.tensorboard", "tensorboard"),
        ("--wandb", "wandb", "wandb"),
    ):
        monkeypatch.setitem(sys.modules, module, None)
        assert main(["train", "--steps", "1", "--out", str(tmp_path / flag), flag] + TINY) == 2
        assert f"pip install 'sagan-pytorch[{extra}]'" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_flag_trains(tmp_path):
    """--compile runs the same loop through torch.compile (about a minute of compiling on 2 cores)."""
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--out", str(run), "--compile"] + TINY) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and all(map(torch.isfinite, torch.tensor([last["loss_d"], last["loss_g"]])))


# -- the loop's parts, alone -----------------------------------------------------------------------
def _small_gan(seed: int = 0):
    from sagan.config import ModelConfig
    from sagan.models import build

    torch.manual_seed(seed)
    return build(ModelConfig(resolution=32, num_classes=3, ch=8, ch_d=8))


@pytest.mark.parametrize("loss_name", ["hinge", "wasserstein"])
def test_one_d_step_widens_the_gap_between_real_and_fake(loss_name):
    """Against a copy that saw the same forward (spectral norm's power iteration) but no update, the
    step lowers D's loss on the batch; with the Wasserstein loss it widens the gap D(x) - D(G(z))."""
    from sagan.losses import get_loss
    from sagan.runtime import Precision
    from sagan.shapes import ShapesDataset
    from sagan.training import d_step

    G, D = _small_gan()
    data = ShapesDataset(32, size=8)
    real = torch.stack([data[i][0] for i in range(8)])
    y_real = torch.tensor([data[i][1] % 3 for i in range(8)])
    y_fake = torch.arange(8) % 3
    with torch.no_grad():
        fake = G(torch.randn(8, 128), y_fake)
    loss = get_loss(loss_name)
    opt = torch.optim.Adam(D.parameters(), lr=1e-5, betas=(0.0, 0.9))
    precision = Precision.choose("off", torch.device("cpu"))
    control = copy.deepcopy(D)
    with torch.no_grad():
        control(torch.cat([real, fake]), torch.cat([y_real, y_fake]))
    stats = d_step(D, opt, precision.scaler(), loss, real, y_real, fake, y_fake, precision)
    assert stats.shape == (3,) and not stats.requires_grad
    assert all(p.grad is not None for p in D.parameters() if p.requires_grad)

    @torch.no_grad()
    def judged(net):
        net.eval()
        return net(real, y_real), net(fake, y_fake)

    (real_after, fake_after), (real_control, fake_control) = judged(D), judged(control)
    assert loss.d(real_after, fake_after) < loss.d(real_control, fake_control)
    if (
        loss_name == "wasserstein"
    ):  # its gradient is exactly that of -(D(x) - D(G(z))); hinge's ignores saturated images
        assert (real_after.mean() - fake_after.mean()) > (real_control.mean() - fake_control.mean())


def test_one_g_step_raises_d_of_g_of_z_and_leaves_d_alone():
    from sagan.losses import get_loss
    from sagan.runtime import Precision
    from sagan.training import g_step

    G, D = _small_gan(1)
    D.eval()  # a fixed judge: its spectral-norm vectors do not move between the two looks
    z, y = torch.randn(8, 128), torch.arange(8) % 3
    d_before = {k: v.clone() for k, v in D.state_dict().items()}
    with torch.no_grad():
        before = D(G(z, y), y).mean().item()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
    precision = Precision.choose("off", torch.device("cpu"))
    loss_g = g_step(G, D, opt, precision.scaler(), get_loss("hinge"), z, y, precision)
    with torch.no_grad():
        after = D(G(z, y), y).mean().item()
    assert after > before and loss_g.item() == pytest.approx(-before, rel=1e-3, abs=1e-3)
    assert all(torch.equal(d_before[k], v) for k, v in D.state_dict().items())  # D's weights did not move
    assert all(p.grad is None for p in D.parameters()) and all(p.requires_grad for p in D.parameters())


def test_library_resume_refuses_a_changed_model_field_and_takes_new_run_fields(tiny_run, tmp_path):
    from sagan import TrainConfig, train
    from sagan.config import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(ConfigError, match=r"trained with ch=8; --ch 16 conflicts") as caught:
        train(TrainConfig.create(ch=16, steps=8, threads=1, quiet=True), resume=str(run))
    assert len(str(caught.value).splitlines()) == 1
    config = TrainConfig.from_run(run)
    config.steps, config.lr_d = 8, 1e-4  # run fields: the new values are used
    result = train(config, resume=str(run))
    _, state = load_latest(run)
    assert result.step == 8 and state["step"] == 8 and state["opt_D"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert state["config"]["lr_d"] == pytest.approx(1e-4) and state["config"]["model"]["ch"] == 8


def test_attention_path_is_chosen_when_a_block_is_built():
    from sagan import Generator, set_fused_attention, use_fused_attention

    assert use_fused_attention()
    try:
        set_fused_attention(False)
        reference = Generator(32, ch=8)
    finally:
        set_fused_attention(True)
    assert [b.fused for b in reference.attention_blocks().values()] == [False]
    assert [b.fused for b in Generator(32, ch=8).attention_blocks().values()] == [True]
    assert [b.fused for b in Generator(32, ch=8, fused_attention=False).attention_blocks().values()] == [False]


def test_threads_default_to_the_cores_left_idle_by_other_work(monkeypatch):
    from sagan import runtime

    monkeypatch.setattr(runtime, "_allowed_cpus", lambda: {0, 1, 2, 3})  # of 6 CPUs: 4, 5 are not ours
    readings = iter(
        [
            {c: (100, 200) for c in range(6)},
            # since then: CPU 0 all busy, CPU 1 half, CPUs 2 and 3 idle; 4 and 5 busy (not ours: not counted)
            {0: (100, 300), 1: (150, 300), 2: (200, 300), 3: (200, 300), 4: (100, 300), 5: (100, 300)},
        ]
    )
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(readings))
    assert runtime.busy_cores({0, 1, 2, 3}, sample_s=0) == 1.5
    readings = iter([{c: (0, 100) for c in range(6)}, {c: (100, 200) for c in range(6)}])  # all idle
    assert runtime.idle_cores(sample_s=0) == 4
    readings = iter([{c: (0, 100) for c in range(6)}, {c: (0, 200) for c in range(6)}])  # all busy: still 1
    assert runtime.idle_cores(sample_s=0) == 1
    monkeypatch.setattr(runtime, "_cpu_times", lambda: None)  # no /proc: the load average
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert runtime.idle_cores(sample_s=0) == 1


def test_proc_stat_is_read_per_cpu_here():
    from sagan import runtime

    times = runtime._cpu_times()
    if times is None:
        pytest.skip("no /proc/stat on this system (the load average is used)")
    assert runtime._allowed_cpus() <= set(times) and all(0 <= idle <= total for idle, total in times.values())
    assert 1 <= runtime.idle_cores(sample_s=0.05) <= len(runtime._allowed_cpus())


def test_a_run_keeps_its_picked_thread_count_on_resume(tmp_path, monkeypatch):
    from sagan import runtime

    monkeypatch.setattr(runtime, "idle_cores", lambda: 1)
    flags = [f for f in TINY if f not in ("--threads", "1")] + ["--checkpoint-every", "1", "--sample-every", "100"]
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "r"), *flags]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["threads"] == 1
    monkeypatch.setattr(runtime, "idle_cores", lambda: 2)  # more cores idle now: the run keeps its own
    assert main(["train", "--resume", str(tmp_path / "r"), "--steps", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["threads"] == 1

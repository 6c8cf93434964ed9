"""DDP on CPU with gloo: identical ranks, equality with one process, torchrun, resume, elastic restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from runs import torchrun

from sagan.checkpoint import list_checkpoints, load_latest
from sagan.distributed import fresh_namespace

SMALL = {
    "steps": 3,
    "batch_size": 4,
    "ch": 8,
    "threads": 1,
    "data_size": 64,
    "quiet": True,
    "log_every": 1,
    "sample_every": 100,
    "checkpoint_every": 100,
    "sample_count": 4,
    "device": "cpu",
    "seed": 5,
}
CLI_SMALL = ["--batch-size", "4", "--ch", "8", "--data-size", "64", "--sample-count", "4", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out: str, kwargs: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    from sagan.training import TrainConfig, train

    result = train(TrainConfig.create(**kwargs))
    torch.save(
        {"G": result.G.state_dict(), "D": result.D.state_dict(), "G_ema": result.G_ema.state_dict()},
        Path(out) / f"rank{rank}.pt",
    )
    assert not dist.is_initialized()  # train() made the group, so train() destroys it


def test_two_ranks_agree_with_each_other_and_with_one_process_of_the_same_total_batch(tmp_path):
    kwargs = dict(SMALL, out=str(tmp_path / "ddp"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), kwargs), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for net in ("G", "D", "G_ema"):
        for key in rank0[net]:
            assert torch.equal(rank0[net][key], rank1[net][key]), (net, key)  # SN's u, v and BN stats included

    from sagan.training import TrainConfig, train

    single = train(TrainConfig.create(**dict(SMALL, batch_size=8, out=str(tmp_path / "single"))))
    moved = 0.0
    for net, module in (("G", single.G), ("D", single.D)):
        state = module.state_dict()
        for key, value in rank0[net].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, state[key], rtol=1e-3, atol=2e-3, msg=f"{net}.{key}")
                moved = max(moved, (value - state[key]).abs().max().item())
    assert moved < 2e-3
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch_size"] == 8


def test_torchrun_then_resume_with_one_process(tmp_path):
    run = tmp_path / "run"
    proc = torchrun("--steps", "4", "--out", str(run), "--checkpoint-every", "2", *CLI_SMALL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "batch 4 x 2 process(es) = 8" in out and out.count("sagan: run ") == 1  # only rank 0 talks
    assert "Warning" not in out, out
    assert load_latest(run)[1]["step"] == 4
    done = subprocess.run(
        [sys.executable, "-m", "sagan", "train", "--resume", str(run), "--steps", "6", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _, state = load_latest(run)
    assert state["step"] == 6 and json.loads((run / "config.json").read_text())["world_size"] == 1


def test_fresh_namespace_ignores_what_an_earlier_generation_left_in_the_store():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    server.set("sagan/round", "dead-round")  # the round of a generation that torchrun has since killed
    server.set("sagan/dead-round/rank1", "x")
    server.set("addr", "stale")  # e.g. a dead rank's gloo address
    joined: dict[int, dist.Store] = {}

    def rank(r: int, delay: float) -> None:
        time.sleep(delay)  # rank 0 comes last: the others first see only the stale round
        ns = fresh_namespace(dist.TCPStore("127.0.0.1", server.port, is_master=False), r, 3, poll_s=0.01)
        ns.set(f"from{r}", str(r))
        joined[r] = ns

    threads = [threading.Thread(target=rank, args=(r, d)) for r, d in ((1, 0.0), (2, 0.0), (0, 0.3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(joined) == [0, 1, 2]
    for r in range(3):  # one namespace for all three, and none of the old keys in it
        assert [joined[r].get(f"from{k}") for k in range(3)] == [b"0", b"1", b"2"]
        assert not joined[r].check(["addr"])


def test_fresh_namespace_gives_up_with_a_clear_error_when_rank_0_never_comes():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with pytest.raises(RuntimeError, match="rank 0 did not start"):
        fresh_namespace(server, 1, 2, timeout=timedelta(seconds=0.3), poll_s=0.01)


def _workers(pid: int) -> list[int]:
    """The sagan worker processes that torchrun (pid) started (not its other helpers)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"sagan" in cmdline and b"train" in cmdline:
                kids.append(int(entry.name))
    return kids


def test_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = torchrun(
        "--steps", "60", "--out", str(run), "--checkpoint-every", "5", "--log-every", "5", *CLI_SMALL, max_restarts=5
    )
    deadline = time.time() + 240
    while not list_checkpoints(run) and time.time() < deadline:
        time.sleep(0.2)
    assert list_checkpoints(run), "no checkpoint appeared"
    workers = _workers(proc.pid)
    assert len(workers) == 2, f"expected 2 sagan workers under torchrun, found {workers}"
    os.kill(workers[-1], signal.SIGKILL)  # a rank dies hard
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        for pid in _workers(proc.pid):  # workers run in their own sessions: end them too
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun did not finish after the restart:\n{out[-3000:]}") from None
    assert proc.returncode == 0, out
    assert "resuming at step" in out
    assert "connectFullMesh" not in out, out  # the restarted ranks did not dial the dead ones' addresses
    assert load_latest(run)[1]["step"] == 60

"""One command that checks sagan on a GPU and prints the README's GPU rows.

    python benchmarks/gpu_check.py [--amp auto|bf16|fp16|off] [--quick]

Rows (each says "needs a GPU" on a CPU-only machine, where the rows that can run still do):
  cuda tests      pytest on the CUDA tests (tests/test_cuda.py, the CUDA cases of test_attention.py)
  train 32        the real loop, 32 preset at ch=64, batch 64: images/s eager and with --compile
  train 128       128 preset at ch=64, batch 32: steps/s and peak GPU memory
  attention       benchmarks/attention.py's rows on the GPU: ours vs naive vs the bare kernel
  ddp x2          two processes on the one GPU (gloo over CUDA tensors; nccl refuses two ranks on one
                  device): the device-side collectives and the all-reduce batch-norm run to the end
  resume          4 steps straight vs 2 + resume 2: the largest weight difference, next to the one
                  between two straight runs (what the GPU's own non-determinism gives)
`--amp auto` is bf16 where the GPU has it, else fp16 with a GradScaler. Finishes in about 5 minutes
on one H100 or H200.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # lets cuBLAS be deterministic (the resume row)

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from sagan.config import TrainConfig
from sagan.training import train

NEEDS_GPU = "needs a GPU"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def row(name: str, result: str) -> None:
    print(f"| {name} | {result} |", flush=True)


def cuda_tests() -> str:
    tests = [str(ROOT / "tests" / "test_cuda.py"), str(ROOT / "tests" / "test_attention.py")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-k", "cuda"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env(), cwd=ROOT)
    tail = [line for line in done.stdout.splitlines() if "passed" in line or "failed" in line or "error" in line]
    if done.returncode not in (0, 5):
        print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
    return tail[-1] if tail else f"pytest exit {done.returncode}"


def _train(tmp: Path, name: str, **fields) -> tuple[dict, float]:
    """Run the real loop; return its last metrics record and the wall time."""
    config = TrainConfig.create(
        out=str(tmp / name), quiet=True, sample_every=10**9, checkpoint_every=10**9, data_size=4096, **fields
    )
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    records = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    return records[-1], wall


def train_32(tmp: Path, amp: str, steps: int) -> str:
    half = steps // 2
    eager, wall_e = _train(tmp, "t32", resolution=32, ch=64, batch_size=64, steps=2 * half, log_every=half, amp=amp)
    compiled, wall_c = _train(
        tmp, "t32c", resolution=32, ch=64, batch_size=64, steps=2 * half, log_every=half, amp=amp, compile=True
    )
    return (
        f"eager {eager['images_per_s']:.0f} img/s, --compile {compiled['images_per_s']:.0f} img/s "
        f"({compiled['images_per_s'] / eager['images_per_s']:.2f}x; compiling + {2 * half} steps took {wall_c:.0f} s "
        f"vs {wall_e:.0f} s eager)"
    )


def train_128(tmp: Path, amp: str, steps: int) -> str:
    torch.cuda.reset_peak_memory_stats()
    half = max(2, steps // 2)
    record, _ = _train(tmp, "t128", resolution=128, ch=64, batch_size=32, steps=2 * half, log_every=half, amp=amp)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return f"{record['images_per_s'] / 32:.2f} steps/s ({record['images_per_s']:.0f} img/s), peak {peak:.1f} GiB"


def attention_rows(sizes: list[int]) -> list[str]:
    import attention as bench

    out = []
    for size in sizes:
        t = bench.time_variants(size, 64, 4, "cuda", 10)
        m = {v: bench.peak_extra_bytes(v, size, 64, 4, "cuda") / 2**20 for v in bench.VARIANTS}
        out.append(
            f"{size}x{size} {bench.kernel_name(size, 64, 'cuda')}: ours {t['ours'] * 1e3:.2f} ms, naive "
            f"{t['naive'] * 1e3:.2f} ms, core {t['core'] * 1e3:.2f} ms; naive/ours {t['naive'] / t['ours']:.2f}x, "
            f"ours/core {t['ours'] / t['core']:.2f}x; memory ours {m['ours']:.1f} MiB, naive {m['naive']:.1f} MiB "
            f"({m['ours'] / max(m['naive'], 1e-9):.1%})"
        )
    return out


def ddp_two_processes(tmp: Path, device: str, amp: str) -> str:
    run = tmp / f"ddp-{device}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sagan"]
    cmd += f"train --steps 6 --batch-size 8 --ch 16 --data-size 256 --device {device} --log-every 3".split()
    cmd += ["--checkpoint-every", "6", "--sample-every", "6", "--quiet", "--amp", amp, "--out", str(run)]
    env = dict(_env(), SAGAN_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")  # nccl refuses two ranks on one GPU
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=600)
    if done.returncode != 0:
        said = [
            line for line in (done.stderr + done.stdout).splitlines() if line.startswith("sagan") or "Error" in line
        ]
        return f"FAILED (exit {done.returncode}): {' / '.join(dict.fromkeys(said))[-1500:]}"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    wall = time.perf_counter() - started
    return f"ok: 6 steps in {wall:.0f} s (start-up included), last loss_d {records[-1]['loss_d']:.3f}"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from sagan.checkpoint import load_latest

    state = load_latest(run)[1]
    return {
        f"{net}.{k}": v.float() for net in ("G", "D", "G_ema") for k, v in state[net].items() if v.is_floating_point()
    }


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _resume_runs(tmp: Path, device: str, amp: str, tag: str) -> tuple[float, float, float]:
    common = {"resolution": 32, "ch": 16, "batch_size": 16, "log_every": 1, "device": device, "amp": amp, "seed": 3}
    for name in ("s1", "s2"):
        _train(tmp, f"{name}-{tag}", steps=4, **common)
    _train(tmp, f"r-{tag}", steps=2, **common)
    resumed_config = TrainConfig.from_run(tmp / f"r-{tag}")
    resumed_config.steps = 4
    train(resumed_config, resume=str(tmp / f"r-{tag}"))
    first, second, resumed = (tmp / f"{name}-{tag}" for name in ("s1", "s2", "r"))
    return _max_diff(first, second), _max_diff(first, resumed), _max_diff(second, resumed)


def resume_check(tmp: Path, device: str, amp: str) -> str:
    """Straight vs resumed, with torch's deterministic kernels (flash / cuDNN attention's backward has one)."""
    torch.backends.cudnn.benchmark = False
    note = "deterministic kernels"
    try:
        torch.use_deterministic_algorithms(True)
        straight, resumed, later = _resume_runs(tmp, device, amp, f"{device}-det")
    except RuntimeError as err:  # an op with no deterministic kernel: measure with the default kernels instead
        note = f"default kernels ({' '.join(str(err).split())[:160]})"
        torch.use_deterministic_algorithms(False)
        straight, resumed, later = _resume_runs(tmp, device, amp, device)
    finally:
        torch.use_deterministic_algorithms(False)
    verdict = (
        "equal"
        if min(resumed, later) == 0
        else ("within the GPU's own run-to-run spread" if min(resumed, later) <= straight else "DIFFERS")
    )
    return (
        f"{verdict} ({note}): max |straight 1 - resumed| = {resumed:.3g}, |straight 2 - resumed| = {later:.3g}, "
        f"|straight 1 - straight 2| = {straight:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke test of the script itself)")
    parser.add_argument(
        "--only",
        default="tests,ddp,resume,attention,train128,train32",
        help="comma-separated subset of the checks (default: all)",
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "no GPU"
    amp = args.amp
    if cuda and amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, {name}, amp {amp if cuda else 'off'}")
    print("| check | result |\n|---|---|")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not cuda:
            for check in ("cuda tests", "train 32 (bf16, --compile)", "train 128", "attention (bf16)"):
                row(check, NEEDS_GPU)
            row("ddp x2 (cpu, gloo)", ddp_two_processes(tmp, "cpu", "off") + "; on one GPU: " + NEEDS_GPU)
            row("resume (cpu)", resume_check(tmp, "cpu", "off") + "; on a GPU: " + NEEDS_GPU)
            return
        only = set(args.only.split(","))
        if "tests" in only:
            row("cuda tests", cuda_tests())
        if "ddp" in only:
            row("ddp x2 on one GPU (gloo over CUDA tensors)", ddp_two_processes(tmp, "cuda", amp))
        if "resume" in only:
            row(f"resume on the GPU ({amp})", resume_check(tmp, "cuda", amp))
        for line in attention_rows([32, 64] if args.quick else [32, 64, 128]) if "attention" in only else []:
            row("attention fwd+bwd, C=64, B=4", line)
        if "train128" in only:
            row(f"train 128 preset, ch=64, batch 32, {amp}", train_128(tmp, amp, 4 if args.quick else 20))
        if "train32" in only:
            row(f"train 32 preset, ch=64, batch 64, {amp}", train_32(tmp, amp, 20 if args.quick else 200))
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""SelfAttention2d against a naive materialised port and the bare SDPA kernel, side by side.

    python benchmarks/attention.py [--sizes 32 64 128] [--channels 64] [--batch 4] [--repeats 5]

For each map size it times forward + backward (best of --repeats after a warm-up) and measures
the peak memory that the step adds on top of its inputs, for:
  ours   sagan.SelfAttention2d (fused path),
  naive  the usual public port: bmm -> softmax -> bmm, storing the N x N matrix, same weights,
  core   F.scaled_dot_product_attention alone on pre-projected contiguous q, k, v (the floor).
fp32 on CPU; bf16 autocast on CUDA. On CPU, peak memory is the growth of the peak resident set of
a fresh process during its second step (VmHWM, reset first; glibc's mmap threshold fixed at 64 KiB
so that freed tensors leave the resident set); on CUDA it is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from sagan import SelfAttention2d


class NaiveSelfAttention2d(nn.Module):
    """What public SAGAN ports do: materialise the (B, N, N) attention and softmax it."""

    def __init__(self, ours: SelfAttention2d) -> None:
        super().__init__()
        self.ours = ours  # share the very same weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _c, h, w = x.shape
        m = self.ours
        q = m.query(x).flatten(2).transpose(1, 2)  # (B, N, C-bar)
        k = m.key(x).flatten(2)  # (B, C-bar, N)
        v = m.value(x).flatten(2)  # (B, C_v, N)
        beta = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N)
        o = torch.bmm(v, beta.transpose(1, 2)).view(b, -1, h, w)
        return m.gamma * m.out(o) + x


class CoreOnly(nn.Module):
    """The bare fused kernel on q, k, v that are already projected and contiguous."""

    def __init__(self, ours: SelfAttention2d, x: torch.Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            q, k, v = ours._project(x)
        self.q = nn.Parameter(q.contiguous().unsqueeze(1))
        self.k = nn.Parameter(k.contiguous().unsqueeze(1))
        self.v = nn.Parameter(v.contiguous().unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(self.q, self.k, self.v, scale=1.0)


VARIANTS = ("ours", "naive", "core")


def build(variant: str, size: int, channels: int, batch: int, device: str):
    torch.manual_seed(0)
    ours = SelfAttention2d(channels).to(device)
    with torch.no_grad():
        ours.gamma.fill_(0.5)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    module = {"ours": lambda: ours, "naive": lambda: NaiveSelfAttention2d(ours), "core": lambda: CoreOnly(ours, x)}[
        variant
    ]()
    return module, x


def step(module: nn.Module, x: torch.Tensor, device: str) -> None:
    """One forward + backward, fed a fixed output gradient so no loss computation is timed."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        y = module(x)
    y.backward(torch.ones_like(y))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(size: int, channels: int, batch: int, device: str, repeats: int) -> dict[str, float]:
    """Best fwd+bwd time of each variant; the variants take turns so drifts in machine load hit all alike."""
    built = {v: build(v, size, channels, batch, device) for v in VARIANTS}
    best = {v: float("inf") for v in VARIANTS}
    for _ in range(repeats + 1):  # the first round is a warm-up
        for variant, (module, x) in built.items():
            sync(device)
            t0 = time.perf_counter()
            step(module, x, device)
            sync(device)
            best[variant] = min(best[variant], time.perf_counter() - t0)
    return best


def peak_extra_bytes(variant: str, size: int, channels: int, batch: int, device: str) -> int:
    """Peak memory one forward + backward adds on top of the inputs, in bytes."""
    if device == "cuda":
        module, x = build(variant, size, channels, batch, device)
        step(module, x, device)  # let cuBLAS / kernels allocate their workspaces first
        x.grad = None
        module.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(module, x, device)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: a fresh process per measurement, so one variant's high-water mark cannot hide another's.
    # glibc maps every block >= 64 KiB on its own and unmaps it on free (a fixed mmap threshold), so
    # the resident set follows live tensors; one warm-up step first keeps one-time costs (thread
    # pools, lazy initialisation) out of the figure, as on CUDA.
    code = (
        f"import sys;sys.path.insert(0,{sys.path[0]!r});import attention as b;"
        f"m,x=b.build({variant!r},{size},{channels},{batch},'cpu');b.step(m,x,'cpu');x.grad=None;"
        "m.zero_grad(set_to_none=True);print(b.rss_growth(lambda: b.step(m,x,'cpu')))"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return int(out.split()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def rss_growth(fn) -> int:
    """Bytes by which fn() raises this process's peak resident set above its current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current resident set
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def kernel_name(size: int, channels: int, device: str) -> str:
    ours, x = build("ours", size, channels, 1, device)
    q, k, v = (t.unsqueeze(1) for t in ours._project(x.detach()))
    choice = torch._fused_sdp_choice(q, k, v)
    return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}.get(int(choice), str(choice))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    dev = args.device
    name = torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or platform.machine()
    print(
        f"# {time.strftime('%Y-%m-%d')} torch {torch.__version__} on {dev} ({name}), "
        f"threads={torch.get_num_threads()}, "
        f"C={args.channels} B={args.batch} {'bf16' if dev == 'cuda' else 'fp32'}"
    )
    print(
        f"{'HxW':>8} {'kernel':>7} | {'ours ms':>8} {'naive ms':>9} {'core ms':>8} | "
        f"{'naive/ours':>10} {'ours/core':>9} | "
        f"{'ours MiB':>8} {'naive MiB':>9} {'core MiB':>8} {'ours/naive mem':>14}"
    )
    rows = []
    for size in args.sizes:
        t = time_variants(size, args.channels, args.batch, dev, args.repeats)
        m = {v: peak_extra_bytes(v, size, args.channels, args.batch, dev) for v in VARIANTS}
        row = {"size": size, "kernel": kernel_name(size, args.channels, dev), "time_s": t, "peak_extra_bytes": m}
        rows.append(row)
        mib = {v: m[v] / 2**20 for v in m}
        print(
            f"{size:>4}x{size:<3} {row['kernel']:>7} | "
            f"{t['ours'] * 1e3:8.2f} {t['naive'] * 1e3:9.2f} {t['core'] * 1e3:8.2f} | "
            f"{t['naive'] / t['ours']:9.2f}x {t['ours'] / t['core']:8.2f}x | "
            f"{mib['ours']:8.1f} {mib['naive']:9.1f} {mib['core']:8.1f} {m['ours'] / max(m['naive'], 1):13.1%}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

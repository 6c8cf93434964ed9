"""Bad input: random tensors into the attention blocks, wrong values for every CLI flag."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import reference
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagan import SelfAttention1d, SelfAttention2d, SelfAttention3d
from sagan.cli import build_parser, main

BLOCKS = {1: SelfAttention1d, 2: SelfAttention2d, 3: SelfAttention3d}


@st.composite
def attention_inputs(draw):
    dims = draw(st.sampled_from([1, 2, 3]))
    channels = draw(st.integers(1, 24))
    reduction = draw(st.sampled_from([1, 2, 4, 8]))
    pool = draw(st.sampled_from([1, 2, 3]))
    rank = draw(st.sampled_from([dims + 2] * 4 + [dims + 1, dims + 3]))  # mostly right, sometimes wrong
    shape = [draw(st.integers(0, 3))] + [draw(st.sampled_from([channels] * 4 + [channels + 1]))]
    shape += [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64, torch.bfloat16]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "channels_last", "nan"]))
    return dims, channels, reduction, pool, shape, dtype, layout


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_inputs())
def test_attention_gives_the_exact_result_or_a_clear_value_error(case):
    dims, channels, reduction, pool, shape, dtype, layout = case
    torch.manual_seed(0)
    try:
        block = BLOCKS[dims](channels, reduction=reduction, pool=pool)
    except ValueError as err:
        assert channels < reduction and "smaller than reduction" in str(err)
        return
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(shape) if dtype.is_floating_point else torch.randint(-3, 3, shape)
    x = x.to(dtype)
    if layout == "transposed" and x.dim() >= 4:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    elif layout == "nan" and x.is_floating_point() and x.numel():
        x.view(-1)[0] = float("nan")
    try:
        y = block(x)
    except ValueError as err:
        message = str(err)
        assert any(s in message for s in ("rank", "channels", "floating-point", "parameters but the input")), message
        return
    assert y.shape == x.shape and y.dtype == x.dtype == torch.float32
    if x.numel() == 0:
        return
    expected, _ = reference.self_attention(
        x.double(), block, {n: p.detach().double() for n, p in block.named_parameters()}
    )
    if layout == "nan":  # NaN spreads through the softmax to every output that attends to it
        assert torch.isnan(y).any()
        return
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-5)


def _options():
    """(subcommand, option, a bad value) for every option that takes a value."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            if action.type is None and action.choices is None:
                continue  # free text (paths, names): checked after parsing, below
            bad = (
                "not-a-value"
                if action.choices
                else ("-3" if action.type is not None and "positive" in getattr(action.type, "__name__", "") else "x1")
            )
            yield name, action.option_strings[-1], bad


@pytest.mark.parametrize("command, option, bad", list(_options()), ids=lambda v: str(v))
def test_every_flag_with_a_wrong_value_is_one_line_and_exit_2(command, option, bad, capsys):
    positional = {
        "sample": ["run"],
        "eval": ["run"],
        "attention": ["run"],
        "plot": ["run"],
        "export": ["run", "--out", "x"],
        "info": ["32"],
    }.get(command, [])
    with pytest.raises(SystemExit) as exit_info:
        main([command, *positional, option, bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--device", "tpu9"], "--device"),
        (
            ["train", "--device", "cuda:0"] if not torch.cuda.is_available() else ["train", "--data", "/nope"],
            "cuda" if not torch.cuda.is_available() else "/nope",
        ),
        (["train", "--data", "/no/such/folder", "--steps", "1"], "neither a built-in dataset"),
        (["train", "--data", "mnist", "--steps", "1"], "neither a built-in dataset"),
        (["train", "--resolution", "48", "--steps", "1"], "resolution=48 has no preset"),
        (["train", "--attention-g", "12", "--steps", "1"], "Generator attention at [12]"),
        (["train", "--eval-metrics", "fid,xyz"], "choose from fid,is,kid"),
        (["train", "--resume", "/no/such/run"], "no such run directory"),
        (["sample", "/no/such/run"], "no such run directory, checkpoint or export folder"),
        (["info", "48"], "resolution=48 has no preset"),
        (["plot", "/no/such/run"], "metrics.jsonl does not exist"),
        (["export", "/no/such/run", "--out", "x"], "no such run directory, checkpoint or export folder"),
        (["interpolate", "/no/such/run"], "no such run directory, checkpoint or export folder"),
        (["train", "--data", "hf:/no/such/dataset", "--steps", "1"], "cannot load it"),
        (["train", "--data", "/no/such.zip", "--steps", "1"], "neither a built-in dataset"),
    ],
)
def test_bad_values_found_after_parsing_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_unknown_subcommand_and_flag(capsys):
    for argv in (["fly"], ["train", "--wings", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_and_flag_errors_import_no_torch():
    """`sagan --help`, every subcommand's --help and a mistyped flag answer without importing torch (seconds)."""
    code = """
import contextlib, io, sys
from sagan.cli import _SUBCOMMANDS, main
names = [add.__name__.removeprefix("_add_") for add in _SUBCOMMANDS]
for argv in [["--help"]] + [[n, "--help"] for n in names] + [["train", "--wings", "2"], ["sample", "x", "--n", "0"]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(sorted(m for m in ("torch", "torchvision", "numpy", "huggingface_hub") if m in sys.modules), len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.split() == ["[]", "8"], result.stderr

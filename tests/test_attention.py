"""SelfAttention1d/2d/3d against the float64 einsum of the paper's formula, plus layout, kernel and dtype checks."""

from __future__ import annotations

import pytest
import reference
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sagan import SelfAttention1d, SelfAttention2d, SelfAttention3d

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (channels, reduction, value_reduction, pool, bias, spectral_norm, batch, spatial)
CASES = [
    (16, 8, None, 1, True, False, 2, (5, 7)),  # non-square, C-bar = 2
    (8, 8, None, 1, True, False, 1, (4, 4)),  # C = 8: C-bar = 1, batch 1
    (40, 4, None, 1, True, True, 3, (3, 6)),  # C-bar = 10, not a multiple of 8; spectral norm
    (32, 8, 2, 2, False, False, 2, (6, 8)),  # the official TF / BigGAN variant
    (24, 8, 2, 2, True, True, 2, (5, 3)),  # pooled, odd map (ceil), spectral norm
    (16, 8, None, 1, True, False, 2, (1, 1)),  # a single position
]


def make(case, dtype=torch.float32, seed=0):
    channels, reduction, value_reduction, pool, bias, sn, batch, spatial = case
    torch.manual_seed(seed)
    module = SelfAttention2d(channels, reduction, value_reduction, pool, bias, sn).to(dtype)
    with torch.no_grad():
        module.gamma.fill_(0.75)  # gamma != 0 so the attention branch matters
        if bias:
            for layer in (module.query, module.key, module.value, module.out):
                layer.bias.normal_()
    module.eval()  # freeze the spectral-norm power iteration so both paths see one sigma
    x = torch.randn(batch, channels, *spatial, dtype=dtype)
    return module, x


def float64_params(module):
    return {n: p.detach().double().clone().requires_grad_(True) for n, p in module.named_parameters()}


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"C{c[0]}r{c[1]}v{c[2]}p{c[3]}b{int(c[4])}sn{int(c[5])}B{c[6]}{c[7]}"
)
@pytest.mark.parametrize("fused", [True, False])
def test_forward_backward_and_map_match_float64_reference(case, fused):
    module, x = make(case)
    module.fused = fused
    x.requires_grad_(True)
    y = module(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)

    params = float64_params(module)
    x64 = x.detach().double().requires_grad_(True)
    y_ref, beta_ref = reference.self_attention(x64, module, params)
    y_ref.backward(grad_out.double())

    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad.double(), params[name].grad, rtol=1e-4, atol=1e-4, msg=name)
    beta = module.attention_map(x)
    torch.testing.assert_close(beta.double(), beta_ref.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(beta.sum(-1), torch.ones(beta.shape[:2]))


@pytest.mark.parametrize("case", [CASES[0], CASES[4]])
def test_float64_module_matches_reference_tightly(case):
    module, x = make(case, dtype=torch.float64)
    y_ref, _ = reference.self_attention(x, module, float64_params(module))
    torch.testing.assert_close(module(x), y_ref.detach(), rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    module, x = make((8, 4, None, 2, True, False, 2, (3, 4)), dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(module, (x,))


def test_fresh_block_is_identity_exactly():
    module = SelfAttention2d(16)
    assert module.gamma.shape == (1,) and module.gamma.item() == 0.0
    x = torch.randn(2, 16, 5, 3)
    assert torch.equal(module(x), x)


def test_children_are_the_papers_convs():
    m = SelfAttention2d(64, value_reduction=2)
    assert all(isinstance(getattr(m, n), torch.nn.Conv2d) for n in ("query", "key", "value", "out"))
    assert m.query.weight.shape == (8, 64, 1, 1) and m.key.weight.shape == (8, 64, 1, 1)
    assert m.value.weight.shape == (32, 64, 1, 1) and m.out.weight.shape == (64, 32, 1, 1)
    assert SelfAttention1d(16).query.__class__ is torch.nn.Conv1d
    assert SelfAttention3d(16).query.__class__ is torch.nn.Conv3d


def _copy_into(dst, src):
    """Load a 2-D block's weights into a 1-D or 3-D one (1x1 kernels differ only in trailing dims)."""
    state = {k: v.reshape(dst.state_dict()[k].shape) for k, v in src.state_dict().items()}
    dst.load_state_dict(state)


@pytest.mark.parametrize("pool", [1, 2])
def test_1d_and_3d_agree_with_2d_on_reshaped_input(pool):
    module, x = make((16, 8, None, pool, True, False, 2, (4, 6)))
    y = module(x)
    three = SelfAttention3d(16, pool=pool).eval()
    _copy_into(three, module)
    torch.testing.assert_close(three(x.unsqueeze(2)).squeeze(2), y)  # (B, C, 1, H, W)
    torch.testing.assert_close(three.attention_map(x.unsqueeze(2)), module.attention_map(x))
    if pool == 1:  # 1-D pooling windows are runs of the flattened sequence, not 2x2 squares
        one = SelfAttention1d(16).eval()
        _copy_into(one, module)
        torch.testing.assert_close(one(x.flatten(2)).view_as(y), y)


def test_1d_3d_match_reference():
    torch.manual_seed(1)
    for module, x in (
        (SelfAttention1d(16, pool=3), torch.randn(2, 16, 10)),
        (SelfAttention3d(8, pool=2), torch.randn(1, 8, 3, 4, 5)),
    ):
        with torch.no_grad():
            module.gamma.fill_(1.3)
        y_ref, beta_ref = reference.self_attention(x.double(), module, float64_params(module))
        torch.testing.assert_close(module(x).double(), y_ref.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module.attention_map(x).double(), beta_ref.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_kernel_is_chosen_not_math(pool, channels_last):
    """A transposed q/k/v view makes CPU SDPA fall back to its math kernel (which builds N x N)."""
    module = SelfAttention2d(64, pool=pool)
    x = torch.randn(2, 64, 16, 16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    q, k, v = (t.unsqueeze(1) for t in module._project(x))
    assert all(t.stride(-1) == 1 for t in (q, k, v))
    math_backend = 0
    assert int(torch._fused_sdp_choice(q, k, v)) != math_backend


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_training_path_never_builds_n_by_n(fused):
    module = SelfAttention2d(16)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    x = torch.randn(1, 16, 32, 32, requires_grad=True)  # N = 1024, N^2 = 1M
    module.fused = fused
    with _LargestTensor() as probe:
        module(x).sum().backward()
    n = 32 * 32
    if fused:
        assert probe.largest < n * n // 16, probe.largest
    else:  # the reference path does build it: the probe can tell
        assert probe.largest >= n * n


def test_channels_last_in_channels_last_out():
    module, x = make(CASES[0])
    y = module(x)
    y_cl = module(x.to(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y)


def test_non_contiguous_input():
    module, x = make(CASES[0])
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, odd strides
    torch.testing.assert_close(module(x_t), module(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    module, x = make(CASES[3])
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        y = module(x)
    y.sum().backward()
    torch.testing.assert_close(y.float(), module(x).detach(), rtol=0.05, atol=0.05)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert module.gamma.grad is not None


def test_empty_batch():
    module = SelfAttention2d(16)
    x = torch.randn(0, 16, 4, 4, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.sum().backward()


def test_spectral_norm_wraps_all_four_convs():
    from sagan.spectral import has_spectral_norm

    module = SelfAttention2d(16, spectral_norm=True)
    assert all(has_spectral_norm(getattr(module, n)) for n in ("query", "key", "value", "out"))
    assert not has_spectral_norm(SelfAttention2d(16).query)


@pytest.mark.parametrize(
    "build, x, message",
    [
        (lambda: SelfAttention2d(6), None, "channels=6 is smaller than reduction=8"),
        (lambda: SelfAttention2d(16, value_reduction=32), None, "value_reduction=32"),
        (lambda: SelfAttention2d(16, pool=0), None, "pool=0"),
        (lambda: SelfAttention2d(16), torch.randn(2, 16, 4), "rank 4"),
        (lambda: SelfAttention1d(16), torch.randn(2, 16, 4, 4), "rank 3"),
        (lambda: SelfAttention2d(16), torch.randn(2, 8, 4, 4), "built for channels=16 but the input has 8"),
        (lambda: SelfAttention2d(16), torch.ones(2, 16, 4, 4, dtype=torch.long), "floating-point"),
        (lambda: SelfAttention2d(16), torch.randn(2, 16, 4, 4, dtype=torch.float64), "float64"),
    ],
)
def test_bad_input_is_a_clear_value_error(build, x, message):
    with pytest.raises(ValueError, match=message):
        module = build()
        module(x)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    module, x = make(CASES[3])
    compiled = torch.compile(module)
    x.requires_grad_(True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, module(x))


@CUDA
@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_cuda_matches_reference_fp32_and_bf16(case):
    module, x = make(case)
    module, x = module.cuda(), x.cuda()
    y_ref, _ = reference.self_attention(x.double(), module, float64_params(module))
    torch.testing.assert_close(module(x).double(), y_ref.detach(), rtol=1e-3, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = module(x.requires_grad_(True))
    y.sum().backward()
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=0.05, atol=0.05)


@CUDA
def test_cuda_bf16_picks_a_fused_kernel():
    module = SelfAttention2d(64).cuda()
    x = torch.randn(2, 64, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        q, k, v = (t.unsqueeze(1) for t in module._project(x))
        assert int(torch._fused_sdp_choice(q, k, v)) != 0

"""Generator and Discriminator: shapes, spectral norm everywhere, attention placement, conditioning, losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sagan import PRESETS, Discriminator, Generator, SelfAttention2d
from sagan.losses import LOSSES, get_loss
from sagan.models import count_parameters
from sagan.spectral import NORMALISED_LAYERS, has_spectral_norm

SMALL_CH = 8  # widths do not change the wiring; keep the big presets cheap on CPU


@pytest.mark.parametrize("resolution", sorted(PRESETS))
@pytest.mark.parametrize("num_classes", [0, 7])
def test_shapes_and_ranges(resolution, num_classes):
    torch.manual_seed(0)
    G = Generator(resolution, num_classes=num_classes, ch=SMALL_CH)
    D = Discriminator(resolution, num_classes=num_classes, ch=SMALL_CH)
    y = torch.randint(0, num_classes, (2,)) if num_classes else None
    x = G(torch.randn(2, 128), y)
    assert x.shape == (2, 3, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x, y).shape == (2,)


def _layers(net):
    return [m for m in net.modules() if isinstance(m, NORMALISED_LAYERS)]


@pytest.mark.parametrize("num_classes, shared", [(0, False), (5, False), (5, True)])
def test_every_layer_is_spectrally_normalised(num_classes, shared):
    torch.manual_seed(0)
    G = Generator(32, num_classes=num_classes, ch=SMALL_CH, shared_embedding=shared)
    D = Discriminator(32, num_classes=num_classes, ch=SMALL_CH)
    for net in (G, D):
        layers = _layers(net)
        assert layers and all(has_spectral_norm(m) for m in layers)
        assert any(isinstance(m, nn.Embedding) for m in layers) == bool(num_classes)
        with torch.no_grad():  # orthogonal init has sigma = 1 already: make the test able to fail
            for m in layers:
                m.parametrizations.weight.original.normal_().mul_(3.0)
    y = torch.randint(0, num_classes, (4,)) if num_classes else None
    for _ in range(40):  # one power iteration per training-mode forward
        D(G(torch.randn(4, 128), y), y)
    for net in (G, D):
        for m in _layers(net):
            sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
            assert abs(sigma.item() - 1) < 0.05, (type(m).__name__, sigma)


def _attention_inputs(net, run):
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, tuple(inp[0].shape[2:])))
        for n, m in net.attention_blocks().items()
    ]
    run()
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("resolution", sorted(PRESETS))
def test_attention_sits_at_the_preset_resolutions(resolution):
    preset = PRESETS[resolution]
    G = Generator(resolution, ch=SMALL_CH)
    D = Discriminator(resolution, ch=SMALL_CH)
    seen_g = _attention_inputs(G, lambda: G(torch.randn(1, 128)))
    assert sorted(seen_g.values()) == [(r, r) for r in sorted(preset.g_attention)]
    seen_d = _attention_inputs(D, lambda: D(torch.randn(1, 3, resolution, resolution)))
    assert sorted(seen_d.values()) == [(r, r) for r in sorted(preset.d_attention)]
    for net in (G, D):
        blocks = [m for m in net.modules() if isinstance(m, SelfAttention2d)]
        assert len(blocks) == len(net.attention_blocks()) and all(b.gamma.item() == 0 for b in blocks)
        assert all(has_spectral_norm(b.query) and has_spectral_norm(b.out) for b in blocks)


def test_attention_can_be_moved_and_bad_placement_is_refused():
    G = Generator(32, ch=SMALL_CH, attention=(8, 32))
    assert sorted(_attention_inputs(G, lambda: G(torch.randn(1, 128))).values()) == [(8, 8), (32, 32)]
    with pytest.raises(ValueError, match="Generator attention at \\[12\\]"):
        Generator(32, ch=SMALL_CH, attention=(12,))
    with pytest.raises(ValueError, match="Discriminator attention at \\[32\\]"):
        Discriminator(32, ch=SMALL_CH, attention=(32,))


def test_preset_128_matches_the_official_widths():
    G, D = Generator(128, num_classes=1000), Discriminator(128, num_classes=1000)
    g_widths = [G.linear.out_features // 16] + [b.conv2.out_channels for b in G.blocks]
    assert g_widths == [1024, 1024, 512, 256, 128, 64]
    assert [b.conv2.out_channels for b in D.blocks] == [64, 128, 256, 512, 1024, 1024]
    assert list(G.attention_blocks()) == ["G.attn64"] and list(D.attention_blocks()) == ["D.attn32"]
    # BigGAN (Brock et al. 2019), table 1, row 1: the SAGAN baseline at ch=64 has 81.5M parameters.
    assert round((count_parameters(G) + count_parameters(D)) / 1e6, 1) == 81.5


def test_eval_generator_is_deterministic():
    G = Generator(32, ch=SMALL_CH).eval()
    z = torch.randn(3, 128)
    assert torch.equal(G(z), G(z))


def test_conditional_generator_depends_on_class():
    torch.manual_seed(0)
    for kwargs in ({}, {"shared_embedding": True}, {"hierarchical_z": True, "z_dim": 120}):
        G = Generator(32, num_classes=5, ch=SMALL_CH, **kwargs).eval()
        z = torch.randn(1, G.z_dim).repeat(2, 1)
        a, b = G(z, torch.tensor([0, 3]))
        assert (a - b).abs().mean() > 1e-3, kwargs


def test_class_gains_under_spectral_norm_have_a_learnt_strength():
    """SN fixes each class row of the gain table at norm ~1; a learnt scale sets how far the class moves BN."""
    from sagan.layers import ConditionalBatchNorm2d
    from sagan.spectral import apply_spectral_norm

    c = 64
    cbn = apply_spectral_norm(ConditionalBatchNorm2d(c, num_classes=2))
    rows = torch.ones(2, c)
    rows[1, c // 2 :] = -1  # orthogonal rows of norm 1 after the division: both singular values are 1
    with torch.no_grad():
        for table in (cbn.gain, cbn.bias):
            table.parametrizations.weight.original.copy_(rows / c**0.5)
    x = torch.randn(256, c, 2, 2)
    y = torch.zeros(256, dtype=torch.long)
    # s = 1 at init: SN alone allows gains of 1 + 1/sqrt(C) and biases of 1/sqrt(C) per channel
    torch.testing.assert_close(cbn(x, y).std((0, 2, 3)), torch.full((c,), 1 + c**-0.5), rtol=0.05, atol=0)
    with torch.no_grad():
        cbn.log_scale.fill_(0.5 * math.log(c))  # s = sqrt(C): gain 2 and bias 1 on every channel
    out = cbn(x, y)
    torch.testing.assert_close(out.std((0, 2, 3)), torch.full((c,), 2.0), rtol=0.05, atol=0)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.full((c,), 1.0), rtol=0, atol=0.05)
    out.square().mean().backward()
    assert cbn.log_scale.grad is not None and cbn.log_scale.grad.abs() > 0


def test_hinge_step_moves_discriminator_the_right_way():
    torch.manual_seed(0)
    G, D = Generator(32, num_classes=3, ch=SMALL_CH), Discriminator(32, num_classes=3, ch=SMALL_CH)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 3, (8,))
    with torch.no_grad():
        fake = G(torch.randn(8, 128), y)
    D.eval()  # fixed sigma while measuring
    gap_before = (D(real, y) - D(fake, y)).mean()
    D.train()
    opt = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))  # the SAGAN recipe
    get_loss("hinge").d(D(real, y), D(fake, y)).backward()
    opt.step()
    D.eval()
    # Fresh logits are all > 1 (sum pooling), so only the fake term has a gradient: the step must
    # push fakes down faster than it drags reals with them.
    gap_after = (D(real, y) - D(fake, y)).mean()
    assert gap_after > gap_before + 0.5, (gap_before, gap_after)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda G, D: G(torch.randn(2, 64), torch.tensor([0, 1])), "z of shape \\(B, 128\\)"),
        (lambda G, D: G(torch.randn(2, 128)), "pass class labels y"),
        (lambda G, D: G(torch.randn(2, 128), torch.tensor([0, 5])), "must lie in \\[0, 5\\)"),
        (lambda G, D: G(torch.randn(2, 128), torch.tensor([0.0, 1.0])), "integer class indices"),
        (lambda G, D: D(torch.randn(2, 3, 16, 16), torch.tensor([0, 1])), "images of shape \\(B, 3, 32, 32\\)"),
        (lambda G, D: D(torch.randn(2, 3, 32, 32), torch.tensor([-1, 1])), "must lie in"),
        (lambda G, D: Generator(48), "resolution=48 has no preset"),
    ],
)
def test_bad_input(call, message):
    G, D = Generator(32, num_classes=5, ch=SMALL_CH), Discriminator(32, num_classes=5, ch=SMALL_CH)
    with pytest.raises(ValueError, match=message):
        call(G, D)


def test_unconditional_net_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        Generator(32, ch=SMALL_CH)(torch.randn(2, 128), torch.tensor([0, 1]))


def test_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    mean = lambda xs: sum(xs) / len(xs)
    sp = lambda v: torch.log1p(torch.exp(torch.tensor(v))).item()
    expected = {
        "hinge": (
            mean([max(0, 1 - r) for r in real.tolist()]) + mean([max(0, 1 + f) for f in fake.tolist()]),
            -mean(fake.tolist()),
        ),
        "nonsaturating": (
            mean([sp(-r) for r in real.tolist()]) + mean([sp(f) for f in fake.tolist()]),
            mean([sp(-f) for f in fake.tolist()]),
        ),
        "wasserstein": (mean(fake.tolist()) - mean(real.tolist()), -mean(fake.tolist())),
    }
    for name, (d, g) in expected.items():
        loss = LOSSES[name]
        assert loss.d(real, fake).item() == pytest.approx(d, rel=1e-6)
        assert loss.g(fake).item() == pytest.approx(g, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'lsgan'"):
        get_loss("lsgan")

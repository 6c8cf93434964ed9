"""add_self_attention: blocks inside other people's nets, identity at insertion, trainable, saveable."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sagan import SelfAttention1d, SelfAttention2d, SelfAttention3d, add_self_attention
from sagan.spectral import has_spectral_norm


class TinyUNet(nn.Module):
    """Two levels down, two up, skip connections: the shape of the nets users ask about."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU()),
            ]
        )
        self.mid = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.out = nn.Conv2d(2 * c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down[0](x)
        h = self.up(torch.relu(self.mid(self.down[1](skip))))
        return self.out(torch.cat([h, skip], 1))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_resnet18_outputs_are_unchanged_at_insertion_and_blocks_learn():
    net, x = _resnet(), torch.randn(2, 3, 64, 64)
    before = net(x)
    add_self_attention(net, after=["layer2", "layer3.1"])
    assert isinstance(net.layer2.self_attention, SelfAttention2d) and net.layer2.self_attention.channels == 128
    assert net.get_submodule("layer3.1").self_attention.channels == 256
    assert torch.equal(net(x), before)  # gamma = 0: the identity
    net.train()
    net(x).square().mean().backward()
    block = net.layer2.self_attention
    assert block.gamma.grad is not None and block.gamma.grad.abs().item() > 0  # gradients reach the new blocks
    with torch.no_grad():
        block.gamma.fill_(0.5)
    assert not torch.equal(net.eval()(x), before)  # and the block acts once gamma moves


def test_inside_a_sequential_and_a_unet_the_block_runs_once():
    seq = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
    add_self_attention(seq, after="0")
    calls = []
    seq[0].self_attention.register_forward_hook(lambda *a: calls.append(1))
    seq(torch.randn(1, 3, 8, 8))
    assert calls == [1]
    unet, x = TinyUNet(), torch.randn(2, 3, 16, 16)
    before = unet(x)
    add_self_attention(unet, after=["down.1", "mid"], spectral_norm=True)
    assert torch.equal(unet(x), before)
    assert all(has_spectral_norm(m) for m in (unet.mid.self_attention.query, unet.mid.self_attention.out))
    seq_calls = []
    unet.down[1].self_attention.register_forward_hook(lambda *a: seq_calls.append(1))
    unet(x)
    assert seq_calls == [1]


def test_state_dict_round_trip_with_documented_keys():
    net = add_self_attention(_resnet(), after=["layer2"])
    keys = [k for k in net.state_dict() if ".self_attention." in k]
    assert "layer2.self_attention.query.weight" in keys and "layer2.self_attention.gamma" in keys
    with torch.no_grad():
        net.layer2.self_attention.gamma.fill_(0.3)
    fresh = add_self_attention(_resnet(), after=["layer2"])
    fresh.load_state_dict(net.state_dict())  # strict: every key matches
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(fresh(x), net(x))
    plain = _resnet()  # the original weights load into a modified net (strict=False: only the new keys are missing)
    missing, unexpected = add_self_attention(_resnet(), after="layer2").load_state_dict(
        plain.state_dict(), strict=False
    )
    assert not unexpected and all(".self_attention." in k for k in missing)


@pytest.mark.slow
def test_torch_compile_runs_the_inserted_blocks():
    net = add_self_attention(TinyUNet(), after=["mid"])
    with torch.no_grad():
        net.mid.self_attention.gamma.fill_(0.5)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(torch.compile(net)(x), net(x))


def test_1d_and_3d_outputs_get_1d_and_3d_blocks():
    net1 = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU())
    net3 = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU())
    add_self_attention(net1, after="1")
    add_self_attention(net3, after="0", reduction=4)
    assert isinstance(net1[1].self_attention, SelfAttention1d) and isinstance(net3[0].self_attention, SelfAttention3d)
    assert net1(torch.randn(2, 4, 10)).shape == (2, 16, 10)
    assert net3(torch.randn(1, 2, 4, 4, 4)).shape == (1, 8, 4, 4, 4)


@pytest.mark.parametrize(
    "after, message",
    [
        ("layer5", "has no submodule 'layer5'; did you mean layer4"),
        (["layer2", "layer2"], "named more than once"),
        ("fc", "not a feature map"),
    ],
)
def test_bad_names_are_one_clear_line(after, message):
    with pytest.raises(ValueError, match=message) as caught:
        add_self_attention(_resnet(), after=after)
    assert len(str(caught.value).splitlines()) == 1


def test_a_module_the_probe_never_runs_and_a_second_insertion_are_refused():
    net = TinyUNet()
    net.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="did not run"):
        add_self_attention(net, after="unused")
    add_self_attention(net, after="mid")
    with pytest.raises(ValueError, match="already has a self-attention block"):
        add_self_attention(net, after="mid")

"""Shared fixtures: tiny runs and an offline Inception weights file."""

from __future__ import annotations

from unittest import mock

import pytest
import torch


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """torch-fidelity's Inception-v3 architecture with random weights, written by the test itself.

    The real weights are a download; the plumbing (features, FID, IS, KID) is the same with any
    weights, and FID of a set against itself is ~0 whatever they are.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    for (
        m
    ) in net.modules():  # He init keeps activations alive through ~90 layers; PyTorch's default fades them to constants
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """A finished 6-step shapes run with a narrow net: what the commands that read runs are tested on."""
    from runs import tiny_flags

    from sagan.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    argv = ["train", "--steps", "6", "--out", str(out), "--sample-every", "3", "--checkpoint-every", "3"]
    argv += tiny_flags(batch_size=8, sample_count=12, log_every=2)
    assert main(argv) == 0
    return str(out)

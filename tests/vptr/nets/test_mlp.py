"""MLP builder: layer order, activate_final, LayerNorm placement and initialisations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vptr.errors import ConfigError, UnknownNameError
from vptr.nets import make_mlp


def _kinds(net):
    return [type(m).__name__ for m in net]


def test_layer_order_and_activate_final():
    assert _kinds(make_mlp(4, (8, 3))) == ["Linear", "ReLU", "Linear"]
    # ICVF's φ, ψ, T: ReLU after every layer, LayerNorm after the activation (LayerNormMLP)
    assert _kinds(make_mlp(4, (8, 3), activate_final=True, layer_norm=True)) == [
        "Linear", "ReLU", "LayerNorm", "Linear", "ReLU", "LayerNorm"]
    net = make_mlp(4, (8, 3), activate_final=True)
    assert (net(torch.randn(16, 4)) >= 0).all()
    assert _kinds(make_mlp(4, (5,), activation="tanh", activate_final=True)) == ["Linear", "Tanh"]


def test_initialisations():
    torch.manual_seed(0)
    ortho = make_mlp(16, (16, 16), init="orthogonal")
    for m in ortho:
        if isinstance(m, nn.Linear):
            torch.testing.assert_close(m.weight @ m.weight.T, torch.eye(16), atol=1e-5, rtol=0)
            assert (m.bias == 0).all()
    xavier = make_mlp(100, (300,), init="xavier_uniform")
    bound = (6 / (100 + 300)) ** 0.5  # variance_scaling(1, fan_avg, uniform) of jaxrl_m
    assert xavier[0].weight.abs().max() <= bound and xavier[0].weight.abs().max() > 0.95 * bound
    assert (xavier[0].bias == 0).all()


def test_invalid_arguments():
    with pytest.raises(UnknownNameError, match="relu"):
        make_mlp(4, (8,), activation="relux")
    with pytest.raises(UnknownNameError, match="orthogonal"):
        make_mlp(4, (8,), init="kaiming")
    with pytest.raises(ConfigError):
        make_mlp(4, ())
    with pytest.raises(ConfigError):
        make_mlp(0, (3,))

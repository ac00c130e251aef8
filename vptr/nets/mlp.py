"""MLP builder shared by the pretraining heads and the fine-tuning critics.

Two conventions from the reference code are options rather than forks:

* ICVF release (``jaxrl_m.networks.MLP``, used with ``activate_final=True`` for φ, ψ and T):
  ReLU after *every* layer including the last, weights initialised with
  ``variance_scaling(1, fan_avg, uniform)`` (= Xavier-uniform), zero biases.
  ``LayerNormMLP`` there puts the LayerNorm *after* the activation.
* TD-JEPA / Meta Motivo: orthogonal weights, zero biases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import nn

from vptr.errors import ConfigError, unknown

Init = Literal["torch", "xavier_uniform", "orthogonal"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}

INITS = ("torch", "xavier_uniform", "orthogonal")


def init_linear_(layer: nn.Linear, init: str, gain: float = 1.0) -> None:
    """Re-initialise one linear layer in place; biases become 0 for non-torch schemes."""
    if init == "torch":
        layer.reset_parameters()
        return
    if init == "xavier_uniform":
        nn.init.xavier_uniform_(layer.weight, gain=gain)
    elif init == "orthogonal":
        nn.init.orthogonal_(layer.weight, gain=gain)
    else:
        raise unknown("init", init, INITS)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def make_mlp(
    in_dim: int,
    dims: Sequence[int],
    *,
    activation: str = "relu",
    activate_final: bool = False,
    layer_norm: bool = False,
    init: str = "torch",
) -> nn.Sequential:
    """Linear layers of widths ``dims`` (the last entry is the output width).

    Every layer but the last is followed by the activation (and a LayerNorm after it when
    ``layer_norm``); ``activate_final=True`` does the same after the last layer, as the
    ICVF release does for its φ, ψ and T networks.
    """
    dims = tuple(int(d) for d in dims)
    if in_dim <= 0 or not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"MLP needs a positive input width and output widths, got "
                          f"in_dim={in_dim}, dims={dims}")
    if activation not in ACTIVATIONS:
        raise unknown("activation", activation, ACTIVATIONS)
    if init not in INITS:
        raise unknown("init", init, INITS)
    layers: list[nn.Module] = []
    prev = in_dim
    for i, width in enumerate(dims):
        linear = nn.Linear(prev, width)
        init_linear_(linear, init)
        layers.append(linear)
        if i + 1 < len(dims) or activate_final:
            layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(width))
        prev = width
    return nn.Sequential(*layers)


def mlp_out_dim(net: nn.Sequential) -> int:
    """Output width of a network built by :func:`make_mlp`."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    return linears[-1].out_features


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


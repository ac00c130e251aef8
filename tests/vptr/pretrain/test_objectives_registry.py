"""Registry, configs and a training sanity check for every objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vptr.config import build_config
from vptr.errors import ConfigError, UnknownNameError
from vptr.nets import make_encoder
from vptr.pretrain import OBJECTIVES, get_objective
from vptr.train.core import autocast, ema_update, make_target

SMALL = {  # small heads so 50 steps take a few seconds on a shared CPU
    "icvf": {"hidden_dims": (32, 32)},
    "tdjepa": {"phi_dim": 16, "psi_dim": 16, "head_hidden_dims": (32,),
               "predictor_hidden_dims": (32,), "orth_coef": 0.1},
    "tcn": {"embed_dim": 16},
    "vip": {"embed_dim": 16},
    "none": {},
}


def test_registry_entries_and_unknown_name():
    assert set(OBJECTIVES) == {"icvf", "tdjepa", "tcn", "vip", "none"}
    for name, obj in OBJECTIVES.items():
        assert obj.name == name and get_objective(name) is obj and obj.summary
        for f in dataclasses.fields(obj.config_cls):  # every option documented for --help
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"
    with pytest.raises(UnknownNameError, match="icvf, none, tcn, tdjepa, vip"):
        get_objective("icfv")


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_declared_needs_match_the_objective(name):
    """What an entry declares is what the loop relies on: no fallbacks anywhere."""
    obj = get_objective(name)
    cfg = obj.config_cls(**SMALL[name])
    fields = {f.name for f in dataclasses.fields(cfg)}
    nets = obj.create(cfg, make_encoder("impala_small", 3, 24))
    assert obj.trains == any(p.requires_grad for p in nets.parameters())
    assert obj.trains == ({"lr", "adam_eps"} <= fields)
    assert obj.target_network == ("target_rate" in fields)
    if obj.target_network:
        assert 0 < cfg.target_rate <= 1
    assert obj.discount == ("discount" in fields)
    assert obj.value_discount(cfg) == (cfg.discount if obj.discount else None)
    assert obj.positive_window == ("positive_window" in fields)
    if obj.positive_window:  # the sampler's near-frame window is the objective's option
        assert obj.near_window(dataclasses.replace(cfg, positive_window=7)) == 7
    assert "batch_size" in fields


def test_pretrain_command_is_built_from_the_registry():
    """--objective choices and one config section per objective come from OBJECTIVES."""
    import typing

    from vptr.cli import build_parser
    from vptr.train.pretrain_loop import PretrainConfig

    hints = typing.get_type_hints(PretrainConfig)
    assert typing.get_args(hints["objective"]) == tuple(OBJECTIVES)
    for name, obj in OBJECTIVES.items():
        assert hints[name] is obj.config_cls
        cfg = build_config(PretrainConfig, {"data": "x", "objective": name})
        assert isinstance(cfg.objective_cfg, obj.config_cls)
    ns = build_parser().parse_args(["pretrain", "--objective", "tcn", "--tcn.embed-dim", "7"])
    assert ns.objective == "tcn" and ns.__dict__["tcn.embed_dim"] == 7
    with pytest.raises(ConfigError, match="trains nothing"):
        build_config(PretrainConfig, {"data": "x", "objective": "none", "lr": 1e-3})


def test_configs_from_dicts_reject_unknown_and_invalid_options():
    icvf_cls = get_objective("icvf").config_cls
    cfg = build_config(icvf_cls, {"expectile": 0.7, "hidden_dims": [64, 64]})
    assert cfg.expectile == 0.7 and cfg.hidden_dims == (64, 64)
    with pytest.raises(ConfigError, match="expectle"):
        build_config(get_objective("icvf").config_cls, {"expectle": 0.7})
    with pytest.raises(ConfigError, match="expectile"):
        build_config(get_objective("tdjepa").config_cls, {"expectile": 2})


def test_release_defaults_are_the_spec_defaults():
    icvf_cfg = get_objective("icvf").config_cls()
    assert (icvf_cfg.expectile, icvf_cfg.discount, icvf_cfg.lr, icvf_cfg.adam_eps,
            icvf_cfg.batch_size, icvf_cfg.target_rate, icvf_cfg.hidden_dims,
            icvf_cfg.num_heads) == (0.9, 0.99, 5e-5, 3.125e-4, 64, 0.005, (256, 256), 2)
    assert get_objective("vip").config_cls().discount == 0.98


def small_objective(name, make_batch, sample_indices):
    """(objective, small config, networks, target or None, a batch of 16) for ``name``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (40, 3, 24, 24), dtype=torch.uint8, generator=g)
    batch = make_batch(sample_indices(16, seed=3), frames)
    obj = get_objective(name)
    cfg = obj.config_cls(**SMALL[name])
    nets = obj.create(cfg, make_encoder("impala_small", 3, 24))
    target = make_target(nets) if obj.target_network else None
    return obj, cfg, nets, target, batch


@pytest.mark.parametrize("name", sorted(n for n, o in OBJECTIVES.items() if o.trains))
def test_loss_decreases_on_a_fixed_batch(name, make_batch, sample_indices):
    obj, cfg, nets, target, batch = small_objective(name, make_batch, sample_indices)
    opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(50):
        loss, metrics = obj.loss_fn(nets, target, batch, cfg)
        assert all(k.startswith(name + "/") for k in metrics)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if target is not None:
            ema_update(target, nets, 0.05)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first if first > 0 else last < first, (name, first, last)
    with torch.no_grad():
        v = obj.value_fn(nets, batch["obs"], batch["goal"])
    assert v.shape == (16,) and torch.isfinite(v).all()


@pytest.mark.parametrize("name", sorted(n for n, o in OBJECTIVES.items() if o.trains))
def test_every_objective_steps_under_cpu_bf16_autocast(name, make_batch, sample_indices):
    """``--amp bf16`` on CPU: finite loss and finite fp32 gradients on every trainable
    parameter."""
    obj, cfg, nets, target, batch = small_objective(name, make_batch, sample_indices)
    with autocast("bf16", torch.device("cpu")):
        loss, _ = obj.loss_fn(nets, target, batch, cfg)
    loss.backward()
    assert torch.isfinite(loss)
    bad = [n for n, p in nets.named_parameters() if p.requires_grad
           and (p.grad is None or p.grad.dtype != torch.float32 or not torch.isfinite(p.grad).all())]
    assert not bad, f"{name}: {bad[:5]}"

"""ICVF loss against a plain-numpy hand computation (release semantics, see icvf.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from vptr.errors import ConfigError, DataError
from vptr.pretrain import icvf
from vptr.train.core import make_target

GAMMA, TAU = 0.9, 0.8


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _np_mlp(seq: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """The release MLP by hand: Linear then ReLU after EVERY layer (activate_final=True),
    and with layer_norm a LayerNorm after each ReLU (the order the reduced configs use)."""
    kinds = [type(m) for m in seq]
    for m in seq:
        if isinstance(m, nn.Linear):
            x = _np(m.weight) @ x + _np(m.bias)
        elif isinstance(m, nn.ReLU):
            x = np.maximum(x, 0.0)
        elif isinstance(m, nn.LayerNorm):
            x = (x - x.mean()) / np.sqrt(x.var() + m.eps) * _np(m.weight) + _np(m.bias)
        else:
            raise AssertionError(f"unexpected layer {m}")
    assert kinds.count(nn.ReLU) == kinds.count(nn.Linear)
    return x


def _np_value(head: icvf.MultilinearHead, fs, fg, fz) -> float:
    """V(s, s+, z) = Σ_d (A(Tz ⊙ φ(s)))_d (B(Tz ⊙ ψ(s+)))_d, Tz = T(ψ(s_z)), one sample."""
    phi = _np_mlp(head.phi, fs)
    psi = _np_mlp(head.psi, fg)
    tz = _np_mlp(head.T, _np_mlp(head.psi, fz))
    a = _np(head.A.weight) @ (tz * phi) + _np(head.A.bias)
    b = _np(head.B.weight) @ (tz * psi) + _np(head.B.bias)
    return float(sum(a[d] * b[d] for d in range(len(a))))


def _hand_loss(nets, target, batch, variant: str = "release") -> tuple[float, list[float]]:
    feat = {k: batch[k].double().numpy().reshape(len(batch[k]), -1) / 255.0
            for k in ("obs", "next_obs", "goal", "intent")}
    n = len(batch["obs"])
    per_head = [0.0] * len(nets.heads)
    advs = []
    for i in range(n):
        s, s1, g, z = (feat[k][i] for k in ("obs", "next_obs", "goal", "intent"))
        reached = int(batch["obs_index"][i]) == int(batch["goal_index"][i])
        reached_z = int(batch["obs_index"][i]) == int(batch["intent_index"][i])
        r, mask = (0.0, 0.0) if reached else (-1.0, 1.0)
        rz, mask_z = (0.0, 0.0) if reached_z else (-1.0, 1.0)
        next_zz = [_np_value(h, s1, z, z) for h in target.heads]
        cur_zz = [_np_value(h, s, z, z) for h in target.heads]
        next_v = sum(next_zz) / len(next_zz) if variant == "mean_q" else min(next_zz)
        adv = rz + GAMMA * mask_z * next_v - sum(cur_zz) / len(cur_zz)
        advs.append(adv)
        for k, (h, th) in enumerate(zip(nets.heads, target.heads)):
            q = r + GAMMA * mask * _np_value(th, s1, g, z)
            v = _np_value(h, s, g, z)
            sign = q - v if variant == "td_sign" else adv  # td_sign: a wrong weighting
            w = TAU if sign >= 0 else 1 - TAU
            per_head[k] += w * (q - v) ** 2 / n
    return sum(per_head), advs


INDICES = {  # 0: goal reached (s+ is s); 1: generic; 2: intention reached; 3: intent ==
    # goal; 4: s' clipped at the end of its trajectory (s' is s)
    "obs_index": [3, 12, 25, 30, 39],
    "next_obs_index": [4, 13, 26, 31, 39],
    "goal_index": [3, 17, 8, 36, 5],
    "intent_index": [6, 19, 25, 36, 21],
}


def _nets(flat_encoder, layer_norm: bool, seed: int):
    torch.manual_seed(seed)
    cfg = icvf.ICVFConfig(hidden_dims=(5, 4), discount=GAMMA, expectile=TAU,
                          layer_norm=layer_norm)
    nets = icvf.create(cfg, flat_encoder(3, 2, 2)).double()
    with torch.no_grad():  # LayerNorm gains and biases away from 1 and 0: their order shows
        for m in nets.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    target = make_target(nets)
    with torch.no_grad():  # a target that differs from the online net, with values O(1-10)
        for p in target.parameters():
            p.normal_(0.0, 0.7)
    return cfg, nets, target


@pytest.fixture(params=[False, True], ids=["plain", "layer_norm"])
def setup(request, frames, flat_encoder, make_batch):
    """The first initialisation whose advantages have both signs (otherwise a test could
    not see a sign error), without and with LayerNorm (every shipped config has it on)."""
    batch = make_batch(INDICES, frames)
    for seed in range(1, 60):
        cfg, nets, target = _nets(flat_encoder, request.param, seed)
        _, advs = _hand_loss(nets, target, batch)
        if any(a >= 0 for a in advs) and any(a < 0 for a in advs):
            return cfg, nets, target, batch
    pytest.fail("no initialisation gives advantages of both signs: the test is vacuous")


def test_icvf_loss_matches_hand_computation(setup):
    cfg, nets, target, batch = setup
    loss, metrics = icvf.loss_fn(nets, target, batch, cfg)
    expected, advs = _hand_loss(nets, target, batch)
    # the batch exercises both weights: otherwise the test could not see a sign error
    assert any(a >= 0 for a in advs) and any(a < 0 for a in advs)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # the advantage itself (min over heads at s', mean over heads at s, masks) is pinned too
    assert metrics["icvf/adv_mean"].item() == pytest.approx(np.mean(advs), rel=1e-9)
    assert metrics["icvf/adv_pos_frac"].item() == pytest.approx(np.mean([a >= 0 for a in advs]))
    assert metrics["icvf/mask_mean"].item() == pytest.approx(0.8)  # one reached goal of 5
    assert metrics["icvf/reward_mean"].item() == pytest.approx(-0.8)
    # weighting by the sign of the TD error instead of the advantage gives another number
    wrong, _ = _hand_loss(nets, target, batch, variant="td_sign")
    assert abs(wrong - expected) > 1e-3


def test_icvf_gradient_reaches_only_online_network(setup):
    cfg, nets, target, batch = setup
    target.requires_grad_(True)  # as if trainable: the loss itself must stop the gradient
    loss, _ = icvf.loss_fn(nets, target, batch, cfg)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in target.parameters())
    grads = [p.grad for p in nets.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_icvf_min_q_and_dedup_options(setup):
    cfg, nets, target, batch = setup
    base = icvf.loss_fn(nets, target, batch, cfg)[0].item()
    no_dedup = icvf.loss_fn(nets, target, batch, dataclasses.replace(cfg, dedup=False))[0].item()
    assert no_dedup == pytest.approx(base, rel=1e-12)
    _, metrics = icvf.loss_fn(nets, target, batch, dataclasses.replace(cfg, min_q=False))
    _, advs = _hand_loss(nets, target, batch, variant="mean_q")
    assert metrics["icvf/adv_mean"].item() == pytest.approx(np.mean(advs), rel=1e-9)


def test_icvf_dedup_encodes_each_frame_once(setup):
    cfg, nets, target, batch = setup
    nets.encoder.calls.clear()
    target.encoder.calls.clear()
    icvf.loss_fn(nets, target, batch, cfg)

    def distinct(*keys):
        return len(set(torch.cat([batch[k] for k in keys]).tolist()))

    distinct_online = distinct("obs_index", "goal_index", "intent_index")
    distinct_target = distinct("obs_index", "next_obs_index", "goal_index", "intent_index")
    assert nets.encoder.calls == [distinct_online]  # ONE forward, unique frames only
    assert target.encoder.calls == [distinct_target]


def test_icvf_value_defaults_intent_to_goal(setup):
    _, nets, _, batch = setup
    with torch.no_grad():
        v = icvf.value(nets, batch["obs"], batch["goal"])
        v_explicit = icvf.value(nets, batch["obs"], batch["goal"], batch["goal"])
    feats = {k: batch[k].double().numpy().reshape(5, -1) / 255.0 for k in ("obs", "goal")}
    hand = [np.mean([_np_value(h, feats["obs"][i], feats["goal"][i], feats["goal"][i])
                     for h in nets.heads]) for i in range(5)]
    assert v.shape == (5,)
    np.testing.assert_allclose(v.numpy(), hand, rtol=1e-9)
    np.testing.assert_allclose(v_explicit.numpy(), hand, rtol=1e-9)


def test_icvf_no_intent_sees_a_constant_intention_but_its_reward(setup, frames):
    cfg, nets, target, batch = setup
    cfg = dataclasses.replace(cfg, use_intent=False)
    loss = icvf.loss_fn(nets, target, batch, cfg)[0].item()
    const = {**batch, "intent": torch.ones_like(batch["intent"])}
    expected, _ = _hand_loss(nets, target, const)  # rewards/masks from intent_index as drawn
    assert loss == pytest.approx(expected, rel=1e-9)
    other = {**batch, "intent": frames[torch.tensor([0, 1, 2, 3, 4])]}  # other pixels: same
    assert icvf.loss_fn(nets, target, other, cfg)[0].item() == pytest.approx(loss, rel=1e-12)
    moved = {**batch, "intent_reached": ~batch["intent_reached"]}  # the reward still counts
    adv = icvf.loss_fn(nets, target, batch, cfg)[1]["icvf/adv_mean"].item()
    assert icvf.loss_fn(nets, target, moved, cfg)[1]["icvf/adv_mean"].item() \
        != pytest.approx(adv, rel=1e-6)
    with torch.no_grad():  # diagnostics read the model at the intention it was trained on
        nets.no_intent = True
        ones = torch.ones_like(batch["goal"])
        torch.testing.assert_close(icvf.value(nets, batch["obs"], batch["goal"]),
                                   icvf.value(nets, batch["obs"], batch["goal"], ones))
        nets.no_intent = False
    assert icvf.loss_fn(nets, target, batch, dataclasses.replace(cfg, use_intent=True))[0] \
        .item() != pytest.approx(loss, rel=1e-6)


def test_icvf_missing_keys_and_bad_config(setup):
    cfg, nets, target, batch = setup
    del batch["intent_reached"]
    with pytest.raises(DataError, match="intent_reached"):
        icvf.loss_fn(nets, target, batch, cfg)
    for bad in ({"expectile": 1.0}, {"discount": 1.0}, {"num_heads": 0},
                {"hidden_dims": ()}, {"target_rate": 0.0}, {"lr": -1.0}):
        with pytest.raises(ConfigError, match="icvf"):
            icvf.ICVFConfig(**bad)

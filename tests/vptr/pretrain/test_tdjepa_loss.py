"""Intention-conditioned TD-JEPA: targets, weights and orthonormality by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from vptr.errors import ConfigError, DataError
from vptr.pretrain import tdjepa
from vptr.pretrain.common import orth_loss
from vptr.train.core import make_target

GAMMA, TAU, ORTH = 0.9, 0.7, 0.3


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _sphere(x: np.ndarray) -> np.ndarray:
    return np.stack([math.sqrt(len(r)) * r / np.sqrt(sum(v * v for v in r)) for r in x])


def _orth_hand(e: np.ndarray) -> float:
    b = len(e)
    diag = -sum(float(e[i] @ e[i]) for i in range(b)) / b
    off = sum(float(e[i] @ e[j]) ** 2 for i in range(b) for j in range(b) if i != j)
    return diag + 0.5 * off / (b * (b - 1))


def test_orth_loss_matches_hand_computation():
    e = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss, diag, off = orth_loss(e)
    assert loss.item() == pytest.approx(_orth_hand(e.numpy()), rel=1e-12)
    assert loss.item() == pytest.approx(diag.item() + off.item(), rel=1e-12)
    assert diag.item() == pytest.approx(-np.mean(np.sum(e.numpy() ** 2, 1)), rel=1e-12)
    # orthonormal rows scaled to norm √d: the off-diagonal term vanishes
    q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0] * 2.0
    assert orth_loss(q)[2].item() == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(DataError):
        orth_loss(e[:1])


def _heads(nets, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return _sphere(_np(nets.phi_head(feats))), _sphere(_np(nets.psi_head(feats)))


def _pred(predictor, x: np.ndarray, z: np.ndarray, a: np.ndarray | None = None) -> np.ndarray:
    """(K, B, out) outputs of each ensemble member on concat inputs."""
    parts = [x, z] if a is None else [x, z, a]
    inp = torch.from_numpy(np.concatenate(parts, 1))
    return np.stack([_np(m(inp)) for m in predictor.members])


def _hand_loss(nets, target, batch, action=None, next_action=None,
               sf_start: str = "current", step_cost: bool = True) -> dict[str, float]:
    feat = {k: batch[k].double().flatten(1) / 255.0 for k in ("obs", "next_obs", "intent")}
    n = len(batch["obs"])
    phi_next, psi_next = _heads(target, feat["next_obs"])
    _, psi_int = _heads(target, feat["intent"])
    phi_s_bar, psi_s_bar = _heads(target, feat["obs"])
    # the features counted first: of s ("current", ICVF's reward convention) or of s'
    phi_c, psi_c = (phi_s_bar, psi_s_bar) if sf_start == "current" else (phi_next, psi_next)
    z = _sphere(psi_int)  # random_z_ratio = 0: z is the projected intention feature
    d = z.shape[1]
    if step_cost:  # ψ⁺ = (ψ, √d), reward weights (z/d, -1/√d): r = ψᵀz/d - 1
        psi_c = np.concatenate([psi_c, np.full((n, 1), math.sqrt(d))], 1)
        w_r = np.concatenate([z / d, np.full((n, 1), -1 / math.sqrt(d))], 1)
    else:
        w_r = z / d
    t_next = _pred(target.T_phi, phi_next, z, next_action).mean(0)
    t_psi_next = _pred(target.T_psi, psi_next, z, next_action).mean(0)
    phi, psi = _heads(nets, feat["obs"])
    pred_phi = _pred(nets.T_phi, phi, z, action)
    pred_psi = _pred(nets.T_psi, psi, z, action)
    k_members = len(pred_phi)
    td_phi = td_psi = 0.0
    advs = []
    for i in range(n):
        mask_z = 0.0 if int(batch["obs_index"][i]) == int(batch["intent_index"][i]) else 1.0
        y_phi = psi_c[i] + GAMMA * mask_z * t_next[i]
        y_psi = phi_c[i] + GAMMA * mask_z * t_psi_next[i]
        if action is None:
            v_next = float(t_next[i] @ w_r[i])
            v_s = float(_pred(target.T_phi, phi_s_bar[i:i + 1], z[i:i + 1]).mean(0)[0] @ w_r[i])
            adv = float(psi_c[i] @ w_r[i]) + GAMMA * mask_z * v_next - v_s
            advs.append(adv)
            w = TAU if adv >= 0 else 1 - TAU
        else:
            w = 1.0
        for k in range(k_members):
            td_phi += w * float(np.sum((pred_phi[k, i] - y_phi) ** 2)) / (n * k_members)
            td_psi += w * float(np.sum((pred_psi[k, i] - y_psi) ** 2)) / (n * k_members)
    orth = _orth_hand(phi) + _orth_hand(psi)
    return {"loss": td_phi + td_psi + ORTH * orth, "td_phi": td_phi, "td_psi": td_psi,
                "advs": advs, "z": z}


def _setup(flat_encoder, action_dim: int = 0, sf_start: str = "current", step_cost: bool = True,
           seed: int = 2):
    torch.manual_seed(seed)
    cfg = tdjepa.TDJEPAConfig(phi_dim=3, psi_dim=4, head_hidden_dims=(6,),
                              predictor_hidden_dims=(8,), num_predictors=2, discount=GAMMA,
                              expectile=TAU, random_z_ratio=0.0, orth_coef=ORTH,
                              action_dim=action_dim, sf_start=sf_start, step_cost=step_cost)
    nets = tdjepa.create(cfg, flat_encoder(3, 2, 2)).double()
    target = make_target(nets)
    with torch.no_grad():  # the target must differ from the online net for a real test
        for p in target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cfg, nets, target


INDICES = {  # 0: intention reached (mask_z = 0); 3: s' clipped (s' is s); others generic
    "obs_index": [3, 12, 25, 39, 14, 21],
    "next_obs_index": [4, 13, 26, 39, 15, 22],
    "intent_index": [3, 19, 8, 36, 5, 29],
    "goal_index": [3, 19, 8, 36, 5, 29],
}


@pytest.mark.parametrize("step_cost", [True, False])
@pytest.mark.parametrize("sf_start", ["current", "next"])
def test_tdjepa_loss_matches_hand_computation(frames, flat_encoder, make_batch, sf_start,
                                              step_cost):
    batch = make_batch(INDICES, frames)
    for seed in range(50):  # the first initialisation whose advantages have both signs
        cfg, nets, target = _setup(flat_encoder, sf_start=sf_start, step_cost=step_cost, seed=seed)
        hand = _hand_loss(nets, target, batch, sf_start=sf_start, step_cost=step_cost)
        if any(a >= 0 for a in hand["advs"]) and any(a < 0 for a in hand["advs"]):
            break
    else:
        pytest.fail("no initialisation gives advantages of both signs: the test is vacuous")
    loss, metrics = tdjepa.loss_fn(nets, target, batch, cfg)
    assert loss.item() == pytest.approx(hand["loss"], rel=1e-9)
    assert metrics["tdjepa/td_phi"].item() == pytest.approx(hand["td_phi"], rel=1e-9)
    assert metrics["tdjepa/td_psi"].item() == pytest.approx(hand["td_psi"], rel=1e-9)
    assert metrics["tdjepa/adv_mean"].item() == pytest.approx(np.mean(hand["advs"]), rel=1e-9)
    assert metrics["tdjepa/mask_z_mean"].item() == pytest.approx(5 / 6)
    np.testing.assert_allclose(np.linalg.norm(hand["z"], axis=1), 2.0)  # √d_ψ = 2
    target.requires_grad_(True)  # as if trainable: the loss itself must stop the gradient
    loss, _ = tdjepa.loss_fn(nets, target, batch, cfg)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in target.parameters())
    assert all(p.grad is not None for p in nets.parameters() if p.requires_grad)


@pytest.mark.parametrize("sf_start", ["current", "next"])
def test_tdjepa_action_conditioned_uses_dataset_next_action(frames, flat_encoder, make_batch,
                                                             sf_start):
    cfg, nets, target = _setup(flat_encoder, action_dim=6, sf_start=sf_start)
    batch = make_batch(INDICES, frames)
    g = torch.Generator().manual_seed(5)
    # an action chunk of 3 steps x 2 dims, flattened to 6 values by the objective
    batch["action"] = torch.randn(6, 3, 2, dtype=torch.float64, generator=g)
    batch["next_action"] = torch.randn(6, 3, 2, dtype=torch.float64, generator=g)
    loss, metrics = tdjepa.loss_fn(nets, target, batch, cfg)
    hand = _hand_loss(nets, target, batch, action=batch["action"].flatten(1).numpy(),
                      next_action=batch["next_action"].flatten(1).numpy(), sf_start=sf_start)
    assert loss.item() == pytest.approx(hand["loss"], rel=1e-9)
    assert "tdjepa/adv_mean" not in metrics  # no intention weighting with actions
    other = dict(batch, next_action=batch["next_action"] + 1.0)
    assert tdjepa.loss_fn(nets, target, other, cfg)[0].item() != pytest.approx(loss.item())
    with pytest.raises(DataError, match="action_dim is 6"):
        tdjepa.loss_fn(nets, target, dict(batch, action=batch["action"][:, :2]), cfg)
    with pytest.raises(DataError, match="next_action"):
        tdjepa.loss_fn(nets, target, {k: v for k, v in batch.items() if k != "next_action"}, cfg)
    with torch.no_grad():
        q = tdjepa.value(nets, batch["obs"], batch["goal"], action=batch["action"])
    assert q.shape == (6,) and torch.isfinite(q).all()
    with pytest.raises(ConfigError):
        tdjepa.value(nets, batch["obs"], batch["goal"])


def test_tdjepa_random_intentions_are_unit_sphere_and_never_masked(frames, flat_encoder,
                                                                   make_batch):
    _, nets, target = _setup(flat_encoder)
    cfg = tdjepa.TDJEPAConfig(phi_dim=3, psi_dim=4, head_hidden_dims=(6,),
                              predictor_hidden_dims=(8,), random_z_ratio=1.0)
    batch = make_batch(dict(INDICES, intent_index=INDICES["obs_index"]), frames)  # all reached
    _, metrics = tdjepa.loss_fn(nets, target, batch, cfg)
    assert metrics["tdjepa/random_z_frac"].item() == 1.0
    assert metrics["tdjepa/mask_z_mean"].item() == 1.0  # random z has no frame to reach
    z, is_random = tdjepa.sample_z(torch.randn(1000, 4), 0.5)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 2.0, rtol=1e-5)
    assert 0.4 < is_random.float().mean().item() < 0.6


@pytest.mark.parametrize("step_cost", [True, False])
@pytest.mark.parametrize("sf_start", ["current", "next"])
def test_tdjepa_value_and_zero_shot_z(frames, flat_encoder, make_batch, sf_start, step_cost):
    _, nets, _ = _setup(flat_encoder, sf_start=sf_start, step_cost=step_cost)
    batch = make_batch(INDICES, frames)
    with torch.no_grad():
        v_sf = tdjepa.sf_value(nets, batch["obs"], batch["goal"])
        v = tdjepa.value(nets, batch["obs"], batch["goal"])
        feats_s = batch["obs"].double().flatten(1) / 255.0
        feats_g = batch["goal"].double().flatten(1) / 255.0
    phi, _ = _heads(nets, feats_s)
    _, psi_g = _heads(nets, feats_g)
    t = _pred(nets.T_phi, phi, psi_g).mean(0)
    d = psi_g.shape[-1]  # sf_value is in units of discounted goal visits: divided by d
    assert t.shape == (6, d + step_cost)  # the step cost adds one output
    sf = np.array([t[i, :d] @ psi_g[i] / d for i in range(6)])
    np.testing.assert_allclose(v_sf.numpy(), sf, rtol=1e-9)
    if step_cost:  # the model's own value: successor features of ψᵀψ(g)/d - 1
        np.testing.assert_allclose(v.numpy(), sf - t[:, d] / math.sqrt(d), rtol=1e-9)
    else:  # mapped to ICVF's time-to-goal scale: γ^τ visits <-> -(1 - γ^τ)/(1 - γ)
        reach = sf if sf_start == "current" else GAMMA * sf
        np.testing.assert_allclose(v.numpy(), -(1 - reach) / (1 - GAMMA), rtol=1e-9)
    # a goal reached now (1 visit, "current") is worth 0; one never reached -1/(1-γ)
    ones = torch.ones(2, dtype=torch.float64)
    np.testing.assert_allclose(tdjepa.sf_to_time(ones, GAMMA, "current").numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(tdjepa.sf_to_time(0 * ones, GAMMA, "next").numpy(), -10.0)
    np.testing.assert_allclose(tdjepa.sf_to_time(ones, GAMMA, "next").numpy(), -1.0)
    # zero-shot: rewards linear in ψ recover the direction of the true task vector
    g = torch.Generator().manual_seed(0)
    psi = torch.randn(200, 5, generator=g)
    z_true = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    z = tdjepa.zero_shot_z(psi, psi @ z_true)
    assert z.norm().item() == pytest.approx(math.sqrt(5), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(z, z_true, dim=0).item()
    assert cos == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(DataError):
        tdjepa.zero_shot_z(psi, torch.zeros(3))


@pytest.mark.parametrize("bad", [{"expectile": 0.0}, {"discount": 1.0}, {"phi_dim": 0},
                                 {"random_z_ratio": 1.5}, {"orth_coef": -1.0},
                                 {"num_predictors": 0}, {"action_dim": -1},
                                 {"batch_size": 1}, {"sf_start": "later"}])
def test_tdjepa_config_validation(bad):
    with pytest.raises(ConfigError, match="tdjepa"):
        tdjepa.TDJEPAConfig(**bad)


def test_tdjepa_orth_frames_cover_each_distinct_frame_once(frames, flat_encoder, make_batch):
    _, nets, target = _setup(flat_encoder)
    cfg = tdjepa.TDJEPAConfig(phi_dim=3, psi_dim=4, head_hidden_dims=(6,),
                              predictor_hidden_dims=(8,), random_z_ratio=0.0,
                              orth_frames=("obs", "intent"))
    batch = make_batch(INDICES, frames)
    _, metrics = tdjepa.loss_fn(nets, target, batch, cfg)
    # frame 3 is both an observation and an intention: 11 distinct frames, not 12
    distinct = torch.cat([batch["obs"], batch["intent"][1:]]).double().flatten(1) / 255.0
    phi, psi = _heads(nets, distinct)
    assert metrics["tdjepa/orth_phi"].item() == pytest.approx(_orth_hand(phi), rel=1e-9)
    assert metrics["tdjepa/orth_psi"].item() == pytest.approx(_orth_hand(psi), rel=1e-9)
    # the TD term still uses the observations only: same as with orth_frames=("obs",)
    _, base = tdjepa.loss_fn(nets, target, batch, replace(cfg, orth_frames=("obs",)))
    assert metrics["tdjepa/td_phi"].item() == pytest.approx(base["tdjepa/td_phi"].item(), rel=1e-9)
    with pytest.raises(ConfigError, match="orth_frames"):
        tdjepa.TDJEPAConfig(orth_frames=("intent",))
    with pytest.raises(ConfigError, match="orth_frames"):
        tdjepa.TDJEPAConfig(orth_frames=("obs", "pixels"))


def test_step_cost_reward_is_zero_at_the_goal_and_minus_one_elsewhere():
    # goal-indicator features: ψ(s_z) = z, ψ(s) ⟂ z elsewhere -> ICVF's reward -1[s != s_z]
    z = 2.0 * torch.eye(4, dtype=torch.float64)[:2]  # two intentions on the √d sphere (d = 4)
    psi = torch.stack([z[0], 2.0 * torch.eye(4, dtype=torch.float64)[3]])
    feats = tdjepa.reward_features(psi, step_cost=True)
    assert feats.shape == (2, 5) and torch.all(feats[:, 4] == 2.0)  # constant coordinate √d
    r = (feats * tdjepa.reward_weights(z[:1].expand(2, 4), step_cost=True)).sum(-1)
    np.testing.assert_allclose(r.numpy(), [0.0, -1.0], atol=1e-12)
    # without the step cost: TD-JEPA's plain reward ψᵀz/d (1 at the goal, 0 elsewhere)
    plain = (tdjepa.reward_features(psi, False) * tdjepa.reward_weights(z[:1].expand(2, 4), False))
    np.testing.assert_allclose(plain.sum(-1).numpy(), [1.0, 0.0], atol=1e-12)

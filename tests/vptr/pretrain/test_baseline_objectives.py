"""Baselines: time-contrastive InfoNCE, VIP and no pretraining, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vptr.errors import ConfigError, DataError
from vptr.pretrain import none, tcn, vip


def _feat(batch, key):
    return batch[key].double().flatten(1).numpy() / 255.0


def _embed(nets, x: np.ndarray) -> np.ndarray:
    w = nets.head.weight.detach().double().numpy()
    b = nets.head.bias.detach().double().numpy()
    return x @ w.T + b


def test_tcn_infonce_matches_hand_computation_with_masked_duplicates(frames, flat_encoder,
                                                                     make_batch):
    torch.manual_seed(0)
    cfg = tcn.TCNConfig(embed_dim=5, temperature=0.5)
    nets = tcn.create(cfg, flat_encoder(3, 2, 2)).double()
    # samples 1 and 2 share their positive frame (13), and sample 3's positive (25) is
    # sample 2's anchor frame: both must be masked out of the negatives
    batch = make_batch({"obs_index": [3, 11, 25, 24], "future_index": [5, 13, 13, 25]}, frames)
    loss, metrics = tcn.loss_fn(nets, None, batch, cfg)
    a = _embed(nets, _feat(batch, "obs"))
    p = _embed(nets, _feat(batch, "future_obs"))
    fut, obs = batch["future_index"].tolist(), batch["obs_index"].tolist()
    total = 0.0
    for i in range(4):
        logits = []
        for j in range(4):
            if j != i and (fut[j] == fut[i] or fut[j] == obs[i]):
                continue  # the same frame as the positive or the anchor is no negative
            logits.append((j, -np.linalg.norm(a[i] - p[j]) / 0.5))
        pos = dict(logits)[i]
        total += -(pos - math.log(sum(math.exp(v) for _, v in logits)))
    assert loss.item() == pytest.approx(total / 4, rel=1e-9)
    # accuracy: the anchors whose positive beats every (unmasked) negative
    correct = 0
    for i in range(4):
        others = [-np.linalg.norm(a[i] - p[j]) for j in range(4)
                  if j != i and not (fut[j] == fut[i] or fut[j] == obs[i])]
        correct += int(all(-np.linalg.norm(a[i] - p[i]) > o for o in others))
    assert metrics["tcn/accuracy"].item() == pytest.approx(correct / 4)
    with torch.no_grad():
        v = tcn.value(nets, batch["obs"], batch["future_obs"])
    np.testing.assert_allclose(v.numpy(), -np.linalg.norm(a - p, axis=1), rtol=1e-9)


def test_tcn_cosine_similarity_and_validation(frames, flat_encoder, make_batch):
    cfg = tcn.TCNConfig(embed_dim=0, similarity="cosine", temperature=0.1)
    nets = tcn.create(cfg, flat_encoder(3, 2, 2)).double()
    batch = make_batch({"obs_index": [0, 10, 20], "future_index": [1, 11, 21]}, frames)
    loss, _ = tcn.loss_fn(nets, None, batch, cfg)
    a, p = _feat(batch, "obs"), _feat(batch, "future_obs")
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1,
                                                                                keepdims=True)).T
    logits = cos / 0.1
    hand = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)])
    assert loss.item() == pytest.approx(hand, rel=1e-9)
    for bad in ({"temperature": 0.0}, {"embed_dim": -1}, {"batch_size": 1},
                {"similarity": "dot"}):
        with pytest.raises(ConfigError, match="tcn"):
            tcn.TCNConfig(**bad)


VIP_INDICES = {  # trajectory 0 (frames 0-9) and 1 (10-19); sample 2 stands at the goal
    "initial_index": [0, 10, 0, 10],
    "final_index": [9, 19, 9, 19],
    "obs_index": [2, 14, 9, 18],
    "next_obs_index": [3, 15, 9, 19],
}


def _vip_hand(nets, batch, gamma):
    e = {k: _embed(nets, _feat(batch, k)) for k in ("initial_obs", "final_obs", "obs", "next_obs")}
    n = len(batch["obs"])
    attract = 0.0
    terms = []
    for i in range(n):
        g = e["final_obs"][i]
        v0 = -np.linalg.norm(e["initial_obs"][i] - g)
        vs = -np.linalg.norm(e["obs"][i] - g)
        vs1 = -np.linalg.norm(e["next_obs"][i] - g)
        r = 0.0 if VIP_INDICES["obs_index"][i] == VIP_INDICES["final_index"][i] else -1.0
        attract += (1 - gamma) * -v0 / n
        terms.append(math.exp(-(r + gamma * vs1 - vs)))  # = exp(V(s,g) + 1 - γV(s',g)) if r = -1
    return attract + math.log(sum(terms) / n)


def test_vip_loss_matches_hand_computation(frames, flat_encoder, make_batch):
    torch.manual_seed(0)
    cfg = vip.VIPConfig(embed_dim=4, discount=0.98)
    nets = vip.create(cfg, flat_encoder(3, 2, 2)).double()
    batch = make_batch(VIP_INDICES, frames)
    loss, metrics = vip.loss_fn(nets, None, batch, cfg)
    assert loss.item() == pytest.approx(_vip_hand(nets, batch, 0.98), rel=1e-9)
    assert metrics["vip/reward_mean"].item() == pytest.approx(-0.75)
    loss.backward()  # s == g for sample 2: the zero distance must not give NaN gradients
    assert all(torch.isfinite(p.grad).all() for p in nets.parameters())
    with torch.no_grad():
        v = vip.value(nets, batch["obs"], batch["final_obs"])
    assert v[2].item() == 0.0 and (v <= 0).all()


def test_vip_negatives_and_penalties_add_terms(frames, flat_encoder, make_batch):
    torch.manual_seed(0)
    nets = vip.create(vip.VIPConfig(embed_dim=4), flat_encoder(3, 2, 2)).double()
    batch = make_batch(VIP_INDICES, frames)
    base = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4))[0].item()
    with_l1 = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4, l1_weight=0.5))[0].item()
    e = np.concatenate([_embed(nets, _feat(batch, k))
                        for k in ("initial_obs", "final_obs", "obs", "next_obs")])
    assert with_l1 - base == pytest.approx(0.5 * np.abs(e).sum(1).mean(), rel=1e-9)
    neg = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4, num_negatives=2))[0]
    assert torch.isfinite(neg) and neg.item() != pytest.approx(base)
    with pytest.raises(DataError, match="final_obs"):
        vip.loss_fn(nets, None, {k: v for k, v in batch.items() if k != "final_obs"},
                    vip.VIPConfig())
    for bad in ({"discount": 1.0}, {"num_negatives": -1}, {"l2_weight": -0.1}):
        with pytest.raises(ConfigError, match="vip"):
            vip.VIPConfig(**bad)


def test_none_objective_is_frozen_and_zero(frames, flat_encoder, make_batch):
    from torch import nn

    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    enc.out_dim = 3
    nets = none.create(none.NoneConfig(), enc)
    assert not any(p.requires_grad for p in nets.parameters())
    batch = make_batch({"obs_index": [0, 1], "goal_index": [5, 1]}, frames)
    batch = {k: (v.float() if k in ("obs", "goal") else v) for k, v in batch.items()}
    loss, metrics = none.loss_fn(nets, None, batch, none.NoneConfig())
    assert loss.item() == 0.0 and not loss.requires_grad and metrics["none/loss"] == 0.0
    v = none.value(nets, batch["obs"], batch["goal"])
    f_s, f_g = enc(batch["obs"]), enc(batch["goal"])
    torch.testing.assert_close(v, -(f_s - f_g).norm(dim=1))
    assert v[1].item() == 0.0  # the goal itself is at distance 0

"""Fine-tuning agents on tiny batches: every registered agent updates with finite losses and
gradients on every trainable parameter; best-of-N, the QC target, flow sampling and the DQC
distillation checked on hand-built cases; each observation is encoded once per network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vptr.finetune import AGENTS, dqc, get_agent, qc
from vptr.finetune.nets import (
    DataSpec,
    EnsembleMLP,
    best_of_n,
    euler_sample,
    expectile_loss,
    flow_matching_loss,
    sample_candidates,
)
from vptr.nets.encoders import make_encoder
from vptr.train.core import autocast, make_target

CAM = "observation.images.front"
B, H, DA, DS, SIZE = 6, 3, 2, 4, 16


def spec(h=H, cameras=(CAM,), tasks=2) -> DataSpec:
    return DataSpec(action_dim=DA, horizon=h, state_dim=DS, cameras=cameras, image_size=SIZE,
                    num_tasks=tasks)


def trunks():
    return {CAM: make_encoder("impala_small", 3, SIZE, channels_last=False)}


def tiny_batch(h=H, seed=0, cameras=(CAM,)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "state": torch.randn(B, DS, generator=g), "next_state": torch.randn(B, DS, generator=g),
        "actions": torch.rand(B, h, DA, generator=g) * 2 - 1,
        "action_mask": torch.ones(B, h, dtype=torch.bool),
        "chunk_reward": -torch.rand(B, generator=g), "bootstrap_mask": torch.ones(B),
        "task_index": torch.tensor([0, 1] * (B // 2)), "mc_return": torch.full((B,), -5.0),
        "step": torch.full((B,), 10**6, dtype=torch.int64),
    }
    batch["action_mask"][0, -1] = False  # a chunk padded past a terminal
    batch["bootstrap_mask"][0] = 0.0
    for c in cameras:
        for k in ("obs", "next_obs"):
            batch[f"{k}.{c}"] = torch.randint(0, 256, (B, 3, SIZE, SIZE), generator=g,
                                              dtype=torch.uint8)
    return batch


def small_cfg(agent):
    cls = agent.config_cls
    kw = dict(chunk=H, hidden=(32, 32), feature_dim=16, task_dim=4, flow_steps=3, batch_size=B)
    names = {f.name for f in dataclasses.fields(cls)}
    if "backup_horizon" in names:
        kw["backup_horizon"] = H + 2
    if "target_samples" in names:
        kw["target_samples"] = 4
    if "act_samples" in names:
        kw["act_samples"] = 5
    return cls(**kw)


def small_agent(name):
    """(agent, small config, networks, target part or None) for ``name``."""
    agent = get_agent(name)
    cfg = small_cfg(agent)
    torch.manual_seed(0)
    nets = agent.create(cfg, spec(), trunks)
    part = agent.target_of(nets)
    target = make_target(part) if part is not None else None
    return agent, cfg, nets, target


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_updates_with_gradients_everywhere(name):
    agent, cfg, nets, target = small_agent(name)
    batch = tiny_batch(h=cfg.sample_horizon())
    opt = torch.optim.Adam(nets.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    for _ in range(2):
        loss, metrics = agent.loss_fn(nets, target, batch, cfg)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)) for v in
                                            metrics.values()), metrics
        missing = [n for n, p in nets.named_parameters()
                   if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()
                                           or not p.grad.abs().sum() > 0)]
        assert not missing, f"{name}: no gradient on {missing[:5]}"
        opt.step()
    changed = [k for k, v in nets.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and "loss" in metrics
    chunks = agent.act(nets.eval(), batch, cfg)
    assert chunks.shape == (B, cfg.chunk, DA) and chunks.abs().max() <= 1.0


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_updates_under_cpu_bf16_autocast(name):
    """``--amp bf16`` on CPU: the losses stay finite and every trainable parameter gets a
    finite fp32 gradient."""
    agent, cfg, nets, target = small_agent(name)
    with autocast("bf16", torch.device("cpu")):
        loss, metrics = agent.loss_fn(nets, target, tiny_batch(h=cfg.sample_horizon()), cfg)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v, dtype=torch.float32))
                                        for v in metrics.values()), metrics
    bad = [n for n, p in nets.named_parameters() if p.requires_grad
           and (p.grad is None or p.grad.dtype != torch.float32 or not torch.isfinite(p.grad).all())]
    assert not bad, f"{name}: {bad[:5]}"


def test_flow_sample_shapes_and_loss_masking():
    torch.manual_seed(0)
    from vptr.finetune.nets import FlowPolicy

    pol = FlowPolicy(7, horizon=4, action_dim=3, hidden=(16,))
    z = torch.randn(5, 7)
    out = euler_sample(pol, z, steps=2)
    assert out.shape == (5, 4, 3) and out.abs().max() <= 1.0
    actions = torch.rand(5, 4, 3)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[:, 2:] = False
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)

    pol.register_forward_hook(keep)
    flow_matching_loss(pol, z, actions, mask).backward()
    grad = outputs[0].grad.reshape(5, 4, 3)
    assert grad[:, 2:].abs().max() == 0 and grad[:, :2].abs().min() > 0  # padding: no loss
    outputs.clear()
    flow_matching_loss(pol, z, actions).backward()
    assert outputs[0].grad.reshape(5, 4, 3)[:, 2:].abs().min() > 0


class _LinearQ(torch.nn.Module):
    """Q(s, A) = sum of the first action coordinate over the chunk (2 identical heads)."""

    def score(self, z, actions):
        return actions[..., 0].sum(-1).expand(2, -1)

    def score_candidates(self, z, candidates):
        return self.score(z, candidates.flatten(0, 1))


def test_best_of_n_picks_the_argmax_and_n1_is_the_sample():
    cands = torch.tensor([[[[0.1, 0.0]], [[0.9, 0.0]], [[-0.5, 0.0]]],
                          [[[0.3, 0.0]], [[0.2, 0.0]], [[0.25, 0.0]]]])  # (B=2, N=3, h=1, 2)
    best = best_of_n(_LinearQ(), torch.zeros(2, 1), cands)
    assert torch.equal(best, cands[torch.arange(2), torch.tensor([1, 0])])
    assert torch.equal(best_of_n(_LinearQ(), torch.zeros(2, 1), cands[:, :1]), cands[:, 0])


def test_candidates_share_the_observation_part_of_each_first_layer_exactly():
    from vptr.finetune.nets import QNet

    torch.manual_seed(0)
    nets = get_agent("qc").create(small_cfg(get_agent("qc")), spec(), trunks)
    z = nets.policy.encoder(tiny_batch(), "obs")
    n = 5
    noise = torch.randn(B * n, H * DA)
    zz = z.repeat_interleave(n, dim=0)  # row b * n + i: observation b
    shared = euler_sample(nets.policy.flow, z, 3, noise=noise, repeats=n)
    torch.testing.assert_close(shared, euler_sample(nets.policy.flow, zz, 3, noise=noise))
    q = nets.q
    assert isinstance(q, QNet)
    zq = q.encoder(tiny_batch(), "obs")
    cands = shared.reshape(B, n, H, DA)
    torch.testing.assert_close(q.score_candidates(zq, cands),
                               q.score(zq.repeat_interleave(n, dim=0), shared))


def test_qc_target_with_n1_equals_the_bc_sample():
    agent = get_agent("qc")
    cfg = dataclasses.replace(small_cfg(agent), target_samples=1)
    torch.manual_seed(0)
    nets = agent.create(cfg, spec(), trunks)
    target = make_target(nets.q)
    batch = tiny_batch()
    torch.manual_seed(3)
    y = qc.td_target(nets, target, batch, cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        a = euler_sample(nets.policy.flow, nets.policy.encoder(batch, "next_obs"), cfg.flow_steps)
        q = target.score(target.encoder(batch, "next_obs"), a).mean(0)
    expected = batch["chunk_reward"] + cfg.discount ** H * batch["bootstrap_mask"] * q
    torch.testing.assert_close(y, expected)
    assert y[0] == batch["chunk_reward"][0]  # terminal inside the chunk: no bootstrap


def test_each_observation_is_encoded_once_per_network():
    agent = get_agent("qc")
    cfg = dataclasses.replace(small_cfg(agent), shared_trunk=False)
    nets = agent.create(cfg, spec(), trunks)
    calls = {"policy": [], "q": []}
    for name, enc in (("policy", nets.policy.encoder), ("q", nets.q.encoder)):
        for trunk in enc.trunks.values():
            trunk.register_forward_hook(lambda m, i, o, name=name: calls[name].append(len(i[0])))
    batch = tiny_batch()
    qc.act(nets, batch, dataclasses.replace(cfg, act_samples=32))
    assert calls == {"policy": [B], "q": [B]}  # not B * 32
    calls["policy"].clear(), calls["q"].clear()
    qc.td_target(nets, make_target(nets.q), batch, cfg)
    assert calls["policy"] == [B]  # next observations, once, for all target_samples candidates


def test_qc_shared_trunk_runs_once_per_observation_for_both_heads():
    agent = get_agent("qc")
    cfg = small_cfg(agent)
    assert cfg.shared_trunk  # the default
    nets = agent.create(cfg, spec(), trunks)
    (trunk,) = nets.q.encoder.trunks.values()
    assert trunk is next(iter(nets.policy.encoder.trunks.values()))
    calls = []
    trunk.register_forward_hook(lambda m, i, o: calls.append((len(i[0]), o.requires_grad)))
    target = make_target(nets.q)
    loss, _ = qc.loss_fn(nets, target, tiny_batch(), cfg)
    # obs with gradients, next_obs without; the target's own trunk copy is not run
    assert calls == [(B, True), (B, False)]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())
    calls.clear()
    qc.act(nets, tiny_batch(), dataclasses.replace(cfg, act_samples=32))
    assert calls == [(B, False)]


def test_candidates_share_one_encoding():
    agent = get_agent("flowbc")
    cfg = small_cfg(agent)
    nets = agent.create(cfg, spec(cameras=()), trunks)
    z = nets.policy.encoder(tiny_batch(cameras=()), "obs")
    cands = sample_candidates(nets.policy, z, n=7, steps=2)
    assert cands.shape == (B, 7, H, DA)
    assert not torch.allclose(cands[:, 0], cands[:, 1])  # independent noise per candidate


def test_expectile_and_dqc_distillation_target_by_hand():
    diff = torch.tensor([1.0, -1.0, 2.0])
    torch.testing.assert_close(expectile_loss(diff, 0.8), torch.tensor([0.8, 0.2, 3.2]))
    # Q_a = 0 against Q̄_c = +1 and -1 (two dataset extensions of one partial chunk)
    loss = dqc.distill_loss(torch.zeros(1, 2), torch.tensor([1.0, -1.0]), kappa=0.8)
    assert loss.item() == pytest.approx((0.8 * 1 + 0.2 * 1) / 2)
    # its minimiser is the κ-expectile: for extensions worth {0, 1} at κ = 0.8,
    # 0.8 (1 - e) = 0.2 e  ->  e = 0.8 (an optimistic "best extension")
    qa = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.SGD([qa], lr=0.5)
    targets = torch.tensor([0.0, 1.0])
    for _ in range(300):
        opt.zero_grad()
        dqc.distill_loss(qa.mean(1, keepdim=True).expand(1, 2), targets, 0.8).backward()
        opt.step()
    assert qa.mean().item() == pytest.approx(0.8, abs=1e-3)


def test_ensemble_members_are_independent():
    torch.manual_seed(0)
    ens = EnsembleMLP(3, 5, (8,))
    x = torch.randn(4, 5)
    y = ens(x)
    assert y.shape == (3, 4) and not torch.allclose(y[0], y[1])
    ens.out.weight.grad = None
    y[1].sum().backward()
    g = ens.out.weight.grad
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0


def test_normalizer_round_trip():
    from vptr.finetune.nets import Normalizer

    n = Normalizer(3, "minmax").fit({"min": [-2.0, 0.0, 5.0], "max": [2.0, 1.0, 5.0]})
    x = torch.tensor([[2.0, 0.0, 5.0]])
    np.testing.assert_allclose(n(x).numpy(), [[1.0, -1.0, 0.0]])
    torch.testing.assert_close(n.inverse(n(x)), x)


def test_corft_policy_term_moves_the_policy_not_the_critic():
    from vptr.finetune import corft

    agent = get_agent("corft")
    cfg = dataclasses.replace(small_cfg(agent), bc_steps=0)
    torch.manual_seed(0)
    nets = agent.create(cfg, spec(), trunks)
    batch = tiny_batch()
    a_pi = torch.zeros(B, H, DA, requires_grad=True)
    z = nets.q.encoder(batch, "obs").detach()
    nets.q.prefixes(z, a_pi, fixed=True).sum().backward()
    assert a_pi.grad.abs().sum() > 0
    assert all(p.grad is None for p in nets.q.heads.parameters())
    _ = corft  # the module under test


def test_flow_step_from_the_condition_equals_the_full_forward():
    from vptr.nets.policy import FlowPolicy

    torch.manual_seed(0)
    flow = FlowPolicy(obs_dim=7, horizon=3, action_dim=2, hidden=(16, 16))
    z, x, u = torch.randn(5, 7), torch.randn(5, 6), torch.rand(5)
    torch.testing.assert_close(flow.step(flow.condition(z), x, u), flow(z, x, u))

"""The training core: EMA targets, the optimiser step, run directories, checkpoints, loaders."""

from __future__ import annotations

import copy
import json
import multiprocessing

import pytest
import torch
from torch import nn

from vptr import runs
from vptr.train import core
from vptr.train.core import ema_update, make_target


@pytest.fixture
def cpu_session():
    with core.session("cpu") as s:
        yield s


def test_ema_update_is_polyak_average_and_copies_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = make_target(online)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 3))  # moves the BatchNorm running statistics
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.25)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)
        assert not t.requires_grad
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        assert torch.equal(tb, ob)
    ema_update(target, online, 1.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)
    with pytest.raises(ValueError):
        ema_update(target, online, 1.5)



class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 2)


def _leaky_loss(nets, target, batch, cfg):
    """A loss that (wrongly) lets gradient reach the target: the step must still leave the
    target to the EMA alone."""
    x = batch["x"]
    loss = (nets.encoder(x) - target.encoder(x)).pow(2).mean() + target.encoder(x).mean()
    return loss, {"t/loss": loss.detach()}


def test_step_updates_the_online_net_and_moves_the_target_only_by_ema(cpu_session):
    torch.manual_seed(0)
    nets = _Pair()
    target = make_target(nets)
    target.requires_grad_(True)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    opt = torch.optim.SGD(nets.parameters(), lr=0.5)
    step = core.TrainStep(core.LossModule(nets, target, _leaky_loss, None), cpu_session, opt,
                          ((target, nets, 0.25),))
    before_online = [p.detach().clone() for p in nets.parameters()]
    before_target = [p.detach().clone() for p in target.parameters()]
    metrics = step({"x": torch.randn(8, 3)})
    assert set(metrics) == {"t/loss"} and set(step.state) == {"optimizer"}
    for p, b in zip(nets.parameters(), before_online, strict=True):
        assert not torch.equal(p, b)  # the optimiser moved the online net
    for t, b, o in zip(target.parameters(), before_target, nets.parameters(), strict=True):
        torch.testing.assert_close(t.detach(), 0.75 * b + 0.25 * o.detach())


def test_step_without_optimizer_trains_nothing(cpu_session):
    nets = _Pair().requires_grad_(False)
    before = [p.clone() for p in nets.parameters()]

    def loss_fn(n, t, batch, cfg):
        return torch.zeros(()), {"none/loss": 0.0}

    step = core.TrainStep(core.LossModule(nets, None, loss_fn, None), cpu_session, None)
    assert step({"x": torch.zeros(1)}) == {"none/loss": 0.0} and step.state == {}
    assert all(torch.equal(p, b) for p, b in zip(nets.parameters(), before, strict=True))


def test_bf16_on_cpu_runs_the_step_in_bf16_and_keeps_fp32_weights():
    seen = {}

    def loss_fn(nets, target, batch, cfg):
        y = nets.encoder(batch["x"])
        seen["dtype"] = y.dtype
        return y.float().pow(2).mean(), {"t/loss": 0.0}

    for amp, dtype in (("bf16", torch.bfloat16), ("off", torch.float32), ("fp16", torch.float32)):
        with core.session("cpu", amp=amp) as s:
            nets = _Pair()
            before = nets.encoder.weight.detach().clone()
            step = core.TrainStep(core.LossModule(nets, None, loss_fn, None), s,
                                  torch.optim.SGD(nets.parameters(), lr=0.1))
            step({"x": torch.randn(8, 3)})
        assert seen["dtype"] == dtype, amp
        assert nets.encoder.weight.dtype == torch.float32
        assert not torch.equal(nets.encoder.weight, before)


def test_fp16_on_an_explicit_cpu_device_is_refused_bf16_is_not():
    from vptr.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        core.check_amp("fp16", "cpu")
    core.check_amp("bf16", "cpu")
    core.check_amp("fp16", "cuda")
    core.check_amp("fp16", "auto")


def test_failed_start_removes_only_a_run_directory_it_created(tmp_path, cpu_session):
    run = tmp_path / "new"
    with pytest.raises(RuntimeError), core.run_directory(run, {"a": 1}, cpu_session):
        assert json.loads((run / runs.CONFIG).read_text()) == {"a": 1}
        raise RuntimeError("bad input found after the directory was made")
    assert not run.exists()
    old = tmp_path / "old"  # an existing run (e.g. resumed) is never deleted
    old.mkdir()
    with pytest.raises(RuntimeError), core.run_directory(old, {}, cpu_session):
        raise RuntimeError
    assert old.is_dir()
    fresh = tmp_path / "with_checkpoint"  # a new run that got as far as a checkpoint stays
    nets = _Pair()
    with pytest.raises(RuntimeError), core.run_directory(fresh, {}, cpu_session):
        core.Checkpointer(fresh, cpu_session, {"nets": nets}, {}).save(3, [(3, 0.5)])
        raise RuntimeError
    assert runs.latest_checkpoint(fresh) is not None


def test_checkpointer_restores_weights_optimizer_step_and_history(tmp_path, cpu_session):
    torch.manual_seed(0)
    nets = _Pair()
    opt = torch.optim.Adam(nets.parameters(), lr=1e-2)
    nets.encoder(torch.randn(4, 3)).sum().backward()
    opt.step()
    history = [(2, 1.5), (4, 1.25)]
    core.Checkpointer(tmp_path, cpu_session, {"nets": nets}, {"optimizer": opt}).save(4, history)
    assert json.loads((tmp_path / runs.HISTORY).read_text()) == [list(h) for h in history]
    other = _Pair()
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    ck = core.Checkpointer(tmp_path, cpu_session, {"nets": other}, {"optimizer": other_opt})
    assert ck.restore() == (4, history)
    for a, b in zip(nets.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert core.Checkpointer(tmp_path / "none", cpu_session, {}, {}).restore() == (0, [])


def test_adam_is_fused_where_it_can_be_and_takes_the_default_path_elsewhere():
    torch.manual_seed(0)
    nets = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    start = [p.detach().clone() for p in nets.parameters()]
    plain_nets = copy.deepcopy(nets)

    def groups(n):
        return [{"params": list(n[0].parameters()), "lr": 1e-3}, {"params": list(n[2].parameters())}]

    fused = core.adam(groups(nets), lr=1e-2, eps=1e-6)
    assert fused.defaults["fused"] and fused.defaults["eps"] == 1e-6
    assert [g["lr"] for g in fused.param_groups] == [1e-3, 1e-2]
    plain = torch.optim.Adam(groups(plain_nets), lr=1e-2, eps=1e-6)
    x = torch.randn(8, 3)
    for _ in range(3):
        for n, o in ((nets, fused), (plain_nets, plain)):
            o.zero_grad()
            n(x).square().sum().backward()
            o.step()
    for a, b, a0 in zip(nets.parameters(), plain_nets.parameters(), start, strict=True):
        assert not torch.allclose(a, a0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain.load_state_dict(fused.state_dict())  # same state layout: checkpoints interchange
    meta = nn.Parameter(torch.zeros(2, device="meta"))
    assert not core.adam([meta], lr=1e-3).defaults["fused"]


def test_batch_iterator_close_stops_loader_workers():
    from torch.utils.data import DataLoader, IterableDataset

    class Ones(IterableDataset):
        def __iter__(self):
            while True:
                yield {"x": torch.ones(2)}

    it = core.BatchIterator(DataLoader(Ones(), batch_size=None, num_workers=1))
    assert torch.equal(next(it)["x"], torch.ones(2))
    assert multiprocessing.active_children()
    it.close()
    assert not multiprocessing.active_children()


def test_rng_preserved_takes_back_what_the_block_draws():
    import random

    import numpy as np

    from vptr.train.checkpoint import rng_preserved

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with rng_preserved():
        torch.rand(100), np.random.rand(7), random.random()
    got = (torch.rand(4), np.random.rand(4), random.random())
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]

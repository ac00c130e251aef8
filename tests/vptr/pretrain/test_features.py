"""A pretraining run's state feature φ(s) exported as an encoder: the rebuilt trunk + head
gives exactly the objective's own φ."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vptr.errors import ConfigError
from vptr.pretrain import build_model, get_objective
from vptr.pretrain.features import feature_encoder


def fake_run(objective: str, **cfg):
    obj = get_objective(objective)
    ocfg = obj.config_cls(**cfg)
    torch.manual_seed(0)
    nets = build_model(objective, ocfg, "impala_small", 1, 32).eval()
    for p in nets.parameters():  # trained-looking weights, not the init
        p.data.add_(0.05 * torch.randn_like(p))
    return SimpleNamespace(objective=obj, objective_cfg=ocfg, nets=nets, path="run",
                           config={"encoder": "impala_small"})


@pytest.mark.parametrize("objective,cfg,name", [
    ("icvf", {"hidden_dims": (32, 16), "layer_norm": True},
     "impala_small+head:32-16:final:ln"),
    ("tdjepa", {"head_hidden_dims": (32,), "phi_dim": 8},
     "impala_small+head:32-8:ln:sphere"),
])
def test_the_exported_phi_is_the_objectives_phi(objective, cfg, name):
    from vptr.nets.encoders import head_encoder_name

    run = fake_run(objective, **cfg)
    enc = feature_encoder(run)
    assert head_encoder_name("impala_small", enc.spec) == name
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(enc(x), run.nets.phi(x), atol=1e-5)


def test_an_objective_without_a_phi_head_is_refused():
    with pytest.raises(ConfigError, match="no state-feature head"):
        feature_encoder(fake_run("vip"))

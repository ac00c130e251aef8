"""ICVF: intention-conditioned value functions (Ghosh, Bhateja & Levine, ICML 2023).

Multilinear value of reaching outcome s+ from s when acting on intention z (paper eq. 6,
release ``src/icvf_networks.py::MultilinearVF``)::

    V(s, s+, z) = Σ_d (A(Tz ⊙ φ(s)))_d · (B(Tz ⊙ ψ(s+)))_d,    Tz = T(ψ(s_z))

φ, ψ, T are MLPs (256, 256) with ReLU after every layer, A and B d x d linear maps with
bias; the intention embedding reuses ψ. Two such heads (independent φ, ψ, T, A, B, as the
release's ``ensemblize(MultilinearVF, 2)``) share one image encoder.

Loss (release ``src/icvf_learner.py::icvf_loss``), rewards and masks from frame indices::

    r(s, s+) = 0 if s is s+ else -1,           mask  = 0 at s+ (1 - reached)
    q_i  = r(s, s+)  + γ · mask   · V̄_i(s', s+, z)                        per head i
    A    = r(s, s_z) + γ · mask_z · min_i V̄_i(s', s_z, z) - mean_i V̄_i(s, s_z, z)
    L    = Σ_i mean_batch[ w · (q_i - V_i(s, s+, z))² ],   w = τ if A >= 0 else 1 - τ

Release semantics matched here (checked against dibyaghosh/icvf_release, MIT):

* heads are *summed* (``value_loss1 + value_loss2``), each a mean over the batch;
* the advantage uses ``min`` over target heads at s' (``min_q=True`` default; ``mean`` with
  ``min_q=False``) and the *mean* of target heads at s — both V̄ from the target network;
* reward ``success * 1 + (-1)`` and mask ``1 - success`` for both outcome and intention
  (``GCSDataset`` with ``terminal=True``);
* the target network is a Polyak copy of *everything*, image encoder included
  (``target_update`` over all ``value_def`` params), rate 0.005, updated every step;
* MLP weights Xavier-uniform with zero biases (``jaxrl_m`` ``default_init``).

The optimizer step, target update and logging belong to the training loop; the training
defaults (Adam lr 5e-5, eps 3.125e-4, batch 64, target rate 0.005) live in the config so
the loop reads them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.nets.mlp import init_linear_, make_mlp
from vptr.pretrain.common import (
    Batch,
    encode_unique,
    expectile_weight,
    require_keys,
    scalar_metrics,
)

PREFIX = "icvf"


@dataclass
class ICVFConfig:
    hidden_dims: tuple[int, ...] = helpfield((256, 256), "widths of the φ, ψ and T MLPs "
                                             "(the last one is the latent size d)")
    num_heads: int = helpfield(2, "value heads sharing the image encoder (release: 2)")
    layer_norm: bool = helpfield(False, "LayerNorm after every activation in φ, ψ, T "
                                 "(release option use_layer_norm)")
    discount: float = helpfield(0.99, "γ of the outcome-reaching value")
    expectile: float = helpfield(0.9, "τ: weight of samples whose intention-advantage is >= 0")
    min_q: bool = helpfield(True, "advantage bootstraps min over target heads (else mean)")
    dedup: bool = helpfield(True, "encode each distinct frame once (by *_index keys)")
    lr: float = helpfield(5e-5, "Adam learning rate (release image setting)")
    adam_eps: float = helpfield(3.125e-4, "Adam epsilon (release image setting)")
    batch_size: int = helpfield(64, "batch size (release image setting)")
    target_rate: float = helpfield(0.005, "Polyak rate of the target network per step")
    use_intent: bool = helpfield(True, "false: the ablation without intentions (release "
                                       "option no_intent): the intention image is a constant "
                                       "(every pixel 1) in every value, while its reward and "
                                       "mask still come from the drawn frame; diagnostics "
                                       "then read V(s, g, constant)")

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(self.hidden_dims)
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise ConfigError(f"icvf.hidden_dims must be positive widths, got {self.hidden_dims}")
        if self.num_heads < 1:
            raise ConfigError(f"icvf.num_heads must be >= 1, got {self.num_heads}")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"icvf.discount must be in [0, 1), got {self.discount}")
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"icvf.expectile must be in (0, 1), got {self.expectile}")
        if self.lr <= 0 or self.adam_eps <= 0:
            raise ConfigError(f"icvf.lr and icvf.adam_eps must be > 0, got {self.lr}, "
                              f"{self.adam_eps}")
        if self.batch_size < 1:
            raise ConfigError(f"icvf.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"icvf.target_rate must be in (0, 1], got {self.target_rate}")


class MultilinearHead(nn.Module):
    """One ICVF head: φ, ψ, T MLPs and the low-rank maps A, B (release MultilinearVF).

    T(z) should be a d x d matrix; like the release it is approximated as
    diag(Tz) A B diag(Tz) with fixed learned A, B and a d-vector Tz = T(ψ(s_z)).
    """

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], layer_norm: bool) -> None:
        super().__init__()

        def mlp(d_in: int) -> nn.Sequential:
            return make_mlp(d_in, hidden_dims, activate_final=True, layer_norm=layer_norm,
                            init="xavier_uniform")

        d = hidden_dims[-1]
        self.phi = mlp(in_dim)
        self.psi = mlp(in_dim)
        self.T = mlp(d)
        self.A = nn.Linear(d, d)
        self.B = nn.Linear(d, d)
        init_linear_(self.A, "xavier_uniform")
        init_linear_(self.B, "xavier_uniform")

    def combine(self, phi: torch.Tensor, psi: torch.Tensor, tz: torch.Tensor) -> torch.Tensor:
        """V from already embedded φ(s), ψ(s+) and Tz: (..., d) -> (...)."""
        return (self.A(tz * phi) * self.B(tz * psi)).sum(-1)

    def forward(self, feat_s: torch.Tensor, feat_g: torch.Tensor,
                feat_z: torch.Tensor) -> torch.Tensor:
        return self.combine(self.phi(feat_s), self.psi(feat_g), self.T(self.psi(feat_z)))


class ICVFNets(nn.Module):
    def __init__(self, cfg: ICVFConfig, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.no_intent = not cfg.use_intent
        self.heads = nn.ModuleList(
            MultilinearHead(encoder.out_dim, cfg.hidden_dims, cfg.layer_norm)
            for _ in range(cfg.num_heads))

    def values(self, feat_s: torch.Tensor, feat_g: torch.Tensor,
               feat_z: torch.Tensor) -> torch.Tensor:
        """(num_heads, B) values from encoder features."""
        return torch.stack([h(feat_s, feat_g, feat_z) for h in self.heads])

    def phi(self, obs: torch.Tensor) -> torch.Tensor:
        """Downstream state feature φ(s) of the first head."""
        return self.heads[0].phi(self.encoder(obs))


def create(cfg: ICVFConfig, encoder: nn.Module) -> ICVFNets:
    return ICVFNets(cfg, encoder)


def _target_values(target: ICVFNets, f_s: torch.Tensor, f_next: torch.Tensor,
                   f_g: torch.Tensor, f_z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(V̄(s', s+, z), V̄(s', s_z, z), V̄(s, s_z, z)), each (heads, B); embeds each input once."""
    out_gz, out_zz, out_szz = [], [], []
    n = f_s.shape[0]
    for h in target.heads:
        phi_next, phi_s = h.phi(torch.cat([f_next, f_s])).split(n)
        psi_g, psi_z = h.psi(torch.cat([f_g, f_z])).split(n)
        tz = h.T(psi_z)
        out_gz.append(h.combine(phi_next, psi_g, tz))
        out_zz.append(h.combine(phi_next, psi_z, tz))
        out_szz.append(h.combine(phi_s, psi_z, tz))
    return torch.stack(out_gz), torch.stack(out_zz), torch.stack(out_szz)


def loss_fn(nets: ICVFNets, target_nets: ICVFNets, batch: Batch,
            cfg: ICVFConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    require_keys(batch, ("obs", "next_obs", "goal", "intent", "goal_reached", "intent_reached"),
                 PREFIX)
    if not cfg.use_intent:
        batch = constant_intent(batch)
    with torch.no_grad():
        tf = encode_unique(target_nets.encoder, batch, ("obs", "next_obs", "goal", "intent"),
                           cfg.dedup)
        next_v_gz, next_v_zz, v_zz = _target_values(target_nets, tf["obs"], tf["next_obs"],
                                                    tf["goal"], tf["intent"])
        reached = batch["goal_reached"].to(next_v_gz.dtype)
        reached_z = batch["intent_reached"].to(next_v_gz.dtype)
        reward, mask = reached - 1.0, 1.0 - reached  # r = 0 at s+, else -1; no bootstrap at s+
        reward_z, mask_z = reached_z - 1.0, 1.0 - reached_z
        q_gz = reward + cfg.discount * mask * next_v_gz  # (heads, B)
        next_v = next_v_zz.min(0).values if cfg.min_q else next_v_zz.mean(0)
        adv = reward_z + cfg.discount * mask_z * next_v - v_zz.mean(0)
        weight = expectile_weight(adv, cfg.expectile)

    f = encode_unique(nets.encoder, batch, ("obs", "goal", "intent"), cfg.dedup)
    v_gz = nets.values(f["obs"], f["goal"], f["intent"])  # (heads, B)
    sq = (q_gz - v_gz).pow(2)
    loss = (weight * sq).mean(1).sum()

    with torch.no_grad():
        not_reached = mask.sum().clamp_min(1e-5)
        metrics = scalar_metrics(
            PREFIX,
            loss=loss,
            v_gz_mean=v_gz.mean(), v_gz_min=v_gz.min(), v_gz_max=v_gz.max(),
            v_zz_mean=v_zz.mean(),
            q_gz_max=q_gz.max(),
            adv_mean=adv.mean(), adv_abs_mean=adv.abs().mean(),
            adv_pos_frac=(adv >= 0).float().mean(),
            reward_mean=reward.mean(), mask_mean=mask.mean(),
            # TD error split: s != s+ (bootstrapped) and s == s+ (should reach V = 0)
            td_sq_not_reached=(sq[0] * mask).sum() / not_reached,
            td_sq_reached=(sq[0] * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1e-5),
        )
    return loss, metrics


def constant_intent(batch: Batch) -> Batch:
    """The batch with every intention image constant (all pixels 1, the release's
    ``ones_like``) and one shared ``intent_index`` (-1), so deduplication encodes it once
    and never mistakes it for a real frame; ``intent_reached`` is kept."""
    out = dict(batch)
    out["intent"] = torch.ones_like(batch["intent"])
    if "intent_index" in batch:
        out["intent_index"] = torch.full_like(torch.as_tensor(batch["intent_index"]), -1)
    return out


def value(nets: ICVFNets, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None) -> torch.Tensor:
    """V(s, g, z) averaged over heads; z = g when no intention is given (V(s, g, g)), or
    the constant intention of a ``no_intent`` model.

    Call under ``torch.no_grad()`` for diagnostics. Images as in the batch contract.
    """
    if intent is None and getattr(nets, "no_intent", False):
        intent = torch.ones_like(goal)
    n = obs.shape[0]
    images = [obs, goal] if intent is None else [obs, goal, intent]
    feats = nets.encoder(torch.cat(images)).split(n)
    f_z = feats[1] if intent is None else feats[2]
    return nets.values(feats[0], feats[1], f_z).mean(0)

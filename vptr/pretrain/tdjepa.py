"""Intention-conditioned, action-free TD-JEPA — this project's design.

TD-JEPA (Bagatella et al. 2025, "Latent-predictive representations for zero-shot RL")
learns a state encoder φ, an outcome encoder ψ and a predictor T(φ(s), a, z) trained by TD
to predict the discounted sum of future ψ features of the policy π_z:
``ψ̄(s') + γ(1 - term) T̄(φ̄(s'), a', z)`` with ``a' ~ π_z``. As released it needs actions
and an actor. Video has no actions, so **this project replaces the actor by ICVF-style
intention weighting** (our design, not the paper's; spec "Intention-conditioned TD-JEPA"):

* φ(s), ψ(s): MLP heads on the shared image trunk, outputs rescaled to norm √d;
* intention z = ψ̄(s_z) projected to the √d sphere for an intention frame s_z of the batch,
  or a random Gaussian direction (probability ``random_z_ratio``);
* predictor ensemble T_k(φ(s), z) -> R^{dψ} (R^{dψ+1} with the step cost below), k = 1..K,
  averaged for targets;
* TD target ``y = ψ̄(s_c) + γ · mask_z · T̄(φ̄(s'), z)`` (ψ̄⁺ with the step cost; mask_z = 0
  when s is s_z; 1 for random z), all barred quantities from the Polyak target network
  under no_grad. s_c is where the features start counting (``sf_start``): ``"next"`` (s_c = s') is the form
  written in TD-JEPA; ``"current"`` (s_c = s, Dayan's successor representation) collects
  the goal indicator ψ(s)ᵀz/d in s itself, exactly like ICVF's reward r(s, s_z), so that
  with goal-indicator features V(s, z)/d = γ^τ for a goal τ steps away and V(s_z, z)/d = 1
  — with ``"next"`` the masked step at s_z still counts the frame after the goal, so
  V(s_z) < V(s_{z-1}) and the value is not monotone at the goal;
* step cost (``step_cost``, our addition): ψ is augmented with a constant coordinate,
  ψ⁺(s) = (ψ(s), √d), and the goal-reaching reward is ``r(s, z) = ψ⁺(s)ᵀw(z)`` with
  ``w(z) = (z/d, -1/√d)``, i.e. ψ(s)ᵀz/d - 1: 0 at the intention frame, negative elsewhere —
  for goal-indicator features exactly ICVF's -1[s != s_z]. The predictor's extra output
  learns √d times the discounted number of steps until s_z is reached. Without it
  (TD-JEPA's plain reward ψᵀz/d) frames of one episode that look alike (cosine ~0.5 on
  our video) add a positive baseline per step, so a state *far* from the goal, with more steps left to
  collect it, outscores one next to the goal; with it the same similarity only scales the
  per-step cost and the value falls monotonically with the steps left;
* intention weighting as in ICVF with the successor-feature value V(s, z) = T(φ(s), z)ᵀw(z):
  ``A = r(s_c, z) + γ · mask_z · V̄(s', z) - V̄(s, z)`` and weight τ if A >= 0 else 1 - τ.
  τ = 0.5 gives the behaviour policy's successor features (a TD version of BYOL-γ);
* optional second predictor T_ψ(ψ(s), z) -> R^{dφ} with target
  ``φ̄(s_c) + γ mask_z T̄_ψ(ψ̄(s'), z)`` (TD-JEPA's default "asymmetric" model trains both
  directions);
* anti-collapse: ``Orth(E) = -mean diag(EEᵀ) + ½ Σ_{i≠j} (EEᵀ)²_ij / (B(B-1))`` on φ(s) and
  ψ(s) with coefficient ``orth_coef``, √d normalisation, stop-gradient EMA targets and
  orthogonal initialisation of heads and predictors (as TD-JEPA's ``weight_init``).

Loss = mean_k mean_b weight_b ‖T_k(φ(s), z) - y‖² (+ the same for T_ψ)
+ orth_coef · (Orth(φ) + Orth(ψ)), with the squared error summed over feature dimensions
as in TD-JEPA.

Action-conditioned variant (robot data; ``action_dim > 0``): T(φ(s), a, z) with the
SARSA-style next action ``next_action`` taken from the batch (float (B, A), e.g. a
flattened action chunk). It estimates the data policy's successor features, so it runs
without intention weighting (every sample weight 1: the advantage of a dataset transition
is not defined without a policy); zero-shot values follow from :func:`zero_shot_z`.

Departure from the TD-JEPA release: targets come from a Polyak copy of the *whole* network,
image trunk included (as ICVF), whereas the release encodes s' with the online trunk and
averages only the MLP heads and predictors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError, DataError
from vptr.nets.mlp import make_mlp
from vptr.pretrain.common import (
    INDEX_KEYS,
    Batch,
    encode_unique,
    expectile_weight,
    first_occurrences,
    orth_loss,
    project_sphere,
    require_keys,
    scalar_metrics,
)

PREFIX = "tdjepa"
SFStart = Literal["current", "next"]
SF_STARTS: tuple[str, ...] = get_args(SFStart)


@dataclass
class TDJEPAConfig:
    phi_dim: int = helpfield(64, "dimension d of φ(s) (TD-JEPA: 50-256)")
    psi_dim: int = helpfield(64, "dimension d of ψ(s) and of the intention z")
    head_hidden_dims: tuple[int, ...] = helpfield((256,), "hidden widths of the φ and ψ "
                                                  "heads on the image trunk")
    predictor_hidden_dims: tuple[int, ...] = helpfield((512, 512), "hidden widths of the "
                                                       "predictor(s) T")
    num_predictors: int = helpfield(2, "predictor ensemble size (targets average them)")
    psi_predictor: bool = helpfield(True, "also train T_ψ(ψ(s), z) -> φ (TD-JEPA asymmetric model)")
    action_dim: int = helpfield(0, "0: action-free; > 0: T(φ(s), a, z) with batch "
                                "'action' / 'next_action' of this width (flattened chunk)")
    discount: float = helpfield(0.98, "γ of the successor features (TD-JEPA: 0.98-0.99)")
    expectile: float = helpfield(0.9, "τ of the intention weighting (0.5: behaviour SFs)")
    sf_start: SFStart = helpfield(
        "current", "where the successor features start counting: "
                   "'current' = ψ(s) + γ ψ(s') + ... (the goal indicator collected "
                   "in s, as ICVF's reward; V maps exactly to time-to-goal); 'next' = "
                   "ψ(s') + γ ψ(s'') + ... (TD-JEPA's written form)")
    step_cost: bool = helpfield(
        True, "augment ψ with a constant feature so that the goal reward is ψ(s)ᵀz/d - 1 "
              "(0 at the intention frame, < 0 elsewhere; ICVF's -1[s != g] for indicator "
              "features): the value then falls with the steps left to the goal even when "
              "the frames of an episode look alike; false = TD-JEPA's plain reward ψᵀz/d")
    random_z_ratio: float = helpfield(0.5, "fraction of samples whose z is a random direction "
                                      "instead of ψ(intent)")
    orth_frames: tuple[str, ...] = helpfield(
        ("obs",), "batch images whose φ(s) and ψ(s) enter the orthonormality term (each "
        "distinct frame once); adding 'intent' puts later frames of the same trajectory in "
        "it, which decorrelates the features along time (costs one more online encoding)")
    orth_coef: float = helpfield(1.0, "orthonormality regulariser weight (TD-JEPA: 0.1 DMC, "
                                 "1 OGBench)")
    dedup: bool = helpfield(True, "encode each distinct frame once (by *_index keys)")
    lr: float = helpfield(1e-4, "Adam learning rate (TD-JEPA)")
    adam_eps: float = helpfield(1e-8, "Adam epsilon")
    batch_size: int = helpfield(256, "batch size (TD-JEPA: 256-1024)")
    target_rate: float = helpfield(0.005, "Polyak rate of the target network "
                                   "(TD-JEPA: 0.001-0.005)")

    def __post_init__(self) -> None:
        self.head_hidden_dims = tuple(self.head_hidden_dims)
        self.predictor_hidden_dims = tuple(self.predictor_hidden_dims)
        self.orth_frames = tuple(dict.fromkeys(self.orth_frames))
        if not self.orth_frames or self.orth_frames[0] != "obs" or \
                not set(self.orth_frames) <= set(INDEX_KEYS):
            raise ConfigError(f"tdjepa.orth_frames must start with 'obs' and name batch images "
                              f"({', '.join(INDEX_KEYS)}), got {self.orth_frames}")
        if self.phi_dim < 1 or self.psi_dim < 1:
            raise ConfigError(f"tdjepa.phi_dim / psi_dim must be >= 1, got {self.phi_dim}, "
                              f"{self.psi_dim}")
        if any(d <= 0 for d in self.head_hidden_dims + self.predictor_hidden_dims):
            raise ConfigError("tdjepa: hidden widths must be positive, got "
                              f"{self.head_hidden_dims}, {self.predictor_hidden_dims}")
        if self.num_predictors < 1:
            raise ConfigError(f"tdjepa.num_predictors must be >= 1, got {self.num_predictors}")
        if self.action_dim < 0:
            raise ConfigError(f"tdjepa.action_dim must be >= 0, got {self.action_dim}")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"tdjepa.discount must be in [0, 1), got {self.discount}")
        if self.sf_start not in SF_STARTS:
            raise ConfigError(f"tdjepa.sf_start must be one of {', '.join(SF_STARTS)}, got "
                              f"{self.sf_start!r}")
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"tdjepa.expectile must be in (0, 1), got {self.expectile}")
        if not 0.0 <= self.random_z_ratio <= 1.0:
            raise ConfigError(f"tdjepa.random_z_ratio must be in [0, 1], got {self.random_z_ratio}")
        if self.orth_coef < 0:
            raise ConfigError(f"tdjepa.orth_coef must be >= 0, got {self.orth_coef}")
        if self.lr <= 0 or self.adam_eps <= 0 or self.batch_size < 2:
            raise ConfigError("tdjepa: lr and adam_eps must be > 0 and batch_size >= 2 "
                              f"(orthonormality needs pairs), got {self.lr}, {self.adam_eps}, "
                              f"{self.batch_size}")
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"tdjepa.target_rate must be in (0, 1], got {self.target_rate}")


class Predictor(nn.Module):
    """Ensemble T_k(x, z[, a]) -> R^out, returned stacked as (K, B, out)."""

    def __init__(self, in_dim: int, out_dim: int, cfg: TDJEPAConfig) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            make_mlp(in_dim + cfg.psi_dim + cfg.action_dim, (*cfg.predictor_hidden_dims, out_dim),
                     layer_norm=True, init="orthogonal")
            for _ in range(cfg.num_predictors))

    def forward(self, x: torch.Tensor, z: torch.Tensor,
                action: torch.Tensor | None = None) -> torch.Tensor:
        inp = torch.cat([x, z] if action is None else [x, z, action], dim=-1)
        return torch.stack([m(inp) for m in self.members])


class TDJEPANets(nn.Module):
    def __init__(self, cfg: TDJEPAConfig, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.action_dim = cfg.action_dim
        self.discount = cfg.discount
        self.sf_start = cfg.sf_start
        self.step_cost = cfg.step_cost
        self.phi_head = make_mlp(encoder.out_dim, (*cfg.head_hidden_dims, cfg.phi_dim),
                                 layer_norm=True, init="orthogonal")
        self.psi_head = make_mlp(encoder.out_dim, (*cfg.head_hidden_dims, cfg.psi_dim),
                                 layer_norm=True, init="orthogonal")
        # with a step cost T_φ also predicts the successor feature of the constant coordinate
        self.T_phi = Predictor(cfg.phi_dim, cfg.psi_dim + int(cfg.step_cost), cfg)
        self.T_psi = Predictor(cfg.psi_dim, cfg.phi_dim, cfg) if cfg.psi_predictor else None

    def phi_psi(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ, ψ) on the √d sphere from trunk features."""
        return project_sphere(self.phi_head(feats)), project_sphere(self.psi_head(feats))

    def phi(self, obs: torch.Tensor) -> torch.Tensor:
        """Downstream state feature φ(s)."""
        return project_sphere(self.phi_head(self.encoder(obs)))


def create(cfg: TDJEPAConfig, encoder: nn.Module) -> TDJEPANets:
    return TDJEPANets(cfg, encoder)


def _actions(batch: Batch, cfg: TDJEPAConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if cfg.action_dim == 0:
        return None, None
    require_keys(batch, ("action", "next_action"), PREFIX + " (action-conditioned)")
    out = []
    for key in ("action", "next_action"):
        a = batch[key].flatten(1)  # an action chunk (B, h, A) becomes (B, h*A)
        if a.shape[1] != cfg.action_dim:
            raise DataError(f"{PREFIX}: batch[{key!r}] has {a.shape[1]} action values per "
                            f"sample, config action_dim is {cfg.action_dim}")
        out.append(a)
    return out[0], out[1]


def sample_z(psi_intent: torch.Tensor, random_z_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, is_random): ψ(s_z) on the √d sphere, replaced by a random direction w.p. ratio."""
    z = project_sphere(psi_intent)
    is_random = torch.rand(z.shape[0], device=z.device) < random_z_ratio
    if random_z_ratio > 0:
        z = torch.where(is_random[:, None], project_sphere(torch.randn_like(z)), z)
    return z, is_random


def reward_features(psi: torch.Tensor, step_cost: bool) -> torch.Tensor:
    """ψ⁺ = (ψ, √d) with the step-cost coordinate, else ψ (rows of (B, d)).

    The constant is √d, the norm of ψ, so that its successor feature (√d times the
    discounted steps to the intention) weighs as much in the squared TD error as ψ's."""
    if not step_cost:
        return psi
    return torch.cat([psi, psi.new_full((psi.shape[0], 1), psi.shape[-1] ** 0.5)], -1)


def reward_weights(z: torch.Tensor, step_cost: bool) -> torch.Tensor:
    """w(z) with goal reward r(s, z) = ψ⁺(s)ᵀw(z) = ψ(s)ᵀz/d [- 1]: (z/d, -1/√d), else z/d."""
    d = z.shape[-1]
    w = z / d
    return torch.cat([w, w.new_full((w.shape[0], 1), -d ** -0.5)], -1) if step_cost else w


def _encode_orth_frames(nets: TDJEPANets, batch: Batch, cfg: TDJEPAConfig) -> torch.Tensor:
    """Online trunk features of the ``orth_frames`` images, concatenated (obs first)."""
    if len(cfg.orth_frames) == 1:
        return nets.encoder(batch["obs"])
    feats = encode_unique(nets.encoder, batch, cfg.orth_frames, cfg.dedup)
    return torch.cat([feats[k] for k in cfg.orth_frames])


def _distinct_rows(batch: Batch, keys: tuple[str, ...], n_rows: int) -> torch.Tensor:
    """Rows of the concatenated ``keys`` images that hold each distinct frame once (two
    copies of one frame would make a fixed off-diagonal term in the orthonormality loss)."""
    plan = first_occurrences(batch, keys) if len(keys) > 1 else None
    return torch.arange(n_rows, device=batch["obs"].device) if plan is None else plan[0]


def loss_fn(nets: TDJEPANets, target_nets: TDJEPANets, batch: Batch,
            cfg: TDJEPAConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    require_keys(batch, ("obs", "next_obs", "intent", "intent_reached"), PREFIX)
    action, next_action = _actions(batch, cfg)
    weighted = action is None  # intention weighting only in the action-free form

    with torch.no_grad():
        current = cfg.sf_start == "current"
        keys = ("obs", "next_obs", "intent") if weighted or current else ("next_obs", "intent")
        tf = encode_unique(target_nets.encoder, batch, keys, cfg.dedup)
        phi_next, psi_next = target_nets.phi_psi(tf["next_obs"])
        _, psi_intent = target_nets.phi_psi(tf["intent"])
        if "obs" in tf:
            phi_s_bar, psi_s_bar = target_nets.phi_psi(tf["obs"])
        # the features counted first: those of s ("current") or of s' ("next")
        phi_c, psi_c = (phi_s_bar, psi_s_bar) if current else (phi_next, psi_next)
        z, is_random = sample_z(psi_intent, cfg.random_z_ratio)
        if action is not None:  # actions arrive in the dataset's dtype
            action, next_action = action.to(z.dtype), next_action.to(z.dtype)
        # s == s_z ends the intention's episode; a random z has no goal frame to reach
        reached_z = batch["intent_reached"].to(z.dtype)
        mask_z = torch.where(is_random, torch.ones_like(reached_z), 1.0 - reached_z)
        t_next = target_nets.T_phi(phi_next, z, next_action).mean(0)  # (B, dψ [+ 1])
        feat_c = reward_features(psi_c, cfg.step_cost)
        y_phi = feat_c + cfg.discount * mask_z[:, None] * t_next
        if weighted:
            w = reward_weights(z, cfg.step_cost)
            v_next = (t_next * w).sum(-1)
            v_s = (target_nets.T_phi(phi_s_bar, z).mean(0) * w).sum(-1)
            adv = (feat_c * w).sum(-1) + cfg.discount * mask_z * v_next - v_s
            weight = expectile_weight(adv, cfg.expectile)
        else:
            weight = torch.ones_like(mask_z)
        if nets.T_psi is not None:
            t_psi_next = target_nets.T_psi(psi_next, z, next_action).mean(0)  # (B, dφ)
            y_psi = phi_c + cfg.discount * mask_z[:, None] * t_psi_next

    phi_all, psi_all = nets.phi_psi(_encode_orth_frames(nets, batch, cfg))
    n = batch["obs"].shape[0]
    phi, psi = phi_all[:n], psi_all[:n]
    pred_phi = nets.T_phi(phi, z, action)  # (K, B, dψ)
    td_phi = (weight * (pred_phi - y_phi).pow(2).sum(-1)).mean()
    td_psi = torch.zeros((), device=phi.device)
    if nets.T_psi is not None:
        td_psi = (weight * (nets.T_psi(psi, z, action) - y_psi).pow(2).sum(-1)).mean()
    rows = _distinct_rows(batch, cfg.orth_frames, phi_all.shape[0])
    orth_phi, orth_phi_diag, orth_phi_off = orth_loss(phi_all[rows])
    orth_psi, _, orth_psi_off = orth_loss(psi_all[rows])
    loss = td_phi + td_psi + cfg.orth_coef * (orth_phi + orth_psi)

    with torch.no_grad():
        extra = {}
        if weighted:
            extra = {"adv_mean": adv.mean(), "adv_pos_frac": (adv >= 0).float().mean(),
                     "v_mean": v_s.mean()}
        metrics = scalar_metrics(
            PREFIX, loss=loss, td_phi=td_phi, td_psi=td_psi, orth_phi=orth_phi,
            orth_phi_diag=orth_phi_diag, orth_phi_offdiag=orth_phi_off, orth_psi=orth_psi,
            orth_psi_offdiag=orth_psi_off, target_norm=y_phi.norm(dim=-1).mean(),
            random_z_frac=is_random.float().mean(), mask_z_mean=mask_z.mean(), **extra)
    return loss, metrics


def _predict(nets: TDJEPANets, obs: torch.Tensor, goal: torch.Tensor,
             intent: torch.Tensor | None,
             action: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T(φ(s), z) averaged over the ensemble, ψ(g)); z = ψ(s_z), or ψ(g) without intent."""
    if (action is None) != (nets.action_dim == 0):
        raise ConfigError("tdjepa.value: pass `action` exactly when the model is "
                          f"action-conditioned (action_dim={nets.action_dim})")
    n = obs.shape[0]
    images = [obs, goal] if intent is None else [obs, goal, intent]
    feats = nets.encoder(torch.cat(images))
    phi = project_sphere(nets.phi_head(feats[:n]))
    psi = project_sphere(nets.psi_head(feats[n:]))
    psi_g = psi[:n]
    z = psi_g if intent is None else psi[n:]
    if action is not None:
        action = action.flatten(1).to(phi.dtype)
    return nets.T_phi(phi, z, action).mean(0), psi_g


def sf_value(nets: TDJEPANets, obs: torch.Tensor, goal: torch.Tensor,
             intent: torch.Tensor | None = None,
             action: torch.Tensor | None = None) -> torch.Tensor:
    """Successor-feature value of ``goal`` from ``obs``, in units of discounted goal visits.

    Without an intention: T(φ(s), z)ᵀ z / d with z = ψ(g) on the √d sphere. With an
    intention frame: T(φ(s), ψ(s_z))ᵀ ψ(g) / d, the predicted discounted visitation of g's
    features while acting on s_z (the analogue of ICVF's V(s, s+, z)). Dividing by d makes
    the per-step "reward" ψ(x)ᵀψ(g)/d the cosine similarity to the goal's features (1 at
    the goal). The action-conditioned model needs ``action`` (then this is Q(s, a, z)).
    The step-cost coordinate is left out (see :func:`value`).
    """
    t, psi_g = _predict(nets, obs, goal, intent, action)
    d = psi_g.shape[-1]
    return (t[:, :d] * psi_g).sum(-1) / d


def sf_to_time(v_sf: torch.Tensor, discount: float, sf_start: str) -> torch.Tensor:
    """Successor-feature value -> ICVF's negative discounted time-to-goal scale.

    With goal-indicator features the discounted goal visitation of a goal τ steps away is
    γ^τ (``sf_start="current"``) or γ^(τ-1) (``"next"``), and ICVF's value of the same goal
    is -(1 - γ^τ)/(1 - γ). This monotone affine map leaves Spearman's rho unchanged and
    puts the spread and V(goal, goal) on the same scale as ICVF's (0 at the goal, down
    to -1/(1-γ) far away); features far from indicators show up as values above 0.
    """
    reach = v_sf if sf_start == "current" else discount * v_sf  # ≈ γ^τ
    return -(1.0 - reach) / (1.0 - discount)


def value(nets: TDJEPANets, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None, action: torch.Tensor | None = None) -> torch.Tensor:
    """Value of reaching ``goal`` from ``obs`` on ICVF's time-to-goal scale (what the
    diagnostics report for TD-JEPA).

    With the step cost it is the model's own value T(φ(s), z)ᵀw(ψ(g)) = E Σ_k γ^k
    (ψ(s_k)ᵀψ(g)/d - 1), 0 at the goal; without it :func:`sf_value` mapped by
    :func:`sf_to_time`.
    """
    if nets.step_cost:
        t, psi_g = _predict(nets, obs, goal, intent, action)
        return (t * reward_weights(psi_g, True)).sum(-1)
    return sf_to_time(sf_value(nets, obs, goal, intent, action), nets.discount, nets.sf_start)


def zero_shot_z(psi_next: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Task vector from rewards: z = argmin ‖ψ(s') z - r‖² projected to the √d sphere.

    ``psi_next``: (N, d) features of the states the rewards were received in; ``rewards``:
    (N,). Least squares as in TD-JEPA / FB zero-shot reward inference.
    """
    if psi_next.ndim != 2 or rewards.reshape(-1).shape[0] != psi_next.shape[0]:
        raise DataError(f"zero_shot_z: expected psi (N, d) and rewards (N,), got "
                        f"{tuple(psi_next.shape)} and {tuple(rewards.shape)}")
    sol = torch.linalg.lstsq(psi_next.double(), rewards.reshape(-1, 1).double()).solution
    return project_sphere(sol[:, 0].to(psi_next.dtype))

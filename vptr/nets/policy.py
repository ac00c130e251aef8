"""The networks a chunk policy acts with, shared by training (:mod:`vptr.finetune`) and
the deployment runtime (:mod:`vptr.runtime.artifact`): observation encoder, flow chunk
policy and Euler sampler, critic ensembles, best-of-N selection, and :class:`ChunkActor`
(the acting part of any fine-tuned agent, what an exported artifact holds).

Conventions (spec: finetuning.md):

* an *observation* is encoded once into ``z`` (:class:`ObsEncoder`: one image trunk per
  camera -> Dense -> LayerNorm -> tanh, V-PTR's head; the normalised state; a learned task
  embedding) and ``z`` is broadcast to the N best-of-N samples (``einops.repeat``), never
  re-encoded per sample;
* an action chunk ``A`` is (B, h, Da) in normalised units ([-1, 1] per dimension), fed to
  the networks flattened ``b (h a)``;
* critics are ensembles of K LayerNorm MLPs evaluated in one batched matmul per layer
  (:class:`EnsembleMLP`), output (K, B) or (K, B, O).

Imports no training code (no losses, no agents, no data pipeline).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from vptr.errors import ConfigError
from vptr.nets.mlp import make_mlp

# ----------------------------------------------------------------------------- data spec


@dataclass(frozen=True)
class DataSpec:
    """What the networks are built for (from the dataset; stored with the run)."""

    action_dim: int
    horizon: int  # chunk length the policy outputs (h)
    state_dim: int = 0
    cameras: tuple[str, ...] = ()
    image_size: int = 0
    frame_stack: int = 1
    num_tasks: int = 1


class Normalizer(nn.Module):
    """Per-feature affine normalisation with statistics stored as buffers (so they travel
    in checkpoints and the exported artifact).

    States: ``(x - mean) / std``. Actions: min/max to [-1, 1] (the flow policy samples in a
    bounded box); a constant dimension maps to 0 and back to its constant.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("meanstd", "minmax"):
            raise ConfigError(f"normalisation mode must be meanstd or minmax, got {mode!r}")
        self.mode = mode
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, stats: dict[str, Sequence[float]]) -> Normalizer:
        if self.mode == "meanstd":
            shift = torch.tensor(stats["mean"], dtype=torch.float32)
            scale = torch.tensor(stats["std"], dtype=torch.float32)
        else:
            lo = torch.tensor(stats["min"], dtype=torch.float32)
            hi = torch.tensor(stats["max"], dtype=torch.float32)
            shift, scale = (hi + lo) / 2, (hi - lo) / 2
        self.shift.copy_(shift)
        self.scale.copy_(torch.where(scale > 1e-6, scale, torch.ones_like(scale)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


# ----------------------------------------------------------------------------- encoder


class ObsEncoder(nn.Module):
    """``z = [tanh(LN(W · trunk(images))), normalised state, task embedding]``.

    ``trunks`` maps camera -> image encoder (or is empty for state-only agents). When the
    batch carries precomputed trunk features ``<prefix>_emb`` (frozen encoder, embeddings
    cached once), the trunks are skipped and only the head runs.
    """

    def __init__(self, spec: DataSpec, trunks: dict[str, nn.Module] | None, feature_dim: int,
                 task_dim: int = 16, trunk_dim: int = 0):
        super().__init__()
        self.cameras = tuple(spec.cameras)
        self.trunks = nn.ModuleDict({_safe(c): t for c, t in (trunks or {}).items()})
        self.state_norm = Normalizer(spec.state_dim, "meanstd") if spec.state_dim else None
        if self.cameras:
            width = trunk_dim or sum(int(t.out_dim) for t in self.trunks.values())
            self.head = nn.Sequential(nn.Linear(width, feature_dim), nn.LayerNorm(feature_dim),
                                      nn.Tanh())
        else:
            self.head = None
        self.task = nn.Embedding(spec.num_tasks, task_dim) if spec.num_tasks > 1 else None
        self.out_dim = ((feature_dim if self.cameras else 0) + spec.state_dim
                        + (task_dim if self.task is not None else 0))
        if self.out_dim == 0:
            raise ConfigError("the policy sees nothing: no camera, no state and one task")

    def trunk_features(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        return torch.cat([self.trunks[_safe(c)](batch[f"{prefix}.{c}"]) for c in self.cameras],
                         dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], prefix: str = "obs") -> torch.Tensor:
        parts = []
        if self.head is not None:
            emb = batch.get(f"{prefix}_emb")
            parts.append(self.head(emb if emb is not None else
                                   self.trunk_features(batch, prefix)))
        if self.state_norm is not None:
            parts.append(self.state_norm(batch["state" if prefix == "obs" else "next_state"]))
        if self.task is not None:
            parts.append(self.task(batch["task_index"]))
        return torch.cat(parts, dim=-1)


def _safe(name: str) -> str:
    """ModuleDict keys may not contain dots (camera keys like observation.images.front)."""
    return name.replace(".", "__")


# ----------------------------------------------------------------------------- flow policy


class FlowPolicy(nn.Module):
    """Velocity field ``v(z, x_u, u)`` of a flow-matching chunk policy (spec: QC, item 1).

    ``x`` is the flattened chunk ``b (h a)``; sampling integrates ``dx/du = v`` from
    ``x_0 ~ N(0, I)`` at u = 0 to u = 1 with Euler steps.

    A departure from the QC / FQL reference: the MLP has a LayerNorm after every hidden
    activation (the reference actors have none, ``actor_layer_norm=False``; the critics
    have them). Every policy measured in benchmarks/RESULTS.md was trained with it, and
    artifacts do not record it, so it stays; ``layer_norm=False`` builds the reference's.
    """

    def __init__(self, obs_dim: int, horizon: int, action_dim: int, hidden: Sequence[int],
                 layer_norm: bool = True):
        super().__init__()
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.chunk_dim = self.horizon * self.action_dim
        self.net = make_mlp(obs_dim + self.chunk_dim + 1, (*hidden, self.chunk_dim),
                            activation="gelu", layer_norm=layer_norm)
        self.obs_dim = int(obs_dim)

    def forward(self, z: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, x, u.reshape(-1, 1).to(x.dtype)], dim=-1))

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """The observation's share of the first layer, ``W_z z`` (B, H): the same at every
        Euler step, so a sampler computes it once (:meth:`step`)."""
        return F.linear(z, self.net[0].weight[:, :self.obs_dim])

    def step(self, cond: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``forward(z, x, u)`` from ``cond = condition(z)`` (equal up to rounding).

        Without gradients, a compiled step installed by :meth:`use_compiled_step` (the
        deployment runtime's TorchScript trace) runs instead."""
        compiled = self.__dict__.get("_compiled_step")
        if compiled is not None and not torch.is_grad_enabled():
            return compiled(cond, x, u)
        return self.eager_step(cond, x, u)

    def use_compiled_step(self, fn) -> None:
        """Run ``fn(cond, x, u)`` for :meth:`step` when no gradient is needed (None: eager).
        Kept out of the module's children, so weights and state dict are unchanged."""
        self.__dict__["_compiled_step"] = fn

    def eager_step(self, cond: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        first = self.net[0]
        xu = torch.cat([x, u.reshape(-1, 1).to(x.dtype)], dim=-1)
        h = torch.addmm(first.bias, xu, first.weight[:, self.obs_dim:].T) + cond
        for layer in itertools.islice(self.net, 1, None):
            h = layer(h)
        return h


def euler_sample(policy: FlowPolicy, z: torch.Tensor, steps: int,
                 noise: torch.Tensor | None = None, repeats: int = 1) -> torch.Tensor:
    """Chunks (B * repeats, h, Da) in [-1, 1] from the flow policy by ``steps`` Euler
    steps; ``repeats`` samples per row of ``z`` (row-major: row b's samples are
    b * repeats ... b * repeats + repeats - 1), whose observation share of the first layer
    is computed once per row, not once per sample or per step.

    Differentiable (the caller decides: ``torch.no_grad()`` for acting and targets)."""
    if steps < 1:
        raise ConfigError(f"flow steps must be >= 1, got {steps}")
    cond = policy.condition(z)
    if repeats > 1:
        cond = repeat(cond, "b f -> (b n) f", n=repeats)
    b = cond.shape[0]
    x = noise if noise is not None else torch.randn(b, policy.chunk_dim, device=z.device,
                                                    dtype=z.dtype)
    dt = 1.0 / steps
    for i in range(steps):
        u = torch.full((b,), i * dt, device=z.device, dtype=z.dtype)
        x = x + dt * policy.step(cond, x, u)
    return rearrange(x.clamp(-1.0, 1.0), "b (h d) -> b h d", h=policy.horizon)


# ----------------------------------------------------------------------------- critics


class EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, B, I) -> (K, B, O)."""

    def __init__(self, k: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(k, 1, fan_out))
        bound = 1.0 / math.sqrt(fan_in)  # torch's nn.Linear default, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
        if fixed:  # weights as constants: gradients reach x only
            return torch.baddbmm(self.bias.detach(), x, self.weight.detach())
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """K LayerNorm MLPs (Linear -> GELU -> LayerNorm per hidden layer, as the QC/FQL
    critics) in parallel. Input (B, I) is shared by every member, or (K, B, I)."""

    def __init__(self, k: int, fan_in: int, hidden: Sequence[int], out: int = 1):
        super().__init__()
        self.k = int(k)
        dims = [fan_in, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(k, a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in hidden)  # shared affine: cheap
        self.out = EnsembleLinear(k, dims[-1], out)
        self.out_dim = int(out)

    def forward(self, x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
        """``fixed=True`` treats the weights as constants (a policy loss through Q)."""
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        return self.from_first(self.layers[0](x, fixed), fixed)

    def of_candidates(self, z: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The network on ``[z_b, candidate_bi flattened]`` for N candidates (B, N, ...)
        per row z_b (B, F): (K, B * N), row b * N + i. The row's share of the first layer
        is computed once per row, not once per candidate."""
        n, first, f = candidates.shape[1], self.layers[0], z.shape[-1]
        zc = torch.matmul(z, first.weight[:, :f]) + first.bias  # (K, B, H)
        ac = torch.matmul(candidates.flatten(2).flatten(0, 1), first.weight[:, f:])
        return self.from_first(ac + repeat(zc, "k b o -> k (b n) o", n=n))

    def from_first(self, h: torch.Tensor, fixed: bool = False) -> torch.Tensor:
        """The network from its first layer's output before the activation, (K, B, H)."""
        x = h
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            x = F.gelu(layer(x, fixed) if i else x)
            x = (F.layer_norm(x, norm.normalized_shape, norm.weight.detach(),
                              norm.bias.detach(), norm.eps) if fixed else norm(x))
        y = self.out(x, fixed)
        return y.squeeze(-1) if self.out_dim == 1 else y


class QNet(nn.Module):
    """``Q_k(s, A)`` for k = 1..K: an observation encoder and a critic ensemble over
    ``[z, A flattened]``. Output (K, B) (or (K, B, O) for sequence critics)."""

    def __init__(self, encoder: ObsEncoder, horizon: int, action_dim: int, heads: int,
                 hidden: Sequence[int], out: int = 1, extra_in: int = 0):
        super().__init__()
        self.encoder = encoder
        self.horizon = int(horizon)
        self.heads = EnsembleMLP(heads, encoder.out_dim + horizon * action_dim + extra_in,
                                 hidden, out)

    def score(self, z: torch.Tensor, actions: torch.Tensor,
              extra: torch.Tensor | None = None) -> torch.Tensor:
        """Q of chunks (B, h, Da) at encoded observations z (B, F)."""
        parts = [z, rearrange(actions, "b h d -> b (h d)")]
        if extra is not None:
            parts.append(extra)
        return self.heads(torch.cat(parts, dim=-1))

    def score_candidates(self, z: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Q (K, B * N) of N candidate chunks (B, N, h, Da) per observation z (B, F) (see
        :meth:`EnsembleMLP.of_candidates`)."""
        return self.heads.of_candidates(z, candidates)


class PolicyNet(nn.Module):
    """The behaviour (flow) policy with its own observation encoder."""

    def __init__(self, encoder: ObsEncoder, flow: FlowPolicy):
        super().__init__()
        self.encoder = encoder
        self.flow = flow


# ----------------------------------------------------------------------------- best-of-N


def sample_candidates(policy: PolicyNet, z: torch.Tensor, n: int, steps: int,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """N chunks per observation: z (B, F) -> (B, N, h, Da); z is broadcast, not re-encoded.
    ``noise`` (B * N, h * Da): the flow's starting points (default: fresh ``randn``)."""
    chunks = euler_sample(policy.flow, z, steps, noise=noise, repeats=n)
    return rearrange(chunks, "(b n) h d -> b n h d", n=n)


def best_of_n(q: QNet, zq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``argmax_i mean_k Q_k(s, A^i)``: candidates (B, N, h, Da) -> (B, h, Da)."""
    b, n = candidates.shape[:2]
    if n == 1:
        return candidates[:, 0]
    scores = q.score_candidates(zq, candidates).mean(0)  # (B*N,)
    best = rearrange(scores, "(b n) -> b n", n=n).argmax(dim=1)
    return candidates[torch.arange(b, device=candidates.device), best]


def act_best_of_n(policy: PolicyNet, critic: nn.Module, batch: dict[str, torch.Tensor],
                  n: int, steps: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Acting: the best of ``n`` policy samples under ``critic`` (which has ``encoder`` and
    ``score``); ``n = 1`` is the plain sample and runs no critic. Each network encodes the
    observation once. ``noise``: see :func:`sample_candidates`."""
    cands = sample_candidates(policy, policy.encoder(batch, "obs"), n, steps, noise)
    return cands[:, 0] if n == 1 else best_of_n(critic, critic.encoder(batch, "obs"), cands)


# ----------------------------------------------------------------------------- acting


@dataclass(frozen=True)
class ActorConfig:
    """How :class:`ChunkActor` is built (stored in an artifact's ``policy.json``)."""

    chunk: int  # actions per chunk the policy outputs (h)
    hidden: tuple[int, ...]  # MLP widths of the flow policy
    encoder: str = "impala_small"  # image trunk (vptr.nets.encoders name)
    channels_last: bool = True
    feature_dim: int = 256  # width of the image head
    task_dim: int = 16
    flow_steps: int = 5  # Euler steps per sample
    act_samples: int = 1  # best-of-N candidates (1: the plain sample, no ranker)
    ranker_heads: int = 0  # critic ensemble ranking the candidates (0: none)
    ranker_hidden: tuple[int, ...] = ()
    shared_trunk: bool = False  # the ranker reads the policy's image trunk (run once)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "ranker_hidden", tuple(int(h) for h in self.ranker_hidden))
        for name in ("chunk", "flow_steps", "act_samples"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"actor: {name} must be >= 1, got {getattr(self, name)}")
        if self.act_samples > 1 and not (self.ranker_heads >= 1 and self.ranker_hidden):
            raise ConfigError(f"actor: best-of-{self.act_samples} needs a ranking critic "
                              "(ranker_heads >= 1 and ranker_hidden)")


class ChunkActor(nn.Module):
    """The acting part of a fine-tuned agent: action normalisation, the flow policy with
    its encoder and, for best-of-N agents, the critic that ranks the candidates.

    ``act(batch)`` gives chunks (B, h, Da) in the dataset's action units; the batch holds
    ``state`` (B, Ds) raw, ``obs.<camera>`` (B, 3*S, H, W) uint8 and ``task_index`` (B,)
    -- the training batch layout, so the result equals the training agent's ``act``.
    """

    def __init__(self, spec: DataSpec, cfg: ActorConfig):
        super().__init__()
        from vptr.nets.encoders import make_encoder

        self.spec, self.cfg = spec, cfg

        def encoder() -> ObsEncoder:
            trunks = {c: make_encoder(cfg.encoder, 3 * spec.frame_stack, spec.image_size,
                                      channels_last=cfg.channels_last) for c in spec.cameras}
            return ObsEncoder(spec, trunks or None, cfg.feature_dim, cfg.task_dim)

        self.action_norm = Normalizer(spec.action_dim, "minmax")
        enc = encoder()
        self.policy = PolicyNet(enc, FlowPolicy(enc.out_dim, cfg.chunk, spec.action_dim,
                                                cfg.hidden))
        self.ranker = None
        if cfg.act_samples > 1:
            renc = (ObsEncoder(spec, {c: enc.trunks[_safe(c)] for c in spec.cameras} or None,
                               cfg.feature_dim, cfg.task_dim) if cfg.shared_trunk else encoder())
            self.ranker = QNet(renc, cfg.chunk, spec.action_dim, cfg.ranker_heads,
                               cfg.ranker_hidden)

    def set_act_samples(self, n: int) -> None:
        """Act best-of-``n`` from now on (a latency / quality dial of deployment; the
        critic that ranks the candidates must be in the artifact when ``n`` > 1)."""
        if int(n) < 1:
            raise ConfigError(f"act_samples must be >= 1, got {n}")
        if n > 1 and self.ranker is None:
            raise ConfigError(f"act_samples: best-of-{n} needs a critic to rank the "
                              "candidates, and this policy has none (one plain sample: 1)")
        self.cfg = replace(self.cfg, act_samples=int(n))

    @torch.no_grad()
    def with_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with the shared trunk's features (``obs_emb``) when policy and ranker
        share one: one trunk pass for both heads. Unchanged otherwise."""
        if self.ranker is None or not self.cfg.shared_trunk or not self.spec.cameras \
                or "obs_emb" in batch:
            return batch
        return {**batch, "obs_emb": self.policy.encoder.trunk_features(batch, "obs")}

    def noise_shape(self) -> tuple[int, int]:
        """Shape of one observation's share of :meth:`act`'s ``noise``: (N, h * Da)."""
        return self.cfg.act_samples, self.policy.flow.chunk_dim

    @torch.no_grad()
    def act(self, batch: dict[str, torch.Tensor],
            noise: torch.Tensor | None = None) -> torch.Tensor:
        """Best-of-N (or plain) chunks (B, h, Da), dataset action units. ``noise``
        (B * N, h * Da), row b's N candidates first: the flow's starting points (default:
        fresh ``randn``), so that a caller can make each row's draw its own."""
        batch = self.with_features(batch)
        chunks = act_best_of_n(self.policy, self.ranker, batch, self.cfg.act_samples,
                               self.cfg.flow_steps, noise)
        return self.action_norm.inverse(chunks)

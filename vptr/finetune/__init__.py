"""Fine-tuning agents for chunked offline RL, one file each, and their registry.

Each agent module provides a typed config (a subclass of
:class:`~vptr.finetune.common.AgentConfig`; ``chunk`` is the one place h is declared),
``create(cfg, spec, trunks) -> nets``, ``target_of(nets)`` (the sub-network with a Polyak
copy, or None), a pure ``loss_fn(nets, target, batch, cfg) -> (loss, metrics)`` (metrics
prefixed ``critic/``, ``actor/``, ``value/``; ``loss`` is the total) and
``act(nets, batch, cfg) -> chunks`` (B, h, Da) in normalised action units, and
``ranker(nets) -> (encoder, ensemble) | None`` (the critic whose ensemble ranks best-of-N
candidates on ``[z, chunk]`` when acting; the exported artifact holds it).

:data:`AGENTS` is the one list: the ``--agent`` choices of ``vptr finetune`` and its
per-agent option sections (``--qc.target-samples ...``) come from it. The training loop
owns the optimizer step, the target update, logging and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vptr.errors import unknown
from vptr.finetune import corft, dqc, flowbc, iql, qc


@dataclass(frozen=True)
class Agent:
    name: str
    summary: str  # one line, shown by --help
    config_cls: type
    create: Callable[..., Any]
    loss_fn: Callable[..., Any]
    act: Callable[..., Any]
    target_of: Callable[[Any], Any]
    ranker: Callable[[Any], Any]


def _agent(name: str, summary: str, module: Any, config_cls: type) -> Agent:
    return Agent(name, summary, config_cls, module.create, module.loss_fn, module.act,
                 module.target_of, module.ranker)


AGENTS: dict[str, Agent] = {a.name: a for a in (
    _agent("qc", "Q-chunking, best-of-N over a flow chunk policy (Li et al. 2025)", qc,
           qc.QCConfig),
    _agent("flowbc", "chunked flow-matching behaviour cloning (the baseline)", flowbc,
           flowbc.FlowBCConfig),
    _agent("iql", "chunked implicit Q-learning, advantage-weighted flow policy", iql,
           iql.IQLConfig),
    _agent("dqc", "decoupled Q-chunking: long-horizon chunk critic, distilled short-chunk "
                  "critic (Li et al. 2025)", dqc, dqc.DQCConfig),
    _agent("corft", "CO-RFT-style: BC first, prefix chunk critic, TD3+BC policy", corft,
           corft.CORFTConfig),
)}


def get_agent(name: str) -> Agent:
    if name not in AGENTS:
        raise unknown("fine-tuning agent", name, AGENTS)
    return AGENTS[name]


__all__ = ["AGENTS", "Agent", "get_agent"]

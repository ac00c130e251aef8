"""From a fine-tuning agent to the policy artifact (:mod:`vptr.runtime.artifact`).

``<run>/policy/`` is the artifact itself (safetensors + ``policy.json`` with checksums):
:func:`save_policy` takes the agent's acting part (:func:`actor_of`: the flow policy
with its encoder and, for best-of-N agents, the ranking critic) and describes the
observation and action specs from the dataset. Loading goes through the runtime loader,
which imports no training code; :func:`load_policy` is a shortcut to its simulation
wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vptr.finetune import get_agent
from vptr.nets.policy import ActorConfig, ChunkActor
from vptr.runtime.artifact import SimPolicy, env_key, normalization_of, write_artifact

__all__ = ["actor_of", "artifact_document", "env_key", "load_policy", "save_policy",
           "sim_policy"]


def actor_of(agent_name: str, agent_cfg: Any, nets: torch.nn.Module, encoder: str,
             channels_last: bool = True) -> ChunkActor:
    """A :class:`ChunkActor` holding copies of the agent's acting weights (its ``act``
    gives the same chunks as the agent's, for the same random draws)."""
    agent = get_agent(agent_name)
    rank = agent.ranker(nets)
    samples = int(agent_cfg.act_samples) if rank is not None else 1
    cfg = ActorConfig(chunk=agent_cfg.chunk, hidden=agent_cfg.hidden, encoder=encoder,
                      channels_last=channels_last, feature_dim=agent_cfg.feature_dim,
                      task_dim=agent_cfg.task_dim, flow_steps=agent_cfg.flow_steps,
                      act_samples=samples,
                      ranker_heads=int(agent_cfg.critic_heads) if samples > 1 else 0,
                      ranker_hidden=tuple(agent_cfg.hidden) if samples > 1 else (),
                      shared_trunk=samples > 1 and bool(getattr(agent_cfg, "shared_trunk",
                                                                False)))
    actor = ChunkActor(nets.spec, cfg).to(next(nets.parameters()).device)
    actor.action_norm.load_state_dict(nets.action_norm.state_dict())
    actor.policy.load_state_dict(nets.policy.state_dict())
    if actor.ranker is not None:
        enc, heads = rank
        actor.ranker.encoder.load_state_dict(enc.state_dict())
        actor.ranker.heads.load_state_dict(heads.state_dict())
    return actor.eval()


def action_conventions(names: list[str]) -> dict[str, Any]:
    """Units and absolute/delta per action dimension when the actions are our sim arm's
    (``robots.sim_arm``); unknown otherwise."""
    from robots.sim_arm import UNITS
    from sim.native.embodiments import ACTION_NAMES

    if list(names) == list(ACTION_NAMES):
        return {"units": list(UNITS), "kind": ["delta"] * 4 + ["absolute"],
                "gripper": "gripper: -1 open, +1 closed (absolute closure)"}
    return {"units": [""] * len(names), "kind": ["unknown"] * len(names), "gripper": "unknown"}


def artifact_document(actor: ChunkActor, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``policy.json`` content from the run's metadata (``state_features`` with their
    ``state_names``, ``action_names``, ``fps``, ``tasks``, ``provenance`` ...)."""
    spec = actor.spec
    names = dict(meta.get("state_names", {}))
    state = [{"feature": f, "names": list(names.get(f) or
                                           [f"{f}[{i}]" for i in range(int(w))]),
              "env_key": env_key(f)}
             for f, w in zip(meta.get("state_features", []), meta.get("state_widths", []))]
    s = spec.image_size
    cameras = [{"feature": c, "env_key": env_key(c), "shape": [s, s, 3], "dtype": "uint8",
                "frame_stack": spec.frame_stack,
                "preprocessing": f"RGB uint8 {s}x{s} as delivered by the camera (no resize); "
                                 f"the last {spec.frame_stack} control periods' frames stacked "
                                 "channels-first, oldest first"} for c in spec.cameras]
    action_names = list(meta.get("action_names") or [f"action[{i}]" for i in range(spec.action_dim)])
    data_range = normalization_of(actor)["action"]
    return {"agent": meta.get("agent"),
            "observation": {"state": state, "cameras": cameras},
            "action": {"names": action_names, "data_min": data_range["min"],
                       "data_max": data_range["max"],
                       **action_conventions(action_names)},
            "rate_hz": float(meta["fps"]) if meta.get("fps") else None,
            "tasks": list(meta.get("tasks", [])),
            "provenance": dict(meta.get("provenance", {}))}


def save_policy(out: Path, agent_name: str, agent_cfg: Any, nets: torch.nn.Module,
                meta: Mapping[str, Any]) -> Path:
    """Write the artifact of the agent's current weights to ``out``."""
    actor = actor_of(agent_name, agent_cfg, nets, meta.get("encoder", "impala_small"),
                     bool(meta.get("channels_last", True)))
    return write_artifact(out, actor.cpu(), artifact_document(actor, {"agent": agent_name, **meta}))


def sim_policy(agent_name: str, agent_cfg: Any, nets: torch.nn.Module,
               meta: Mapping[str, Any], task: int | str = 0) -> SimPolicy:
    """The simulation wrapper around the agent's current weights (no files written),
    conditioned on ``task`` (a task string of ``meta["tasks"]`` or an index)."""
    actor = actor_of(agent_name, agent_cfg, nets, meta.get("encoder", "impala_small"),
                     bool(meta.get("channels_last", True)))
    doc = artifact_document(actor, {"agent": agent_name, **meta})
    return SimPolicy(loaded=(doc, actor), device=str(next(actor.parameters()).device),
                     task=task)


def load_policy(folder: str | Path, device: str = "cpu", task: int | str = 0) -> SimPolicy:
    """The artifact at ``folder`` for the simulation harness (checksums verified)."""
    return SimPolicy(folder, device=device, task=task)

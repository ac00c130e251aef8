"""``vptr finetune --init.run DIR``: every network from an earlier fine-tuning run.

V-PTR's phase 3 starts from the whole phase-2 agent (Bhateja et al. 2023, Sec. 4: the
multi-task offline-RL networks are fine-tuned on the target), not only its image trunk.
:func:`load_run_weights` copies the earlier run's latest checkpoint (online networks and
the target critic) into this run's freshly built networks after checking that they are the
same agent and architecture. The task embedding is the one part that may legitimately
change shape: its rows are matched by task *string* (:func:`remap_task_rows`), so a task the
earlier run knew keeps its row wherever it now sits, and a new task (the target) keeps its
fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptr import runs
from vptr.errors import ConfigError, DataError

# options that change the networks' shapes (compared to name the difference in a refusal)
ARCHITECTURE = ("frame_stack", "source.state_keys", "source.camera_keys", "source.images",
                "source.frames.image_size")
AGENT_ARCHITECTURE = ("chunk", "hidden", "feature_dim", "task_dim", "critic_heads",
                      "shared_trunk", "backup_horizon")
TASK_ROWS = ".task.weight"  # nn.Embedding of ObsEncoder.task


def init_checkpoint(run: str | Path) -> Path:
    """The latest complete checkpoint of a ``vptr finetune`` run."""
    run = Path(run)
    if not (run / runs.CONFIG).is_file():
        raise DataError(f"{run}: init.run is not a `vptr finetune` run directory (no "
                        f"{runs.CONFIG})")
    ckpt = runs.latest_checkpoint(run)
    if ckpt is None:
        raise DataError(f"{run}: init.run has no checkpoint to start from (it never saved one)")
    return ckpt


def trunk_name(run: str | Path) -> str:
    """The image-trunk architecture of an earlier run (what its checkpoints hold)."""
    state = runs.read_state(init_checkpoint(run))
    if "encoder" in state:
        return str(state["encoder"])
    enc = runs.read_config(run).get("encoder", {})
    if enc.get("init"):  # written before checkpoints named it: the pretrained encoder's
        from vptr.nets.weights import read_encoder_config

        folder = Path(enc["init"])
        folder = folder / runs.ENCODER if (folder / runs.ENCODER).is_dir() else folder
        return str(read_encoder_config(folder)["encoder"])
    return str(enc.get("name", "impala_small"))


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def architecture_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old vs new"`` for every shape-changing option that differs (run configs as
    written to ``config.json``; the agent's section by its name)."""
    out = []
    keys = [*ARCHITECTURE, *(f"{new.get('agent')}.{k}" for k in AGENT_ARCHITECTURE)]
    for key in keys:
        a, b = _get(old, key), _get(new, key)
        if a != b:
            out.append(f"{key} {a!r} vs {b!r}")
    return out


def remap_task_rows(new: torch.Tensor, old: torch.Tensor, new_tasks: list[str],
                    old_tasks: list[str]) -> torch.Tensor:
    """Task-embedding rows for ``new_tasks``: a task of ``old_tasks`` gets its old row, any
    other keeps its row of ``new`` (its fresh initialisation)."""
    out = new.clone()
    for i, task in enumerate(new_tasks[:len(out)]):
        if task in old_tasks and old_tasks.index(task) < len(old):
            out[i] = old[old_tasks.index(task)].to(out.dtype)
    return out


def merge_weights(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                  new_tasks: list[str], old_tasks: list[str] | None
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the weights to load, problems): every tensor of ``new`` from ``old``, the task
    embedding re-indexed by task string. ``old_tasks`` None (unknown): embeddings copied as
    they are, if their shapes agree."""
    has_rows = lambda d: any(k.endswith(TASK_ROWS) for k in d)
    if has_rows(new) and not has_rows(old):
        return {}, [f"it was trained on one task (no task embedding), this run has "
                    f"{len(new_tasks)} ({', '.join(map(repr, new_tasks))}); train the earlier "
                    "run on two or more tasks"]
    if has_rows(old) and not has_rows(new):
        return {}, [f"it has a task embedding, this run has one task "
                    f"({', '.join(map(repr, new_tasks))}) and none; add the earlier run's "
                    "data with --prior.data"]
    problems, out = [], {}
    missing = [k for k in new if k not in old]
    extra = [k for k in old if k not in new]
    if missing:
        problems.append(f"no weights for {', '.join(missing[:3])} ({len(missing)} in all)")
    if extra:
        problems.append(f"weights this run has no place for: {', '.join(extra[:3])} "
                        f"({len(extra)} in all)")
    for key, value in new.items():
        if key not in old:
            continue
        prev = old[key]
        if key.endswith(TASK_ROWS) and old_tasks is not None and prev.shape[1:] == value.shape[1:]:
            out[key] = remap_task_rows(value, prev, new_tasks, old_tasks)
        elif prev.shape == value.shape:
            out[key] = prev.to(value.dtype)
        else:
            problems.append(f"{key} has shape {tuple(prev.shape)}, this run's "
                            f"{tuple(value.shape)}")
    return out, problems


def load_run_weights(run: str | Path, modules: Mapping[str, nn.Module], agent: str,
                     tasks: list[str], config: Mapping[str, Any]) -> dict[str, Any]:
    """Load the latest checkpoint of ``run`` into ``modules`` (``{"nets": ..., "target":
    ...}``, as the fine-tuning loop checkpoints them); returns that checkpoint's state.
    A different agent or architecture is refused in one line naming the difference."""
    from vptr.nets.weights import read_weights, state_dict_to_safetensors

    run = Path(run)
    ckpt = init_checkpoint(run)
    state = runs.read_state(ckpt)
    old_cfg = runs.read_config(run)
    old_agent = state.get("agent", old_cfg.get("agent"))
    if old_agent != agent:
        raise ConfigError(f"{run}: init.run is a {old_agent!r} run, this run's agent is "
                          f"{agent!r}; the networks differ")
    current = state_dict_to_safetensors(dict(modules))
    weights, problems = merge_weights(current, read_weights(ckpt / runs.WEIGHTS), tasks,
                                      state.get("tasks"))
    if problems:
        diff = architecture_diff(old_cfg, config)
        raise ConfigError(f"{run}: init.run's networks do not fit this run: "
                          + "; ".join((diff or problems)[:3]))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                if k.startswith(prefix)})
    return state

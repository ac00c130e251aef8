"""A fine-tuned policy outside training: the policy folder, its loader, and the acting
wrapper the simulation harness (``sim.evaluate``) calls.

Policy folder (``<run>/policy/``)::

    model.safetensors   the agent's networks (normalisation statistics included, as buffers)
    policy.json         agent + its config, the data spec, which dataset features feed the
                        policy and the environment observation keys they come from, image
                        size, frame stack, chunk size, control rate, task strings, provenance

No pickle anywhere: the networks are rebuilt from ``policy.json`` and the weights loaded
from safetensors. This module imports no training code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vptr.errors import DataError
from vptr.files import atomic_write_text, read_json_object
from vptr.finetune import get_agent
from vptr.finetune.nets import DataSpec
from vptr.nets.weights import WEIGHTS_FILE, load_modules, save_weights

POLICY_FORMAT = "vptr-policy-v1"
POLICY_FILE = "policy.json"


def env_key(feature: str) -> str:
    """The environment observation key a dataset feature is recorded from:
    ``observation.state`` -> ``state``, ``observation.images.front`` -> ``pixels.front``
    (the layout of ``sim.evaluate.flatten_observation``)."""
    key = feature.removeprefix("observation.")
    return "pixels." + key.removeprefix("images.") if key.startswith("images.") else key


def make_trunks(encoder: str, spec: DataSpec, channels_last: bool = True):
    """A factory of fresh, untrained image trunks, one per camera."""
    from vptr.nets.encoders import make_encoder

    def trunks():
        return {c: make_encoder(encoder, 3 * spec.frame_stack, spec.image_size,
                                channels_last=channels_last) for c in spec.cameras}
    return trunks


def save_policy(out: Path, agent_name: str, agent_cfg: Any, nets: torch.nn.Module,
                meta: dict[str, Any]) -> Path:
    """Write the policy folder (``meta``: state_features, encoder, fps, tasks, provenance)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS_FILE, {"": nets})
    doc = {"format": POLICY_FORMAT, "agent": agent_name,
           "agent_config": dataclasses.asdict(agent_cfg),
           "spec": dataclasses.asdict(nets.spec), **meta}
    atomic_write_text(out / POLICY_FILE, json.dumps(doc, indent=2))
    return out


class LoadedPolicy:
    """``policy(obs) -> chunks`` for the simulation harness: obs is a batch over n
    environments (``state``, ``pixels.<cam>`` ... as numpy arrays), the result (n, h, Da) in
    the dataset's action units. Keeps each environment slot's recent frames for frame
    stacking (``sim.evaluate``'s protocol: ``reset(slots)``, ``observe(obs)``,
    ``obs["env_index"]``)."""

    def __init__(self, agent_name: str, agent_cfg: Any, nets: torch.nn.Module,
                 meta: dict[str, Any], device: str = "cpu", task: int | str = 0):
        self.agent = get_agent(agent_name)
        self.cfg, self.nets, self.meta = agent_cfg, nets.eval().to(device), meta
        self.data_spec: DataSpec = nets.spec
        self.device = torch.device(device)
        self.state_keys = [env_key(f) for f in meta.get("state_features", [])]
        self.camera_keys = {c: env_key(c) for c in self.data_spec.cameras}
        tasks = list(meta.get("tasks", []))
        if isinstance(task, str) and task not in tasks:
            raise DataError(f"policy: unknown task {task!r} (tasks: {tasks})")
        self.task_index = tasks.index(task) if isinstance(task, str) else int(task)
        if not 0 <= self.task_index < max(self.data_spec.num_tasks, 1):
            raise DataError(f"policy: task index {self.task_index} out of range "
                            f"(0..{self.data_spec.num_tasks - 1})")
        self.frames: dict[int, dict[str, list[np.ndarray]]] = {}  # slot -> key -> frames
        self._observing = False
        self.chunk = int(agent_cfg.chunk)

    @property
    def spec(self) -> dict[str, Any]:
        """What the policy needs from an environment (``sim.evaluate.check_compatible``)."""
        obs: dict[str, Any] = {}
        widths = self.meta.get("state_widths", [])
        for key, width in zip(self.state_keys, widths):
            obs[key] = {"shape": [int(width)], "dtype": "float32"}
        s = self.data_spec.image_size
        for key in self.camera_keys.values():
            obs[key] = {"shape": [s, s, 3], "dtype": "uint8"}
        return {"observation": obs, "action": {"shape": [self.data_spec.action_dim]}}

    def env_kwargs(self, videos: bool = False) -> dict[str, Any]:
        """Options of a ``sim`` environment whose observations match this policy (cameras
        and image size it was trained on; the environment state when it reads one).
        ``videos``: a state-only policy's environment still renders frames for the mp4s."""
        kw: dict[str, Any] = {}
        cams = [key.removeprefix("pixels.") for key in self.camera_keys.values()]
        if cams:
            kw.update(cameras=tuple(cams), image_size=self.data_spec.image_size)
        else:
            kw["render_images"] = False
            if videos:
                kw["render_mode"] = "rgb_array"
        if "environment_state" in self.state_keys:
            kw["environment_state"] = True
        return kw

    def reset(self, indices: np.ndarray | None = None) -> None:
        """Forget the frames of the environment slots ``indices`` (all when None): their
        next stack starts from the new episode's first frame."""
        if indices is None:
            self.frames.clear()
        for slot in () if indices is None else np.asarray(indices).tolist():
            self.frames.pop(int(slot), None)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Record every step's frames (the harness calls this between queries, so the
        stack holds consecutive frames, as in training)."""
        self._observing = True
        self._push(obs)

    def _push(self, obs: dict[str, np.ndarray]) -> None:
        s = self.data_spec.frame_stack
        for row, slot in enumerate(self._slots(obs).tolist()):
            per_cam = self.frames.setdefault(int(slot), {})
            for key in self.camera_keys.values():
                hist = per_cam.setdefault(key, [])
                hist.append(np.asarray(obs[key][row]).transpose(2, 0, 1))
                del hist[:-s]

    @staticmethod
    def _slots(obs: dict[str, np.ndarray]) -> np.ndarray:
        if "env_index" in obs:
            return np.asarray(obs["env_index"])
        first = next(iter(obs.values()))
        return np.arange(len(first))

    def _stacked(self, key: str, slots: np.ndarray) -> np.ndarray:
        """(n, 3*S, H, W) uint8, oldest first; an episode's first frame repeats before it
        (the training sampler's :func:`vptr.data.batch.stack_times`)."""
        s = self.data_spec.frame_stack
        out = []
        for slot in slots.tolist():
            hist = self.frames[int(slot)][key]
            out.append(np.concatenate([hist[0]] * (s - len(hist)) + hist, axis=0))
        return np.stack(out)

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch: dict[str, torch.Tensor] = {}
        n = None
        if self.state_keys:
            state = np.concatenate([np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1)
                                    for k in self.state_keys], axis=1)
            batch["state"] = torch.from_numpy(state).to(self.device)
            n = len(state)
        if self.camera_keys and not self._observing:
            self._push(obs)  # driven without observe(): each query is the next step
        slots = self._slots(obs)
        for cam, key in self.camera_keys.items():
            stacked = self._stacked(key, slots)
            batch[f"obs.{cam}"] = torch.from_numpy(stacked).to(self.device)
            n = len(stacked)
        batch["task_index"] = torch.full((n,), self.task_index, dtype=torch.int64,
                                         device=self.device)
        chunks = self.agent.act(self.nets, batch, self.cfg)
        return self.nets.action_norm.inverse(chunks).cpu().numpy().astype(np.float32)


def load_policy(folder: str | Path, device: str = "cpu", task: int | str = 0) -> LoadedPolicy:
    """The policy saved by :func:`save_policy` (rebuilt from its JSON, weights checked)."""
    folder = Path(folder)
    doc = read_json_object(folder, POLICY_FILE, "a policy folder")
    if doc.get("format") != POLICY_FORMAT:
        raise DataError(f"{folder / POLICY_FILE}: not a {POLICY_FORMAT} file "
                        f"(format {doc.get('format')!r})")
    try:
        agent = get_agent(doc["agent"])
        cfg = agent.config_cls(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in doc["agent_config"].items()})
        spec = DataSpec(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in doc["spec"].items()})
    except (KeyError, TypeError) as e:
        raise DataError(f"{folder / POLICY_FILE}: incomplete or invalid policy description "
                        f"({e})") from None
    nets = agent.create(cfg, spec, make_trunks(doc.get("encoder", "impala_small"), spec,
                                               bool(doc.get("channels_last", True))))
    load_modules(folder / WEIGHTS_FILE, {"": nets})
    return LoadedPolicy(doc["agent"], cfg, nets, doc, device, task)

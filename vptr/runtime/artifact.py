"""The exported policy artifact and its loader: safetensors + JSON, no pickle, no training
code (imports :mod:`vptr.nets` for the network definitions and nothing from
``vptr.train``, ``vptr.finetune``, ``vptr.pretrain`` or ``vptr.data``).

Artifact folder (``vptr export`` and ``vptr finetune``'s ``<run>/policy/``)::

    model.safetensors   the acting networks (:class:`vptr.nets.policy.ChunkActor`:
                        action normalisation, flow policy and encoder, ranking critic)
    policy.json         format, observation spec (state names, cameras with shape, dtype,
                        frame stack and preprocessing), action spec (names, units, data
                        range, absolute vs delta, gripper convention), normalisation
                        statistics, chunk size h and control rate, network config,
                        tasks, provenance, and ``integrity``: the sha256 and size of the
                        weights and the sha256 of the document itself

:func:`load_artifact` refuses a folder whose weights or document do not match the
recorded checksums (edited, tampered, truncated) or that misses a file, naming the
file and the problem. Two ways to act with a loaded artifact:

* :class:`ArtifactPolicy` -- the runtime's chunk-policy protocol
  (:mod:`vptr.runtime.policy`): one observation keyed as a LeRobotDataset row ->
  (h, Da) actions in the robot's units; ``sample(..., prefix=...)`` inpaints for
  Real-Time Chunking;
* :class:`SimPolicy` -- the simulation harness's protocol (:mod:`sim.evaluate`):
  a batch over n environments -> (n, h, Da), per-slot frame stacks.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat

from vptr.errors import DataError
from vptr.files import atomic_write_text
from vptr.nets.policy import ActorConfig, ChunkActor, DataSpec, FlowPolicy, _safe, best_of_n
from vptr.nets.weights import WEIGHTS_FILE, load_modules, save_weights
from vptr.runtime.policy import IMAGE_PREFIX, STATE_KEY, PolicyIO
from vptr.runtime.rtc import guided_sample

ARTIFACT_FORMAT = "vptr-policy"
ARTIFACT_VERSION = 2
POLICY_FILE = "policy.json"


class ArtifactError(DataError):
    """An artifact that cannot be trusted or read (names the file and the problem)."""


# --------------------------------------------------------------------------- checksums


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def document_sha256(doc: Mapping[str, Any]) -> str:
    """sha256 of the document without its ``integrity`` entry (canonical JSON)."""
    body = {k: v for k, v in doc.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- write / read


def write_artifact(out: str | os.PathLike, actor: ChunkActor, doc: Mapping[str, Any]) -> Path:
    """Write ``out/{model.safetensors, policy.json}``: ``doc`` (observation, action, rate,
    tasks, provenance ...) plus the format, the network config and the checksums."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    save_weights(weights, {"": actor})
    full = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, **doc,
            "chunk_size": actor.cfg.chunk,
            "network": {"spec": dataclasses.asdict(actor.spec),
                        "actor": dataclasses.asdict(actor.cfg)},
            "normalization": normalization_of(actor)}
    full["integrity"] = {"weights_file": WEIGHTS_FILE, "weights_sha256": file_sha256(weights),
                         "weights_bytes": weights.stat().st_size,
                         "document_sha256": document_sha256(full)}
    atomic_write_text(out / POLICY_FILE, json.dumps(full, indent=2))
    return out


def normalization_of(actor: ChunkActor) -> dict[str, Any]:
    """The statistics in the weights, readable (state: mean/std; action: [-1, 1] <- min/max)."""
    a = actor.action_norm
    out: dict[str, Any] = {"action": {"min": (a.shift - a.scale).tolist(),
                                      "max": (a.shift + a.scale).tolist()}}
    s = actor.policy.encoder.state_norm
    if s is not None:
        out["state"] = {"mean": s.shift.tolist(), "std": s.scale.tolist()}
    return out


def read_document(folder: str | os.PathLike) -> dict[str, Any]:
    """``policy.json`` of an artifact, checked against its own checksum and the weights'."""
    folder = Path(folder)
    doc_path, weights = folder / POLICY_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such policy folder")
    for path in (doc_path, weights):
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (an artifact holds {POLICY_FILE} and "
                                f"{WEIGHTS_FILE})")
    try:
        doc = json.loads(doc_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{doc_path}: not valid JSON ({e}); truncated or edited") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{doc_path}: expected a JSON object")
    if doc.get("format") == "vptr-policy-v1":
        raise ArtifactError(f"{doc_path}: a policy folder of an older vptr (no checksums); "
                            "rerun the same `vptr finetune` command (it resumes at the "
                            "end and rewrites policy/)")
    if doc.get("format") != ARTIFACT_FORMAT or doc.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"{doc_path}: not a {ARTIFACT_FORMAT} v{ARTIFACT_VERSION} file "
                            f"(format {doc.get('format')!r}, version {doc.get('version')!r})")
    integrity = doc.get("integrity")
    if not isinstance(integrity, dict) or "document_sha256" not in integrity:
        raise ArtifactError(f"{doc_path}: no integrity record (export it again)")
    if document_sha256(doc) != integrity["document_sha256"]:
        raise ArtifactError(f"{doc_path}: edited after export (its content does not match "
                            "the checksum it was written with); export the policy again")
    size = weights.stat().st_size
    if size != integrity.get("weights_bytes"):
        raise ArtifactError(f"{weights}: {size} bytes, the artifact recorded "
                            f"{integrity.get('weights_bytes')} (truncated or replaced)")
    if file_sha256(weights) != integrity.get("weights_sha256"):
        raise ArtifactError(f"{weights}: sha256 does not match policy.json (tampered or "
                            "corrupted weights)")
    return doc


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_artifact(folder: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, Any], ChunkActor]:
    """(document, actor with the exported weights, in eval mode) -- checksums verified."""
    doc = read_document(folder)
    where = Path(folder) / POLICY_FILE
    try:
        spec = DataSpec(**_tuples(doc["network"]["spec"]))
        cfg = ActorConfig(**_tuples(doc["network"]["actor"]))
        actor = ChunkActor(spec, cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: invalid network description ({type(e).__name__}: {e})") from None
    load_modules(Path(folder) / WEIGHTS_FILE, {"": actor})
    return doc, actor.eval().to(device)


# --------------------------------------------------------------------------- compiled parts


class _EagerStep(torch.nn.Module):
    def __init__(self, flow: FlowPolicy) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, cond: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.flow.eager_step(cond, x, u)


def _trace(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
    with warnings.catch_warnings():  # shape checks become constants: intended
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(module.eval(), inputs))


@torch.no_grad()
def compile_for_one_observation(actor: ChunkActor, example: dict[str, torch.Tensor],
                                tol: float = 1e-4) -> dict[str, float]:
    """Swap the image trunks and the flow's Euler step for frozen TorchScript traces of
    themselves, for acting on one observation at a time (the deployment loop). At batch 1
    the eager modules spend most of their time in per-operation overhead (and the trunk in
    a channels-last conversion of a tiny image, so the traced trunk is contiguous); the
    weights are the same. Each trace is checked against the eager module on ``example``
    and used only within ``tol``; gradients (RTC's guidance) always run eagerly.
    Returns {part: max abs difference} of the parts swapped in."""
    used: dict[str, float] = {}
    encoders = [actor.policy.encoder]
    if actor.ranker is not None and not actor.cfg.shared_trunk:
        encoders.append(actor.ranker.encoder)
    for i, enc in enumerate(encoders):
        for cam in enc.cameras:
            key = _safe(cam)
            trunk, x = enc.trunks[key], example[f"obs.{cam}"]
            plain = copy.deepcopy(trunk)
            if getattr(plain, "channels_last", False):
                plain.channels_last = False
                plain.to(memory_format=torch.contiguous_format)
            traced = _trace(plain, (x,))
            err = float((traced(x) - trunk(x)).abs().max())
            if err <= tol:
                enc.trunks[key] = traced
                if i == 0 and actor.ranker is not None and actor.cfg.shared_trunk:
                    actor.ranker.encoder.trunks[key] = traced
                used[f"trunk {key}" + (" (ranker)" if i else "")] = err
    flow, n = actor.policy.flow, actor.cfg.act_samples
    z = actor.policy.encoder(actor.with_features(example), "obs")
    cond = flow.condition(z.expand(n, -1).contiguous())
    x = torch.randn(n, flow.chunk_dim, generator=torch.Generator().manual_seed(0))
    u = torch.full((n,), 0.5)
    traced = _trace(_EagerStep(flow), (cond, x, u))
    err = float((traced(cond, x, u) - flow.eager_step(cond, x, u)).abs().max())
    if err <= tol:
        flow.use_compiled_step(traced)
        used["flow step"] = err
    return used


# --------------------------------------------------------------------------- acting


def camera_name(feature: str) -> str:
    """``observation.images.front`` -> ``front`` (the robot's camera name)."""
    return feature.removeprefix(IMAGE_PREFIX)


def env_key(feature: str) -> str:
    """The simulation observation key a dataset feature is recorded from:
    ``observation.state`` -> ``state``, ``observation.images.front`` -> ``pixels.front``
    (the layout of ``sim.evaluate.flatten_observation``)."""
    key = feature.removeprefix("observation.")
    return "pixels." + key.removeprefix("images.") if key.startswith("images.") else key


def task_index(tasks: list[str], num_tasks: int, task: int | str) -> int:
    """The index of ``task`` (a task string of the data or an index)."""
    n = max(int(num_tasks), 1)
    if isinstance(task, str):
        if task not in tasks:
            raise DataError(f"policy: unknown task {task!r} (tasks: {tasks})")
        return tasks.index(task)
    if not 0 <= int(task) < n:
        raise DataError(f"policy: task index {task} out of range (0..{n - 1})")
    return int(task)


class FrameHistory:
    """The last S frames (channels first) of each camera of each stream, oldest first; a
    stream's first frame repeats before it (as the training sampler stacks)."""

    def __init__(self, frame_stack: int) -> None:
        self.s = int(frame_stack)
        self.frames: dict[int, dict[str, list[np.ndarray]]] = {}
        self.lock = threading.Lock()

    def reset(self, streams=None) -> None:
        with self.lock:
            if streams is None:
                self.frames.clear()
            for k in () if streams is None else streams:
                self.frames.pop(int(k), None)

    def push(self, stream: int, key: str, image: np.ndarray) -> None:
        with self.lock:
            hist = self.frames.setdefault(int(stream), {}).setdefault(key, [])
            hist.append(np.asarray(image))
            del hist[:-self.s]

    def stacked(self, stream: int, key: str, latest: np.ndarray | None = None) -> np.ndarray:
        """(3*S, H, W) uint8 ending at ``latest`` (an image pushed before; the newest
        when None or not found)."""
        with self.lock:
            hist = list(self.frames[int(stream)][key])
        if latest is not None:
            at = next((i for i in range(len(hist) - 1, -1, -1) if hist[i] is latest), None)
            if at is not None:
                hist = hist[:at + 1][-self.s:]
        hist = [hist[0]] * (self.s - len(hist)) + hist
        return np.concatenate([np.asarray(h).transpose(2, 0, 1) for h in hist], axis=0)


class _Acting:
    """What both protocols share: the document, the actor, the task and the frame stacks."""

    def __init__(self, folder: str | os.PathLike | None = None, device: str = "cpu",
                 task: int | str = 0, loaded: tuple[dict[str, Any], ChunkActor] | None = None,
                 act_samples: int = 0):
        self.doc, self.actor = loaded if loaded is not None else load_artifact(folder, device)
        if act_samples:  # 0: the artifact's own best-of-N
            self.actor.set_act_samples(act_samples)
        self.device = torch.device(device)
        self.actor.eval().to(self.device)
        self.data_spec: DataSpec = self.actor.spec
        self.chunk = int(self.actor.cfg.chunk)
        self.task_index = task_index(list(self.doc.get("tasks", [])), self.data_spec.num_tasks, task)
        obs = self.doc.get("observation", {})
        self.state_features = [s["feature"] for s in obs.get("state", [])]
        self.state_widths = [len(s["names"]) for s in obs.get("state", [])]
        self.camera_features = [c["feature"] for c in obs.get("cameras", [])]
        self.history = FrameHistory(self.data_spec.frame_stack)

    def _batch(self, state: np.ndarray | None, images: dict[str, np.ndarray], n: int):
        batch: dict[str, torch.Tensor] = {}
        if state is not None:
            batch["state"] = torch.from_numpy(np.ascontiguousarray(state, np.float32)).to(self.device)
        for feature, stacked in images.items():
            batch[f"obs.{feature}"] = torch.from_numpy(np.ascontiguousarray(stacked)).to(self.device)
        batch["task_index"] = torch.full((n,), self.task_index, dtype=torch.int64, device=self.device)
        return batch


class ArtifactPolicy(_Acting):
    """The runtime's chunk policy (:class:`vptr.runtime.policy.FlowChunkPolicy`).

    ``obs``: ``observation.state`` (Ds,) in ``io.state_names`` order and
    ``observation.images.<camera>`` (H, W, 3) uint8. The control loop's executor calls
    :meth:`observe` every period, so a frame stack holds consecutive control periods as
    in training; :meth:`reset` starts a new episode.
    """

    def __init__(self, folder: str | os.PathLike | None = None, device: str = "cpu",
                 task: int | str = 0, loaded: tuple[dict[str, Any], ChunkActor] | None = None,
                 compiled: bool = True, act_samples: int = 0):
        super().__init__(folder, device, task, loaded, act_samples)
        obs = self.doc.get("observation", {})
        names = [n for s in obs.get("state", []) for n in s["names"]]
        cams = [(camera_name(c["feature"]), tuple(c["shape"])) for c in obs.get("cameras", [])]
        self.io = PolicyIO(state_names=tuple(names),
                           action_names=tuple(self.doc["action"]["names"]),
                           chunk_size=self.chunk, cameras=tuple(cams),
                           rate_hz=self.doc.get("rate_hz"))
        self._observing = False
        # {part: max abs difference from the eager module} of the traced parts in use
        self.compiled: dict[str, float] = {}
        if compiled and self.device.type == "cpu":
            self.compiled = compile_for_one_observation(self.actor, self._example())

    def _example(self) -> dict[str, torch.Tensor]:
        """A batch of one observation (random pixels), shaped as the artifact's inputs."""
        spec = self.data_spec
        state = np.zeros((1, sum(self.state_widths)), np.float32) if self.state_widths else None
        rng = np.random.default_rng(0)
        images = {f: rng.integers(0, 256, (1, 3 * spec.frame_stack, spec.image_size,
                                           spec.image_size), dtype=np.uint8)
                  for f in self.camera_features}
        return self._batch(state, images, 1)

    def reset(self) -> None:
        self.history.reset()
        self._observing = False

    def observe(self, obs: Mapping[str, np.ndarray]) -> None:
        """Record this period's frames (the executor calls it every period)."""
        self._observing = True
        self._push(obs)

    def _push(self, obs: Mapping[str, np.ndarray]) -> None:
        for feature in self.camera_features:
            self.history.push(0, feature, obs[feature])

    def _encode_inputs(self, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if not self._observing:
            self._push(obs)  # called without observe(): each query is the next period
        state = None
        if self.state_features:
            state = np.asarray(obs[STATE_KEY], dtype=np.float32).reshape(1, -1)
        images = {f: self.history.stacked(0, f, obs[f])[None] for f in self.camera_features}
        return self._batch(state, images, 1)

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.sample(obs)

    def sample(self, obs: Mapping[str, np.ndarray], prefix: np.ndarray | None = None,
               prefix_weights: np.ndarray | None = None,
               max_guidance_weight: float = 5.0) -> np.ndarray:
        batch = self._encode_inputs(obs)
        if prefix is None or prefix_weights is None:
            chunk = self.actor.act(batch)
        else:
            y = torch.as_tensor(np.asarray(prefix, np.float32), device=self.device)[None]
            w = torch.as_tensor(np.asarray(prefix_weights, np.float32), device=self.device)
            chunk = guided_chunks(self.actor, batch, y, w, max_guidance_weight)
        return chunk[0].cpu().numpy().astype(np.float64)


def guided_chunks(actor: ChunkActor, batch: dict[str, torch.Tensor], prefix: torch.Tensor,
                  weights: torch.Tensor, max_guidance_weight: float) -> torch.Tensor:
    """Real-Time Chunking on the actor: chunks (B, h, Da) inpainted on ``prefix``
    (B, h, Da, action units) with per-step ``weights`` (h,)
    (:func:`vptr.runtime.rtc.guided_sample`, in the policy's normalised action space);
    best-of-N candidates are each guided, then ranked by the critic."""
    n, flow = actor.cfg.act_samples, actor.policy.flow
    batch = actor.with_features(batch)
    with torch.no_grad():
        z = actor.policy.encoder(batch, "obs")
        cond = repeat(flow.condition(z), "b f -> (b n) f", n=n)  # once per observation
    target = repeat(actor.action_norm(prefix), "b h d -> (b n) h d", n=n)

    def velocity(x: torch.Tensor, tau: float) -> torch.Tensor:
        u = torch.full((x.shape[0],), tau, device=x.device, dtype=x.dtype)
        return flow.step(cond, rearrange(x, "b h d -> b (h d)"), u).reshape(x.shape)

    noise = torch.randn(cond.shape[0], flow.horizon, flow.action_dim, device=z.device,
                        dtype=z.dtype)
    x = guided_sample(velocity, noise, actor.cfg.flow_steps, target, weights.to(z.dtype),
                      max_guidance_weight).clamp(-1.0, 1.0)
    cands = rearrange(x, "(b n) h d -> b n h d", n=n)
    with torch.no_grad():
        best = (cands[:, 0] if n == 1 else
                best_of_n(actor.ranker, actor.ranker.encoder(batch, "obs"), cands))
        return actor.action_norm.inverse(best)


class SimPolicy(_Acting):
    """``policy(obs) -> chunks`` for the simulation harness: ``obs`` is a batch over n
    environments (``state``, ``pixels.<cam>`` ... numpy arrays), the result (n, h, Da) in
    the dataset's action units. Keeps each environment slot's recent frames for frame
    stacking (``sim.evaluate``'s protocol: ``reset(slots)``, ``observe(obs)``,
    ``obs["env_index"]``)."""

    def __init__(self, folder: str | os.PathLike | None = None, device: str = "cpu",
                 task: int | str = 0, loaded: tuple[dict[str, Any], ChunkActor] | None = None,
                 act_samples: int = 0):
        super().__init__(folder, device, task, loaded, act_samples)
        self.state_keys = [env_key(f) for f in self.state_features]
        self.camera_keys = {f: env_key(f) for f in self.camera_features}
        self._observing = False
        self._noise: dict[int, torch.Generator] = {}  # slot -> its episode's generator

    @property
    def spec(self) -> dict[str, Any]:
        """What the policy needs from an environment (``sim.evaluate.check_compatible``)."""
        obs: dict[str, Any] = {}
        for key, width in zip(self.state_keys, self.state_widths):
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

    def reset(self, indices: np.ndarray | None = None, seeds: np.ndarray | None = None) -> None:
        """Forget the frames of the environment slots ``indices`` (all when None). With
        ``seeds`` (one per index: the harness passes each episode's reset seed) the slot's
        sampling noise comes from its own generator seeded with it, so an episode's actions
        depend only on its seed -- not on which episodes share a batch, the number of
        worker processes, or what ran before in this process. Without, a slot draws from
        torch's global generator."""
        slots = None if indices is None else np.asarray(indices).tolist()
        self.history.reset(slots)
        if slots is None:
            self._noise.clear()
            slots = []
        if seeds is not None and len(seeds) != len(slots):
            raise ValueError(f"reset: {len(seeds)} seeds for {len(slots)} slots")
        for i, slot in enumerate(slots):
            if seeds is None:
                self._noise.pop(int(slot), None)
            else:
                self._noise[int(slot)] = torch.Generator().manual_seed(int(seeds[i]))

    def _slot_noise(self, slots: list[int]) -> torch.Tensor | None:
        """Each row's candidates' starting noise from its slot's generator (None unless
        every slot has one)."""
        if not slots or any(s not in self._noise for s in slots):
            return None
        shape = self.actor.noise_shape()
        noise = torch.cat([torch.randn(shape, generator=self._noise[s]) for s in slots])
        return noise.to(self.device)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Record every step's frames (the harness calls this between queries)."""
        self._observing = True
        self._push(obs)

    def _push(self, obs: dict[str, np.ndarray]) -> None:
        for row, slot in enumerate(self._slots(obs).tolist()):
            for feature, key in self.camera_keys.items():
                self.history.push(slot, feature, obs[key][row])

    @staticmethod
    def _slots(obs: dict[str, np.ndarray]) -> np.ndarray:
        if "env_index" in obs:
            return np.asarray(obs["env_index"])
        return np.arange(len(next(iter(obs.values()))))

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state, n = None, None
        if self.state_keys:
            state = np.concatenate([np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1)
                                    for k in self.state_keys], axis=1)
            n = len(state)
        if self.camera_keys and not self._observing:
            self._push(obs)  # driven without observe(): each query is the next step
        slots = self._slots(obs).tolist()
        images = {f: np.stack([self.history.stacked(s, f) for s in slots])
                  for f in self.camera_keys}
        n = len(slots) if n is None else n
        noise = self._slot_noise(slots)
        return self.actor.act(self._batch(state, images, n), noise).cpu().numpy().astype(np.float32)

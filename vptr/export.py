"""``vptr export``: a fine-tuned policy as a self-contained deployment artifact.

Reads ``<run>/policy/`` (or any artifact, ``--policy``), verifies its checksums, adds
provenance (the code's git commit, the run's config, the datasets, the newest
evaluation's success rate) and writes ``--out`` (:mod:`vptr.runtime.artifact`: safetensors
+ ``policy.json`` with sha256). ``--torchscript`` / ``--onnx`` also export the single-pass
parts (the observation encoder and the flow velocity field), each checked against the
PyTorch modules on random inputs (max abs error recorded in ``policy.json``; an export
that disagrees by more than ``--parity-tol`` is refused). The runtime never loads those
files: they are for users who run the networks elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError, DataError
from vptr.nets.policy import ChunkActor
from vptr.runtime.artifact import file_sha256, load_artifact, write_artifact

KEEP = ("agent", "observation", "action", "rate_hz", "tasks", "provenance")


@dataclass(frozen=True)
class ExportConfig:
    """Export a fine-tuned policy for deployment."""

    run: Path | None = helpfield(None, "a `vptr finetune` run directory (exports its policy/)")
    policy: Path | None = helpfield(None, "an artifact folder to re-export instead of a run")
    out: Path | None = helpfield(None, "artifact folder to write (required)")
    torchscript: bool = helpfield(False, "also write TorchScript of the encoder and the "
                                         "velocity field (parity-checked)")
    onnx: bool = helpfield(False, "also write ONNX of the same parts (needs the onnx "
                                  "package; parity-checked with onnxruntime when installed)")
    parity_tol: float = helpfield(1e-5, "largest allowed abs difference of an exported part")
    overwrite: bool = helpfield(False, "replace an existing --out folder")

    def __post_init__(self) -> None:
        if (self.run is None) == (self.policy is None):
            raise ConfigError("give exactly one of --run DIR or --policy DIR")
        if self.out is None:
            raise ConfigError("--out DIR: where to write the artifact")
        if self.parity_tol <= 0:
            raise ConfigError(f"--parity-tol must be > 0, got {self.parity_tol}")


def git_commit() -> dict[str, Any]:
    """The commit of the code that exports (and whether the tree had changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=10,
                                    check=True).stdout.strip())
        return {"git_commit": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}


def newest_eval(run: Path) -> dict[str, Any] | None:
    """The evaluation of a run's final policy: the newest ``vptr eval`` report, else the
    training-time report of the highest step."""
    def order(path: Path) -> tuple[int, int, float]:
        # `vptr eval` reports (of the final policy) first, then training-time ones by step
        step = path.stem.removeprefix("step_")
        if step.isdigit():
            return (0, int(step), path.stat().st_mtime)
        return (1, 0, path.stat().st_mtime)

    reports = sorted((run / "eval").rglob("*.json"), key=order)
    for path in reversed(reports):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and "success_rate" in r:
            return {"report": str(path.relative_to(run)), "env": r.get("env_id"),
                    "success_rate": r["success_rate"], "success_ci95": r.get("success_ci95"),
                    "episodes": r.get("episodes"), "seed": r.get("seed")}
    return None


def provenance(cfg: ExportConfig, doc: dict[str, Any]) -> dict[str, Any]:
    from vptr import runs

    prov = dict(doc.get("provenance", {}))
    prov.update(git_commit())
    if cfg.run is not None:
        run = Path(cfg.run)
        run_cfg = runs.read_config(run)
        prov["run"] = str(run.resolve())
        prov["config"] = run_cfg
        data = Path(str(run_cfg.get("data", "")))
        info = data / "meta" / "info.json"
        prov["datasets"] = [{"path": str(data), **({"info_sha256": file_sha256(info)}
                                                   if info.is_file() else {})}]
        prov["eval"] = newest_eval(run)
    return prov


# --------------------------------------------------------------------------- single-pass parts


class EncoderPart(nn.Module):
    """The observation encoder with positional tensor inputs (state, one image stack per
    camera, task index) -- the form TorchScript and ONNX take."""

    def __init__(self, actor: ChunkActor):
        super().__init__()
        self.encoder = actor.policy.encoder
        self.cameras = list(actor.spec.cameras)
        self.has_state = actor.spec.state_dim > 0

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch, i = {}, 0
        if self.has_state:
            batch["state"], i = inputs[0], 1
        for cam in self.cameras:
            batch[f"obs.{cam}"], i = inputs[i], i + 1
        batch["task_index"] = inputs[i]
        return self.encoder(batch, "obs")


def example_inputs(actor: ChunkActor, n: int = 3, seed: int = 0) -> tuple[tuple, tuple]:
    """Random (encoder inputs, velocity inputs) of batch ``n``."""
    g = torch.Generator().manual_seed(seed)
    spec = actor.spec
    enc: list[torch.Tensor] = []
    if spec.state_dim:
        enc.append(torch.randn(n, spec.state_dim, generator=g))
    for _ in spec.cameras:
        enc.append(torch.randint(0, 256, (n, 3 * spec.frame_stack, spec.image_size,
                                          spec.image_size), generator=g, dtype=torch.uint8))
    enc.append(torch.randint(0, max(spec.num_tasks, 1), (n,), generator=g))
    flow = actor.policy.flow
    z = torch.randn(n, actor.policy.encoder.out_dim, generator=g)
    vel = (z, torch.randn(n, flow.chunk_dim, generator=g), torch.rand(n, generator=g))
    return tuple(enc), vel


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - torch.as_tensor(b).float()).abs().max())


def export_torchscript(actor: ChunkActor, out: Path, tol: float) -> dict[str, Any]:
    parts = {"encoder": EncoderPart(actor).eval(), "velocity": actor.policy.flow.eval()}
    enc_in, vel_in = example_inputs(actor)
    check_enc, check_vel = example_inputs(actor, n=5, seed=1)
    result = {}
    (out / "torchscript").mkdir(exist_ok=True)
    for name, module, inputs, check in (("encoder", parts["encoder"], enc_in, check_enc),
                                        ("velocity", parts["velocity"], vel_in, check_vel)):
        with torch.no_grad():
            traced = torch.jit.trace(module, inputs, check_trace=False)
            err = max_err(module(*check), traced(*check))
        if not err <= tol:
            raise DataError(f"torchscript {name}: differs from PyTorch by {err:.2e} > {tol:g}")
        path = out / "torchscript" / f"{name}.pt"
        traced.save(str(path))
        result[name] = {"file": str(path.relative_to(out)), "sha256": file_sha256(path),
                        "max_abs_err": err, "inputs": _input_names(actor, name)}
    return result


def export_onnx(actor: ChunkActor, out: Path, tol: float) -> dict[str, Any]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("--onnx needs the onnx package: pip install onnx onnxruntime "
                          "(or leave --onnx off)") from None
    parts = {"encoder": EncoderPart(actor).eval(), "velocity": actor.policy.flow.eval()}
    enc_in, vel_in = example_inputs(actor)
    check_enc, check_vel = example_inputs(actor, n=5, seed=1)
    (out / "onnx").mkdir(exist_ok=True)
    result = {}
    for name, inputs, check in (("encoder", enc_in, check_enc), ("velocity", vel_in, check_vel)):
        path = out / "onnx" / f"{name}.onnx"
        names = _input_names(actor, name)
        torch.onnx.export(parts[name], inputs, str(path), input_names=names,
                          output_names=["output"], dynamic_axes={k: {0: "batch"} for k in
                                                                 [*names, "output"]},
                          dynamo=False)
        entry: dict[str, Any] = {"file": str(path.relative_to(out)), "sha256": file_sha256(path),
                                 "inputs": names}
        try:
            import onnxruntime as ort
        except ImportError:
            entry["max_abs_err"] = None  # not checked: onnxruntime missing
        else:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = dict(zip(names, check))  # inputs the graph does not use are pruned
            got = sess.run(None, {i.name: feed[i.name].numpy() for i in sess.get_inputs()})[0]
            with torch.no_grad():
                err = max_err(parts[name](*check), torch.from_numpy(got))
            if not err <= tol:
                raise DataError(f"onnx {name}: differs from PyTorch by {err:.2e} > {tol:g}")
            entry["max_abs_err"] = err
        result[name] = entry
    return result


def _input_names(actor: ChunkActor, part: str) -> list[str]:
    if part == "velocity":
        return ["z", "x", "u"]
    names = ["state"] if actor.spec.state_dim else []
    return names + [f"obs.{c}" for c in actor.spec.cameras] + ["task_index"]


# --------------------------------------------------------------------------- command


def export(cfg: ExportConfig) -> Path:
    with warnings.catch_warnings():  # tracing warns about shape checks: constants here
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        return _export(cfg)


def _export(cfg: ExportConfig) -> Path:
    source = Path(cfg.policy) if cfg.policy is not None else Path(cfg.run) / "policy"
    if cfg.run is not None and not Path(cfg.run).is_dir():
        raise DataError(f"{cfg.run}: run directory not found")
    if cfg.run is not None and not source.is_dir():
        raise DataError(f"{cfg.run}: no policy/ folder (the run has not finished)")
    out = Path(cfg.out)
    if out.resolve() == source.resolve():
        raise ConfigError(f"--out {out}: is the source artifact itself")
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"--out {out}: exists and is not empty (--overwrite replaces it)")
        shutil.rmtree(out)
    doc, actor = load_artifact(source)
    new = {k: doc[k] for k in KEEP if k in doc}
    new["provenance"] = provenance(cfg, doc)
    out.mkdir(parents=True, exist_ok=True)
    exports: dict[str, Any] = {}
    if cfg.torchscript:
        exports["torchscript"] = export_torchscript(actor, out, cfg.parity_tol)
    if cfg.onnx:
        exports["onnx"] = export_onnx(actor, out, cfg.parity_tol)
    if exports:
        new["exports"] = exports
    return write_artifact(out, actor, new)


def run(cfg: ExportConfig) -> int:
    out = export(cfg)
    doc = json.loads((out / "policy.json").read_text())
    print(f"artifact: {out}  ({doc['agent']}, chunk {doc['chunk_size']}, "
          f"{doc['rate_hz']} Hz, weights sha256 {doc['integrity']['weights_sha256'][:16]}...)")
    ev = doc["provenance"].get("eval")
    if ev:
        print(f"  evaluated: success {100 * ev['success_rate']:.1f}% over {ev['episodes']} "
              f"episodes ({ev['report']})")
    for kind, parts in doc.get("exports", {}).items():
        for name, e in parts.items():
            err = "unchecked" if e["max_abs_err"] is None else f"max abs err {e['max_abs_err']:.1e}"
            print(f"  {kind} {name}: {e['file']} ({err})")
    return 0

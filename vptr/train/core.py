"""The training core shared by every loop (pretraining; fine-tuning next).

A loop is written as the algorithm reads — sample, step, log, checkpoint, evaluate — on
top of these pieces, which know nothing of the algorithm (OGBench / FQL ``main.py``):

* :func:`session` — process set-up and teardown: torch threads, deterministic mode,
  ``torchrun`` process group and device (:mod:`vptr.train.distributed`), AMP and
  ``torch.compile``; resources registered with :meth:`Session.closing` (data-loader
  workers, writers) are closed before the process group goes away, in reverse order.
* :func:`run_directory` — creates the run directory and its ``config.json``; a start that
  fails before the first checkpoint removes what it made, so it never looks like a run.
* :class:`TrainStep` — one optimiser step: forward under autocast, backward (scaled for
  fp16), Adam step, then the Polyak update of every EMA target (:func:`make_target`,
  :func:`ema_update`). DistributedDataParallel wraps the loss module when there is
  something to train.
* :class:`Checkpointer` — restore (weights, optimizer, RNG, loop state) and save; the loss
  history travels inside each checkpoint and is mirrored to ``history.json``, so it
  survives a kill.
* :class:`TrainLog` — progress bar, TensorBoard scalars and the loss history; rank 0
  writes, every rank takes part in the cross-rank means.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vptr import runs
from vptr.errors import ConfigError, DataError
from vptr.files import atomic_write_text
from vptr.train import checkpoint, distributed
from vptr.train.distributed import DistInfo

# ----------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Session:
    """The process's place in a (possibly distributed) run, and how it computes."""

    dist: DistInfo
    amp: str = "off"  # off | bf16 (CUDA, CPU) | fp16 (CUDA)
    compile: bool = False
    _exit: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def barrier(self) -> None:
        distributed.barrier(self.dist)

    def closing(self, thing: Any) -> Any:
        """Close ``thing`` (``.close()``) when the session ends, before the process group."""
        self._exit.callback(thing.close)
        return thing

    def release(self) -> None:
        """Close what :meth:`closing` registered now (newest first)."""
        self._exit.close()

    def seed_rank(self, seed: int) -> None:
        """After building the networks (same initial weights on every rank): give each rank
        its own stream of random draws."""
        if self.dist.rank:
            torch.manual_seed(seed + 7919 * self.dist.rank)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self):
        """Mixed precision for a training step: bf16 or fp16 on CUDA; bf16 on CPU too (fast
        where the CPU has bf16 matrix units, e.g. AMX; emulated and slower elsewhere). fp16
        on CPU is refused by the run configs and computes in fp32 here."""
        return autocast(self.amp, self.device)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        use = self.amp == "fp16" and self.device.type == "cuda"
        return torch.amp.GradScaler("cuda") if use else None

    def wrap(self, module: nn.Module, trains: bool) -> nn.Module:
        """DistributedDataParallel (when distributed and there is something to train),
        then ``torch.compile`` when asked."""
        if self.dist.enabled and trains:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids)
        return torch.compile(module) if self.compile else module


AMP_HELP = ("mixed precision of the training step: bf16 (GPU, or CPU: fast with bf16 units "
            "such as AMX) or fp16 (GPU)")


def autocast(amp: str, device: torch.device):
    """The autocast context of ``amp`` (off | bf16 | fp16) on ``device``."""
    if amp == "off" or device.type not in ("cuda", "cpu") or (amp == "fp16" and device.type == "cpu"):
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_amp(amp: str, device: str) -> None:
    """Refuse a precision the device cannot run: fp16 needs CUDA; bf16 runs on CUDA and CPU."""
    if amp == "fp16" and device.startswith("cpu"):
        raise ConfigError("amp=fp16 needs a GPU device (got device=cpu); on CPU use amp=bf16 "
                          "(fast on CPUs with bf16 units, e.g. AMX) or off")


@contextmanager
def session(device: str = "auto", threads: int = 0, deterministic: bool = False,
            amp: str = "off", compile: bool = False) -> Iterator[Session]:
    """Set the process up for training; on exit close what was registered, then leave the
    process group."""
    dist = distributed.init(device)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    s = Session(dist, amp, compile)
    if amp == "fp16" and s.device.type != "cuda" and s.is_main:
        print(f"note: amp=fp16 needs CUDA; device {s.device} trains in fp32", file=sys.stderr)
    try:
        with s._exit:
            yield s
    finally:
        distributed.shutdown(dist)


@contextmanager
def run_directory(path: Path, config: dict[str, Any], s: Session) -> Iterator[Path]:
    """Create ``path`` with ``config.json`` (rank 0). If this start created it and fails
    before the first checkpoint, the directory is removed again."""
    path = Path(path)
    created = not path.exists()
    if s.is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path / runs.CONFIG, json.dumps(config, indent=2))
        except OSError as e:
            raise DataError(f"{path}: cannot write the run directory ({e.strerror})") from None
    s.barrier()
    try:
        yield path
    except BaseException:
        if s.is_main and created and runs.latest_checkpoint(path) is None:
            s.release()  # writers and loader workers stop before their directory goes
            shutil.rmtree(path, ignore_errors=True)
        raise


class BatchIterator:
    """Batches from a DataLoader; ``close()`` stops its worker processes now (not whenever
    the iterator happens to be garbage-collected, which may be at interpreter exit)."""

    def __init__(self, loader: Any):
        self._it = iter(loader)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return next(self._it)

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()


# ----------------------------------------------------------------------------- the step


FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params: Iterable[Any], lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam for every training loop: torch's fused kernel where all parameters allow it
    (floating point, on CPU or CUDA), else the default multi-tensor path.

    Same update up to rounding; the optimizer state (and so a checkpoint) has the same
    layout either way. Measured on 2 CPU cores for QC's ~1.35M parameters: one optimizer
    step 13 ms (default) vs 4.4 ms (fused), a quarter of a frozen-encoder update
    (benchmarks/RESULTS.md, "Session 14")."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES
                                  for p in tensors)
    return torch.optim.Adam(groups, lr=lr, eps=eps, fused=fused)


def make_target(nets: nn.Module) -> nn.Module:
    """A frozen copy of ``nets`` for Polyak-averaged targets (kept in sync by ema_update).
    Build it after moving ``nets`` to its device: it is not a submodule of anything."""
    target = copy.deepcopy(nets)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    """Polyak averaging ``θ̄ <- (1 - rate) θ̄ + rate θ`` over every parameter.

    As in the ICVF release (``jaxrl_m.common.target_update``) the whole network, image
    encoder included, is averaged. Buffers (e.g. BatchNorm running statistics) are copied,
    not averaged: they are statistics of the online network, not learned weights.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("ema_update: target and online networks differ in structure")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, rate)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


class LossModule(nn.Module):
    """Wraps ``loss_fn(nets, target_nets, batch, cfg)`` as a module so that
    DistributedDataParallel sees a forward (its gradient hooks need one) and
    ``torch.compile`` has one graph. The target network is deliberately not a submodule:
    DDP must not see it as trainable, and optimisers must not update it."""

    def __init__(self, nets: nn.Module, target: nn.Module | None, loss_fn: Callable[..., Any],
                 cfg: Any):
        super().__init__()
        self.nets = nets
        self._target = [target]  # hidden from .parameters()
        self.loss_fn = loss_fn
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.loss_fn(self.nets, self._target[0], batch, self.cfg)


class TrainStep:
    """``metrics = step(batch)``: forward, backward, optimiser step, EMA targets.

    ``optimizer=None`` (nothing to train) only evaluates the loss. ``targets`` are
    ``(target, online, rate)`` triples updated after every optimiser step.
    """

    def __init__(self, module: LossModule, s: Session, optimizer: torch.optim.Optimizer | None,
                 targets: tuple[tuple[nn.Module, nn.Module, float], ...] = ()):
        self.session = s
        self.module = s.wrap(module, trains=optimizer is not None)
        self.optimizer = optimizer
        self.scaler = s.grad_scaler() if optimizer is not None else None
        self.targets = targets

    @property
    def state(self) -> dict[str, Any]:
        """What a resume needs besides the weights (everything with a state_dict())."""
        out: dict[str, Any] = {} if self.optimizer is None else {"optimizer": self.optimizer}
        if self.scaler is not None:
            out["grad_scaler"] = self.scaler
        return out

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        with self.session.autocast():
            loss, metrics = self.module(self.session.to_device(batch))
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            for target, online, rate in self.targets:
                ema_update(target, online, rate)
        return metrics


# ----------------------------------------------------------------------------- state


class Checkpointer:
    """Save and restore a run: weights of ``modules``, the states of ``optimizers`` (any
    object with state_dict()), the RNGs, the loop's step and its loss history."""

    def __init__(self, run_dir: Path, s: Session, modules: dict[str, nn.Module],
                 optimizers: dict[str, Any], meta: dict[str, Any] | None = None):
        self.run_dir, self.session = Path(run_dir), s
        self.modules, self.optimizers, self.meta = modules, optimizers, meta or {}
        self.latest = runs.latest_checkpoint(self.run_dir)

    def restore(self) -> tuple[int, list]:
        """(step, history) of the newest checkpoint after loading its weights and optimizer
        states; (0, []) for a new run. The RNGs are restored by :meth:`restore_rng`."""
        if self.latest is None:
            return 0, []
        state = checkpoint.load(self.latest, self.modules, self.optimizers, restore_rng=False)
        history = [tuple(h) for h in state.get("history", [])]
        return int(state.get("data_step", state["step"])), history

    def restore_rng(self) -> None:
        """Restore the RNG state (after creating anything that draws a seed at start-up,
        e.g. a DataLoader iterator: the uninterrupted run drew it at step 0)."""
        if self.latest is not None:
            checkpoint.load_rng(self.latest, offset=self.session.dist.rank)

    def save(self, step: int, history: list) -> None:
        if self.session.is_main:
            checkpoint.save(self.run_dir, step, self.modules, self.optimizers,
                            {"data_step": step, **self.meta, "history": history})
            write_history(self.run_dir, history)
        self.session.barrier()


def write_history(run_dir: Path, history: list) -> None:
    atomic_write_text(Path(run_dir) / runs.HISTORY, json.dumps(history))


class TrainLog:
    """Progress bar, TensorBoard scalars (``<run>/tb``) and the loss history.

    ``record(step, metrics)`` every step; every ``every`` steps (and at ``total``) the means
    since the previous log, averaged over ranks, go to TensorBoard and the bar, and
    ``(step, mean loss)`` to :attr:`history`.
    """

    def __init__(self, run_dir: Path, s: Session, start: int, total: int, every: int,
                 loss_key: str, history: list, desc: str, samples_per_step: int,
                 progress: bool = True):
        from tqdm.auto import tqdm

        self.session, self.total, self.every, self.loss_key = s, total, every, loss_key
        self.history, self.samples_per_step = list(history), samples_per_step
        self.writer = None
        if s.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # scalars logged at the resumed step itself (before its checkpoint) are kept
            self.writer = SummaryWriter(str(Path(run_dir) / runs.TENSORBOARD),
                                        purge_step=start + 1 if start else None)
        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not (progress and s.is_main),
                        mininterval=0.2 if sys.stderr.isatty() else 30.0)  # logs: 1 line / 30 s
        self._sums: dict[str, float] = {}
        self._n, self._t0 = 0, time.time()

    def record(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._n += 1
        self.bar.update(1)
        if step % self.every and step != self.total:
            return
        means = distributed.mean_across(self.session.dist,
                                        {k: v / self._n for k, v in self._sums.items()})
        means["perf/steps_per_s"] = self._n / max(time.time() - self._t0, 1e-9)
        means["perf/frames_per_s"] = (means["perf/steps_per_s"] * self.samples_per_step
                                      * self.session.dist.world_size)
        self.scalars(means, step)
        loss = means.get(self.loss_key, float("nan"))
        self.history.append((step, loss))
        self.bar.set_postfix(loss=f"{loss:.4g}", sps=f"{means['perf/steps_per_s']:.2f}")
        self._sums, self._n, self._t0 = {}, 0, time.time()

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

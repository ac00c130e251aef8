"""``vptr eval``: a fine-tuned policy in simulation (the harness is :mod:`sim.evaluate`).

``--run DIR`` evaluates the policy folder of a ``vptr finetune`` run (and by default on the
run's own evaluation environment); ``--policy DIR`` any policy folder. The report (JSON) and
videos go to ``--out`` (default ``<policy>/../eval/<env>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vptr.config import helpfield
from vptr.errors import ConfigError, DataError


@dataclass(frozen=True)
class EvalCommandConfig:
    """Evaluate a policy in simulation."""

    run: Path | None = helpfield(None, "a `vptr finetune` run directory (uses its policy/)")
    policy: Path | None = helpfield(None, "a policy folder (policy.json + model.safetensors)")
    env: str = helpfield("", "environment id (default: the run's eval_env)")
    episodes: int = helpfield(50, "episodes (>= 50 for reported numbers)")
    seed: int = helpfield(200_000, "reset seed of the first episode (episode i: seed + i)")
    workers: int = helpfield(0, "environment processes (0 = in-process)")
    execution: str = helpfield("open_loop", "open_loop, receding:K or ensemble[:M]")
    task: str = helpfield("", "task string or index of a multi-task policy ('' = the env's "
                              "instruction if the policy knows it, else its target task, "
                              "else 0)")
    act_samples: int = helpfield(0, "best-of-N candidates the critic ranks when acting (0 = "
                                    "the policy's own, e.g. QC's 8; 1 = one plain sample)")
    videos: int = helpfield(3, "episodes filmed as mp4")
    domain_shift: float = helpfield(-1.0, "native envs: visual shift 0..1 (-1 = the env's "
                                          "default)")
    out: Path | None = helpfield(None, "report folder (default: next to the policy)")
    device: str = helpfield("cpu", "device of the policy")
    progress: bool = helpfield(True, "show a progress bar")

    def __post_init__(self) -> None:
        if (self.run is None) == (self.policy is None):
            raise ConfigError("give exactly one of --run DIR or --policy DIR")
        if self.episodes <= 0 or min(self.workers, self.videos, self.act_samples) < 0:
            raise ConfigError("episodes must be > 0, workers, videos and act_samples >= 0")


def resolve(cfg: EvalCommandConfig) -> tuple[Path, str]:
    """(policy folder, environment id: --env, else the run's eval_env)."""
    from vptr import runs

    folder = Path(cfg.policy) if cfg.policy else Path(cfg.run) / "policy"
    env_id = cfg.env
    if cfg.run is not None:
        if not Path(cfg.run).is_dir():
            raise DataError(f"{cfg.run}: run directory not found")
        if not folder.is_dir():
            raise DataError(f"{cfg.run}: no policy/ folder (the run has not finished)")
        run_cfg = runs.read_config(Path(cfg.run))
        env_id = env_id or run_cfg.get("eval_env", "")
    if not env_id:
        raise ConfigError("--env: which environment to evaluate in (the run names none)")
    return folder, env_id


def default_task(tasks: list[str], env_id: str, target_tasks: list[str]) -> int | str:
    """The task a multi-task policy is evaluated on in ``env_id``: the environment's own
    instruction when it is one of the policy's ``tasks`` (generated data store it as the
    task string), else the first task of the data it was fine-tuned on last (its target),
    else index 0."""
    if len(tasks) <= 1:
        return 0
    from sim.registry import ENV_IDS, task_description

    if env_id in ENV_IDS and task_description(env_id) in tasks:
        return task_description(env_id)
    return next((t for t in target_tasks if t in tasks), 0)


def policy_task(folder: Path, env_id: str, task: str) -> int | str:
    """``--task`` (a string, or an index when all digits), else :func:`default_task` from
    the artifact's ``tasks`` and its provenance's ``target_tasks``."""
    if task:
        return int(task) if task.isdigit() else task
    from vptr.files import read_json_object

    doc = read_json_object(folder, "policy.json", "a policy folder")
    return default_task(list(doc.get("tasks", [])), env_id,
                        list(doc.get("provenance", {}).get("target_tasks", [])))


def run(cfg: EvalCommandConfig) -> int:
    from sim.evaluate import evaluate
    from vptr.runtime.artifact import SimPolicy

    folder, env_id = resolve(cfg)
    policy = SimPolicy(folder, device=cfg.device, task=policy_task(folder, env_id, cfg.task),
                       act_samples=cfg.act_samples)
    kw = policy.env_kwargs(videos=cfg.videos > 0)
    if cfg.domain_shift >= 0:
        kw["domain_shift"] = cfg.domain_shift
    out = Path(cfg.out) if cfg.out else folder.parent / "eval" / env_id.replace("/", "_")
    report = evaluate(policy, env_id, episodes=cfg.episodes, seed=cfg.seed, env_kwargs=kw,
                      num_workers=cfg.workers, execution=cfg.execution,
                      video_dir=out / "videos" if cfg.videos else None,
                      videos=min(cfg.videos, cfg.episodes),
                      report_path=out / "report.json", progress=cfg.progress)
    lo, hi = report["success_ci95"]
    print(f"{env_id}: success {100 * report['success_rate']:.1f}% "
          f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}) over {report['episodes']} episodes; "
          f"return {report['return_mean']:.2f}, length {report['length_mean']:.1f}; "
          f"{report['episodes_per_s']:.2f} episodes/s")
    print(f"report: {out / 'report.json'}" + (f"  videos: {out / 'videos'}" if cfg.videos else ""))
    return 0

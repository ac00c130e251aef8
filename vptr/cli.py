"""The ``vptr`` command.

Every command is a typed dataclass config plus a ``run(cfg)`` function; the options,
their help and their validation come from the dataclass (see :mod:`vptr.config`).
A user mistake (bad value, unknown task, unwritable directory, corrupt data) ends with
one ``vptr: error: ...`` line and exit status 2; an interrupt with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from vptr.config import ArgumentParser, add_config_args, config_from_namespace
from vptr.errors import VptrError


@dataclass(frozen=True)
class Command:
    """A leaf command: ``module:config_class`` and ``module:function``."""

    help: str
    config: str
    run: str
    description: str = ""


# name -> Command, or name -> {subname -> Command} for command groups.
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "generate": {
        "robot": Command(
            "record scripted-expert robot demonstrations as a LeRobotDataset v3.0",
            "sim.generate:RobotDataConfig", "sim.generate:run_robot",
            "Runs each task's scripted expert in simulation and writes the episodes with "
            "LeRobot's own writer (images as video). Cached by config under the data dir."),
        "video": Command(
            "film a video embodiment doing the tasks: mp4 folder + manifest.csv, no actions",
            "sim.generate:VideoDataConfig", "sim.generate:run_video",
            "Films the scripted expert driving the video embodiment (a floating two-finger "
            "hand by default) with domain randomisation; writes only pixels (mp4) and a "
            "manifest, the layout of a user's own video corpus. Cached by config."),
    },
    "pretrain": Command(
        "pretrain an image encoder and value by TD learning on action-free video",
        "vptr.train.pretrain_loop:PretrainConfig", "vptr.train.pretrain_loop:run",
        "ICVF, intention-conditioned TD-JEPA or a baseline (tcn, vip, none) on a video "
        "source. Checkpoints, TensorBoard logs and value diagnostics go to the run "
        "directory; rerunning the same command resumes. Multi-process: torchrun "
        "--nproc_per_node N -m vptr pretrain ..."),
    "finetune": Command(
        "fine-tune a policy by chunked offline RL on a robot dataset",
        "vptr.train.finetune_loop:FinetuneConfig", "vptr.train.finetune_loop:run",
        "QC (best-of-N over a flow chunk policy), chunked flow BC, chunked IQL, DQC or a "
        "CO-RFT-style agent on a LeRobotDataset v3.0 or robomimic HDF5 file, with image "
        "trunks new, from a `vptr pretrain` run (--encoder.init RUN) or frozen. Checkpoints, "
        "TensorBoard, evaluation in simulation (--eval-env ID) and the policy folder go to "
        "the run directory; rerunning the same command resumes. Multi-process: torchrun "
        "--nproc_per_node N -m vptr finetune ..."),
    "eval": Command(
        "evaluate a fine-tuned policy in simulation: success rate with a 95%% interval",
        "vptr.evaluate:EvalCommandConfig", "vptr.evaluate:run",
        "Runs N episodes of a policy (--run DIR of `vptr finetune`, or --policy DIR) in any "
        "registered environment whose observations match the policy (mismatches are "
        "listed and refused), across worker processes; writes a JSON report and mp4 videos "
        "of a few episodes."),
    "export": Command(
        "export a fine-tuned policy as a deployment artifact (safetensors + policy.json)",
        "vptr.export:ExportConfig", "vptr.export:run",
        "Verifies the run's policy/ checksums, adds provenance (git commit, config, "
        "datasets, evaluation success) and writes --out: model.safetensors and policy.json "
        "with observation/action specs, normalisation, chunk size, rate and sha256. "
        "--torchscript / --onnx also export the encoder and the velocity field, each "
        "parity-checked. The runtime (vptr deploy) loads it without training code."),
    "deploy": Command(
        "run an exported policy on a robot: executor, safety filter, real-time loop",
        "vptr.deploy:DeployConfig", "vptr.deploy:run",
        "Loads the artifact (checksums verified, no training code), checks it against the "
        "robot (every mismatch listed; nothing moves on a mismatch) and runs episodes through "
        "the chunk executor (chunk, receding, ensemble, async or rtc), the safety filter "
        "(limits from the robot's spec; --unlimited must be asked for) and the fixed-rate "
        "loop with watchdog and e-stop (SIGUSR1, Ctrl-C). Robots: sim:<task>, "
        "lerobot:<type>, ur:<host>, mock. Prints a status line per episode and a report: "
        "success, loop rate, jitter, inference latency, boundary stalls, interventions."),
    "experiment": Command(
        "run a pretraining x fine-tuning x seed grid (resumable) and summarise it",
        "vptr.experiment:ExperimentConfig", "vptr.experiment:run",
        "The grid comes from --config FILE.toml (arms, seeds, and the [video], [robot], "
        "[pretrain], [pretrain_arms.<arm>], [finetune], [finetune_agents.<agent>] tables; "
        "see configs/experiments/). Each cell (a pretraining run, or a fine-tuning run plus "
        "its test evaluation) works in its own folder and records cell.json when done: a "
        "rerun skips done cells and resumes interrupted ones, several machines can share "
        "the folder. Writes summary.csv, summary.md (Wilson intervals per seed and pooled, "
        "paired differences against 'none'), summary.json and summary.png."),
    "evaluate-values": Command(
        "score a pretraining run's value on held-out video against baselines",
        "vptr.diagnostics.evaluate:EvaluateValuesConfig", "vptr.diagnostics.evaluate:run",
        "Spearman(V, t), value spread against the true discounted time-to-goal range and "
        "V at the goal, for the trained model, negative pixel L2 and untrained networks "
        "over several seeds; value-curve PNGs and a JSON report in <run>/values."),
    "probe": Command(
        "score an encoder for robot use: few-demo imitation, linear probe, invariance, values",
        "vptr.probe:ProbeConfig", "vptr.probe:run",
        "Each number next to a random init of the same architecture and end-to-end training "
        "from scratch: chunked flow BC on K native-task demos with the encoder frozen and "
        "fine-tuned, evaluated at the demos' appearance and under visual shift (Wilson "
        "intervals per seed and pooled); ridge R² of tool, gripper and object positions from "
        "frozen features; feature change on paired frames (same state, other appearance) "
        "over the change between consecutive frames; the value-curve numbers of a "
        "pretraining run. --split val|test picks disjoint evaluation seeds. Writes "
        "report.json and report.md; a rerun skips done cells."),
    "quickstart": Command(
        "run the whole pipeline on the built-in default data",
        "vptr.quickstart:QuickstartConfig", "vptr.quickstart:run",
        "Generates the default robot demonstrations and action-free video (cached), then "
        "runs every pipeline stage that exists so far and prints what it made."),
}


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _add_leaf(sub: argparse._SubParsersAction, name: str, cmd: Command) -> None:
    # the generated usage line would list every option (hundreds for `pretrain`); the
    # options are shown, grouped by section, below it
    p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help,
                       usage="%(prog)s [--config FILE.toml] [OPTIONS]")
    p.add_argument("--config", dest="_config_file", metavar="FILE.toml", default=None,
                   help="TOML file of option values (command-line options override it)")
    add_config_args(p, _load(cmd.config))
    p.set_defaults(_command=cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="vptr", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="vptr: robot learning from video.\n"
                    "Generate robot demonstrations and action-free video in simulation,\n"
                    "pretrain encoders and values by TD learning on video, fine-tune\n"
                    "policies by chunked offline RL and evaluate them in simulation.",
        epilog="examples:\n"
               "  vptr quickstart\n"
               "  vptr generate video --embodiment hand --domain-shift 0.5\n"
               "  vptr pretrain --data data/video/<name> --objective icvf --eval-data "
               "hand=<held-out>\n"
               "  vptr evaluate-values --run runs/pretrain/<run>\n"
               "  vptr finetune --data data/robot/<name> --agent qc --encoder.init "
               "runs/pretrain/<run> --eval-env vptr/Lift-v0\n"
               "  vptr eval --run runs/finetune/<run> --episodes 50\n"
               "  vptr probe --encoder runs/pretrain/<run>\n"
               "Every command takes --help and --config FILE.toml.")
    from vptr import __version__

    parser.add_argument("--version", action="version", version=f"vptr {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgumentParser)
    for name, entry in COMMANDS.items():
        if isinstance(entry, Command):
            _add_leaf(sub, name, entry)
            continue
        group = sub.add_parser(name, help=f"{name} commands: {', '.join(entry)}",
                               description=f"vptr {name} <subcommand>")
        group_sub = group.add_subparsers(title="subcommands", metavar="SUBCOMMAND",
                                         parser_class=ArgumentParser)
        for subname, cmd in entry.items():
            _add_leaf(group_sub, subname, cmd)
        group.set_defaults(_group=group)
    parser.set_defaults(_parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    parser = build_parser()
    ns = parser.parse_args(argv)
    cmd: Command | None = getattr(ns, "_command", None)
    if cmd is None:
        (getattr(ns, "_group", None) or parser).print_help()
        return 2
    try:
        cfg = config_from_namespace(_load(cmd.config), ns, ns._config_file)
        result = _load(cmd.run)(cfg)
    except VptrError as e:
        print(f"vptr: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:  # not a path the user gave: a bug, keep the traceback
            raise
        print(f"vptr: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vptr: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

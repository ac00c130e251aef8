"""Thin command functions behind ``vptr <command>`` (argument parsing lives in cli.py)."""

from __future__ import annotations

import json


def generate_robot(cfg) -> int:
    from sim.generate import generate_robot as gen

    out, record = gen(cfg)
    print(f"robot dataset (LeRobotDataset v3.0): {out}")
    print(json.dumps(record["stats"], indent=2))
    return 0


def generate_video(cfg) -> int:
    from sim.generate import generate_video as gen

    out, record = gen(cfg)
    print(f"action-free video: {out}  (manifest: {out / 'manifest.csv'})")
    print(json.dumps(record["stats"], indent=2))
    return 0
